"""The HTTP gateways' transport (providers/http.py): connections kept alive and reused,
one session per sender thread, and a kept-alive connection dropped under a request.

The gateway is the loopback :class:`SimulatorServer`, which speaks HTTP/1.1 and counts
the TCP connections it accepts.  ``drop_every=N`` makes it close every Nth send call's
connection without an answer (a message's first call: one sent again is answered), either before accepting the message (``"before"``: the
call never arrived) or after (``"after"``: it did, and only the answer was lost), which
the client cannot tell apart.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from test_crash import setup_run
from loa import db
from loa.config import load
from loa.dispatch import Dispatcher
from providers.base import OutgoingMessage, RetryableError
from providers.http import Sessions
from providers.simulator import SimulatorHTTPNoDedupeProvider, SimulatorHTTPProvider, SimulatorServer


def message(i: int) -> OutgoingMessage:
    return OutgoingMessage(key=f"k-{i}", to=f"+8491{i:07d}", channel="sms", text="Xin chào", parts=1)


def provider(srv: SimulatorServer, cls: type[SimulatorHTTPProvider] = SimulatorHTTPProvider) -> SimulatorHTTPProvider:
    return cls("http", {"url": srv.url, "timeout": 10.0})


def test_one_thread_sends_every_message_over_one_connection() -> None:
    with SimulatorServer(seed=1) as srv:
        gw = provider(srv)
        ids = [gw.send(message(i)).provider_id for i in range(30)]
        gw.close()
        assert len(set(ids)) == 30 and srv.network.total_accepted == 30
        assert srv.connections == 1


def test_each_sender_thread_keeps_its_own_connection() -> None:
    threads, n = 4, 200
    with SimulatorServer(seed=1) as srv:
        gw = provider(srv)
        with ThreadPoolExecutor(threads) as pool:
            ids = list(pool.map(lambda i: gw.send(message(i)).provider_id, range(n)))
        gw.close()
        assert len(set(ids)) == n and srv.network.total_accepted == n
        assert srv.connections <= threads


def test_close_closes_every_threads_connection() -> None:
    with SimulatorServer(seed=1) as srv:
        gw = provider(srv)
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda i: gw.send(message(i)), range(30)))
        gw.close()
        # the server sees each connection end (its handler thread reads end of file)
        done = threading.Event()
        for _ in range(200):
            with srv._count_lock:
                if not srv._open:
                    done.set()
                    break
            done.wait(0.05)
        assert done.is_set(), "connections left open after close()"


@pytest.mark.parametrize("drop", ["before", "after"])
def test_a_dropped_connection_is_sent_again_once_when_the_gateway_dedupes(drop: str) -> None:
    n, every = 30, 3
    with SimulatorServer(seed=1, drop_every=every, drop=drop) as srv:
        gw = provider(srv)
        results = [gw.send(message(i)) for i in range(n)]
        gw.close()
        net = srv.network
        assert net.total_accepted == n                                       # every message, once
        assert {r.provider_id for r in results} == {net.lookup(f"k-{i}").provider_id for i in range(n)}
        # every call after a drop opens a new connection; nothing else does
        assert srv.connections == 1 + n // every
        twice = sorted(k for k, c in net.received.items() if c > 1)
        if drop == "after":   # accepted, then sent again: the gateway answered the first id
            assert len(twice) == n // every
        else:
            assert twice == []


def test_a_dropped_connection_is_not_sent_again_without_dedupe() -> None:
    with SimulatorServer(seed=1, drop_every=2, drop="after", dedupe=False) as srv:
        gw = provider(srv, SimulatorHTTPNoDedupeProvider)
        gw.send(message(0))
        with pytest.raises(RetryableError) as lost:
            gw.send(message(1))
        gw.close()
        assert lost.value.ambiguous   # it may have arrived (it did): the row becomes unknown
        assert srv.network.received["k-1"] == 1


def test_a_get_is_sent_again_after_a_drop_whatever_the_gateway() -> None:
    with SimulatorServer(seed=1) as srv:
        sessions = Sessions()
        assert sessions.request("GET", srv.url + "/v1/health").json()["ok"]
        srv.stop_connections()   # the gateway closes its idle kept-alive connections
        assert sessions.request("GET", srv.url + "/v1/health").json()["ok"]
        sessions.close()
        assert srv.connections == 2


def test_the_dispatcher_reuses_connections_and_sends_each_message_once(engine: Engine, workdir: Path) -> None:
    n, threads, every = 120, 4, 7
    with SimulatorServer(seed=1, drop_every=every, drop="after") as srv:
        run_id = setup_run(engine, workdir, srv.url, n=n, dedupe=True, threads=threads, batch=50)
        dispatcher = Dispatcher(engine, load(workdir / "config.toml"))
        dispatcher.run_until_empty()
        dispatcher.pool.close()
        net = srv.network
        with engine.connect() as conn:
            states = conn.execute(select(db.outbox.c.state).where(db.outbox.c.run_id == run_id)).scalars().all()
        assert len(states) == n and set(states) <= {"sent", "delivered", "undelivered"}
        assert net.total_accepted == n
        drops = n // every
        assert sum(c - 1 for c in net.received.values()) == drops   # each dropped call, once again
        # one connection per sender thread and per drop, plus the receipt polls' thread
        assert srv.connections <= threads + 1 + drops
