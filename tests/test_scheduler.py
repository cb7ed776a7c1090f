"""scheduler.py: campaign schedules become runs, once per scheduled time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
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
    jobs = [j for j in sched.scheduler.get_jobs() if j.id != "retention"]   # the daily purge: its own test
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


def statuses(engine) -> list[tuple[datetime, str, str]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            select(db.runs.c.scheduled_for, db.runs.c.status, db.runs.c.note).order_by(db.runs.c.scheduled_for))]


def wait_for(check, seconds: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_a_running_scheduler_fires_at_eight_local_time(setup, engine):
    import time_machine

    # two seconds before 08:00 in Sơn La; the clock ticks, APScheduler's thread waits for real
    with time_machine.travel(at("2020-08-18T07:59:58.500+07:00"), tick=True):
        sched = scheduler.CampaignScheduler(engine, setup)
        sched.start()
        try:
            assert wait_for(lambda: len(runs(engine)) == 1), "the 08:00 run was not planned"
        finally:
            sched.shutdown()
    assert runs(engine) == [(at("2020-08-18T08:00:00+07:00"), "schedule")]


def test_a_restart_within_the_grace_plans_the_missed_run_once(setup, engine):
    import time_machine

    with time_machine.travel(at("2020-08-17T08:00:01+07:00")):
        first = scheduler.CampaignScheduler(engine, setup, BackgroundScheduler(timezone=setup.timezone))
        first.reload()
        first.fire("daily")
    for _ in range(2):   # down over the next 08:00, back at 08:30 (grace 2 h), then restarted again
        with time_machine.travel(at("2020-08-18T08:30:00+07:00")):
            again = scheduler.CampaignScheduler(engine, setup, BackgroundScheduler(timezone=setup.timezone))
            again.reload()
            assert again.catch_up() == {}
    assert [(t, s) for t, s, _ in statuses(engine)] == [
        (at("2020-08-17T08:00:00+07:00"), "planned"), (at("2020-08-18T08:00:00+07:00"), "planned")]


def test_runs_missed_past_the_grace_are_recorded_with_the_reason(setup, engine):
    import time_machine

    with time_machine.travel(at("2020-08-17T08:00:01+07:00")):
        sched = scheduler.CampaignScheduler(engine, setup, BackgroundScheduler(timezone=setup.timezone))
        sched.reload()
        sched.fire("daily")
    # down until 12:00 on the 19th: the 18th and the 19th are both past the 2 h grace
    with time_machine.travel(at("2020-08-19T12:00:00+07:00")):
        sched = scheduler.CampaignScheduler(engine, setup, BackgroundScheduler(timezone=setup.timezone))
        sched.reload()
        missed = sched.catch_up()
        assert sched.catch_up() == {}          # recorded once: a second start finds nothing new
    assert missed == {"daily": [at("2020-08-18T08:00:00+07:00"), at("2020-08-19T08:00:00+07:00")]}
    rows = statuses(engine)
    assert [(t, s) for t, s, _ in rows] == [
        (at("2020-08-17T08:00:00+07:00"), "planned"),
        (at("2020-08-18T08:00:00+07:00"), "missed"),
        (at("2020-08-19T08:00:00+07:00"), "missed"),
    ]
    assert "no scheduler was running" in rows[1][2] and "7200 s grace" in rows[1][2]
    with engine.connect() as conn:   # a missed run sends nothing
        assert conn.scalar(select(func.count()).select_from(db.outbox)) == 2


def test_a_campaign_that_never_ran_has_no_past(setup, engine):
    import time_machine

    with time_machine.travel(at("2020-08-19T12:00:00+07:00")):   # 08:00 is past the grace: nothing to do
        sched = scheduler.CampaignScheduler(engine, setup, BackgroundScheduler(timezone=setup.timezone))
        sched.reload()
        assert sched.catch_up() == {}
    assert statuses(engine) == []
    with time_machine.travel(at("2020-08-20T09:00:00+07:00")):   # within the grace: planned now
        sched.catch_up()
    assert [(t, s) for t, s, _ in statuses(engine)] == [(at("2020-08-20T08:00:00+07:00"), "planned")]


def test_a_paused_scheduler_records_the_firing_it_skipped(setup, engine):
    """A standby's paused scheduler, or a stalled process: APScheduler's own misfire is recorded."""
    import time_machine

    with time_machine.travel(at("2020-08-18T07:50:00+07:00"), tick=True) as traveller:  # ten minutes for a slow start
        sched = scheduler.CampaignScheduler(engine, setup)
        sched.start()
        try:
            sched.scheduler.pause()
            traveller.move_to(at("2020-08-18T10:30:00+07:00"))     # 2.5 h later, past the 2 h grace
            sched.scheduler.resume()
            assert wait_for(lambda: len(statuses(engine)) == 1), "the skipped firing was not recorded"
        finally:
            sched.shutdown()
    [(when, status, note)] = statuses(engine)
    assert (when, status) == (at("2020-08-18T08:00:00+07:00"), "missed")
    assert "paused" in note


def test_goal_met_removes_the_job(setup, engine, workdir: Path):
    write(workdir / "campaigns" / "daily.toml", CAMPAIGN.replace('grace = "2h"', 'grace = "2h"\nstop_at_goal = true')
          + '\n[goal]\nevent = "installed"\nshare = 0.001\nof = "population"\n')
    sched = scheduler.CampaignScheduler(engine, setup, BackgroundScheduler(timezone=setup.timezone))
    sched.reload()
    sched.fire("daily", now=at("2020-08-17T08:00:00+07:00"))
    assert sched.scheduler.get_job("campaign:daily") is not None
    with engine.begin() as conn:
        importer.record_events(conn, [
            {"phone": p, "type": "installed", "occurred_at": at("2020-08-17T12:00:00+07:00"), "source": "t"}
            for p in ("+84912000001", "+84912000002")
        ])
    assert sched.fire("daily", now=at("2020-08-18T08:00:00+07:00")) is None
    assert sched.scheduler.get_job("campaign:daily") is None


def test_a_reload_requested_from_anywhere_reaches_the_running_scheduler(setup, engine, workdir: Path, monkeypatch):
    monkeypatch.setattr(scheduler, "RELOAD_POLL_SECONDS", 1)
    sched = scheduler.CampaignScheduler(engine, setup)
    sched.start()
    try:
        assert sorted(j.id for j in sched.scheduler.get_jobs() if j.id.startswith("campaign:")) == ["campaign:daily"]
        write(workdir / "campaigns" / "weekly.toml", CAMPAIGN.replace('"daily"', '"weekly"').replace(
            '"0 8 * * *"', '"0 8 * * 1"'))
        scheduler.request_reload(engine)         # what `loa campaigns reload` does, on any machine
        assert wait_for(lambda: sched.scheduler.get_job("campaign:weekly") is not None, 8), "reload not picked up"
    finally:
        sched.shutdown()


def test_cli_reload_refuses_broken_campaigns_and_schedule_lists_next_runs(setup, engine, workdir: Path):
    from click.testing import CliRunner

    from loa.cli import main

    runner = CliRunner()
    listed = runner.invoke(main, ["--config", str(setup.path), "campaigns", "schedule", "-n", "2"])
    assert listed.exit_code == 0, listed.output
    assert "daily" in listed.output
    ok = runner.invoke(main, ["--config", str(setup.path), "campaigns", "reload"])
    assert ok.exit_code == 0, ok.output
    assert "reload requested" in ok.output
    assert scheduler._reload_requested(engine) is not None
    write(workdir / "campaigns" / "broken.toml", CAMPAIGN.replace('"daily"', '"broken"').replace("cron", "kron"))
    before = scheduler._reload_requested(engine)
    bad = runner.invoke(main, ["--config", str(setup.path), "campaigns", "reload"])
    assert bad.exit_code != 0
    assert "nothing reloaded" in bad.output and "broken.toml" in bad.output
    assert scheduler._reload_requested(engine) == before


def test_cron_weekdays_are_cron_weekdays(setup, workdir: Path):
    """``1-5`` is Monday to Friday, as in cron, though APScheduler counts Monday as 0."""
    write(workdir / "campaigns" / "daily.toml", CAMPAIGN.replace('"0 8 * * *"', '"0 8 * * 1-5"').replace(
        "end = 2020-08-20", "end = 2020-08-31"))
    times = scheduler.next_runs(setup, 6, now=at("2020-08-14T09:00:00+07:00"))["daily"]   # a Friday
    assert [t.astimezone(setup.timezone).strftime("%a %d") for t in times] == [
        "Mon 17", "Tue 18", "Wed 19", "Thu 20", "Fri 21", "Mon 24"]


def test_a_cron_with_both_a_day_of_month_and_a_weekday_is_refused(workdir: Path):
    from loa.campaign import parse_file

    both = write(workdir / "campaigns" / "both.toml", CAMPAIGN.replace('"0 8 * * *"', '"0 8 1 * 1"'))
    _, problems = parse_file(both)
    assert any("schedule.cron" in p and "both set" in p for p in problems), problems


def test_an_interval_without_a_start_date_fires_and_catches_up(setup, engine, workdir: Path):
    import time_machine

    write(workdir / "campaigns" / "daily.toml", CAMPAIGN.replace('cron = "0 8 * * *"', 'every = "6h"')
          .replace("[dates]\nstart = 2020-08-17\nend = 2020-08-20\n", ""))
    sched = scheduler.CampaignScheduler(engine, setup, BackgroundScheduler(timezone=setup.timezone))
    sched.reload()
    # counted from local midnight: 00:00, 06:00, 12:00, 18:00 in Sơn La, whenever the trigger is built
    first = sched.fire("daily", now=at("2020-08-18T12:00:05+07:00"))
    assert first is not None and first.scheduled_for == at("2020-08-18T12:00:00+07:00")
    with time_machine.travel(at("2020-08-19T07:00:00+07:00")):   # down from 12:05 until 07:00 the next day
        missed = sched.catch_up()
    assert missed == {"daily": [at(f"2020-08-{d}T{h}:00:00+07:00") for d, h in (("18", 18), ("19", "00"))]}
    assert [(t, s) for t, s, _ in statuses(engine)][-1] == (at("2020-08-19T06:00:00+07:00"), "planned")


def test_a_one_shot_campaign_is_caught_up_once_and_then_left_alone(setup, engine, workdir: Path):
    import time_machine

    write(workdir / "campaigns" / "daily.toml", CAMPAIGN.replace('cron = "0 8 * * *"', "at = 2020-08-18T08:00:00"))
    for moment in ("2020-08-18T08:30:00+07:00", "2020-08-18T09:00:00+07:00", "2020-08-25T09:00:00+07:00"):
        with time_machine.travel(at(moment)):     # three starts: within the grace, again, a week later
            sched = scheduler.CampaignScheduler(engine, setup, BackgroundScheduler(timezone=setup.timezone))
            sched.reload()
            assert sched.catch_up() == {}
    assert [(t, s) for t, s, _ in statuses(engine)] == [(at("2020-08-18T08:00:00+07:00"), "planned")]


def test_a_one_shot_long_past_that_never_ran_is_not_reported(setup, engine, workdir: Path):
    import time_machine

    write(workdir / "campaigns" / "daily.toml", CAMPAIGN.replace('cron = "0 8 * * *"', "at = 2020-08-18T08:00:00"))
    with time_machine.travel(at("2020-08-25T09:00:00+07:00")):
        sched = scheduler.CampaignScheduler(engine, setup, BackgroundScheduler(timezone=setup.timezone))
        sched.reload()
        assert sched.catch_up() == {}
        assert sched.fire("daily") is None
    assert statuses(engine) == []


def test_the_scheduler_purges_personal_data_past_its_retention_once_a_day(setup, engine, monkeypatch):
    """The daily job ``retention`` (only the elected scheduler has jobs) deletes arrivals older than
    [retention] arrivals_days, and keeps the recent ones."""
    monkeypatch.setenv("LOA_SUBJECT_KEY", "a-test-key-for-the-keyed-hash-0123456789")
    sched = scheduler.CampaignScheduler(engine, setup, BackgroundScheduler(timezone=setup.timezone))
    sched.reload()
    sched.reload()
    jobs = [j for j in sched.scheduler.get_jobs() if j.id == "retention"]
    assert len(jobs) == 1
    job = jobs[0]
    first = job.trigger.get_next_fire_time(None, at("2030-03-12T09:00:00+07:00"))
    assert first == at("2030-03-13T03:17:00+07:00")
    assert job.trigger.get_next_fire_time(first, first + timedelta(seconds=1)) == first + timedelta(days=1)

    now = db.utcnow()
    with engine.begin() as conn:
        S, A = db.subscribers, db.arrivals
        sid, area = conn.execute(select(S.c.id, S.c.area_id).where(S.c.phone == "+84912000001")).one()
        for days in (setup.retention.arrivals_days + 1, setup.retention.arrivals_days - 1):
            conn.execute(A.insert().values(subscriber_id=sid, area_id=area, arrived_at=now - timedelta(days=days), created_at=now,
                                           source="test"))
    job.func(*job.args)
    with engine.connect() as conn:
        kept = conn.scalars(select(db.arrivals.c.arrived_at)).all()
    assert [round((now - a).total_seconds() / 86400) for a in kept] == [setup.retention.arrivals_days - 1]


def test_a_scheduler_stopped_while_it_fires_a_one_shot_job_does_not_die_with_a_traceback() -> None:
    """`loa serve` shuts its scheduler down while the scheduler's thread may be firing a job:
    APScheduler marks itself stopped before it takes the job stores' lock, and then removing
    the fired one-shot job failed with JobLookupError in that thread.  The executor here marks
    the scheduler stopped at exactly that moment."""
    import threading

    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.base import STATE_STOPPED

    class StoppedOnSubmit(ThreadPoolExecutor):
        def submit_job(self, job, run_times):  # type: ignore[no-untyped-def]
            super().submit_job(job, run_times)
            self._scheduler.state = STATE_STOPPED      # what shutdown() does first, from another thread

    died: list[BaseException | None] = []
    fired = threading.Event()
    previous = threading.excepthook
    threading.excepthook = lambda args: died.append(args.exc_value)
    try:
        sched = scheduler._Scheduler(timezone="UTC", executors={"default": StoppedOnSubmit(1)})
        sched.add_job(fired.set, "date", run_date=datetime.now(UTC), id="campaign:once")
        sched.start()
        assert fired.wait(30), "the one-shot job never fired"
        sched._thread.join(30)
        assert not sched._thread.is_alive()
        sched._executors["default"].shutdown(wait=True)
    finally:
        threading.excepthook = previous
    assert died == []
