"""Areas are versioned: a re-import never erases what its empty cells leave out, and populations
keep their history by date."""

from __future__ import annotations

import csv
import os
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner, Result
from conftest import AREAS_CSV, write
from sqlalchemy import delete, select, update
from sqlalchemy.engine import Engine

from loa import db
from loa.areas import populations_on
from loa.cli import main
from loa.errors import LoaError
from loa.importer import AreasHandler, ImportSummary, SubscribersHandler, run_import
from loa.segments import compile_segment

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
SUBSCRIBERS = "phone,area\n0912000001,116\n0912000002,125\n0912000003,14\n0912000004,66\n"


def import_areas(engine: Engine, path: Path, **kw: Any) -> ImportSummary:
    return run_import(engine, AreasHandler(engine, path, **kw), path)


def areas_by_code(engine: Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        return {r.code: r._asdict() for r in conn.execute(select(db.areas))}


def history(engine: Engine) -> dict[str, dict[date, int]]:
    a, h = db.areas, db.area_populations
    out: dict[str, dict[date, int]] = {}
    with engine.connect() as conn:
        for code, as_of, population in conn.execute(
                select(a.c.code, h.c.as_of, h.c.population).join(a, a.c.id == h.c.area_id)):
            out.setdefault(code, {})[as_of] = population
    return out


def rejects(path: Path | None) -> list[dict[str, str]]:
    assert path is not None, "no rejects file was written"
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def segment(engine: Engine, *areas: str) -> set[str]:
    with engine.connect() as conn:
        where = compile_segment({"areas": list(areas)}, conn, TZ)
        return {p[-1] for p in conn.scalars(select(db.subscribers.c.phone).where(where))}


@pytest.fixture
def loaded(engine: Engine, areas_csv: Path, tmp_path: Path) -> dict[str, dict[str, Any]]:
    assert import_areas(engine, areas_csv).imported == 4
    subs = write(tmp_path / "subs.csv", SUBSCRIBERS)
    assert run_import(engine, SubscribersHandler(engine, subs), subs).imported == 4
    return areas_by_code(engine)


# -- a re-import never erases ---------------------------------------------------------

def test_a_code_name_reimport_keeps_parents_populations_and_segments(engine: Engine, loaded: dict[str, Any],
                                                                      tmp_path: Path) -> None:
    """Re-importing a code,name file set every parent and population to NULL: "Sơn La" shrank to
    the people registered at province level."""
    assert segment(engine, "14") == {"1", "2", "3"}
    renamed = write(tmp_path / "names.csv", "code,name\n14,Tỉnh Sơn La\n116,Thành phố Sơn La\n125,Huyện Mai Sơn\n")
    summary = import_areas(engine, renamed)
    assert (summary.imported, summary.rejected, summary.failure) == (3, 0, None)
    after = areas_by_code(engine)
    assert after["14"]["name"] == "Tỉnh Sơn La"
    for code in ("14", "116", "125"):
        for column in ("parent_id", "level", "path", "population", "population_as_of"):
            assert after[code][column] == loaded[code][column], (code, column)
    assert segment(engine, "14") == {"1", "2", "3"}


def test_empty_cells_keep_what_is_stored(engine: Engine, loaded: dict[str, Any], tmp_path: Path) -> None:
    blank = write(tmp_path / "blank.csv", """
        code,name,parent,level,population,population_as_of
        116,,,,,
        125,Huyện Mai Sơn Mới,,,,2023-01-01
    """)
    summary = import_areas(engine, blank)
    assert (summary.imported, summary.rejected) == (2, 0)
    after = areas_by_code(engine)
    assert after["116"] == loaded["116"] | {"updated_at": after["116"]["updated_at"]}
    assert after["125"]["name"] == "Huyện Mai Sơn Mới"
    # a date with no population dates nothing
    assert (after["125"]["population"], after["125"]["population_as_of"]) == (600, date(2020, 8, 17))
    assert after["125"]["parent_id"] == loaded["14"]["id"] and after["125"]["level"] == "district"
    assert segment(engine, "14") == {"1", "2", "3"}


def test_a_new_area_still_needs_a_name(engine: Engine, loaded: dict[str, Any], tmp_path: Path) -> None:
    summary = import_areas(engine, write(tmp_path / "new.csv", "code,name\n999,\n"))
    assert summary.rejected == 1
    assert [(r["line"], r["column"], r["reason"]) for r in rejects(summary.rejects_path)] == [("2", "name", "empty name")]


# -- populations by date --------------------------------------------------------------

def test_dated_populations_keep_their_history(engine: Engine, loaded: dict[str, Any], tmp_path: Path) -> None:
    import_areas(engine, write(tmp_path / "2023.csv", """
        code,name,population,population_as_of
        116,Thành phố Sơn La,450,2023-01-01
        125,Huyện Mai Sơn,700,2023-01-01
    """))
    older = import_areas(engine, write(tmp_path / "2019.csv", "code,name,population,population_as_of\n"
                                                              "116,Thành phố Sơn La,380,2019-04-01\n"))
    assert (older.imported, older.rejected) == (1, 0)
    assert history(engine)["116"] == {date(2019, 4, 1): 380, date(2020, 8, 17): 400, date(2023, 1, 1): 450}
    assert history(engine)["125"] == {date(2020, 8, 17): 600, date(2023, 1, 1): 700}
    after = areas_by_code(engine)
    # the current figure is the latest, whatever order the files came in
    assert (after["116"]["population"], after["116"]["population_as_of"]) == (450, date(2023, 1, 1))
    assert (after["125"]["population"], after["125"]["population_as_of"]) == (700, date(2023, 1, 1))
    # a corrected figure for a date replaces that date's
    import_areas(engine, write(tmp_path / "fix.csv", "code,name,population,population_as_of\n"
                                                     "116,Thành phố Sơn La,455,2023-01-01\n"))
    assert history(engine)["116"][date(2023, 1, 1)] == 455
    assert areas_by_code(engine)["116"]["population"] == 455
    city = after["116"]["id"]
    with engine.connect() as conn:
        on = {day: populations_on(conn, day)[city] for day in (date(2019, 1, 1), date(2020, 8, 20), date(2026, 1, 1))}
    assert (on[date(2019, 1, 1)].value, on[date(2019, 1, 1)].as_of) == (380, date(2019, 4, 1))  # none earlier
    assert (on[date(2020, 8, 20)].value, on[date(2020, 8, 20)].as_of) == (400, date(2020, 8, 17))
    assert (on[date(2026, 1, 1)].value, on[date(2026, 1, 1)].as_of) == (455, date(2023, 1, 1))


def test_the_as_of_option_dates_rows_without_a_date(engine: Engine, loaded: dict[str, Any], tmp_path: Path) -> None:
    path = write(tmp_path / "census.csv", """
        code,name,population,population_as_of
        116,Thành phố Sơn La,460,
        125,Huyện Mai Sơn,710,2023-06-30
    """)
    summary = import_areas(engine, path, as_of=date(2024, 1, 1))
    assert (summary.imported, summary.rejected) == (2, 0)
    assert history(engine)["116"][date(2024, 1, 1)] == 460
    assert history(engine)["125"][date(2023, 6, 30)] == 710          # the row's own date wins


def test_an_undated_population_next_to_dated_ones_is_refused(engine: Engine, loaded: dict[str, Any],
                                                             tmp_path: Path) -> None:
    path = write(tmp_path / "undated.csv", """
        code,name,parent,level,population
        125,Huyện Mai Sơn,,,650
        901,Xã Mới,125,commune,1200
        116,Thành phố Sơn La,,,
    """)
    summary = import_areas(engine, path)
    assert (summary.imported, summary.rejected) == (2, 1)
    [row] = rejects(summary.rejects_path)
    assert (row["line"], row["column"]) == ("2", "population_as_of")
    assert row["reason"] == ("population 650 has no date, but Huyện Mai Sơn has populations dated 2020-08-17: "
                             "give its date (population_as_of, or --as-of)")
    after = areas_by_code(engine)
    assert after["125"]["population"] == 600
    # an area with no dated figure takes an undated one, which stays out of the history
    assert (after["901"]["population"], after["901"]["population_as_of"]) == (1200, None)
    assert "901" not in history(engine)
    # ... until a dated one comes: then an undated one is refused there too
    import_areas(engine, write(tmp_path / "dated.csv", "code,name,population,population_as_of\n"
                                                       "901,Xã Mới,1250,2024-01-01\n"))
    again = import_areas(engine, write(tmp_path / "again.csv", "code,name,population\n901,Xã Mới,1300\n"))
    assert again.rejected == 1 and "dated 2024-01-01" in rejects(again.rejects_path)[0]["reason"]
    assert areas_by_code(engine)["901"]["population"] == 1250


def test_a_file_that_dates_a_figure_cannot_leave_the_next_one_undated(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path / "mixed.csv", """
        code,name,population,population_as_of
        7,Xã Bảy,100,2020-01-01
        7,Xã Bảy,120,
    """)
    summary = import_areas(engine, path)
    assert (summary.imported, summary.rejected) == (1, 1)
    assert rejects(summary.rejects_path)[0]["line"] == "3"
    assert history(engine) == {"7": {date(2020, 1, 1): 100}}


# -- upgrading a database from before the history ---------------------------------------

def test_loa_init_upgrades_a_database_and_backfills_the_history(engine: Engine, areas_csv: Path) -> None:
    import_areas(engine, areas_csv)
    from alembic import command

    with engine.begin() as conn:   # as a database of revision 0001 has it: the later revisions undone
        command.downgrade(db._alembic_config(conn), "0001")
        conn.execute(update(db.areas).where(db.areas.c.code == "66").values(population_as_of=None))
    head = db._revisions()[0]
    with pytest.raises(LoaError, match=rf"schema of an older loa \(revision 0001, this loa needs {head}\); run `loa init`"):
        db.check_schema(engine)
    assert db.create_schema(engine) is False
    db.check_schema(engine)
    assert history(engine) == {"14": {date(2020, 8, 17): 1000}, "116": {date(2020, 8, 17): 400},
                               "125": {date(2020, 8, 17): 600}}          # 66's figure has no date
    # only the upgrade fills it: running init again adds nothing back
    with engine.begin() as conn:
        conn.execute(delete(db.area_populations).where(db.area_populations.c.population == 1000))
    db.create_schema(engine)
    assert "14" not in history(engine)


# -- the command line ---------------------------------------------------------------

def test_loa_import_areas_as_of(workdir: Path, tmp_path: Path) -> None:
    def loa(*args: str) -> Result:
        return CliRunner().invoke(main, ["--config", str(workdir / "config.toml"), *args])

    assert loa("init").exit_code == 0
    assert loa("import", "areas", str(write(tmp_path / "areas.csv", AREAS_CSV))).exit_code == 0
    census = write(tmp_path / "census.csv", "code,name,population\n116,Thành phố Sơn La,470\n")
    result = loa("import", "areas", str(census))
    assert result.exit_code == 0
    assert "census.csv:2: population_as_of: population 470 has no date" in result.stderr
    result = loa("import", "areas", str(census), "--as-of", "2024-04-01")
    assert result.exit_code == 0, result.output
    assert "1 rows read, 1 imported (0 new, 1 updated), 0 rejected" in result.stdout
    engine = db.make_engine(os.environ["LOA_DATABASE_URL"])
    assert history(engine)["116"] == {date(2020, 8, 17): 400, date(2024, 4, 1): 470}
    engine.dispose()
    result = loa("import", "areas", str(census), "--as-of", "01/04/2024")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --as-of: not a date (YYYY-MM-DD): '01/04/2024'"
    subs = write(tmp_path / "subs.csv", "phone\n0912000001\n")
    result = loa("import", "subscribers", str(subs), "--as-of", "2024-04-01")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --as-of dates the figures of areas or snapshots, not of subscribers"


@pytest.mark.parametrize("batch_size", [1, 5000])
def test_the_same_area_twice_in_one_file(engine: Engine, tmp_path: Path, batch_size: int) -> None:
    """Later rows win, and an empty cell in a later row keeps what an earlier one gave."""
    path = write(tmp_path / "twice.csv", """
        code,name,parent,population,population_as_of
        1,Tỉnh Một,,,
        7,Xã Bảy,,100,2020-01-01
        8,Xã Tám,,50,
        7,Xã Bảy Mới,1,,
        8,Xã Tám,1,,
        7,Xã Bảy Mới,,120,2021-01-01
    """)
    summary = run_import(engine, AreasHandler(engine, path), path, batch_size=batch_size)
    assert (summary.imported, summary.rejected, summary.failure) == (6, 0, None)
    after = areas_by_code(engine)
    assert (after["7"]["name"], after["7"]["parent_id"]) == ("Xã Bảy Mới", after["1"]["id"])
    assert (after["7"]["population"], after["7"]["population_as_of"]) == (120, date(2021, 1, 1))
    assert (after["8"]["parent_id"], after["8"]["population"]) == (after["1"]["id"], 50)
    assert history(engine) == {"7": {date(2020, 1, 1): 100, date(2021, 1, 1): 120}}


def test_loa_import_snapshots_as_of(workdir: Path, tmp_path: Path) -> None:
    """--as-of also dates a snapshot file that has no as_of column."""
    def loa(*args: str) -> Result:
        return CliRunner().invoke(main, ["--config", str(workdir / "config.toml"), *args])

    assert loa("init").exit_code == 0
    assert loa("import", "areas", str(write(tmp_path / "areas.csv", AREAS_CSV))).exit_code == 0
    snap = write(tmp_path / "snap.csv", "area,value\n116,40\n125,60\n")
    result = loa("import", "snapshots", str(snap))
    assert result.exit_code == 2 and "missing as_of" in result.stderr
    result = loa("import", "snapshots", str(snap), "--as-of", "2020-08-17")
    assert result.exit_code == 0, result.output
    engine = db.make_engine(os.environ["LOA_DATABASE_URL"])
    with engine.connect() as conn:
        assert set(conn.execute(select(db.snapshots.c.value, db.snapshots.c.as_of))) == {
            (40, date(2020, 8, 17)), (60, date(2020, 8, 17))}
    engine.dispose()
