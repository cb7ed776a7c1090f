"""Snapshots: the Sơn La and Đắk Nông tables, imported and checked against their own counts.

The Sơn La table ships with loa (loa/data, the letter of 17 August 2020); the
Đắk Nông figures are copied below from ../shared/data, and compared with that
file when it is there.
"""

from __future__ import annotations

import csv
import math
from datetime import date, timedelta
from pathlib import Path

import pytest
from conftest import ROOT, write
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from loa import db, i18n, importer
from loa import snapshots as snap
from loa.areas import Area, AreaIndex
from loa.campaign import Goal
from loa.demo import DATA as SON_LA_CSV
from loa.demo import DISTRICT_CODES
from loa.errors import InputError, NotFound, say

SHARED = ROOT.parent / "shared" / "data"
SON_LA_PRINTED_POPULATION = 1_248_415    # the table's printed total
SON_LA_LETTER_TOTAL = 84_124             # the letter's body
SON_LA_PRINTED_CHANGE = 19_867           # the table's printed total of changes
GOAL = Goal(event="installed", share=0.5, of="population", by=date(2020, 8, 20))


def son_la_table() -> list[dict[str, str]]:
    with SON_LA_CSV.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def import_file(engine: Engine, handler: object, path: Path) -> importer.ImportSummary:
    return importer.run_import(engine, handler, path)  # type: ignore[arg-type]


def load_son_la(engine: Engine, tmp_path: Path) -> None:
    table = son_la_table()
    lines = ["code,name,parent,level,population,population_as_of",
             f"14,Sơn La,,province,{SON_LA_PRINTED_POPULATION},2020-08-17"]
    lines += [f"{DISTRICT_CODES[r['district']]},{r['district']},14,district,{r['population']},2020-08-17"
              for r in table if r["district"] in DISTRICT_CODES]
    areas = write(tmp_path / "areas.csv", "\n".join(lines) + "\n")
    assert import_file(engine, importer.AreasHandler(engine, areas), areas).imported == 13
    # the table as a snapshots file: districts by name within the province, the unknown row,
    # and the province's stated totals (registrations from the letter, changes as printed)
    out = ["area,parent,as_of,value,change,change_since,rate,source"]
    for r in table:
        change = r["change_since_2020_08_12"]
        out.append(f"{r['district']},{r['province']},2020-08-17,{r['registered_2020_08_17']},{change},"
                   f"{'2020-08-12' if change else ''},{r['rate_as_printed']},table")
    out.append(f"Sơn La,,2020-08-17,\"{SON_LA_LETTER_TOTAL:,}\",{SON_LA_PRINTED_CHANGE},2020-08-12,,letter")
    path = write(tmp_path / "son_la_snapshots.csv", "\n".join(out) + "\n")
    summary = import_file(engine, importer.SnapshotsHandler(engine, path), path)
    assert (summary.read, summary.imported, summary.rejected) == (14, 14, 0), summary
    assert summary.new == 13          # the unknown row joins the province's own


def test_son_la_rates_are_recomputed_from_the_counts(engine: Engine, tmp_path: Path) -> None:
    load_son_la(engine, tmp_path)
    summary = snap.summarize(engine, goal=GOAL)

    mai_son = summary.get("Huyện Mai Sơn").latest
    assert (mai_son.value, mai_son.stated_rate) == (10_329, "6.4")
    assert mai_son.rate == 10_329 / 162_696
    assert f"{100 * mai_son.rate:.2f}" == "6.35"
    assert f"{100 * summary.get('Huyện Phù Yên').latest.rate:.2f}" == "5.94"
    # every other printed rate is the count over the population, rounded to one decimal
    wrong = set()
    for s in summary.series[1:]:
        p = s.latest
        if f"{100 * p.rate:.1f}" != p.stated_rate:
            wrong.add(s.area)
    assert wrong == {"Huyện Mai Sơn", "Huyện Phù Yên"}

    province = summary.series[0]
    assert (province.code, province.area) == ("14", "Sơn La")
    p = province.latest
    assert (p.stated, p.children, p.unallocated, p.value) == (84_124, 84_099, 27, 84_126)
    assert p.rate == 84_126 / SON_LA_PRINTED_POPULATION
    # districts in the order of the printed table: highest rate first
    assert [s.area for s in summary.series[1:]] == [r["district"] for r in son_la_table()[:12]]


def test_son_la_disagreements_are_listed(engine: Engine, tmp_path: Path) -> None:
    load_son_la(engine, tmp_path)
    summary = snap.summarize(engine, goal=GOAL)

    assert [(d.kind, d.area, d.stated, round(d.computed, 2)) for d in summary.disagreements] == [
        ("total", "Sơn La", 84_124, 84_126),
        ("change", "Sơn La", 19_867, 19_855),
        ("population", "Sơn La", 1_248_415, 1_234_854),
        ("rate", "Huyện Mai Sơn", "6.4", 6.35),
        ("rate", "Huyện Phù Yên", "6.0", 5.94),
    ]
    assert summary.notes == [
        ("Sơn La: installed on 2020-08-17 stated as 84,124, but its 12 district areas add up to 84,099, "
        "84,126 with the 27 counted in none of them (difference -2); 84,126 is used"),
        ("Sơn La: installed change from 2020-08-12 to 2020-08-17 stated as +19,867, but its 12 district areas' "
        "changes add up to 19,855 (difference +12)"),
        ("Sơn La: population given as 1,248,415, but its 12 district areas add up to 1,234,854 "
        "(difference +13,561); shares here use each area's own figure"),
        "Huyện Mai Sơn: rate on 2020-08-17 printed as 6.4%, but 10,329 / 162,696 = 6.35%",
        "Huyện Phù Yên: rate on 2020-08-17 printed as 6.0%, but 6,763 / 113,779 = 5.94%",
    ]
    # in the report's language: Vietnamese words and numbers (84.124, 6,35 %)
    vi = i18n.language("vi")
    assert [say(n, vi) for n in summary.notes] == [
        ("Sơn La: installed ngày 2020-08-17 ghi là 84.124, nhưng 12 địa bàn cấp quận/huyện của nó cộng lại được "
         "84.099, 84.126 nếu tính cả 27 không thuộc địa bàn nào (chênh lệch -2); dùng 84.126"),
        ("Sơn La: mức thay đổi installed từ 2020-08-12 đến 2020-08-17 ghi là +19.867, nhưng mức thay đổi của "
         "12 địa bàn cấp quận/huyện của nó cộng lại được 19.855 (chênh lệch +12)"),
        ("Sơn La: dân số ghi là 1.248.415, nhưng 12 địa bàn cấp quận/huyện của nó cộng lại được 1.234.854 "
         "(chênh lệch +13.561); tỷ lệ ở đây dùng số liệu riêng của từng địa bàn"),
        "Huyện Mai Sơn: tỷ lệ ngày 2020-08-17 in là 6,4 %, nhưng 10.329 / 162.696 = 6,35 %",
        "Huyện Phù Yên: tỷ lệ ngày 2020-08-17 in là 6,0 %, nhưng 6.763 / 113.779 = 5,94 %",
    ]
    assert [say(n, i18n.language("en")) for n in summary.notes] == summary.notes


def test_son_la_stated_changes_give_a_pace(engine: Engine, tmp_path: Path) -> None:
    load_son_la(engine, tmp_path)
    summary = snap.summarize(engine, goal=GOAL)

    mai_son = summary.get("125")
    before, after = mai_son.points
    assert (before.as_of, before.value, before.implied) == (date(2020, 8, 12), 10_329 - 2_468, True)
    assert (after.change, after.days, after.per_day) == (2_468, 5, 2_468 / 5)
    assert after.progress == pytest.approx(10_329 / 162_696 / 0.5)
    # 50% of 162,696 is 81,348: 71,019 more at 493.6 a day is 143.9 days, so on the 144th
    assert mai_son.target == 81_348
    assert mai_son.projected == date(2020, 8, 17) + timedelta(days=144) == date(2021, 1, 8)
    assert mai_son.on_track is False and mai_son.reached is False

    province = summary.series[0]
    before, after = province.points
    assert (before.value, before.implied) == (84_099 - 19_855, True)    # the districts' own 12 August
    assert after.change == 84_126 - 64_244
    need = 0.5 * SON_LA_PRINTED_POPULATION - 84_126
    assert province.projected == date(2020, 8, 17) + timedelta(days=math.ceil(need / (19_882 / 5)))
    assert province.projected == date(2020, 12, 31)


def test_the_packaged_son_la_table_is_the_shared_one() -> None:
    shared = SHARED / "son_la_bluezone_2020-08-17.csv"
    if not shared.is_file():
        pytest.skip(f"{shared} is not there")
    assert shared.read_bytes() == SON_LA_CSV.read_bytes()


# -- Đắk Nông ---------------------------------------------------------------------------------

DAK_NONG_2020_08_11 = {   # ../shared/data/dak_nong_bluezone_2020-08-11.csv, 08:00 on 11 August 2020
    "Thành phố Gia Nghĩa": 12452, "Huyện Đắk Glong": 3919, "Huyện Cư Jút": 6306, "Huyện Đắk Mil": 7904,
    "Huyện Krông Nô": 4924, "Huyện Đắk Song": 5964, "Huyện Đắk R'lấp": 6770, "Huyện Tuy Đức": 3735,
}
DAK_NONG_TOTAL_2020_08_11 = 51_974    # "about 8.35% of the population"
DAK_NONG_TOTAL_2020_08_24 = 69_685    # "11.20%"
DAK_NONG_POPULATION = 622_443         # not in the letters: implied by 51,974 being 8.35%


def test_the_dak_nong_rows_are_the_shared_ones() -> None:
    shared = SHARED / "dak_nong_bluezone_2020-08-11.csv"
    if not shared.is_file():
        pytest.skip(f"{shared} is not there")
    with shared.open(encoding="utf-8") as f:
        assert {r["district"]: int(r["registered_2020_08_11"]) for r in csv.DictReader(f)} == DAK_NONG_2020_08_11


def test_dak_nong_adds_up_and_projects(engine: Engine, tmp_path: Path) -> None:
    lines = ["code,name,parent,level,population", f"67,Đắk Nông,,province,{DAK_NONG_POPULATION}"]
    lines += [f"{660 + i},{name},67,district," for i, name in enumerate(DAK_NONG_2020_08_11)]
    areas = write(tmp_path / "areas.csv", "\n".join(lines) + "\n")
    import_file(engine, importer.AreasHandler(engine, areas), areas)
    rows = ["area,parent,value,rate,source"]
    rows += [f"{name.replace('Huyện ', '').replace('Thành phố ', '')},,{n},,seed 002"   # as people type them
             for name, n in DAK_NONG_2020_08_11.items()]
    rows.append(f"Tổng cộng,Đắk Nông,{DAK_NONG_TOTAL_2020_08_11},8.35,seed 002")
    # no as_of column: the date is given for the whole file
    first = write(tmp_path / "dak_nong_08_11.csv", "\n".join(rows) + "\n")
    s1 = import_file(engine, importer.SnapshotsHandler(engine, first, as_of=date(2020, 8, 11)), first)
    assert (s1.imported, s1.rejected) == (9, 0)
    second = write(tmp_path / "dak_nong_08_24.csv", f"""
        area,as_of,value,rate,source
        Đắk Nông,2020-08-24,{DAK_NONG_TOTAL_2020_08_24},"11,20%",seed 000
    """)
    assert import_file(engine, importer.SnapshotsHandler(engine, second), second).imported == 1

    summary = snap.summarize(engine, goal=GOAL)
    assert summary.disagreements == []          # districts add up to the total; rates as printed
    province = summary.get("Đắk Nông")
    first_point, last = province.points
    assert (first_point.stated, first_point.children, first_point.value) == (51_974, 51_974, 51_974)
    assert (last.stated, last.children, last.value) == (69_685, None, 69_685)   # no districts that day
    assert f"{100 * first_point.rate:.2f}" == "8.35" and f"{100 * last.rate:.2f}" == "11.20"
    assert (last.change, last.days) == (69_685 - 51_974, 13)
    pace = (69_685 - 51_974) / 13
    days = math.ceil((0.5 * DAK_NONG_POPULATION - 69_685) / pace)
    assert days == 178 and province.projected == date(2020, 8, 24) + timedelta(days=days)
    assert province.on_track is False
    # districts: one figure each, no population, so neither rate nor pace
    gia_nghia = summary.get("Thành phố Gia Nghĩa")
    assert [p.value for p in gia_nghia.points] == [12452] and gia_nghia.latest.rate is None
    assert gia_nghia.projected is None
    assert [s.area for s in snap.summarize(engine, under="Đắk Nông").series][:2] == ["Đắk Nông",
                                                                                     "Thành phố Gia Nghĩa"]


# -- projection ---------------------------------------------------------------------------------

def test_projection_on_two_snapshots() -> None:
    a, b = (date(2020, 8, 1), 100), (date(2020, 8, 11), 200)      # 10 a day
    assert snap.project(a, b, 500) == date(2020, 9, 10)           # 300 more: exactly 30 days
    assert snap.project(a, b, 500.5) == date(2020, 9, 11)         # a little more: the next day
    assert snap.project(a, b, 201) == date(2020, 8, 12)
    assert snap.project(a, b, 200) is None                        # reached: nothing to project
    assert snap.project(a, (date(2020, 8, 11), 100), 500) is None  # flat
    assert snap.project(a, (date(2020, 8, 11), 90), 500) is None   # falling
    assert snap.project(a, (date(2020, 8, 1), 200), 500) is None   # same day: no pace
    # exact arithmetic: 1/3 a day, 10 more is 30 days, not 31
    assert snap.project((date(2020, 1, 1), 0), (date(2020, 1, 4), 1), 11) == date(2020, 2, 3)


def test_series_on_a_constructed_history() -> None:
    index = AreaIndex([Area(1, "P", "Tỉnh Thử", None, "province", "/1/", 1000),
                       Area(2, "A", "Huyện A", 1, "district", "/1/2/", 600),
                       Area(3, "B", "Huyện B", 1, "district", "/1/3/", 400)])
    rows = [
        {"area_id": 2, "as_of": date(2020, 8, 1), "value": 60},
        {"area_id": 3, "as_of": date(2020, 8, 1), "value": 40},
        {"area_id": 2, "as_of": date(2020, 8, 11), "value": 160},
        {"area_id": 3, "as_of": date(2020, 8, 11), "value": 40},
        {"area_id": 2, "as_of": date(2020, 8, 21), "value": 310},      # B has no figure that day
    ]
    goal = Goal(share=0.5, by=date(2020, 9, 1))
    summary = snap.compute(index, rows, goal=goal)
    assert [s.code for s in summary.series] == ["P", "A", "B"]
    province, a, b = summary.series
    assert [(p.as_of.day, p.value) for p in province.points] == [(1, 100), (11, 200)]
    assert [p.change for p in province.points] == [None, 100]
    assert province.projected == date(2020, 8, 11) + timedelta(days=30) and province.on_track is False
    assert [p.value for p in a.points] == [60, 160, 310]
    assert a.reached is True and a.projected is None and a.on_track is True   # 310 of 600 >= 50%
    assert b.projected is None and b.on_track is False                        # not growing
    assert summary.disagreements == []
    assert summary.dates == [date(2020, 8, 1), date(2020, 8, 11), date(2020, 8, 21)]
    data = summary.as_dict()
    assert data["series"][0]["points"][1]["as_of"] == "2020-08-11"
    assert data["series"][0]["projected"] == "2020-09-10"

    # a change stated for a date that has its own figure is checked against the figures
    rows[2] |= {"stated_change": 90, "change_since": date(2020, 8, 1)}
    rows[3] |= {"stated_change": 0, "change_since": date(2020, 8, 1), "stated_rate": "10"}
    summary = snap.compute(index, rows, goal=goal)
    assert summary.notes == [
        ("Huyện A: installed change from 2020-08-01 to 2020-08-11 stated as +90, but the figures say "
        "160 - 60 = +100 (difference -10)"),
    ]
    assert [say(n, i18n.language("vi")) for n in summary.notes] == [
        ("Huyện A: mức thay đổi installed từ 2020-08-01 đến 2020-08-11 ghi là +90, nhưng theo số liệu thì "
         "160 - 60 = +100 (chênh lệch -10)")]
    assert summary.get("B").latest.stated_rate == "10"     # 40 of 400 is 10%: as printed


# -- the import ---------------------------------------------------------------------------------

AREAS = """
code,name,parent,level,population
14,Sơn La,,province,1000
116,Thành phố Sơn La,14,district,400
125,Huyện Mai Sơn,14,district,600
67,Đắk Nông,,province,500
"""


def test_import_refuses_what_it_cannot_place(engine: Engine, tmp_path: Path) -> None:
    areas = write(tmp_path / "areas.csv", AREAS)
    import_file(engine, importer.AreasHandler(engine, areas), areas)
    path = write(tmp_path / "snaps.csv", """
        area,parent,metric,as_of,value,change,change_since,rate
        Sơn La,Sơn La,installed,2020-08-17,"1.000",,,
        Mai Sơn,,installed,2020-08-17,600,100,2020-08-12,"60,0"
        (district unknown),,installed,2020-08-17,27,,,
        không rõ,Sơn La,installed,2020-08-17,3,,,
        Không rõ,Sơn La,installed,2020-08-17,4,,,
        Mai Sơn,Sơn La,installed,2020-08-17,601,,,
        Đắk Nông,Sơn La,installed,2020-08-17,5,,,
        Gia Nghĩa,,installed,2020-08-17,5,,,
        116,,installed,17/08/2020,5,,,
        116,,installed,2020-08-17,-5,,,
        116,,installed,2020-08-17,5,3,,
        116,,installed,2020-08-17,5,3,2020-08-18,
        116,,Installed Total,2020-08-17,5,,,
        116,,installed,2020-08-17,5,,,lots
        116,,,2020-08-17,"1 234",,,
    """)
    summary = import_file(engine, importer.SnapshotsHandler(engine, path), path)
    assert (summary.read, summary.imported, summary.rejected) == (15, 4, 11)
    with summary.rejects_path.open(encoding="utf-8") as f:
        rejects = [(r["line"], r["column"], r["reason"]) for r in csv.DictReader(f)]
    assert rejects == [
        ("4", "parent", ("'(district unknown)' counts people in no known area: say in the parent column which "
                        "area it belongs to")),
        ("6", "area", "people in no area of Sơn La: installed on 2020-08-17 is already given earlier in this file"),
        ("7", "area", "Huyện Mai Sơn (125): installed on 2020-08-17 is already given earlier in this file"),
        ("8", "area", "Đắk Nông (67) is not in Sơn La (14)"),
        ("9", "area", "no area with code or name 'Gia Nghĩa'"),
        ("10", "as_of", "not a date (YYYY-MM-DD): '17/08/2020'"),
        ("11", "value", "not a whole number (0 or more): '-5'"),
        ("12", "change_since", "a change needs the date it is counted from"),
        ("13", "change_since", "2020-08-18 is not before as_of 2020-08-17"),
        ("14", "metric", "not a metric name: 'installed total' (lowercase letters, digits, _; e.g. installed)"),
        ("15", "rate", "not a percentage: 'lots' (e.g. 6.4 or 6,4%)"),
    ]
    t = db.snapshots
    with engine.connect() as conn:
        got = {(r.area_id, r.value, r.unallocated, r.stated_change, r.change_since, r.stated_rate)
               for r in conn.execute(select(t))}
    assert got == {(1, 1000, 3, None, None, None), (3, 600, None, 100, date(2020, 8, 12), "60.0"),
                   (2, 1234, None, None, None, None)}


def test_a_name_that_may_mean_two_areas_of_the_parent_is_refused(engine: Engine, tmp_path: Path) -> None:
    """Within Sơn La, "son la" is the province itself or its city: the row names both, a figure
    is never put on the wrong one; written as stored, or by code, it goes in."""
    areas = write(tmp_path / "areas.csv", AREAS)
    import_file(engine, importer.AreasHandler(engine, areas), areas)
    path = write(tmp_path / "snaps.csv", """
        area,parent,as_of,value
        son la,Sơn La,2020-08-17,21106
        Sơn La,Sơn La,2020-08-17,64000
        thanh pho son la,Sơn La,2020-08-17,21107
    """)
    summary = import_file(engine, importer.SnapshotsHandler(engine, path), path)
    assert (summary.imported, summary.rejected) == (2, 1)
    with summary.rejects_path.open(encoding="utf-8") as f:
        [(line, column, reason)] = [(r["line"], r["column"], r["reason"]) for r in csv.DictReader(f)]
    assert (line, column) == ("2", "area")
    assert reason.startswith("area 'son la' is ambiguous in Sơn La: Sơn La (14); Thành phố Sơn La (116); use the code")
    with engine.connect() as conn:
        got = dict(conn.execute(select(db.areas.c.code, db.snapshots.c.value)
                                .join(db.areas, db.areas.c.id == db.snapshots.c.area_id)).all())
    assert got == {"14": 64000, "116": 21107}


def test_reimport_replaces_the_statement(engine: Engine, tmp_path: Path) -> None:
    areas = write(tmp_path / "areas.csv", AREAS)
    import_file(engine, importer.AreasHandler(engine, areas), areas)
    path = write(tmp_path / "a.csv", """
        area,parent,as_of,value
        116,,2020-08-17,5
        (district unknown),14,2020-08-17,2
    """)
    assert import_file(engine, importer.SnapshotsHandler(engine, path), path).new == 2
    again = write(tmp_path / "b.csv", """
        area,as_of,value,source
        116,2020-08-17,7,corrected
    """)
    summary = import_file(engine, importer.SnapshotsHandler(engine, again), again)
    assert (summary.imported, summary.new) == (1, 0)
    with engine.connect() as conn:
        rows = {r.area_id: (r.value, r.unallocated, r.source) for r in conn.execute(select(db.snapshots))}
        assert conn.scalar(select(func.count()).select_from(db.snapshots)) == 2
    assert rows == {2: (7, None, "corrected"), 1: (None, 2, "a.csv")}
    # the province has only the unknown part; Mai Sơn has no figure, so no sum either
    summary_ = snap.summarize(engine)
    assert [s.code for s in summary_.series] == ["116"]


def test_header_and_empty_cases(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path / "s.csv", "area,value\n116,5\n")
    with pytest.raises(InputError, match="missing as_of"):
        importer.run_import(engine, importer.SnapshotsHandler(engine, path), path)
    with pytest.raises(InputError, match="no areas are loaded"):
        importer.run_import(engine, importer.SnapshotsHandler(engine, path, as_of=date(2020, 8, 17)), path)
    with pytest.raises(InputError, match="not a metric name"):
        importer.SnapshotsHandler(engine, path, metric="Installs!")
    with pytest.raises(NotFound, match="no snapshots of 'installed'"):
        snap.summarize(engine)


def test_related_to_keeps_one_branch(engine: Engine, tmp_path: Path) -> None:
    load_son_la(engine, tmp_path)
    assert [s.code for s in snap.summarize(engine, related_to=["125"]).series] == ["14", "125"]
    whole = snap.summarize(engine, related_to=["14", ""])
    assert len(whole.series) == 13 and len(whole.disagreements) == 5
    only = snap.summarize(engine, related_to=["122"])          # Phù Yên: its rate and the province's notes
    assert [d.kind for d in only.disagreements] == ["total", "change", "population", "rate"]
    assert snap.summarize(engine, related_to=["nowhere"]).series == []
    with pytest.raises(NotFound, match="no area with code or name 'Atlantis'"):
        snap.summarize(engine, under="Atlantis")
