"""A new user's first steps: `loa init` from nothing, what `loa send` says about deferred
messages, an edited send window, and the demo's folder."""

from __future__ import annotations

import filecmp
import os
from collections.abc import Iterator
from datetime import datetime, time, timedelta
from pathlib import Path

import pytest
from conftest import write
from test_cli import count, invoke, ok, one_line_error

from sqlalchemy import select

from loa import db

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def empty(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder, with no configuration anywhere."""
    folder = tmp_path / "new"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.delenv("LOA_CONFIG", raising=False)
    monkeypatch.setenv("LOA_DATABASE_URL", database_url)
    return folder


def test_init_from_nothing_writes_the_examples_and_the_tour_goes_on(empty: Path) -> None:
    r = ok(invoke(None, "init"))
    assert "wrote config.toml from config.example.toml" in r.stdout
    assert f"wrote the example campaigns to {empty / 'campaigns'}" in r.stdout
    assert f"wrote the example templates to {empty / 'templates'}" in r.stdout
    assert filecmp.cmp(empty / "config.toml", ROOT / "config.example.toml", shallow=False)
    for folder in ("campaigns", "templates"):
        cmp = filecmp.dircmp(ROOT / folder, empty / folder)
        assert not (cmp.left_only or cmp.right_only or cmp.diff_files), folder
    listed = ok(invoke(None, "campaigns", "list")).stdout
    assert "bluezone-reminder" in listed and "tourist-greeting" in listed
    ok(invoke(None, "campaigns", "validate"))


def test_init_never_overwrites(empty: Path) -> None:
    ok(invoke(None, "init"))
    mine = "# my own configuration\n" + (empty / "config.toml").read_text(encoding="utf-8")
    (empty / "config.toml").write_text(mine, encoding="utf-8")
    (empty / "campaigns" / "bluezone-reminder.toml").unlink()
    r = ok(invoke(None, "init"))
    assert "wrote" not in r.stdout and r.stdout.startswith("checked loa schema")
    assert (empty / "config.toml").read_text(encoding="utf-8") == mine
    assert not (empty / "campaigns" / "bluezone-reminder.toml").exists()   # the folder is the user's


def test_init_writes_an_explicit_config_path(empty: Path) -> None:
    target = empty / "etc" / "loa.toml"
    r = ok(invoke(None, "--config", str(target), "init"))
    assert f"wrote {target}" in r.stdout
    assert (empty / "etc" / "campaigns" / "bluezone-reminder.toml").is_file()   # beside the configuration


def test_report_of_a_campaign_that_does_not_exist_says_so(empty: Path) -> None:
    ok(invoke(None, "init"))
    line = one_line_error(invoke(None, "report", "nope"), "no campaign named 'nope'", "bluezone-reminder",
                          "has ever run")
    assert "has no runs" not in line
    # a campaign that exists but has not run yet is told apart
    one_line_error(invoke(None, "report", "bluezone-reminder"), "'bluezone-reminder' has no runs yet",
                   "loa campaigns run bluezone-reminder")


def test_init_without_examples_still_needs_a_configuration(empty: Path) -> None:
    one_line_error(invoke(None, "init", "--no-examples"), "no configuration found")
    assert list(empty.iterdir()) == []


def test_the_demo_removes_its_temporary_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from click.testing import CliRunner

    from loa.cli import main

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    result = CliRunner().invoke(main, ["demo", "--subscribers", "1000"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "temporary folder is removed; run with --dir DIR to keep it" in result.output
    assert list(scratch.iterdir()) == []

    kept = tmp_path / "kept"
    result = CliRunner().invoke(main, ["demo", "--subscribers", "1000", "--dir", str(kept)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert f"Explore: loa --config {kept / 'config.toml'}" in result.output
    assert (kept / "loa.db").is_file()


# -- deferred messages: until when, and an edited window -------------------------------------

NIGHT_CAMPAIGN = """
name = "remind"
description = "Nhắc cài Bluezone"
channels = ["sms"]
[segment]
areas = ["Sơn La"]
[sms]
template = "sms/remind.j2"
"""


@pytest.fixture
def planned_at_night(workdir: Path, tmp_path: Path) -> Iterator[Path]:
    """Five subscribers planned for a campaign with the default window, at 23:00 in Vietnam."""
    import time_machine

    from conftest import AREAS_CSV, VIETNAM
    from test_cli import subscribers_csv

    write(workdir / "campaigns" / "remind.toml", NIGHT_CAMPAIGN)
    write(workdir / "templates" / "sms" / "remind.j2", "Chào {{ subscriber.name }}, hãy cài Bluezone.\n")
    night = datetime.combine(datetime.now(VIETNAM).date(), time(23), VIETNAM)
    with time_machine.travel(night, tick=True):
        ok(invoke(workdir, "init"))
        ok(invoke(workdir, "import", "areas", str(write(tmp_path / "areas.csv", AREAS_CSV))))
        ok(invoke(workdir, "import", "subscribers", str(subscribers_csv(tmp_path, 5))))
        ok(invoke(workdir, "campaigns", "run", "remind"))
        yield workdir


def test_send_at_night_says_until_when(planned_at_night: Path) -> None:
    r = ok(invoke(planned_at_night, "send"))
    assert "sent: 5 deferred to 07:00 tomorrow (send window)" in r.stdout


def test_an_edited_window_releases_the_deferred(planned_at_night: Path) -> None:
    workdir = planned_at_night
    ok(invoke(workdir, "send"))
    engine = db.make_engine(os.environ["LOA_DATABASE_URL"])
    assert count(engine, db.outbox.c.state == "deferred") == 5

    write(workdir / "campaigns" / "remind.toml", NIGHT_CAMPAIGN + '[window]\nstart = "00:00"\nend = "24:00"\n')
    r = ok(invoke(workdir, "send"))
    assert "send window 07:00-22:00 -> 00:00-24:00; 5 message(s) waiting for the old window released" in r.stdout
    assert "sent: 5 sent" in r.stdout
    assert count(engine, db.outbox.c.state == "deferred") == 0

    # narrowed again: the next run of `send` holds nothing it need not, and says nothing twice
    r = ok(invoke(workdir, "send"))
    assert "released" not in r.stdout


def test_a_narrowed_window_defers_again_to_its_own_opening(planned_at_night: Path) -> None:
    workdir = planned_at_night
    ok(invoke(workdir, "send"))
    write(workdir / "campaigns" / "remind.toml", NIGHT_CAMPAIGN + '[window]\nstart = "08:30"\nend = "20:00"\n')
    r = ok(invoke(workdir, "send"))
    assert "send window 07:00-22:00 -> 08:30-20:00; 5 message(s)" in r.stdout
    assert "sent: 5 deferred to 08:30 tomorrow (send window)" in r.stdout


def test_deferrals_are_grouped_by_reason_with_their_earliest_time() -> None:
    from collections import Counter

    import time_machine

    from conftest import VIETNAM
    from loa.cli import _deferrals

    day = datetime(2026, 12, 5, tzinfo=VIETNAM)
    at = lambda h, m=0, d=0: day.replace(hour=h, minute=m) + timedelta(days=d)  # noqa: E731
    with time_machine.travel(at(5), tick=False):
        assert _deferrals(Counter({("send window", at(7)): 4}), VIETNAM) == " to 07:00 (send window)"
        mixed = Counter({("send window", at(7)): 4, ("frequency cap", at(9, 30)): 1, ("frequency cap", at(8, 15)): 2,
                         ("retry after timeout", at(7, 5, 2)): 1})
        assert _deferrals(mixed, VIETNAM) == (" (4 to 07:00: send window; 3 from 08:15: frequency cap; "
                                              "1 to 07:05 on 07/12: retry after timeout)")


def test_the_scheduler_reload_follows_an_edited_window(planned_at_night: Path) -> None:
    from scheduler import CampaignScheduler

    from loa.config import load

    workdir = planned_at_night
    ok(invoke(workdir, "send"))
    write(workdir / "campaigns" / "remind.toml", NIGHT_CAMPAIGN + '[window]\nstart = "00:00"\nend = "24:00"\n')
    engine = db.make_engine(os.environ["LOA_DATABASE_URL"])
    CampaignScheduler(engine, load(workdir / "config.toml")).reload()
    with engine.connect() as conn:
        due = conn.execute(select(db.outbox.c.due_at).where(db.outbox.c.state == "deferred")).scalars().all()
        window = conn.scalar(select(db.runs.c.definition))["window"]
    assert len(due) == 5 and max(due) <= db.utcnow()
    assert window == {"start": "00:00", "end": "24:00"}
