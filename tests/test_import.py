"""Streaming CSV import of subscribers and events, on the real database."""

from __future__ import annotations

import csv
import gc
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import PG_URL, write
from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine

from loa import db
from loa.config import Config
from loa.errors import InputError
from loa.importer import (
    AreasHandler,
    EventsHandler,
    ImportSummary,
    SubscribersHandler,
    run_import,
)

# -- helpers --------------------------------------------------------------------


def import_areas(engine: Engine, path: Path) -> ImportSummary:
    summary = run_import(engine, AreasHandler(engine, path), path)
    assert summary.rejected == 0 and summary.failure is None
    return summary


def import_subscribers(engine: Engine, path: Path, **kw: Any) -> ImportSummary:
    return run_import(engine, SubscribersHandler(engine, path), path, **kw)


def import_events(engine: Engine, config: Config, path: Path, **kw: Any) -> ImportSummary:
    return run_import(engine, EventsHandler(engine, path, config.timezone), path, **kw)


def subscribers(engine: Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        return {r.phone: r._asdict() for r in conn.execute(select(db.subscribers))}


def area_ids(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(select(db.areas.c.code, db.areas.c.id)).all())


def attribute_keys(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.scalars(select(db.attribute_keys.c.name)))


def events(engine: Engine) -> list[dict[str, Any]]:
    e, s = db.events, db.subscribers
    with engine.connect() as conn:
        rows = conn.execute(
            select(s.c.phone, e.c.type, e.c.occurred_at, e.c.source, e.c.attributes)
            .join(s, s.c.id == e.c.subscriber_id).order_by(e.c.id)
        )
        return [r._asdict() for r in rows]


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(table)) or 0


def json_kind(engine: Engine, phone: str, key: str) -> str:
    """How the database itself typed an attribute: "number" or "string"."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            kind = conn.scalar(text("SELECT jsonb_typeof(attributes -> :k) FROM subscribers WHERE phone = :p"),
                               {"k": key, "p": phone})
        else:
            kind = conn.scalar(text("SELECT json_type(attributes, '$.' || :k) FROM subscribers WHERE phone = :p"),
                               {"k": key, "p": phone})
    return {"integer": "number", "real": "number", "text": "string"}.get(kind, kind)


def read_rejects(path: Path | None) -> list[dict[str, str]]:
    assert path is not None, "no rejects file was written"
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def areas(engine: Engine, areas_csv: Path) -> dict[str, int]:
    import_areas(engine, areas_csv)
    return area_ids(engine)


# -- subscribers: encoding, phones, areas, attributes ---------------------------------

@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig"])
def test_utf8_with_and_without_bom(engine: Engine, areas: dict[str, int], tmp_path: Path, encoding: str) -> None:
    path = write(tmp_path / "subs.csv", """
        phone,name,area
        0912345678,Nguyễn Văn An,Sơn La
    """, encoding=encoding)
    assert path.read_bytes().startswith(b"\xef\xbb\xbf") == (encoding == "utf-8-sig")
    summary = import_subscribers(engine, path)
    assert (summary.read, summary.imported, summary.new, summary.rejected) == (1, 1, 1, 0)
    row = subscribers(engine)["+84912345678"]
    assert row["name"] == "Nguyễn Văn An"
    assert row["area_id"] == areas["14"]
    assert row["attributes"] == {}          # the BOM did not turn "phone" into an attribute
    assert row["language"] == "vi" and row["opted_out_at"] is None
    assert attribute_keys(engine) == set()


def test_phones_are_normalised_with_carrier(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path / "subs.csv", """
        phone
        0912 345 678
        01681234567
        +84 70 123 4567
        84.98.765.4321
    """)
    summary = import_subscribers(engine, path)
    assert (summary.imported, summary.rejected) == (4, 0)
    got = {phone: row["carrier"] for phone, row in subscribers(engine).items()}
    assert got == {
        "+84912345678": "Vinaphone",
        "+84381234567": "Viettel",        # old 11-digit 0168 number, converted in 2018
        "+84701234567": "MobiFone",
        "+84987654321": "Viettel",
    }


@pytest.mark.parametrize("column", ["area", "area_code", "area_name"])
def test_area_by_code_or_name(engine: Engine, areas: dict[str, int], tmp_path: Path, column: str) -> None:
    path = write(tmp_path / "subs.csv", f"""
        phone,{column}
        0912000001,14
        0912000002,Sơn La
        0912000003,SƠN LA
        0912000004,Mai Son
        0912000005,huyện mai sơn
        0912000006,Thành phố Sơn La
        0912000007,66
        0912000008,
    """)
    summary = import_subscribers(engine, path)
    assert (summary.imported, summary.rejected) == (8, 0)
    got = {phone[-1]: row["area_id"] for phone, row in subscribers(engine).items()}
    assert got == {"1": areas["14"], "2": areas["14"], "3": areas["14"], "4": areas["125"],
                   "5": areas["125"], "6": areas["116"], "7": areas["66"], "8": None}
    assert attribute_keys(engine) == set()    # the area column is not an attribute


def test_an_area_name_that_may_mean_several_is_rejected(engine: Engine, areas: dict[str, int],
                                                         tmp_path: Path) -> None:
    """"son la" may be the province or its city: the row is rejected with both, not put in one."""
    path = write(tmp_path / "subs.csv", """
        phone,area
        0912000001,son la
        0912000002,Sơn La
    """)
    summary = import_subscribers(engine, path)
    assert (summary.imported, summary.rejected) == (1, 1)
    with summary.rejects_path.open(encoding="utf-8", newline="") as f:
        [row] = list(csv.DictReader(f))
    assert (row["line"], row["column"]) == ("2", "area")
    assert "ambiguous" in row["reason"] and "Sơn La (14)" in row["reason"]
    assert "Thành phố Sơn La (116)" in row["reason"]
    assert {phone[-1]: r["area_id"] for phone, r in subscribers(engine).items()} == {"2": areas["14"]}


def test_area_column_without_areas_is_refused(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path / "subs.csv", "phone,area\n0912345678,Sơn La\n")
    with pytest.raises(InputError, match=r"subs\.csv: has an area column but no areas are loaded"):
        import_subscribers(engine, path)
    assert count(engine, db.subscribers) == 0


def test_extra_columns_become_typed_attributes(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path / "subs.csv", """
        phone,name,age,zip,score,smartphone,debt
        0912345678,An,34,0123,1.5,yes,-20
        0987654321,Bình,,70000,2,no,
    """)
    import_subscribers(engine, path)
    rows = subscribers(engine)
    an, binh = rows["+84912345678"]["attributes"], rows["+84987654321"]["attributes"]
    assert an == {"age": 34, "zip": "0123", "score": 1.5, "smartphone": "yes", "debt": -20}
    assert binh == {"zip": 70000, "score": 2, "smartphone": "no"}   # blank cells are left out
    assert json_kind(engine, "+84912345678", "age") == "number"
    assert json_kind(engine, "+84912345678", "score") == "number"
    assert json_kind(engine, "+84912345678", "zip") == "string"      # leading zero: stays text
    assert json_kind(engine, "+84987654321", "zip") == "number"
    assert attribute_keys(engine) == {"age", "zip", "score", "smartphone", "debt"}


def test_rows_short_of_cells_and_repeated_cells_give_each_row_its_own_attributes(engine: Engine,
                                                                                   tmp_path: Path) -> None:
    """A row with fewer cells than the header has its missing attributes left out, and rows
    with the same cells (whose JSON text is made once) each get them."""
    path = write(tmp_path / "subs.csv", """
        phone,name,age,group
        0912345678,An,34,a
        0987654321,Bình,34,a
        0971234567,Chi,41
        0961234567,Dũng
    """)
    summary = import_subscribers(engine, path)
    assert (summary.imported, summary.rejected) == (4, 0)
    rows = subscribers(engine)
    assert rows["+84912345678"]["attributes"] == rows["+84987654321"]["attributes"] == {"age": 34, "group": "a"}
    assert rows["+84971234567"]["attributes"] == {"age": 41}
    assert rows["+84961234567"]["attributes"] == {}
    assert attribute_keys(engine) == {"age", "group"}


def test_numeric_attributes_compare_as_numbers_in_sql(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path / "subs.csv", "phone,age\n0912000001,9\n0912000002,10\n0912000003,100\n")
    import_subscribers(engine, path)
    age = db.subscribers.c.attributes["age"]
    older = age.as_integer() > 9
    with engine.connect() as conn:
        phones = set(conn.scalars(select(db.subscribers.c.phone).where(older)))
    assert phones == {"+84912000002", "+84912000003"}   # as text, "9" > "100"


def test_reimport_updates_and_merges_never_duplicates(engine: Engine, areas: dict[str, int], tmp_path: Path) -> None:
    first = write(tmp_path / "crm.csv", """
        phone,name,area,age,language
        0912345678,Nguyễn An,14,34,vi
        0987654321,Trần Bình,66,41,en
    """)
    second = write(tmp_path / "survey.csv", """
        phone,name,area,segment
        0912345678,Nguyễn Văn An,,gold
        0987654321,,125,silver
        0701234567,Lê Chi,,bronze
    """)
    s1 = import_subscribers(engine, first)
    s2 = import_subscribers(engine, second)
    assert (s1.new, s1.updated) == (2, 0)
    assert (s2.read, s2.imported, s2.new, s2.updated) == (3, 3, 1, 2)
    assert count(engine, db.subscribers) == 3
    rows = subscribers(engine)
    an, binh, chi = rows["+84912345678"], rows["+84987654321"], rows["+84701234567"]
    assert an["name"] == "Nguyễn Văn An"                       # changed
    assert an["area_id"] == areas["14"]                        # empty cell keeps the area
    assert an["attributes"] == {"age": 34, "segment": "gold"}  # merged, not replaced
    assert binh["name"] == "Trần Bình"                         # empty cell keeps the name
    assert binh["area_id"] == areas["125"]
    assert binh["language"] == "en"                            # no language column: kept
    assert binh["attributes"] == {"age": 41, "segment": "silver"}
    assert chi["attributes"] == {"segment": "bronze"} and chi["language"] == "vi"
    assert an["created_at"] < an["updated_at"] or an["created_at"] == an["updated_at"]
    assert attribute_keys(engine) == {"age", "segment"}

    third = write(tmp_path / "ages.csv", "phone,age,language\n0912345678,35,en\n")
    import_subscribers(engine, third)
    an = subscribers(engine)["+84912345678"]
    assert an["attributes"] == {"age": 35, "segment": "gold"}  # a value in the new file wins
    assert an["language"] == "en"
    assert count(engine, db.subscribers) == 3


@pytest.mark.parametrize("batch_size", [5000, 1])
def test_same_phone_twice_in_one_file_later_wins(engine: Engine, tmp_path: Path, batch_size: int) -> None:
    path = write(tmp_path / "subs.csv", """
        phone,name,age
        0912345678,An,30
        0987654321,Bình,50
        +84 912 345 678,An Nguyễn,31
    """)
    summary = import_subscribers(engine, path, batch_size=batch_size)
    assert (summary.read, summary.rejected, summary.new) == (3, 0, 2)
    rows = subscribers(engine)
    assert len(rows) == 2
    assert rows["+84912345678"]["name"] == "An Nguyễn"
    assert rows["+84912345678"]["attributes"] == {"age": 31}


def test_rejected_rows_go_to_rejects_csv(engine: Engine, areas: dict[str, int], tmp_path: Path) -> None:
    path = write(tmp_path / "subs.csv", """
        phone,name,area,language
        0912345678,An,14,vi
        12345,Bad Phone,14,vi
        024 3825 1234,Landline,14,vi
        0987654321,Nowhere,Atlantis,vi
        0701234567,Speaker,66,vietnamese

        0561234567,Chi,,en
        ,No Phone,14,vi
    """)
    seen: list[str] = []
    rejects_path = tmp_path / "out" / "rejected.csv"
    rejects_path.parent.mkdir()
    summary = import_subscribers(engine, path, rejects_path=rejects_path, on_reject=seen.append)
    assert (summary.read, summary.imported, summary.new, summary.rejected) == (7, 2, 2, 5)
    assert summary.rejects_path == rejects_path
    assert summary.line() == (f"subs.csv: 7 rows read, 2 imported (2 new, 0 updated), 5 rejected; "
                              f"rejects in {rejects_path}")
    assert set(subscribers(engine)) == {"+84912345678", "+84561234567"}

    with rejects_path.open(encoding="utf-8", newline="") as f:
        assert next(csv.reader(f)) == ["line", "column", "reason", "phone", "name", "area", "language"]
    rows = read_rejects(rejects_path)
    assert [(r["line"], r["column"], r["phone"], r["name"]) for r in rows] == [
        ("3", "phone", "12345", "Bad Phone"),
        ("4", "phone", "024 3825 1234", "Landline"),
        ("5", "area", "0987654321", "Nowhere"),
        ("6", "language", "0701234567", "Speaker"),
        ("9", "phone", "", "No Phone"),
    ]
    reasons = [r["reason"] for r in rows]
    assert reasons[0] == "not a valid Vietnamese number"
    assert reasons[1] == "landline number, not a mobile"
    assert reasons[2] == "no area with code or name 'Atlantis'"
    assert reasons[3].startswith("not a language code: 'vietnamese'")
    assert reasons[4] == "empty"
    assert rows[2]["area"] == "Atlantis" and rows[3]["language"] == "vietnamese"
    assert seen[0] == f"{path}:3: phone: not a valid Vietnamese number"
    assert len(seen) == 5


def test_no_rejects_file_when_nothing_is_rejected(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path / "subs.csv", "phone\n0912345678\n")
    summary = import_subscribers(engine, path)
    assert summary.rejects_path is None
    assert not (tmp_path / "subs.rejects.csv").exists()


def test_overlong_values_are_rejected_rows_not_failed_batches(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path / "subs.csv", f"""
        phone,name,language
        0912345678,{"A" * 201},vi
        0987654321,Bình,vie-abcdefgh
        0701234567,Chi,vi
    """)
    summary = import_subscribers(engine, path)
    assert summary.failure is None
    assert (summary.imported, summary.rejected) == (1, 2)
    assert [(r["line"], r["column"]) for r in read_rejects(summary.rejects_path)] == [("2", "name"), ("3", "language")]
    assert set(subscribers(engine)) == {"+84701234567"}


# -- subscribers: unusable files -------------------------------------------------------

def test_wrong_header_names_file_and_column(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path / "contacts.csv", "tel,name\n0912345678,An\n")
    with pytest.raises(InputError) as info:
        import_subscribers(engine, path)
    message = str(info.value)
    assert str(path) in message
    assert "wrong header for subscribers: missing phone (found: tel, name" in message
    assert count(engine, db.subscribers) == 0


def test_unnamed_header_column(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path / "subs.csv", "phone,,age\n0912345678,x,3\n")
    with pytest.raises(InputError, match=r"subs\.csv:1: header column 2 has no name"):
        import_subscribers(engine, path)


@pytest.mark.parametrize("content", [b"", b"\xef\xbb\xbf", b"\n\n"])
def test_empty_file(engine: Engine, tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    if content == b"\n\n":   # a blank first line is a header without "phone"
        with pytest.raises(InputError, match=r"empty\.csv: wrong header for subscribers: missing phone"):
            import_subscribers(engine, path)
    else:
        with pytest.raises(InputError, match=r"empty\.csv: the file is empty; expected a header row"):
            import_subscribers(engine, path)


def test_header_only_file_imports_nothing(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path / "subs.csv", "phone,name\n")
    summary = import_subscribers(engine, path)
    assert (summary.read, summary.imported, summary.rejected, summary.batches) == (0, 0, 0, 0)


@pytest.mark.parametrize("encoding", ["latin-1", "cp1258"])
def test_non_utf8_file_names_the_line(engine: Engine, tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "subs.csv"
    path.write_bytes("phone,name\n0912345678,An\n0987654321,Hà\n0701234567,Chi\n".encode(encoding))
    with pytest.raises(InputError, match=r"subs\.csv:3: not UTF-8 text"):
        import_subscribers(engine, path)
    assert set(subscribers(engine)) == {"+84912345678"}     # the rows before it, as the error says


def test_non_utf8_header(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "subs.csv"
    path.write_bytes("phone,tên\n0912345678,An\n".encode("cp1258"))
    with pytest.raises(InputError, match=r"subs\.csv:1: not UTF-8 text"):
        import_subscribers(engine, path)
    assert count(engine, db.subscribers) == 0


def test_non_utf8_deep_in_a_large_file(engine: Engine, tmp_path: Path) -> None:
    """The decoder reads ahead; the line reported must still be the bad one."""
    path = tmp_path / "subs.csv"
    with path.open("wb") as f:
        f.write(b"phone,name\n")
        for i in range(2, 3000):
            f.write(f"0912{i:06d},Nguyễn {i}\n".encode())
        f.write("0912003000,Hà\n".encode("latin-1"))
        f.write(b"0912003001,After\n")
    with pytest.raises(InputError) as info:
        import_subscribers(engine, path, batch_size=1000)
    message = str(info.value)
    assert f"{path}:3000: not UTF-8 text" in message
    assert "2998 rows before it were imported" in message
    assert count(engine, db.subscribers) == 2998
    assert "+84912003001" not in subscribers(engine)


def test_unclosed_quote_names_the_line(engine: Engine, tmp_path: Path) -> None:
    # the quote swallows the rest of the file until the csv module's field limit
    path = write(tmp_path / "subs.csv", 'phone,name\n0912345678,An\n0987654321,"Bình\n' + "0912000001,x\n" * 20000)
    with pytest.raises(InputError, match=r"subs\.csv:3: malformed CSV: field larger than field limit"):
        import_subscribers(engine, path)
    assert set(subscribers(engine)) == {"+84912345678"}


# -- subscribers: opt-out ----------------------------------------------------------

def test_opted_out_column(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path / "subs.csv", """
        phone,opted_out
        0912000001,yes
        0912000002,no
        0912000003,
        0912000004,Có
        0912000005,maybe
    """)
    t0 = db.utcnow()
    summary = import_subscribers(engine, path)
    t1 = db.utcnow()
    assert (summary.imported, summary.rejected) == (4, 1)
    [reject] = read_rejects(summary.rejects_path)
    assert (reject["line"], reject["column"], reject["reason"]) == ("6", "opted_out", "expected yes/no, got 'maybe'")
    out = {phone[-1]: row["opted_out_at"] for phone, row in subscribers(engine).items()}
    assert out["2"] is None and out["3"] is None
    for key in ("1", "4"):
        assert out[key] is not None and t0 <= out[key] <= t1


def test_opt_out_keeps_first_date_and_blank_keeps_state(engine: Engine, tmp_path: Path) -> None:
    import_subscribers(engine, write(tmp_path / "a.csv", "phone,opted_out\n0912000001,yes\n0912000002,yes\n"))
    first = {p: r["opted_out_at"] for p, r in subscribers(engine).items()}
    assert all(first.values())

    # again "yes": the first refusal's date stays
    import_subscribers(engine, write(tmp_path / "b.csv", "phone,opted_out\n0912000001,yes\n0912000002,yes\n"))
    assert {p: r["opted_out_at"] for p, r in subscribers(engine).items()} == first

    # a blank cell, or no column at all, must not opt anyone back in
    import_subscribers(engine, write(tmp_path / "c.csv", "phone,opted_out,age\n0912000001,,30\n"))
    import_subscribers(engine, write(tmp_path / "d.csv", "phone,age\n0912000002,40\n"))
    assert {p: r["opted_out_at"] for p, r in subscribers(engine).items()} == first

    # an explicit "no" opts in, even in a batch that also opts someone out
    import_subscribers(engine, write(tmp_path / "e.csv", "phone,opted_out\n0912000001,no\n0912000003,yes\n"))
    now = subscribers(engine)
    assert now["+84912000001"]["opted_out_at"] is None
    assert now["+84912000002"]["opted_out_at"] == first["+84912000002"]
    assert now["+84912000003"]["opted_out_at"] is not None


# -- events ---------------------------------------------------------------------

@pytest.fixture
def known(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path / "known.csv", "phone,name\n0912345678,An\n0987654321,Bình\n")
    assert import_subscribers(engine, path).new == 2


def test_events_import(engine: Engine, config: Config, known: None, tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", """
        phone,type,time,source,campaign
        0912345678,installed,2020-08-17T08:00,,tet
        0912 345 678,CLICKED,2020-08-17 09:30:00+07:00,crm,
        +84987654321,installed,2020-08-17,zalo,tet
        0999999999,installed,2020-08-17T08:00,,
        0911111111,installed,2020-08-17T08:00,,
        abc,installed,2020-08-17T08:00,,
        0912345678,in stalled,2020-08-17T08:00,,
        0912345678,installed,yesterday,,
        0912345678,installed,,,
        0987654321,replied,2020-08-17T10:00:00Z,,
    """)
    summary = import_events(engine, config, path)
    assert (summary.read, summary.imported, summary.rejected, summary.new) == (10, 4, 6, 4)
    assert summary.line() == f"events.csv: 10 rows read, 4 imported, 6 rejected; rejects in {summary.rejects_path}"
    assert events(engine) == [
        {"phone": "+84912345678", "type": "installed", "occurred_at": datetime(2020, 8, 17, 1, 0, tzinfo=UTC),
         "source": "import", "attributes": {"campaign": "tet"}},
        {"phone": "+84912345678", "type": "clicked", "occurred_at": datetime(2020, 8, 17, 2, 30, tzinfo=UTC),
         "source": "crm", "attributes": None},
        {"phone": "+84987654321", "type": "installed", "occurred_at": datetime(2020, 8, 16, 17, 0, tzinfo=UTC),
         "source": "zalo", "attributes": {"campaign": "tet"}},
        {"phone": "+84987654321", "type": "replied", "occurred_at": datetime(2020, 8, 17, 10, 0, tzinfo=UTC),
         "source": "import", "attributes": None},
    ]
    rows = read_rejects(summary.rejects_path)
    by_line = {r["line"]: (r["column"], r["reason"]) for r in rows}
    assert set(by_line) == {"5", "6", "7", "8", "9", "10"}
    assert by_line["5"] == ("phone", "no subscriber has this phone; import subscribers first")
    assert by_line["6"] == ("phone", "no subscriber has this phone; import subscribers first")
    assert by_line["7"] == ("phone", "not a valid Vietnamese number")
    assert by_line["8"][0] == "type" and "'in stalled'" in by_line["8"][1]
    assert by_line["9"][0] == "time" and "not an ISO 8601 time: 'yesterday'" in by_line["9"][1]
    assert by_line["10"] == ("time", "empty time")
    unknown = next(r for r in rows if r["line"] == "5")
    assert (unknown["phone"], unknown["type"], unknown["time"]) == ("0999999999", "installed", "2020-08-17T08:00")


def test_naive_time_uses_the_configured_zone(engine: Engine, known: None, tmp_path: Path) -> None:
    from zoneinfo import ZoneInfo

    path = write(tmp_path / "events.csv", "phone,type,time\n0912345678,installed,2020-08-17T08:00\n")
    run_import(engine, EventsHandler(engine, path, ZoneInfo("Europe/Paris")), path)
    assert events(engine)[0]["occurred_at"] == datetime(2020, 8, 17, 6, 0, tzinfo=UTC)


def test_events_reimport_is_idempotent(engine: Engine, config: Config, known: None, tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", """
        phone,type,time
        0912345678,installed,2020-08-17T08:00
        0912345678,installed,2020-08-17T08:00
        0987654321,installed,2020-08-17T01:00:00+00:00
    """)
    first = import_events(engine, config, path)
    assert (first.imported, first.new) == (3, 2)             # a duplicate row is one event
    again = import_events(engine, config, path, batch_size=1)
    assert (again.imported, again.new, again.rejected) == (3, 0, 0)
    assert count(engine, db.events) == 2
    # the same moment written in another zone is the same event
    same = write(tmp_path / "same.csv", "phone,type,time\n0912345678,installed,2020-08-17T01:00:00Z\n")
    assert import_events(engine, config, same).new == 0
    assert count(engine, db.events) == 2


def test_opted_out_event_opts_the_subscriber_out(engine: Engine, config: Config, known: None, tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", """
        phone,type,time
        0912345678,opted_out,2020-08-17T08:00
        0987654321,installed,2020-08-17T08:00
    """)
    import_events(engine, config, path)
    rows = subscribers(engine)
    assert rows["+84912345678"]["opted_out_at"] == datetime(2020, 8, 17, 1, 0, tzinfo=UTC)
    assert rows["+84987654321"]["opted_out_at"] is None

    later = write(tmp_path / "later.csv", "phone,type,time\n0912345678,opted_out,2021-01-01T00:00\n")
    import_events(engine, config, later)
    assert subscribers(engine)["+84912345678"]["opted_out_at"] == datetime(2020, 8, 17, 1, 0, tzinfo=UTC)
    assert count(engine, db.events) == 3


def test_events_wrong_header(engine: Engine, config: Config, tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", "phone,event,when\n0912345678,installed,2020-08-17\n")
    with pytest.raises(InputError, match=r"events\.csv: wrong header for events: missing type, time"):
        import_events(engine, config, path)


# -- a batch the database refuses -----------------------------------------------------

NO_SUCH_AREA = 987_654


class SabotagedSubscribers(SubscribersHandler):
    """A row named "boom" points at an area that does not exist: a real FK violation."""

    def prepare(self, row: Any) -> dict[str, Any]:
        record = super().prepare(row)
        if record["name"] == "boom":
            record["area_id"] = NO_SUCH_AREA
        return record


def test_failed_batch_is_rolled_back_and_earlier_batches_kept(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path / "subs.csv", """
        phone,name
        0912000001,one
        0912000002,two
        0912000003,three
        0912000004,boom
        0912000005,five
        0912000006,six
    """)
    summary = run_import(engine, SabotagedSubscribers(engine, path), path, batch_size=2)
    assert summary.failure is not None
    assert f"{path}: lines 4-5: the database refused the batch" in summary.failure
    assert "that batch was rolled back and the import stopped; 2 rows from earlier batches were kept" in summary.failure
    assert (summary.imported, summary.new, summary.batches) == (2, 2, 1)
    assert set(subscribers(engine)) == {"+84912000001", "+84912000002"}   # none of batch 2 or 3


def test_failed_first_batch_keeps_nothing(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path / "subs.csv", "phone,name\n0912000001,one\n0912000002,boom\n0912000003,three\n")
    summary = run_import(engine, SabotagedSubscribers(engine, path), path)
    assert summary.failure is not None and summary.failure.endswith("nothing was kept")
    assert "lines 2-4" in summary.failure
    assert count(engine, db.subscribers) == 0


class SabotagedAreas(AreasHandler):
    def prepare(self, row: Any) -> dict[str, Any]:
        record = super().prepare(row)
        if record["name"] == "boom":
            record["parent_id"] = NO_SUCH_AREA
        return record


def test_failed_area_batch_leaves_kept_areas_complete(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path / "areas.csv", """
        code,name,parent
        14,Sơn La,
        116,Thành phố Sơn La,14
        125,boom,14
    """)
    summary = run_import(engine, SabotagedAreas(engine, path), path, batch_size=2)
    assert summary.failure is not None and "lines 4-4" in summary.failure
    with engine.connect() as conn:
        rows = {r.code: r for r in conn.execute(select(db.areas))}
    assert set(rows) == {"14", "116"}
    assert rows["14"].path == f"/{rows['14'].id}/"                        # paths of what was kept
    assert rows["116"].path == f"/{rows['14'].id}/{rows['116'].id}/"


def test_progress_reaches_the_end(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path / "subs.csv", "phone\n" + "".join(f"0912{i:06d}\n" for i in range(500)))
    calls: list[tuple[int, int]] = []
    import_subscribers(engine, path, progress=lambda done, total: calls.append((done, total)))
    size = path.stat().st_size
    assert calls[-1] == (size, size)
    assert all(total == size for _, total in calls)
    done = [d for d, _ in calls]
    assert done == sorted(done)


# -- flat memory ------------------------------------------------------------------

ROWS = 110_000


@pytest.mark.skipif(bool(PG_URL), reason="SQLite only: keeps the PostgreSQL CI run fast")
def test_import_streams_in_flat_memory(engine: Engine, areas: dict[str, int], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """110,000 rows (~18 MB) must import without holding the file or its rows in memory.

    SQLite's page cache is bounded by its own pragma (db.BULK_PRAGMAS, 32 MB for an import)
    and would fill as the file grows here: it is kept at SQLite's default (2 MB) for this test,
    so that what is measured is what loa itself keeps.

    RSS is sampled from the progress callback (tracemalloc would triple the run
    time).  Measured: one batch of 5000 rows costs ~20 MB and memory is then flat
    (+0.1 MB over the rest); keeping every row grows ~190 MB and reading the
    whole file as text ~50 MB, both of which fail these bounds.
    """
    psutil = pytest.importorskip("psutil")
    monkeypatch.setitem(db.BULK_PRAGMAS, "cache_size", -2000)
    path = tmp_path / "big.csv"
    with path.open("w", encoding="utf-8") as f:
        f.write("phone,name,area,segment,age,note,address\n")
        for i in range(ROWS):
            f.write(f"09{6 + i % 3}{i:07d},Nguyễn Văn Khách {i},14,nhóm-{i % 17},{18 + i % 60},"
                    f"ghi chú số {i:09d} cho khách hàng thân thiết,"
                    f"số {i % 500} đường Trần Hưng Đạo phường {i % 30} thành phố Sơn La\n")
    size = path.stat().st_size
    assert size > 15_000_000

    proc = psutil.Process(os.getpid())
    gc.collect()
    base = proc.memory_info().rss
    samples: list[tuple[int, int]] = []          # (bytes read, rss)

    def progress(done: int, total: int) -> None:
        if len(samples) == 0 or done - samples[-1][0] >= 256 * 1024 or done == total:
            samples.append((done, proc.memory_info().rss))

    summary = import_subscribers(engine, path, progress=progress)
    assert (summary.read, summary.imported, summary.rejected, summary.failure) == (ROWS, ROWS, 0, None)
    assert count(engine, db.subscribers) == ROWS

    peak = max(rss for _, rss in samples)
    growth = peak - base
    assert growth < 30_000_000, f"RSS grew by {growth / 1e6:.1f} MB importing a {size / 1e6:.1f} MB file"
    # and it is flat: after the first quarter of the file, memory no longer grows with it
    after_quarter = max(rss for done, rss in samples if done <= size // 4)
    late = peak - after_quarter
    assert late < 8_000_000, f"RSS kept growing: +{late / 1e6:.1f} MB over the last three quarters"


# -- the batch written through the driver (executemany on SQLite, COPY and one upsert on PostgreSQL) --

def test_batches_written_through_the_driver_keep_each_rows_values_and_the_later_row_wins(
        engine: Engine, areas: dict[str, int], tmp_path: Path) -> None:
    first = write(tmp_path / "a.csv", """
        phone,name,area,language,opted_out,age
        0912000001,An,14,en,yes,30
        0912000002,Bình,,,,x7
        0912000001,An Hai,,en,no,31
        0912000003,Chi,14,,yes,
    """)
    summary = import_subscribers(engine, first, batch_size=2)
    assert (summary.imported, summary.new, summary.batches) == (4, 3, 2)
    # a file without language or opt-out columns keeps both; a second batch of the same
    # connection starts from an empty staging table
    again = write(tmp_path / "b.csv", """
        phone,name,group
        0912000001,,a
        0912000003,Chi Ba,b
        0912000004,Dũng,c
    """)
    summary = import_subscribers(engine, again, batch_size=2)
    assert (summary.imported, summary.new, summary.batches) == (3, 1, 2)
    rows = subscribers(engine)
    assert {p: (r["name"], r["area_id"], r["language"], r["opted_out_at"] is not None, r["attributes"])
            for p, r in rows.items()} == {
        "+84912000001": ("An Hai", areas["14"], "en", False, {"age": 31, "group": "a"}),
        "+84912000002": ("Bình", None, "vi", False, {"age": "x7"}),
        "+84912000003": ("Chi Ba", areas["14"], "vi", True, {"group": "b"}),
        "+84912000004": ("Dũng", None, "vi", False, {"group": "c"}),
    }
    one = rows["+84912000001"]
    assert one["carrier"] == "Vinaphone" and one["created_at"].tzinfo is not None
    assert one["updated_at"] > one["created_at"] and json_kind(engine, "+84912000001", "age") == "number"
    assert count(engine, db.subscribers) == 4
