"""Planning a run on the real database: outbox rows, idempotence, holdout, rollback, preview."""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import write
from sqlalchemy import case, event, func, select
from sqlalchemy.engine import Engine

from loa import db
from loa.campaign import Campaign, load_one
from loa.config import Config
from loa.errors import ConfigError
from loa.importer import AreasHandler, EventsHandler, SubscribersHandler, run_import
from loa.plan import plan_run, preview_counts
from loa.preview import preview

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
AT = datetime(2020, 8, 18, 8, 0, tzinfo=TZ)
S, O, R = db.subscribers, db.outbox, db.runs

TOWN = """
phone,area,name,opted_out,smartphone
0912000001,116,An,no,yes
0912000002,125,Bình,no,yes
0912000003,14,Chi,yes,yes
0912000004,116,Dũng,no,no
0912000005,66,Em,no,yes
0912000006,125,,yes,no
"""
TOWN_EVENTS = """
phone,type,time
0912000004,installed,2020-08-17T09:00:00+07:00
0912000006,installed,2020-08-17T10:00:00+07:00
0912000005,installed,2020-08-17T11:00:00+07:00
"""


@pytest.fixture
def town(engine: Engine, tmp_path: Path, areas_csv: Path) -> Engine:
    run_import(engine, AreasHandler(engine, areas_csv), areas_csv)
    subs = write(tmp_path / "town.csv", TOWN)
    assert run_import(engine, SubscribersHandler(engine, subs), subs).imported == 6
    events = write(tmp_path / "events.csv", TOWN_EVENTS)
    assert run_import(engine, EventsHandler(engine, events, TZ), events).imported == 3
    return engine


def campaign(config: Config, name: str = "reminder", *, holdout: float = 0.0, extra: str = "",
             segment: str = '[segment]\nareas = ["Sơn La"]\n',
             template: str = "Chào {{ subscriber.name or 'bạn' }} ở {{ area.name }}, hãy cài Bluezone.",
             channels: str = '["sms"]', tables: str = '[sms]\ntemplate = "sms/r.j2"\n') -> Campaign:
    write(config.templates_dir / "sms" / "r.j2", template)
    write(config.campaigns_dir / f"{name}.toml",
          f'name = "{name}"\nchannels = {channels}\nholdout = {holdout}\n'
          f'suppress_events = ["installed"]\n{extra}\n{segment}\n{tables}')
    return load_one(config.campaigns_dir, name)


def outbox(engine: Engine, run_id: int | None = None) -> dict[str, dict[str, Any]]:
    """The outbox by the last digit(s) of each phone."""
    q = select(S.c.phone, S.c.area_id.label("subscriber_area"), O).join(S, S.c.id == O.c.subscriber_id)
    if run_id is not None:
        q = q.where(O.c.run_id == run_id)
    with engine.connect() as conn:
        return {row["phone"][-1]: dict(row) for row in conn.execute(q).mappings()}


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(table))


def add_subscribers(engine: Engine, n: int, area_ids: list[int | None], start: int = 0) -> None:
    now = db.utcnow()
    rows = [{"phone": f"+8491{start + i:07d}", "carrier": "Vinaphone", "area_id": area_ids[i % len(area_ids)],
             "name": f"Người {i}", "language": "vi", "attributes": {}, "created_at": now, "updated_at": now}
            for i in range(n)]
    with engine.begin() as conn:
        conn.execute(S.insert(), rows)


def area_id(engine: Engine, code: str) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(db.areas.c.id).where(db.areas.c.code == code))


def held_out_ids(engine: Engine, run_id: int) -> set[int]:
    with engine.connect() as conn:
        return set(conn.scalars(select(O.c.subscriber_id).where(O.c.run_id == run_id, O.c.state == "held_out")))


# -- what a run writes ------------------------------------------------------------

def test_plan_run_writes_one_row_per_segment_member(config: Config, town: Engine) -> None:
    c = campaign(config)
    result = plan_run(town, config, c, scheduled_for=AT)
    assert result.created and result.added == 5 and result.audience == 5
    assert result.states == Counter({"planned": 2, "suppressed": 3})
    assert result.reasons == Counter({"opted_out": 2, "event:installed": 1})

    rows = outbox(town, result.run_id)
    assert set(rows) == {"1", "2", "3", "4", "6"}          # 5 is in Đắk Nông
    assert {k: (r["state"], r["reason"]) for k, r in rows.items()} == {
        "1": ("planned", None),
        "2": ("planned", None),
        "3": ("suppressed", "opted_out"),
        "4": ("suppressed", "event:installed"),
        "6": ("suppressed", "opted_out"),                   # opted out and installed: opting out comes first
    }
    for r in rows.values():
        assert (r["channel"], r["gateway"], r["attempts"]) == ("sms", "sim", 0)
        assert r["due_at"] == AT
        assert r["area_id"] == r["subscriber_area"] is not None
    with town.connect() as conn:
        run = conn.execute(select(R).where(R.c.id == result.run_id)).mappings().one()
        name = conn.scalar(select(db.campaigns.c.name).where(db.campaigns.c.id == run["campaign_id"]))
    assert name == "reminder"
    assert (run["status"], run["trigger"], run["scheduled_for"]) == ("planned", "manual", AT)
    assert run["definition"]["name"] == "reminder" and run["definition"]["suppress_events"] == ["installed"]


def test_zalo_first_campaign_plans_zalo_rows(config: Config, town: Engine) -> None:
    write(config.templates_dir / "zalo" / "z.toml", 'template_id = "1"\n[data]\nname = "{{ subscriber.name }}"\n')
    c = campaign(config, channels='["zalo", "sms"]',
                 tables='[zalo]\ntemplate = "zalo/z.toml"\ngateway = "jsonl"\n[sms]\ntemplate = "sms/r.j2"\n')
    result = plan_run(town, config, c, scheduled_for=AT)
    assert {(r["channel"], r["gateway"]) for r in outbox(town, result.run_id).values()} == {("zalo", "jsonl")}


def test_same_run_again_adds_nothing_and_a_new_run_is_a_new_set(config: Config, town: Engine, tmp_path: Path) -> None:
    c = campaign(config)
    first = plan_run(town, config, c, scheduled_for=AT)
    again = plan_run(town, config, c, scheduled_for=AT.astimezone(UTC))       # the same instant
    assert (again.run_id, again.created, again.added) == (first.run_id, False, 0)
    assert again.states == first.states and again.reasons == first.reasons
    assert count(town, O) == 5 and count(town, R) == 1

    # a newcomer: planning the same run again completes it, and touches nobody else
    before = outbox(town, first.run_id)
    newcomer = write(tmp_path / "new.csv", "phone,area\n0912000009,125\n")
    run_import(town, SubscribersHandler(town, newcomer), newcomer)
    completed = plan_run(town, config, c, scheduled_for=AT)
    assert (completed.run_id, completed.added, completed.audience) == (first.run_id, 1, 6)
    after = outbox(town, first.run_id)
    assert {k: after[k]["id"] for k in before} == {k: r["id"] for k, r in before.items()}
    assert after["9"]["state"] == "planned"

    later = plan_run(town, config, c, scheduled_for=AT + timedelta(days=1))
    assert later.created and later.run_id != first.run_id and later.added == 6
    assert count(town, O) == 12 and count(town, R) == 2
    with town.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(db.campaigns)) == 1


def test_unknown_gateway_is_a_config_error_and_writes_nothing(config: Config, town: Engine) -> None:
    c = campaign(config, tables='[sms]\ntemplate = "sms/r.j2"\ngateway = "nope"\n')
    with pytest.raises(ConfigError, match=r"unknown gateway 'nope' \(configured: jsonl, sim\)"):
        plan_run(town, config, c, scheduled_for=AT)
    assert count(town, db.campaigns) == count(town, R) == count(town, O) == 0


def test_unknown_area_writes_nothing(config: Config, town: Engine) -> None:
    from loa.segments import SegmentError

    c = campaign(config, segment='[segment]\nareas = ["Hà Nội"]\n')
    with pytest.raises(SegmentError):
        plan_run(town, config, c, scheduled_for=AT)
    assert count(town, db.campaigns) == count(town, R) == count(town, O) == 0


def test_failure_after_the_insert_rolls_the_whole_run_back(config: Config, town: Engine) -> None:
    c = campaign(config)
    inserted: list[int] = []

    def fail_after_outbox_insert(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO OUTBOX"):
            inserted.append(cursor.rowcount)
            raise RuntimeError("disk full")

    event.listen(town, "after_cursor_execute", fail_after_outbox_insert)
    try:
        with pytest.raises(RuntimeError, match="disk full"):
            plan_run(town, config, c, scheduled_for=AT)
    finally:
        event.remove(town, "after_cursor_execute", fail_after_outbox_insert)
    assert inserted == [5]                                   # the rows were written, then the failure hit
    assert count(town, R) == 0 and count(town, O) == 0 and count(town, db.campaigns) == 0

    result = plan_run(town, config, c, scheduled_for=AT)    # and planning again works from scratch
    assert result.created and result.added == 5


def test_failure_in_the_last_step_rolls_back(config: Config, town: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    import loa.plan

    def broken_update(*args: Any, **kw: Any) -> Any:
        raise RuntimeError("connection lost")

    monkeypatch.setattr(loa.plan, "update", broken_update)
    with pytest.raises(RuntimeError, match="connection lost"):
        plan_run(town, config, campaign(config), scheduled_for=AT)
    assert count(town, R) == 0 and count(town, O) == 0


def test_a_plan_holds_up_only_its_own_campaign(config: Config, town: Engine, tmp_path: Path) -> None:
    """PostgreSQL: while campaign alpha's plan is inside its transaction (its insert done, not
    committed), bravo is planned and applied; a second plan of alpha waits, then adds nothing."""
    from test_concurrent_apply import HeldPlan

    from loa import versions

    if town.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer: every plan and apply waits for the one being written")
    alpha, bravo = campaign(config, "alpha"), campaign(config, "bravo")
    changed = tmp_path / "changed"
    changed.mkdir()
    write(changed / "bravo.toml", (config.campaigns_dir / "bravo.toml").read_text().replace("holdout = 0.0",
                                                                                            "holdout = 0.5"))

    def bravo_now() -> tuple[Any, Any]:
        return (plan_run(town, config, bravo, scheduled_for=AT),
                versions.apply(town, config, "os:t", folder=changed, templates=config.templates_dir))

    with HeldPlan(town, "alpha-1") as held:
        held.call("alpha-1", plan_run, town, config, alpha, scheduled_for=AT)
        planned_bravo, applied = held.completes("bravo", bravo_now,
                                                why="planning and applying bravo waited for alpha's plan to commit")
        held.waits("alpha-2", plan_run, town, config, alpha, scheduled_for=AT,
                   why="alpha was planned twice at once")
    results = held.outcome()
    first, second = results["alpha-1"], results["alpha-2"]
    assert (first.created, first.added) == (True, 5)
    assert (second.run_id, second.created, second.added) == (first.run_id, False, 0)
    assert planned_bravo.created and planned_bravo.added == 5
    assert [(a.name, a.version, a.added) for a in applied.campaigns] == [("bravo", 2, True)]
    with town.connect() as conn:
        ids = conn.scalars(select(O.c.subscriber_id).where(O.c.run_id == first.run_id)).all()
        assert len(ids) == len(set(ids)) == 5
        numbers = conn.execute(select(db.campaigns.c.name, db.campaign_versions.c.version)
                               .join(db.campaigns, db.campaigns.c.id == db.campaign_versions.c.campaign_id)
                               .order_by(db.campaigns.c.name, db.campaign_versions.c.version)).all()
        assert [tuple(n) for n in numbers] == [("alpha", 1), ("bravo", 1), ("bravo", 2)]
        runs = conn.execute(select(db.campaigns.c.name, R.c.campaign_version).join(
            db.campaigns, db.campaigns.c.id == R.c.campaign_id).order_by(db.campaigns.c.name)).all()
        assert [tuple(r) for r in runs] == [("alpha", 1), ("bravo", 1)]


# -- holdout ------------------------------------------------------------------------

def test_holdout_is_deterministic_per_campaign_and_subscriber(config: Config, engine: Engine,
                                                              areas_csv: Path) -> None:
    run_import(engine, AreasHandler(engine, areas_csv), areas_csv)
    add_subscribers(engine, 400, [area_id(engine, "116"), area_id(engine, "125")])
    c = campaign(config, holdout=0.25)
    one = plan_run(engine, config, c, scheduled_for=AT)
    two = plan_run(engine, config, c, scheduled_for=AT + timedelta(days=1))
    held = held_out_ids(engine, one.run_id)
    assert held == held_out_ids(engine, two.run_id)
    sd = math.sqrt(400 * 0.25 * 0.75)
    assert abs(len(held) - 100) <= 4.5 * sd
    assert one.states == Counter({"planned": 400 - len(held), "held_out": len(held)})

    other = plan_run(engine, config, campaign(config, "other-campaign", holdout=0.25), scheduled_for=AT)
    held_other = held_out_ids(engine, other.run_id)
    assert abs(len(held_other) - 100) <= 4.5 * sd
    assert held_other != held

    # raising the holdout only adds people to the control group
    bigger = plan_run(engine, config, campaign(config, holdout=0.5), scheduled_for=AT + timedelta(days=2))
    assert held < held_out_ids(engine, bigger.run_id)


def test_suppressed_subscribers_are_not_held_out(config: Config, town: Engine) -> None:
    result = plan_run(town, config, campaign(config, holdout=0.99), scheduled_for=AT)
    assert result.states["suppressed"] == 3 and result.reasons == Counter({"opted_out": 2, "event:installed": 1})
    assert result.states["held_out"] + result.states["planned"] == 2


def test_holdout_is_unbiased_across_areas(config: Config, engine: Engine, areas_csv: Path) -> None:
    run_import(engine, AreasHandler(engine, areas_csv), areas_csv)
    a, b = area_id(engine, "116"), area_id(engine, "66")
    rng = random.Random(20200817)
    add_subscribers(engine, 20_000, [rng.choice((a, b)) for _ in range(20_000)])
    holdout = 0.1
    result = plan_run(engine, config, campaign(config, holdout=holdout, segment=""), scheduled_for=AT)
    assert result.audience == 20_000
    with engine.connect() as conn:
        by_area = {
            area: (n, held)
            for area, n, held in conn.execute(
                select(O.c.area_id, func.count(), func.sum(case((O.c.state == "held_out", 1), else_=0)))
                .where(O.c.run_id == result.run_id).group_by(O.c.area_id)
            )
        }
    assert set(by_area) == {a, b}
    for area, (n, held) in by_area.items():
        assert n > 9_000
        tolerance = 4.5 * math.sqrt(holdout * (1 - holdout) / n)   # ~0.0135 for 10,000 subscribers
        assert abs(held / n - holdout) <= tolerance, (area, held / n)


def test_holdout_groups_of_two_campaigns_are_independent(config: Config, engine: Engine,
                                                          areas_csv: Path) -> None:
    """Two campaigns aimed at the same people: their control groups overlap by chance only."""
    run_import(engine, AreasHandler(engine, areas_csv), areas_csv)
    n, holdout = 20_000, 0.1
    add_subscribers(engine, n, [area_id(engine, "116")])
    names = ["bluezone-reminder", "tourist-greeting", "reminder", "flood-alert"]
    groups = [held_out_ids(engine, plan_run(engine, config, campaign(config, name, holdout=holdout),
                                            scheduled_for=AT).run_id) for name in names]
    expected = n * holdout * holdout            # 200 shared if independent
    sd = math.sqrt(n * holdout * holdout * (1 - holdout * holdout))
    for i in range(len(groups)):
        for j in range(i + 1, len(groups)):
            shared = len(groups[i] & groups[j])
            assert abs(shared - expected) <= 4.5 * sd, (names[i], names[j], shared)


def test_sql_holdout_hash_matches_the_python_definition(config: Config, engine: Engine, areas_csv: Path) -> None:
    from loa.plan import HASH_PRIME, holdout_hash, holdout_salt

    run_import(engine, AreasHandler(engine, areas_csv), areas_csv)
    add_subscribers(engine, 300, [area_id(engine, "116")])
    c = campaign(config, holdout=0.3)
    held = held_out_ids(engine, plan_run(engine, config, c, scheduled_for=AT).run_id)
    with engine.connect() as conn:
        ids = conn.scalars(select(O.c.subscriber_id)).all()
    salt = holdout_salt(c.name)
    assert held == {i for i in ids if holdout_hash(i, salt) < int(0.3 * HASH_PRIME)}


# -- preview ------------------------------------------------------------------------

def test_preview_counts_equal_what_planning_writes(config: Config, town: Engine) -> None:
    add_subscribers(town, 200, [area_id(town, "116"), area_id(town, "14"), None], start=100)
    c = campaign(config, holdout=0.3)
    states, reasons = preview_counts(town, config, c)
    assert count(town, O) == 0 and count(town, R) == 0      # a preview writes nothing
    assert states["held_out"] > 0 and states["planned"] > 0
    result = plan_run(town, config, c, scheduled_for=AT)
    assert (states, reasons) == (result.states, result.reasons)
    assert sum(states.values()) == result.added == 5 + 134


def test_preview_renders_planned_recipients_with_masked_phones(config: Config, town: Engine) -> None:
    result = preview(town, config, campaign(config), count=3)
    assert result.errors == []
    assert (result.audience, result.planned, result.held_out) == (5, 2, 0)
    assert result.reasons == Counter({"opted_out": 2, "event:installed": 1})
    assert [(s.who, s.area, s.channel, s.text) for s in result.samples] == [
        ("An +8491****001", "Thành phố Sơn La", "sms", "Chào An ở Thành phố Sơn La, hãy cài Bluezone."),
        ("Bình +8491****002", "Huyện Mai Sơn", "sms", "Chào Bình ở Huyện Mai Sơn, hãy cài Bluezone."),
    ]
    assert result.samples[0].detail == "UCS-2, 45 units, 1 part(s)"
    assert result.estimated_parts == 2
    assert count(town, O) == 0


def test_preview_reports_template_errors_per_recipient(config: Config, town: Engine) -> None:
    result = preview(town, config, campaign(config, template="Chào {{ attr.zalo_name }}"), count=3)
    assert result.samples == []
    assert result.errors == [
        "An +8491****001: template 'sms/r.j2': 'dict object' has no attribute 'zalo_name'",
        "Bình +8491****002: template 'sms/r.j2': 'dict object' has no attribute 'zalo_name'",
    ]
    assert result.planned == 2


def test_preview_of_a_zalo_campaign(config: Config, town: Engine) -> None:
    write(config.templates_dir / "zalo" / "z.toml",
          'template_id = "231455"\n[data]\nname = "{{ subscriber.name }}"\ndistrict = "{{ area.name }}"\n'
          'province = "{{ area.parent.name }}"\n')
    c = campaign(config, channels='["zalo"]', tables='[zalo]\ntemplate = "zalo/z.toml"\n')
    result = preview(town, config, c, count=1)
    assert [(s.who, s.channel, s.text, s.detail) for s in result.samples] == [
        ("An +8491****001", "zalo", "name: An\ndistrict: Thành phố Sơn La\nprovince: Sơn La", "ZNS template 231455"),
    ]


# -- a manual run again: refused within the campaign's repeat interval, and outside its dates -------

MANUAL = """
name = "remind"
channels = ["sms"]
validity_hours = {validity}
[segment]
areas = ["Sơn La"]
[sms]
template = "sms/remind.j2"
[window]
start = "00:00"
end = "24:00"
"""


@pytest.fixture
def manual(workdir: Path, tmp_path: Path) -> Path:
    """Five subscribers in Sơn La and a manual campaign for them, valid 24 hours."""
    from conftest import AREAS_CSV
    from test_cli import invoke, ok, subscribers_csv

    write(workdir / "campaigns" / "remind.toml", MANUAL.format(validity=24))
    write(workdir / "templates" / "sms" / "remind.j2", "Chào {{ subscriber.name }}, hãy cài Bluezone.\n")
    ok(invoke(workdir, "init"))
    ok(invoke(workdir, "import", "areas", str(write(tmp_path / "areas.csv", AREAS_CSV))))
    ok(invoke(workdir, "import", "subscribers", str(subscribers_csv(tmp_path, 5))))
    return workdir


def _runs(workdir: Path) -> list[tuple[int, datetime]]:
    import os

    engine = db.make_engine(os.environ["LOA_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(select(R.c.id, R.c.scheduled_for).order_by(R.c.id))]
    finally:
        engine.dispose()


def test_a_second_manual_run_within_validity_is_refused_and_again_sends_a_second_round(manual: Path) -> None:
    from test_cli import invoke, ok, one_line_error

    ok(invoke(manual, "campaigns", "run", "remind"))
    [(first, when)] = _runs(manual)
    local = when.astimezone(TZ)
    for _ in range(2):
        line = one_line_error(invoke(manual, "campaigns", "run", "remind"), code=2)
        assert f"campaign remind already has run {first} (manual) for {local:%Y-%m-%d %H:%M} +07" in line, line
        assert "within validity_hours (24 h) of this one: its audience would get the same message again; " \
               "nothing planned" in line
        assert "`loa campaigns run remind --again` plans a deliberate second round" in line
    assert len(_runs(manual)) == 1
    r = ok(invoke(manual, "send"))
    assert "sent: 5 " in r.stdout, r.stdout                # everyone once, not three times

    r = ok(invoke(manual, "campaigns", "run", "remind", "--again"))
    assert re.search(r"run \d+ of remind planned 5 rows", r.stdout), r.stdout
    assert len(_runs(manual)) == 2
    assert "sent: 5 " in ok(invoke(manual, "send")).stdout


def test_the_same_at_again_completes_its_run_and_is_not_refused(manual: Path) -> None:
    from test_cli import invoke, ok

    at = (db.utcnow() - timedelta(hours=1)).astimezone(TZ).replace(microsecond=0).isoformat()
    ok(invoke(manual, "campaigns", "run", "remind", "--at", at))
    r = ok(invoke(manual, "campaigns", "run", "remind", "--at", at))
    assert re.search(r"run \d+ of remind already planned; added 0 rows", r.stdout), r.stdout
    assert len(_runs(manual)) == 1


def test_a_manual_run_is_refused_within_the_schedules_own_interval(manual: Path) -> None:
    """every = "6h": a run 7 hours after another is a new round, one 5 hours after it is not,
    although the validity (24 h) spans both."""
    from test_cli import invoke, ok, one_line_error

    write(manual / "campaigns" / "remind.toml",
          'trigger = "schedule"\n' + MANUAL.format(validity=24) + '[schedule]\nevery = "6h"\n')
    now = db.utcnow().replace(microsecond=0)
    ok(invoke(manual, "campaigns", "run", "remind", "--at", (now - timedelta(hours=7)).isoformat()))
    ok(invoke(manual, "campaigns", "run", "remind"))
    line = one_line_error(invoke(manual, "campaigns", "run", "remind", "--at",
                                 (now + timedelta(hours=5)).isoformat()), "--again", code=2)
    assert "within its schedule's interval (6 h)" in line, line
    assert len(_runs(manual)) == 2


def test_manual_runs_keep_to_the_campaigns_dates_unless_told_otherwise(manual: Path) -> None:
    from test_cli import invoke, ok, one_line_error

    write(manual / "campaigns" / "remind.toml",
          MANUAL.format(validity=12) + "[dates]\nstart = 2020-08-17\nend = 2020-08-31\n")
    line = one_line_error(invoke(manual, "campaigns", "run", "remind"), code=2)
    assert "campaign remind runs from 2020-08-17 to 2020-08-31 ([dates] in " in line, line
    assert "remind.toml); a run now would be on " in line and "--outside-dates` runs it anyway" in line
    assert _runs(manual) == []
    ok(invoke(manual, "campaigns", "run", "remind", "--at", "2020-08-18T08:00:00+07:00"))    # within them
    ok(invoke(manual, "campaigns", "run", "remind", "--outside-dates"))
    assert len(_runs(manual)) == 2
    # the override is for the dates only: a second round still needs --again
    one_line_error(invoke(manual, "campaigns", "run", "remind", "--outside-dates"), "--again", code=2)


def test_the_repeat_interval_of_a_cron_schedule_is_the_gap_its_run_stands_in() -> None:
    from loa.campaign import Schedule
    from loa.plan import repeat_interval

    def interval(schedule: Schedule, at: datetime) -> tuple[timedelta, str]:
        c = Campaign(name="c", path=Path("c.toml"), description="", advertising=False, channels=(), segment={},
                     holdout=0.0, suppress_events=(), validity_hours=12.0, trigger="schedule",
                     window=(datetime.min.time(), datetime.max.time()), start=None, end=None, goal=None,
                     schedule=schedule)
        return repeat_interval(c, TZ, at)

    weekdays = Schedule(cron="0 8 * * 1-5")
    friday = datetime(2026, 12, 4, 12, 0, tzinfo=TZ)
    assert interval(weekdays, friday) == (timedelta(days=3), "its schedule's interval")      # to Monday
    assert interval(weekdays, friday - timedelta(days=2))[0] == timedelta(days=1)
    assert interval(Schedule(cron="0 8,20 * * *"), friday)[0] == timedelta(hours=12)
    assert interval(Schedule(every=6 * 3600.0), friday)[0] == timedelta(hours=6)
    assert interval(Schedule(at=friday), friday) == (timedelta(hours=12), "validity_hours")
