"""The kill test: "A worker killed with SIGKILL at any moment leaves every planned message
in a terminal state once the workers run again, and none sent twice."

Real ``loa worker`` processes send a planned run through the ``simulator_http``
gateway to a :class:`SimulatorServer` in this process, which records every request
it receives.  While they send, the test kills a random worker with SIGKILL at a
random moment (in a claim, a gateway call, a commit, a receipt poll: wherever it
happens to be), starts a replacement, and does it again.  The survivors recover
what the dead left behind once its lease expires:

* with a server that deduplicates by key (type ``simulator_http``), rows caught mid-call
  go back to ``planned`` and are sent again: the server must have *accepted* every
  key exactly once, and nothing may end ``unknown``;
* with a server that does not (started with ``dedupe=False``, configured as the type
  ``simulator_http_nodedupe``, as Twilio or SMPP would be), rows caught mid-call become
  ``unknown`` and are never sent again: the server must have *received* every key
  at most once.

Either way every planned row ends in a terminal state.  The assertions hold
whatever the kill timing; each run prints its seed, and ``LOA_CRASH_SEED=N``
replays that kill schedule.

The last test kills `loa send` itself, and counts what each kill left ambiguous (at
most one row per sender thread) and what `loa messages reconcile` makes of it.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import write, write_http_config
from sqlalchemy import func, insert, select
from sqlalchemy.engine import Engine

from loa import db
from loa.campaign import load_one
from loa.config import load
from loa.dispatch import Dispatcher
from loa.plan import plan_run
from providers import simulator
from providers.simulator import SimulatorServer

O = db.outbox
TERMINAL = {"sent", "delivered", "undelivered", "failed", "unknown"}
OPEN = ("planned", "deferred", "claimed", "sending")
SENT = ("sent", "delivered", "undelivered")
LEASE = 3.0            # seconds: a killed worker's rows come back soon (recover() runs every 5 s)
THREADS = 4
BATCH = 100


@pytest.fixture(autouse=True)
def deep_backlog(monkeypatch: pytest.MonkeyPatch) -> None:
    """A listen backlog for a dozen concurrent senders: the simulator's default of 5 drops
    connections when this busy process is slow to accept, and a dropped SYN costs its
    sender a second (the retransmission), which is noise here, not what is tested."""
    monkeypatch.setattr(simulator._HTTPServer, "request_queue_size", 256)


def populate(engine: Engine, n: int) -> None:
    """n subscribers in one executemany (the importer is tested elsewhere; this is setup)."""
    now = db.utcnow()
    with engine.begin() as conn:
        conn.execute(insert(db.subscribers), [
            {"phone": f"+8491{i:07d}", "carrier": "Viettel", "name": f"Người {i}", "language": "vi",
             "attributes": {}, "created_at": now, "updated_at": now}
            for i in range(n)
        ])


def setup_run(engine: Engine, workdir: Path, url: str, *, n: int, dedupe: bool, rate: float = 100_000,
              lease: float = LEASE, threads: int = THREADS, batch: int = BATCH) -> int:
    """Config for the HTTP simulator at ``url``, n subscribers, one planned run; its id."""
    # whether the gateway deduplicates is a fact of its type, never a setting
    gateway_type = "simulator_http" if dedupe else "simulator_http_nodedupe"
    write_http_config(workdir, url, gateway={"type": gateway_type, "timeout": 30.0, "rate": rate, "burst": 10},
                      send={"threads": threads, "batch_size": batch, "lease_seconds": lease, "limiter": "memory"})
    write(workdir / "templates" / "sms" / "crash.j2", "Xin chào {{ subscriber.name }}, hãy cài Bluezone.\n")
    write(workdir / "campaigns" / "crash.toml", """
        name = "crash"
        channels = ["sms"]
        validity_hours = 24
        [sms]
        template = "sms/crash.j2"
        [window]
        start = "00:00"
        end = "23:59:59.999999"
    """)
    populate(engine, n)
    config = load(workdir / "config.toml")
    plan = plan_run(engine, config, load_one(workdir / "campaigns", "crash"))
    assert plan.states["planned"] == n
    return plan.run_id


@dataclass
class Workers:
    """`loa worker` subprocesses, each with its own log file."""

    workdir: Path
    database_url: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    started: int = 0
    killed: int = 0

    def start(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ, LOA_CONFIG=str(self.workdir / "config.toml"), LOA_DATABASE_URL=self.database_url,
                   PYTHONUNBUFFERED="1")
        self.started += 1
        log = open(self.workdir / f"worker-{self.started}.log", "wb")   # noqa: SIM115 - the child keeps it
        proc = subprocess.Popen([sys.executable, "-m", "loa", "worker", "--idle", "0.1"], cwd=self.workdir,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        return proc

    @property
    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.procs if p.poll() is None]

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        self.killed += 1

    def stop(self, timeout: float = 60.0) -> list[int]:
        """SIGTERM to every live worker; their exit codes.

        A replacement may still be starting (importing, on a busy machine), and SIGTERM
        before its handler is installed kills it outright (exit -15; it had claimed
        nothing): wait for each to log that it started, so that the exit codes mean
        "stopped cleanly"."""
        alive = self.alive
        until = time.monotonic() + timeout
        for p in alive:
            log = self.workdir / f"worker-{self.procs.index(p) + 1}.log"
            while b" started" not in log.read_bytes() and p.poll() is None and time.monotonic() < until:
                time.sleep(0.05)
        for p in alive:
            p.send_signal(signal.SIGTERM)
        codes = []
        for p in alive:
            try:
                codes.append(p.wait(timeout))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait(10))
        return codes

    def kill_all(self) -> None:
        for p in self.alive:
            p.kill()
            p.wait(10)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.workdir.glob("worker-*.log")))


def states(engine: Engine, run_id: int) -> Counter[str]:
    with engine.connect() as conn:
        return Counter({state: count for state, count in conn.execute(
            select(O.c.state, func.count()).where(O.c.run_id == run_id).group_by(O.c.state))})


def rows(engine: Engine, run_id: int) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        return {db.message_key(r.run_id, r.subscriber_id): dict(r._mapping)
                for r in conn.execute(select(O).where(O.c.run_id == run_id))}


def run_with_kills(engine: Engine, workdir: Path, database_url: str, run_id: int, *, n: int, workers: int,
                   kills: int, seed: int, deadline: float = 300.0) -> tuple[Workers, list[int]]:
    """Start ``workers``; SIGKILL a random one ``kills`` times (starting a replacement each
    time), then wait until nothing is open and stop the survivors with SIGTERM.

    The kills are spread over the run by progress, not by the clock, so that they land
    while messages are in flight however fast this machine is: each waits for a random
    share of the run to be done (the first may come before anything is), then a random
    fraction of a second more, so the victim is caught wherever it happens to be.
    ``deadline`` only bounds a hung run; a normal one takes a fraction of it.
    """
    rng = random.Random(seed)
    marks = sorted(rng.uniform(0.0, 0.9) for _ in range(kills))
    crew = Workers(workdir, database_url)
    t0 = time.monotonic()

    def open_rows() -> int:
        dead = [p for p in crew.procs if p.poll() not in (None, -signal.SIGKILL)]
        assert not dead, f"a worker exited by itself:\n{crew.logs()}"
        counts = states(engine, run_id)
        assert time.monotonic() - t0 < deadline, f"still open after {deadline:.0f} s: {counts}\n{crew.logs()}"
        return sum(counts[s] for s in OPEN)

    try:
        for _ in range(workers):
            crew.start()
        for mark in marks:
            while open_rows() > n * (1 - mark):
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 0.5))
            crew.kill(rng.choice(crew.alive))
            crew.start()
        while open_rows():
            time.sleep(0.25)
        codes = crew.stop()
    finally:
        crew.kill_all()
    print(f"\nseed {seed}: {crew.killed} kills, {crew.started} workers started, "
          f"done in {time.monotonic() - t0:.1f} s: {dict(states(engine, run_id))}")
    return crew, codes


def _seed() -> int:
    return int(os.environ.get("LOA_CRASH_SEED") or random.SystemRandom().randrange(1_000_000))


def test_sigkilled_workers_with_a_deduplicating_gateway_send_every_message_exactly_once(
        engine: Engine, workdir: Path, database_url: str) -> None:
    n = 3_000
    with SimulatorServer(seed=3, delivery_rate=0.9, latency_ms=5, receipt_delay=4.0, dedupe=True) as srv:
        run_id = setup_run(engine, workdir, srv.url, n=n, dedupe=True)
        crew, codes = run_with_kills(engine, workdir, database_url, run_id, n=n, workers=3, kills=6,
                                     seed=_seed())
        net = srv.network
        final = rows(engine, run_id)
    assert codes and all(c == 0 for c in codes), crew.logs()
    assert len(final) == n
    by_state = Counter(r["state"] for r in final.values())
    assert set(by_state) <= TERMINAL, by_state
    # re-sent after a crash, never lost: no row is left unknown, and none failed
    assert by_state["unknown"] == 0 and by_state["failed"] == 0, by_state
    # the gateway saw every message, and accepted each key once however often it was asked
    assert set(net.received) == set(final)
    assert set(net.accepted) == set(final)
    assert Counter(net.accepted.values()) == {1: n}
    for key, row in final.items():
        assert row["state"] in SENT, (key, row)
        assert row["provider_id"] is not None or row["state"] != "sent", (key, row)
    resent = sum(1 for c in net.received.values() if c > 1)
    print(f"{resent} keys asked for again after a crash, each accepted once")


def test_sigkilled_workers_never_resend_to_a_gateway_that_does_not_deduplicate(
        engine: Engine, workdir: Path, database_url: str) -> None:
    n = 1_500
    with SimulatorServer(seed=4, delivery_rate=0.9, latency_ms=5, receipt_delay=4.0, dedupe=False) as srv:
        run_id = setup_run(engine, workdir, srv.url, n=n, dedupe=False)
        crew, codes = run_with_kills(engine, workdir, database_url, run_id, n=n, workers=3, kills=5,
                                     seed=_seed())
        net = srv.network
        final = rows(engine, run_id)
    assert codes and all(c == 0 for c in codes), crew.logs()
    assert len(final) == n
    by_state = Counter(r["state"] for r in final.values())
    assert set(by_state) <= TERMINAL, by_state
    # nothing reached the gateway twice
    assert set(net.received) <= set(final)
    assert set(net.received.values()) <= {1}, Counter(net.received.values())
    assert net.accepted == net.received
    # what is recorded as sent did reach the gateway; what reached it is sent or unknown;
    # unknown is only ever a send cut short by a crash
    for key, row in final.items():
        if row["state"] in SENT:
            assert net.received[key] == 1, (key, row)
        else:
            assert row["state"] == "unknown" and row["error_code"] == "ambiguous", (key, row)
    unknown = {k for k, r in final.items() if r["state"] == "unknown"}
    # a crash leaves ambiguous only the calls that may have gone out: one per sender thread at most
    assert len(unknown) <= crew.killed * THREADS, (len(unknown), crew.killed)
    print(f"{len(unknown)} unknown after {crew.killed} kills, of which "
          f"{len(unknown & set(net.received))} had reached the gateway")


def test_a_live_worker_keeps_its_rows_however_long_its_window_takes(
        engine: Engine, workdir: Path) -> None:
    """A window slower than the lease (a tight rate limit here) must not be taken from a
    worker that is alive: another worker's recover() finds nothing to recover."""
    n = 30
    with SimulatorServer(seed=6, dedupe=False) as srv:
        # 30 messages at 15/s: one window of 2 s against a lease of 0.6 s
        run_id = setup_run(engine, workdir, srv.url, n=n, dedupe=False, rate=15, lease=0.6, threads=2, batch=n)
        config = load(workdir / "config.toml")
        slow = Dispatcher(engine, config)
        other = Dispatcher(engine, config)
        sender = threading.Thread(target=slow.run_until_empty)
        sender.start()
        recovered = 0
        while sender.is_alive():
            recovered += other.recover()
            time.sleep(0.05)
        sender.join()
        slow.pool.close()
        other.pool.close()
        net = srv.network
    assert recovered == 0
    final = rows(engine, run_id).values()
    assert len(final) == n and all(r["state"] in SENT for r in final)
    assert Counter(net.received.values()) == {1: n}


# -- `loa send` killed mid-run, then reconciled -----------------------------------------

def loa(workdir: Path, database_url: str, *args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, LOA_CONFIG=str(workdir / "config.toml"), LOA_DATABASE_URL=database_url,
               PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "loa", *args], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finished(proc: subprocess.Popen[bytes], what: str) -> str:
    output = proc.communicate(timeout=300)[0].decode(errors="replace")
    assert proc.returncode == 0, f"{what} exited {proc.returncode}:\n{output}"
    return output


# the in-process limiter is the same code on either database: it is killed on SQLite only,
# which keeps the PostgreSQL run short
@pytest.mark.parametrize("limiter", ["database", pytest.param("memory", marks=pytest.mark.skipif(
    bool(os.environ.get("LOA_TEST_DATABASE_URL")), reason="SQLite only: the in-process limiter is the same on both"))])
def test_a_killed_send_leaves_ambiguous_only_what_was_in_flight_and_reconcile_resolves_it(
        engine: Engine, workdir: Path, database_url: str, limiter: str) -> None:
    """`loa send` SIGKILLed mid-run, several times, against a gateway that does not
    deduplicate: each kill leaves at most one row per sender thread in ``sending`` (the
    calls that may have gone out), never the window claimed around them.  Those become
    ``unknown`` and are never re-sent blindly; `loa messages reconcile` asks the gateway by
    our key, records the ones it has as sent and queues the others again, so that in the
    end everybody got the message exactly once."""
    n, kills, threads, lease = 1_500, 4, 4, 1.5
    rng = random.Random(seed := _seed())
    with SimulatorServer(seed=5, delivery_rate=1.0, latency_ms=10, dedupe=False) as srv:
        run_id = setup_run(engine, workdir, srv.url, n=n, dedupe=False, lease=lease, threads=threads, batch=200)
        config = (workdir / "config.toml").read_text()
        (workdir / "config.toml").write_text(config.replace('"limiter": "memory"', f'"limiter": "{limiter}"')
                                             .replace('limiter = "memory"', f'limiter = "{limiter}"'))
        ambiguous_per_kill = []
        for _ in range(kills):
            before = states(engine, run_id)
            proc = loa(workdir, database_url, "send")
            t0 = time.monotonic()
            # kill once this run has sent something (it is past its start), at a random moment after
            while sum(states(engine, run_id)[s] for s in SENT) <= sum(before[s] for s in SENT) + 20:
                assert proc.poll() is None, proc.communicate()[0].decode(errors="replace")
                assert time.monotonic() - t0 < 120, "loa send sent nothing"
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.3))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            counts = states(engine, run_id)
            ambiguous_per_kill.append(counts["sending"])
            time.sleep(lease + 0.5)     # the next `loa send` recovers the dead one's rows
        finished(loa(workdir, database_url, "send"), "loa send")
        after_kills = states(engine, run_id)
        unknown_after_kills = after_kills["unknown"]
        print(f"\nseed {seed}, limiter {limiter}: rows in sending at each kill {ambiguous_per_kill}, "
              f"{unknown_after_kills} unknown after the kills")
        assert all(a <= threads for a in ambiguous_per_kill), ambiguous_per_kill
        assert unknown_after_kills <= threads * kills, after_kills
        # (fewer if a receipt, which names our key, settled one first)
        assert unknown_after_kills <= sum(ambiguous_per_kill), (after_kills, ambiguous_per_kill)
        status = finished(loa(workdir, database_url, "status"), "loa status")
        reconciled = finished(loa(workdir, database_url, "messages", "reconcile", "--settle", "0"),
                              "loa messages reconcile")
        finished(loa(workdir, database_url, "send"), "loa send")
        net = srv.network
        final = rows(engine, run_id)
    print(f"reconcile said:\n{reconciled}")
    if unknown_after_kills:
        assert f"{unknown_after_kills:,}" in status and "loa messages reconcile" in status, status
    # every row is sent, and the gateway got every message exactly once: no duplicate, none lost
    # (sent, or delivered once its receipt came: a killed run may have taken receipts with it)
    assert {r["state"] for r in final.values()} <= {"sent", "delivered"}, Counter(r["state"] for r in final.values())
    duplicates = sum(c - 1 for c in net.received.values())
    assert duplicates == 0, Counter(net.received.values())
    assert set(net.received) == set(final)
    for key, row in final.items():
        assert row["provider_id"] == net.lookup(key).provider_id, (key, row)   # type: ignore[union-attr]
