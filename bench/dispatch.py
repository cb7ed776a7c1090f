"""Benchmark: sending through the ``simulator_http`` gateway, against baselines measured
in the same run (no timing assertions: it prints figures).

(a) No latency, no limit: messages/s of one ``Dispatcher.run_until_empty()`` (SQLite,
    the configured threads) against a loopback SimulatorServer, versus a bare loop of
    ``requests.Session.post`` with the same JSON body to the same server from this
    process, single-threaded and with the dispatcher's thread count.  The gap is
    what loa costs per message: claiming, rendering, the ledger's commits (each
    message is marked sending before its call, in commits the sender threads
    share), receipts.
(b) 50 ms of gateway latency and a 500/s limit: the rate achieved (first to last
    arrival at the server) and the largest number of arrivals in any 1-second window.
(c) 1, 2 and 4 worker processes sharing one PostgreSQL database at 50 ms latency:
    messages/s for each count (scaling) and the keys the server received more than
    once (expected 0).  Skipped, with the reason, when PostgreSQL is unreachable;
    it runs in a temporary database that is dropped afterwards.

    python bench/dispatch.py                      # ~2-3 minutes on 2 cores
    python bench/dispatch.py --messages 20000 --workers 1,2,4,8
    LOA_BENCH_PG_URL=postgresql+psycopg://user@host/db python bench/dispatch.py
"""

from __future__ import annotations

import argparse
import bisect
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import make_url

from loa import db
from loa.campaign import parse_file
from loa.config import Config, from_mapping
from loa.dispatch import Dispatcher
from loa.plan import plan_run
from providers import simulator
from providers.base import OutgoingMessage, SendResult
from providers.simulator import SimulatorServer

PG_URL = os.environ.get("LOA_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
TEMPLATE = "Xin chào {{ subscriber.name }}, hãy cài Bluezone để bảo vệ mình và cộng đồng.\n"
CAMPAIGN = """
name = "bench"
channels = ["sms"]
[sms]
template = "sms/bench.j2"
[window]
start = "00:00"
end = "23:59:59.999999"
"""
SENT = ("sent", "delivered", "undelivered")


class Arrivals:
    """Wraps a SimulatedNetwork's submit: the monotonic time each accepted request arrived."""

    def __init__(self, network: Any) -> None:
        self.times: list[float] = []
        self._lock = threading.Lock()
        self._submit = network.submit
        network.submit = self

    def __call__(self, message: OutgoingMessage) -> SendResult:
        at = time.monotonic()      # before the simulated latency: when the request came in
        result = self._submit(message)
        with self._lock:
            self.times.append(at)
        return result

    def rate(self) -> float:
        t = sorted(self.times)
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 else 0.0

    def max_window(self, width: float = 1.0) -> int:
        t = sorted(self.times)
        return max((bisect.bisect_left(t, s + width) - i for i, s in enumerate(t)), default=0)


def make_config(folder: Path, database_url: str, url: str, *, rate: float, burst: int, threads: int,
                limiter: str = "memory") -> Config:
    return from_mapping({
        "database_url": database_url,
        "defaults": {"sms_gateway": "http"},
        "gateways": {"http": {"type": "simulator_http", "url": url, "rate": rate, "burst": burst, "timeout": 30.0}},
        "send": {"threads": threads, "batch_size": 500, "limiter": limiter},
    }, root=folder)


def prepare(folder: Path, config: Config, n: int) -> None:
    """Schema, n subscribers (one executemany) and one planned run of n messages."""
    (folder / "templates" / "sms").mkdir(parents=True, exist_ok=True)
    (folder / "campaigns").mkdir(exist_ok=True)
    (folder / "templates" / "sms" / "bench.j2").write_text(TEMPLATE, encoding="utf-8")
    (folder / "campaigns" / "bench.toml").write_text(CAMPAIGN, encoding="utf-8")
    engine = db.make_engine(config.database_url)
    db.create_schema(engine)
    now = db.utcnow()
    with engine.begin() as conn:
        conn.execute(insert(db.subscribers), [
            {"phone": f"+8497{i:07d}", "name": f"Người {i}", "attributes": {}, "created_at": now, "updated_at": now}
            for i in range(n)])
    campaign, problems = parse_file(folder / "campaigns" / "bench.toml")
    assert campaign is not None, problems
    result = plan_run(engine, config, campaign)
    assert result.states["planned"] == n, result.states
    engine.dispose()


def sent_count(database_url: str) -> int:
    engine = db.make_engine(database_url)
    with engine.connect() as conn:
        n = conn.scalar(select(func.count()).select_from(db.outbox).where(db.outbox.c.state.in_(SENT))) or 0
    engine.dispose()
    return n


def run_dispatcher(config: Config) -> float:
    """One Dispatcher.run_until_empty(); its wall time (the final receipt drain included)."""
    engine = db.make_engine(config.database_url)
    dispatcher = Dispatcher(engine, config)
    start = time.perf_counter()
    dispatcher.run_until_empty()
    elapsed = time.perf_counter() - start
    dispatcher.pool.close()
    engine.dispose()
    return elapsed


def bare_posts(url: str, n: int, threads: int) -> float:
    """n POSTs of the dispatcher's JSON body with requests.Session, one session per thread."""
    local = threading.local()
    body = {"to": "+84970000000", "channel": "sms", "text": TEMPLATE.replace("{{ subscriber.name }}", "Người 1"),
            "encoding": "UCS-2", "parts": 2, "advertising": False, "template_id": None, "template_data": {}}
    prefix = uuid.uuid4().hex[:8]

    def post(i: int) -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            session.headers["Accept"] = "application/json"
        resp = session.post(f"{url}/v1/messages", json=body | {"key": f"bare-{prefix}-{i}"}, timeout=(3.05, 30))
        resp.raise_for_status()

    start = time.perf_counter()
    if threads == 1:
        for i in range(n):
            post(i)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(post, range(n)))
    return time.perf_counter() - start


# -- (a) -----------------------------------------------------------------------------

def bench_overhead(n: int, threads: int) -> list[tuple[str, str, str]]:
    with tempfile.TemporaryDirectory(prefix="loa-bench-") as tmp, SimulatorServer(seed=1) as srv:
        folder = Path(tmp)
        config = make_config(folder, f"sqlite:///{folder / 'loa.db'}", srv.url, rate=1e9, burst=1000,
                             threads=threads)
        prepare(folder, config, n)
        elapsed = run_dispatcher(config)
        sent = sent_count(config.database_url)
        single = bare_posts(srv.url, n, 1)
        pooled = bare_posts(srv.url, n, threads)
    loa_rate = sent / elapsed
    return [
        (f"(a) loa Dispatcher, {threads} threads, SQLite", f"{loa_rate:,.0f} msg/s", f"{sent:,} sent in {elapsed:.1f} s"),
        ("    bare requests.post, 1 thread", f"{n / single:,.0f} msg/s", f"loa = {loa_rate / (n / single):.2f} x this"),
        (f"    bare requests.post, {threads} threads", f"{n / pooled:,.0f} msg/s",
         f"loa = {loa_rate / (n / pooled):.2f} x this"),
    ]


# -- (b) -----------------------------------------------------------------------------

def bench_limit(n: int, threads: int, rate: float, latency_ms: float) -> list[tuple[str, str, str]]:
    rows = []
    for limiter in ("memory", "database"):
        with tempfile.TemporaryDirectory(prefix="loa-bench-") as tmp, \
                SimulatorServer(seed=2, latency_ms=latency_ms) as srv:
            folder = Path(tmp)
            clock = Arrivals(srv.network)
            config = make_config(folder, f"sqlite:///{folder / 'loa.db'}", srv.url, rate=rate, burst=1,
                                 threads=threads, limiter=limiter)
            prepare(folder, config, n)
            elapsed = run_dispatcher(config)
        note = (f"largest 1-s window {clock.max_window()} (limit {rate:g}); "
                f"{len(clock.times):,} arrivals, {elapsed:.1f} s")
        rows.append((f"(b) {latency_ms:g} ms latency, limit {rate:g}/s, {limiter} limiter, {threads} threads",
                     f"{clock.rate():,.1f} msg/s", note))
    return rows


# -- (c) -----------------------------------------------------------------------------

def _worker(database_url: str, folder: str, url: str, threads: int, start: Any) -> None:
    config = make_config(Path(folder), database_url, url, rate=1e9, burst=1000, threads=threads)
    engine = db.make_engine(database_url)
    dispatcher = Dispatcher(engine, config)
    start.wait()
    dispatcher.run_until_empty()
    dispatcher.pool.close()
    engine.dispose()


def pg_reachable(url: str) -> str | None:
    """None if PostgreSQL answers at url, else why not."""
    try:
        engine = db.make_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any reason to skip is printed
        return str(exc).splitlines()[0]
    return None


def bench_workers(n: int, threads: int, counts: list[int], latency_ms: float) -> list[tuple[str, str, str]]:
    why = pg_reachable(PG_URL)
    if why:
        return [("(c) workers on PostgreSQL", "skipped", f"{db.redact(PG_URL)} unreachable: {why}")]
    admin = db.make_engine(PG_URL, isolation_level="AUTOCOMMIT")
    rows: list[tuple[str, str, str]] = []
    base = None
    ctx = mp.get_context("spawn")
    for count in counts:
        name = f"loa_bench_{uuid.uuid4().hex[:10]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
        try:
            with tempfile.TemporaryDirectory(prefix="loa-bench-") as tmp, \
                    SimulatorServer(seed=3, latency_ms=latency_ms) as srv:
                folder = Path(tmp)
                clock = Arrivals(srv.network)
                prepare(folder, make_config(folder, url, srv.url, rate=1e9, burst=1000, threads=threads), n)
                start = ctx.Event()
                procs = [ctx.Process(target=_worker, args=(url, tmp, srv.url, threads, start)) for _ in range(count)]
                for p in procs:
                    p.start()
                time.sleep(3.0)             # let every process import and build its gateway
                t0 = time.perf_counter()
                start.set()
                for p in procs:
                    p.join()
                elapsed = time.perf_counter() - t0
                twice = sum(1 for c in srv.network.received.values() if c > 1)
                sent = sent_count(url)
                failed = [p.exitcode for p in procs if p.exitcode]
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        rate = sent / elapsed
        base = base or rate
        rows.append((f"(c) {count} worker process{'es' if count > 1 else ''}, PostgreSQL, {latency_ms:g} ms",
                     f"{rate:,.0f} msg/s", f"x{rate / base:.2f} of 1 worker; {sent:,} sent, "
                     f"{twice} keys received twice" + (f"; exit codes {failed}" if failed else "")
                     + f"; arrival rate {clock.rate():,.0f}/s"))
    admin.dispose()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=3000, help="messages for (a) and (c) (default 3000)")
    parser.add_argument("--threads", type=int, default=8, help="dispatcher threads (default 8, loa's default)")
    parser.add_argument("--limit", type=float, default=500.0, help="(b): the rate limit (default 500/s)")
    parser.add_argument("--limit-seconds", type=float, default=8.0, help="(b): seconds of sending (default 8)")
    parser.add_argument("--limit-threads", type=int, default=48,
                        help="(b): threads; 50 ms at 500/s keeps 25 calls in flight (default 48)")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="(b) and (c) (default 50)")
    parser.add_argument("--workers", default="1,2,4", help="(c): worker counts (default 1,2,4)")
    parser.add_argument("--skip", default="", help="parts to skip, e.g. 'c' or 'ab'")
    args = parser.parse_args(argv)
    # The simulator's listen backlog of 5 drops connections from 48 threads: a dropped SYN
    # costs a second, which would be measured as loa's.
    simulator._HTTPServer.request_queue_size = 512
    rows: list[tuple[str, str, str]] = []
    started = time.perf_counter()
    if "a" not in args.skip:
        rows += bench_overhead(args.messages, args.threads)
    if "b" not in args.skip:
        rows += bench_limit(int(args.limit * args.limit_seconds), args.limit_threads, args.limit, args.latency_ms)
    if "c" not in args.skip:
        rows += bench_workers(args.messages, args.threads, [int(c) for c in args.workers.split(",")],
                              args.latency_ms)
    print_table(f"loa dispatch benchmark: {os.cpu_count()} cores, {args.messages:,} messages, "
                f"total {time.perf_counter() - started:.0f} s", rows)
    return 0


def print_table(title: str, rows: list[tuple[str, str, str]]) -> None:
    """The title, then one aligned line per (what, figure, note)."""
    width = max(len(r[0]) for r in rows)
    print(f"\n{title}")
    for what, figure, note in rows:
        print(f"{what:<{width}}  {figure:>14}  {note}")


if __name__ == "__main__":
    sys.exit(main())
