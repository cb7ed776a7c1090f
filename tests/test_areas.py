"""Areas: import (parents, paths, re-import), name matching and folding."""

from __future__ import annotations

import csv
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from loa import db
from loa.areas import Area, AreaIndex, AreaLookupError, fold, short_fold
from loa.importer import AreasHandler, ImportSummary, run_import
from conftest import write


def import_areas(engine: Engine, path: Path, **kw: Any) -> ImportSummary:
    return run_import(engine, AreasHandler(engine, path), path, **kw)


def areas_by_code(engine: Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        return {r.code: r._asdict() for r in conn.execute(select(db.areas))}


def rejects(path: Path | None) -> list[dict[str, str]]:
    assert path is not None, "no rejects file was written"
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


# -- import ---------------------------------------------------------------------

def test_fixture_imports_four_areas_with_parents_and_paths(engine: Engine, areas_csv: Path) -> None:
    summary = import_areas(engine, areas_csv)
    assert (summary.read, summary.imported, summary.new, summary.updated, summary.rejected) == (4, 4, 4, 0, 0)
    assert summary.failure is None and summary.rejects_path is None
    assert summary.line() == "areas.csv: 4 rows read, 4 imported (4 new, 0 updated), 0 rejected"

    areas = areas_by_code(engine)
    assert set(areas) == {"14", "116", "125", "66"}
    son_la, city, mai_son, dak_nong = (areas[c] for c in ("14", "116", "125", "66"))
    assert son_la["name"] == "Sơn La" and son_la["level"] == "province"
    assert son_la["parent_id"] is None and dak_nong["parent_id"] is None
    assert city["parent_id"] == son_la["id"] and mai_son["parent_id"] == son_la["id"]
    assert son_la["path"] == f"/{son_la['id']}/"
    assert city["path"] == f"/{son_la['id']}/{city['id']}/"
    assert mai_son["path"] == f"/{son_la['id']}/{mai_son['id']}/"
    assert dak_nong["path"] == f"/{dak_nong['id']}/"
    assert (mai_son["population"], str(mai_son["population_as_of"])) == (600, "2020-08-17")
    assert mai_son["name_key"] == "huyen mai son" and mai_son["short_key"] == "mai son"


def test_subtree_by_path_prefix(engine: Engine, areas_csv: Path) -> None:
    import_areas(engine, areas_csv)
    a = db.areas
    with engine.connect() as conn:
        prefix = conn.scalar(select(a.c.path).where(a.c.code == "14"))
        subtree = set(conn.scalars(select(a.c.code).where(a.c.path.startswith(prefix))))
        population = sum(conn.scalars(select(a.c.population).where(a.c.path.startswith(prefix), a.c.level == "district")))
    assert subtree == {"14", "116", "125"}
    assert population == 1000


def test_parent_by_name_ignoring_case_and_diacritics(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", """
        code,name,parent,level
        14,Sơn La,,province
        116,Thành phố Sơn La,son la,district
        125,Huyện Mai Sơn,SƠN LA,district
        12501,Xã Chiềng Mung,mai son,commune
        12502,Thị trấn Hát Lót,Huyện Mai Sơn,commune
    """)
    summary = import_areas(engine, path)
    assert summary.rejected == 0, rejects(summary.rejects_path)
    areas = areas_by_code(engine)
    ids = {code: row["id"] for code, row in areas.items()}
    assert areas["116"]["parent_id"] == ids["14"]
    assert areas["125"]["parent_id"] == ids["14"]
    assert areas["12501"]["parent_id"] == ids["125"]
    assert areas["12502"]["parent_id"] == ids["125"]
    assert areas["12501"]["path"] == f"/{ids['14']}/{ids['125']}/{ids['12501']}/"


def test_reimport_updates_without_duplicates(engine: Engine, areas_csv: Path, tmp_path: Path) -> None:
    import_areas(engine, areas_csv)
    before = areas_by_code(engine)
    changed = write(tmp_path / "areas2.csv", """
        code,name,parent,level,population,population_as_of
        14,Sơn La,,province,"1,250,000",2023-01-01
        125,Huyện Mai Sơn,14,,650,2023-01-01
    """)
    summary = import_areas(engine, changed)
    assert (summary.read, summary.imported, summary.new, summary.updated) == (2, 2, 0, 2)
    after = areas_by_code(engine)
    assert len(after) == 4
    assert {c: r["id"] for c, r in after.items()} == {c: r["id"] for c, r in before.items()}
    assert after["14"]["population"] == 1_250_000
    assert str(after["14"]["population_as_of"]) == "2023-01-01"
    assert after["125"]["population"] == 650
    assert after["125"]["level"] == "district"          # an empty level keeps the old one
    assert after["116"]["population"] == 400            # not in the file: untouched
    assert after["125"]["path"] == before["125"]["path"]


def test_reparenting_recomputes_paths(engine: Engine, areas_csv: Path, tmp_path: Path) -> None:
    import_areas(engine, areas_csv)
    import_areas(engine, write(tmp_path / "move.csv", """
        code,name,parent
        125,Huyện Mai Sơn,66
        12501,Xã Chiềng Mung,125
    """))
    areas = areas_by_code(engine)
    ids = {code: row["id"] for code, row in areas.items()}
    assert areas["125"]["parent_id"] == ids["66"]
    assert areas["125"]["path"] == f"/{ids['66']}/{ids['125']}/"
    assert areas["12501"]["path"] == f"/{ids['66']}/{ids['125']}/{ids['12501']}/"


def test_rename_is_found_by_new_name_only(engine: Engine, areas_csv: Path, tmp_path: Path) -> None:
    import_areas(engine, areas_csv)
    import_areas(engine, write(tmp_path / "rename.csv", "code,name\n66,Tỉnh Đắk Nông Mới\n"))
    with engine.connect() as conn:
        index = AreaIndex.load(conn)
    assert index.resolve("dak nong moi").code == "66"
    with pytest.raises(AreaLookupError, match="no area with code or name 'Đắk Nông'"):
        index.resolve("Đắk Nông")


def test_parent_later_in_file_or_unknown_is_rejected(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path / "order.csv", """
        code,name,parent,level
        116,Thành phố Sơn La,14,district
        14,Sơn La,,province
        125,Huyện Mai Sơn,Sơn La,district
        999,Huyện Ma,Atlantis,district
    """)
    summary = import_areas(engine, path)
    assert (summary.read, summary.imported, summary.new, summary.rejected) == (4, 2, 2, 2)
    assert set(areas_by_code(engine)) == {"14", "125"}
    rows = rejects(summary.rejects_path)
    assert summary.rejects_path == tmp_path / "order.rejects.csv"
    assert [(r["line"], r["column"]) for r in rows] == [("2", "parent"), ("5", "parent")]
    assert "no area with code or name '14'" in rows[0]["reason"]
    assert "must come earlier in the file" in rows[0]["reason"]
    assert "'Atlantis'" in rows[1]["reason"]
    assert (rows[0]["code"], rows[0]["name"], rows[0]["parent"]) == ("116", "Thành phố Sơn La", "14")


def test_ambiguous_parent_name_is_rejected(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path / "amb.csv", """
        code,name,parent
        1,Huyện Một,
        2,Huyện Hai,
        101,Xã Tân Lập,1
        201,Xã Tân Lập,2
        10101,Thôn Mới,Tân Lập
        10102,Thôn Cũ,101
    """)
    summary = import_areas(engine, path)
    assert summary.rejected == 1
    [row] = rejects(summary.rejects_path)
    assert (row["line"], row["column"], row["code"]) == ("6", "parent", "10101")
    assert "ambiguous" in row["reason"] and "Xã Tân Lập (101)" in row["reason"] and "(201)" in row["reason"]
    assert "use the code" in row["reason"]
    assert "10102" in areas_by_code(engine)


@pytest.mark.parametrize(("column", "line", "reason"), [
    ("code", "code,name\n,Nowhere\n", "empty code"),
    ("name", "code,name\n7,\n", "empty name"),
    ("population", "code,name,population\n7,X,many\n", "not a whole number"),
    ("population", "code,name,population\n7,X,\u00b2\n", "not a whole number"),
    ("population_as_of", "code,name,population_as_of\n7,X,17/08/2020\n", "not a date"),
    ("name", "code,name\n7," + "X" * 201 + "\n", "too long"),
])
def test_bad_area_rows_are_rejected(engine: Engine, tmp_path: Path, column: str, line: str, reason: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(line, encoding="utf-8")
    summary = import_areas(engine, path)
    assert (summary.imported, summary.rejected) == (0, 1)
    [row] = rejects(summary.rejects_path)
    assert (row["line"], row["column"]) == ("2", column)
    assert reason in row["reason"]
    assert areas_by_code(engine) == {}


def test_own_parent_and_cycles_are_rejected(engine: Engine, areas_csv: Path, tmp_path: Path) -> None:
    import_areas(engine, areas_csv)
    before = areas_by_code(engine)
    path = write(tmp_path / "cycle.csv", """
        code,name,parent
        66,Đắk Nông,66
        14,Sơn La,125
    """)
    summary = import_areas(engine, path)
    assert (summary.imported, summary.rejected, summary.failure) == (0, 2, None)
    rows = rejects(summary.rejects_path)
    assert [(r["line"], r["column"]) for r in rows] == [("2", "parent"), ("3", "parent")]
    assert "own parent" in rows[0]["reason"]
    assert "cycle" in rows[1]["reason"]
    assert areas_by_code(engine) == before
    # and the table is still usable: a later import recomputes paths without error
    assert import_areas(engine, areas_csv).failure is None


def test_header_without_code_is_refused(engine: Engine, tmp_path: Path) -> None:
    from loa.errors import InputError

    path = write(tmp_path / "x.csv", "ma,ten\n14,Sơn La\n")
    with pytest.raises(InputError, match=r"x\.csv: wrong header for areas: missing code, name \(found: ma, ten"):
        import_areas(engine, path)


# -- AreaIndex.resolve ------------------------------------------------------------

@pytest.fixture
def index(engine: Engine, areas_csv: Path) -> AreaIndex:
    import_areas(engine, areas_csv)
    with engine.connect() as conn:
        return AreaIndex.load(conn)


@pytest.mark.parametrize(("text", "code"), [
    ("Sơn La", "14"), ("SƠN LA", "14"), ("  sơn  la ", "14"),   # as written: the province, not its city
    (unicodedata.normalize("NFD", "Sơn La"), "14"), ("TP Sơn La", "116"), ("tp. son la", "116"),
    ("Mai Son", "125"), ("mai sơn", "125"), ("Huyện Mai Sơn", "125"), ("huyen mai son", "125"),
    ("Thành phố Sơn La", "116"), ("thanh pho son la", "116"),
    ("dak nong", "66"), ("ĐẮK NÔNG", "66"), ("Tỉnh Đắk Nông", "66"),
    ("14", "14"), ("125", "125"), (" 66 ", "66"),
])
def test_resolve(index: AreaIndex, text: str, code: str) -> None:
    assert index.resolve(text).code == code


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty area"),
    ("   ", "empty area"),
    ("Hà Nội", "no area with code or name 'Hà Nội'"),
    ("15", "no area with code or name '15'"),
])
def test_resolve_failures(index: AreaIndex, text: str, message: str) -> None:
    with pytest.raises(AreaLookupError, match=message):
        index.resolve(text)


@pytest.mark.parametrize("text", ["son la", "SON LA", "Son La", "Tỉnh Sơn La", "huyen son la"])
def test_a_name_that_may_mean_several_areas_is_refused_with_them_all(index: AreaIndex, text: str) -> None:
    """"son la" is the province "Sơn La" and, without its prefix, "Thành phố Sơn La": never guessed."""
    with pytest.raises(AreaLookupError) as caught:
        index.resolve(text)
    message = str(caught.value)
    assert f"area {' '.join(text.split())!r} is ambiguous: " in message
    assert "Sơn La (14)" in message and "Thành phố Sơn La (116)" in message and "use the code" in message


def test_a_parent_named_ambiguously_is_rejected_with_the_candidates(engine: Engine, areas_csv: Path,
                                                                    tmp_path: Path) -> None:
    import_areas(engine, areas_csv)
    summary = import_areas(engine, write(tmp_path / "more.csv", """
        code,name,parent,level
        12501,Xã Chiềng Mung,son la,commune
        12502,Xã Chiềng Ban,Sơn La,commune
    """))
    assert (summary.imported, summary.rejected) == (1, 1)
    [row] = rejects(summary.rejects_path)
    assert (row["line"], row["column"], row["code"]) == ("2", "parent", "12501")
    assert "Sơn La (14)" in row["reason"] and "Thành phố Sơn La (116)" in row["reason"]
    assert areas_by_code(engine)["12502"]["parent_id"] == areas_by_code(engine)["14"]["id"]


def test_matches_within_some_areas() -> None:
    index = AreaIndex([
        Area(1, "14", "Sơn La", None, "province", "/1/", None),
        Area(2, "116", "Thành phố Sơn La", 1, "district", "/1/2/", None),
        Area(3, "125", "Huyện Mai Sơn", 1, "district", "/1/3/", None),
    ])
    assert [a.code for a in index.matches("son la")] == ["14", "116"]
    assert [a.code for a in index.matches("son la", among={2, 3})] == ["116"]
    assert [a.code for a in index.matches("Sơn La")] == ["14"]
    assert index.matches("mai son", among={1, 2}) == []


def test_resolve_ambiguous_short_name() -> None:
    index = AreaIndex([
        Area(1, "A", "Huyện Châu Thành", None, "district", "/1/", None),
        Area(2, "B", "Huyện Châu Thành", None, "district", "/2/", None),
        Area(3, "C", "Xã Tân Phú", None, "commune", "/3/", None),
    ])
    with pytest.raises(AreaLookupError, match=r"'chau thanh' is ambiguous: Huyện Châu Thành \(A\); Huyện Châu Thành \(B\)"):
        index.resolve("chau thanh")
    assert index.resolve("b").id == 2            # codes are case-insensitive
    assert index.resolve("tan phu").id == 3
    assert len(index) == 3
    assert index.children(1) == []


def test_index_add_replaces_by_code() -> None:
    index = AreaIndex([Area(1, "14", "Sơn La", None, "province", "/1/", None)])
    index.add(Area(1, "14", "Tỉnh Sơn La Mới", None, "province", "/1/", None))
    assert len(index) == 1
    assert index.resolve("son la moi").id == 1
    with pytest.raises(AreaLookupError):
        index.resolve("Sơn La")


# -- folding ----------------------------------------------------------------------

@pytest.mark.parametrize(("name", "key"), [
    ("Đắk R'lấp", "dak rlap"),
    ("Đắk R\u2019lấp", "dak rlap"),
    ("  Thành phố   Hồ Chí Minh ", "thanh pho ho chi minh"),
    ("SƠN LA", "son la"),
    (unicodedata.normalize("NFD", "Quận Hoàn Kiếm"), "quan hoan kiem"),
    ("Bà Rịa - Vũng Tàu", "ba ria vung tau"),
    ("Quận 1", "quan 1"),
])
def test_fold(name: str, key: str) -> None:
    assert fold(name) == key


@pytest.mark.parametrize(("name", "key"), [
    ("Huyện Mai Sơn", "mai son"),
    ("Thành phố Sơn La", "son la"),
    ("Thị xã Sơn Tây", "son tay"),
    ("Thị trấn Hát Lót", "hat lot"),
    ("Tỉnh Đắk Nông", "dak nong"),
    ("TP. Hồ Chí Minh", "ho chi minh"),
    ("Xã Chiềng Mung", "chieng mung"),
    ("Sơn La", "son la"),
    ("Huyện", "huyen"),                 # a bare prefix is a name, not nothing
])
def test_short_fold(name: str, key: str) -> None:
    assert short_fold(name) == key
