"""loa.state.DatabaseStateStore on the real database (SQLite file, or PostgreSQL).

The store is what keeps Zalo's single-use refresh token from being spent twice
when several workers, in several processes, find the access token expired at
the same moment.  The workers here are real processes, the refresh goes to
providers.fakes.zalo over HTTP, and the fake counts what reached it.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from test_gateway_smpp import wait_until

from loa import db
from loa import gateways as gw
from loa.state import DatabaseStateStore
from providers.base import OutgoingMessage, ProviderError
from providers.fakes.zalo import FakeZalo
from providers.zalo_zns import ZaloZNSProvider

SPAWN = multiprocessing.get_context("spawn")   # a fresh interpreter: nothing shared but the database


def message(key: str) -> OutgoingMessage:
    return OutgoingMessage(key=key, to="+84912345678", channel="zalo", template_id="231677",
                           template_data={"customer_name": "Nguyễn Văn An"})


@pytest.fixture
def zalo() -> Iterator[FakeZalo]:
    with FakeZalo() as fake:
        yield fake


def _provider(engine: Engine, options: dict[str, Any]) -> ZaloZNSProvider:
    return ZaloZNSProvider("zalo", options, DatabaseStateStore(engine, "zalo"))


# -- work done in child processes (module level: "spawn" imports it by name) ------------

def _send_after(url: str, options: dict[str, Any], key: str, barrier: Any, results: Any) -> None:
    engine = db.make_engine(url)
    provider = _provider(engine, options)
    try:
        barrier.wait(60)
        results.put((key, provider.send(message(key)).provider_id))
    except Exception as exc:  # noqa: BLE001 - the parent asserts on it
        results.put((key, f"error: {exc!r}"))
    finally:
        provider.close()
        engine.dispose()


def _hold_lock(url: str, lease_seconds: float, holding: Any) -> None:
    store = DatabaseStateStore(db.make_engine(url), "zalo", lease_seconds=lease_seconds)
    with store.locked("zalo:zalo:token"):
        holding.set()
        time.sleep(600)                 # killed by the parent long before this ends


# -- tests ----------------------------------------------------------------------------

def test_two_processes_refresh_an_expired_token_once(engine: Engine, database_url: str, zalo: FakeZalo) -> None:
    options = zalo.options(timeout=10)
    warm = _provider(engine, options)
    warm.send(message("warm"))          # the store now holds the pair both workers will read
    warm.close()
    zalo.expire_token()
    zalo.refresh_latency = 0.5          # both are in the race while the refresh is in flight

    barrier, results = SPAWN.Barrier(2), SPAWN.Queue()
    workers = [SPAWN.Process(target=_send_after, args=(database_url, options, f"race-{i}", barrier, results))
               for i in range(2)]
    for p in workers:
        p.start()
    outcomes = dict(results.get(timeout=120) for _ in workers)
    for p in workers:
        p.join(30)

    assert all(not str(v).startswith("error") for v in outcomes.values()), outcomes
    assert len(zalo.refresh_requests) == 1 and zalo.refreshes == 1    # spent once
    tokens = [(r.json["tracking_id"], r.headers["access_token"]) for r in zalo.template_requests]
    # each worker tried the expired token, then sent with the one rotated token
    assert sorted(tokens) == [("race-0", "fake-at-0"), ("race-0", "fake-at-1"),
                              ("race-1", "fake-at-0"), ("race-1", "fake-at-1"),
                              ("warm", "fake-at-0")]
    store = DatabaseStateStore(engine, "zalo")
    assert store.get("zalo:zalo:access_token") == "fake-at-1"
    assert store.get("zalo:zalo:refresh_token") == "fake-rt-1"


def test_a_slow_refresh_does_not_hold_up_other_writers(engine: Engine, zalo: FakeZalo) -> None:
    # SQLite has one write lock for the whole database: the token lock must not be it,
    # or every claim and record of every worker waits for Zalo's OAuth server.
    provider = _provider(engine, zalo.options(timeout=10))
    provider.check()
    zalo.expire_token()
    zalo.refresh_latency = 2.0
    outcome: list[Any] = []
    refreshing = threading.Thread(target=lambda: outcome.append(provider.check()))
    refreshing.start()
    try:
        assert wait_until(lambda: zalo.refresh_attempts == 1)   # the refresh is in flight
        started = time.monotonic()
        assert gw.pause(engine, "another-gateway", "a write while the token is refreshed")
        took = time.monotonic() - started
    finally:
        refreshing.join(30)
        provider.close()
    assert took < 1.0, f"a write waited {took:.2f} s for the token refresh"
    assert outcome == ["quota: 1000 remaining of 1000 daily"] and zalo.refreshes == 1


def test_a_dead_holder_does_not_keep_the_lock(engine: Engine, database_url: str) -> None:
    holding = SPAWN.Event()
    holder = SPAWN.Process(target=_hold_lock, args=(database_url, 1.0, holding))
    holder.start()
    try:
        assert holding.wait(60)
    finally:
        holder.kill()
        holder.join(30)
    store = DatabaseStateStore(engine, "zalo", lease_seconds=1.0)
    started = time.monotonic()
    with store.locked("zalo:zalo:token"):
        store.set("zalo:zalo:access_token", "after")
    assert time.monotonic() - started < 10
    assert store.get("zalo:zalo:access_token") == "after"


def test_the_lock_excludes_threads_and_is_reentrant(engine: Engine) -> None:
    store = DatabaseStateStore(engine, "zalo")
    inside = 0
    most = 0
    guard = threading.Lock()

    def bump() -> None:
        nonlocal inside, most
        with store.locked("k"), store.locked("k"):     # nested in one thread: no deadlock
            with guard:
                inside += 1
                most = max(most, inside)
            time.sleep(0.05)
            store.set("count", str(int(store.get("count") or 0) + 1))
            with guard:
                inside -= 1

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert most == 1
    assert store.get("count") == "4"


def test_values_are_per_gateway(engine: Engine) -> None:
    a, b = DatabaseStateStore(engine, "a"), DatabaseStateStore(engine, "b")
    a.set("token", "one")
    a.set("token", "two")                               # an upsert, not a second row
    assert (a.get("token"), b.get("token"), a.get("missing")) == ("two", None, None)


def test_a_refresh_that_fails_releases_the_lock(engine: Engine, zalo: FakeZalo) -> None:
    provider = _provider(engine, zalo.options(timeout=10, refresh_token="not-the-one", access_token="old"))
    with pytest.raises(ProviderError):
        provider.check()                                # -124, then -14014: refused
    store = DatabaseStateStore(engine, "zalo", lease_seconds=600)
    started = time.monotonic()
    with store.locked("zalo:zalo:token"):
        pass
    assert time.monotonic() - started < 1.0
