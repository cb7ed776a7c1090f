"""A report's shares use the population in force at its campaign's time (the first run's
scheduled day, in Vietnam), and say which date that figure has."""

from __future__ import annotations

import csv
import io
import json
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import write
from rich.console import Console
from sqlalchemy.engine import Engine

from loa import importer
from loa import report as rep
from loa.campaign import Campaign, load_one
from loa.config import Config
from loa.htmlreport import render_html
from loa.plan import plan_run
from loa.reportview import render_table

TZ = ZoneInfo("Asia/Ho_Chi_Minh")

AREAS = """
code,name,parent,level,population,population_as_of
14,Sơn La,,province,1000,2020-08-17
116,Thành phố Sơn La,14,district,400,2020-08-17
125,Huyện Mai Sơn,14,district,600,2020-08-16
"""
# Imported later, and out of order: the history, not the file order, decides.
LATER = """
code,name,population,population_as_of
14,Sơn La,1150,2023-01-01
116,Thành phố Sơn La,450,2023-01-01
125,Huyện Mai Sơn,700,2023-01-01
116,Thành phố Sơn La,380,2019-04-01
"""


def campaign_file(name: str) -> str:
    return f"""
name = "{name}"
channels = ["sms"]
holdout = 0.0
[segment]
areas = ["14"]
[sms]
template = "sms/remind.j2"
[goal]
event = "installed"
share = 0.5
of = "population"
"""


@pytest.fixture
def world(engine: Engine, workdir: Path, tmp_path: Path) -> Path:
    for name, text in (("areas.csv", AREAS), ("later.csv", LATER)):
        path = write(tmp_path / name, text)
        summary = importer.run_import(engine, importer.AreasHandler(engine, path), path)
        assert (summary.rejected, summary.failure) == (0, None)
    subs = tmp_path / "subscribers.csv"
    subs.write_text("phone,area\n" + "".join(f"0911160{i:03d},116\n0911250{i:03d},125\n" for i in range(10)),
                    encoding="utf-8")
    assert importer.run_import(engine, importer.SubscribersHandler(engine, subs), subs).imported == 20
    write(workdir / "templates" / "sms" / "remind.j2", "Cài Bluezone\n")
    return workdir


def campaign(engine: Engine, config: Config, world: Path, name: str, *runs: datetime) -> Campaign:
    write(world / "campaigns" / f"{name}.toml", campaign_file(name))
    loaded = load_one(world / "campaigns", name)
    for at in runs:
        plan_run(engine, config, loaded, scheduled_for=at)
    return loaded


def populations(report: rep.Report) -> dict[str, tuple[int | None, date | None]]:
    return {r.code: (r.population, r.population_as_of) for r in report.rows}


def test_the_population_in_force_at_the_first_run(engine: Engine, config: Config, world: Path) -> None:
    # 03:00 on 17 August in Vietnam is still the 16th in UTC: the figure dated the 17th is in force
    first = datetime(2020, 8, 17, 3, 0, tzinfo=TZ)
    c = campaign(engine, config, world, "remind", datetime(2024, 3, 1, 9, 0, tzinfo=TZ), first)
    report = rep.build(engine, "remind", c.goal)
    assert populations(report) == {"116": (400, date(2020, 8, 17)), "125": (600, date(2020, 8, 16))}
    assert report.population_on == date(2020, 8, 17)
    assert report.total.population == 1000
    assert report.notes == []      # the province's 1,000 is its districts' sum on that day

    caption = ("population as of 2020-08-16 to 2020-08-17, by area: the figures in force on 2020-08-17, "
               "the campaign's first run")
    assert rep.population_caption(report) == caption

    data = json.loads(rep.to_json(report))
    assert {r["code"]: (r["population"], r["population_as_of"]) for r in data["rows"]} == {
        "116": (400, "2020-08-17"), "125": (600, "2020-08-16")}
    rows = {r["code"]: r for r in csv.DictReader(io.StringIO(rep.to_csv(report)))}
    assert (rows["116"]["population"], rows["116"]["population_as_of"]) == ("400", "2020-08-17")
    assert (rows["125"]["population"], rows["125"]["population_as_of"]) == ("600", "2020-08-16")

    console = Console(record=True, width=250)
    render_table(console, report, lang="en")
    assert caption in " ".join(console.export_text().split())
    console = Console(record=True, width=250)
    render_table(console, report)                                          # the CLI's table, in Vietnamese
    assert ("dân số tính đến 16/08/2020 đến 17/08/2020, tùy khu vực: số liệu có hiệu lực ngày 17/08/2020, "
            "lần chạy đầu tiên của chiến dịch") in " ".join(console.export_text().split())
    assert caption.replace("'", "&#x27;") in render_html(report, lang="en")
    assert ("dân số tính đến 16/08/2020 đến 17/08/2020, tùy khu vực: số liệu có hiệu lực ngày 17/08/2020, "
            "lần chạy đầu tiên của chiến dịch") in render_html(report)           # the page, in Vietnamese

    province = rep.build(engine, "remind", c.goal, level="province")
    assert populations(province) == {"14": (1000, date(2020, 8, 17))}


def test_a_later_campaign_uses_the_later_figures(engine: Engine, config: Config, world: Path) -> None:
    c = campaign(engine, config, world, "later", datetime(2024, 3, 1, 9, 0, tzinfo=TZ))
    report = rep.build(engine, "later", c.goal)
    assert populations(report) == {"116": (450, date(2023, 1, 1)), "125": (700, date(2023, 1, 1))}
    assert report.total.population == 1150
    assert report.rows[0].installed_share == 0.0
    assert rep.population_caption(report) == ("population as of 2023-01-01: the figures in force on 2024-03-01, "
                                              "the campaign's first run")


def test_a_campaign_before_every_figure_says_so(engine: Engine, config: Config, world: Path) -> None:
    c = campaign(engine, config, world, "early", datetime(2019, 1, 1, 9, 0, tzinfo=TZ))
    report = rep.build(engine, "early", c.goal)
    assert populations(report) == {"116": (380, date(2019, 4, 1)), "125": (600, date(2020, 8, 16))}
    assert report.notes == [
        # the figures of that day disagree: the province's 2020 figure, its districts' 2019 and 2020
        ("Sơn La: population given as 1,000, but its 2 district areas add up to 980 (difference +20); "
         "shares here use each area's own figure"),
        ("no population dated on or before 2019-01-01 (the campaign's first run) for: "
         "Huyện Mai Sơn (used 2020-08-16), Thành phố Sơn La (used 2019-04-01)"),
    ]
