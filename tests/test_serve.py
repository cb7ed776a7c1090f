"""``loa serve`` as the operator runs it, and the election of its one active scheduler.

The service tests start the installed CLI (``python -m loa serve``) in a
subprocess on the test database, read the real port from its first line, and
judge it from outside: the outbox, ``/healthz``, ``/metrics``, its exit code and
its stderr.  The election tests drive ``loa.leader.Leadership`` directly with
short intervals, and kill whole ``loa serve`` processes with SIGKILL.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine

from conftest import AREAS_CSV, write
from loa import db, importer
from loa.campaign import load_one
from loa.config import load
from loa.leader import LOCK_ID, Leadership
from loa.plan import plan_run

O = db.outbox
FINAL = {"delivered", "undelivered", "failed", "expired", "suppressed", "held_out"}


# -- helpers -------------------------------------------------------------------------

def wait_for(what: Callable[[], Any], timeout: float, step: float = 0.1, message: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or what}")
        time.sleep(step)


def import_people(engine: Engine, folder: Path, n: int) -> None:
    areas = write(folder / "areas.csv", AREAS_CSV)
    importer.run_import(engine, importer.AreasHandler(engine, areas), areas)
    lines = ["phone,name,area"] + [f"0912{i:06d},Người {i},{'116' if i % 2 else '125'}" for i in range(n)]
    subs = folder / "subscribers.csv"
    subs.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert importer.run_import(engine, importer.SubscribersHandler(engine, subs), subs).imported == n


def write_campaign(workdir: Path, name: str, extra: str = "") -> None:
    write(workdir / "templates" / "sms" / f"{name}.j2", "Xin chào {{ subscriber.name }}\n")
    (workdir / "campaigns" / f"{name}.toml").write_text(
        f'name = "{name}"\nchannels = ["sms"]\nvalidity_hours = 24\n{extra}'
        f'[sms]\ntemplate = "sms/{name}.j2"\ngateway = "sim"\n'
        '[window]\nstart = "00:00"\nend = "23:59:59.999999"\n', encoding="utf-8")


def states(engine: Engine) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(dict(conn.execute(select(O.c.state, func.count()).group_by(O.c.state)).all()))


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(x.name, frozenset(x.labels.items())): x.value
            for family in text_string_to_metric_families(text) for x in family.samples}


class Served:
    """One ``loa serve`` subprocess."""

    def __init__(self, workdir: Path, database_url: str, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("LOA_CONFIG", "LOA_DATABASE_URL")}
        env |= {"LOA_CONFIG": str(workdir / "config.toml"), "LOA_DATABASE_URL": database_url,
                "PYTHONUNBUFFERED": "1"}
        self.stderr_path = workdir / f"serve-{time.monotonic_ns()}.err"
        self._stderr = open(self.stderr_path, "wb")   # noqa: SIM115 - the child writes it
        self.proc = subprocess.Popen([sys.executable, "-m", "loa", "serve", "--port", "0", *args], cwd=workdir,
                                     env=env, stdout=subprocess.PIPE, stderr=self._stderr, text=True)

    def ready(self) -> Served:
        """Wait for the first line, which names the real port."""
        self.first_line = self._first_line(timeout=30)
        m = re.match(r"^loa serving on (http://127\.0\.0\.1:(\d+)) ", self.first_line)
        assert m, self.first_line
        self.url, self.port = m.group(1), int(m.group(2))
        assert self.port != 0
        return self

    def _first_line(self, timeout: float) -> str:
        box: list[str] = []
        stdout = self.proc.stdout
        assert stdout is not None
        reader = threading.Thread(target=lambda: box.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not box or not box[0]:
            self.proc.kill()
            raise AssertionError(f"loa serve printed no first line; stderr:\n{self.stderr()}")
        return box[0].rstrip("\n")

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def get(self, path: str) -> requests.Response:
        return requests.get(f"{self.url}{path}", timeout=5)

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """``/metrics``, read with Prometheus' own parser: value by (name, labels)."""
        return samples(self.get("/metrics").text)

    def is_leader(self) -> bool:
        try:
            values = self.metrics()
        except requests.RequestException:
            return False
        return values[("loa_scheduler_leader", frozenset())] == 1

    def terminate(self, timeout: float = 10.0) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds it took)."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"loa serve ignored SIGTERM for {timeout}s; stderr:\n{self.stderr()}") from None
        return code, time.monotonic() - start

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def close(self) -> None:
        self.kill()
        if self.proc.stdout:
            self.proc.stdout.close()
        self._stderr.close()


@pytest.fixture
def served(workdir: Path, database_url: str) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(*args: str, count: int = 1) -> Any:
        """Start ``count`` processes at once; the one, or the list."""
        batch = [Served(workdir, database_url, *args) for _ in range(count)]
        started.extend(batch)
        for s in batch:
            s.ready()
        return batch[0] if count == 1 else batch

    yield start
    for s in started:
        s.close()


# -- loa serve -----------------------------------------------------------------------

def test_serve_sends_what_is_planned_and_what_it_schedules_then_stops_cleanly(
        workdir: Path, engine: Engine, served: Callable[..., Served]) -> None:
    import_people(engine, workdir, 20)
    # scheduled a minute ago, within its grace: the elected scheduler plans it on taking office
    at = (db.utcnow() - timedelta(minutes=1)).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    write_campaign(workdir, "daily", f'trigger = "schedule"\n[schedule]\nat = {at}\n')
    write_campaign(workdir, "manual")

    s = served("--workers", "1")
    assert s.first_line.endswith("(1 dispatcher(s), scheduler on)")
    assert wait_for(s.is_leader, 10, message="the only process to become the scheduler leader")

    # the scheduler's run, then one planned from outside while the service runs
    wait_for(lambda: states(engine).total() == 20, 15, message="the scheduled run to be planned")
    config = load(workdir / "config.toml")
    plan_run(engine, config, load_one(workdir / "campaigns", "manual"))
    wait_for(lambda: states(engine).total() == 40 and set(states(engine)) <= FINAL, 20,
             message="the outbox to drain through the in-process dispatcher")
    done = states(engine)
    assert done["delivered"] + done["undelivered"] == 40, done
    with engine.connect() as conn:
        triggers = Counter(conn.execute(select(db.runs.c.trigger)).scalars())
    assert triggers == Counter(schedule=1, manual=1)

    health = s.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"ok": True})
    metrics = s.metrics()
    for state, n in done.items():
        assert metrics[("loa_messages", frozenset({("state", state), ("gateway", "sim")}))] == n
    assert metrics[("loa_queue_depth", frozenset())] == 0

    # SIGHUP reloads the campaigns and leaves the service up
    s.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert s.proc.poll() is None and s.get("/healthz").status_code == 200

    code, took = s.terminate(10)
    err = s.stderr()
    assert code == 0, err
    assert took < 10
    assert "Traceback" not in err and " ERROR " not in err, err


def test_serve_on_a_taken_port_fails_in_one_line(workdir: Path, engine: Engine, database_url: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {k: v for k, v in os.environ.items() if k not in ("LOA_CONFIG", "LOA_DATABASE_URL")}
        env |= {"LOA_CONFIG": str(workdir / "config.toml"), "LOA_DATABASE_URL": database_url}
        r = subprocess.run([sys.executable, "-m", "loa", "serve", "--port", str(taken.getsockname()[1])],
                           cwd=workdir, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr


def test_leadership_moves_on_when_a_leader_stops_or_is_killed(
        workdir: Path, engine: Engine, served: Callable[..., Served]) -> None:
    """Three ``loa serve`` processes on one database, one leader.  SIGTERM it (a deploy): it
    resigns, so another takes over within a heartbeat, even on SQLite.  SIGKILL the next
    (no chance to resign): on PostgreSQL its session, and so its lock, dies with it and a
    third takes over at once; on SQLite only after the heartbeat goes stale (10 s)."""
    procs: list[Served] = served("--workers", "0", count=3)

    def leaders() -> list[Served]:
        return [p for p in procs if p.proc.poll() is None and p.is_leader()]

    wait_for(leaders, 10, message="a leader")
    time.sleep(2.2)   # a full heartbeat later: still exactly one
    (first,) = leaders()
    assert first.terminate(10)[0] == 0
    start = time.monotonic()
    wait_for(leaders, 6, step=0.2, message="a successor after a clean stop")
    assert time.monotonic() - start < 5
    (second,) = leaders()

    second.proc.send_signal(signal.SIGKILL)
    second.proc.wait(10)
    start = time.monotonic()
    pg = engine.dialect.name == "postgresql"
    wait_for(leaders, 6 if pg else 16, step=0.2, message="a successor to a killed leader")
    if pg:
        assert time.monotonic() - start < 5
    (third,) = leaders()
    assert third.terminate(10)[0] == 0
    for p in (first, third):
        assert "Traceback" not in p.stderr(), p.stderr()


# -- Leadership, in process -------------------------------------------------------------

class Candidate:
    def __init__(self, engine: Engine, fail_first: int = 0) -> None:
        self.elected = 0
        self.lost = 0
        self.fail_first = fail_first
        self.leadership = Leadership(engine, self._elected, self._lost, interval=0.2, stale_after=2.5)

    def _elected(self) -> None:
        self.elected += 1
        if self.fail_first:
            self.fail_first -= 1
            raise RuntimeError("scheduler would not start")

    def _lost(self) -> None:
        self.lost += 1

    @property
    def leader(self) -> bool:
        return self.leadership.leader


@pytest.fixture
def candidates(engine: Engine) -> Iterator[Callable[..., Candidate]]:
    made: list[Candidate] = []

    def make(fail_first: int = 0) -> Candidate:
        c = Candidate(engine, fail_first)
        made.append(c)
        c.leadership.start()
        return c

    yield make
    for c in made:
        c.leadership.stop()


def test_exactly_one_leader_and_a_stopped_one_hands_over(candidates: Callable[..., Candidate]) -> None:
    a, b, c = candidates(), candidates(), candidates()
    wait_for(lambda: a.leader or b.leader or c.leader, 5, message="a leader")
    for _ in range(10):   # a few heartbeats: never two
        assert sum(x.leader for x in (a, b, c)) == 1
        time.sleep(0.1)
    first = next(x for x in (a, b, c) if x.leader)
    assert first.elected == 1

    first.leadership.stop()
    start = time.monotonic()
    rest = [x for x in (a, b, c) if x is not first]
    wait_for(lambda: any(x.leader for x in rest), 3, message="another leader after a clean stop")
    assert time.monotonic() - start < 2   # resigning frees it at once, no stale wait
    assert not first.leader
    time.sleep(0.6)
    assert sum(x.leader for x in rest) == 1
    assert sum(x.elected for x in rest) == 1 and all(x.lost == 0 for x in rest)


def test_a_leader_that_hangs_is_replaced(engine: Engine, candidates: Callable[..., Candidate]) -> None:
    """The leader's thread stops heartbeating without resigning (a hung or frozen process)."""
    a = candidates()
    wait_for(lambda: a.leader, 5, message="a to lead")
    b = candidates()
    time.sleep(0.5)
    assert not b.leader
    a.leadership._stop.set()          # the thread ends; nothing is released
    a.leadership._thread.join(2)
    if engine.dialect.name == "postgresql":
        # the session, and so its lock, lives on: nobody may take over while it does
        time.sleep(1.0)
        assert not b.leader
        a.leadership._conn.invalidate()   # the process dies: its session ends
    wait_for(lambda: b.leader, 8, message="b to take over")
    assert b.elected == 1


@pytest.mark.skipif(not os.environ.get("LOA_TEST_DATABASE_URL"), reason="PostgreSQL only")
def test_a_leader_whose_session_dies_steps_down_and_is_replaced(
        engine: Engine, candidates: Callable[..., Candidate]) -> None:
    a = candidates()
    wait_for(lambda: a.leader, 5, message="a to lead")
    b = candidates()
    time.sleep(0.5)
    with engine.connect() as conn:
        # this database's scheduler lock only: other test sessions may share the server
        pid = conn.execute(text(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = :id "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"),
            {"id": LOCK_ID}).scalar_one()
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        conn.commit()
    wait_for(lambda: a.lost == 1, 5, message="a to notice it lost the lock")
    wait_for(lambda: a.leader != b.leader, 5, message="one leader again")
    time.sleep(0.6)
    assert [a.leader, b.leader].count(True) == 1


def test_a_failing_on_elected_does_not_end_the_election(candidates: Callable[..., Candidate]) -> None:
    a = candidates(fail_first=1)
    wait_for(lambda: a.elected >= 2 and a.leader, 5, message="a second, successful election")
    assert a.leadership._thread.is_alive()
