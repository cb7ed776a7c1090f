"""The lifecycle of campaigns and runs: pause, resume, cancel, the emergency brake.

* The transitions are one table: every (state, action) pair either leads where the table
  says or is refused with one line that names the states the action applies to.
* A pause stops the sending at the next message, even of rows a worker had already claimed
  (checked in the commit that marks each message ``sending``); what it holds back stays
  planned with the pause as its reason, and resume sends it, once.
* Cancel makes every unsent message ``cancelled`` with the actor and the reason, leaves
  what was sent alone, and lets the message being sent finish; status and report count it.
* A paused or cancelled campaign gets no new run, from the command line or the scheduler.

The pause across several real worker processes, timed, is ``test_pause_workers.py``.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from test_cli import invoke, ok, one_line_error
from test_dispatch import import_people, make_campaign, outbox
from test_scheduler import CAMPAIGN, at, runs
from test_scheduler import setup as setup  # noqa: PLC0414 - the fixture, shared

import scheduler
from loa import db, lifecycle
from loa import status as loa_status
from loa.config import Config, load
from loa.dispatch import Dispatcher
from loa.gateways import Gateway, GatewayPool
from loa.plan import plan_run
from loa.ratelimit import MemoryGCRA
from providers.base import OutgoingMessage, SendResult
from providers.simulator import SimulatedNetwork, SimulatorProvider

O, R, C = db.outbox, db.runs, db.campaigns
WHO = "hoa.nguyen"


class Acting(SimulatorProvider):
    """A simulator gateway through which someone acts on the campaign (on another machine, as
    far as the sender knows) while the message ``at`` is in the gateway's hands."""

    def __init__(self, engine: Engine, net: SimulatedNetwork, at: int, act: Any) -> None:
        super().__init__("sim", {"network": net})
        self.engine, self.at, self.act, self.calls = engine, at, act, 0

    def send(self, message: OutgoingMessage) -> SendResult:
        self.calls += 1
        if self.calls == self.at:
            self.act()
        return super().send(message)


def acting_pool(config: Config, provider: SimulatorProvider) -> GatewayPool:
    pool = GatewayPool(config)
    pool._built["sim"] = Gateway("sim", provider, MemoryGCRA(100_000, 100), 100_000.0)
    return pool


def sim_pool(config: Config, net: SimulatedNetwork) -> GatewayPool:
    return acting_pool(config, SimulatorProvider("sim", {"network": net}))


def snapshot(engine: Engine) -> tuple[list[Any], list[Any], list[Any]]:
    with engine.connect() as conn:
        return (conn.execute(select(C).order_by(C.c.id)).all(), conn.execute(select(R).order_by(R.c.id)).all(),
                conn.execute(select(O).order_by(O.c.id)).all())


# -- the transitions table ---------------------------------------------------------------

def test_every_transition_is_in_one_table_and_every_other_is_refused_by_name() -> None:
    for kind, states, actions in (("campaign", lifecycle.CAMPAIGN_STATES, lifecycle.CAMPAIGN_ACTIONS),
                                  ("run", lifecycle.RUN_STATES, lifecycle.RUN_ACTIONS)):
        for action, moves in actions.items():
            assert set(moves) <= set(states) and set(moves.values()) <= set(states)
            for state in states:
                if state in moves:
                    assert lifecycle.transition(kind, "x", state, action) == moves[state]
                    continue
                with pytest.raises(lifecycle.LifecycleError) as refused:
                    lifecycle.transition(kind, "x", state, action)
                line = str(refused.value)
                assert "\n" not in line and f"{kind} x is {state}" in line
                assert all(allowed in line for allowed in moves), line
    # the whole road, approval included, is in the table
    state = "draft"
    for action in ("submit", "approve", "launch", "pause", "resume", "finish"):
        state = lifecycle.transition("campaign", "x", state, action)
    assert state == "finished"
    for done in ("finished", "cancelled"):   # terminal
        assert not any(done in moves for moves in lifecycle.CAMPAIGN_ACTIONS.values())
    with pytest.raises(lifecycle.LifecycleError, match="only a run that is active or paused can be cancelled"):
        lifecycle.transition("run", "x", "cancelled", "cancel")


# -- pause and resume ------------------------------------------------------------------------

def test_a_pause_stops_the_next_message_even_of_a_claimed_batch_and_resume_sends_the_rest_once(
        engine: Engine, workdir: Path, tmp_path: Path) -> None:
    n, at_call = 40, 7
    import_people(engine, tmp_path, n=n)
    config = load(workdir / "config.toml")
    plan = plan_run(engine, config, make_campaign(workdir, "c"))
    net = SimulatedNetwork(seed=3, delivery_rate=1.0)
    # the whole run is claimed in one batch before the pause: only the mark can stop it
    gateway = Acting(engine, net, at_call, lambda: lifecycle.change_campaign(
        engine, "c", "pause", who=WHO, reason="sai nội dung"))
    summary = Dispatcher(engine, config, threads=1, batch_size=n, pool=acting_pool(config, gateway)).run_until_empty()

    rows = outbox(engine, plan.run_id)
    states = Counter(r["state"] for r in rows)
    # the message in the gateway's hands when the pause came finishes; nothing after it goes
    assert sum(net.received.values()) == at_call, net.received
    assert states == {"delivered": at_call, "planned": n - at_call}, states
    held = [r for r in rows if r["state"] == "planned"]
    assert {r["reason"] for r in held} == {f"paused by {WHO}: sai nội dung"}
    assert {r["worker"] for r in held} == {None} and {r["attempts"] for r in held} == {0}
    assert summary.outcomes == {"sent": at_call}   # receipts then make them delivered
    with engine.connect() as conn:
        campaign = conn.execute(select(C).where(C.c.name == "c")).one()
    assert (campaign.state, campaign.state_by, campaign.state_reason) == ("paused", WHO, "sai nội dung")

    # paused: nobody claims its rows
    assert Dispatcher(engine, config, pool=sim_pool(config, net)).claim() == []

    change = lifecycle.change_campaign(engine, "c", "resume", who=WHO, reason=None)
    assert (change.before, change.after, change.messages) == ("paused", "active", n - at_call)
    assert {r["reason"] for r in outbox(engine, plan.run_id) if r["state"] == "planned"} == {None}
    Dispatcher(engine, config, threads=3, pool=sim_pool(config, net)).run_until_empty()
    rows = outbox(engine, plan.run_id)
    assert Counter(r["state"] for r in rows) == {"delivered": n}
    assert net.received == Counter({db.message_key(r["run_id"], r["subscriber_id"]): 1 for r in rows})


def test_a_run_is_paused_and_resumed_on_its_own(engine: Engine, workdir: Path, tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=10)
    config = load(workdir / "config.toml")
    first = plan_run(engine, config, make_campaign(workdir, "c"))
    second = plan_run(engine, config, make_campaign(workdir, "c"), again=True)
    other = plan_run(engine, config, make_campaign(workdir, "d"))
    change = lifecycle.change_run(engine, "c", first.run_id, "pause", who=WHO, reason="chờ duyệt lại")
    assert (change.before, change.after, change.messages) == ("active", "paused", 10)
    net = SimulatedNetwork(seed=3, delivery_rate=1.0)
    Dispatcher(engine, config, pool=sim_pool(config, net)).run_until_empty()
    assert Counter(r["state"] for r in outbox(engine, first.run_id)) == {"planned": 10}
    assert Counter(r["state"] for r in outbox(engine, second.run_id)) == {"delivered": 10}
    assert Counter(r["state"] for r in outbox(engine, other.run_id)) == {"delivered": 10}
    # a paused campaign holds the run with the campaign's reason; its resume gives the run's back
    lifecycle.change_campaign(engine, "c", "pause", who="lan", reason="dừng tất cả")
    assert {r["reason"] for r in outbox(engine, first.run_id)} == {"paused by lan: dừng tất cả"}
    lifecycle.change_campaign(engine, "c", "resume", who="lan", reason=None)
    assert {r["reason"] for r in outbox(engine, first.run_id)} == {f"paused by {WHO}: chờ duyệt lại"}
    with pytest.raises(lifecycle.LifecycleError, match=f"run {second.run_id} of c is active"):
        lifecycle.change_run(engine, "c", second.run_id, "resume", who=WHO, reason=None)
    lifecycle.change_run(engine, "c", first.run_id, "resume", who=WHO, reason=None)
    Dispatcher(engine, config, pool=sim_pool(config, net)).run_until_empty()
    assert Counter(r["state"] for r in outbox(engine, first.run_id)) == {"delivered": 10}
    assert max(net.received.values()) == 1


# -- cancel ----------------------------------------------------------------------------------

def test_cancel_marks_every_unsent_message_and_the_one_in_flight_finishes(
        engine: Engine, workdir: Path, tmp_path: Path) -> None:
    n, at_call = 30, 5
    import_people(engine, tmp_path, n=n)
    config = load(workdir / "config.toml")
    plan = plan_run(engine, config, make_campaign(workdir, "c", holdout=0.2))
    before = Counter(r["state"] for r in outbox(engine, plan.run_id))
    to_send = before["planned"]
    net = SimulatedNetwork(seed=3, delivery_rate=1.0)
    gateway = Acting(engine, net, at_call, lambda: lifecycle.change_campaign(
        engine, "c", "cancel", who=WHO, reason="thông tin sai"))
    Dispatcher(engine, config, threads=1, batch_size=n, pool=acting_pool(config, gateway)).run_until_empty()

    rows = outbox(engine, plan.run_id)
    states = Counter(r["state"] for r in rows)
    # the message in the gateway's hands (sending) when the cancel came is recorded as sent
    assert states == {"delivered": at_call, "cancelled": to_send - at_call, "held_out": before["held_out"]}, states
    assert {r["reason"] for r in rows if r["state"] == "cancelled"} == {f"cancelled by {WHO}: thông tin sai"}
    assert sum(net.received.values()) == at_call
    with engine.connect() as conn:
        assert conn.execute(select(R.c.state, R.c.state_by).where(R.c.id == plan.run_id)).one() == ("cancelled", WHO)
    # nothing more goes out, and a cancelled campaign is not run again
    Dispatcher(engine, config, pool=sim_pool(config, net)).run_until_empty()
    assert sum(net.received.values()) == at_call
    with pytest.raises(lifecycle.LifecycleError, match="campaign c is cancelled by hoa.nguyen: thông tin sai"):
        plan_run(engine, config, make_campaign(workdir, "c"), again=True)

    # status and report count it as its own outcome
    [run] = loa_status.collect(engine)["runs"]
    assert run["outcomes"]["cancelled"] == to_send - at_call and run["due"] == 0
    assert loa_status.outcome("cancelled") == "cancelled" and "cancelled" in loa_status.OUTCOMES
    assert run["state"] == "cancelled" and loa_status._status(run) == "done, cancelled"
    from loa import report

    built = report.build(engine, "c", None)
    assert built.total.sent == at_call
    assert f"{to_send - at_call:,} message(s) cancelled before they were sent (run {plan.run_id}" in " ".join(
        built.notes)


def test_a_cancelled_row_is_never_overwritten_by_an_outcome_of_a_worker_that_held_it(
        engine: Engine, workdir: Path, tmp_path: Path) -> None:
    """A worker claims a batch; the run is cancelled; the worker then carries on with the batch
    in its hands: it sends none of it, and what it finds before sending (here a template
    error for the recipients without ``x``) does not overwrite the cancellation."""
    import_people(engine, tmp_path, n=12, with_x=lambda i: i % 3 != 0)
    config = load(workdir / "config.toml")
    plan = plan_run(engine, config, make_campaign(workdir, "c", sms_text="Chào {{ subscriber.name }}, mã {{ attr.x }}"))
    net = SimulatedNetwork(seed=3, delivery_rate=1.0)
    worker = Dispatcher(engine, config, pool=sim_pool(config, net))
    in_hand = worker.claim()
    assert len(in_hand) == 12
    change = lifecycle.change_run(engine, "c", plan.run_id, "cancel", who=WHO, reason="hủy")
    assert change.messages == 12
    worker._next = in_hand                # the worker carries on with the batch in its hands
    worker.run_until_empty()
    assert not net.received
    assert Counter(r["state"] for r in outbox(engine, plan.run_id)) == {"cancelled": 12}


def test_an_unknown_send_the_gateway_never_got_is_cancelled_not_queued_again(
        engine: Engine, workdir: Path, tmp_path: Path) -> None:
    """A send whose outcome was unknown (a timeout) when its run was cancelled: once the gateway
    says it never got it, it is an unsent message, so cancelled, and never sent."""
    import_people(engine, tmp_path, n=4)
    config = load(workdir / "config.toml")
    plan = plan_run(engine, config, make_campaign(workdir, "c"))
    with engine.begin() as conn:
        ids = conn.scalars(select(O.c.id).where(O.c.run_id == plan.run_id).order_by(O.c.id).limit(2)).all()
        conn.execute(update(O).where(O.c.id.in_(ids)).values(state="unknown", attempts=1, error_code="TIMEOUT"))
    lifecycle.change_run(engine, "c", plan.run_id, "cancel", who=WHO, reason="hủy")
    net = SimulatedNetwork(seed=3, delivery_rate=1.0)
    dispatcher = Dispatcher(engine, config, pool=sim_pool(config, net))
    assert dispatcher.reconcile_unknown(settle_after=0, give_up_after=0) == {("settled", "cancelled"): 2}
    dispatcher.run_until_empty()
    rows = outbox(engine, plan.run_id)
    assert Counter(r["state"] for r in rows) == {"cancelled": 4} and not net.received
    assert {r["reason"] for r in rows} == {f"cancelled by {WHO}: hủy"}


# -- the command line ----------------------------------------------------------------------

def test_cli_pause_resume_cancel_and_refusals_that_change_nothing(
        engine: Engine, workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import_people(engine, tmp_path, n=6)
    config = load(workdir / "config.toml")
    plan = plan_run(engine, config, make_campaign(workdir, "c"))
    plan_run(engine, config, make_campaign(workdir, "d"))
    monkeypatch.setenv("LOA_ACTOR", "minh.tran")

    # refused: nothing changes, one line
    unchanged = snapshot(engine)
    one_line_error(invoke(workdir, "campaigns", "resume", "c"), "campaign c is active",
                   "only a campaign that is paused can be resumed", code=2)
    one_line_error(invoke(workdir, "campaigns", "pause", "nope", "--reason", "x"), "campaign nope")
    one_line_error(invoke(workdir, "campaigns", "pause", "d", "--run", str(plan.run_id), "--reason", "x"),
                   f"campaign d has no run {plan.run_id} (it is a run of c)")
    one_line_error(invoke(workdir, "campaigns", "pause", "c", "--reason", "  "), "--reason is empty")
    missing = invoke(workdir, "campaigns", "cancel", "c")
    assert missing.exit_code == 2 and "--reason" in missing.stderr
    assert snapshot(engine) == unchanged

    said = ok(invoke(workdir, "campaigns", "pause", "c", "--reason", "kiểm tra lại")).stdout
    assert "campaign c paused (was active) by minh.tran: kiểm tra lại; 6 message(s) held back" in said
    unchanged = snapshot(engine)
    one_line_error(invoke(workdir, "campaigns", "pause", "c", "--reason", "again"),
                   "campaign c is paused: only a campaign that is active can be paused")
    assert snapshot(engine) == unchanged
    ok(invoke(workdir, "campaigns", "cancel", "c", "--run", str(plan.run_id), "--reason", "sai danh sách"))
    unchanged = snapshot(engine)
    one_line_error(invoke(workdir, "campaigns", "resume", "c", "--run", str(plan.run_id)),
                   f"run {plan.run_id} of c is cancelled: only a run that is paused can be resumed")
    assert snapshot(engine) == unchanged
    assert {r["reason"] for r in outbox(engine, plan.run_id)} == {"cancelled by minh.tran: sai danh sách"}
    status = ok(invoke(workdir, "status", "--format", "json")).stdout
    assert '"cancelled": 6' in status


def test_stop_all_pauses_every_active_campaign_at_once(engine: Engine, workdir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import_people(engine, tmp_path, n=6)
    config = load(workdir / "config.toml")
    for name in ("a", "b", "c"):
        plan_run(engine, config, make_campaign(workdir, name))
    lifecycle.change_campaign(engine, "c", "cancel", who=WHO, reason="cũ")
    monkeypatch.setenv("LOA_ACTOR", "truc.ban")
    one_line_error(invoke(workdir, "stop", "--reason", "x"), "give --all")
    said = ok(invoke(workdir, "stop", "--all", "--reason", "tin nhắn sai đang gửi")).stdout
    assert "2 campaign(s) paused" in said
    with engine.connect() as conn:
        got = dict(conn.execute(select(C.c.name, C.c.state)).all())
        why = set(conn.scalars(select(C.c.state_reason).where(C.c.state == "paused")))
    assert got == {"a": "paused", "b": "paused", "c": "cancelled"}
    assert why == {"tin nhắn sai đang gửi"}
    assert Dispatcher(engine, config, pool=sim_pool(config, SimulatedNetwork())).claim() == []
    assert "no active campaign" in ok(invoke(workdir, "stop", "--all", "--reason", "again")).stdout


# -- no new runs -------------------------------------------------------------------------------

def test_the_scheduler_plans_no_run_of_a_paused_or_cancelled_campaign_and_says_so(
        setup: Config, engine: Engine, workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert "daily" in CAMPAIGN
    sched = scheduler.CampaignScheduler(engine, setup, BackgroundScheduler(timezone=setup.timezone))
    sched.reload()
    assert sched.fire("daily", now=at("2020-08-18T08:00:03+07:00")) is not None
    lifecycle.change_campaign(engine, "daily", "pause", who=WHO, reason="tạm dừng")
    with caplog.at_level(logging.WARNING, logger="loa.scheduler"):
        assert sched.fire("daily", now=at("2020-08-19T08:00:03+07:00")) is None
    assert "campaign daily is paused by hoa.nguyen: tạm dừng: no run planned" in caplog.text
    lifecycle.change_campaign(engine, "daily", "cancel", who=WHO, reason="hết hạn")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="loa.scheduler"):
        assert sched.fire("daily", now=at("2020-08-20T08:00:03+07:00")) is None
    assert "campaign daily is cancelled" in caplog.text
    assert runs(engine) == [(at("2020-08-18T08:00:00+07:00"), "schedule")]
    lines = [r for r in caplog.records if "cancelled" in r.getMessage()]
    assert lines and lines[0].levelno == logging.WARNING


def test_a_manual_run_of_a_paused_campaign_is_refused_in_one_line(engine: Engine, workdir: Path,
                                                                   tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=4)
    config = load(workdir / "config.toml")
    plan_run(engine, config, make_campaign(workdir, "c"))
    lifecycle.change_campaign(engine, "c", "pause", who=WHO, reason="chờ")
    before = snapshot(engine)
    one_line_error(invoke(workdir, "campaigns", "run", "c", "--again"),
                   "campaign c is paused by hoa.nguyen: chờ: no run planned", "loa campaigns resume c")
    assert snapshot(engine) == before
