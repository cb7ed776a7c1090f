"""Benchmark: one rate limit shared by several ``loa worker`` processes, measured at the
gateway, against a paced loop measured the same way in the same run (no timing
assertions: it prints figures; tests/test_shared_limit.py checks what holds on any
machine).

Four real ``loa worker`` processes send one planned run through the ``simulator_http``
gateway with ``rate = 100`` and ``burst = 1``, sharing the limit through the database
(``limiter = "database"``): on SQLite, then on PostgreSQL (skipped, with the reason,
when it is unreachable; a temporary database, dropped afterwards).  The simulator runs
in this process and stamps every request as it arrives.

The baseline is the physical floor of "100 requests a second to this server from
another process": one process posting the same JSON body with a keep-alive
``requests.Session``, each request at its exact moment ``i / rate`` (an absolute
schedule, so waits do not drift), measured by the same stamps.

For each, it prints the steady-state rate (between the 50th arrival and the 50th from
the end: ramp-up and tail left out), its share of the limit, the largest number of
arrivals in any 1-second window at the gateway, and for loa the same window over the
handover times the ledger records (``sent_at``), which is what the limiter controls.

    python bench/shared_limit.py                 # ~1 minute on 2 cores
    python bench/shared_limit.py --messages 3000 --workers 8
"""

from __future__ import annotations

import argparse
import bisect
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import make_url

from loa import db
from loa.campaign import parse_file
from loa.config import from_mapping
from loa.plan import plan_run
from providers import simulator
from providers.simulator import SimulatorServer

import dispatch as dispatch_bench   # bench/dispatch.py
from dispatch import Arrivals       # the simulator's stamps of accepted requests

PG_URL = os.environ.get("LOA_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
EDGE = 50
TEMPLATE = "Xin chào {{ subscriber.name }}\n"
CAMPAIGN = dispatch_bench.CAMPAIGN.replace("bench", "limit")
CONFIG = """
timezone = "Asia/Ho_Chi_Minh"
[defaults]
sms_gateway = "http"
[gateways.http]
type = "simulator_http"
url = "{url}"
rate = {rate}
burst = 1
[send]
threads = 8
batch_size = 100
limiter = "database"
"""


def steady_rate(times: list[float]) -> float:
    t = sorted(times)
    first, last = EDGE, len(t) - 1 - EDGE
    return (last - first) / (t[last] - t[first]) if last > first else 0.0


def max_window(times: list[float], width: float = 1.0) -> int:
    t = sorted(times)
    return max((bisect.bisect_left(t, s + width) - i for i, s in enumerate(t)), default=0)


def _paced(url: str, n: int, rate: float, start: Any) -> None:
    session = requests.Session()
    body = {"to": "+84970000000", "channel": "sms", "text": "Xin chào Người 1", "encoding": "UCS-2", "parts": 1,
            "advertising": False, "template_id": None, "template_data": {}}
    prefix = uuid.uuid4().hex[:8]
    start.wait()
    t0 = time.monotonic()
    for i in range(n):
        wait = t0 + i / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        session.post(f"{url}/v1/messages", json=body | {"key": f"paced-{prefix}-{i}"}, timeout=30).raise_for_status()


def bench_paced(n: int, rate: float) -> tuple[str, str, str]:
    ctx = mp.get_context("spawn")
    with SimulatorServer(seed=1, delivery_rate=1.0) as srv:
        clock = Arrivals(srv.network)
        start = ctx.Event()
        proc = ctx.Process(target=_paced, args=(srv.url, n, rate, start))
        proc.start()
        time.sleep(2.0)                  # let it import
        start.set()
        proc.join()
    r = steady_rate(clock.times)
    return ("baseline: paced requests.Session loop, 1 process", f"{r:,.2f}/s",
            f"{r / rate:.1%} of the limit; largest 1-s window {max_window(clock.times)} arrivals")


def bench_loa(database_url: str, label: str, n: int, rate: float, workers: int) -> tuple[str, str, str]:
    with tempfile.TemporaryDirectory(prefix="loa-bench-") as tmp, SimulatorServer(seed=2, delivery_rate=1.0) as srv:
        folder = Path(tmp)
        clock = Arrivals(srv.network)
        (folder / "templates" / "sms").mkdir(parents=True)
        (folder / "campaigns").mkdir()
        (folder / "templates" / "sms" / "limit.j2").write_text(TEMPLATE, encoding="utf-8")
        (folder / "campaigns" / "limit.toml").write_text(CAMPAIGN, encoding="utf-8")
        (folder / "config.toml").write_text(CONFIG.format(url=srv.url, rate=rate), encoding="utf-8")
        engine = db.make_engine(database_url)
        db.create_schema(engine)
        now = db.utcnow()
        with engine.begin() as conn:
            conn.execute(insert(db.subscribers), [
                {"phone": f"+8498{i:07d}", "name": f"Người {i}", "attributes": {}, "created_at": now,
                 "updated_at": now} for i in range(n)])
        campaign, problems = parse_file(folder / "campaigns" / "limit.toml")
        assert campaign is not None, problems
        config = from_mapping(tomllib.loads(CONFIG.format(url=srv.url, rate=rate)) | {"database_url": database_url},
                              root=folder)
        run_id = plan_run(engine, config, campaign).run_id
        env = dict(os.environ, LOA_CONFIG=str(folder / "config.toml"), LOA_DATABASE_URL=database_url)
        procs = [subprocess.Popen([sys.executable, "-m", "loa", "worker", "--idle", "0.1"], cwd=folder, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(workers)]
        o = db.outbox
        try:
            while True:
                with engine.connect() as conn:
                    open_ = conn.scalar(select(func.count()).where(
                        o.c.run_id == run_id, o.c.state.in_(("planned", "deferred", "claimed", "sending"))))
                if not open_:
                    break
                time.sleep(0.5)
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(60)
        with engine.connect() as conn:
            handed = [t.timestamp() for t in conn.execute(select(o.c.sent_at).where(o.c.run_id == run_id)).scalars()]
        engine.dispose()
    r = steady_rate(clock.times)
    return (f"loa: {workers} `loa worker` processes, shared limit, {label}", f"{r:,.2f}/s",
            f"{r / rate:.1%} of the limit; largest 1-s window {max_window(clock.times)} arrivals, "
            f"{max_window(handed)} handovers")


def pg_database() -> tuple[Any, str] | str:
    try:
        admin = db.make_engine(PG_URL, isolation_level="AUTOCOMMIT")
        name = f"loa_bench_{uuid.uuid4().hex[:10]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - any reason to skip is printed
        return str(exc).splitlines()[0]
    return admin, make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1500, help="messages per run (default 1500: 15 s)")
    parser.add_argument("--rate", type=float, default=100.0, help="the limit (default 100/s)")
    parser.add_argument("--workers", type=int, default=4, help="loa worker processes (default 4)")
    args = parser.parse_args(argv)
    simulator._HTTPServer.request_queue_size = 256    # a dropped SYN costs a second: not loa's
    started = time.perf_counter()
    rows = [bench_paced(args.messages, args.rate)]
    with tempfile.TemporaryDirectory(prefix="loa-bench-") as tmp:
        rows.append(bench_loa(f"sqlite:///{tmp}/loa.db", "SQLite", args.messages, args.rate, args.workers))
    pg = pg_database()
    if isinstance(pg, str):
        rows.append(("loa on PostgreSQL", "skipped", f"{db.redact(PG_URL)} unreachable: {pg}"))
    else:
        admin, url = pg
        try:
            rows.append(bench_loa(url, "PostgreSQL", args.messages, args.rate, args.workers))
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
            admin.dispose()
    dispatch_bench.print_table(f"loa shared-limit benchmark: {os.cpu_count()} cores, {args.messages:,} messages at "
                               f"{args.rate:g}/s, total {time.perf_counter() - started:.0f} s", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
