"""Cost: prices per SMS part (per carrier) and per ZNS message, the spend recorded on the
ledger when each message is sent, estimates, and budgets that pause a campaign before it
would go over, with several dispatchers at once.

Messages go to eSMS's loopback fake (``providers.fakes.esms``), which charges its own
balance per part: the gateway's ledger checks loa's.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import AREAS_CSV, write
from sqlalchemy import select
from sqlalchemy.engine import Engine
from test_cli import invoke, ok, one_line_error

from loa import cost, db, importer, lifecycle
from loa import report as loa_report
from loa import status as loa_status
from loa.campaign import Campaign, load_one
from loa.checks import campaign_problems
from loa.config import Config, from_mapping, load
from loa.dispatch import Dispatcher
from loa.htmlreport import render_report
from loa.plan import plan_run
from loa.preview import preview
from providers.fakes.esms import FakeESMS

O, C = db.outbox, db.campaigns
FAKE_PRICE = 800    # what the fake charges per part

# subscribers of four carriers (phonenumbers' original operator of each range)
CARRIER_PREFIX = {"Vinaphone": "0912", "Viettel": "0987", "MobiFone": "0901", "Vietnamobile": "0561"}


@pytest.fixture
def esms(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeESMS]:
    monkeypatch.setenv("T_ESMS_KEY", "test-api-key")
    monkeypatch.setenv("T_ESMS_SECRET", "test-secret-key")
    with FakeESMS(balance=10_000_000, price_per_part=FAKE_PRICE) as fake:
        yield fake


def write_config(workdir: Path, fake: FakeESMS, **prices: Any) -> Config:
    """config.toml with one eSMS gateway at the fake, with ``prices`` (TOML values)."""
    lines = ['timezone = "Asia/Ho_Chi_Minh"', "[defaults]", 'sms_gateway = "esms"', "[gateways.esms]",
             'type = "esms"', 'api_key_env = "T_ESMS_KEY"', 'secret_key_env = "T_ESMS_SECRET"',
             'brandname = "LOA"', f'base_url = "{fake.url}"', "rate = 5000", "burst = 100"]
    for key, value in prices.items():
        if isinstance(value, dict):
            value = "{ " + ", ".join(f"{k} = {v}" for k, v in value.items()) + " }"
        lines.append(f"{key} = {value}")
    lines += ["[send]", "threads = 4", "batch_size = 50"]
    write(workdir / "config.toml", "\n".join(lines) + "\n")
    return load(workdir / "config.toml")


def import_carriers(engine: Engine, folder: Path, per_carrier: int) -> dict[str, list[str]]:
    """``per_carrier`` subscribers of each carrier of CARRIER_PREFIX; carrier -> E.164 numbers."""
    areas = write(folder / "areas.csv", AREAS_CSV)
    importer.run_import(engine, importer.AreasHandler(engine, areas), areas)
    lines, numbers = ["phone,name,area"], {}
    for carrier, prefix in CARRIER_PREFIX.items():
        numbers[carrier] = []
        for i in range(per_carrier):
            national = f"{prefix}{i:06d}"
            lines.append(f"{national},Nguoi {carrier} {i},{'116' if i % 2 else '125'}")
            numbers[carrier].append("+84" + national[1:])
    subs = write(folder / "subscribers.csv", "\n".join(lines) + "\n")
    summary = importer.run_import(engine, importer.SubscribersHandler(engine, subs), subs)
    assert summary.rejected == 0
    return numbers


# A 2-part GSM-7 message (161 to 306 characters), the same length for everyone: "Nguoi <carrier> <i>"
# names differ in length, so the name is kept out of the text
TWO_PARTS = "Thong bao cua So Y te: " + "tiem chung mo rong cho tre em duoi 5 tuoi tai tram y te xa. " * 4


def make_campaign(workdir: Path, name: str = "c", text: str = TWO_PARTS, budget: int | None = None,
                  extra: str = "") -> Campaign:
    write(workdir / "templates" / "sms" / f"{name}.j2", text + "\n")
    toml = [f'name = "{name}"', 'channels = ["sms"]', *([f"budget = {budget}"] if budget else []),
            *([extra] if extra else []),
            "[window]", 'start = "00:00"', 'end = "24:00"', "[sms]", f'template = "sms/{name}.j2"']
    write(workdir / "campaigns" / f"{name}.toml", "\n".join(toml) + "\n")
    return load_one(workdir / "campaigns", name)


def rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(select(O.c.id, O.c.state, O.c.parts, O.c.cost_vnd, O.c.reason, db.subscribers.c.carrier)
                            .join(db.subscribers, db.subscribers.c.id == O.c.subscriber_id).order_by(O.c.id)).all()


def charged(fake: FakeESMS) -> int:
    """What the gateway took from its balance."""
    return 10_000_000 - fake.balance


# -- prices ------------------------------------------------------------------------------

def test_a_price_per_part_per_carrier_and_per_zns_message() -> None:
    config = from_mapping({"gateways": {
        "g": {"type": "simulator", "price_per_part": 690, "price_per_part_by_carrier": {"viettel": 790, "gmobile": 650},
              "price_per_zns": 300},
        "carriers_only": {"type": "simulator", "price_per_part_by_carrier": {"viettel": 790}},
        "free": {"type": "simulator"}}})
    assert cost.price(config, "g", "sms", "Viettel", 3) == 3 * 790
    assert cost.price(config, "g", "sms", "G-Mobile", 2) == 2 * 650    # as phonenumbers spells it
    assert cost.price(config, "g", "sms", "MobiFone", 2) == 2 * 690    # no price of its own: the gateway's
    assert cost.price(config, "g", "sms", "", 1) == 690                 # unknown carrier
    assert cost.price(config, "g", "zalo", "Viettel", 4) == 300        # per message, whatever its length
    assert cost.price(config, "carriers_only", "sms", "Viettel", 2) == 1580
    assert cost.price(config, "carriers_only", "sms", "MobiFone", 2) is None
    assert cost.price(config, "free", "sms", "Viettel", 1) is None
    assert cost.price(config, "free", "zalo", "Viettel", 1) is None


@pytest.mark.parametrize(("table", "problem"), [
    ({"price_per_part": 690.5}, "gateways.g.price_per_part: must be a whole number of VND per SMS part"),
    ({"price_per_part": -1}, "gateways.g.price_per_part: must be a whole number of VND per SMS part"),
    ({"price_per_zns": "300"}, "gateways.g.price_per_zns: must be a whole number of VND per ZNS message"),
    ({"price_per_part_by_carrier": {"vietel": 790}}, "unknown carrier 'vietel', did you mean 'viettel'?"),
    ({"price_per_part_by_carrier": {"viettel": 7.9}}, "viettel: must be a whole number of VND per SMS part"),
    ({"price_per_part_by_carrier": 790}, "must be a table of carrier = price"),
])
def test_a_bad_price_is_refused_in_one_line_naming_its_key(table: dict[str, Any], problem: str) -> None:
    from loa.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        from_mapping({"gateways": {"g": {"type": "simulator", **table}}})
    assert len(refused.value.problems) == 1 and problem in refused.value.problems[0], refused.value.problems


# -- spend ---------------------------------------------------------------------------------

def test_each_message_costs_its_parts_at_its_carriers_price_and_a_later_price_change_leaves_it(
        engine: Engine, workdir: Path, tmp_path: Path, esms: FakeESMS) -> None:
    numbers = import_carriers(engine, tmp_path, per_carrier=3)
    prices = {"viettel": 900, "mobifone": 850}
    config = write_config(workdir, esms, price_per_part=FAKE_PRICE, price_per_part_by_carrier=prices)
    campaign = make_campaign(workdir)
    estimate = preview(engine, config, campaign).estimate
    plan = plan_run(engine, config, campaign)
    Dispatcher(engine, config).run_until_empty()

    sent = rows(engine)
    assert {(r.state, r.parts) for r in sent} == {("sent", 2)}
    per_part = {"Viettel": 900, "MobiFone": 850, "Vinaphone": FAKE_PRICE, "Vietnamobile": FAKE_PRICE}
    assert {r.carrier: r.cost_vnd for r in sent} == {c: 2 * p for c, p in per_part.items()}
    total = 2 * 3 * sum(per_part.values())
    assert cost.spend(engine, "c").spent_vnd == total
    assert cost.spend(engine, "c").messages == 12 and cost.spend(engine, "c").unpriced == 0
    # the estimate made before the run: 2 parts for each of the 12, at each carrier's price
    assert estimate is not None and (estimate.messages, estimate.parts, estimate.cost_vnd) == (12, 24, total)
    assert {line.carrier: line.cost_vnd for line in estimate.lines} == {c: 3 * 2 * p for c, p in per_part.items()}
    assert sum(len(v) for v in numbers.values()) == len(esms.messages)

    # the gateway raises its prices: what was sent keeps the price it had, what is sent now takes the new one
    config = write_config(workdir, esms, price_per_part=1000, price_per_part_by_carrier={"viettel": 1200})
    assert cost.spend(engine, "c").spent_vnd == total
    more = plan_run(engine, config, campaign, again=True)
    Dispatcher(engine, config).run_until_empty()
    with engine.connect() as conn:
        by_run = cost.spend_by_run(conn, [plan.run_id, more.run_id])
    assert by_run == {plan.run_id: total, more.run_id: 2 * 3 * (1200 + 3 * 1000)}
    assert cost.spend(engine, "c").spent_vnd == sum(by_run.values())

    # status shows each run's spend, the report its areas' and the whole campaign's
    status = {r["run"]: r["spent_vnd"] for r in loa_status.collect(engine)["runs"]}
    assert status == by_run
    report = loa_report.build(engine, "c", None)
    assert report.total.spent_vnd == sum(by_run.values())
    assert sum(r.spent_vnd for r in report.rows) == report.total.spent_vnd
    assert all(r.spent_vnd > 0 for r in report.rows if r.code in ("116", "125"))
    lines = loa_report.to_csv(report).splitlines()
    assert lines[0].split(",")[-1] == "spent_vnd" and lines[-1].split(",")[-1] == str(sum(by_run.values()))
    assert json.loads(loa_report.to_json(report))["total"]["spent_vnd"] == sum(by_run.values())
    assert f"{sum(by_run.values()):,}".replace(",", ".") in ok(invoke(workdir, "report", "c")).output   # 45.300
    shown_status = ok(invoke(workdir, "status")).output
    assert all(f"{v:,}" in shown_status for v in by_run.values()), shown_status
    page = render_report(engine, report)           # Vietnamese by default
    shown = f"{sum(by_run.values()):,}".replace(",", ".") + "\xa0₫"
    assert "Chi phí" in page and shown in page, shown

    # /metrics: the same spend per campaign, and what is reserved for its messages in flight
    from sqlalchemy import update
    from test_web import parse_prometheus

    from loa.web import Web
    from loa.web.metrics import registry, render

    web = Web(engine, config)

    def metric(name: str) -> dict[str, float]:
        text = render(registry(web)).decode()
        return {labels["campaign"]: value for n, labels, value in parse_prometheus(text) if n == name}

    assert metric("loa_campaign_spent_vnd") == {"c": sum(by_run.values())}
    assert metric("loa_campaign_reserved_vnd") == {"c": 0}
    third = plan_run(engine, config, campaign, again=True)
    with engine.begin() as conn:      # as workers hold them: claimed, each with its price reserved
        conn.execute(update(O).where(O.c.run_id == third.run_id).values(state="claimed", worker="w",
                                                                         reserved_vnd=2_000))
    assert metric("loa_campaign_reserved_vnd") == {"c": 12 * 2_000}
    assert metric("loa_campaign_spent_vnd") == {"c": sum(by_run.values())}
    web.pool.close()


def test_the_spend_is_what_the_gateway_charged(engine: Engine, workdir: Path, tmp_path: Path,
                                               esms: FakeESMS) -> None:
    import_carriers(engine, tmp_path, per_carrier=5)
    config = write_config(workdir, esms, price_per_part=FAKE_PRICE)   # the fake's own price, any carrier
    plan_run(engine, config, make_campaign(workdir, text="Xin chào {{ subscriber.name }}: " + "ư" * 80))
    Dispatcher(engine, config).run_until_empty()
    assert Counter(r.parts for r in rows(engine)) == {2: 20}
    assert cost.spend(engine, "c").spent_vnd == charged(esms) == 20 * 2 * FAKE_PRICE


def test_a_gateway_without_a_price_leaves_messages_unpriced_and_the_estimate_unknown(
        engine: Engine, workdir: Path, tmp_path: Path, esms: FakeESMS) -> None:
    import_carriers(engine, tmp_path, per_carrier=2)
    config = write_config(workdir, esms, price_per_part_by_carrier={"viettel": 900})
    campaign = make_campaign(workdir)
    estimate = cost.estimate(engine, config, campaign)
    assert estimate.cost_vnd is None
    assert any("no price for MobiFone, Vietnamobile, Vinaphone" in n for n in estimate.notes), estimate.notes
    plan_run(engine, config, campaign)
    Dispatcher(engine, config).run_until_empty()
    spend = cost.spend(engine, "c")
    assert (spend.spent_vnd, spend.messages, spend.unpriced) == (2 * 2 * 900, 2, 6)


def test_preview_prints_the_estimate(engine: Engine, workdir: Path, tmp_path: Path, esms: FakeESMS) -> None:
    import_carriers(engine, tmp_path, per_carrier=2)
    write_config(workdir, esms, price_per_part=FAKE_PRICE, price_per_part_by_carrier={"viettel": 900})
    make_campaign(workdir, budget=10_000)
    out = ok(invoke(workdir, "campaigns", "preview", "c")).output
    total = 2 * 2 * (900 + 3 * FAKE_PRICE)
    assert f"Estimated cost: {total:,} VND" in out
    assert "900 VND/part" in out and "Viettel" in out
    assert "budget 10,000 VND, 0 VND spent by earlier runs, 10,000 VND left: over it" in out


# -- budgets -------------------------------------------------------------------------------

def test_a_campaign_is_paused_by_system_before_its_budget_would_be_exceeded(
        engine: Engine, workdir: Path, tmp_path: Path, esms: FakeESMS) -> None:
    import_carriers(engine, tmp_path, per_carrier=3)   # 12 messages of 2 parts at 800: 1,600 each
    config = write_config(workdir, esms, price_per_part=FAKE_PRICE)
    campaign = make_campaign(workdir, budget=10_000)   # 6 fit (9,600); a 7th would make 11,200
    plan = plan_run(engine, config, campaign)
    summary = Dispatcher(engine, config, threads=1).run_until_empty()

    states = Counter(r.state for r in rows(engine))
    assert states == {"sent": 6, "planned": 6}, states
    assert cost.spend(engine, "c").spent_vnd == charged(esms) == 9_600
    reason = "budget 10,000 VND: 9,600 VND spent or in flight, and the next message costs 1,600 VND"
    assert summary.over_budget == {"c": reason}
    with engine.connect() as conn:
        row = conn.execute(select(C.c.state, C.c.state_by, C.c.state_reason).where(C.c.name == "c")).one()
        entry = conn.execute(select(db.audit_log).where(db.audit_log.c.action == "campaigns.pause")).one()
    assert tuple(row) == ("paused", "system", reason)
    assert (entry.actor, entry.object_id, entry.reason) == ("system", "c", reason)
    assert entry.before == {"state": "active"} and entry.after["state"] == "paused"
    assert {r.reason for r in rows(engine) if r.state == "planned"} == {f"paused by system: {reason}"}
    assert Dispatcher(engine, config).claim() == []   # paused: nobody takes its rows

    # raising the budget in the file reaches the open run; resumed, the rest goes out, each once
    campaign = make_campaign(workdir, budget=20_000)
    ok(invoke(workdir, "campaigns", "reload"))
    lifecycle.change_campaign(engine, "c", "resume", who="hoa", reason="budget raised")
    Dispatcher(engine, config).run_until_empty()
    assert Counter(r.state for r in rows(engine)) == {"sent": 12}
    assert cost.spend(engine, "c").spent_vnd == charged(esms) == 19_200
    assert Counter(esms.accepted.values()) == {1: 12}
    assert plan.run_id


def test_several_dispatchers_at_once_never_take_a_campaign_over_its_budget(
        engine: Engine, workdir: Path, tmp_path: Path, esms: FakeESMS) -> None:
    import_carriers(engine, tmp_path, per_carrier=40)    # 160 messages of 1,600 VND: 256,000 in all
    config = write_config(workdir, esms, price_per_part=FAKE_PRICE)
    budget = 100_000
    plan_run(engine, config, make_campaign(workdir, budget=budget))
    dispatchers = [Dispatcher(engine, config, threads=3, batch_size=8) for _ in range(3)]
    start = threading.Barrier(len(dispatchers))
    # the gateway answers no send until more than one dispatcher's 3 senders wait on it at once:
    # then at least two dispatchers are sending together, however the machine schedules them.
    # Not for longer than 2 s, well within the client's read timeout: when the budget stops the
    # campaign while only three sends are out, no fourth comes, and a send held past the timeout
    # would end ambiguous (charged by the gateway, not yet spent by the ledger's account).
    gate, arrived, count = threading.Event(), threading.Lock(), [0]

    def hold() -> None:
        with arrived:
            count[0] += 1
            if count[0] > 3:
                gate.set()
        gate.wait(2.0)

    esms.hold = hold
    errors: list[BaseException] = []

    def go(d: Dispatcher) -> None:
        try:
            start.wait()
            d.run_until_empty()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            d.pool.close()

    threads = [threading.Thread(target=go, args=(d,)) for d in dispatchers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors and not any(t.is_alive() for t in threads)

    spent = cost.spend(engine, "c").spent_vnd
    assert spent == charged(esms) <= budget, (spent, charged(esms))
    assert spent > 0 and Counter(esms.accepted.values()) == {1: spent // 1_600}   # each message once
    with engine.connect() as conn:
        state, by = conn.execute(select(C.c.state, C.c.state_by).where(C.c.name == "c")).one()
    assert (state, by) == ("paused", "system")
    assert any(d.summary.over_budget for d in dispatchers)
    assert sum(1 for d in dispatchers if d.summary.outcomes["sent"]) >= 2   # the work was shared
    left = Counter(r.state for r in rows(engine))
    assert left["sent"] + left["planned"] == 160 and left["planned"] > 0, left


def test_a_budget_without_prices_or_of_the_wrong_shape_is_refused(engine: Engine, workdir: Path,
                                                                    esms: FakeESMS) -> None:
    config = write_config(workdir, esms)
    campaign = make_campaign(workdir, budget=50_000)
    problems = campaign_problems(config, campaign, set())
    assert any("budget: gateway esms has no price_per_part" in p for p in problems), problems
    for bad in ("-5", "1.5", '"lots"', "0"):
        write(workdir / "campaigns" / "c.toml", f'name = "c"\nchannels = ["sms"]\nbudget = {bad}\n'
              '[sms]\ntemplate = "sms/c.j2"\n')
        line = one_line_error(invoke(workdir, "campaigns", "preview", "c"), "c.toml: budget: must be a whole number of VND")
        assert bad.strip('"') in line
