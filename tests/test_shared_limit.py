"""One rate limit shared by several workers: 4 workers with a 100/s limit sustain at
least 97% of the limit, and no 1-second window goes above 101.

Four real ``loa worker`` processes send one planned run through the
``simulator_http`` gateway, whose limit (``rate = 100``, ``burst = 1``) they share
through the database (``[send] limiter = "database"``: the GCRA's theoretical
arrival time lives in the ``gateways`` row, on the database's clock).  The
:class:`SimulatorServer` runs in this process and stamps every accepted POST with
``time.monotonic()`` as it arrives, so the rate is measured where it matters: at
the gateway, not from the workers' opinion of themselves.

* The steady-state rate is measured between the 50th arrival and the 50th from
  the end: the first ones are the ramp-up (workers still starting, the first
  bookings), the last ones the tail (workers running out of rows).
* The largest 1-second window is the most arrivals in any half-open interval
  ``[t, t + 1 s)`` over the *whole* run, ramp-up and tail included.

On PostgreSQL this is the several-machines case (the workers share nothing but
the database); on SQLite, several workers on one machine.

What makes it hold (see loa/ratelimit.py, DatabaseGCRA, and Dispatcher._send_all):
each worker books a window's slots in one statement, on the database's clock read
under the row lock, and its senders sleep until their slot as a moment on their own
clock (never "the wait" from a booking that took a while to commit); a sender that
wakes too late gives its slot up and books again rather than crowd the next ones;
and the slots are paced 2% under the rate, the allowance for what happens between a
worker's "now" and the gateway's count (HTTP client, network, the server's intake).
So the expected steady state is about 98/s, and the largest window 100 or 101.
The test process raises its own and its workers' priority where it may, so that
unrelated load on the machine does not decide when the simulator stamps a request.
"""

from __future__ import annotations

import bisect
import gc
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import write, write_http_config
from sqlalchemy import func, insert, select
from sqlalchemy.engine import Engine

from loa import db
from loa.campaign import load_one
from loa.config import load
from loa.plan import plan_run
from providers import simulator
from providers.base import OutgoingMessage, SendResult
from providers.simulator import SimulatorServer

O = db.outbox
RATE = 100
WORKERS = 4
MESSAGES = 1_500          # 15 s at the limit
EDGE = 50                 # arrivals left out at each end of the steady-state measurement
OPEN = ("planned", "deferred", "claimed", "sending")


class ArrivalClock:
    """Wraps a SimulatedNetwork's submit: the monotonic time of every accepted request."""

    def __init__(self, network: object) -> None:
        self.times: list[float] = []
        self._lock = threading.Lock()
        self._submit = network.submit              # type: ignore[attr-defined]
        network.submit = self                      # type: ignore[attr-defined]

    def __call__(self, message: OutgoingMessage) -> SendResult:
        at = time.monotonic()
        result = self._submit(message)       # raises for a refused message: not counted
        with self._lock:
            self.times.append(at)
        return result


def steady_rate(times: list[float], edge: int = EDGE) -> float:
    """Arrivals per second between the ``edge``-th and the ``edge``-th from the end."""
    t = sorted(times)
    first, last = edge, len(t) - 1 - edge
    return (last - first) / (t[last] - t[first])


def max_window(times: list[float], width: float = 1.0) -> int:
    """The most arrivals in any half-open window [t, t + width) (one starting at each arrival
    is enough: sliding a window's start forward to the next arrival never loses one)."""
    t = sorted(times)
    return max((bisect.bisect_left(t, start + width) - i for i, start in enumerate(t)), default=0)


def test_window_counting() -> None:
    assert max_window([0.0, 0.5, 0.999, 1.0, 1.5]) == 3
    assert max_window([i / 128 for i in range(500)]) == 128      # exact in binary floating point
    assert abs(steady_rate([i / 100 for i in range(500)]) - 100) < 1e-6


def setup(engine: Engine, workdir: Path, url: str, n: int) -> int:
    write_http_config(workdir, url, gateway={"rate": RATE, "burst": 1},
                      send={"threads": 8, "batch_size": 100, "limiter": "database"})
    write(workdir / "templates" / "sms" / "limit.j2", "Xin chào {{ subscriber.name }}\n")
    write(workdir / "campaigns" / "limit.toml", """
        name = "limit"
        channels = ["sms"]
        [sms]
        template = "sms/limit.j2"
        [window]
        start = "00:00"
        end = "23:59:59.999999"
    """)
    now = db.utcnow()
    with engine.begin() as conn:
        conn.execute(insert(db.subscribers), [
            {"phone": f"+8498{i:07d}", "name": f"Người {i}", "attributes": {}, "created_at": now, "updated_at": now}
            for i in range(n)
        ])
    plan = plan_run(engine, load(workdir / "config.toml"), load_one(workdir / "campaigns", "limit"))
    assert plan.states["planned"] == n
    return plan.run_id


def open_rows(engine: Engine, run_id: int) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).where(O.c.run_id == run_id, O.c.state.in_(OPEN))) or 0


@pytest.fixture
def foreground() -> Iterator[None]:
    """Raise this process's scheduling priority (and so its workers') for the test, if allowed.

    The measurement is to 10 ms, the interval between two sends, on a machine that may be
    busy with unrelated work (a developer's other tests, CI neighbours): their processes
    must not decide when a worker wakes up or the simulator takes its request.  This does
    not make loa faster or its limiter stricter; it makes the clock the test reads honest.
    Without the privilege to do it, the test runs at normal priority.
    """
    before = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, min(before, -10))
    except PermissionError:
        pass
    # Likewise the collector: a full collection of this (pytest's) heap would stop the
    # simulator's threads, and the requests that queue meanwhile would be stamped together.
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        os.setpriority(os.PRIO_PROCESS, 0, before)


# One rerun: the stamps are taken in this (pytest's) process on a 2-core machine that other
# tests' processes share, and a stall of its server thread bunches a few requests into one
# stamp (seen once in several runs: 102 in a second, with 98/s steady).  A limiter that really
# over-sends does so every time and fails both runs.
@pytest.mark.flaky(reruns=1)
def test_four_workers_share_a_100_per_second_limit(engine: Engine, workdir: Path, database_url: str,
                                                   monkeypatch: pytest.MonkeyPatch, foreground: None) -> None:
    # The simulator's listen backlog of 5 overflows whenever this process is slow to accept,
    # and a dropped connection is retried by the kernel a second later: an arrival a second
    # late, measured as the limiter's burst.  Not what is tested here.
    monkeypatch.setattr(simulator._HTTPServer, "request_queue_size", 256)
    with SimulatorServer(seed=5, delivery_rate=1.0) as srv:
        clock = ArrivalClock(srv.network)
        run_id = setup(engine, workdir, srv.url, MESSAGES)
        env = dict(os.environ, LOA_CONFIG=str(workdir / "config.toml"), LOA_DATABASE_URL=database_url)
        procs = []
        try:
            for i in range(WORKERS):
                log = open(workdir / f"worker-{i}.log", "wb")   # noqa: SIM115 - the child keeps it
                procs.append(subprocess.Popen([sys.executable, "-m", "loa", "worker", "--idle", "0.1"],
                                              cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT))
                log.close()
            deadline = time.monotonic() + MESSAGES / RATE * 3 + 30
            while open_rows(engine, run_id):
                assert all(p.poll() is None for p in procs), "a worker exited by itself:\n" + "".join(
                    f.read_text(errors="replace") for f in sorted(workdir.glob("worker-*.log")))
                assert time.monotonic() < deadline, f"not done: {open_rows(engine, run_id)} rows open"
                time.sleep(0.5)
            for p in procs:
                p.send_signal(signal.SIGTERM)
            assert [p.wait(30) for p in procs] == [0] * WORKERS
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(10)
        logs = "".join(p.read_text(errors="replace") for p in sorted(workdir.glob("worker-*.log")))
        times = sorted(clock.times)
        assert len(times) == MESSAGES, logs
        assert sum(srv.network.received.values()) == MESSAGES      # nothing refused, nothing retried
        rate = steady_rate(times)
        window = max_window(times)
        gaps = Counter(round((b - a) * 1000) // 5 * 5 for a, b in itertools.pairwise(times))
        print(f"\n{len(times)} arrivals in {times[-1] - times[0]:.2f} s; steady state (arrival {EDGE} to "
              f"{len(times) - 1 - EDGE}): {rate:.2f}/s; largest 1-second window: {window}; "
              f"gaps (ms, 5-ms bins): {sorted(gaps.items())[:12]}")
        assert rate >= 0.97 * RATE, f"steady-state rate {rate:.2f}/s is below 97% of {RATE}/s"
        assert window <= RATE + 1, f"{window} arrivals in one second (limit {RATE}/s)"
