"""The per-area report on a scenario whose every number is known by construction.

The run is planned for real (so audience, suppression and the snapshot are the
planner's); the fates of the messages are then written into the ledger at
chosen times, and events are recorded at chosen times relative to the run's
planned send time and the messages' delivery.  A response counts within the
campaign's attribution window: from the delivery for the delivered, from the
planned send time for the targeted and the held out.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from conftest import write
from loa import db, importer, stats
from loa import report as rep
from loa.arrivals import greet
from loa.campaign import Campaign, load_one
from loa.config import Config
from loa.errors import NotFound
from loa.plan import plan_run

O = db.outbox

# The province's own figure (1,100) differs from its districts' sum (1,000).
AREAS = """
code,name,parent,level,population,population_as_of
14,Sơn La,,province,1100,2020-08-17
116,Thành phố Sơn La,14,district,400,2020-08-17
125,Huyện Mai Sơn,14,district,600,2020-08-16
66,Đắk Nông,,province,500,2020-08-11
"""

CAMPAIGN = """
name = "remind"
channels = ["sms"]
holdout = 0.0
suppress_events = ["installed"]
[segment]
areas = ["Sơn La"]
[[segment.rules]]
field = "attributes.smartphone"
eq = "yes"
[sms]
template = "sms/remind.j2"
[goal]
event = "installed"
share = 0.5
of = "population"
by = 2020-08-20
"""


def person(area: str, i: int) -> str:
    return f"+8491{area}{i:04d}"


def setup_world(engine: Engine, workdir: Path, tmp_path: Path) -> Campaign:
    areas = write(tmp_path / "areas.csv", AREAS)
    importer.run_import(engine, importer.AreasHandler(engine, areas), areas)
    lines = ["phone,name,area,smartphone"]
    for i in range(11):   # 116: i10 has no smartphone, so is outside the audience
        lines.append(f"091116{i:04d},A{i},116,{'no' if i == 10 else 'yes'}")
    for j in range(20):
        lines.append(f"091125{j:04d},B{j},125,yes")
    lines.append("0910660000,K,66,yes")          # another province: never in this report
    subs = tmp_path / "subscribers.csv"
    subs.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert importer.run_import(engine, importer.SubscribersHandler(engine, subs), subs).imported == 32
    write(workdir / "templates" / "sms" / "remind.j2", "Cài Bluezone\n")
    write(workdir / "campaigns" / "remind.toml", CAMPAIGN)
    return load_one(workdir / "campaigns", "remind")


def events(engine: Engine, items: list[tuple[str, str, datetime]]) -> None:
    with engine.begin() as conn:
        n = importer.record_events(conn, [{"phone": p, "type": t, "occurred_at": at, "source": "test"}
                                          for p, t, at in items])
    assert n == len(items)


def set_fate(engine: Engine, run_id: int, phones: list[str], state: str, sent_at: datetime | None = None,
             delivered_at: datetime | None = None) -> None:
    s = db.subscribers
    with engine.begin() as conn:
        ids = list(conn.scalars(select(s.c.id).where(s.c.phone.in_(phones))))
        assert len(ids) == len(phones)
        n = conn.execute(update(O).where(O.c.run_id == run_id, O.c.subscriber_id.in_(ids))
                         .values(state=state, sent_at=sent_at, delivered_at=delivered_at,
                                 provider_id=f"p-{state}" if sent_at else None)
                         ).rowcount
    assert n == len(phones)


def planned_at(engine: Engine, run_id: int) -> datetime:
    with engine.connect() as conn:
        return conn.scalar(select(db.runs.c.planned_at).where(db.runs.c.id == run_id))


@pytest.fixture
def scenario(engine: Engine, workdir: Path, tmp_path: Path, config: Config) -> Campaign:
    campaign = setup_world(engine, workdir, tmp_path)
    a = lambda i: person("116", i)  # noqa: E731
    b = lambda j: person("125", j)  # noqa: E731
    before = db.utcnow() - timedelta(days=1)
    events(engine, [(a(0), "installed", before), (person("066", 0), "installed", before)])

    plan = plan_run(engine, config, campaign)
    assert plan.states == {"planned": 29, "suppressed": 1}
    t = planned_at(engine, plan.run_id)
    sent = t + timedelta(hours=1)
    set_fate(engine, plan.run_id, [a(1), a(2), a(3)] + [b(j) for j in range(4)], "held_out")
    set_fate(engine, plan.run_id, [a(4), a(5), a(6)] + [b(j) for j in range(4, 20)], "delivered", sent)
    set_fate(engine, plan.run_id, [a(7)], "undelivered", sent)
    set_fate(engine, plan.run_id, [a(8)], "failed")
    set_fate(engine, plan.run_id, [a(9)], "sent", sent)
    after = t + timedelta(hours=2)
    events(engine, [
        (a(1), "installed", after),                       # held out, installed after the send time
        (a(4), "installed", after),                       # delivered, then installed
        (a(5), "installed", t + timedelta(minutes=30)),   # installed before its message went out...
        (a(5), "installed", t + timedelta(hours=3)),      # ...so a later install does not count either
        (a(7), "installed", after),                       # undelivered, installed anyway
        (a(9), "clicked", after),                         # another event type
        (a(10), "installed", after),                      # in the area, outside the audience
        *[(b(j), "installed", after) for j in (0, *range(4, 12))],
    ])
    return campaign


DISTRICT_116 = dict(
    code="116", area="Thành phố Sơn La", level="district", population=400, population_as_of=date(2020, 8, 17),
    audience=10, held_out=3, suppressed=1, targeted=6, sent=5, delivered=3, undelivered=1, failed=1,
    installed_delivered=1, installed_targeted=3, installed_held_out=1, installed_total=6,
)
DISTRICT_125 = dict(
    code="125", area="Huyện Mai Sơn", level="district", population=600, population_as_of=date(2020, 8, 16),
    audience=20, held_out=4, suppressed=0, targeted=16, sent=16, delivered=16, undelivered=0, failed=0,
    installed_delivered=8, installed_targeted=8, installed_held_out=1, installed_total=9,
)
TOTAL = dict(
    code="", area="Total", level="", population=1000, population_as_of=None,
    audience=30, held_out=7, suppressed=1, targeted=22, sent=21, delivered=19, undelivered=1, failed=1,
    installed_delivered=9, installed_targeted=11, installed_held_out=2, installed_total=15,
)


def counts(row: rep.Row) -> dict[str, Any]:
    return {k: getattr(row, k) for k in DISTRICT_116}


def test_every_column_per_district(engine: Engine, config: Config, scenario: Campaign) -> None:
    report = rep.build(engine, "remind", scenario.goal)

    assert report.level == "district" and report.event == "installed"
    assert [r.code for r in report.rows] == ["125", "116"]          # the bigger district first
    mai_son, city = report.rows
    assert counts(city) == DISTRICT_116
    assert counts(mai_son) == DISTRICT_125
    assert counts(report.total) == TOTAL

    assert city.rate_delivered == pytest.approx(1 / 3)
    assert city.rate_held_out == pytest.approx(1 / 3)
    assert city.rate_targeted == pytest.approx(0.5)
    assert city.uplift_points == pytest.approx(100 * (0.5 - 1 / 3))
    assert city.installed_share == pytest.approx(6 / 400)
    assert report.progress(city) == pytest.approx(6 / 400 / 0.5)

    assert mai_son.rate_delivered == pytest.approx(0.5)
    assert mai_son.rate_held_out == pytest.approx(0.25)
    assert mai_son.uplift_points == pytest.approx(25.0)
    assert mai_son.installed_share == pytest.approx(9 / 600)
    assert report.progress(mai_son) == pytest.approx(0.03)

    total = report.total
    assert total.uplift_points == pytest.approx(100 * (11 / 22 - 2 / 7))
    assert total.installed_share == pytest.approx(15 / 1000)
    assert report.progress(total) == pytest.approx(0.03)

    assert report.notes == [
        "Sơn La: population given as 1,100, but its 2 district areas add up to 1,000 (difference +100); "
        "shares here use each area's own figure"
    ]


def test_rollup_to_province(engine: Engine, config: Config, scenario: Campaign) -> None:
    report = rep.build(engine, "remind", scenario.goal, level="province")

    assert report.level == "province"
    [province] = report.rows
    expected = TOTAL | dict(code="14", area="Sơn La", level="province", population=1100,
                            population_as_of=date(2020, 8, 17))
    assert counts(province) == expected
    assert province.installed_share == pytest.approx(15 / 1100)
    assert report.progress(province) == pytest.approx(15 / 1100 / 0.5)
    assert counts(report.total) == expected | dict(code="", area="Total", level="", population_as_of=None)
    assert report.notes == []


def test_without_a_goal_there_is_no_progress(engine: Engine, config: Config, scenario: Campaign) -> None:
    report = rep.build(engine, "remind", None)
    assert report.goal is None
    assert report.progress(report.total) is None
    assert all(rec["progress"] is None for rec in rep.as_records(report))


def test_goal_of_audience(engine: Engine, config: Config, scenario: Campaign) -> None:
    goal = rep.Goal(event="installed", share=0.25, of="audience")
    report = rep.build(engine, "remind", goal)
    city = next(r for r in report.rows if r.code == "116")
    assert report.progress(city) == pytest.approx(6 / 10 / 0.25)


def test_csv_output_matches_the_report(engine: Engine, config: Config, scenario: Campaign) -> None:
    report = rep.build(engine, "remind", scenario.goal)
    rows = list(csv.DictReader(io.StringIO(rep.to_csv(report))))

    assert list(rows[0]) == list(rep.FIELDS)
    assert [r["code"] for r in rows] == ["125", "116", ""]
    by_code = {r["code"]: r for r in rows}
    for code, expected in (("116", DISTRICT_116), ("125", DISTRICT_125), ("", TOTAL)):
        got = by_code[code]
        for name in ("audience", "held_out", "suppressed", "sent", "delivered", "undelivered", "failed",
                     "installed_delivered", "installed_held_out", "installed_total", "population"):
            assert int(got[name]) == expected[name], (code, name)
        assert got["population_as_of"] == (expected["population_as_of"].isoformat()
                                           if expected["population_as_of"] else "")
    city = by_code["116"]
    assert float(city["rate_delivered"]) == pytest.approx(1 / 3, abs=1e-6)
    assert float(city["uplift_points"]) == pytest.approx(100 * (0.5 - 1 / 3), abs=1e-6)
    assert float(city["installed_share"]) == pytest.approx(0.015)
    assert float(city["progress"]) == pytest.approx(0.03)
    assert by_code[""]["area"] == "Total"


def test_json_output_matches_the_report(engine: Engine, config: Config, scenario: Campaign) -> None:
    data = json.loads(rep.to_json(rep.build(engine, "remind", scenario.goal)))

    assert data["campaign"] == "remind" and data["level"] == "district" and data["event"] == "installed"
    assert data["goal"] == {"event": "installed", "share": 0.5, "of": "population", "by": "2020-08-20"}
    assert [r["code"] for r in data["rows"]] == ["125", "116"]
    for got, expected in ((data["rows"][1], DISTRICT_116), (data["rows"][0], DISTRICT_125), (data["total"], TOTAL)):
        for name, value in expected.items():
            want = value.isoformat() if isinstance(value, date) else value
            assert got[name] == want, name
    assert data["rows"][1]["uplift_points"] == pytest.approx(100 * (0.5 - 1 / 3))
    assert data["total"]["progress"] == pytest.approx(0.03)
    assert len(data["notes"]) == 1 and "difference +100" in data["notes"][0]


def test_people_are_counted_once_over_several_runs(engine: Engine, workdir: Path, tmp_path: Path,
                                                   config: Config) -> None:
    campaign = setup_world(engine, workdir, tmp_path)
    first = plan_run(engine, config, campaign, scheduled_for=db.utcnow() - timedelta(days=1))
    t = planned_at(engine, first.run_id)
    everyone = [person("116", i) for i in range(10)] + [person("125", j) for j in range(20)]
    held = [person("125", 0), person("125", 1)]
    set_fate(engine, first.run_id, held, "held_out")
    set_fate(engine, first.run_id, [p for p in everyone if p not in held], "delivered", t + timedelta(hours=1))
    set_fate(engine, first.run_id, [person("116", 2)], "failed")     # failed once, delivered the next day
    set_fate(engine, first.run_id, [person("116", 3)], "expired")    # never reached at all
    # two who got the first message install, and one of the held out does too
    events(engine, [(person("116", 1), "installed", t + timedelta(hours=2)),
                    (person("125", 5), "installed", t + timedelta(hours=2)),
                    (person("125", 0), "installed", t + timedelta(hours=2))])
    # the next day's run suppresses those three; the rest get a second message
    second = plan_run(engine, config, campaign)
    assert second.states["suppressed"] == 3
    set_fate(engine, second.run_id, [person("125", 1)], "held_out")
    again = [p for p in everyone if p not in held and p not in (person("116", 1), person("125", 5))]
    set_fate(engine, second.run_id, again, "delivered", planned_at(engine, second.run_id) + timedelta(hours=1))
    set_fate(engine, second.run_id, [person("116", 3)], "failed")

    report = rep.build(engine, "remind", None)

    total = report.total
    assert total.audience == 30
    # each person is in exactly one of: targeted, held out, suppressed
    assert (total.targeted, total.held_out, total.suppressed) == (28, 2, 0)
    assert total.audience == total.targeted + total.held_out + total.suppressed
    assert (total.sent, total.delivered, total.undelivered, total.failed) == (27, 27, 0, 1)
    assert (total.installed_delivered, total.installed_held_out, total.installed_total) == (2, 1, 3)


def table_text(render: Any, *args: Any) -> str:
    """What a Rich table prints, wide enough to keep every column."""
    from rich.console import Console

    console = Console(file=io.StringIO(), width=400, color_system=None)
    render(console, *args)
    return console.file.getvalue()  # type: ignore[attr-defined]


def columns_of(text: str, first: str) -> dict[str, str]:
    """A Rich table's line starting with ``first``, by its header (the header's last line)."""
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("┃") and any(w in line for w in ("area", "campaign", "khu vực")))
    names = [c.strip() for c in header.strip("┃│").split("┃")]
    row = next(line for line in lines if line.startswith("│") and line.strip("│ ").startswith(first))
    return dict(zip(names, (c.strip() for c in row.strip("│").split("│")), strict=True))


def test_province_level_people_get_their_own_line_at_district_level(engine: Engine, workdir: Path,
                                                                     tmp_path: Path, config: Config) -> None:
    """People recorded at the province are not in any district: with --level district they are on
    a line of their own, and the province (whose population is its districts') is not a row."""
    campaign = setup_world(engine, workdir, tmp_path)
    subs = write(tmp_path / "province.csv", "phone,area,smartphone\n" +
                 "".join(f"09114000{i:02d},14,yes\n" for i in range(3)))
    assert importer.run_import(engine, importer.SubscribersHandler(engine, subs), subs).imported == 3
    plan = plan_run(engine, config, campaign)
    set_fate(engine, plan.run_id, [person("140", i) for i in range(3)], "delivered", db.utcnow())

    report = rep.build(engine, "remind", None, level="district")

    assert [(r.code, r.area, r.level) for r in report.rows] == [
        ("125", "Huyện Mai Sơn", "district"), ("116", "Thành phố Sơn La", "district"),
        ("", "(not in a district)", "")]
    outside = report.rows[-1]
    assert (outside.population, outside.audience, outside.delivered) == (None, 3, 3)
    assert report.total.population == 400 + 600          # never the province's 1,100 on top
    assert report.total.audience == 30 + 3
    assert not any("no population" in n for n in report.notes)
    data = json.loads(rep.to_json(report))
    assert data["rows"][-1]["area"] == "(not in a district)" and data["total"]["population"] == 1000
    assert list(csv.DictReader(io.StringIO(rep.to_csv(report))))[-2]["area"] == "(not in a district)"
    from loa.htmlreport import render_html
    from loa.reportview import render_table

    assert ">(chưa rõ quận/huyện)</td>" in render_html(report, None)
    assert columns_of(table_text(render_table, report, None, "en"), "(not in a district)")["population"] == "—"
    assert columns_of(table_text(render_table, report), "(chưa rõ quận/huyện)")["dân số"] == "—"
    # at the province's level they are the province's, with everyone else
    [province] = rep.build(engine, "remind", None, level="province").rows
    assert (province.code, province.audience, province.population) == ("14", 33, 1100)


def test_status_and_report_count_outcomes_alike(engine: Engine, config: Config, scenario: Campaign) -> None:
    """Undelivered is its own outcome in both (never failed); expired is failed in both."""
    from loa import status
    from loa.reportview import render_table

    with engine.connect() as conn:
        run_id = conn.scalar(select(db.runs.c.id))
    set_fate(engine, run_id, [person("125", 19)], "expired")
    report = rep.build(engine, "remind", None)
    [run] = status.collect(engine)["runs"]
    got = run["outcomes"]
    total = report.total
    assert (got["delivered"], got["undelivered"], got["failed"]) == (18, 1, 2)
    assert (total.delivered, total.undelivered, total.failed) == (got["delivered"], got["undelivered"], got["failed"])
    assert total.sent == sum(got[o] for o in status.HANDED_OVER)
    assert (total.held_out, total.suppressed) == (got["held_out"], got["suppressed"])
    assert status.outcome("undelivered") == "undelivered" and status.outcome("expired") == "failed"
    assert set(status.states_of("failed")) == {"failed", "expired"}

    def status_tables(console: Any) -> None:
        for table in status.tables(status.collect(engine), config.timezone):
            console.print(table)

    line = columns_of(table_text(status_tables), "remind")
    assert (line["delivered"], line["undelivered"], line["failed"]) == ("18", "1", "2")
    assert "expired" not in line["other"]
    line = columns_of(table_text(render_table, report, None, "en"), "Total")
    assert (line["deliv."], line["undeliv."], line["failed"]) == ("18", "1", "2")
    assert list(csv.DictReader(io.StringIO(rep.to_csv(report))))[-1]["undelivered"] == "1"
    assert json.loads(rep.to_json(report))["total"]["undelivered"] == 1
    from loa.htmlreport import report_table

    html = report_table(report)
    assert 'data-key="undelivered"' in html and '<td data-value="1">1</td>' in html.split("<tfoot>")[1]


# -- snapshots: as the province counted, beside the ledger ----------------------------

SNAPSHOTS = """
area,as_of,value,change,change_since,rate
116,2020-08-12,40,,,
116,2020-08-17,60,,,15.0
125,2020-08-17,90,30,2020-08-12,16.0
Sơn La,2020-08-17,200,,,
"""


def report_cli(workdir: Path, *args: str) -> str:
    from click.testing import CliRunner

    from loa.cli import main

    result = CliRunner().invoke(main, ["--config", str(workdir / "config.toml"), "report", "remind", *args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def test_snapshots_are_in_every_format(engine: Engine, workdir: Path, tmp_path: Path, scenario: Campaign) -> None:
    """Rates, the change since the previous snapshot, the pace to the goal and the disagreements
    go into the table, the CSV and the JSON, not only the HTML page."""
    path = write(tmp_path / "snapshots.csv", SNAPSHOTS)
    assert importer.run_import(engine, importer.SnapshotsHandler(engine, path), path).imported == 4
    # 116: 40 then 60 of 400 in 5 days (4 a day); the goal, 50% (200) by 2020-08-20, at that pace
    # on 2020-08-17 + ceil(140 / 4) days.  125: 90 of 600 is 15.00%, printed as 16.0%.  Sơn La:
    # stated 200, its districts add up to 150.
    data = json.loads(report_cli(workdir, "--format", "json"))
    series = {s["code"]: s for s in data["snapshots"]["series"]}
    city = series["116"]["points"][-1]
    assert (city["as_of"], city["value"], city["rate"], city["change"], city["days"], city["per_day"]) == (
        "2020-08-17", 60, 0.15, 20, 5, 4.0)
    assert (series["116"]["projected"], series["116"]["on_track"]) == ("2020-09-21", False)
    assert {(d["code"], d["kind"]) for d in data["snapshots"]["disagreements"]} >= {("14", "total"), ("125", "rate")}
    assert any("printed as 16.0%" in note for note in data["notes"])
    assert data["whole"] == "14"

    rows = {r["code"]: r for r in csv.DictReader(io.StringIO(report_cli(workdir, "--format", "csv")))}
    assert (rows["116"]["snapshot_rate"], rows["116"]["snapshot_change"], rows["116"]["snapshot_change_days"],
            rows["116"]["snapshot_per_day"], rows["116"]["snapshot_goal_at"]) == ("0.15", "20", "5", "4.0",
                                                                                  "2020-09-21 (late)")
    assert rows["125"]["snapshot_flags"] == "rate" and rows["116"]["snapshot_flags"] == ""
    assert rows[""]["area"] == "Total" and rows[""]["snapshot_value"] == "150"   # the province: its districts'
    assert "total" in rows[""]["snapshot_flags"].split("; ")

    text = report_cli(workdir)        # in the configured language: Vietnamese by default
    heading = "số liệu chụp nhanh: cài đặt theo số liệu của nơi khác"
    line = columns_of(text[text.index(heading):], "Thành phố Sơn La")
    assert (line["ngày số liệu"], line["trên dân số"], line["thay đổi"], line["mỗi ngày"],
            line["đạt mục tiêu với tốc độ này"]) == ("17/08/2020", "15,00 %", "+20 trong 5 ngày", "4", "21/09/2020 (chậm)")
    assert columns_of(text[text.index(heading):], "Huyện Mai Sơn")["chênh lệch"] == "rate"

    config = workdir / "config.toml"
    config.write_text('language = "en"\n' + config.read_text(encoding="utf-8"), encoding="utf-8")
    text = report_cli(workdir)
    assert "snapshots: installed as others counted it" in text
    line = columns_of(text[text.index("snapshots: installed"):], "Thành phố Sơn La")
    assert (line["of pop."], line["change"], line["per day"], line["goal at this pace"]) == (
        "15.00%", "+20 in 5 d", "4", "2020-09-21 (late)")
    assert columns_of(text[text.index("snapshots: installed"):], "Huyện Mai Sơn")["disagrees"] == "rate"
    assert "Huyện Mai Sơn: rate on 2020-08-17 printed as 16.0%" in " ".join(text.split())


def test_every_area_of_the_segment_has_its_row_and_its_snapshots(engine: Engine, workdir: Path, tmp_path: Path,
                                                                  config: Config) -> None:
    """A district of the segment where no one of the audience lives is a row of zeros, and its
    snapshots are shown with the others'."""
    campaign = setup_world(engine, workdir, tmp_path)
    more = write(tmp_path / "more.csv", "code,name,parent,level,population\n118,Huyện Quỳnh Nhai,14,district,100\n"
                                        "67,Gia Nghĩa,66,district,50\n")
    importer.run_import(engine, importer.AreasHandler(engine, more), more)
    plan_run(engine, config, campaign)
    path = write(tmp_path / "snapshots.csv", "area,as_of,value\n118,2020-08-17,7\n125,2020-08-17,90\n")
    importer.run_import(engine, importer.SnapshotsHandler(engine, path), path)

    report = rep.build(engine, "remind", campaign.goal)
    assert [r.code for r in report.rows] == ["125", "116", "118"]           # not Đắk Nông's district
    quynh_nhai = report.rows[-1]
    assert (quynh_nhai.audience, quynh_nhai.sent, quynh_nhai.installed_total, quynh_nhai.population) == (0, 0, 0, 100)
    assert report.total.population == 1100 and report.whole == "14"
    data = json.loads(report_cli(workdir, "--format", "json"))
    assert {s["code"] for s in data["snapshots"]["series"]} == {"118", "125"}
    assert [r["code"] for r in data["rows"]] == ["125", "116", "118"]
    from loa.htmlreport import render_report

    page = render_report(engine, report)
    snapshot_rows = page.split('id="snapshots-table"', 1)[1].split("</table>", 1)[0]
    assert 'data-code="118"' in snapshot_rows and 'data-code="125"' in snapshot_rows


def test_a_segment_area_that_no_longer_resolves_is_noted(engine: Engine, workdir: Path, tmp_path: Path,
                                                         config: Config) -> None:
    campaign = setup_world(engine, workdir, tmp_path)
    plan_run(engine, config, campaign)
    with engine.begin() as conn:       # as planned by an older version, which took "son la" for the province
        conn.execute(update(db.runs).values(definition={"name": "remind", "segment": {"areas": ["son la"]}}))
    report = rep.build(engine, "remind", None)
    assert [r.code for r in report.rows] == ["125", "116"]
    assert any(n.startswith("segment area 'son la': area 'son la' is ambiguous") for n in report.notes)


def test_unknown_campaign_is_not_found(engine: Engine) -> None:
    with pytest.raises(NotFound, match="'nope' has no runs yet"):
        rep.build(engine, "nope", None)


# -- the attribution window ---------------------------------------------------------
# The run is planned now to go out two hours later, so that the planned send time and
# the moment planning finished differ; messages are delivered an hour after the send time.

WEEK, DAY, MINUTE = timedelta(days=7), timedelta(days=1), timedelta(minutes=1)


def plan_later(engine: Engine, config: Config, campaign: Campaign) -> tuple[int, datetime]:
    """A run planned now for two hours from now: (run id, planned send time)."""
    send = db.utcnow().replace(microsecond=0) + timedelta(hours=2)
    run = plan_run(engine, config, campaign, scheduled_for=send)
    assert planned_at(engine, run.run_id) < send - timedelta(hours=1)
    return run.run_id, send


def with_attribution(window: str) -> str:
    return f'attribution = "{window}"\n' + CAMPAIGN


@pytest.fixture
def windowed(engine: Engine, workdir: Path, tmp_path: Path, config: Config) -> datetime:
    """116: six delivered, two failed; 125: eight held out. Returns the planned send time."""
    campaign = setup_world(engine, workdir, tmp_path)
    run_id, send = plan_later(engine, config, campaign)
    delivered = send + timedelta(hours=1)
    a = lambda i: person("116", i)  # noqa: E731
    b = lambda j: person("125", j)  # noqa: E731
    set_fate(engine, run_id, [a(i) for i in range(5)], "delivered", delivered - MINUTE, delivered)
    set_fate(engine, run_id, [a(5)], "delivered", delivered - MINUTE)    # a gateway's record: no delivery time
    set_fate(engine, run_id, [a(6), a(7)], "failed")
    set_fate(engine, run_id, [a(8), a(9)] + [b(j) for j in range(8, 20)], "expired")
    set_fate(engine, run_id, [b(j) for j in range(8)], "held_out")
    events(engine, [
        (a(0), "installed", delivered - MINUTE),           # while the message was on its way: not a response
        (a(0), "installed", delivered + DAY),              # ...and a second install does not make it one
        (a(1), "installed", delivered),                    # with the receipt, as the simulator's do
        (a(2), "installed", delivered + WEEK - MINUTE),    # just inside the window
        (a(3), "installed", delivered + WEEK + MINUTE),    # just after it
        (a(4), "clicked", delivered + MINUTE),             # not the goal's event
        (a(5), "installed", delivered - MINUTE + DAY),     # clocked from the send
        (a(6), "installed", send + MINUTE),                # never reached: counts for the targeted only
        (a(7), "installed", send + WEEK + MINUTE),         # too late even for that
        (b(0), "installed", send - MINUTE),                # after planning, before the send time
        (b(5), "installed", send - timedelta(minutes=30)),
        (b(1), "installed", send + MINUTE),
        (b(2), "installed", send + WEEK - MINUTE),
        (b(3), "installed", send + WEEK + MINUTE),
        (b(4), "installed", send - timedelta(hours=1)),    # installed before the send time...
        (b(4), "installed", send + timedelta(hours=1)),    # ...and again after: the later one is in the window
    ])
    return send


def test_the_delivered_count_from_delivery_within_the_window(engine: Engine, windowed: datetime) -> None:
    report = rep.build(engine, "remind", None)
    city = next(r for r in report.rows if r.code == "116")
    assert (city.delivered, city.installed_delivered) == (6, 3)          # a(1), a(2), a(5)
    assert city.rate_delivered == pytest.approx(3 / 6)
    assert report.attribution == 7 * 86400


def test_the_held_out_count_from_the_planned_send_time(engine: Engine, windowed: datetime) -> None:
    report = rep.build(engine, "remind", None)
    mai_son = next(r for r in report.rows if r.code == "125")
    assert (mai_son.held_out, mai_son.installed_held_out) == (8, 3)      # b(1), b(2), b(4)
    assert mai_son.rate_held_out == pytest.approx(3 / 8)


def test_intent_to_treat_has_the_held_outs_clock(engine: Engine, windowed: datetime) -> None:
    """Targeted and held out are both counted from the planned send time, for the same window:
    a(2) responded inside the week after delivery but outside the week after the send time."""
    total = rep.build(engine, "remind", None).total
    # a(0) (before delivery, but after the send time), a(1), a(5), a(6)
    assert (total.targeted, total.installed_targeted) == (22, 4)
    assert total.uplift == stats.uplift(4, 22, 3, 8)
    assert total.uplift_points == pytest.approx(100 * (4 / 22 - 3 / 8))


def test_one_run_is_counted_without_grouping_by_person_as_several_runs_would_be(engine: Engine,
                                                                                windowed: datetime) -> None:
    """A run holds one message per person, so a single run's messages are summed as they are;
    the same ledger read the way several runs are (grouped by person first) gives the same rows."""
    with engine.connect() as conn:
        campaign_id = conn.scalar(select(db.campaigns.c.id))
        clocks = rep._run_clocks(conn, campaign_id)
        assert len(clocks) == 1
        alone = rep._per_area(conn, campaign_id, "installed", clocks)
        # a second clock, alike, for a run with no messages: the grouped path
        grouped = rep._per_area(conn, campaign_id, "installed", {**clocks, -1: next(iter(clocks.values()))})
    assert alone == grouped
    assert sum(r.installed_delivered + r.installed_targeted + r.installed_held_out for r in alone.values()) == 10


@pytest.mark.parametrize(("window", "days"), [("2d", 2), ("30d", 30)])   # 30 days: over 2^31 milliseconds
def test_the_campaigns_window(engine: Engine, workdir: Path, tmp_path: Path, config: Config, window: str,
                              days: int) -> None:
    setup_world(engine, workdir, tmp_path)
    write(workdir / "campaigns" / "remind.toml", with_attribution(window))
    campaign = load_one(workdir / "campaigns", "remind")
    assert campaign.attribution == days * 86400
    run_id, send = plan_later(engine, config, campaign)
    delivered = send + timedelta(hours=1)
    inside, outside = timedelta(days=days) - MINUTE, timedelta(days=days) + MINUTE
    a = lambda i: person("116", i)  # noqa: E731
    set_fate(engine, run_id, [a(0), a(1)], "delivered", delivered, delivered)
    set_fate(engine, run_id, [a(2), a(3)], "held_out")
    events(engine, [(a(0), "installed", delivered + inside), (a(1), "installed", delivered + outside),
                    (a(2), "installed", send + inside), (a(3), "installed", send + outside)])

    report = rep.build(engine, "remind", None)
    total = report.total
    assert (total.installed_delivered, total.installed_held_out) == (1, 1)
    assert report.attribution == days * 86400 and not any("attribution" in note for note in report.notes)
    assert json.loads(rep.to_json(report))["attribution"] == window


def test_each_run_keeps_its_window(engine: Engine, workdir: Path, tmp_path: Path, config: Config) -> None:
    """Runs count within the window they were planned with, and the report says they differ."""
    campaign = setup_world(engine, workdir, tmp_path)
    first = plan_run(engine, config, campaign, scheduled_for=db.utcnow() - 10 * DAY)
    write(workdir / "campaigns" / "remind.toml", with_attribution("2d"))
    second_id, send = plan_later(engine, config, load_one(workdir / "campaigns", "remind"))
    first_send = send - 10 * DAY - timedelta(hours=2)
    a = lambda i: person("116", i)  # noqa: E731
    set_fate(engine, first.run_id, [a(0)], "delivered", first_send, first_send)
    set_fate(engine, second_id, [a(1)], "delivered", send, send)
    events(engine, [(a(0), "installed", first_send + 3 * DAY), (a(1), "installed", send + 3 * DAY)])

    report = rep.build(engine, "remind", None)
    assert report.total.installed_delivered == 1                          # a(0), in its run's week
    assert report.attribution is None
    assert "the runs have different attribution windows (2d, 7d)" in report.notes[-1]
    assert json.loads(rep.to_json(report))["attribution"] is None


def test_held_out_greetings_count_from_the_arrival_and_the_delay(engine: Engine, workdir: Path, tmp_path: Path,
                                                                 config: Config) -> None:
    """An arrival run is the local day's; each greeting is due ``delay`` after its arrival."""
    setup_world(engine, workdir, tmp_path)
    write(workdir / "campaigns" / "greet.toml", """
        name = "greet"
        channels = ["sms"]
        trigger = "arrival"
        holdout = 0.5
        validity_hours = 6
        [segment]
        areas = ["Sơn La"]
        [arrival]
        delay = "10m"
        [sms]
        template = "sms/remind.j2"
    """)
    campaign = load_one(workdir / "campaigns", "greet")
    now = db.utcnow().replace(microsecond=0)
    arrived = now - timedelta(hours=1)
    s, a = db.subscribers, db.arrivals
    with engine.begin() as conn:
        people = conn.execute(select(s.c.id, s.c.area_id).where(s.c.phone.like("+84911%"))).all()
        conn.execute(a.insert(), [{"subscriber_id": sid, "area_id": area, "arrived_at": arrived, "source": "test",
                                   "created_at": now} for sid, area in people])
    assert greet(engine, config, [campaign], now=now) == {"greet": len(people)}
    with engine.connect() as conn:
        held = list(conn.scalars(select(s.c.phone).join(O, O.c.subscriber_id == s.c.id)
                                 .where(O.c.state == "held_out").order_by(s.c.phone)))
    assert len(held) >= 3
    due = arrived + timedelta(minutes=10)
    events(engine, [(held[0], "installed", due - MINUTE),        # after the arrival, before the greeting was due
                    (held[1], "installed", due + MINUTE),        # before planning finished: counts all the same
                    (held[2], "installed", due + WEEK + MINUTE)])

    total = rep.build(engine, "greet", None).total
    assert (total.held_out, total.installed_held_out) == (len(held), 1)


# -- the demo states the figures of its own table ------------------------------------------

def test_the_demo_states_the_installs_after_the_message_that_its_table_shows(tmp_path: Path) -> None:
    """The simulator's installs (step 5) are only some of those the report counts after the message:
    it also counts those who installed on their own (step 6) once the reminder had reached them.
    The story states the report's figure, the one in the table, and no other under that name."""
    import re

    from rich.console import Console

    from loa.demo import run_demo

    console = Console(file=io.StringIO(), width=300, color_system=None)
    run_demo(tmp_path / "demo", subscribers=3000, seed=11, fmt="table", console=console)
    text = console.file.getvalue()  # type: ignore[attr-defined]

    stated = {int(n.replace(",", "")) for n in re.findall(r"([\d,]+) installs? after the message", text)}
    total = columns_of(text, "Total")
    shown = int(total["after msg"].split()[0].replace(",", ""))
    assert stated == {shown}, text
    undelivered = int(re.search(r"\(([\d,]+) delivered, ([\d,]+) undelivered\)", text)[2].replace(",", ""))
    assert int(total["undeliv."].replace(",", "")) == undelivered > 0
    # and the figure is the report's, as `loa report` makes it from the demo's database
    engine = db.make_engine(f"sqlite:///{tmp_path / 'demo' / 'loa.db'}")
    try:
        again = rep.build(engine, "bluezone-reminder", None).total
    finally:
        engine.dispose()
    assert (again.installed_delivered, again.undelivered) == (shown, undelivered)
    prompted = int(re.search(r"the simulator had ([\d,]+) of the recipients install", text)[1].replace(",", ""))
    assert 0 < prompted < shown           # the baseline's installs after the message are counted too
