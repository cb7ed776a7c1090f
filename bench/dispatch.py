"""Benchmark: sending through the ``simulator_http`` gateway, against baselines measured
in the same run (no timing assertions: it prints figures).

The gateway is a loopback SimulatorServer in a process of its own, as a real gateway
is: it keeps connections alive (HTTP/1.1) and does not compete with the measured
process for its interpreter's lock.

(a) No latency, no limit: messages/s of one ``Dispatcher.run_until_empty()`` (SQLite,
    the configured threads), versus a bare loop of ``requests.Session.post`` (one
    session per thread) with the same JSON body, the same threads and the same server.
    Each is run twice, alternately, and the ratio is of the means.  The gap is what loa
    costs per message: claiming, rendering, the limiter, the ledger's commits (each
    message is marked sending before its call, in commits the sender threads share),
    receipts.
(b) 50 ms of gateway latency and a 500/s limit, 20 s of sending, with the in-memory and
    with the database limiter: the rate achieved (first to last arrival at the server)
    and the largest number of arrivals in any 1-second window.
(c) 1, 2 and 4 worker processes sharing one PostgreSQL database at 50 ms latency, over
    20,000 messages: messages/s for each count (scaling) and the keys the server received
    more than once (expected 0).  Skipped, with the reason, when PostgreSQL is
    unreachable; it runs in a temporary database that is dropped afterwards.

    python bench/dispatch.py                      # ~6 minutes on 2 cores
    python bench/dispatch.py --skip bc            # (a) only
    python bench/dispatch.py --worker-messages 40000 --workers 1,2,4,8
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


def _serve(conn: Any, options: dict[str, Any]) -> None:
    """The child process of :class:`GatewayProcess`: serve until told to stop, then send back
    what arrived."""
    # The simulator's listen backlog of 5 drops connections from 48 threads: a dropped SYN
    # costs a second, which would be measured as loa's.
    simulator._HTTPServer.request_queue_size = 512
    with SimulatorServer(**options) as srv:
        clock = Arrivals(srv.network)
        conn.send(srv.url)
        conn.recv()
        conn.send({"times": list(clock.times), "connections": srv.connections,
                   "twice": sum(1 for c in srv.network.received.values() if c > 1),
                   "accepted": srv.network.total_accepted})


class GatewayProcess:
    """A loopback :class:`SimulatorServer` in a process of its own, as a real gateway is:
    it keeps connections alive (HTTP/1.1) and takes no CPU from the measured process's
    interpreter.  :meth:`stop` returns what it saw: arrival times (monotonic, the same
    clock in every process on Linux), connections, keys received more than once."""

    def __init__(self, **options: Any) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, options), daemon=True)
        self._proc.start()
        self.url: str = self._conn.recv()
        self.seen: dict[str, Any] = {}

    def stop(self) -> dict[str, Any]:
        if not self.seen:
            self._conn.send("stop")
            self.seen = self._conn.recv()
            self._proc.join(10)
        return self.seen

    def __enter__(self) -> GatewayProcess:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._proc.is_alive():
            self._proc.kill()


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


def rate_of(times: list[float]) -> float:
    """Arrivals per second, first to last (the ramp-up included)."""
    t = sorted(times)
    return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 else 0.0


def max_window(times: list[float], width: float = 1.0) -> int:
    """The most arrivals in any window of ``width`` seconds."""
    t = sorted(times)
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


def run_dispatcher(config: Config) -> tuple[float, int]:
    """One Dispatcher.run_until_empty(): its wall time (the final receipt drain included),
    and the rate-limit slots its senders woke too late for."""
    engine = db.make_engine(config.database_url)
    dispatcher = Dispatcher(engine, config)
    start = time.perf_counter()
    summary = dispatcher.run_until_empty()
    elapsed = time.perf_counter() - start
    dispatcher.pool.close()
    engine.dispose()
    return elapsed, summary.missed_slots


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
    """loa, then the bare loop with loa's thread count, then loa again, then the bare loop
    again (the machine's load drifts): each ratio is of the two means."""
    loa_rates, bare_rates, single_rates = [], [], []
    with tempfile.TemporaryDirectory(prefix="loa-bench-") as tmp, GatewayProcess(seed=1) as srv:
        for turn in range(2):
            folder = Path(tmp) / str(turn)
            config = make_config(folder, f"sqlite:///{folder / 'loa.db'}", srv.url, rate=1e9, burst=1000,
                                 threads=threads)
            prepare(folder, config, n)
            elapsed, _ = run_dispatcher(config)
            loa_rates.append(sent_count(config.database_url) / elapsed)
            bare_rates.append(n / bare_posts(srv.url, n, threads))
        single_rates.append(n / bare_posts(srv.url, n, 1))
        seen = srv.stop()
    loa_rate, bare, single = (sum(r) / len(r) for r in (loa_rates, bare_rates, single_rates))
    return [
        (f"(a) loa Dispatcher, {threads} threads, SQLite", f"{loa_rate:,.0f} msg/s",
         (f"{' and '.join(f'{r:,.0f}' for r in loa_rates)}; the gateway saw {seen['connections']} connections "
          f"for {seen['accepted']:,} messages")),
        (f"    bare requests.Session, {threads} threads", f"{bare:,.0f} msg/s",
         f"loa = {loa_rate / bare:.2f} x this ({' and '.join(f'{r:,.0f}' for r in bare_rates)})"),
        ("    bare requests.Session, 1 thread", f"{single:,.0f} msg/s", f"loa = {loa_rate / single:.2f} x this"),
    ]


# -- (b) -----------------------------------------------------------------------------

def bench_limit(n: int, threads: int, rate: float, latency_ms: float) -> list[tuple[str, str, str]]:
    rows = []
    for limiter in ("memory", "database"):
        with tempfile.TemporaryDirectory(prefix="loa-bench-") as tmp, \
                GatewayProcess(seed=2, latency_ms=latency_ms) as srv:
            folder = Path(tmp)
            config = make_config(folder, f"sqlite:///{folder / 'loa.db'}", srv.url, rate=rate, burst=1,
                                 threads=threads, limiter=limiter)
            prepare(folder, config, n)
            elapsed, missed = run_dispatcher(config)
            times = srv.stop()["times"]
        achieved = rate_of(times)
        note = (f"{achieved / rate:.1%} of the limit; largest 1-s window {max_window(times)} "
                f"(limit {rate:g} + burst 1); {len(times):,} arrivals in {elapsed:.1f} s; "
                f"{missed:,} slots missed")
        rows.append((f"(b) {latency_ms:g} ms latency, limit {rate:g}/s, {limiter} limiter, {threads} threads",
                     f"{achieved:,.1f} msg/s", note))
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
                    GatewayProcess(seed=3, latency_ms=latency_ms) as srv:
                folder = Path(tmp)
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
                seen = srv.stop()
                twice = seen["twice"]
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
                     + f"; arrival rate {rate_of(seen['times']):,.0f}/s"))
    admin.dispose()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=5000, help="messages for (a) (default 5000)")
    parser.add_argument("--worker-messages", type=int, default=20000, help="messages for (c) (default 20000)")
    parser.add_argument("--threads", type=int, default=8, help="dispatcher threads (default 8, loa's default)")
    parser.add_argument("--limit", type=float, default=500.0, help="(b): the rate limit (default 500/s)")
    parser.add_argument("--limit-seconds", type=float, default=20.0, help="(b): seconds of sending (default 20)")
    parser.add_argument("--limit-threads", type=int, default=48,
                        help="(b): threads; 50 ms at 500/s keeps 25 calls in flight (default 48)")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="(b) and (c) (default 50)")
    parser.add_argument("--workers", default="1,2,4", help="(c): worker counts (default 1,2,4)")
    parser.add_argument("--skip", default="", help="parts to skip, e.g. 'c' or 'ab'")
    args = parser.parse_args(argv)
    rows: list[tuple[str, str, str]] = []
    started = time.perf_counter()
    load_before = "/".join(f"{x:.2f}" for x in os.getloadavg())
    if "a" not in args.skip:
        rows += bench_overhead(args.messages, args.threads)
    if "b" not in args.skip:
        rows += bench_limit(int(args.limit * args.limit_seconds), args.limit_threads, args.limit, args.latency_ms)
    if "c" not in args.skip:
        rows += bench_workers(args.worker_messages, args.threads, [int(c) for c in args.workers.split(",")],
                              args.latency_ms)
    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    print_table(f"loa dispatch benchmark: {os.cpu_count()} cores, load average {load_before} before, {load} after; "
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
