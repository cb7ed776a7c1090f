"""scheduler.py: campaign schedules become runs, once per scheduled time."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import func, select

import scheduler
from loa import db, importer
from loa.config import Config
from conftest import write

CAMPAIGN = """
name = "daily"
channels = ["sms"]
trigger = "schedule"
[segment]
areas = ["Sơn La"]
[sms]
template = "sms/t.j2"
[dates]
start = 2020-08-17
end = 2020-08-20
[schedule]
cron = "0 8 * * *"
grace = "2h"
"""


@pytest.fixture
def setup(workdir: Path, config: Config, engine, areas_csv: Path) -> Config:
    write(workdir / "templates" / "sms" / "t.j2", "Cài Bluezone, {{ area.name }}")
    write(workdir / "campaigns" / "daily.toml", CAMPAIGN)
    importer.run_import(engine, importer.AreasHandler(engine, areas_csv), areas_csv)
    subs = write(workdir / "subs.csv", "phone,area\n0912000001,116\n0912000002,125\n0912000003,66\n")
    importer.run_import(engine, importer.SubscribersHandler(engine, subs), subs)
    return config


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def runs(engine) -> list[tuple[datetime, str]]:
    with engine.connect() as conn:
        return conn.execute(select(db.runs.c.scheduled_for, db.runs.c.trigger).order_by(db.runs.c.id)).all()


def test_reload_builds_one_job_per_scheduled_campaign_with_a_stable_id(setup, engine):
    sched = scheduler.CampaignScheduler(engine, setup, BackgroundScheduler(timezone=setup.timezone))
    assert sched.reload() == ["campaign:daily"]
    assert sched.reload() == ["campaign:daily"]   # reloading replaces, never duplicates
    jobs = sched.scheduler.get_jobs()
    assert [j.id for j in jobs] == ["campaign:daily"]
    assert jobs[0].misfire_grace_time == 7200


def test_cron_is_evaluated_in_the_configured_zone_not_the_hosts(setup):
    times = scheduler.next_runs(setup, 2, now=at("2020-08-17T00:00:00+00:00"))["daily"]
    # 08:00 in Asia/Ho_Chi_Minh is 01:00 UTC, whatever TZ the test process has
    assert [t.astimezone(UTC).hour for t in times] == [1, 1]
    assert times[0].astimezone(UTC).date().isoformat() == "2020-08-17"


def test_a_firing_plans_the_run_of_its_scheduled_time_once(setup, engine):
    sched = scheduler.CampaignScheduler(engine, setup, BackgroundScheduler(timezone=setup.timezone))
    sched.reload()
    first = sched.fire("daily", now=at("2020-08-18T08:00:03+07:00"))
    again = sched.fire("daily", now=at("2020-08-18T08:40:00+07:00"))   # a restart within the grace
    assert first is not None and again is not None
    assert first.run_id == again.run_id and again.added == 0
    assert first.scheduled_for == at("2020-08-18T08:00:00+07:00")
    assert runs(engine) == [(at("2020-08-18T08:00:00+07:00"), "schedule")]
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(db.outbox)) == 2   # the two Sơn La residents


def test_a_firing_outside_the_grace_or_the_dates_plans_nothing(setup, engine):
    sched = scheduler.CampaignScheduler(engine, setup, BackgroundScheduler(timezone=setup.timezone))
    sched.reload()
    assert sched.fire("daily", now=at("2020-08-18T11:00:00+07:00")) is None    # 3 h late, grace 2 h
    assert sched.fire("daily", now=at("2020-08-25T08:00:00+07:00")) is None    # after the end date
    assert runs(engine) == []


def test_stop_at_goal_skips_runs_once_the_goal_is_met(setup, engine, workdir: Path):
    write(workdir / "campaigns" / "daily.toml", CAMPAIGN.replace('grace = "2h"', 'grace = "2h"\nstop_at_goal = true')
          + '\n[goal]\nevent = "installed"\nshare = 0.001\nof = "population"\n')
    sched = scheduler.CampaignScheduler(engine, setup, BackgroundScheduler(timezone=setup.timezone))
    sched.reload()
    assert sched.fire("daily", now=at("2020-08-17T08:00:00+07:00")) is not None
    with engine.begin() as conn:   # both residents install: 2 of 1,000 people is over the 0.1% goal
        importer.record_events(conn, [
            {"phone": p, "type": "installed", "occurred_at": at("2020-08-17T12:00:00+07:00"), "source": "t"}
            for p in ("+84912000001", "+84912000002")
        ])
    assert sched.fire("daily", now=at("2020-08-18T08:00:00+07:00")) is None
    assert len(runs(engine)) == 1


def test_invalid_schedules_are_reported_with_their_key(workdir: Path):
    from loa.campaign import parse_file

    bad = write(workdir / "campaigns" / "bad.toml", CAMPAIGN.replace('cron = "0 8 * * *"', 'cron = "0 25 * * *"'))
    _, problems = parse_file(bad)
    assert any("schedule.cron" in p for p in problems)
    both = write(workdir / "campaigns" / "both.toml", CAMPAIGN.replace('grace = "2h"', 'every = "6h"'))
    _, problems = parse_file(both)
    assert any("exactly one of" in p for p in problems)
    missing = write(workdir / "campaigns" / "missing.toml", CAMPAIGN.split("[schedule]")[0])
    _, problems = parse_file(missing)
    assert any("needs a [schedule] table" in p for p in problems)
