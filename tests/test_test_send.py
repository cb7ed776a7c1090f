"""Test sends: ``loa campaigns test`` sends a campaign's real message to staff numbers through
the real gateway (eSMS's loopback fake), and nothing of it reaches the campaign's ledger:
reports, status, frequency caps and spend count only the campaign's own messages."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from test_cli import invoke, ok, one_line_error
from test_cost import esms as esms  # noqa: PLC0414 - the fixture, shared
from test_cost import import_carriers, make_campaign, write_config

from loa import auth, cost, db
from loa import report as loa_report
from loa import status as loa_status
from loa.dispatch import Dispatcher
from loa.plan import plan_run
from providers.fakes.esms import FakeESMS

T, A, O = db.test_sends, db.audit_log, db.outbox
STAFF = ("0987 654 321", "+84 90 123 4567")
STAFF_E164 = ("+84987654321", "+84901234567")
TEXT = "Xin chào {{ subscriber.name }}, mời bạn tiêm chủng."


@pytest.fixture
def setup(engine: Engine, workdir: Path, tmp_path: Path, esms: FakeESMS) -> Iterator[dict[str, list[str]]]:
    numbers = import_carriers(engine, tmp_path, per_carrier=2)
    write_config(workdir, esms, price_per_part=800)
    make_campaign(workdir, text=TEXT, extra="frequency_cap = 1")
    for name, role in (("ana", "operator"), ("vy", "viewer")):
        auth.add_user(engine, "os:test", name, "mat-khau-dai-12345", role)
    yield numbers


def recorded(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (conn.scalar(select(func.count()).select_from(T)) or 0,
                conn.scalar(select(func.count()).select_from(A).where(A.c.action == "campaigns.test")) or 0)


def test_a_test_send_goes_through_the_gateway_to_staff_and_never_into_the_campaigns_ledger(
        engine: Engine, workdir: Path, esms: FakeESMS, setup: dict[str, list[str]]) -> None:
    subscriber = setup["Vinaphone"][0]        # a member of the audience who is also on the staff
    result = ok(invoke(workdir, "campaigns", "test", "c", "--to", STAFF[0], "--to", STAFF[1],
                       "--to", subscriber, "--as", "ana"))
    out = result.output
    sent = {m.phone: m for m in esms.messages.values()}
    assert len(sent) == 3
    # the real message of the audience's first member, as the campaign would send it
    assert {m.content for m in sent.values()} == {"Xin chào Nguoi Vinaphone 0, mời bạn tiêm chủng."}
    assert "Xin chào Nguoi Vinaphone 0, mời bạn tiêm chủng." in out
    for phone in (*STAFF_E164, subscriber):
        masked = phone[:5] + "****" + phone[-3:]
        assert f"{masked}: sent, provider id " in out
        assert phone not in out
    assert all(smsid in out for smsid in esms.messages)
    assert all(m.request_id.startswith("loa-test-") for m in sent.values())
    with engine.connect() as conn:
        rows = conn.execute(select(T).order_by(T.c.id)).all()
        entry = conn.execute(select(A).where(A.c.action == "campaigns.test")).one()
        booked = conn.scalar(select(db.gateways.c.tat).where(db.gateways.c.name == "esms"))
    assert [(r.state, r.parts, r.cost_vnd, r.actor) for r in rows] == [("sent", 1, 800, "user:ana")] * 3
    assert {r.phone for r in rows} == {*STAFF_E164, subscriber}
    # audited with the actor, the campaign and the numbers masked
    assert (entry.actor, entry.object_type, entry.object_id) == ("user:ana", "campaign", "c")
    assert set(entry.after["to"]) == {p[:5] + "****" + p[-3:] for p in (*STAFF_E164, subscriber)}
    assert not any(p in json.dumps(entry.after) for p in (*STAFF_E164, subscriber))
    assert booked and booked > 0    # the gateway's shared limiter booked the sends

    # the campaign itself: everyone gets their message, the staff subscriber too (a cap of 1 per
    # 24 h, and the test does not count), and nothing of the test is in its figures
    config = write_config(workdir, esms, price_per_part=800)
    plan = plan_run(engine, config, make_campaign(workdir, text=TEXT, extra="frequency_cap = 1"))
    Dispatcher(engine, config).run_until_empty()
    with engine.connect() as conn:
        states = dict(conn.execute(select(O.c.state, func.count()).group_by(O.c.state)).all())
    assert states == {"sent": 8}
    run = next(r for r in loa_status.collect(engine)["runs"] if r["run"] == plan.run_id)
    assert run["outcomes"] == {"sent": 8} and run["spent_vnd"] == 8 * 800
    report = loa_report.build(engine, "c", None)
    assert (report.total.audience, report.total.sent, report.total.spent_vnd) == (8, 8, 8 * 800)
    assert cost.spend(engine, "c").spent_vnd == 8 * 800
    assert len(esms.messages) == 3 + 8


def test_a_chosen_subscribers_message_and_a_gateway_error_code(
        engine: Engine, workdir: Path, esms: FakeESMS, setup: dict[str, list[str]]) -> None:
    esms.program(STAFF_E164[1], "177")     # eSMS: the carrier is not registered for the brandname
    result = invoke(workdir, "campaigns", "test", "c", "--to", STAFF[0], "--to", STAFF[1],
                    "--subscriber", "0987000001", "--as", "ana")
    assert result.exit_code == 1, result.output
    assert "Nguoi Viettel 1" in result.output
    assert "+8490****567: failed, gateway error 177" in result.output
    assert "+8498****321: sent, provider id " in result.output
    with engine.connect() as conn:
        states = [(r.phone, r.state, r.error_code) for r in conn.execute(select(T).order_by(T.c.id))]
    assert states == [(STAFF_E164[0], "sent", None), (STAFF_E164[1], "failed", "177")]
    assert [m.content for m in esms.messages.values()] == ["Xin chào Nguoi Viettel 1, mời bạn tiêm chủng."]


@pytest.mark.parametrize(("args", "fragments"), [
    (("--to", "12345", "--as", "ana"), ("--to '12345'", "not a valid Vietnamese number", "nothing was sent")),
    (("--to", STAFF[0], "--to", "024 3825 1234", "--as", "ana"), ("--to '024 3825 1234'", "landline")),
    (("--to", "+1 202 555 0100", "--as", "ana"), ("not a Vietnamese mobile number",)),
    (("--to", STAFF[0], "--as", "vy"), ("campaigns.test is not allowed for role viewer",)),
    (("--to", STAFF[0], "--as", "nobody"), ("user 'nobody' is unknown",)),
    (("--to", STAFF[0], "--subscriber", "0912999999", "--as", "ana"), ("no subscriber has the number +8491****999",)),
])
def test_a_bad_number_or_sender_is_refused_in_one_line_and_nothing_is_sent(
        engine: Engine, workdir: Path, esms: FakeESMS, setup: dict[str, list[str]],
        args: tuple[str, ...], fragments: tuple[str, ...]) -> None:
    one_line_error(invoke(workdir, "campaigns", "test", "c", *args), *fragments)
    assert esms.messages == {} and esms.requests == []
    assert recorded(engine) == (0, 0)
