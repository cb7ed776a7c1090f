"""One rate limit shared by several workers: what holds on any machine, however busy.

Four real ``loa worker`` processes send one planned run through the
``simulator_http`` gateway, whose limit (``rate = 100`` parts a second, ``burst = 1``)
they share through the database (``[send] limiter = "database"``: the GCRA's
theoretical arrival time lives in the ``gateways`` row, on the database's clock).
A quarter of the messages are 3 SMS parts long, the rest one part.

The test checks invariants, not speed (the rate a machine reaches is a benchmark:
``bench/shared_limit.py``):

* every key is accepted by the gateway exactly once, nothing is refused or re-sent,
  and every row ends terminal with the parts it was rendered in;
* weighted by parts, no 1-second window of handovers (each row's ``sent_at``: the
  moment a worker handed the message to the gateway) carries more than the limit
  plus the longest message (a 3-part message is longer than the burst, and may only
  ever ride alone).

The second holds on a busy machine because a worker never hands a message over more
than ``DatabaseGCRA.LATE`` after its slot: one that wakes up later (preempted, paused
by its collector) books again.  On PostgreSQL this is the several-machines case (the
workers share nothing but the database); on SQLite, several workers on one machine.
"""

from __future__ import annotations

import bisect
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from conftest import write, write_http_config
from sqlalchemy import func, insert, select
from sqlalchemy.engine import Engine

from loa import db
from loa.campaign import load_one
from loa.config import load
from loa.plan import plan_run
from providers import simulator
from providers.simulator import SimulatorServer

O = db.outbox
RATE = 100
WORKERS = 4
MESSAGES = 800            # 1,200 parts: 12 s at the limit
LONG = 3                  # parts of every fourth message
OPEN = ("planned", "deferred", "claimed", "sending")
TERMINAL = {"sent", "delivered", "undelivered"}

# One part in UCS-2 (67 characters at most), or three for the attribute long = true.
TEMPLATE = ("{% if attr.long %}" + "Bluezone giúp phát hiện tiếp xúc gần. " * 5
            + "{% else %}Xin chào {{ subscriber.name }}{% endif %}\n")


def max_window(stamps: list[tuple[float, int]], width: float = 1.0) -> int:
    """The most parts in any half-open window [t, t + width) of (time, parts) handovers (one
    starting at each handover is enough: sliding a window's start forward to the next
    handover never loses one)."""
    ordered = sorted(stamps)
    times = [t for t, _ in ordered]
    sums = [0]
    for _, parts in ordered:
        sums.append(sums[-1] + parts)
    return max((sums[bisect.bisect_left(times, start + width)] - sums[i] for i, start in enumerate(times)),
               default=0)


def test_window_counting() -> None:
    assert max_window([(0.0, 1), (0.5, 1), (0.999, 1), (1.0, 1), (1.5, 1)]) == 3
    assert max_window([(i / 128, 1) for i in range(500)]) == 128      # exact in binary floating point
    assert max_window([(0.0, 3), (0.5, 1), (1.0, 3), (1.2, 1)]) == 5
    assert max_window([]) == 0


def setup(engine: Engine, workdir: Path, url: str, n: int) -> tuple[int, dict[str, int]]:
    """The run's id, and the parts each key's message must take."""
    write_http_config(workdir, url, gateway={"rate": RATE, "burst": 1},
                      send={"threads": 8, "batch_size": 100, "limiter": "database"})
    write(workdir / "templates" / "sms" / "limit.j2", TEMPLATE)
    write(workdir / "campaigns" / "limit.toml", """
        name = "limit"
        channels = ["sms"]
        [sms]
        template = "sms/limit.j2"
        [window]
        start = "00:00"
        end = "24:00"
    """)
    now = db.utcnow()
    with engine.begin() as conn:
        conn.execute(insert(db.subscribers), [
            {"phone": f"+8498{i:07d}", "name": f"Người {i}", "attributes": {"long": i % 4 == 0},
             "created_at": now, "updated_at": now}
            for i in range(n)
        ])
    plan = plan_run(engine, load(workdir / "config.toml"), load_one(workdir / "campaigns", "limit"))
    assert plan.states["planned"] == n
    with engine.connect() as conn:
        long = dict(conn.execute(select(db.subscribers.c.id, db.subscribers.c.attributes)).all())
        expected = {db.message_key(plan.run_id, sid, None): LONG if attrs["long"] else 1
                    for sid, attrs in long.items()}
    return plan.run_id, expected


def open_rows(engine: Engine, run_id: int) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).where(O.c.run_id == run_id, O.c.state.in_(OPEN))) or 0


def test_four_workers_share_a_100_per_second_limit_weighted_by_parts(
        engine: Engine, workdir: Path, database_url: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # The simulator's default listen backlog of 5 overflows when this process is slow to accept,
    # and the kernel retries a dropped connection a second later: noise, not what is tested.
    monkeypatch.setattr(simulator._HTTPServer, "request_queue_size", 256)
    with SimulatorServer(seed=5, delivery_rate=1.0) as srv:
        run_id, expected = setup(engine, workdir, srv.url, MESSAGES)
        env = dict(os.environ, LOA_CONFIG=str(workdir / "config.toml"), LOA_DATABASE_URL=database_url)
        procs = []
        try:
            for i in range(WORKERS):
                log = open(workdir / f"worker-{i}.log", "wb")   # noqa: SIM115 - the child keeps it
                procs.append(subprocess.Popen([sys.executable, "-m", "loa", "worker", "--idle", "0.1"],
                                              cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT))
                log.close()
            # only a bound for a hung run: a busy machine sends slower, and that is allowed
            deadline = time.monotonic() + 600
            while open_rows(engine, run_id):
                assert all(p.poll() is None for p in procs), "a worker exited by itself:\n" + "".join(
                    f.read_text(errors="replace") for f in sorted(workdir.glob("worker-*.log")))
                assert time.monotonic() < deadline, f"not done: {open_rows(engine, run_id)} rows open"
                time.sleep(0.5)
            for p in procs:
                p.send_signal(signal.SIGTERM)
            assert [p.wait(60) for p in procs] == [0] * WORKERS
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(10)
        net = srv.network
        with engine.connect() as conn:
            rows = conn.execute(select(O.c.run_id, O.c.subscriber_id, O.c.state, O.c.parts, O.c.sent_at)
                                .where(O.c.run_id == run_id)).all()

    # every message once, whole, in the parts it was rendered in
    assert Counter(net.accepted.values()) == {1: MESSAGES}
    assert set(net.accepted) == set(expected)
    assert sum(net.received.values()) == MESSAGES          # nothing refused, nothing asked twice
    assert {m.key: m.parts for m in net.messages} == expected
    assert Counter(r.state for r in rows) <= Counter({s: MESSAGES for s in TERMINAL})
    assert len(rows) == MESSAGES
    assert {db.message_key(r.run_id, r.subscriber_id): r.parts for r in rows} == expected

    # no second carries more than the limit, weighted by parts
    stamps = [(r.sent_at.timestamp(), r.parts) for r in rows]
    window = max_window(stamps)
    span = max(t for t, _ in stamps) - min(t for t, _ in stamps)
    print(f"\n{sum(expected.values())} parts handed over in {span:.2f} s; largest 1-second window: {window} parts")
    assert window <= RATE + LONG, f"{window} parts handed over in one second (limit {RATE}/s)"
