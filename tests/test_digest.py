"""The daily digest (loa/digest.py): each campaign's report written to a folder, dated locally.

Campaigns are planned for real and sent through the simulator gateway (deliveries
and installs drawn from its seed), so the files hold a real report; each test
compares them with ``report.build`` on the same database.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy.engine import Engine

import scheduler
from conftest import write
from loa import importer
from loa import report as rep
from loa.campaign import load_one
from loa.config import Config, load
from loa.digest import write_digest
from loa.dispatch import Dispatcher
from loa.errors import ConfigError
from loa.plan import plan_run

AREAS = """
code,name,parent,level,population,population_as_of
14,Sơn La,,province,1248415,2020-08-17
126,Huyện Mộc Châu,14,district,112402,2020-08-17
125,Huyện Mai Sơn,14,district,163344,2020-08-17
"""
CAMPAIGN = """
name = "{name}"
channels = ["sms"]
holdout = 0.25
[segment]
areas = ["Sơn La"]
[sms]
template = "sms/{name}.j2"
[window]
start = "00:00"
end = "24:00"
[goal]
event = "installed"
share = 0.5
of = "population"
"""
# 23:30 UTC on the 17th is 06:30 on the 18th in Hà Nội: the digest is dated the 18th
NEAR_MIDNIGHT = datetime(2020, 8, 17, 23, 30, tzinfo=UTC)


def add_world(engine: Engine, folder: Path) -> None:
    """Sơn La's Mộc Châu and Mai Sơn, with 40 and 24 subscribers."""
    areas = write(folder / "areas.csv", AREAS)
    importer.run_import(engine, importer.AreasHandler(engine, areas), areas)
    lines = ["phone,name,area"] + [f"0912{i:06d},Người {i},{'126' if i < 40 else '125'}" for i in range(64)]
    subs = write(folder / "subscribers.csv", "\n".join(lines) + "\n")
    assert importer.run_import(engine, importer.SubscribersHandler(engine, subs), subs).imported == 64


def add_campaign(workdir: Path, name: str) -> None:
    write(workdir / "templates" / "sms" / f"{name}.j2", "Cài Bluezone để bảo vệ mình\n")
    write(workdir / "campaigns" / f"{name}.toml", CAMPAIGN.format(name=name))


def run_campaign(engine: Engine, config: Config, name: str) -> None:
    """Plan ``name`` and send it through the simulator, receipts and installs included."""
    add_campaign(config.campaigns_dir.parent, name)
    plan_run(engine, config, load_one(config.campaigns_dir, name))
    Dispatcher(engine, config).run_until_empty()


def with_digest(workdir: Path, body: str) -> Config:
    """The workdir's configuration with ``[digest]`` set to ``body`` (replacing any before)."""
    path = workdir / "config.toml"
    text = path.read_text(encoding="utf-8").split("\n[digest]\n")[0]
    path.write_text(f"{text}\n[digest]\n{body}\n", encoding="utf-8")
    return load(path)


@pytest.fixture
def world(engine: Engine, workdir: Path, config: Config) -> Config:
    """Two campaigns sent (bluezone, then remind) and one (later) never run."""
    add_world(engine, workdir)
    run_campaign(engine, config, "bluezone")
    run_campaign(engine, config, "remind")
    add_campaign(workdir, "later")
    return with_digest(workdir, 'folder = "digests"')


def csv_rows(text: str) -> dict[str, dict[str, str]]:
    return {r["code"]: r for r in csv.DictReader(io.StringIO(text))}


def assert_csv_matches(path: Path, report: rep.Report) -> None:
    rows = csv_rows(path.read_text(encoding="utf-8-sig"))
    assert list(rows) == [r.code for r in report.rows] + [""]
    for row in [*report.rows, report.total]:
        got = rows[row.code]
        for name in ("audience", "held_out", "sent", "delivered", "installed_delivered", "installed_held_out",
                     "installed_total", "population"):
            assert int(got[name]) == getattr(row, name), (row.code, name)
        assert got["area"] == row.area


# -- writing ------------------------------------------------------------------------

def test_each_campaign_gets_html_and_csv_dated_in_local_time(engine: Engine, world: Config) -> None:
    written = write_digest(engine, world, NEAR_MIDNIGHT)

    folder = world.digest.folder
    assert folder == (world.path.parent / "digests").resolve()
    assert sorted(p.name for p in written) == ["bluezone-2020-08-18.csv", "bluezone-2020-08-18.html",
                                               "remind-2020-08-18.csv", "remind-2020-08-18.html"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in written)   # no temporary left
    report = rep.build(engine, "bluezone", load_one(world.campaigns_dir, "bluezone").goal)
    assert report.total.sent > 0 and report.total.held_out > 0 and report.total.installed_total > 0
    assert_csv_matches(folder / "bluezone-2020-08-18.csv", report)
    html = (folder / "bluezone-2020-08-18.html").read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    assert "Huyện Mộc Châu" in html and "Huyện Mai Sơn" in html
    assert "<title>bluezone — báo cáo loa</title>" in html
    assert "lập lúc 18/08/2020 06:30 +07" in html           # the local time of writing, in Vietnamese
    assert "<script src=" not in html and 'rel="stylesheet"' not in html   # self-contained
    assert oct(os.stat(folder / "bluezone-2020-08-18.csv").st_mode & 0o777) == "0o644"


def test_the_csv_file_is_loa_reports_csv_with_a_bom_for_excel(engine: Engine, world: Config) -> None:
    write_digest(engine, world, NEAR_MIDNIGHT)
    data = (world.digest.folder / "remind-2020-08-18.csv").read_bytes()
    report = rep.build(engine, "remind", load_one(world.campaigns_dir, "remind").goal)
    assert data == b"\xef\xbb\xbf" + rep.to_csv(report).encode("utf-8")


def test_a_later_digest_replaces_the_days_files_and_dates_the_next_day_anew(engine: Engine,
                                                                           world: Config) -> None:
    first = write_digest(engine, world, NEAR_MIDNIGHT)
    again = write_digest(engine, world, datetime(2020, 8, 18, 1, 0, tzinfo=UTC))     # 08:00 on the 18th
    assert again == first
    next_day = write_digest(engine, world, datetime(2020, 8, 18, 17, 0, tzinfo=UTC))  # 00:00 on the 19th
    assert {p.name.split("-", 1)[1] for p in next_day} == {"2020-08-19.html", "2020-08-19.csv"}
    assert len(list(world.digest.folder.iterdir())) == 8


def test_listed_campaigns_and_formats_only_and_one_without_runs_is_skipped(
        engine: Engine, world: Config, workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = with_digest(workdir, 'folder = "out"\ncampaigns = ["later", "remind"]\nformats = ["csv", "json"]')
    with caplog.at_level(logging.INFO, logger="loa.digest"):
        written = write_digest(engine, config, NEAR_MIDNIGHT)
    assert [p.name for p in written] == ["remind-2020-08-18.csv", "remind-2020-08-18.json"]
    assert "digest: later skipped: campaign 'later' has no runs yet" in caplog.text


def test_one_broken_campaign_does_not_stop_the_others(engine: Engine, world: Config,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    folder = world.digest.folder
    (folder / "bluezone-2020-08-18.html").mkdir(parents=True)   # something in the way: cannot be replaced
    with caplog.at_level(logging.INFO, logger="loa.digest"):
        written = write_digest(engine, world, NEAR_MIDNIGHT)
    assert [p.name for p in written] == ["remind-2020-08-18.html", "remind-2020-08-18.csv"]
    assert not (folder / "bluezone-2020-08-18.csv").exists()
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    failure = [r for r in caplog.records if r.levelno == logging.ERROR and "2 file(s) written" in r.message]
    assert failure and "failed: bluezone (" in failure[0].message


def test_a_failing_report_does_not_stop_the_others(engine: Engine, world: Config,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    build = rep.build

    def broken(engine: Engine, name: str, *args: object, **kw: object) -> rep.Report:
        if name == "remind":
            raise RuntimeError("database went away")
        return build(engine, name, *args, **kw)

    monkeypatch.setattr(rep, "build", broken)
    assert [p.name for p in write_digest(engine, world, NEAR_MIDNIGHT)] == ["bluezone-2020-08-18.html",
                                                                           "bluezone-2020-08-18.csv"]


def test_without_a_digest_section_there_is_nothing_to_write(engine: Engine, config: Config) -> None:
    with pytest.raises(ConfigError, match="no \\[digest\\] section"):
        write_digest(engine, config, NEAR_MIDNIGHT)


# -- the scheduled job ----------------------------------------------------------------

def test_the_scheduler_registers_the_digest_at_the_configured_time_and_zone(engine: Engine,
                                                                            workdir: Path) -> None:
    config = with_digest(workdir, 'folder = "digests"\nat = "06:45"')
    sched = scheduler.CampaignScheduler(engine, config, BackgroundScheduler(timezone=config.timezone))
    sched.reload()
    sched.reload()   # reloading replaces, never duplicates
    [job] = [j for j in sched.scheduler.get_jobs() if j.id == "digest"]
    assert isinstance(job.trigger, CronTrigger)
    assert job.trigger.timezone == ZoneInfo("Asia/Ho_Chi_Minh")
    assert job.misfire_grace_time == 3600 and job.coalesce
    assert job.func is write_digest and job.args == (engine, config)
    fire = job.trigger.get_next_fire_time(None, NEAR_MIDNIGHT)
    assert fire.astimezone(UTC) == datetime(2020, 8, 17, 23, 45, tzinfo=UTC)   # 06:45 in Hà Nội


@pytest.mark.parametrize("at, after, fires", [
    # weekdays as cron numbers them (Sunday 0 or 7), not as APScheduler 3 does (Monday 0)
    ("30 7 * * 1-5", "2020-08-22T00:00:00+07:00", "2020-08-24T07:30:00+07:00"),   # Saturday -> Monday
    ("30 7 * * 1-5", "2020-08-21T00:00:00+07:00", "2020-08-21T07:30:00+07:00"),   # Friday
    ("0 8 * * 0", "2020-08-18T00:00:00+07:00", "2020-08-23T08:00:00+07:00"),      # Sunday
    ("0 8 * * 7", "2020-08-18T00:00:00+07:00", "2020-08-23T08:00:00+07:00"),
    ("0 8 * * sat,sun", "2020-08-18T00:00:00+07:00", "2020-08-22T08:00:00+07:00"),
    ("0 6 1 * *", "2020-08-18T00:00:00+07:00", "2020-09-01T06:00:00+07:00"),
])
def test_a_cron_string_is_read_as_cron_reads_it(engine: Engine, workdir: Path, at: str, after: str,
                                                fires: str) -> None:
    config = with_digest(workdir, f'folder = "digests"\nat = "{at}"')
    sched = scheduler.CampaignScheduler(engine, config, BackgroundScheduler(timezone=config.timezone))
    sched.reload()
    job = sched.scheduler.get_job("digest")
    assert job.trigger.get_next_fire_time(None, datetime.fromisoformat(after)) == datetime.fromisoformat(fires)


def test_no_digest_job_without_a_digest_section(engine: Engine, config: Config) -> None:
    sched = scheduler.CampaignScheduler(engine, config, BackgroundScheduler(timezone=config.timezone))
    sched.reload()
    assert sched.scheduler.get_job("digest") is None


def test_the_job_writes_the_digest(engine: Engine, world: Config) -> None:
    sched = scheduler.CampaignScheduler(engine, world, BackgroundScheduler(timezone=world.timezone))
    sched.reload()
    job = sched.scheduler.get_job("digest")
    assert len(job.func(*job.args)) == 4


# -- configuration ---------------------------------------------------------------------

@pytest.mark.parametrize("body, message", [
    ('folder = "d"\nhour = 7', r"digest.hour: unknown key \(known: at, campaigns, folder, formats\)"),
    ('at = "07:00"', 'digest.folder: missing; name the folder the daily report goes to'),
    ('folder = "d"\nat = "25:00"', 'digest.at: must be a time of day like "07:00" or a cron string'),
    ('folder = "d"\nat = "7h"', 'digest.at: must be a time of day like "07:00"'),
    ('folder = "d"\nat = 7', 'digest.at: must be a time of day like "07:00"'),
    ('folder = "d"\nat = "0 25 * * *"', "digest.at: not a valid cron string '0 25 \\* \\* \\*'"),
    ('folder = "d"\nat = "0 7 * * 8"', "digest.at: not a valid cron string .*weekday '8' is not 0-7 or sun-sat"),
    ('folder = "d"\nat = "0 7 * * 5-1"', "digest.at: not a valid cron string .*not a weekday, a range or a step"),
    ('folder = "d"\nformats = ["pdf"]', "digest.formats: must be a non-empty list of 'html', 'csv', 'json'"),
    ('folder = "d"\nformats = []', "digest.formats: must be a non-empty list"),
    ('folder = "d"\ncampaigns = "remind"', "digest.campaigns: must be a non-empty list of campaign names"),
    ('folder = "d"\ncampaigns = ["Bad Name"]', "digest.campaigns: must be a non-empty list of campaign names"),
])
def test_bad_digest_settings_name_the_key(workdir: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        with_digest(workdir, body)


def test_digest_settings(workdir: Path) -> None:
    spec = with_digest(workdir, 'folder = "/srv/reports"\nat = 07:15:00\ncampaigns = ["remind"]').digest
    assert spec is not None
    assert (spec.folder, spec.cron, spec.campaigns, spec.formats) == (
        Path("/srv/reports"), "15 7 * * *", ("remind",), ("html", "csv"))


def test_report_token_env_must_name_a_variable(workdir: Path) -> None:
    with (workdir / "config.toml").open("a", encoding="utf-8") as f:
        f.write('\n[serve]\nreport_token_env = "not a name"\n')
    with pytest.raises(ConfigError, match="serve.report_token_env: must name an environment variable"):
        load(workdir / "config.toml")
