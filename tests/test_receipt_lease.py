"""Receipts a sender fetched and never recorded are not lost.

A gateway that is polled for receipts (the loopback simulator over HTTP) leases what it
hands out and lets it go only when loa says it has committed it.  A sender killed between
the fetch and the commit leaves its receipts with the gateway, and the next sender records
them: no message stays ``sent`` for ever because of an unlucky SIGKILL.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import requests
from click.testing import CliRunner
from conftest import write, write_http_config
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from test_crash import populate
from test_provider_simulator import msg

from loa import db
from loa.cli import main
from providers.simulator import SimulatedNetwork, SimulatorHTTPProvider, SimulatorServer

N = 6


def setup(engine: Engine, workdir: Path, url: str) -> None:
    write_http_config(workdir, url)
    write(workdir / "templates" / "sms" / "hi.j2", "Xin chào {{ subscriber.name }}, hãy cài Bluezone.\n")
    write(workdir / "campaigns" / "hi.toml", """
        name = "hi"
        channels = ["sms"]
        validity_hours = 24
        [sms]
        template = "sms/hi.j2"
        [window]
        start = "00:00"
        end = "24:00"
    """)
    populate(engine, N)


def loa(workdir: Path, *args: str) -> str:
    result = CliRunner().invoke(main, ["--config", str(workdir / "config.toml"), *args], catch_exceptions=True)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def states(engine: Engine) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(dict(conn.execute(select(db.outbox.c.state, func.count()).group_by(db.outbox.c.state)).all()))


def installs(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(db.events).where(db.events.c.type == "installed")) or 0


def test_receipts_taken_by_a_sender_that_died_are_recorded_by_the_next(engine: Engine, workdir: Path) -> None:
    # receipts come a moment after the send, so the first sender finishes before they do
    with SimulatorServer(seed=2, delivery_rate=1.0, install_rate=1.0, receipt_delay=1.5, lease=0.5) as srv:
        setup(engine, workdir, srv.url)
        loa(workdir, "campaigns", "run", "hi")
        loa(workdir, "send")
        recorded = states(engine)["delivered"]        # 0 unless this machine was slow
        assert states(engine)["sent"] + recorded == N

        # a sender fetches the rest and is killed before it records them
        dead = SimulatorHTTPProvider("http", {"url": srv.url})
        # by key: on a slow machine a lease can run out while the last receipts are still on
        # their way, and the gateway then hands the first ones out again, as a lease should
        taken: dict[str, object] = {}
        deadline = time.monotonic() + 30
        while len(taken) < N - recorded and time.monotonic() < deadline:
            taken.update((r.key, r) for r in dead.fetch_receipts())
            time.sleep(0.05)
        assert len(taken) == N - recorded > 0
        assert states(engine)["sent"] == N - recorded

        # the next sender gets them once their lease has run out, records them, and settles them
        time.sleep(0.6)
        loa(workdir, "send")
        assert states(engine) == {"delivered": N}
        assert installs(engine) == N
        assert srv.network.pending() == (0, 0)


def test_an_acknowledged_receipt_never_comes_back_and_an_unacknowledged_one_does() -> None:
    with SimulatorServer(seed=1, delivery_rate=1.0, install_rate=1.0, lease=0.3) as srv:
        client = SimulatorHTTPProvider("http", {"url": srv.url})
        client.send(msg("a"))
        client.send(msg("b"))
        receipts, responses = client.fetch_receipts(), client.fetch_responses()
        assert sorted(r.key for r in receipts) == ["a", "b"] and len(responses) == 2
        assert client.fetch_receipts() == [] and client.fetch_responses() == []   # leased, hidden
        assert srv.network.pending() == (2, 2)                                    # but not settled

        [a] = [r for r in receipts if r.key == "a"]
        client.receipts_recorded([a], [])
        assert srv.network.pending() == (1, 2)
        time.sleep(0.35)
        again = client.fetch_receipts()
        assert [r.key for r in again] == ["b"]                 # b's lease ran out; a is settled
        assert [r.key for r in client.fetch_responses()] == sorted(r.key for r in responses)
        client.receipts_recorded(again, responses)
        assert srv.network.pending() == (0, 0)


def test_the_lease_is_asked_for_and_acks_are_checked() -> None:
    net = SimulatedNetwork(seed=1, delivery_rate=1.0)
    with SimulatorServer(network=net) as srv:
        net.submit(msg("a"))
        body = requests.get(f"{srv.url}/v1/receipts?lease=0", timeout=5).json()
        [item] = body["receipts"]
        assert item["key"] == "a" and isinstance(item["ack"], int)
        assert [i["ack"] for i in requests.get(f"{srv.url}/v1/receipts", timeout=5).json()["receipts"]] == [item["ack"]]
        bad = requests.post(f"{srv.url}/v1/acks", json={"ids": [1]}, timeout=5)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "SIM-BADREQ"
        assert requests.post(f"{srv.url}/v1/acks", json={"acks": [item["ack"]]}, timeout=5).json() == {"acked": 1}
        assert requests.post(f"{srv.url}/v1/acks", json={"acks": [item["ack"]]}, timeout=5).json() == {"acked": 0}
        assert requests.get(f"{srv.url}/v1/receipts?lease=0", timeout=5).json() == {"receipts": []}
