"""Benchmark: ``loa report`` of one campaign over an N-message ledger, against one raw query.

The ledger (written with raw ``sqlite3``, not timed): 12 districts of one province, N
subscribers, one run of N messages (10% held out, 5% suppressed, the rest sent: 80% of those
delivered, some undelivered or failed, a few cancelled; each with a cost), and ``installed``
events for ~8% of the people, some before the planned send time, some inside the window and
some after it.

The baseline is one hand-written SQL statement that produces the same per-area counts (people
held out, suppressed, targeted, sent, delivered, undelivered, failed and the three arms'
responders), run on the same file.  Each figure is measured in its own process, baseline and
loa taking turns, and the counts are compared.

    python bench/report.py                       # 1,000,000 messages, 3 runs
    python bench/report.py --messages 200000 --runs 1
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DISTRICTS = 12
DAY_MS = 86_400_000

# One statement, the report's semantics written out by hand for one run: a person's response is
# their first event at or after the planned send time, counted within 7 days of it (targeted and
# held out) or of the delivery (delivered).  The responses are found from the events (few), through
# the outbox's (run, subscriber) key; a run holds one message per person, so no grouping by person.
RAW = """
WITH first AS (
    SELECT o.id, min(round((julianday(e.occurred_at) - 2440587.5) * 86400000.0)) AS at
    FROM events e JOIN outbox o ON o.run_id = :run AND o.subscriber_id = e.subscriber_id
    WHERE e.type = 'installed'
     AND round((julianday(e.occurred_at) - 2440587.5) * 86400000.0) >= round((julianday(o.expires_at) - 2440587.5) * 86400000.0) - :lead
    GROUP BY o.id
), m AS (
    SELECT o.area_id, o.state,
           round((julianday(o.expires_at) - 2440587.5) * 86400000.0) - :lead AS planned,
           CASE WHEN o.state = 'delivered'
                THEN round((julianday(coalesce(o.delivered_at, o.sent_at)) - 2440587.5) * 86400000.0) END AS reached,
           f.at
    FROM outbox o LEFT JOIN first f ON f.id = o.id WHERE o.run_id = :run
), person AS (
    SELECT m.area_id,
           m.state = 'held_out' AS held, m.state = 'suppressed' AS supp,
           m.state NOT IN ('held_out', 'suppressed') AS targeted,
           m.state IN ('sent', 'delivered', 'undelivered') AS sent,
           m.state = 'delivered' AS delivered, m.state = 'undelivered' AS undelivered,
           m.state IN ('failed', 'expired') AS failed,
           m.at >= m.reached AND m.at < m.reached + :window AS rd,
           m.state NOT IN ('held_out', 'suppressed') AND m.at < m.planned + :window AS rt,
           m.state = 'held_out' AND m.at < m.planned + :window AS rh
    FROM m
)
SELECT area_id, count(*), sum(held AND NOT targeted), sum(supp AND NOT targeted AND NOT held), sum(targeted),
       sum(sent), sum(delivered), sum(undelivered AND NOT delivered), sum(failed AND NOT sent),
       sum(coalesce(rd, 0)), sum(coalesce(rt, 0)), sum(held AND NOT targeted AND coalesce(rh, 0))
FROM person GROUP BY area_id ORDER BY area_id
"""
FIELDS = ("audience", "held_out", "suppressed", "targeted", "sent", "delivered", "undelivered", "failed",
          "installed_delivered", "installed_targeted", "installed_held_out")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def populate(path: Path, n: int, seed: int) -> None:
    sys.path.insert(0, str(ROOT))
    from loa import db

    engine = db.make_engine(f"sqlite:///{path}")
    db.create_schema(engine)
    engine.dispose()
    rng = random.Random(seed)
    fmt = "%Y-%m-%d %H:%M:%S.%f"
    planned = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
    expires = planned + timedelta(hours=24)
    t = planned.strftime(fmt)
    con = sqlite3.connect(path)
    con.execute("INSERT INTO areas (id, code, name, name_key, short_key, parent_id, level, path, updated_at) "
                "VALUES (1, 'P', 'Province', 'province', 'province', NULL, 'province', '/1/', ?)", (t,))
    con.executemany(
        "INSERT INTO areas (id, code, name, name_key, short_key, parent_id, level, path, updated_at) "
        "VALUES (?, ?, ?, ?, ?, 1, 'district', ?, ?)",
        [(i, f"D{i}", f"District {i}", f"district {i}", f"district {i}", f"/1/{i}/", t)
         for i in range(2, 2 + DISTRICTS)])
    con.execute("INSERT INTO campaigns (id, name, description, advertising, created_at, updated_at) "
                "VALUES (1, 'bench', '', 0, ?, ?)", (t, t))
    definition = json.dumps({"name": "bench", "validity_hours": 24, "segment": {"areas": ["P"]}})
    con.execute("INSERT INTO runs (id, campaign_id, scheduled_for, trigger, status, definition, created_at, note) "
                "VALUES (1, 1, ?, 'manual', 'done', ?, ?, '')", (t, definition, t))
    con.executemany(
        "INSERT INTO subscribers (id, phone, carrier, area_id, name, language, attributes, created_at, updated_at) "
        "VALUES (?, ?, 'Viettel', ?, '', 'vi', '{}', ?, ?)",
        ((i, f"+8496{i:07d}", 2 + i % DISTRICTS, t, t) for i in range(1, n + 1)))

    def messages():
        for i in range(1, n + 1):
            r = rng.random()
            sent = delivered = None
            cost = None
            if r < 0.10:
                state = "held_out"
            elif r < 0.15:
                state = "suppressed"
            elif r < 0.16:
                state = "cancelled"
            else:
                sent = planned + timedelta(seconds=rng.randint(0, 3600))
                cost = 500
                q = rng.random()
                state = "delivered" if q < 0.8 else "undelivered" if q < 0.9 else "sent" if q < 0.97 else "failed"
                if state == "delivered":
                    delivered = sent + timedelta(seconds=rng.randint(1, 600))
            yield (i, 1, i, 2 + i % DISTRICTS, state, expires.strftime(fmt),
                   sent.strftime(fmt) if sent else None, delivered.strftime(fmt) if delivered else None, cost, t)

    con.executemany(
        "INSERT INTO outbox (id, run_id, subscriber_id, area_id, state, expires_at, sent_at, delivered_at, "
        "cost_vnd, attempts, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)", messages())

    def events():
        for i in range(1, n + 1):
            if rng.random() < 0.08:
                at = planned + timedelta(hours=rng.uniform(-48, 24 * 10))
                yield (i, at.strftime(fmt), t)

    con.executemany("INSERT INTO events (subscriber_id, type, occurred_at, source, created_at) "
                    "VALUES (?, 'installed', ?, 'bench', ?)", events())
    con.commit()
    con.close()


def child_raw(path: Path) -> dict:
    con = sqlite3.connect(path)
    start = time.perf_counter()
    rows = con.execute(RAW, {"run": 1, "lead": DAY_MS, "window": 7 * DAY_MS}).fetchall()
    seconds = time.perf_counter() - start
    con.close()
    return {"seconds": seconds, "counts": {str(r[0]): list(r[1:]) for r in rows}}


def child_loa(path: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    from loa import db, report

    engine = db.make_engine(f"sqlite:///{path}")
    start = time.perf_counter()
    built = report.build(engine, "bench", None)
    seconds = time.perf_counter() - start
    engine.dispose()
    by_code = {r.code: r for r in built.rows}
    counts = {str(i): [getattr(by_code[f"D{i}"], name) for name in FIELDS] for i in range(2, 2 + DISTRICTS)}
    return {"seconds": seconds, "counts": counts}


def run_child(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], check=False, capture_output=True, text=True,
                          cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"child {args[0]} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        what, path = args.child
        result = (child_raw if what == "raw" else child_loa)(Path(path))
        result["peak_mb"] = peak_rss_mb()
        print(json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory(prefix="loa-bench-report-") as tmp:
        path = Path(tmp) / "loa.db"
        t0 = time.perf_counter()
        populate(path, args.messages, args.seed)
        print(f"{args.messages:,} messages on SQLite (ledger written in {time.perf_counter() - t0:.1f} s, not timed); "
              "each figure in its own process, baseline and loa taking turns")
        for i in range(1, args.runs + 1):
            raw = run_child("raw", str(path))
            loa = run_child("loa", str(path))
            same = "same counts" if raw["counts"] == loa["counts"] else "COUNTS DIFFER"
            print(f"run {i}: raw query {raw['seconds']:.2f} s ({raw['peak_mb']:.0f} MB)   "
                  f"loa report {loa['seconds']:.2f} s ({loa['peak_mb']:.0f} MB)   "
                  f"loa/raw {loa['seconds'] / raw['seconds']:.2f}x   {same}", flush=True)
            if raw["counts"] != loa["counts"]:
                print(f"  raw {raw['counts']}\n  loa {loa['counts']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
