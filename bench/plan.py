"""Benchmark: plan one run for N subscribers, against a raw INSERT ... SELECT of the same rows.

loa's ``plan_run`` (the run's row, its version, one ``INSERT ... SELECT ... ON CONFLICT DO
NOTHING`` over the segment with holdout and suppression, and the count of the run's states) is
compared with one hand-written statement with the same semantics, run with the driver
directly into the same outbox table (same unique key, same partial indexes): the same segment
(the province's districts), the same holdout hash, the same suppressions (opted out, DNC, an
``installed`` event).  The raw statement runs twice: with foreign keys checked (loa's
constraints, as loa runs) and without (SQLite ``PRAGMA foreign_keys=OFF``, PostgreSQL
``session_replication_role=replica``), which is the physical floor.  Each figure starts from
the same populated database (SQLite: a fresh copy of the file; PostgreSQL: the outbox emptied,
not timed), baseline and loa taking turns.

    python bench/plan.py                                        # SQLite, 1,000,000 subscribers
    python bench/plan.py --subscribers 200000 --runs 1
    python bench/plan.py --database postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from loa import db
from loa.campaign import parse_file
from loa.config import from_mapping
from loa.plan import HASH_A, HASH_B, HASH_PRIME, holdout_salt, plan_run

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
HOLDOUT = 0.1
VALIDITY_HOURS = 48

# The same rows as loa's plan, written by hand: the run's row exists (as loa creates it first).
RAW = """
INSERT INTO outbox (run_id, subscriber_id, area_id, state, reason, channel, gateway, due_at, attempts, updated_at,
                    expires_at)
SELECT {run}, s.id, s.area_id,
       CASE WHEN s.opted_out_at IS NOT NULL OR d.phone IS NOT NULL OR i.sid IS NOT NULL THEN 'suppressed'
            WHEN ((((s.id * {a} + {salt}) % {p}) * ((s.id * {a} + {salt}) % {p})) % {p} * {b}) % {p} < {threshold}
            THEN 'held_out' ELSE 'planned' END,
       CASE WHEN s.opted_out_at IS NOT NULL THEN 'opted_out' WHEN d.phone IS NOT NULL THEN 'dnc'
            WHEN i.sid IS NOT NULL THEN 'event:installed' END,
       'sms', 'sim', {due}, 0, {now}, {expires}
FROM subscribers s
LEFT JOIN dnc d ON d.phone = s.phone
LEFT JOIN (SELECT DISTINCT subscriber_id AS sid FROM events WHERE type = 'installed') i ON i.sid = s.id
WHERE s.area_id + 0 IN (SELECT id FROM areas WHERE path LIKE '/1/%')   -- a scan, not a walk of the area index
ON CONFLICT (run_id, subscriber_id) DO NOTHING
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


def populate_postgresql(url: str, n: int, seed: int) -> None:
    """The same data in a schema of its own, written with COPY (not timed)."""
    engine = db.make_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA IF EXISTS loa_bench_plan CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA loa_bench_plan")
    engine.dispose()
    engine = pg_engine(url)
    db.create_schema(engine)
    now = datetime.now(UTC)
    rng = random.Random(seed)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("INSERT INTO areas (id, code, name, name_key, short_key, parent_id, level, path, updated_at) "
                    "VALUES (1, 'P', 'Province', 'province', 'province', NULL, 'province', '/1/', %s)", (now,))
        for i in range(2, 14):
            cur.execute("INSERT INTO areas (id, code, name, name_key, short_key, parent_id, level, path, updated_at) "
                        "VALUES (%s, %s, %s, %s, %s, 1, 'district', %s, %s)",
                        (i, f"D{i}", f"District {i}", f"district {i}", f"district {i}", f"/1/{i}/", now))
        with cur.copy("COPY subscribers (id, phone, carrier, area_id, name, language, attributes, created_at, "
                      "updated_at) FROM STDIN") as copy:
            for i in range(1, n + 1):
                copy.write_row((i, f"+8496{i:07d}", "Viettel", 2 + i % 12, "", "vi", "{}", now, now))
        with cur.copy("COPY events (subscriber_id, type, occurred_at, source, created_at) FROM STDIN") as copy:
            for i in range(1, n + 1):
                if rng.random() < 0.07:
                    copy.write_row((i, "installed", now, "bench", now))
        cur.execute("SELECT setval(pg_get_serial_sequence('subscribers', 'id'), %s)", (n,))
        raw.commit()
    finally:
        raw.close()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")
    engine.dispose()


def pg_engine(url: str):
    return db.make_engine(url, connect_args={"options": "-csearch_path=loa_bench_plan"})


def raw_sql(run_id: int, now: str, expires: str) -> str:
    return RAW.format(run=run_id, a=HASH_A, b=HASH_B, p=HASH_PRIME, salt=holdout_salt("bench"),
                      threshold=int(HOLDOUT * HASH_PRIME), due=now, now=now, expires=expires)


def raw_sqlite(path: Path, foreign_keys: bool) -> tuple[float, int]:
    """Seconds for the raw statement on SQLite, tuned as loa's connections are; and its rows."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
    for name, value in db.BULK_PRAGMAS.items():   # as plan_run's connection has them
        con.execute(f"PRAGMA {name}={value}")
    now = datetime.now(UTC)
    t = now.replace(tzinfo=None).isoformat(" ")
    con.execute("INSERT INTO campaigns (id, name, description, advertising, created_at, updated_at) "
                "VALUES (1, 'raw', '', 0, ?, ?)", (t, t))
    con.execute("INSERT INTO runs (id, campaign_id, scheduled_for, trigger, status, definition, created_at, note) "
                "VALUES (1, 1, ?, 'manual', 'planning', '{}', ?, '')", (t, t))
    expires = (now + timedelta(hours=VALIDITY_HOURS)).replace(tzinfo=None).isoformat(" ")
    sql = raw_sql(1, ":t", ":e")
    start = time.perf_counter()
    con.execute("BEGIN IMMEDIATE")
    rows = con.execute(sql, {"t": t, "e": expires}).rowcount
    con.execute("COMMIT")
    elapsed = time.perf_counter() - start
    con.close()
    return elapsed, rows


def raw_postgresql_run(cur: Any, now: datetime) -> str:
    """Add a raw campaign and its run through a psycopg cursor, and return the raw statement
    that plans that run, with ``%(t)s`` and ``%(e)s`` for its times."""
    cur.execute("INSERT INTO campaigns (name, description, advertising, created_at, updated_at) "
                "VALUES ('raw', '', false, %s, %s) RETURNING id", (now, now))
    campaign_id = cur.fetchone()[0]
    cur.execute("INSERT INTO runs (campaign_id, scheduled_for, trigger, status, definition, created_at, note) "
                "VALUES (%s, %s, 'manual', 'planning', '{}', %s, '') RETURNING id", (campaign_id, now, now))
    run_id = cur.fetchone()[0]
    return raw_sql(run_id, "@t@", "@e@").replace("%", "%%").replace("@t@", "%(t)s").replace("@e@", "%(e)s")


def raw_postgresql(url: str, foreign_keys: bool) -> tuple[float, int]:
    engine = pg_engine(url)
    now = datetime.now(UTC)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        sql = raw_postgresql_run(cur, now)
        raw.commit()
        start = time.perf_counter()
        if not foreign_keys:
            cur.execute("SET LOCAL session_replication_role = replica")
        cur.execute(sql, {"t": now, "e": now + timedelta(hours=VALIDITY_HOURS)})
        rows = cur.rowcount
        raw.commit()
        elapsed = time.perf_counter() - start
    finally:
        raw.close()
        engine.dispose()
    return elapsed, rows


def reset_postgresql(url: str) -> None:
    engine = pg_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE outbox, runs, campaign_versions, campaigns, audit_log CASCADE")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE outbox")
    engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database", default="sqlite", help="'sqlite' (a fresh file) or a PostgreSQL URL")
    args = parser.parse_args(argv)
    n = args.subscribers
    pg = args.database.startswith("postgresql")
    with tempfile.TemporaryDirectory(prefix="loa-bench-") as tmp:
        folder = Path(tmp)
        (folder / "campaigns").mkdir()
        (folder / "templates" / "sms").mkdir(parents=True)
        (folder / "templates" / "sms" / "x.j2").write_text("Bluezone {{ area.name }}\n", encoding="utf-8")
        (folder / "campaigns" / "bench.toml").write_text(CAMPAIGN, encoding="utf-8")
        pristine, work = folder / "pristine.db", folder / "loa.db"
        t0 = time.perf_counter()
        if pg:
            populate_postgresql(args.database, n, args.seed)
        else:
            populate(pristine, n, args.seed)
        print(f"subscribers {n:,} on {'PostgreSQL' if pg else 'SQLite'} (setup {time.perf_counter() - t0:.1f} s, "
              "not timed); baseline and loa taking turns, each from the same populated database")

        def fresh() -> None:
            if pg:
                reset_postgresql(args.database)
            else:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{work}{suffix}").unlink(missing_ok=True)
                shutil.copyfile(pristine, work)

        def raw(foreign_keys: bool) -> tuple[float, int]:
            fresh()
            return raw_postgresql(args.database, foreign_keys) if pg else raw_sqlite(work, foreign_keys)

        for i in range(1, args.runs + 1):
            fk_on, rows_on = raw(True)
            fk_off, rows_off = raw(False)
            fresh()
            url = args.database if pg else f"sqlite:///{work}"
            config = from_mapping({"database_url": url, "defaults": {"sms_gateway": "sim"},
                                   "gateways": {"sim": {"type": "simulator"}}}, root=folder)
            campaign, problems = parse_file(folder / "campaigns" / "bench.toml")
            assert campaign is not None, problems
            engine = pg_engine(url) if pg else db.make_engine(url)
            start = time.perf_counter()
            result = plan_run(engine, config, campaign)
            planned = time.perf_counter() - start
            with engine.connect() as conn:
                rows = conn.execute(text("SELECT count(*) FROM outbox")).scalar_one()
            engine.dispose()
            assert rows == rows_on == rows_off, (rows, rows_on, rows_off)
            print(f"run {i}: loa plan_run {planned:.2f} s ({rows / planned:,.0f} rows/s; planned "
                  f"{result.states['planned']:,}, held out {result.states['held_out']:,}, suppressed "
                  f"{result.states['suppressed']:,})   raw FK on {fk_on:.2f} s   raw FK off {fk_off:.2f} s   "
                  f"loa/raw(FK on) {fk_on / planned:.2f}x   loa/raw(FK off) {fk_off / planned:.2f}x", flush=True)
    print(f"peak RSS {peak_rss_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
