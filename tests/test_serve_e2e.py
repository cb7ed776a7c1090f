"""``loa serve`` end to end, as a province runs it: two services on one database, arrivals
posted over HTTP, greetings and a scheduled reminder reaching a gateway, and services
killed and restarted on the way.

The gateway is the loopback simulator (``simulator_http``) in this process, which records
every request it receives.  The services are real ``python -m loa serve`` subprocesses.
Judged from outside: what the gateway received, and the ledger.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from conftest import write, write_http_config
from loa import db
from providers.simulator import SimulatorServer
from test_serve import FINAL, Served, import_people, served, wait_for  # noqa: F401 - `served` is a fixture

O = db.outbox
TOKEN = "arrivals-secret-for-tests"
PEOPLE = 40


def configure(workdir: Path, url: str) -> None:
    write_http_config(workdir, url, gateway={"rate": 1000}, send={"threads": 4, "batch_size": 10, "lease_seconds": 5},
                      serve={"arrivals_token_env": "LOA_TEST_ARRIVALS_TOKEN", "greet_every": 0.2})
    write(workdir / "templates" / "sms" / "hello.j2", "Chào mừng {{ subscriber.name }} đến {{ area.name }}\n")
    window = '[window]\nstart = "00:00"\nend = "23:59:59.999999"\n'
    write(workdir / "campaigns" / "greeting.toml", f"""
        name = "greeting"
        channels = ["sms"]
        trigger = "arrival"
        validity_hours = 6
        [segment]
        areas = ["Sơn La"]
        [arrival]
        delay = "0s"
        [sms]
        template = "sms/hello.j2"
        {window}
    """)


def schedule_reminder(workdir: Path, seconds_from_now: int) -> datetime:
    at = (db.utcnow() + timedelta(seconds=seconds_from_now)).replace(microsecond=0)
    write(workdir / "campaigns" / "reminder.toml", f"""
        name = "reminder"
        channels = ["sms"]
        trigger = "schedule"
        validity_hours = 6
        [segment]
        areas = ["Sơn La"]
        [sms]
        template = "sms/hello.j2"
        [schedule]
        at = {at.isoformat().replace("+00:00", "Z")}
        grace = "10m"
        [window]
        start = "00:00"
        end = "23:59:59.999999"
    """)
    return at


def post_arrivals(service: Served, phones: list[str]) -> dict:
    r = requests.post(f"{service.url}/arrivals", timeout=10, headers={"Authorization": f"Bearer {TOKEN}"},
                      json=[{"phone": p, "area": "Mai Sơn"} for p in phones])
    assert r.status_code == 200, r.text
    return r.json()


def ledger(engine: Engine) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(dict(conn.execute(select(O.c.state, func.count()).group_by(O.c.state)).all()))


def keys_sent(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        rows = conn.execute(select(O.c.run_id, O.c.subscriber_id)
                            .where(O.c.state.in_(("sent", "delivered", "undelivered")))).all()
    return {db.message_key(run, sub) for run, sub in rows}


def test_two_services_greet_arrivals_and_survive_kills_without_duplicates(
        workdir: Path, engine: Engine, served: Callable[..., Served], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOA_TEST_ARRIVALS_TOKEN", TOKEN)
    pg = engine.dialect.name == "postgresql"
    started: list[Served] = []

    def start() -> Served:
        started.append(served("--workers", "1"))
        return started[-1]

    with SimulatorServer(seed=3, delivery_rate=1.0, latency_ms=20) as srv:
        net = srv.network
        configure(workdir, srv.url)
        import_people(engine, workdir, PEOPLE)      # phones 0912000000.. in Sơn La's districts
        phones = [f"0912{i:06d}" for i in range(PEOPLE)]
        at = schedule_reminder(workdir, 25 if pg else 35)
        try:
            a = start()
            wait_for(a.is_leader, 15, message="a to lead the scheduler")
            next_fire = ("loa_next_fire_time_seconds", frozenset({("campaign", "reminder")}))
            fire = wait_for(lambda: a.metrics().get(next_fire), 10, message="the next fire time")
            assert fire == int(at.timestamp())     # the leader says when it will fire
            b = start()

            # the first half arrive; bad arrivals are rejected with a reason and the rest go in
            outcome = post_arrivals(a, phones[:20] + ["0912", "0123456789"])
            assert outcome["accepted"] == 20 and len(outcome["rejected"]) == 2, outcome
            wait_for(lambda: len(net.accepted) >= 20, 40, message="the first 20 greetings at the gateway")

            # the second half arrive, and the leader dies at once, mid-greeting, without a word
            post_arrivals(b, phones[20:])
            a.kill()
            # how fast a standby takes over is test_serve's business; here only that one does
            wait_for(b.is_leader, 20 if pg else 30, step=0.2, message="b to take over the scheduler")
            a2 = start()                               # the killed one comes back, as a standby
            wait_for(lambda: len(net.accepted) >= PEOPLE, 40, message="every arrival greeted")

            # the 08:00-style reminder fires on whoever leads; kill that one while it sends
            wait_for(lambda: len(net.accepted) > PEOPLE, 60, message="the scheduled reminder to start going out")
            b.kill()
            wait_for(a2.is_leader, 20 if pg else 30, step=0.2, message="a2 to take over")
            wait_for(lambda: set(ledger(engine)) <= FINAL and ledger(engine).total() == 2 * PEOPLE, 60,
                     message="every row terminal")
            assert a2.terminate(15)[0] == 0
        except AssertionError:   # what a reader of a failed run needs: the ledger, each service's last words
            print("ledger:", dict(ledger(engine)), "gateway accepted:", len(net.accepted))
            for service in started:
                print(f"--- loa serve {service.proc.pid} stderr, last lines ---\n{service.stderr()[-3000:]}")
            raise

    states = ledger(engine)
    assert states == Counter(delivered=2 * PEOPLE), states
    with engine.connect() as conn:
        runs = conn.execute(select(db.runs.c.trigger, func.count()).group_by(db.runs.c.trigger)).all()
    assert dict(runs)["schedule"] == 1                     # one reminder run, though two leaders saw it
    # every message accepted by the gateway exactly once, and the accepted ones are the ledger's
    assert set(net.accepted.values()) == {1}, Counter(net.accepted.values())
    assert set(net.accepted) == keys_sent(engine)
    assert len(net.accepted) == 2 * PEOPLE
    assert "Traceback" not in a2.stderr(), a2.stderr()
