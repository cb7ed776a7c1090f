"""Benchmark: how import, planning and the report grow with the subscriber base, on PostgreSQL.

For each size N (``--sizes``), in a schema of its own (``loa_bench_growth``), dropped afterwards:

- **import**: ``loa import subscribers`` (loa.importer.run_import) of an N-row CSV of the shapes
  a real export has (bench/import_subscribers.py's file), against raw ``COPY`` of the same file's
  text into a table with a unique index on the phone cell (the database's floor for N rows);
- **planning**: ``plan_run`` of one campaign over the N subscribers, against the raw
  ``INSERT ... SELECT`` of the same rows (bench/plan.py's statement), each into an empty outbox;
  then a second campaign planned into the outbox that already holds the first one's N rows
  (a ledger with history: the unique key's index is twice as deep in entries);
- **report**: ``loa report`` of the first campaign (loa.report.build) once its messages are
  sent and delivered (one UPDATE, not timed, then VACUUM ANALYZE) while the outbox also holds
  the second campaign's N rows, against one raw query of the same counts over the campaign's
  run only;
- **disk**: ``pg_total_relation_size`` of subscribers (per subscriber) and of the outbox (per
  message, after planning and after the messages' one update), and the WAL written by the plan
  (``pg_current_wal_lsn``), with the checkpoints the server requested meanwhile.

Time per row at each size is printed beside the smallest size's: a ratio near 1.00 is linear.

    python bench/growth.py --database postgresql+psycopg://postgres@127.0.0.1:5432/postgres
    python bench/growth.py --database ... --sizes 1000000,3000000,10000000 --runs 3
    python bench/growth.py --database ... --sizes 200000 --runs 1
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from import_subscribers import make_areas, make_csv
from plan import CAMPAIGN, VALIDITY_HOURS, raw_postgresql_run

SCHEMA = "loa_bench_growth"
OTHER = CAMPAIGN.replace('name = "bench"', 'name = "other"')

# The report's counts for one run, written by hand (bench/report.py's statement in PostgreSQL's
# terms): a response is the first 'installed' at or after the planned send time, within 7 days
# of it (targeted, held out) or of the delivery (delivered).
RAW_REPORT = """
WITH first AS (
    SELECT o.id, min(extract(epoch FROM e.occurred_at) * 1000) AS at
    FROM events e JOIN outbox o ON o.run_id = %(run)s AND o.subscriber_id = e.subscriber_id
    WHERE e.type = 'installed'
      AND extract(epoch FROM e.occurred_at) * 1000 >= extract(epoch FROM o.expires_at) * 1000 - %(lead)s
    GROUP BY o.id
), m AS (
    SELECT o.area_id, o.state, extract(epoch FROM o.expires_at) * 1000 - %(lead)s AS planned,
           CASE WHEN o.state = 'delivered'
                THEN extract(epoch FROM coalesce(o.delivered_at, o.sent_at)) * 1000 END AS reached, f.at
    FROM outbox o LEFT JOIN first f ON f.id = o.id WHERE o.run_id = %(run)s
)
SELECT count(*), count(*) FILTER (WHERE state = 'held_out'), count(*) FILTER (WHERE state = 'suppressed'),
       count(*) FILTER (WHERE state NOT IN ('held_out', 'suppressed')),
       count(*) FILTER (WHERE state IN ('sent', 'delivered', 'undelivered')),
       count(*) FILTER (WHERE state = 'delivered'),
       count(*) FILTER (WHERE at >= reached AND at < reached + %(window)s),
       count(*) FILTER (WHERE state NOT IN ('held_out', 'suppressed') AND at < planned + %(window)s),
       count(*) FILTER (WHERE state = 'held_out' AND at < planned + %(window)s)
FROM m
"""
WINDOW_MS = 7 * 86_400_000
LEAD_MS = VALIDITY_HOURS * 3_600_000


def engine_for(url: str):
    from loa import db

    return db.make_engine(url, connect_args={"options": f"-csearch_path={SCHEMA}"})


def fresh_schema(url: str) -> None:
    from loa import db

    admin = db.make_engine(url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        conn.exec_driver_sql(f"CREATE SCHEMA {SCHEMA}")
    admin.dispose()
    engine = engine_for(url)
    db.create_schema(engine)
    engine.dispose()


def drop_schema(url: str) -> None:
    from loa import db

    admin = db.make_engine(url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    admin.dispose()


def autocommit(engine, sql: str) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(sql)


def scalar(engine, sql: str, params: dict | None = None):
    with engine.connect() as conn:
        return conn.exec_driver_sql(sql, params or {}).scalar()


def size(engine, table: str) -> int:
    return scalar(engine, f"SELECT pg_total_relation_size('{SCHEMA}.{table}')")


def wal_lsn(engine) -> int:
    return scalar(engine, "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")


def checkpoints(engine) -> tuple[int, int]:
    with engine.connect() as conn:
        timed, req = conn.exec_driver_sql("SELECT checkpoints_timed, checkpoints_req FROM pg_stat_bgwriter").one()
    return int(timed), int(req)


def timed_import(url: str, csv_path: Path, areas_path: Path, folder: Path) -> tuple[float, int]:
    from loa.importer import AreasHandler, SubscribersHandler, run_import

    fresh_schema(url)
    engine = engine_for(url)
    run_import(engine, AreasHandler(engine, areas_path), areas_path)
    start = time.perf_counter()
    summary = run_import(engine, SubscribersHandler(engine, csv_path), csv_path, rejects_path=folder / "rejects.csv")
    seconds = time.perf_counter() - start
    engine.dispose()
    return seconds, summary.read


def raw_copy(url: str, csv_path: Path) -> float:
    """COPY of the file's text into a table with a unique index on the phone cell."""
    engine = engine_for(url)
    autocommit(engine, "DROP TABLE IF EXISTS raw_copy")
    autocommit(engine, "CREATE TABLE raw_copy (phone text, area_code text, name text, age int, grp text)")
    autocommit(engine, "CREATE INDEX ix_raw_copy_phone ON raw_copy (phone)")
    raw = engine.raw_connection()
    try:
        start = time.perf_counter()
        with raw.cursor() as cur, cur.copy("COPY raw_copy FROM STDIN (FORMAT csv, HEADER true)") as copy, \
                csv_path.open("rb") as f:
            while chunk := f.read(1 << 20):
                copy.write(chunk)
        raw.commit()
        seconds = time.perf_counter() - start
    finally:
        raw.close()
    autocommit(engine, "DROP TABLE raw_copy")
    engine.dispose()
    return seconds


def add_events(url: str) -> None:
    """'installed' for ~7% of the subscribers, a day after planning (inside the window): not timed."""
    engine = engine_for(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO events (subscriber_id, type, occurred_at, source, created_at) "
            "SELECT id, 'installed', now() + interval '1 day', 'bench', now() FROM subscribers WHERE id %% 14 = 0")
    autocommit(engine, "VACUUM ANALYZE")
    engine.dispose()


def reset_ledger(url: str) -> None:
    engine = engine_for(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE outbox, runs, campaign_versions, campaigns, audit_log CASCADE")
    autocommit(engine, "CHECKPOINT")
    engine.dispose()


def raw_plan(url: str) -> tuple[float, int]:
    engine = engine_for(url)
    now = datetime.now(UTC)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        sql = raw_postgresql_run(cur, now)
        raw.commit()
        sql = sql.replace("path LIKE '/1/%%'", "path LIKE '/' || (SELECT id FROM areas WHERE code = 'P') || '/%%'")
        start = time.perf_counter()
        cur.execute(sql, {"t": now, "e": now + timedelta(hours=VALIDITY_HOURS)})
        rows = cur.rowcount
        raw.commit()
        return time.perf_counter() - start, rows
    finally:
        raw.close()
        engine.dispose()


def loa_plan(url: str, folder: Path, name: str) -> tuple[float, int, int, tuple[int, int]]:
    """Seconds, the run's id, the WAL bytes written and the checkpoints (timed, requested) meanwhile."""
    from loa.campaign import parse_file
    from loa.config import from_mapping
    from loa.plan import plan_run

    engine = engine_for(url)
    config = from_mapping({"database_url": url, "defaults": {"sms_gateway": "sim"},
                           "gateways": {"sim": {"type": "simulator"}}}, root=folder)
    campaign, problems = parse_file(folder / "campaigns" / f"{name}.toml")
    assert campaign is not None, problems
    lsn, (ct, cr) = wal_lsn(engine), checkpoints(engine)
    start = time.perf_counter()
    result = plan_run(engine, config, campaign)
    seconds = time.perf_counter() - start
    ct2, cr2 = checkpoints(engine)
    wal = wal_lsn(engine) - lsn
    engine.dispose()
    return seconds, result.run_id, wal, (ct2 - ct, cr2 - cr)


def send_all(url: str, run_id: int) -> None:
    """The run's targeted messages sent, 80% delivered (one update per message): not timed."""
    engine = engine_for(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE outbox SET state = CASE WHEN id %% 5 = 0 THEN 'sent' ELSE 'delivered' END, "
            "sent_at = now(), delivered_at = CASE WHEN id %% 5 = 0 THEN NULL ELSE now() + interval '1 minute' END, "
            "cost_vnd = 800, updated_at = now() WHERE run_id = %(run)s AND state = 'planned'", {"run": run_id})
    autocommit(engine, "VACUUM ANALYZE outbox")
    engine.dispose()


def loa_report(url: str) -> tuple[float, tuple[int, ...]]:
    from loa.campaign import Goal
    from loa.report import build

    engine = engine_for(url)
    start = time.perf_counter()
    report = build(engine, "bench", Goal())
    seconds = time.perf_counter() - start
    engine.dispose()
    t = report.total
    return seconds, (t.audience, t.held_out, t.suppressed, t.targeted, t.sent, t.delivered)


def raw_report(url: str, run_id: int) -> tuple[float, tuple[int, ...]]:
    engine = engine_for(url)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        start = time.perf_counter()
        cur.execute(RAW_REPORT, {"run": run_id, "lead": LEAD_MS, "window": WINDOW_MS})
        row = cur.fetchone()
        seconds = time.perf_counter() - start
        raw.rollback()
    finally:
        raw.close()
        engine.dispose()
    return seconds, tuple(int(v) for v in row[:6])


def mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB"


def measure(url: str, n: int, runs: int, seed: int, folder: Path) -> dict[str, float]:
    csv_path, areas_path = folder / "subscribers.csv", folder / "areas.csv"
    t0 = time.perf_counter()
    make_csv(csv_path, n, seed)
    make_areas(areas_path)
    print(f"\n== {n:,} subscribers (file written in {time.perf_counter() - t0:.0f} s, not timed)", flush=True)
    out: dict[str, list[float]] = {"import": [], "copy": [], "plan": [], "raw_plan": [], "report": [], "raw_report": []}
    rows = n
    for i in range(1, runs + 1):
        copy = raw_copy(url, csv_path) if i > 1 else None   # the schema exists from the 2nd run on
        seconds, rows = timed_import(url, csv_path, areas_path, folder)
        copy = copy if copy is not None else raw_copy(url, csv_path)
        out["import"].append(seconds / rows)
        out["copy"].append(copy / rows)
        print(f"import run {i}: loa {seconds:.1f} s ({rows / seconds:,.0f} rows/s)   raw COPY {copy:.1f} s   "
              f"loa/COPY {copy / seconds:.2f}x", flush=True)
    engine = engine_for(url)
    subscribers = scalar(engine, "SELECT count(*) FROM subscribers")
    sub_bytes = size(engine, "subscribers")
    engine.dispose()
    print(f"subscribers {subscribers:,}: {mb(sub_bytes)} with indexes, {sub_bytes / subscribers:,.0f} B per subscriber")
    add_events(url)
    planned = 0
    for i in range(1, runs + 1):
        reset_ledger(url)
        raw, raw_rows = raw_plan(url)
        reset_ledger(url)
        seconds, run_id, wal, (ct, cr) = loa_plan(url, folder, "bench")
        engine = engine_for(url)
        planned = scalar(engine, "SELECT count(*) FROM outbox")
        engine.dispose()
        assert planned == raw_rows, (planned, raw_rows)   # the same rows, or the ratio means nothing
        out["plan"].append(seconds / planned)
        out["raw_plan"].append(raw / planned)
        print(f"plan run {i}: loa {seconds:.1f} s ({planned / seconds:,.0f} rows/s)   raw INSERT ... SELECT "
              f"{raw:.1f} s   loa/raw {raw / seconds:.2f}x   WAL {wal / planned:,.0f} B per message, "
              f"checkpoints {ct} timed, {cr} requested", flush=True)
    engine = engine_for(url)
    planned_bytes = size(engine, "outbox")
    engine.dispose()
    seconds, _, wal, (ct, cr) = loa_plan(url, folder, "other")
    out["plan_history"] = [seconds / planned]
    print(f"plan of a 2nd campaign over a ledger of {planned:,}: {seconds:.1f} s ({planned / seconds:,.0f} rows/s), "
          f"WAL {wal / planned:,.0f} B per message, checkpoints {ct} timed, {cr} requested", flush=True)
    send_all(url, run_id)
    engine = engine_for(url)
    sent_bytes = size(engine, "outbox")
    total = scalar(engine, "SELECT count(*) FROM outbox")
    engine.dispose()
    print(f"outbox: {planned_bytes / planned:,.0f} B per planned message; {sent_bytes / total:,.0f} B per message "
          f"once one campaign's were sent (one update each, vacuumed), {mb(sent_bytes)} for {total:,} messages")
    for i in range(1, runs + 1):
        raw, raw_counts = raw_report(url, run_id)
        seconds, counts = loa_report(url)
        out["report"].append(seconds / planned)
        out["raw_report"].append(raw / planned)
        same = "same counts" if counts == raw_counts else f"COUNTS DIFFER loa {counts} raw {raw_counts}"
        print(f"report run {i}: loa {seconds:.1f} s   raw query {raw:.1f} s   loa/raw {seconds / raw:.2f}x   {same}",
              flush=True)
    result = {k: min(v) for k, v in out.items()}
    result.update(sub_bytes=sub_bytes / subscribers, planned_bytes=planned_bytes / planned,
                  sent_bytes=sent_bytes / total)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", default=os.environ.get("LOA_DATABASE_URL", ""),
                        help="a PostgreSQL URL (a schema of its own is created and dropped)")
    parser.add_argument("--sizes", default="1000000,3000000", help="subscriber counts, comma-separated")
    parser.add_argument("--runs", default="3", help="runs per size, one number or one per size (3,3,1)")
    parser.add_argument("--schema", default="loa_bench_growth", help="the schema to create, fill and drop")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if not args.database.startswith("postgresql"):
        parser.error("--database: a PostgreSQL URL is needed (growth is measured on PostgreSQL)")
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    runs = [int(r) for r in args.runs.split(",")]
    runs = dict(zip(sizes, runs if len(runs) == len(sizes) else [runs[0]] * len(sizes), strict=True))
    global SCHEMA
    SCHEMA = args.schema
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} at start; "
          f"sizes {', '.join(f'{s:,} ({runs[s]} run(s))' for s in sizes)}; best per row kept")
    engine = engine_for(args.database)
    with engine.connect() as conn:
        settings = {name: conn.exec_driver_sql(f"SHOW {name}").scalar() for name in
                    ("shared_buffers", "max_wal_size", "work_mem", "maintenance_work_mem", "checkpoint_timeout")}
    engine.dispose()
    print("server: " + ", ".join(f"{k} {v}" for k, v in settings.items()))
    results: dict[int, dict[str, float]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="loa-bench-growth-") as tmp:
            folder = Path(tmp)
            (folder / "campaigns").mkdir()
            (folder / "templates" / "sms").mkdir(parents=True)
            (folder / "templates" / "sms" / "x.j2").write_text("Bluezone {{ area.name }}\n", encoding="utf-8")
            (folder / "campaigns" / "bench.toml").write_text(CAMPAIGN, encoding="utf-8")
            (folder / "campaigns" / "other.toml").write_text(OTHER, encoding="utf-8")
            for n in sizes:
                results[n] = measure(args.database, n, runs[n], args.seed, folder)
    finally:
        drop_schema(args.database)
    base = results[sizes[0]]
    print(f"\nper row (µs), and against {sizes[0]:,} (1.00 = linear); baselines in the same run")
    for key, label in (("import", "import"), ("copy", "  raw COPY"), ("plan", "plan"), ("raw_plan", "  raw INSERT"),
                       ("plan_history", "plan over history"), ("report", "report"), ("raw_report", "  raw query")):
        cells = "   ".join(f"{n:>11,}: {results[n][key] * 1e6:6.2f} ({results[n][key] / base[key]:.2f})" for n in sizes)
        print(f"{label:<18} {cells}")
    for key, label in (("sub_bytes", "B/subscriber"), ("planned_bytes", "B/planned msg"), ("sent_bytes", "B/sent msg")):
        print(f"{label:<18} " + "   ".join(f"{n:>11,}: {results[n][key]:6,.0f}" for n in sizes))
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
