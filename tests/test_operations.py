"""Operating loa on the real database: persisted gateway pauses and
`loa gateways resume`, `loa status`, channel fallback on a missing receipt,
reconciliation of unknown sends, gateway deferrals, and the long-lived
`loa worker` in a subprocess stopped by SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import pytest
import time_machine
from click.testing import CliRunner, Result
from conftest import AREAS_CSV, write
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from loa import db, importer
from loa import gateways as gateway_state
from loa.campaign import Campaign, load_one
from loa.cli import main
from loa.config import Config, load
from loa.dispatch import MAX_ATTEMPTS, Dispatcher
from loa.gateways import Gateway, GatewayPool
from loa.plan import plan_run
from loa.ratelimit import MemoryGCRA
from loa.receipts import apply_receipts
from providers import registry
from providers.base import (
    AuthError,
    DeferredError,
    DeliveryReceipt,
    NotReceived,
    OutgoingMessage,
    Provider,
    RetryableError,
    SendResult,
)
from providers.simulator import SimulatedNetwork, SimulatorProvider

O = db.outbox
ICT = ZoneInfo("Asia/Ho_Chi_Minh")
DAYTIME = datetime(2030, 3, 12, 9, 0, tzinfo=ICT)
LOA = Path(sys.executable).parent / "loa"
OPEN = ("planned", "deferred", "claimed", "sending")


# -- scripted gateways -------------------------------------------------------------------

class _Scripted(Provider):
    channels: ClassVar[tuple[str, ...]] = ("sms", "zalo")
    rate: ClassVar[float] = 100_000.0
    calls: ClassVar[Counter[str]]

    def record(self, message: OutgoingMessage) -> None:
        type(self).calls[message.key] += 1


class FlakyAuth(_Scripted):
    """Refuses with an auth error until ``broken`` is cleared (the operator rotated the key)."""

    type = "test-ops-auth"
    calls: ClassVar[Counter[str]] = Counter()
    broken: ClassVar[bool] = True

    def send(self, message: OutgoingMessage) -> SendResult:
        self.record(message)
        if type(self).broken:
            raise self.error(AuthError, "token expired", code="401")
        return SendResult(provider_id=f"flaky-{message.key}", parts=message.parts)


class NightOwl(_Scripted):
    """Always defers by an hour, like Zalo's night rule or a daily quota."""

    type = "test-ops-deferred"
    calls: ClassVar[Counter[str]] = Counter()

    def send(self, message: OutgoingMessage) -> SendResult:
        self.record(message)
        raise self.error(DeferredError, "no ZNS 22:00-06:00", code="-133", retry_after=3600)


class SilentZalo(_Scripted):
    """Accepts Zalo messages and never sends a receipt of its own; defers those to ``later``."""

    type = "test-ops-silent-zalo"
    channels = ("zalo",)
    calls: ClassVar[Counter[str]] = Counter()
    later: ClassVar[set[str]] = set()

    def send(self, message: OutgoingMessage) -> SendResult:
        self.record(message)
        if message.to in type(self).later:
            raise self.error(DeferredError, "daily quota reached", code="-144", retry_after=7200)
        return SendResult(provider_id=f"zns-{message.key}")


class Recorder(_Scripted):
    """Every send times out after the request was written; ``lookup`` answers from ``records``."""

    type = "test-ops-lookup"
    lookup_by_key = True
    calls: ClassVar[Counter[str]] = Counter()
    lookups: ClassVar[Counter[str]] = Counter()
    records: ClassVar[dict[str, Any]] = {}

    def send(self, message: OutgoingMessage) -> SendResult:
        self.record(message)
        raise self.error(RetryableError, "read timeout", code="TIMEOUT", ambiguous=True)

    def lookup(self, message_key: str, provider_id: str | None) -> DeliveryReceipt | SendResult | None:
        type(self).lookups[message_key] += 1
        found = type(self).records.get(message_key)
        if isinstance(found, Exception):
            raise found
        return found


class ByIdOnly(Recorder):
    """Looks messages up by the gateway's own id only (Twilio's SID, eSMS's SMSID, Zalo's msg_id)."""

    type = "test-ops-byid"
    lookup_by_key = False
    calls: ClassVar[Counter[str]] = Counter()


class AmbiguousNoLookup(_Scripted):
    """Times out ambiguously and offers no lookup (like SMPP or Twilio without a SID)."""

    type = "test-ops-nolookup"
    calls: ClassVar[Counter[str]] = Counter()

    def send(self, message: OutgoingMessage) -> SendResult:
        self.record(message)
        raise self.error(RetryableError, "read timeout", code="TIMEOUT", ambiguous=True)


SCRIPTED = (FlakyAuth, NightOwl, SilentZalo, Recorder, ByIdOnly, AmbiguousNoLookup)

EXTRA = """
[gateways.flaky]
type = "test-ops-auth"
[gateways.owl]
type = "test-ops-deferred"
[gateways.zsilent]
type = "test-ops-silent-zalo"
[gateways.recon]
type = "test-ops-lookup"
[gateways.nolookup]
type = "test-ops-nolookup"
[gateways.byid]
type = "test-ops-byid"
"""


@pytest.fixture(autouse=True)
def scripted_gateways(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(registry, "_registered", dict(registry._registered))
    for cls in SCRIPTED:
        registry.register(cls)
        cls.calls = Counter()
    monkeypatch.setattr(FlakyAuth, "broken", True)
    monkeypatch.setattr(Recorder, "lookups", Counter())
    monkeypatch.setattr(Recorder, "records", {})
    monkeypatch.setattr(SilentZalo, "later", set())
    yield


# -- helpers -------------------------------------------------------------------------------

def make_config(workdir: Path, extra: str = EXTRA) -> Config:
    path = workdir / "config.toml"
    with path.open("a", encoding="utf-8") as f:
        f.write(extra)
    return load(path)


def phone(i: int) -> str:
    return f"+84912{i:06d}"


def import_people(engine: Engine, folder: Path, n: int) -> None:
    areas = write(folder / "areas.csv", AREAS_CSV)
    assert importer.run_import(engine, importer.AreasHandler(engine, areas), areas).imported == 4
    lines = ["phone,name,area"] + [f"0912{i:06d},Người {i},{'116' if i % 2 else '125'}" for i in range(n)]
    subs = folder / "subscribers.csv"
    subs.write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = importer.run_import(engine, importer.SubscribersHandler(engine, subs), subs)
    assert (summary.imported, summary.rejected) == (n, 0)


def make_campaign(workdir: Path, name: str, *, channels: tuple[str, ...] = ("sms",),
                  sms: dict[str, Any] | None = None, zalo: dict[str, Any] | None = None,
                  window: tuple[str, str] | None = None, validity_hours: int = 24) -> Campaign:
    write(workdir / "templates" / "sms" / f"{name}.j2", "Xin chào {{ subscriber.name }}\n")
    write(workdir / "templates" / "zalo" / f"{name}.toml", """
        template_id = "9001"
        [data]
        customer_name = "{{ subscriber.name }}"
    """)
    lines = [f'name = "{name}"', f"channels = {json.dumps(list(channels))}", f"validity_hours = {validity_hours}"]
    if window:
        lines += ["[window]", f'start = "{window[0]}"', f'end = "{window[1]}"']
    for channel, extra in (("sms", sms), ("zalo", zalo)):
        if channel in channels:
            lines += [f"[{channel}]", f'template = "{channel}/{name}.{"j2" if channel == "sms" else "toml"}"']
            lines += [f"{k} = {json.dumps(v)}" for k, v in (extra or {}).items()]
    (workdir / "campaigns" / f"{name}.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_one(workdir / "campaigns", name)


def sim_pool(config: Config, net: SimulatedNetwork, name: str = "sim") -> GatewayPool:
    pool = GatewayPool(config)
    pool._built[name] = Gateway(name, SimulatorProvider(name, {"network": net}), MemoryGCRA(100_000, 100),
                                100_000.0)
    return pool


def rows(engine: Engine, run_id: int | None = None) -> list[dict[str, Any]]:
    stmt = select(O, db.subscribers.c.phone).join(db.subscribers, db.subscribers.c.id == O.c.subscriber_id)
    if run_id is not None:
        stmt = stmt.where(O.c.run_id == run_id)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(stmt.order_by(O.c.id)).mappings()]


def key(row: dict[str, Any]) -> str:
    return db.message_key(row["run_id"], row["subscriber_id"])


def index(row: dict[str, Any]) -> int:
    return int(row["phone"][-6:])


def invoke(workdir: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(workdir / "config.toml"), *args], catch_exceptions=True)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def one_line_error(result: Result, *fragments: str) -> str:
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# -- a paused gateway ----------------------------------------------------------------------

def test_an_auth_error_pauses_the_gateway_for_every_worker_until_resumed(engine: Engine, workdir: Path,
                                                                         tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=6)
    config = make_config(workdir)
    net = SimulatedNetwork(seed=7, delivery_rate=1.0)
    with time_machine.travel(DAYTIME, tick=True):
        bad = plan_run(engine, config, make_campaign(workdir, "bad", sms={"gateway": "flaky"}))
        first = Dispatcher(engine, config, pool=sim_pool(config, net)).run_until_empty()
    assert list(first.paused) == ["flaky"]
    calls = sum(FlakyAuth.calls.values())
    assert calls >= 1
    paused = gateway_state.paused(engine)
    assert list(paused) == ["flaky"]
    assert "auth error" in paused["flaky"]["reason"] and "token expired" in paused["flaky"]["reason"]
    assert paused["flaky"]["since"] is not None
    assert {(r["state"], r["attempts"], r["worker"]) for r in rows(engine, bad.run_id)} == {("planned", 0, None)}

    # a new process knows nothing of the first one's summary: the database stops it
    with time_machine.travel(DAYTIME + timedelta(minutes=5), tick=True):
        good = plan_run(engine, config, make_campaign(workdir, "good"))
        second = Dispatcher(engine, config, pool=sim_pool(config, net))
        assert second.summary.paused == {}
        claimed = second.claim()
        assert {i.gateway for i in claimed} == {"sim"} and len(claimed) == 6
        second._release(claimed)
        summary = second.run_until_empty()
    assert summary.outcomes == Counter({"sent": 6})
    assert sum(FlakyAuth.calls.values()) == calls                 # never asked again
    assert {r["state"] for r in rows(engine, bad.run_id)} == {"planned"}
    assert {r["state"] for r in rows(engine, good.run_id)} == {"delivered"}
    listed = ok(invoke(workdir, "gateways", "list")).stdout
    assert "paused: auth error" in listed

    FlakyAuth.broken = False                                      # the key was rotated
    result = ok(invoke(workdir, "gateways", "resume", "flaky"))
    assert "gateway flaky resumed" in result.stdout and "token expired" in result.stdout
    assert gateway_state.paused(engine) == {}

    with time_machine.travel(DAYTIME + timedelta(minutes=10), tick=True):
        third = Dispatcher(engine, config, pool=sim_pool(config, net)).run_until_empty()
    assert third.outcomes == Counter({"sent": 6}) and third.paused == {}
    final = rows(engine, bad.run_id)
    assert {(r["state"], r["attempts"]) for r in final} == {("sent", 1)}
    assert {r["provider_id"] for r in final} == {f"flaky-{key(r)}" for r in final}
    assert sum(FlakyAuth.calls.values()) == calls + 6

    one_line_error(invoke(workdir, "gateways", "resume", "flaky"), "flaky", "not paused")
    one_line_error(invoke(workdir, "gateways", "resume", "nosuch"), "unknown gateway 'nosuch'")


def test_pause_is_idempotent_and_keeps_the_first_reason(engine: Engine) -> None:
    assert gateway_state.pause(engine, "g", "auth error: first") is True
    assert gateway_state.pause(engine, "g", "money error: second") is False
    assert gateway_state.paused(engine)["g"]["reason"] == "auth error: first"
    assert gateway_state.resume(engine, "g") == "auth error: first"
    assert gateway_state.paused(engine) == {}
    assert gateway_state.pause(engine, "g", "x" * 5000) is True
    assert len(gateway_state.paused(engine)["g"]["reason"]) == 1000


# -- loa status ---------------------------------------------------------------------------

def test_status_shows_runs_by_state_gateways_due_and_pauses(engine: Engine, workdir: Path, tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=5)
    config = make_config(workdir)
    net = SimulatedNetwork(seed=7, delivery_rate=1.0)
    with time_machine.travel(DAYTIME, tick=True):
        bad = plan_run(engine, config, make_campaign(workdir, "bad", sms={"gateway": "flaky"}))
        good = plan_run(engine, config, make_campaign(workdir, "good"))
        owl = plan_run(engine, config, make_campaign(workdir, "owl", sms={"gateway": "owl"}))
        Dispatcher(engine, config, pool=sim_pool(config, net)).run_until_empty()
        data = json.loads(ok(invoke(workdir, "status", "--format", "json")).stdout)
        table = ok(invoke(workdir, "status")).stdout

    runs = {r["run"]: r for r in data["runs"]}
    assert [r["run"] for r in data["runs"]] == [owl.run_id, good.run_id, bad.run_id]     # newest first
    assert runs[bad.run_id]["states"] == {"planned": 5}
    assert runs[good.run_id]["states"] == {"delivered": 5}
    assert runs[owl.run_id]["states"] == {"deferred": 5}
    assert (runs[good.run_id]["status"], runs[bad.run_id]["status"]) == ("done", "planned")
    assert runs[bad.run_id]["campaign"] == "bad"
    gws = {g["name"]: g for g in data["gateways"]}
    assert set(gws) == {"flaky", "owl", "sim"}
    assert (gws["flaky"]["due"], gws["owl"]["due"], gws["sim"]["due"]) == (5, 0, 0)
    # deferred for an hour: waiting, not due, and no part of any ETA
    assert (gws["owl"]["waiting"], gws["owl"]["eta_seconds"]) == (5, 0.0)
    next_at = datetime.fromisoformat(gws["owl"]["next_at"])
    assert DAYTIME + timedelta(minutes=59) <= next_at <= DAYTIME + timedelta(minutes=62)
    assert (runs[owl.run_id]["due"], runs[owl.run_id]["waiting"]) == (0, 5)
    assert (runs[bad.run_id]["due"], runs[bad.run_id]["blocked"], runs[bad.run_id]["eta_seconds"]) == (5, 5, None)
    assert runs[good.run_id]["sent_last_minute"] == 5 and runs[good.run_id]["rate"] > 0
    assert "auth error" in gws["flaky"]["paused"]
    since = datetime.fromisoformat(gws["flaky"]["paused_since"])
    assert "T" in gws["flaky"]["paused_since"] and DAYTIME <= since <= DAYTIME + timedelta(minutes=1)
    assert gws["flaky"]["eta_seconds"] is None
    assert gws["owl"]["paused"] is None and gws["sim"]["paused"] is None
    assert gws["sim"]["sent_last_minute"] == 5

    lines = table.splitlines()
    flaky = next(line for line in lines if " flaky " in line)
    assert "paused: auth error" in flaky and " 5 " in flaky
    assert "blocked" in next(line for line in lines if " bad " in line)
    owl_gw = [line for line in lines if " owl " in line]
    assert any("active" in line and " 5 " in line for line in owl_gw)
    bad_run = next(line for line in lines if " bad " in line)
    assert f" {bad.run_id} " in bad_run and "planned" in bad_run and " 5 " in bad_run
    good_run = next(line for line in lines if " good " in line)
    assert "done" in good_run and " 5 " in good_run


def test_status_of_an_empty_database(engine: Engine, workdir: Path) -> None:
    data = json.loads(ok(invoke(workdir, "status", "--format", "json")).stdout)
    assert data["runs"] == [] and data["gateways"] == []


def test_status_measures_the_rate_and_eta_of_a_run_half_sent(engine: Engine, workdir: Path, tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=60)
    config = make_config(workdir)
    plan = plan_run(engine, config, make_campaign(workdir, "half", window=("00:00", "24:00")))
    pool = sim_pool(config, SimulatedNetwork(seed=7, delivery_rate=1.0))
    sim = pool._built["sim"]
    pool._built["sim"] = Gateway("sim", sim.provider, MemoryGCRA(20, 1), 20.0)     # 20 messages a second
    dispatcher = Dispatcher(engine, config, pool=pool, batch_size=30, threads=4)
    send = sim.provider.send

    def stop_after_this_batch(message: OutgoingMessage) -> SendResult:
        dispatcher.stop.set()      # like SIGTERM: the batch in hand goes out, the rest stays planned
        return send(message)

    sim.provider.send = stop_after_this_batch  # type: ignore[method-assign]
    dispatcher.run_until_empty()
    data = json.loads(ok(invoke(workdir, "status", "--format", "json")).stdout)
    table = ok(invoke(workdir, "status")).stdout

    run = next(r for r in data["runs"] if r["run"] == plan.run_id)
    with engine.connect() as conn:
        first = conn.scalar(select(func.min(O.c.sent_at)).where(O.c.run_id == plan.run_id))
    sent = sum(n for state, n in run["states"].items() if state in ("sent", "delivered"))
    assert sent == run["sent_last_minute"] == 30 and run["due"] == 30 and run["waiting"] == 0
    elapsed = (datetime.fromisoformat(data["at"]) - first).total_seconds()
    assert elapsed >= 1.4                               # 30 messages at 20/s take at least 1.45 s
    assert run["rate"] == pytest.approx(30 / elapsed, rel=1e-3)
    assert 0 < run["rate"] <= 21
    assert run["eta_seconds"] == pytest.approx(30 / run["rate"], rel=1e-3)
    gateway = next(g for g in data["gateways"] if g["name"] == "sim")
    assert (gateway["due"], gateway["rate"], gateway["eta_seconds"]) == (30, run["rate"], run["eta_seconds"])
    line = next(line for line in table.splitlines() if " half " in line)
    assert "—" not in line and " s " in line


# -- fallback to the next channel without a receipt -----------------------------------------

def test_no_zalo_receipt_within_fallback_after_moves_the_message_to_sms(engine: Engine, workdir: Path,
                                                                        tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=6)
    config = make_config(workdir)
    SilentZalo.later = {phone(5)}         # still waiting at the gateway: the run is not over
    sms_net = SimulatedNetwork(seed=7, delivery_rate=1.0)
    campaign = make_campaign(workdir, "both", channels=("zalo", "sms"),
                             zalo={"gateway": "zsilent", "fallback_after": "30m"})
    with time_machine.travel(DAYTIME, tick=True):
        plan = plan_run(engine, config, campaign)
        Dispatcher(engine, config, pool=sim_pool(config, sms_net)).run_until_empty()
    first = {index(r): r for r in rows(engine, plan.run_id)}
    assert {(r["channel"], r["state"]) for i, r in first.items() if i != 5} == {("zalo", "sent")}
    assert (first[5]["channel"], first[5]["state"]) == ("zalo", "deferred")
    assert SilentZalo.calls == Counter({key(r): 1 for r in first.values()})
    # a receipt arrives (by webhook) for two of them: those stay on Zalo
    with engine.begin() as conn:
        assert apply_receipts(conn, "zsilent", [
            DeliveryReceipt("delivered", provider_id=f"zns-{key(first[0])}", at=db.utcnow()),
            DeliveryReceipt("delivered", key=key(first[1]), at=db.utcnow())]) == 2

    with time_machine.travel(DAYTIME + timedelta(minutes=29), tick=True):
        assert Dispatcher(engine, config, pool=sim_pool(config, sms_net)).fallback_timeouts() == 0
    with time_machine.travel(DAYTIME + timedelta(minutes=31), tick=True):
        dispatcher = Dispatcher(engine, config, pool=sim_pool(config, sms_net))
        assert dispatcher.fallback_timeouts() == 3
        moved = {index(r): r for r in rows(engine, plan.run_id)}
        for i in (2, 3, 4):
            r = moved[i]
            assert (r["channel"], r["gateway"], r["state"], r["attempts"]) == ("sms", "sim", "planned", 0)
            assert r["provider_id"] is None and r["sent_at"] is None
            assert "no zalo receipt within 30m" in r["reason"] and "sms" in r["reason"]
        summary = dispatcher.run_until_empty()
    assert summary.outcomes == Counter({"sent": 3})
    final = {index(r): r for r in rows(engine, plan.run_id)}
    for i in (0, 1):
        assert (final[i]["channel"], final[i]["state"], final[i]["provider_id"]) == (
            "zalo", "delivered", f"zns-{key(final[i])}")
        assert key(final[i]) not in sms_net.received
    for i in (2, 3, 4):
        assert (final[i]["channel"], final[i]["state"], final[i]["attempts"]) == ("sms", "delivered", 1)
        assert final[i]["sent_at"] >= DAYTIME + timedelta(minutes=31)
    assert (final[5]["channel"], final[5]["state"]) == ("zalo", "deferred")
    assert sms_net.received == Counter({f"{key(final[i])}-sms": 1 for i in (2, 3, 4)})   # the SMS's own key
    assert {m.channel for m in sms_net.messages} == {"sms"}
    assert {m.text for m in sms_net.messages} == {f"Xin chào Người {i}" for i in (2, 3, 4)}
    assert SilentZalo.calls == Counter({key(r): 1 for r in final.values()})     # Zalo was not asked again

    # nothing moves twice: an SMS without a receipt has no further channel
    with time_machine.travel(DAYTIME + timedelta(minutes=100), tick=True):
        assert Dispatcher(engine, config, pool=sim_pool(config, sms_net)).fallback_timeouts() == 0


def test_fallback_happens_when_every_zalo_message_was_accepted(engine: Engine, workdir: Path,
                                                               tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=3)
    config = make_config(workdir)
    sms_net = SimulatedNetwork(seed=7, delivery_rate=1.0)
    with time_machine.travel(DAYTIME, tick=True):
        plan = plan_run(engine, config, make_campaign(workdir, "both", channels=("zalo", "sms"),
                                                      zalo={"gateway": "zsilent", "fallback_after": "30m"}))
        Dispatcher(engine, config, pool=sim_pool(config, sms_net)).run_until_empty()
    assert {(r["channel"], r["state"]) for r in rows(engine, plan.run_id)} == {("zalo", "sent")}
    with time_machine.travel(DAYTIME + timedelta(minutes=31), tick=True):
        Dispatcher(engine, config, pool=sim_pool(config, sms_net)).run_until_empty()
    assert {(r["channel"], r["state"]) for r in rows(engine, plan.run_id)} == {("sms", "delivered")}
    assert sms_net.total_accepted == 3


class ForgetfulSim(Provider):
    """The simulator's network (which dedupes by key) behind a gateway whose receipts are lost."""

    channels = ("sms", "zalo")
    dedupes_by_key = True

    def __init__(self, name: str, net: SimulatedNetwork) -> None:
        super().__init__(name, {})
        self.net = net

    def send(self, message: OutgoingMessage) -> SendResult:
        if message.to == phone(1):
            raise self.error(DeferredError, "daily quota reached", retry_after=7200)
        return self.net.submit(message)


def test_fallback_through_one_deduplicating_gateway_still_sends_the_sms(engine: Engine, workdir: Path,
                                                                        tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=3)
    config = make_config(workdir)
    net = SimulatedNetwork(seed=7, delivery_rate=1.0)

    def pool() -> GatewayPool:
        p = GatewayPool(config)
        p._built["sim"] = Gateway("sim", ForgetfulSim("sim", net), MemoryGCRA(100_000, 100), 100_000.0)
        return p

    with time_machine.travel(DAYTIME, tick=True):
        plan = plan_run(engine, config, make_campaign(workdir, "one", channels=("zalo", "sms"),
                                                      zalo={"fallback_after": "30m"}))
        Dispatcher(engine, config, pool=pool()).run_until_empty()
    with time_machine.travel(DAYTIME + timedelta(minutes=31), tick=True):
        Dispatcher(engine, config, pool=pool()).run_until_empty()
    moved = [r for r in rows(engine, plan.run_id) if index(r) != 1]
    assert {(r["channel"], r["state"]) for r in moved} == {("sms", "sent")}      # the ledger says so...
    assert Counter(m.channel for m in net.messages) == Counter({"zalo": 2, "sms": 2})   # ...the network does not


# -- reconciling unknown outcomes ----------------------------------------------------------

def make_unknown(engine: Engine, run_id: int) -> None:
    """What a send that timed out after the request was written leaves behind."""
    with engine.begin() as conn:
        conn.execute(O.update().where(O.c.run_id == run_id).values(
            state="unknown", attempts=1, error_code="TIMEOUT", error_text="outcome unknown: read timeout"))


@pytest.fixture
def prompt_reconcile(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ask gateways at once and settle for "no record" at once (the defaults wait 1 min and 1 h)."""
    monkeypatch.setattr(Dispatcher, "RECONCILE_AFTER", 0.0)
    monkeypatch.setattr(Dispatcher, "RECONCILE_GIVE_UP", 0.0)


def test_reconcile_waits_for_the_gateway_to_settle_and_gives_up_after_an_hour(
        engine: Engine, workdir: Path, tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=1)
    config = make_config(workdir)
    with time_machine.travel(DAYTIME, tick=False):
        plan = plan_run(engine, config, make_campaign(workdir, "w", sms={"gateway": "recon"}, window=ALL_DAY))
        make_unknown(engine, plan.run_id)
        [row] = rows(engine, plan.run_id)
        Recorder.records[key(row)] = None
        assert Dispatcher(engine, config).reconcile() == 0 and Recorder.lookups[key(row)] == 0   # too soon
    with time_machine.travel(DAYTIME + timedelta(minutes=2), tick=False):
        Dispatcher(engine, config).reconcile()
        assert Recorder.lookups[key(row)] == 1
        assert rows(engine, plan.run_id)[0]["error_code"] == "TIMEOUT"            # no record yet: ask again
    with time_machine.travel(DAYTIME + timedelta(hours=2), tick=False):
        Dispatcher(engine, config).reconcile()
        assert rows(engine, plan.run_id)[0]["error_code"] == "unreconciled"


@pytest.mark.usefixtures("prompt_reconcile")
def test_reconcile_settles_unknown_sends_from_the_gateways_records(engine: Engine, workdir: Path,
                                                                  tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=5)
    config = make_config(workdir)
    at = DAYTIME + timedelta(seconds=3)
    with time_machine.travel(DAYTIME, tick=True):
        plan = plan_run(engine, config, make_campaign(workdir, "r", sms={"gateway": "recon"}, window=ALL_DAY))
        k = {index(r): key(r) for r in rows(engine, plan.run_id)}
        Recorder.records.update({
            k[0]: SendResult(provider_id="gw-0"),
            k[1]: SendResult(provider_id="gw-1", status="delivered"),
            k[2]: DeliveryReceipt("undelivered", provider_id="gw-2", at=at, error_code="E-ABSENT"),
            k[3]: None,
            k[4]: RetryableError("lookup API down", gateway="recon"),
        })
        # every send times out; housekeeping then asks the gateway what became of each
        summary = Dispatcher(engine, config).run_until_empty()
    assert summary.outcomes == Counter({"unknown": 5})
    assert Recorder.calls == Counter(k.values())
    assert Recorder.lookups == Counter(k.values())
    after = {index(r): r for r in rows(engine, plan.run_id)}
    assert (after[0]["state"], after[0]["provider_id"]) == ("sent", "gw-0")
    assert (after[1]["state"], after[1]["provider_id"]) == ("delivered", "gw-1")
    assert (after[2]["state"], after[2]["provider_id"], after[2]["error_code"], after[2]["delivered_at"]) == (
        "undelivered", "gw-2", "E-ABSENT", at)
    assert (after[3]["state"], after[3]["error_code"]) == ("unknown", "unreconciled")
    assert "no record" in after[3]["error_text"]
    assert (after[4]["state"], after[4]["error_code"]) == ("unknown", "TIMEOUT")     # to be asked again

    # a receipt for a reconciled message applies by its provider id
    with engine.begin() as conn:
        assert apply_receipts(conn, "recon", [DeliveryReceipt("delivered", provider_id="gw-0", at=at)]) == 1

    Recorder.records[k[4]] = SendResult(provider_id="gw-4")
    Recorder.records[k[3]] = SendResult(provider_id="too-late")    # would settle it, but is not asked
    dispatcher = Dispatcher(engine, config)
    with time_machine.travel(DAYTIME + timedelta(minutes=5), tick=True):
        assert dispatcher.reconcile() == 1
    again = {index(r): r for r in rows(engine, plan.run_id)}
    assert Recorder.lookups == Counter(k.values()) + Counter([k[4]])
    assert (again[4]["state"], again[4]["provider_id"]) == ("sent", "gw-4")
    assert (again[3]["state"], again[3]["error_code"]) == ("unknown", "unreconciled")
    assert again[0]["state"] == "delivered"
    assert Recorder.calls == Counter(k.values())                                       # never re-sent
    with time_machine.travel(DAYTIME + timedelta(minutes=6), tick=True):
        assert dispatcher.reconcile() == 0
    assert Recorder.lookups == Counter(k.values()) + Counter([k[4]])                    # nothing left to ask


@pytest.mark.usefixtures("prompt_reconcile")
def test_reconcile_skips_gateways_without_lookup(engine: Engine, workdir: Path, tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=2)
    config = make_config(workdir)
    plan = plan_run(engine, config, make_campaign(workdir, "n", sms={"gateway": "nolookup"}, window=ALL_DAY))
    make_unknown(engine, plan.run_id)
    assert Dispatcher(engine, config).reconcile() == 0
    assert {(r["state"], r["error_code"]) for r in rows(engine, plan.run_id)} == {("unknown", "TIMEOUT")}


@pytest.mark.usefixtures("prompt_reconcile")
def test_reconcile_is_not_starved_by_gateways_without_lookup(engine: Engine, workdir: Path, tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=3)
    config = make_config(workdir)
    first = plan_run(engine, config, make_campaign(workdir, "first", sms={"gateway": "nolookup"}, window=ALL_DAY))
    later = plan_run(engine, config, make_campaign(workdir, "later", sms={"gateway": "recon"}, window=ALL_DAY))
    make_unknown(engine, first.run_id)
    make_unknown(engine, later.run_id)
    Recorder.records.update({key(r): SendResult(provider_id="x") for r in rows(engine, later.run_id)})
    Dispatcher(engine, config).reconcile(limit=3)
    assert {r["state"] for r in rows(engine, later.run_id)} == {"sent"}


@pytest.mark.usefixtures("prompt_reconcile")
def test_a_reconciled_send_is_recorded_like_a_send(engine: Engine, workdir: Path, tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=1)
    config = make_config(workdir)
    plan = plan_run(engine, config, make_campaign(workdir, "r", sms={"gateway": "recon"}, window=ALL_DAY))
    make_unknown(engine, plan.run_id)
    Recorder.records.update({key(r): SendResult(provider_id="gw") for r in rows(engine)})
    assert Dispatcher(engine, config).reconcile() == 1
    [row] = rows(engine, plan.run_id)
    assert row["state"] == "sent"
    assert row["sent_at"] is not None
    assert row["error_code"] is None


def test_a_send_the_gateway_never_got_is_queued_again_and_sent_once_more(engine: Engine, workdir: Path,
                                                                        tmp_path: Path) -> None:
    """A gateway asked by our key that has no such message (NotReceived) never got it: the
    row goes back to the queue, and its run, already done, is open again."""
    import_people(engine, tmp_path, n=3)
    config = make_config(workdir)
    plan = plan_run(engine, config, make_campaign(workdir, "q", sms={"gateway": "recon"}, window=ALL_DAY))
    Dispatcher(engine, config).run_until_empty()       # every send times out: unknown, the run done
    with engine.connect() as conn:
        assert conn.scalar(select(db.runs.c.status).where(db.runs.c.id == plan.run_id)) == "done"
    k = {index(r): key(r) for r in rows(engine, plan.run_id)}
    Recorder.records.update({k[0]: NotReceived(k[0]), k[1]: SendResult(provider_id="gw-1"), k[2]: None})
    done = Dispatcher(engine, config).reconcile_unknown(settle_after=0, give_up_after=0)
    assert done == Counter({("requeued", ""): 1, ("settled", "sent"): 1,
                           ("unknown", "gateway recon has no record of it"): 1})
    after = {index(r): r for r in rows(engine, plan.run_id)}
    assert (after[0]["state"], after[0]["error_code"], after[0]["worker"]) == ("planned", "not_received", None)
    assert after[0]["due_at"] <= db.utcnow()
    assert (after[1]["state"], after[1]["provider_id"]) == ("sent", "gw-1")
    assert (after[2]["state"], after[2]["error_code"]) == ("unknown", "unreconciled")
    with engine.connect() as conn:
        assert conn.scalar(select(db.runs.c.status).where(db.runs.c.id == plan.run_id)) == "planned"
    Dispatcher(engine, config).run_until_empty()
    assert Recorder.calls == Counter({k[0]: 2, k[1]: 1, k[2]: 1})    # only the one never received again
    first = {index(r): r for r in rows(engine, plan.run_id)}[0]
    assert first["attempts"] == 2

    # a gateway that never gets it, however often: given up after the attempts, not sent forever
    for attempt in range(3, MAX_ATTEMPTS + 2):
        Dispatcher(engine, config).reconcile_unknown(settle_after=0, give_up_after=0)
        Dispatcher(engine, config).run_until_empty()
    first = {index(r): r for r in rows(engine, plan.run_id)}[0]
    assert (first["state"], first["error_code"], first["attempts"]) == ("failed", "not_received", MAX_ATTEMPTS)
    assert Recorder.calls[k[0]] == MAX_ATTEMPTS


def test_a_gateway_that_looks_up_only_by_its_own_id_is_not_asked_without_one(engine: Engine, workdir: Path,
                                                                            tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=2)
    config = make_config(workdir)
    plan = plan_run(engine, config, make_campaign(workdir, "i", sms={"gateway": "byid"}, window=ALL_DAY))
    make_unknown(engine, plan.run_id)
    k = {index(r): key(r) for r in rows(engine, plan.run_id)}
    Recorder.records.update({k[0]: SendResult(provider_id="sid-0"), k[1]: SendResult(provider_id="sid-1")})
    done = Dispatcher(engine, config).reconcile_unknown(settle_after=0, give_up_after=0)
    why = "gateway byid looks messages up only by its own id, and this send returned none"
    assert done == Counter({("unknown", why): 2})
    assert not Recorder.lookups
    assert {(r["state"], r["error_code"]) for r in rows(engine, plan.run_id)} == {("unknown", "TIMEOUT")}
    with engine.begin() as conn:     # a timeout after the gateway's answer began: its id is known
        conn.execute(O.update().where(O.c.run_id == plan.run_id, O.c.subscriber_id == int(k[0].split("-")[2]))
                     .values(provider_id="sid-0"))
    assert Dispatcher(engine, config).reconcile_unknown(settle_after=0, give_up_after=0)[("settled", "sent")] == 1
    assert Recorder.lookups == Counter([k[0]])


def test_status_counts_unknown_sends_and_reconcile_says_what_it_did(engine: Engine, workdir: Path,
                                                                     tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=5)
    config = make_config(workdir)
    recon = plan_run(engine, config, make_campaign(workdir, "r", sms={"gateway": "recon"}, window=ALL_DAY))
    blind = plan_run(engine, config, make_campaign(workdir, "b", sms={"gateway": "nolookup"}, window=ALL_DAY))
    make_unknown(engine, recon.run_id)
    make_unknown(engine, blind.run_id)

    status = json.loads(ok(invoke(workdir, "status", "--format", "json")).output)
    assert status["unknown"] == 10
    assert {g["name"]: g["unknown"] for g in status["gateways"]} == {"recon": 5, "nolookup": 5}
    assert {r["run"]: r["states"] for r in status["runs"]} == {recon.run_id: {"unknown": 5},
                                                              blind.run_id: {"unknown": 5}}
    table = ok(invoke(workdir, "status")).output
    assert "10 message(s) with an unknown outcome: loa messages reconcile" in table

    k = {index(r): key(r) for r in rows(engine, recon.run_id)}
    Recorder.records.update({k[0]: SendResult(provider_id="gw-0"), k[1]: SendResult(provider_id="gw-1"),
                             k[2]: NotReceived(k[2]), k[3]: RetryableError("lookup API down", gateway="recon")})
    # too recent: a gateway may record a message a moment after answering
    assert "5 left unknown: too recent to ask" in ok(invoke(workdir, "messages", "reconcile", "--campaign", "r")).output
    assert not Recorder.lookups
    output = ok(invoke(workdir, "messages", "reconcile", "--campaign", "r", "--settle", "0")).output
    assert output.splitlines() == [
        "1 queued again: the gateway never got them (loa send sends them)",
        "2 sent: the gateway has them",
        "1 left unknown: gateway recon has no record of it yet; asked again later",
        "1 left unknown: gateway recon: lookup failed: recon: lookup API down",
    ], output
    output = ok(invoke(workdir, "messages", "reconcile", "--settle", "0")).output
    assert "5 left unknown: gateway nolookup cannot be asked what it received" in output, output
    # left: the 5 of the gateway that cannot be asked, and the 2 the other could not answer for
    assert json.loads(ok(invoke(workdir, "status", "--format", "json")).output)["unknown"] == 7
    one_line_error(invoke(workdir, "messages", "reconcile", "--campaign", "nope"), "no campaign named 'nope'")


# -- deferrals -------------------------------------------------------------------------------

def test_deferrals_spend_no_attempts_and_never_fail_until_the_validity_ends(engine: Engine, workdir: Path,
                                                                           tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=3)
    config = make_config(workdir)
    with time_machine.travel(DAYTIME, tick=True):
        plan = plan_run(engine, config, make_campaign(workdir, "owl", sms={"gateway": "owl"}, validity_hours=12))
        start = db.utcnow()
        summary = Dispatcher(engine, config).run_until_empty()
        end = db.utcnow()
    assert summary.outcomes == Counter({"deferred": 3})
    for r in rows(engine, plan.run_id):
        assert (r["state"], r["reason"], r["error_code"], r["attempts"]) == ("deferred", "deferred", "-133", 0)
        # an hour after the gateway's answer, however long the dispatch took on a busy machine
        assert start + timedelta(seconds=3600) <= r["due_at"] <= end + timedelta(seconds=3600)
        assert (r["worker"], r["lease_until"], r["sent_at"]) == (None, None, None)
        assert "22:00-06:00" in r["error_text"]

    hops = MAX_ATTEMPTS + 3
    for _ in range(hops):
        # to the moment the last deferral falls due, however long the previous hop took
        due = max(r["due_at"] for r in rows(engine, plan.run_id))
        with time_machine.travel(due + timedelta(seconds=1), tick=True):
            assert Dispatcher(engine, config).run_until_empty().outcomes == Counter({"deferred": 3})
        assert {(r["state"], r["attempts"]) for r in rows(engine, plan.run_id)} == {("deferred", 0)}
    assert NightOwl.calls == Counter({key(r): hops + 1 for r in rows(engine, plan.run_id)})

    with time_machine.travel(DAYTIME + timedelta(hours=12, minutes=5), tick=True):
        summary = Dispatcher(engine, config).run_until_empty()
    assert summary.expired == 3 and summary.attempted == 0
    final = rows(engine, plan.run_id)
    assert {r["state"] for r in final} == {"expired"}
    assert all("12 h" in r["error_text"] for r in final)
    assert sum(NightOwl.calls.values()) == 3 * (hops + 1)


# -- the worker --------------------------------------------------------------------------------

ALL_DAY = ("00:00", "23:59:59.999999")


def start_worker(workdir: Path, database_url: str, log: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("LOA_CONFIG", "LOA_DATABASE_URL")}
    env |= {"LOA_CONFIG": str(workdir / "config.toml"), "LOA_DATABASE_URL": database_url}
    with log.open("wb") as fh:
        return subprocess.Popen([str(LOA), "worker", "--idle", "0.2", *args], cwd=workdir, env=env,
                                stdout=fh, stderr=subprocess.STDOUT)


def open_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(O).where(O.c.state.in_(OPEN))) or 0


def stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the worker did not stop within 10 s of SIGTERM:\n{log.read_text(errors='replace')}")
    assert code == 0, log.read_text(errors="replace")


def sent_lines(path: Path) -> Counter[str]:
    if not path.exists():
        return Counter()
    return Counter(json.loads(line)["key"] for line in path.read_text(encoding="utf-8").splitlines())


def test_the_worker_drains_the_outbox_and_stops_cleanly_on_sigterm(engine: Engine, workdir: Path, tmp_path: Path,
                                                                  database_url: str) -> None:
    import_people(engine, tmp_path, n=200)
    config = load(workdir / "config.toml")
    plan = plan_run(engine, config, make_campaign(workdir, "w", sms={"gateway": "jsonl"}, window=ALL_DAY))
    assert plan.states["planned"] == 200
    log = tmp_path / "worker.log"
    proc = start_worker(workdir, database_url, log)
    try:
        deadline = time.monotonic() + 30
        while open_count(engine) and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text(errors="replace")
            time.sleep(0.2)
        assert open_count(engine) == 0, f"not drained in 30 s:\n{log.read_text(errors='replace')}"
    finally:
        stop(proc, log)
    final = rows(engine, plan.run_id)
    assert {(r["state"], r["attempts"], r["lease_until"]) for r in final} == {("sent", 1, None)}
    assert all(r["worker"] for r in final)                       # which worker sent it, for the record
    assert sent_lines(workdir / "sent.jsonl") == Counter({key(r): 1 for r in final})
    assert "stopped: 200 sent" in log.read_text(errors="replace")


def test_sigterm_mid_run_loses_and_duplicates_nothing(engine: Engine, workdir: Path, tmp_path: Path,
                                                      database_url: str) -> None:
    make_config(workdir, '\n[gateways.slow]\ntype = "file"\npath = "slow.jsonl"\nrate = 40\n')
    import_people(engine, tmp_path, n=200)
    config = load(workdir / "config.toml")
    plan = plan_run(engine, config, make_campaign(workdir, "w", sms={"gateway": "slow"}, window=ALL_DAY))
    log = tmp_path / "worker1.log"
    proc = start_worker(workdir, database_url, log, "--threads", "2")
    try:
        deadline = time.monotonic() + 20
        while not sent_lines(workdir / "slow.jsonl") and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        stop(proc, log)
    middle = rows(engine, plan.run_id)
    states = Counter(r["state"] for r in middle)
    assert set(states) <= {"sent", "planned"}, states           # nothing left claimed or in flight
    assert 0 < states["sent"] < 200, states
    written = sent_lines(workdir / "slow.jsonl")
    assert written == Counter({key(r): 1 for r in middle if r["state"] == "sent"})

    log2 = tmp_path / "worker2.log"
    proc = start_worker(workdir, database_url, log2)
    try:
        deadline = time.monotonic() + 30
        while open_count(engine) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop(proc, log2)
    final = rows(engine, plan.run_id)
    assert {r["state"] for r in final} == {"sent"}
    assert sent_lines(workdir / "slow.jsonl") == Counter({key(r): 1 for r in final})
