"""Benchmark: plan one run for N subscribers on SQLite.

Compares loa's in-database planning (INSERT ... SELECT over the segment, with
holdout and suppression computed in SQL) with a baseline measured in the same
process: raw ``sqlite3`` inserting the same number of outbox rows with
``executemany`` into a table of the same shape and indexes.

    python bench/plan.py                    # 1,000,000 subscribers
    python bench/plan.py --subscribers 200000
"""

from __future__ import annotations

import argparse
import random
import resource
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.schema import CreateIndex, CreateTable

from loa import db
from loa.campaign import parse_file
from loa.config import from_mapping
from loa.plan import plan_run

CAMPAIGN = """
name = "bench"
channels = ["sms"]
holdout = 0.1
suppress_events = ["installed"]
[segment]
areas = ["P"]
[sms]
template = "sms/x.j2"
"""


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def populate(path: Path, n: int, seed: int) -> None:
    """Areas, N subscribers and ~7% 'installed' events, written with raw sqlite3 (not timed)."""
    engine = db.make_engine(f"sqlite:///{path}")
    db.create_schema(engine)
    engine.dispose()
    con = sqlite3.connect(path)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    con.execute("INSERT INTO areas (id, code, name, name_key, short_key, parent_id, level, path, updated_at) "
                "VALUES (1, 'P', 'Province', 'province', 'province', NULL, 'province', '/1/', ?)", (now,))
    con.executemany(
        "INSERT INTO areas (id, code, name, name_key, short_key, parent_id, level, path, updated_at) "
        "VALUES (?, ?, ?, ?, ?, 1, 'district', ?, ?)",
        [(i, f"D{i}", f"District {i}", f"district {i}", f"district {i}", f"/1/{i}/", now) for i in range(2, 14)],
    )
    rng = random.Random(seed)
    con.executemany(
        "INSERT INTO subscribers (id, phone, carrier, area_id, name, language, attributes, created_at, updated_at) "
        "VALUES (?, ?, 'Viettel', ?, '', 'vi', '{}', ?, ?)",
        ((i, f"+8496{i:07d}", 2 + i % 12, now, now) for i in range(1, n + 1)),
    )
    con.executemany(
        "INSERT INTO events (subscriber_id, type, occurred_at, source, created_at) VALUES (?, 'installed', ?, 'bench', ?)",
        ((i, now, now) for i in range(1, n + 1) if rng.random() < 0.07),
    )
    con.commit()
    con.close()


def baseline(path: Path, n: int) -> float:
    """Seconds for raw sqlite3 executemany of N outbox rows into a table of the same shape."""
    # The outbox references runs and subscribers; the baseline table stands alone.
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    # The very DDL loa uses: same columns, same unique key, same (partial) indexes.
    con.execute(str(CreateTable(db.outbox).compile(dialect=sqlite_dialect.dialect())))
    for index in db.outbox.indexes:
        con.execute(str(CreateIndex(index).compile(dialect=sqlite_dialect.dialect())))
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    rows = ((1, i, 2 + i % 12, "planned", None, "sms", "sim", now, 0, now) for i in range(1, n + 1))
    start = time.perf_counter()
    con.execute("BEGIN IMMEDIATE")
    con.executemany(
        "INSERT INTO outbox (run_id, subscriber_id, area_id, state, reason, channel, gateway, due_at, attempts, "
        "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", rows)
    con.execute("COMMIT")
    elapsed = time.perf_counter() - start
    con.close()
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    n = args.subscribers
    with tempfile.TemporaryDirectory(prefix="loa-bench-") as tmp:
        folder = Path(tmp)
        (folder / "campaigns").mkdir()
        (folder / "templates" / "sms").mkdir(parents=True)
        (folder / "templates" / "sms" / "x.j2").write_text("Bluezone {{ area.name }}\n", encoding="utf-8")
        (folder / "campaigns" / "bench.toml").write_text(CAMPAIGN, encoding="utf-8")
        path = folder / "loa.db"
        t0 = time.perf_counter()
        populate(path, n, args.seed)
        setup = time.perf_counter() - t0
        rss_before = peak_rss_mb()
        config = from_mapping({"database_url": f"sqlite:///{path}", "defaults": {"sms_gateway": "sim"},
                               "gateways": {"sim": {"type": "simulator"}}}, root=folder)
        campaign, problems = parse_file(folder / "campaigns" / "bench.toml")
        assert campaign is not None, problems
        engine = db.make_engine(config.database_url)
        start = time.perf_counter()
        result = plan_run(engine, config, campaign)
        planned = time.perf_counter() - start
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT count(*) FROM outbox")).scalar_one()
        engine.dispose()
        rss_after = peak_rss_mb()
        raw = baseline(folder / "baseline.db", rows)
    loa_rate, raw_rate = rows / planned, rows / raw
    print(f"subscribers            {n:>12,}   (setup {setup:.1f} s, not timed)")
    print(f"outbox rows planned    {rows:>12,}   planned {result.states['planned']:,}, "
          f"held out {result.states['held_out']:,}, suppressed {result.states['suppressed']:,}")
    print(f"loa plan_run           {planned:>11.2f} s   {loa_rate:>12,.0f} rows/s")
    print(f"raw sqlite3 baseline   {raw:>11.2f} s   {raw_rate:>12,.0f} rows/s   (executemany, same table shape)")
    print(f"loa / baseline         {loa_rate / raw_rate:>11.2f} x")
    print(f"peak RSS               {rss_after:>11.0f} MB  (after setup {rss_before:.0f} MB)")
    target_ok = loa_rate >= 500_000 and rss_after < 300
    print(f"target >= 500k rows/s and < 300 MB: {'met' if target_ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
