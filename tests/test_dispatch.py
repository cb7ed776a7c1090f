"""Sending: the dispatcher against the real database and the in-process simulator.

Every test plans a real run (areas and subscribers imported through the
importer, a campaign file on disk, ``plan_run``) and then drives
``Dispatcher.run_until_empty``.  What reached a gateway is read from the
simulator network's own ledger (``received``/``accepted``) or from the file
gateway's JSON lines, never from the dispatcher's opinion of itself.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
import time_machine
from zoneinfo import ZoneInfo
from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine

from conftest import AREAS_CSV, write
from test_ratelimit import FakeClock
from loa import db, importer
from loa.campaign import Campaign, load_one
from loa.config import Config, load
from loa.dispatch import BACKOFF, MAX_ATTEMPTS, Dispatcher
from loa import gateways as gw_state
from loa.gateways import Gateway, GatewayPool
from loa.plan import plan_run
from loa.ratelimit import DatabaseGCRA, MemoryGCRA, PacedMemoryGCRA, db_epoch
from loa.receipts import apply_receipts
from providers import registry
from providers.base import (
    AuthError,
    DeliveryReceipt,
    NotReachableError,
    OutgoingMessage,
    Provider,
    RetryableError,
    SendResult,
    ThrottledError,
)
from providers.fakes.twilio import RESET, FakeTwilio
from providers.fakes.zalo import FakeZalo
from providers.simulator import SimulatedNetwork, SimulatorProvider

O = db.outbox


# -- scripted gateways ---------------------------------------------------------

class _Counting(Provider):
    channels: ClassVar[tuple[str, ...]] = ("sms", "zalo")
    rate: ClassVar[float] = 100_000.0
    calls: ClassVar[Counter[str]]

    def send(self, message: OutgoingMessage) -> SendResult:
        type(self).calls[message.key] += 1
        raise self.failure()

    def failure(self) -> Exception:
        raise NotImplementedError


class AuthFails(_Counting):
    type = "test-dispatch-auth-fails"
    calls = Counter()

    def failure(self) -> Exception:
        # gateways echo the recipient in their texts: the pause reason must not carry it whole
        return self.error(AuthError, "token expired (request for +84912000003)", code="401")


class Ambiguous(_Counting):
    type = "test-dispatch-ambiguous"
    calls = Counter()

    def failure(self) -> Exception:
        return self.error(RetryableError, "read timeout after the request was written",
                          code="TIMEOUT", ambiguous=True)


class AmbiguousDeduping(Ambiguous):
    type = "test-dispatch-ambiguous-dedupe"
    calls = Counter()
    dedupes_by_key = True


class NoZalo(_Counting):
    type = "test-dispatch-no-zalo"
    channels = ("zalo",)
    calls = Counter()

    def failure(self) -> Exception:
        return self.error(NotReachableError, "recipient is not a Zalo user", code="ZNS-NOTUSER")


class Throttled(_Counting):
    """Throttles the first call for each message, accepts the next."""

    type = "test-dispatch-throttled"
    calls = Counter()

    def send(self, message: OutgoingMessage) -> SendResult:
        type(self).calls[message.key] += 1
        if type(self).calls[message.key] == 1:
            raise self.error(ThrottledError, "too many requests", code="429", retry_after=2.0)
        return SendResult(provider_id=f"thr-{message.key}", parts=message.parts)


class EarlyReceipt(_Counting):
    """Accepts, and before answering lets "another worker" apply the receipt: the race
    between a gateway's receipt queue, polled by every sender, and the sender's own write."""

    type = "test-dispatch-early-receipt"
    calls = Counter()
    engine: ClassVar[Engine | None] = None

    def send(self, message: OutgoingMessage) -> SendResult:
        type(self).calls[message.key] += 1
        pid = f"early-{message.key}"
        fate = "undelivered" if message.to.endswith("1") else "delivered"
        assert self.engine is not None
        with self.engine.begin() as conn:
            moved = apply_receipts(conn, self.name, [DeliveryReceipt(
                fate, provider_id=pid, key=message.key, at=db.utcnow(),
                error_code="E-GONE" if fate == "undelivered" else None)])
        assert moved == 1
        return SendResult(provider_id=pid, parts=message.parts)


class BrokenInit(_Counting):
    """A gateway class with a bug in its constructor, as a plug-in might have."""

    type = "test-dispatch-broken-init"
    calls = Counter()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("__init__() got an unexpected keyword argument 'region'")

    def send(self, message: OutgoingMessage) -> SendResult:
        raise AssertionError("never built, never called")


SCRIPTED = (AuthFails, Ambiguous, AmbiguousDeduping, NoZalo, Throttled, EarlyReceipt, BrokenInit)


@pytest.fixture(autouse=True)
def scripted_gateways(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(registry, "_registered", dict(registry._registered))
    for cls in SCRIPTED:
        registry.register(cls)
        cls.calls = Counter()
    yield


EXTRA_GATEWAYS = """
[gateways.badauth]
type = "test-dispatch-auth-fails"
[gateways.amb]
type = "test-dispatch-ambiguous"
[gateways.amb-dedupe]
type = "test-dispatch-ambiguous-dedupe"
[gateways.nozalo]
type = "test-dispatch-no-zalo"
[gateways.early]
type = "test-dispatch-early-receipt"
[gateways.broken]
type = "test-dispatch-broken-init"
[gateways.throttled]
type = "test-dispatch-throttled"
burst = 3
[gateways.remote]
type = "simulator_http"
url = "http://127.0.0.1:9"
token_env = "LOA_TEST_DISPATCH_TOKEN"
"""


# -- helpers -------------------------------------------------------------------

def make_config(workdir: Path) -> Config:
    path = workdir / "config.toml"
    if "gateways.badauth" not in path.read_text(encoding="utf-8"):
        with path.open("a", encoding="utf-8") as f:
            f.write(EXTRA_GATEWAYS)
    return load(path)


def phone(i: int) -> str:
    return f"+84912{i:06d}"


def import_people(engine: Engine, folder: Path, n: int = 30, with_x: Any = lambda i: i % 3 != 0) -> None:
    """n subscribers, alternately in districts 116 and 125; attribute x only where with_x(i)."""
    areas = write(folder / "areas.csv", AREAS_CSV)
    assert importer.run_import(engine, importer.AreasHandler(engine, areas), areas).imported == 4
    lines = ["phone,name,area,x"]
    for i in range(n):
        lines.append(f"0912{i:06d},Người {i},{'116' if i % 2 else '125'},{f'v{i}' if with_x(i) else ''}")
    subs = folder / "subscribers.csv"
    subs.write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = importer.run_import(engine, importer.SubscribersHandler(engine, subs), subs)
    assert (summary.imported, summary.rejected) == (n, 0)


def add_events(engine: Engine, phones: list[str], kind: str = "installed", at: Any = None) -> None:
    with engine.begin() as conn:
        importer.record_events(conn, [{"phone": p, "type": kind, "occurred_at": at or db.utcnow(),
                                       "source": "test"} for p in phones])


def make_campaign(workdir: Path, name: str = "c", *, channels: tuple[str, ...] = ("sms",),
                  holdout: float = 0.0, suppress: tuple[str, ...] = (),
                  sms_text: str = "Xin chào {{ subscriber.name }}", sms_gateway: str | None = None,
                  zalo_gateway: str | None = None, validity_hours: int = 24,
                  window: tuple[str, str] | None = ("00:00", "24:00")) -> Campaign:
    write(workdir / "templates" / "sms" / f"{name}.j2", sms_text + "\n")
    lines = [
        f'name = "{name}"',
        f"channels = {json.dumps(list(channels))}",
        f"holdout = {holdout}",
        f"suppress_events = {json.dumps(list(suppress))}",
        f"validity_hours = {validity_hours}",
    ]
    if window:
        lines += ["[window]", f'start = "{window[0]}"', f'end = "{window[1]}"']
    if "sms" in channels:
        lines += ["[sms]", f'template = "sms/{name}.j2"']
        if sms_gateway:
            lines.append(f'gateway = "{sms_gateway}"')
    if "zalo" in channels:
        write(workdir / "templates" / "zalo" / f"{name}.toml", """
            template_id = "9001"
            [data]
            customer_name = "{{ subscriber.name }}"
        """)
        lines += ["[zalo]", f'template = "zalo/{name}.toml"']
        if zalo_gateway:
            lines.append(f'gateway = "{zalo_gateway}"')
    (workdir / "campaigns" / f"{name}.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_one(workdir / "campaigns", name)


def sim_pool(config: Config, net: SimulatedNetwork, name: str = "sim") -> GatewayPool:
    """A pool whose simulator gateway sends into ``net``, so the test can inspect it."""
    pool = GatewayPool(config)
    pool._built[name] = Gateway(name, SimulatorProvider(name, {"network": net}), MemoryGCRA(100_000, 100),
                                100_000.0)
    return pool


def outbox(engine: Engine, run_id: int | None = None) -> list[dict[str, Any]]:
    stmt = select(O, db.subscribers.c.phone).join(db.subscribers, db.subscribers.c.id == O.c.subscriber_id)
    if run_id is not None:
        stmt = stmt.where(O.c.run_id == run_id)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(stmt.order_by(O.c.id)).mappings()]


def key(row: dict[str, Any]) -> str:
    return db.message_key(row["run_id"], row["subscriber_id"])


def by_state(rows: list[dict[str, Any]]) -> Counter[str]:
    return Counter(r["state"] for r in rows)


# -- the normal path ---------------------------------------------------------------

def test_every_planned_row_is_sent_once_and_nobody_else_is(engine: Engine, workdir: Path, tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=40)
    add_events(engine, [phone(0), phone(1), phone(2)], at=db.utcnow() - timedelta(days=1))
    config = make_config(workdir)
    plan = plan_run(engine, config, make_campaign(workdir, holdout=0.25, suppress=("installed",)))
    before = outbox(engine)
    planned = [r for r in before if r["state"] == "planned"]
    others = [r for r in before if r["state"] != "planned"]
    assert plan.states["suppressed"] == 3 and plan.states["held_out"] > 0 and len(planned) > 20
    assert {r["phone"] for r in before if r["state"] == "suppressed"} == {phone(0), phone(1), phone(2)}

    net = SimulatedNetwork(seed=7, delivery_rate=0.9, install_rate=0.2)
    start = db.utcnow()
    summary = Dispatcher(engine, config, pool=sim_pool(config, net)).run_until_empty()
    end = db.utcnow()

    assert summary.outcomes == Counter({"sent": len(planned)})
    assert summary.receipts == len(planned)
    assert summary.paused == {}
    assert set(net.received) == {key(r) for r in planned}
    assert set(net.received.values()) == {1}
    sent_messages = {m.key: m for m in net.messages}
    after = {r["id"]: r for r in outbox(engine)}
    for row in planned:
        now = after[row["id"]]
        k = key(now)
        message = sent_messages[k]
        assert now["state"] == ("delivered" if net.delivers(k) else "undelivered")
        assert now["provider_id"] == net._by_key[k].provider_id
        assert now["attempts"] == 1
        assert now["lease_until"] is None
        assert start <= now["sent_at"] <= end
        assert (now["parts"], now["encoding"]) == (message.parts, message.encoding) == (1, "UCS-2")
        assert message.text == f"Xin chào Người {int(now['phone'][-6:])}"
        assert message.to == now["phone"]
    for row in others:
        assert after[row["id"]]["state"] == row["state"]
        assert after[row["id"]]["provider_id"] is None and after[row["id"]]["sent_at"] is None
        assert key(row) not in net.received
    assert by_state(list(after.values()))["undelivered"] > 0          # the seed gives both fates
    with engine.connect() as conn:
        assert conn.scalar(select(db.runs.c.status).where(db.runs.c.id == plan.run_id)) == "done"

    again = Dispatcher(engine, config, pool=sim_pool(config, net)).run_until_empty()
    assert again.attempted == 0
    assert set(net.received.values()) == {1}
    assert outbox(engine) == list(after.values())


def test_template_is_rendered_at_send_time_from_the_version_the_run_was_planned_from(
        engine: Engine, workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workdir)   # the file gateway's path is relative to the working directory
    import_people(engine, tmp_path, n=6)
    config = make_config(workdir)
    plan = plan_run(engine, config, make_campaign(workdir, sms_text="Mới: chào {{ subscriber.name }} ở {{ area.name }}",
                                                  sms_gateway="jsonl"))
    # the file edited after planning: the run's stored version is what is sent (loa.versions)
    write(workdir / "templates" / "sms" / "c.j2", "edited after the run was planned\n")

    dispatcher = Dispatcher(engine, config)
    summary = dispatcher.run_until_empty()
    dispatcher.pool.close()

    lines = [json.loads(x) for x in (workdir / "sent.jsonl").read_text(encoding="utf-8").splitlines()]
    assert summary.outcomes == Counter({"sent": 6})
    assert Counter(line["key"] for line in lines) == Counter({key(r): 1 for r in outbox(engine, plan.run_id)})
    areas = {"116": "Thành phố Sơn La", "125": "Huyện Mai Sơn"}
    for line in lines:
        i = int(line["to"][-6:])
        assert line["text"] == f"Mới: chào Người {i} ở {areas['116' if i % 2 else '125']}"
        assert line["encoding"] == "UCS-2" and line["channel"] == "sms"
    rows = outbox(engine, plan.run_id)
    assert {r["state"] for r in rows} == {"sent"}   # the file gateway sends no receipts
    assert {r["provider_id"] for r in rows} == {f"file-{key(r)}" for r in rows}


def test_a_template_error_fails_only_that_recipient(engine: Engine, workdir: Path, tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=12, with_x=lambda i: i % 3 != 0)   # 0, 3, 6, 9 have no x
    config = make_config(workdir)
    make_campaign(workdir, sms_text="Chào {{ subscriber.name }}, mã {{ attr.x }}")
    plan = plan_run(engine, config, load_one(workdir / "campaigns", "c"))
    net = SimulatedNetwork(seed=7, delivery_rate=1.0)

    summary = Dispatcher(engine, config, pool=sim_pool(config, net)).run_until_empty()

    rows = outbox(engine, plan.run_id)
    failed = [r for r in rows if r["state"] == "failed"]
    assert sorted(int(r["phone"][-6:]) for r in failed) == [0, 3, 6, 9]
    for r in failed:
        assert r["error_code"] == "template"
        assert "x" in r["error_text"] and r["attempts"] == 0 and r["sent_at"] is None
        assert key(r) not in net.received
    ok = [r for r in rows if r["state"] != "failed"]
    assert len(ok) == 8 and {r["state"] for r in ok} == {"delivered"}
    assert {m.text for m in net.messages} == {f"Chào Người {i}, mã v{i}" for i in range(12) if i % 3}
    assert summary.outcomes == Counter({"failed": 4, "sent": 8})


# -- gateway failures --------------------------------------------------------------

def test_transient_failures_are_deferred_then_retried(engine: Engine, workdir: Path, tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=30)
    config = make_config(workdir)
    plan = plan_run(engine, config, make_campaign(workdir))
    net = SimulatedNetwork(seed=7, failure_rate=0.5, delivery_rate=1.0)
    pool = sim_pool(config, net)
    keys = [key(r) for r in outbox(engine, plan.run_id)]
    # when each key's send first succeeds, by the simulator's own dice (None: never)
    first_ok = {k: next((a for a in range(1, MAX_ATTEMPTS + 1) if not net.fails_transiently(k, a)), None)
                for k in keys}
    assert any(v == 1 for v in first_ok.values()) and any(v and v > 1 for v in first_ok.values())

    start = db.utcnow()
    Dispatcher(engine, config, pool=pool).run_until_empty()
    rows = {key(r): r for r in outbox(engine, plan.run_id)}
    for k, r in rows.items():
        if first_ok[k] == 1:
            assert r["state"] == "delivered" and r["attempts"] == 1
        else:
            assert r["state"] == "deferred"
            assert r["error_code"] == "SIM-503"
            assert r["attempts"] == 1 and r["worker"] is None and r["lease_until"] is None
            assert r["due_at"] >= start + timedelta(seconds=BACKOFF[0] * 0.8)
            assert r["due_at"] <= db.utcnow() + timedelta(seconds=BACKOFF[0] * 1.2)

    # nothing is due yet: sending again now changes nothing
    assert Dispatcher(engine, config, pool=pool).run_until_empty().attempted == 0
    assert sum(net.received.values()) == len(keys)

    for hop in range(1, MAX_ATTEMPTS):
        with time_machine.travel(start + timedelta(hours=hop), tick=True):
            Dispatcher(engine, config, pool=pool).run_until_empty()
        rows = {key(r): r for r in outbox(engine, plan.run_id)}
        for k, r in rows.items():
            ok_at = first_ok[k]
            if ok_at is not None and ok_at <= hop + 1:
                assert (r["state"], r["attempts"], net.received[k], net.accepted[k]) == ("delivered", ok_at, ok_at, 1)
            elif hop + 1 < MAX_ATTEMPTS:
                assert (r["state"], r["attempts"], r["error_code"]) == ("deferred", hop + 1, "SIM-503")
            else:
                assert (r["state"], r["error_code"], net.received[k]) == ("failed", "SIM-503", MAX_ATTEMPTS)
                assert r["error_text"].startswith(f"gave up after {MAX_ATTEMPTS} attempts")
    assert {r["state"] for r in rows.values()} <= {"delivered", "failed"}


def test_permanent_refusal_fails_with_the_gateway_code(engine: Engine, workdir: Path, tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=30)
    config = make_config(workdir)
    plan = plan_run(engine, config, make_campaign(workdir))
    net = SimulatedNetwork(seed=7, permanent_rate=0.3, delivery_rate=1.0)

    summary = Dispatcher(engine, config, pool=sim_pool(config, net)).run_until_empty()

    rows = outbox(engine, plan.run_id)
    refused = [r for r in rows if net.refuses(r["phone"])]
    assert 0 < len(refused) < len(rows)
    for r in rows:
        assert net.received[key(r)] == 1
        if r in refused:
            assert (r["state"], r["error_code"], r["attempts"]) == ("failed", "SIM-INVALID", 1)
            assert "refused" in r["error_text"] and r["provider_id"] is None
        else:
            assert r["state"] == "delivered"
    assert summary.outcomes == Counter({"failed": len(refused), "sent": len(rows) - len(refused)})


def test_ambiguous_error_without_dedupe_is_unknown_and_never_resent(engine: Engine, workdir: Path,
                                                                     tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=8)
    config = make_config(workdir)
    plan = plan_run(engine, config, make_campaign(workdir, sms_gateway="amb"))
    keys = {key(r) for r in outbox(engine, plan.run_id)}

    Dispatcher(engine, config).run_until_empty()
    rows = outbox(engine, plan.run_id)
    assert {r["state"] for r in rows} == {"unknown"}
    assert {r["error_code"] for r in rows} == {"TIMEOUT"}
    assert all(r["error_text"].startswith("outcome unknown") for r in rows)
    assert Ambiguous.calls == Counter({k: 1 for k in keys})

    start = db.utcnow()
    for hop in (1, 3):
        with time_machine.travel(start + timedelta(hours=hop), tick=True):
            assert Dispatcher(engine, config).run_until_empty().attempted == 0
    assert Ambiguous.calls == Counter({k: 1 for k in keys})
    assert {r["state"] for r in outbox(engine, plan.run_id)} == {"unknown"}


def test_ambiguous_error_with_dedupe_is_retried(engine: Engine, workdir: Path, tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=4)
    config = make_config(workdir)
    plan = plan_run(engine, config, make_campaign(workdir, sms_gateway="amb-dedupe"))
    Dispatcher(engine, config).run_until_empty()
    rows = outbox(engine, plan.run_id)
    assert {r["state"] for r in rows} == {"deferred"}
    assert {r["attempts"] for r in rows} == {1}


def test_auth_error_pauses_the_gateway_without_using_attempts(engine: Engine, workdir: Path,
                                                              tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=10)
    config = make_config(workdir)
    bad = plan_run(engine, config, make_campaign(workdir, "bad", sms_gateway="badauth"))
    good = plan_run(engine, config, make_campaign(workdir, "good"))
    net = SimulatedNetwork(seed=7, delivery_rate=1.0)

    summary = Dispatcher(engine, config, pool=sim_pool(config, net)).run_until_empty()

    assert list(summary.paused) == ["badauth"]
    assert "auth error" in summary.paused["badauth"] and "token expired" in summary.paused["badauth"]
    assert "912000003" not in summary.paused["badauth"]
    assert "912000003" not in gw_state.paused(engine)["badauth"]["reason"]
    bad_rows = outbox(engine, bad.run_id)
    assert {r["state"] for r in bad_rows} == {"planned"}
    assert {r["attempts"] for r in bad_rows} == {0}
    assert all(r["worker"] is None and r["lease_until"] is None and r["sent_at"] is None for r in bad_rows)
    assert 1 <= sum(AuthFails.calls.values()) <= len(bad_rows)
    assert max(AuthFails.calls.values()) == 1
    good_rows = outbox(engine, good.run_id)
    assert {r["state"] for r in good_rows} == {"delivered"}
    assert set(net.received) == {key(r) for r in good_rows}
    with engine.connect() as conn:
        status = dict(conn.execute(select(db.runs.c.id, db.runs.c.status)).all())
    assert status == {bad.run_id: "planned", good.run_id: "done"}


def test_a_gateway_that_cannot_be_built_is_paused(engine: Engine, workdir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOA_TEST_DISPATCH_TOKEN", raising=False)
    import_people(engine, tmp_path, n=4)
    config = make_config(workdir)
    plan = plan_run(engine, config, make_campaign(workdir, sms_gateway="remote"))

    summary = Dispatcher(engine, config).run_until_empty()

    assert list(summary.paused) == ["remote"]
    assert "LOA_TEST_DISPATCH_TOKEN" in summary.paused["remote"]
    rows = outbox(engine, plan.run_id)
    assert {(r["state"], r["attempts"], r["error_code"]) for r in rows} == {("planned", 0, "config")}


def test_a_gateway_class_that_crashes_on_start_is_paused_not_the_worker(engine: Engine, workdir: Path,
                                                                        tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=6)
    config = make_config(workdir)
    bad = plan_run(engine, config, make_campaign(workdir, "bad", sms_gateway="broken"))
    good = plan_run(engine, config, make_campaign(workdir, "good"))
    net = SimulatedNetwork(seed=7, delivery_rate=1.0)

    summary = Dispatcher(engine, config, pool=sim_pool(config, net)).run_until_empty()

    assert list(summary.paused) == ["broken"]
    assert "failed to start: TypeError" in summary.paused["broken"]
    assert {(r["state"], r["attempts"]) for r in outbox(engine, bad.run_id)} == {("planned", 0)}
    assert {r["state"] for r in outbox(engine, good.run_id)} == {"delivered"}


def test_throttling_defers_by_retry_after_and_slows_the_gateway(engine: Engine, workdir: Path,
                                                                 tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=1)
    config = make_config(workdir)
    plan = plan_run(engine, config, make_campaign(workdir, sms_gateway="throttled"))
    dispatcher = Dispatcher(engine, config, threads=1)
    start = db.utcnow()
    began = time.monotonic()
    dispatcher.run_until_empty()

    [row] = outbox(engine, plan.run_id)
    # pushback is not a failure: the attempt is not spent, and the ledger says why it waits
    assert (row["state"], row["error_code"], row["attempts"], row["reason"]) == ("deferred", "429", 0, "throttled")
    # the gateway's Retry-After, not the generic 30 s backoff
    assert start + timedelta(seconds=2) <= row["due_at"] <= db.utcnow() + timedelta(seconds=2)
    # and the limiter holds the whole gateway back for as long, whatever its burst (3 here)
    # (less the time since the throttled call, which a busy machine may make long)
    wait = dispatcher.pool.get("throttled").limiter.reserve(1)
    assert 2.0 - (time.monotonic() - began) - 0.05 <= wait <= 2.05, wait

    with time_machine.travel(start + timedelta(minutes=1), tick=True):
        Dispatcher(engine, config, threads=1).run_until_empty()
    [row] = outbox(engine, plan.run_id)
    assert (row["state"], row["attempts"], row["provider_id"]) == ("sent", 1, f"thr-{key(row)}")
    assert Throttled.calls == Counter({key(row): 2})


def test_a_receipt_that_comes_before_the_send_is_recorded_is_kept(engine: Engine, workdir: Path,
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(EarlyReceipt, "engine", engine)
    import_people(engine, tmp_path, n=4)
    config = make_config(workdir)
    plan = plan_run(engine, config, make_campaign(workdir, sms_gateway="early"))
    start = db.utcnow()

    Dispatcher(engine, config).run_until_empty()

    for r in outbox(engine, plan.run_id):
        fate = "undelivered" if r["phone"].endswith("1") else "delivered"
        assert (r["state"], r["provider_id"], r["attempts"]) == (fate, f"early-{key(r)}", 1)
        assert r["error_code"] == ("E-GONE" if fate == "undelivered" else None)
        assert start <= r["sent_at"] <= r["delivered_at"]
        assert r["parts"] == 1 and r["encoding"] == "UCS-2"


def test_concurrent_dispatchers_send_each_message_once(engine: Engine, workdir: Path, tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=300)
    config = make_config(workdir)
    plan = plan_run(engine, config, make_campaign(workdir))
    net = SimulatedNetwork(seed=7, delivery_rate=1.0, latency_ms=1)
    pool = sim_pool(config, net)
    dispatchers = [Dispatcher(engine, config, threads=3, batch_size=25, pool=pool) for _ in range(3)]
    for i, d in enumerate(dispatchers):
        d.worker = f"host-{i}:1"          # as if three processes
    errors: list[BaseException] = []

    def go(d: Dispatcher) -> None:
        try:
            d.run_until_empty()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(d,)) for d in dispatchers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    rows = outbox(engine, plan.run_id)
    assert net.received == Counter({key(r): 1 for r in rows})
    assert {r["state"] for r in rows} == {"delivered"}
    assert sum(d.summary.outcomes["sent"] for d in dispatchers) == 300
    assert sum(1 for d in dispatchers if d.summary.outcomes["sent"]) >= 2   # the work was shared


LONG_SMS = "Bluezone giúp phát hiện tiếp xúc gần với người nhiễm COVID-19. " * 3   # 3 UCS-2 parts


@pytest.mark.parametrize("limiter", ["memory", "database"])
def test_a_message_of_three_parts_takes_three_tokens_from_its_gateways_limit(
        limiter: str, engine: Engine, workdir: Path, tmp_path: Path) -> None:
    """The dispatcher books a message's parts, not the message, with either limiter: ten
    3-part messages at 10 parts a second (burst 1) take 30 slots, 3 seconds of the limit."""
    n, rate = 10, 10.0
    import_people(engine, tmp_path, n=n)
    config = make_config(workdir)
    plan = plan_run(engine, config, make_campaign(workdir, sms_text=LONG_SMS))
    net = SimulatedNetwork(seed=7, delivery_rate=1.0)
    pool = sim_pool(config, net)
    clock = FakeClock()
    gcra: MemoryGCRA | DatabaseGCRA
    if limiter == "memory":     # one sender, on a clock that moves by the limiter's waits
        gcra = MemoryGCRA(rate, 1, clock=clock, sleep=clock.sleep)
    else:                       # slots on the database's clock, each sent at once (early is on time)
        gcra = DatabaseGCRA(engine, "sim", rate, 1, sleep=lambda seconds: None)
        gcra.late = 3600.0      # and never too late (a busy machine): each slot is booked once
    pool._built["sim"] = Gateway("sim", pool._built["sim"].provider, gcra, rate)
    with engine.connect() as conn:
        before = conn.scalar(select(db_epoch(conn.dialect.name)))
    Dispatcher(engine, config, pool=pool, threads=1).run_until_empty()

    rows = outbox(engine, plan.run_id)
    assert {(r["state"], r["parts"]) for r in rows} == {("delivered", 3)}
    assert {m.parts for m in net.messages} == {3} and len(net.messages) == n
    if limiter == "memory":
        # the first message leaves at once, each next one 3 slots of 0.1 s later
        assert clock.now == pytest.approx((n - 1) * 3 / rate)
    else:
        with engine.connect() as conn:
            tat = conn.scalar(select(db.gateways.c.tat).where(db.gateways.c.name == "sim"))
            after = conn.scalar(select(db_epoch(conn.dialect.name)))
        booked = n * 3 * gcra.interval
        # the gateway's theoretical arrival time moved on by 30 slots from a moment of the run
        assert before + booked <= tat + 0.002 and tat <= after + booked + 0.002, (tat - before, after - before)



class WakesLate(PacedMemoryGCRA):
    """A real limiter whose senders wake too late for every third slot the first time, as on
    a busy machine: those slots are missed, and the messages must be booked again."""

    def __init__(self, room: bool) -> None:
        super().__init__(100_000, 1)   # burst 1: every slot a moment of its own
        self.room = room        # False: as if the slots ahead were booked, none free at once
        self.late = 3600.0      # otherwise never late: the misses are these, not the machine's
        self.late_for: set[float] = set()
        self.misses = 0
        self._count = 0
        self._lock2 = threading.Lock()

    def book(self, costs: Any) -> list[float]:
        slots = super().book(costs)
        with self._lock2:
            for slot in slots:
                self._count += 1
                if self._count % 3 == 0:
                    self.late_for.add(slot)
        return slots

    def take_now(self, cost: float = 1.0) -> bool:
        return self.room and super().take_now(cost)

    def on_time(self, deadline: float) -> bool:
        with self._lock2:
            if deadline in self.late_for:
                self.late_for.discard(deadline)
                self.misses += 1
                return False
        return super().on_time(deadline)


@pytest.mark.parametrize("room", [False, True])
def test_messages_that_miss_their_slot_are_booked_with_the_next_window_and_sent_once(
        room: bool, engine: Engine, workdir: Path, tmp_path: Path) -> None:
    """Several batches of several windows each: a message whose sender woke too late goes
    with the next window, or the next batch's, and leaves once, its attempt counted once.
    Where the limit has room at that moment (``room``), it goes at once instead."""
    n = 300
    import_people(engine, tmp_path, n=n)
    config = make_config(workdir)
    plan = plan_run(engine, config, make_campaign(workdir))
    net = SimulatedNetwork(seed=11, delivery_rate=1.0)
    pool = sim_pool(config, net)
    limiter = WakesLate(room)
    pool._built["sim"] = Gateway("sim", pool._built["sim"].provider, limiter, 100_000.0)
    # two threads: windows of 64; batches of 100
    summary = Dispatcher(engine, config, pool=pool, threads=2, batch_size=100).run_until_empty()

    rows = outbox(engine, plan.run_id)
    assert net.received == Counter({key(r): 1 for r in rows})
    assert {(r["state"], r["attempts"]) for r in rows} == {("delivered", 1)}
    assert limiter.misses >= n // 3
    assert summary.missed_slots == (0 if room else limiter.misses)
    assert summary.outcomes == Counter({"sent": n})


def test_concurrent_claims_never_take_the_same_row(engine: Engine, workdir: Path, tmp_path: Path) -> None:
    """Eight claimers at once, each on its own connection, until nothing is due: every row is
    claimed by exactly one of them.  On PostgreSQL that takes the row lock of the claim's
    SELECT (FOR UPDATE SKIP LOCKED): without it, a claimer blocked on rows another one is
    claiming takes them too once it commits, and the same rows are claimed twice."""
    n, claimers = 3000, 8
    import_people(engine, tmp_path, n=n)
    config = make_config(workdir)
    plan_run(engine, config, make_campaign(workdir))
    dispatchers = [Dispatcher(engine, config, batch_size=50, pool=sim_pool(config, SimulatedNetwork(seed=1)))
                   for _ in range(claimers)]
    for i, d in enumerate(dispatchers):
        d.worker = f"host-{i}:1"
    start = threading.Barrier(claimers)
    first_round = threading.Barrier(claimers)
    taken: list[list[int]] = [[] for _ in dispatchers]
    errors: list[BaseException] = []

    def claim_all(i: int) -> None:
        # All eight start together, and none claims a second batch before each has claimed
        # its first: the first round is eight claims racing for the same due rows, whatever
        # the scheduler does with the threads; after it they race freely until nothing is due.
        try:
            start.wait(60)
            taken[i] += [item.id for item in dispatchers[i].claim()]
            first_round.wait(60)
            while batch := dispatchers[i].claim():
                taken[i] += [item.id for item in batch]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=claim_all, args=(i,)) for i in range(claimers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    claimed = Counter(row_id for ids in taken for row_id in ids)
    twice = sorted(row_id for row_id, times in claimed.items() if times > 1)
    assert not twice, f"{len(twice)} rows claimed more than once, e.g. {twice[:5]}"
    rows = outbox(engine)
    assert set(claimed) == {r["id"] for r in rows} and len(rows) == n
    owner = {row_id: f"host-{i}:1" for i, ids in enumerate(taken) for row_id in ids}
    assert {r["id"]: r["worker"] for r in rows} == owner          # the ledger agrees with the claimers
    assert all(taken)                                               # every claimer took part


def test_not_reachable_on_zalo_falls_back_to_sms_once(engine: Engine, workdir: Path, tmp_path: Path,
                                                     vietnam_daytime: datetime) -> None:
    import_people(engine, tmp_path, n=10)
    config = make_config(workdir)
    plan = plan_run(engine, config, make_campaign(workdir, channels=("zalo", "sms"), zalo_gateway="nozalo"))
    assert {(r["channel"], r["gateway"]) for r in outbox(engine, plan.run_id)} == {("zalo", "nozalo")}
    net = SimulatedNetwork(seed=7, delivery_rate=1.0)

    Dispatcher(engine, config, pool=sim_pool(config, net)).run_until_empty()
    Dispatcher(engine, config, pool=sim_pool(config, net)).run_until_empty()

    rows = outbox(engine, plan.run_id)
    keys = {key(r) for r in rows}
    assert NoZalo.calls == Counter({k: 1 for k in keys})
    # the SMS is a new message with a key of its own: a gateway deduplicating by key must send it
    assert net.received == Counter({f"{k}-sms": 1 for k in keys})
    assert {m.channel for m in net.messages} == {"sms"}
    for r in rows:
        assert (r["state"], r["channel"], r["gateway"], r["attempts"]) == ("delivered", "sms", "sim", 1)
        assert r["encoding"] == "UCS-2"


# -- crash recovery and expiry --------------------------------------------------------

def test_recover_returns_expired_leases_by_what_may_have_been_sent(engine: Engine, workdir: Path,
                                                                   tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=5)
    config = make_config(workdir)
    plan = plan_run(engine, config, make_campaign(workdir))
    ids = [r["id"] for r in outbox(engine, plan.run_id)]
    now = db.utcnow()
    past, future = now - timedelta(minutes=1), now + timedelta(minutes=10)
    setups = {
        ids[0]: ("claimed", past, "sim"),     # claimed, never sent: back to planned
        ids[1]: ("claimed", future, "sim"),   # a live worker's claim: left alone
        ids[2]: ("sending", past, "sim"),     # the simulator dedupes by key: safe to send again
        ids[3]: ("sending", past, "jsonl"),   # the file gateway does not: unknown
        ids[4]: ("sending", future, "jsonl"),
    }
    with engine.begin() as conn:
        for oid, (state, lease, gateway) in setups.items():
            conn.execute(update(O).where(O.c.id == oid).values(state=state, lease_until=lease, gateway=gateway,
                                                               worker="dead-host:1", attempts=1))

    assert Dispatcher(engine, config).recover() == 3

    rows = {r["id"]: r for r in outbox(engine, plan.run_id)}
    assert (rows[ids[0]]["state"], rows[ids[0]]["worker"], rows[ids[0]]["lease_until"]) == ("planned", None, None)
    assert (rows[ids[1]]["state"], rows[ids[1]]["worker"]) == ("claimed", "dead-host:1")
    assert (rows[ids[2]]["state"], rows[ids[2]]["worker"]) == ("planned", None)
    assert rows[ids[2]]["due_at"] <= db.utcnow()
    assert (rows[ids[3]]["state"], rows[ids[3]]["error_code"], rows[ids[3]]["worker"]) == ("unknown", "ambiguous",
                                                                                            None)
    assert rows[ids[4]]["state"] == "sending"
    assert Dispatcher(engine, config).recover() == 0


class Watching(Provider):
    """Accepts every message and notes, at each call, what the ledger says: the rows in
    ``sending`` in the whole outbox, and the state of the row being sent."""

    type = "test-dispatch-watching"
    rate = 100_000.0

    def __init__(self, name: str, options: Any, state: Any = None) -> None:
        super().__init__(name, options, state)
        self.engine: Engine = options["engine"]
        self.seen: list[tuple[int, str]] = []
        self._lock = threading.Lock()

    def send(self, message: OutgoingMessage) -> SendResult:
        run_id, subscriber_id = (int(x) for x in message.key.split("-")[1:3])
        with self.engine.connect() as conn:
            sending = conn.scalar(select(func.count()).select_from(O).where(O.c.state == "sending"))
            mine = conn.scalar(select(O.c.state).where(O.c.run_id == run_id, O.c.subscriber_id == subscriber_id))
        with self._lock:
            self.seen.append((sending, mine))
        time.sleep(0.002)   # a gateway's round trip: the other threads' calls overlap this one
        return SendResult(provider_id=f"w-{message.key}")


@pytest.mark.parametrize("limiter", ["memory", "database"])
def test_only_the_calls_in_flight_are_marked_sending(engine: Engine, workdir: Path, tmp_path: Path,
                                                     limiter: str) -> None:
    """A crash leaves ``unknown`` (through a gateway that does not deduplicate) what was
    ``sending``: that must be the calls that may have gone out, at most one per sender
    thread, never the window of rows booked around them."""
    threads, n = 3, 200
    import_people(engine, tmp_path, n=n)
    config = make_config(workdir)
    plan = plan_run(engine, config, make_campaign(workdir))
    watching = Watching("sim", {"engine": engine})
    rate_limit = MemoryGCRA(100_000, 100) if limiter == "memory" else DatabaseGCRA(engine, "sim", 100_000, 100)
    pool = GatewayPool(config)
    pool._built["sim"] = Gateway("sim", watching, rate_limit, 100_000.0)
    Dispatcher(engine, config, threads=threads, batch_size=n, pool=pool).run_until_empty()
    rows = outbox(engine, plan.run_id)
    assert by_state(rows) == {"sent": n}
    assert {r["attempts"] for r in rows} == {1}
    assert len(watching.seen) == n
    assert {mine for _, mine in watching.seen} == {"sending"}     # marked before its call, committed
    most = max(sending for sending, _ in watching.seen)
    assert most <= threads, f"{most} rows sending at once with {threads} sender threads"


def test_a_worker_that_lost_its_lease_sends_nothing_of_what_another_took_over(
        engine: Engine, workdir: Path, tmp_path: Path) -> None:
    """Worker A claims a batch, then stalls past its lease (a long pause, a frozen VM); B
    recovers the rows and claims them.  When A wakes up with the batch still in hand, it
    must not send any of it: B does, and each person gets the message once."""
    import_people(engine, tmp_path, n=12)
    config = make_config(workdir)
    plan = plan_run(engine, config, make_campaign(workdir))
    net = SimulatedNetwork(seed=7, delivery_rate=1.0)
    a, b = (Dispatcher(engine, config, batch_size=100, pool=sim_pool(config, net)) for _ in range(2))
    a.worker, b.worker = "host-a:1", "host-b:1"
    in_hand = a.claim()
    assert len(in_hand) == 12
    with engine.begin() as conn:          # A's lease runs out while it stalls
        conn.execute(update(O).where(O.c.worker == a.worker).values(lease_until=db.utcnow() - timedelta(seconds=1)))
    assert b.recover() == 12
    b._next = b.claim()
    assert len(b._next) == 12

    a._next = in_hand                     # A wakes up and carries on with its batch
    a.run_until_empty()
    assert not net.received
    assert {r["worker"] for r in outbox(engine, plan.run_id)} == {b.worker}
    b.run_until_empty()
    rows = outbox(engine, plan.run_id)
    assert net.received == Counter({key(r): 1 for r in rows})
    assert {r["state"] for r in rows} == {"delivered"}


def test_messages_expire_after_the_validity(engine: Engine, workdir: Path, tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=20)
    config = make_config(workdir)
    plan = plan_run(engine, config, make_campaign(workdir, holdout=0.3, validity_hours=12))
    states = by_state(outbox(engine, plan.run_id))
    net = SimulatedNetwork(seed=7)

    with time_machine.travel(db.utcnow() + timedelta(hours=11), tick=True):
        assert Dispatcher(engine, config, pool=sim_pool(config, SimulatedNetwork())).expire() == 0
    with time_machine.travel(db.utcnow() + timedelta(hours=12, minutes=5), tick=True):
        summary = Dispatcher(engine, config, pool=sim_pool(config, net)).run_until_empty()

    assert summary.expired == states["planned"] and summary.attempted == 0
    assert net.total_received == 0
    rows = outbox(engine, plan.run_id)
    assert by_state(rows) == Counter({"expired": states["planned"], "held_out": states["held_out"]})
    assert all("12 h" in r["error_text"] for r in rows if r["state"] == "expired")


# -- receipts and responses ----------------------------------------------------------

def test_receipts_only_move_forward_and_are_idempotent(engine: Engine, workdir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workdir)
    import_people(engine, tmp_path, n=3)
    config = make_config(workdir)
    plan = plan_run(engine, config, make_campaign(workdir, sms_gateway="jsonl"))
    dispatcher = Dispatcher(engine, config)
    dispatcher.run_until_empty()
    dispatcher.pool.close()
    a, b, c = outbox(engine, plan.run_id)
    assert {a["state"], b["state"], c["state"]} == {"sent"}
    at = db.utcnow()

    def state(row: dict[str, Any]) -> dict[str, Any]:
        return next(r for r in outbox(engine, plan.run_id) if r["id"] == row["id"])

    delivered_a = DeliveryReceipt("delivered", provider_id=a["provider_id"], at=at)
    undelivered_a = DeliveryReceipt("undelivered", provider_id=a["provider_id"], error_code="X1")
    undelivered_b = DeliveryReceipt("undelivered", key=key(b), error_code="E-77", error_text="absent")
    with engine.begin() as conn:
        assert apply_receipts(conn, "sim", [delivered_a]) == 0        # another gateway's id space
        assert apply_receipts(conn, "jsonl", [delivered_a, undelivered_b]) == 2
    with engine.begin() as conn:
        assert apply_receipts(conn, "jsonl", [delivered_a, undelivered_b]) == 0
        assert apply_receipts(conn, "jsonl", [undelivered_a]) == 0
        assert apply_receipts(conn, "jsonl", [DeliveryReceipt("delivered", key=key(b))]) == 0
        assert apply_receipts(conn, "jsonl", [DeliveryReceipt("accepted", key=key(c))]) == 0

    a2, b2, c2 = state(a), state(b), state(c)
    assert (a2["state"], a2["delivered_at"], a2["error_code"]) == ("delivered", at, None)
    assert (b2["state"], b2["error_code"], b2["error_text"]) == ("undelivered", "E-77", "absent")
    assert c2["state"] == "sent"


def test_responses_are_recorded_as_events_of_their_message(engine: Engine, workdir: Path, tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=40)
    config = make_config(workdir)
    plan = plan_run(engine, config, make_campaign(workdir))
    net = SimulatedNetwork(seed=7, delivery_rate=0.9, install_rate=0.3)

    summary = Dispatcher(engine, config, pool=sim_pool(config, net)).run_until_empty()

    rows = outbox(engine, plan.run_id)
    expected = {r["id"]: r for r in rows if net.delivers(key(r)) and net.installs(key(r))}
    assert expected and summary.responses == len(expected)
    e = db.events
    with engine.connect() as conn:
        events = conn.execute(select(e.c.subscriber_id, e.c.type, e.c.outbox_id, e.c.source, e.c.occurred_at)).all()
    assert len(events) == len(expected)
    for subscriber_id, kind, outbox_id, source, occurred_at in events:
        assert kind == "installed" and source == "simulator"
        assert outbox_id in expected and expected[outbox_id]["subscriber_id"] == subscriber_id
        assert occurred_at >= expected[outbox_id]["sent_at"]


def test_campaign_filter_sends_only_that_campaign(engine: Engine, workdir: Path, tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=6)
    config = make_config(workdir)
    first = plan_run(engine, config, make_campaign(workdir, "first"))
    second = plan_run(engine, config, make_campaign(workdir, "second"))
    net = SimulatedNetwork(seed=7, delivery_rate=1.0)
    Dispatcher(engine, config, campaign="second", pool=sim_pool(config, net)).run_until_empty()
    assert {r["state"] for r in outbox(engine, first.run_id)} == {"planned"}
    assert {r["state"] for r in outbox(engine, second.run_id)} == {"delivered"}
    assert set(net.received) == {key(r) for r in outbox(engine, second.run_id)}



# -- real adapters against their loopback fakes ------------------------------------------

ICT = ZoneInfo("Asia/Ho_Chi_Minh")


FAKES = "# -- gateways on loopback fakes --"


def fake_gateways(workdir: Path, monkeypatch: pytest.MonkeyPatch, twilio: FakeTwilio | None = None,
                  zalo: FakeZalo | None = None, zalo_rate: float = 1000) -> Config:
    """The configuration plus gateway ``tw`` (the Twilio adapter) and ``zl`` (the ZNS adapter) on
    these fakes, replacing those of an earlier call."""
    make_config(workdir)
    path = workdir / "config.toml"
    lines = [path.read_text(encoding="utf-8").partition(FAKES)[0].rstrip("\n"), FAKES]
    if twilio is not None:
        monkeypatch.setenv("LOA_TEST_TWILIO_TOKEN", twilio.auth_token)
        lines += ["[gateways.tw]", 'type = "twilio"', f'account_sid = "{twilio.account_sid}"',
                  'auth_token_env = "LOA_TEST_TWILIO_TOKEN"', 'from_number = "+15005550006"',
                  f'base_url = "{twilio.url}"', "timeout = 5", "rate = 1000"]
    if zalo is not None:
        for name, value in (("SECRET", zalo.secret_key), ("OA_SECRET", zalo.oa_secret),
                            ("AT", zalo.access_token), ("RT", zalo.refresh_token)):
            monkeypatch.setenv(f"LOA_TEST_ZALO_{name}", value)
        lines += ["[gateways.zl]", 'type = "zalo_zns"', f'app_id = "{zalo.app_id}"',
                  'secret_key_env = "LOA_TEST_ZALO_SECRET"', 'oa_secret_env = "LOA_TEST_ZALO_OA_SECRET"',
                  'access_token_env = "LOA_TEST_ZALO_AT"', 'refresh_token_env = "LOA_TEST_ZALO_RT"',
                  f'base_url = "{zalo.url}"', f'oauth_url = "{zalo.url}"', "timeout = 5", f"rate = {zalo_rate}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load(path)


def test_a_recipient_who_replied_stop_to_twilio_is_opted_out_everywhere(
        engine: Engine, workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import_people(engine, tmp_path, n=6)
    stopped = phone(3)
    with FakeTwilio() as fake:
        config = fake_gateways(workdir, monkeypatch, twilio=fake)
        fake.failures[stopped] = (400, 21610, "Attempt to send to unsubscribed recipient")
        first = plan_run(engine, config, make_campaign(workdir, "first", sms_gateway="tw"))
        # planned before the refusal was known: only the check at send time can keep it back
        second = plan_run(engine, config, make_campaign(workdir, "second", sms_gateway="tw"))
        summary = Dispatcher(engine, config, campaign="first").run_until_empty()

        assert summary.outcomes == Counter({"sent": 5, "suppressed": 1}) and summary.paused == {}
        rows = {r["phone"]: r for r in outbox(engine, first.run_id)}
        refused = rows.pop(stopped)
        assert (refused["state"], refused["reason"], refused["error_code"]) == ("suppressed", "opted_out:21610", "21610")
        assert refused["attempts"] == 1 and refused["provider_id"] is None
        assert {r["state"] for r in rows.values()} == {"sent"}
        with engine.connect() as conn:
            opted = conn.execute(select(db.subscribers.c.phone, db.subscribers.c.opted_out_at)
                                 .where(db.subscribers.c.opted_out_at.is_not(None))).all()
            listed = conn.execute(select(db.dnc.c.phone, db.dnc.c.source)).all()
        assert [p for p, _ in opted] == [stopped]
        assert listed == [(stopped, "gateway:tw:21610")]

        Dispatcher(engine, config).run_until_empty()
        later = {r["phone"]: r for r in outbox(engine, second.run_id)}
        assert (later[stopped]["state"], later[stopped]["reason"]) == ("suppressed", "opted_out")
        assert all(r["state"] == "sent" for p, r in later.items() if p != stopped)
        assert [r.form["To"] for r in fake.sends()].count(stopped) == 1      # Twilio was asked once
        assert len(fake.sends()) == 11

        third = plan_run(engine, config, make_campaign(workdir, "third", sms_gateway="tw"))
        assert {r["phone"]: r["state"] for r in outbox(engine, third.run_id)}[stopped] == "suppressed"


def test_unknown_twilio_sends_are_reconciled_from_twilios_list_of_messages_to_the_number(
        engine: Engine, workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Twilio finds messages by SID only, and a send cut short returned none: loa reads
    Twilio's list of messages to the number since the run began, less the SIDs it knows."""
    import_people(engine, tmp_path, n=4)
    with FakeTwilio() as fake:
        config = fake_gateways(workdir, monkeypatch, twilio=fake)
        fake.failures[phone(0)] = RESET          # the connection dropped: Twilio never took it
        plan = plan_run(engine, config, make_campaign(workdir, sms_gateway="tw"))
        Dispatcher(engine, config).run_until_empty()
        rows = {r["phone"]: r for r in outbox(engine, plan.run_id)}
        assert (rows[phone(0)]["state"], rows[phone(0)]["provider_id"]) == ("unknown", None)
        sid = {p: r["provider_id"] for p, r in rows.items()}
        # a crash during the call after Twilio took it: the row is unknown and its SID lost
        lost = [rows[phone(1)]["id"], rows[phone(3)]["id"]]
        with engine.begin() as conn:
            conn.execute(update(O).where(O.c.id.in_(lost)).values(state="unknown", provider_id=None,
                                                                 error_code="ambiguous"))
        # phone 3 also got a message of another system through the same account
        other = GatewayPool(config)
        other.get("tw").provider.send(OutgoingMessage(key="elsewhere", to=phone(3), channel="sms", text="Khác"))
        other.close()
        del fake.failures[phone(0)]
        done = Dispatcher(engine, config).reconcile_unknown(settle_after=0, give_up_after=0)
        assert done == Counter({("requeued", ""): 1, ("settled", "sent"): 1,
                                ("unknown", "gateway tw has no record of it"): 1}), done
        after = {r["phone"]: r for r in outbox(engine, plan.run_id)}
        assert (after[phone(0)]["state"], after[phone(0)]["error_code"]) == ("planned", "not_received")
        assert (after[phone(1)]["state"], after[phone(1)]["provider_id"]) == ("sent", sid[phone(1)])
        assert (after[phone(3)]["state"], after[phone(3)]["error_code"]) == ("unknown", "unreconciled")
        Dispatcher(engine, config).run_until_empty()
        final = {r["phone"]: r for r in outbox(engine, plan.run_id)}
        assert final[phone(0)]["state"] == "sent"
        created = Counter(m["to"] for m in fake.messages.values())
        assert created == Counter({phone(0): 1, phone(1): 1, phone(2): 1, phone(3): 2})   # nobody twice from loa


def test_a_zalo_daily_quota_holds_the_whole_queue_until_it_resets(
        engine: Engine, workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    n = 12
    import_people(engine, tmp_path, n=n)
    morning = datetime(2030, 3, 12, 9, 0, tzinfo=ICT)
    midnight = datetime(2030, 3, 13, 0, 0, tzinfo=ICT)
    with FakeZalo(daily_quota=0) as fake, time_machine.travel(morning, tick=True):
        # slow (2/s): the senders of the window's next messages wait for their slots meanwhile
        config = fake_gateways(workdir, monkeypatch, zalo=fake, zalo_rate=2)
        plan = plan_run(engine, config, make_campaign(workdir, "zns", channels=("zalo",), zalo_gateway="zl",
                                                      validity_hours=48))
        summary = Dispatcher(engine, config).run_until_empty()

        assert len(fake.template_requests) == 1        # the first -144; the rest of the queue waits
        assert summary.outcomes == Counter({"deferred": summary.attempted}) and summary.paused == {}
        rows = outbox(engine, plan.run_id)
        assert len(rows) == n and {r["state"] for r in rows} == {"deferred"}
        assert {r["attempts"] for r in rows} == {0}      # waiting for a quota spends no attempt
        assert {(r["reason"], r["error_code"]) for r in rows} == {("quota", "-144")}
        for r in rows:
            assert abs(r["due_at"] - midnight).total_seconds() < 5, r["due_at"].astimezone(ICT)

        # another worker, meanwhile, finds nothing due and asks Zalo nothing
        assert Dispatcher(engine, config).run_until_empty().attempted == 0
        assert len(fake.template_requests) == 1

    with FakeZalo() as fake, time_machine.travel(midnight + timedelta(seconds=30), tick=True):
        config = fake_gateways(workdir, monkeypatch, zalo=fake)
        # midnight: the quota is back, but ZNS keeps its night until 06:00
        Dispatcher(engine, config).run_until_empty()
        rows = outbox(engine, plan.run_id)
        assert fake.template_requests == []
        assert {r["due_at"].astimezone(ICT) for r in rows} == {midnight.replace(hour=6)}
        assert {r["attempts"] for r in rows} == {0}

    with FakeZalo() as fake, time_machine.travel(midnight.replace(hour=6, second=30), tick=True):
        config = fake_gateways(workdir, monkeypatch, zalo=fake)
        Dispatcher(engine, config).run_until_empty()
        rows = outbox(engine, plan.run_id)
        assert {r["state"] for r in rows} == {"sent"} and {r["attempts"] for r in rows} == {1}
        assert len(fake.template_requests) == n
