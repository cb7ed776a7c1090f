"""Four-eyes approval: which campaigns need it ([approval]), submit, approve, reject, launch.

Only an active campaign is planned, and only its approved version; the user who submitted
cannot approve; an approval of a version that changed since changes nothing; applying a
changed version sends the campaign back to draft.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from conftest import write
from sqlalchemy import func, select
from test_cli import invoke, ok, one_line_error
from test_versions import CAMPAIGN, SECOND, engine_of, run_versions, sent_texts
from test_versions import town as town  # noqa: PLC0414 - the fixture, shared

from loa import approval, audit, auth, db, versions
from loa.config import ApprovalPolicy, load
from loa.errors import LoaError
from loa.lifecycle import LifecycleError

OPT_OUT = "Tu choi QC soan TC gui 1234"
AD = CAMPAIGN.replace('"remind"', '"offer"').replace("channels =", f'advertising = true\nopt_out = "{OPT_OUT}"\nchannels =')


@pytest.fixture
def office(town: Path) -> Path:
    """Advertising needs approval; an operator and two approvers."""
    config = town / "config.toml"
    config.write_text(config.read_text(encoding="utf-8") + "\n[approval]\nadvertising = true\n", encoding="utf-8")
    write(town / "campaigns" / "offer.toml", AD)
    # the four subscribers agreed to advertising, which an advertising campaign needs (loa.consent)
    ok(invoke(town, "import", "consents", str(write(town / "consents.csv", "phone,purpose,time\n" + "".join(
        f"0912{i:06d},advertising,2026-01-01\n" for i in range(4))))))
    engine = engine_of()
    for name, role in (("olga", "operator"), ("anh", "approver"), ("binh", "approver")):
        auth.add_user(engine, "test", name, "a long password", role)
    engine.dispose()
    return town


def state(engine: Any, name: str = "offer") -> tuple[str, int | None, int | None, int | None]:
    C = db.campaigns
    with engine.connect() as conn:
        return tuple(conn.execute(select(C.c.state, C.c.current_version, C.c.submitted_version, C.c.approved_version)
                                  .where(C.c.name == name)).one())


def actions(engine: Any) -> list[tuple[str, str]]:
    return [(e.action, e.actor) for e in audit.query(engine, object="campaign:offer")
            if e.action in ("campaigns.submit", "campaigns.approve", "campaigns.reject", "campaigns.launch")]


def test_the_policy_sends_advertising_to_draft_and_lets_the_rest_go_active(office: Path) -> None:
    r = ok(invoke(office, "campaigns", "apply"))
    assert "offer: version 1 applied, draft; needs approval: it is advertising" in r.stdout, r.stdout
    assert "remind: version 1 applied, active" in r.stdout
    one_line_error(invoke(office, "campaigns", "run", "offer"), "campaign offer is draft: only an active campaign "
                   "is planned", "loa campaigns submit offer")
    ok(invoke(office, "campaigns", "run", "remind"))
    engine = engine_of()
    assert [v for _, v in run_versions(engine)] == [1]       # the public campaign's run only
    engine.dispose()


def test_submit_approve_launch_by_two_people_then_only_the_approved_version_is_planned(office: Path) -> None:
    ok(invoke(office, "campaigns", "apply"))
    ok(invoke(office, "campaigns", "submit", "offer", "--as", "olga"))
    shown = ok(invoke(office, "campaigns", "approve", "offer", "--as", "anh", "--yes", "--reason", "đã duyệt"))
    out = shown.stdout
    assert "offer version 1 (pending_approval, submitted by user:olga)" in out, out
    # what the approver sees: real samples framed for Decree 91, their encoding and parts, the audience
    assert "[QC] Chào Người" in out and "UCS-2" in out and "part(s)" in out and OPT_OUT in out
    assert "estimated cost" in out and "4 SMS part(s)" in out
    assert "campaign offer version 1 approved (was pending_approval) by user:anh: đã duyệt" in out
    one_line_error(invoke(office, "campaigns", "run", "offer"), "is approved", "loa campaigns launch offer")
    ok(invoke(office, "campaigns", "launch", "offer", "--as", "binh"))
    engine = engine_of()
    assert state(engine) == ("active", 1, 1, 1)
    assert actions(engine) == [("campaigns.submit", "user:olga"), ("campaigns.approve", "user:anh"),
                               ("campaigns.launch", "user:binh")]
    # the file is edited, not applied: the approved version is what is planned and sent
    write(office / "templates" / "sms" / "remind.j2", SECOND)
    ok(invoke(office, "campaigns", "run", "offer"))
    ok(invoke(office, "send"))
    assert run_versions(engine) == [(1, 1)]
    assert len(sent_texts(office)) == 4 and all(t.startswith("[QC] Chào ") for t in sent_texts(office))
    # a changed definition handed to the planner in code would be a new version, which needs approval
    from loa.campaign import load_one
    from loa.plan import plan_run

    config = load(office / "config.toml")
    with pytest.raises(LifecycleError, match="the definition given differs from its stored version 1 and, as a "
                                             "new version, needs approval: nothing planned"):
        plan_run(engine, config, load_one(config.campaigns_dir, "offer"), again=True)
    assert state(engine) == ("active", 1, 1, 1) and run_versions(engine) == [(1, 1)]   # nothing changed
    engine.dispose()


def test_the_user_who_submitted_cannot_approve_and_an_operator_cannot_either(office: Path) -> None:
    ok(invoke(office, "campaigns", "apply"))
    ok(invoke(office, "campaigns", "submit", "offer", "--as", "anh"))
    one_line_error(invoke(office, "campaigns", "approve", "offer", "--as", "anh", "--yes"),
                   "user:anh submitted version 1 and cannot approve it too", "four eyes")
    refused = invoke(office, "campaigns", "approve", "offer", "--as", "olga", "--yes")
    one_line_error(refused, "campaigns.approve is not allowed for role operator")
    assert refused.stdout == ""          # who may not approve is not shown the review, the audience's messages
    one_line_error(invoke(office, "campaigns", "approve", "offer", "--as", "nobody", "--yes"), "nobody")
    engine = engine_of()
    auth.add_user(engine, "test", "dak", "a long password", "approver", area_code="66")   # Đắk Nông's approver
    one_line_error(invoke(office, "campaigns", "approve", "offer", "--as", "dak", "--yes"),
                   "campaigns.approve on Sơn La (14) is outside the area of user dak")
    assert state(engine) == ("pending_approval", 1, 1, None)
    assert actions(engine) == [("campaigns.submit", "user:anh")]
    ok(invoke(office, "campaigns", "approve", "offer", "--as", "binh", "--yes"))
    assert state(engine) == ("approved", 1, 1, 1)
    engine.dispose()


def test_an_approval_of_a_version_that_changed_since_is_refused_and_changes_nothing(office: Path) -> None:
    ok(invoke(office, "campaigns", "apply"))
    ok(invoke(office, "campaigns", "submit", "offer", "--as", "olga"))
    engine = engine_of()
    config = load(office / "config.toml")
    reviewed = approval.review(engine, config, "offer")          # anh looks at version 1 ...
    write(office / "templates" / "sms" / "remind.j2", SECOND)     # ... while it is changed and applied
    assert "offer: version 2 applied, draft (was pending_approval)" in ok(invoke(office, "campaigns", "apply")).stdout
    with pytest.raises(versions.StaleVersion, match="version 1 is not its current version 2"):
        approval.decide(engine, config, "offer", "approve", auth.principal_for_user(engine, "anh"),
                        version=reviewed.version)
    one_line_error(invoke(office, "campaigns", "approve", "offer", "--as", "anh", "--yes"),
                   "changed since it was submitted (version 1 submitted, version 2 applied since, now draft)",
                   "nothing approved", code=2)
    assert state(engine) == ("draft", 2, 1, None)
    assert actions(engine) == [("campaigns.submit", "user:olga")]
    engine.dispose()


def test_editing_an_approved_or_active_campaign_sends_it_back_to_draft(office: Path) -> None:
    ok(invoke(office, "campaigns", "apply"))
    ok(invoke(office, "campaigns", "submit", "offer", "--as", "olga"))
    ok(invoke(office, "campaigns", "approve", "offer", "--as", "anh", "--yes"))
    ok(invoke(office, "campaigns", "launch", "offer", "--as", "anh"))
    ok(invoke(office, "campaigns", "run", "offer"))
    write(office / "campaigns" / "offer.toml", AD.replace("holdout = 0", "holdout = 0.5"))
    ok(invoke(office, "campaigns", "apply"))
    engine = engine_of()
    assert state(engine) == ("draft", 2, 1, None)
    # the planned run waits, its messages kept, until a version is approved and launched again
    ok(invoke(office, "send"))
    assert sent_texts(office) == []
    with engine.connect() as conn:
        assert conn.execute(select(db.outbox.c.state, func.count()).group_by(db.outbox.c.state)).all() == [
            ("planned", 4)]
    status = json.loads(ok(invoke(office, "status", "--format", "json")).stdout)
    assert [(r["campaign_state"], r["version"]) for r in status["runs"]] == [("draft", 1)]
    ok(invoke(office, "campaigns", "submit", "offer", "--as", "olga"))
    ok(invoke(office, "campaigns", "reject", "offer", "--as", "binh", "--reason", "holdout too large"))
    assert state(engine) == ("draft", 2, 2, None)
    one_line_error(invoke(office, "campaigns", "reject", "offer", "--as", "binh", "--reason", "again"),
                   "only a campaign that is pending_approval can be rejected")
    engine.dispose()


def test_the_scheduler_and_arrivals_plan_nothing_for_a_campaign_that_is_not_active(office: Path) -> None:
    from datetime import datetime

    import scheduler
    from loa.arrivals import greet

    write(office / "campaigns" / "daily.toml", CAMPAIGN.replace('"remind"', '"daily"').replace(
        "[window]", '[schedule]\ncron = "0 8 * * *"\n[window]').replace('channels =', 'trigger = "schedule"\nchannels ='))
    write(office / "campaigns" / "hello.toml", CAMPAIGN.replace('"remind"', '"hello"').replace(
        'channels =', 'trigger = "arrival"\nchannels ='))
    engine = engine_of()
    config = dataclasses.replace(load(office / "config.toml"), approval=ApprovalPolicy(always=True))
    versions.apply(engine, config, "test")
    sched = scheduler.CampaignScheduler(engine, config, BackgroundScheduler(timezone=config.timezone))
    sched.reload()
    try:
        assert sched.fire("daily", now=datetime.fromisoformat("2026-01-05T08:00:00+07:00")) is None
    finally:
        sched.shutdown(wait=False)
    assert greet(engine, config) == {"hello": 0}
    assert run_versions(engine) == []
    with pytest.raises(LoaError, match="campaign remind is draft"):
        from loa.plan import plan_run

        plan_run(engine, config, versions.load(engine, config, "remind"))
    engine.dispose()


def test_the_policy_in_configuration_is_checked_key_by_key(tmp_path: Path) -> None:
    from loa.config import from_mapping
    from loa.errors import ConfigError

    assert from_mapping({"approval": {"above_recipients": 100000}}).approval == ApprovalPolicy(above_recipients=100000)
    with pytest.raises(ConfigError, match="approval.above_recipients"):
        from_mapping({"approval": {"above_recipients": -1}})
    with pytest.raises(ConfigError, match="approval.always: unknown key|approval.alway"):
        from_mapping({"approval": {"alway": True}})
    assert versions.needs_approval(ApprovalPolicy(above_recipients=3), _campaign(False), 4) is not None
    assert versions.needs_approval(ApprovalPolicy(above_recipients=4), _campaign(False), 4) is None
    assert versions.needs_approval(ApprovalPolicy(advertising=True), _campaign(False), 4) is None
    assert versions.needs_approval(ApprovalPolicy(advertising=True), _campaign(True), 4) is not None


def _campaign(advertising: bool) -> Any:
    from loa.campaign import parse_text

    text = AD if advertising else CAMPAIGN
    campaign, problems = parse_text(text, Path("x.toml"))
    assert campaign is not None, problems
    return campaign



def approved_audience(engine: Any, name: str) -> int | None:
    with engine.connect() as conn:
        return conn.scalar(select(db.campaigns.c.approved_audience).where(db.campaigns.c.name == name))


def test_above_recipients_is_checked_again_against_the_audience_when_planning_and_launching(
        office: Path, tmp_path: Path) -> None:
    """A campaign that went active below the threshold, or was approved below it, needs approval
    once its audience grows above it: planning and launching refuse in one line, and send it
    back to draft (audited); an approval given above the threshold covers it."""
    from test_cli import subscribers_csv

    config = office / "config.toml"
    config.write_text(config.read_text(encoding="utf-8").replace(
        "[approval]\n", "[approval]\nabove_recipients = 4\n"), encoding="utf-8")
    assert "remind: version 1 applied, active" in ok(invoke(office, "campaigns", "apply")).stdout   # 4 people
    ok(invoke(office, "campaigns", "submit", "offer", "--as", "olga"))
    ok(invoke(office, "campaigns", "approve", "offer", "--as", "anh", "--yes"))     # approved for 4
    engine = engine_of()
    assert approved_audience(engine, "offer") == 4
    ok(invoke(office, "import", "subscribers", str(subscribers_csv(tmp_path, 6))))  # the audience grows to 6

    one_line_error(invoke(office, "campaigns", "run", "remind"),
                   "campaign remind: its audience of 6 is above [approval] above_recipients = 4, and it was not "
                   "approved: nothing planned; it is back in draft", "loa campaigns submit remind")
    one_line_error(invoke(office, "campaigns", "launch", "offer", "--as", "binh"),
                   "campaign offer: its audience of 6 is above [approval] above_recipients = 4, and it was approved "
                   "for 4: nothing launched; it is back in draft")
    assert state(engine, "remind") == ("draft", 1, None, None) and state(engine) == ("draft", 1, None, None)
    assert run_versions(engine) == []
    moved = audit.query(engine, action="campaigns.needs_approval")
    assert [(e.object_id, e.before["state"], e.after["state"]) for e in moved] == [   # type: ignore[index]
        ("remind", "active", "draft"), ("offer", "approved", "draft")]
    assert moved[1].actor == "user:binh" and "approved for 4" in moved[1].reason

    # approved for its audience above the threshold: planned and launched
    ok(invoke(office, "campaigns", "submit", "remind", "--as", "olga"))
    ok(invoke(office, "campaigns", "approve", "remind", "--as", "anh", "--yes"))
    ok(invoke(office, "campaigns", "launch", "remind", "--as", "binh"))
    assert approved_audience(engine, "remind") == 6
    ok(invoke(office, "campaigns", "run", "remind"))
    assert state(engine, "remind") == ("active", 1, 1, 1) and len(run_versions(engine)) == 1
    engine.dispose()
