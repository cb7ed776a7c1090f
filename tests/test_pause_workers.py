"""A pause reaches every worker: timed from the gateway's side.

Three real ``loa worker`` processes send one planned run through the ``simulator_http``
gateway (a loopback server in this process that does not deduplicate, so every call it
receives is a message sent), sharing a limit of 100 a second through the database.
Once a good part of the run is out, the campaign is paused, as ``loa campaigns pause``
does.  The gateway stamps every call it receives; the figure printed is the time from
the pause's commit to the last call any worker made (the calls already under way).

Only a generous bound is asserted (:data:`BOUND`, a sanity check on a busy machine; the
promise is one second, and the figure is what to read).  What must hold exactly: after
the workers settle, no row is claimed or being sent, every message not sent is planned
with the pause as its reason, and on resume the rest goes out, every message received
by the gateway exactly once.  On PostgreSQL this is the several-machines case (the
workers share nothing but the database).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from conftest import write, write_http_config
from sqlalchemy import func, insert, select
from sqlalchemy.engine import Engine
from test_crash import Workers

from loa import db, lifecycle
from loa.campaign import load_one
from loa.config import load
from loa.plan import plan_run
from providers import simulator
from providers.simulator import SimulatorServer

O = db.outbox
MESSAGES = 900        # 9 s at the limit
RATE = 100
WORKERS = 3
PAUSE_AFTER = 200     # calls received before the pause
BOUND = 5.0           # seconds: a sanity bound only; the promise (1 s) is what the printed figure shows
SETTLE = 3.0          # seconds without a claimed or sending row before the last call is taken as the last


def counts(engine: Engine, run_id: int) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(dict(conn.execute(select(O.c.state, func.count()).where(O.c.run_id == run_id)
                                         .group_by(O.c.state)).all()))


def test_a_pause_stops_every_worker_and_resume_sends_the_rest_once(
        engine: Engine, workdir: Path, database_url: str, monkeypatch: Any) -> None:
    monkeypatch.setattr(simulator._HTTPServer, "request_queue_size", 256)
    with SimulatorServer(seed=5, delivery_rate=1.0, dedupe=False) as srv:
        stamps: list[tuple[float, str]] = []
        lock = threading.Lock()
        submit = srv.network.submit

        def stamped(message: Any) -> Any:   # the gateway's own receive time of each call
            with lock:
                stamps.append((time.time(), message.key))
            return submit(message)

        srv.network.submit = stamped   # type: ignore[method-assign]
        write_http_config(workdir, srv.url,
                          gateway={"type": "simulator_http_nodedupe", "rate": RATE, "burst": 1, "timeout": 30.0},
                          send={"threads": 4, "batch_size": 50, "limiter": "database", "lease_seconds": 60})
        write(workdir / "templates" / "sms" / "brake.j2", "Xin chào {{ subscriber.name }}\n")
        write(workdir / "campaigns" / "brake.toml", """
            name = "brake"
            channels = ["sms"]
            [sms]
            template = "sms/brake.j2"
            [window]
            start = "00:00"
            end = "24:00"
        """)
        now = db.utcnow()
        with engine.begin() as conn:
            conn.execute(insert(db.subscribers), [
                {"phone": f"+8497{i:07d}", "name": f"Người {i}", "attributes": {}, "created_at": now,
                 "updated_at": now} for i in range(MESSAGES)])
        plan = plan_run(engine, load(workdir / "config.toml"), load_one(workdir / "campaigns", "brake"))
        assert plan.states["planned"] == MESSAGES

        crew = Workers(workdir, database_url)
        try:
            for _ in range(WORKERS):
                crew.start()
            deadline = time.monotonic() + 300   # a hang only: a busy machine is slower, and may be
            while srv.network.total_received < PAUSE_AFTER:
                assert time.monotonic() < deadline, f"only {srv.network.total_received} sent\n{crew.logs()}"
                assert len(crew.alive) == WORKERS, crew.logs()
                time.sleep(0.02)

            change = lifecycle.change_campaign(engine, "brake", "pause", who="test", reason="tin nhắn sai")
            paused_at = time.time()          # committed: from here on, no new call may start
            assert change.after == "paused"

            # the workers settle: nothing claimed or in flight, for SETTLE seconds on end
            quiet_since, deadline = None, time.monotonic() + 120
            while quiet_since is None or time.monotonic() - quiet_since < SETTLE:
                busy = counts(engine, plan.run_id)
                if busy["claimed"] or busy["sending"]:
                    quiet_since = None
                elif quiet_since is None:
                    quiet_since = time.monotonic()
                assert time.monotonic() < deadline, f"still busy: {busy}\n{crew.logs()}"
                time.sleep(0.05)
            with lock:
                after = [t for t, _ in stamps if t > paused_at]
                sent_before_resume = len(stamps)
            stop_time = max(0.0, max(after, default=paused_at) - paused_at)
            print(f"\npause: {len(after)} call(s) reached the gateway after the pause's commit; the last "
                  f"{stop_time * 1000:.0f} ms after it ({WORKERS} workers, {sent_before_resume} of {MESSAGES} "
                  f"sent when the workers settled, {engine.dialect.name})")
            assert stop_time < BOUND, f"the last worker stopped {stop_time:.2f} s after the pause\n{crew.logs()}"
            assert len(after) <= WORKERS * 4, "more calls after the pause than sender threads had under way"

            held = counts(engine, plan.run_id)
            assert held["sent"] + held["delivered"] == sent_before_resume, held
            assert held["planned"] == MESSAGES - sent_before_resume, held
            with engine.connect() as conn:
                reasons = set(conn.scalars(select(O.c.reason).where(O.c.run_id == plan.run_id,
                                                                    O.c.state == "planned").distinct()))
            assert reasons == {"paused by test: tin nhắn sai"}
            assert all(p.poll() is None for p in crew.procs), crew.logs()

            lifecycle.change_campaign(engine, "brake", "resume", who="test", reason=None)
            deadline = time.monotonic() + 300
            while (left := counts(engine, plan.run_id))["planned"] + left["claimed"] + left["sending"]:
                assert time.monotonic() < deadline, f"not done after the resume: {left}\n{crew.logs()}"
                time.sleep(0.2)
            assert crew.stop() == [0] * WORKERS, crew.logs()
        finally:
            crew.kill_all()

        with lock:
            received = Counter(key for _, key in stamps)
        with engine.connect() as conn:
            keys = {db.message_key(run_id, sid) for run_id, sid in conn.execute(
                select(O.c.run_id, O.c.subscriber_id).where(O.c.run_id == plan.run_id))}
    assert set(received) == keys and set(received.values()) == {1}, "a message sent twice, or never"
    final = counts(engine, plan.run_id)
    assert final["sent"] + final["delivered"] == MESSAGES, final
