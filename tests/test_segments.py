"""Segments compiled to SQL and run on the real database (SQLite or PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from loa import db
from loa.importer import AreasHandler, EventsHandler, SubscribersHandler, run_import
from loa.segments import SegmentError, compile_segment
from conftest import write

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
NOW = datetime(2020, 8, 20, 12, 0, tzinfo=TZ)
METACHARS = "x' OR '1'='1"

# Who is who: the last digit of each phone number.
SUBSCRIBERS = f"""
phone,area,name,language,opted_out,age,smartphone,note,it's
0912000001,116,An,vi,no,30,yes,,quoted
0912000002,125,Bình,vi,no,45,no,,
0912000003,14,,vi,no,unknown,yes,,
0987000004,66,Dung,en,no,17,,,
0703000005,,Em,vi,no,60.5,no,{METACHARS},
0912000006,116,Giang,vi,no,,yes,,
0912000007,125,Hoa,vi,yes,25,yes,,
"""
LATER = """
phone,area,name
0912000008,66,Khánh
"""
EVENTS = """
phone,type,time
0912000001,installed,2020-08-17T23:30:00+07:00
0912000002,installed,2020-08-18T00:30:00+07:00
0912000003,arrived,2020-08-19T10:00:00+07:00
0987000004,installed,2020-06-01T08:00:00+07:00
"""
EVERYONE = {"1", "2", "3", "4", "5", "6", "7", "8"}


@pytest.fixture
def people(engine: Engine, tmp_path: Path, areas_csv: Path) -> Engine:
    assert run_import(engine, AreasHandler(engine, areas_csv), areas_csv).imported == 4
    with time_machine.travel(datetime(2020, 8, 10, 9, 0, tzinfo=TZ), tick=False):
        subs = write(tmp_path / "subs.csv", SUBSCRIBERS)
        summary = run_import(engine, SubscribersHandler(engine, subs), subs)
        assert (summary.imported, summary.rejected) == (7, 0)
    with time_machine.travel(datetime(2020, 8, 18, 8, 0, tzinfo=TZ), tick=False):
        later = write(tmp_path / "later.csv", LATER)
        assert run_import(engine, SubscribersHandler(engine, later), later).imported == 1
    events = write(tmp_path / "events.csv", EVENTS)
    summary = run_import(engine, EventsHandler(engine, events, TZ), events)
    assert (summary.imported, summary.rejected) == (4, 0)
    return engine


def members(engine: Engine, segment: dict[str, Any], now: datetime | None = NOW) -> set[str]:
    S = db.subscribers
    with engine.connect() as conn:
        where = compile_segment(segment, conn, TZ, now.astimezone(UTC) if now else None)
        return {phone[-1] for phone in conn.scalars(select(S.c.phone).where(where))}


def rule(field: str, op: str, value: Any) -> dict[str, Any]:
    return {"rules": [{"field": field, op: value}]}


def test_empty_segment_is_everyone(people: Engine) -> None:
    assert members(people, {}) == EVERYONE


# -- areas --------------------------------------------------------------------

@pytest.mark.parametrize(
    ("areas", "expected"),
    [
        (["Sơn La"], {"1", "2", "3", "6", "7"}),     # the province and both districts below it
        (["SƠN LA"], {"1", "2", "3", "6", "7"}),     # case does not matter
        (["14"], {"1", "2", "3", "6", "7"}),
        (["Mai Sơn"], {"2", "7"}),                   # "Huyện Mai Sơn" without its prefix
        (["116"], {"1", "6"}),
        (["125", "Đắk Nông"], {"2", "4", "7", "8"}),
    ],
)
def test_areas_include_their_subtree(people: Engine, areas: list[str], expected: set[str]) -> None:
    assert members(people, {"areas": areas}) == expected


def test_an_area_name_that_may_mean_several_is_a_segment_error(people: Engine) -> None:
    """"son la" is the province and, without its prefix, its city: the segment says so, never picks one."""
    with pytest.raises(SegmentError, match=r"^segment\.areas: area 'son la' is ambiguous: Sơn La \(14\); "
                                           r"Thành phố Sơn La \(116\); use the code"):
        members(people, {"areas": ["son la"]})
    assert members(people, {"areas": ["mai son"]}) == {"2", "7"}      # one area: diacritics do not matter


@pytest.mark.parametrize("name", ["Hà Nội", METACHARS, "%", "/"])
def test_unknown_area_is_a_segment_error(people: Engine, name: str) -> None:
    with pytest.raises(SegmentError, match=r"^segment\.areas: no area with code or name"):
        members(people, {"areas": ["Sơn La", name]})


# -- rules on fields and attributes ---------------------------------------------

@pytest.mark.parametrize(
    ("field", "op", "value", "expected"),
    [
        ("language", "eq", "en", {"4"}),
        ("language", "ne", "en", EVERYONE - {"4"}),
        ("carrier", "eq", "Viettel", {"4"}),
        ("carrier", "in", ["Viettel", "MobiFone"], {"4", "5"}),
        ("carrier", "not_in", ["Vinaphone"], {"4", "5"}),
        ("name", "in", ["An", "Em"], {"1", "5"}),
        ("name", "not_in", ["An", "Bình"], EVERYONE - {"1", "2"}),
        ("phone", "eq", "+84912000006", {"6"}),
        ("attributes.smartphone", "eq", "yes", {"1", "3", "6", "7"}),
        ("attr.smartphone", "eq", "yes", {"1", "3", "6", "7"}),
        # "not equal" includes subscribers who do not have the attribute at all
        ("attr.smartphone", "ne", "yes", {"2", "4", "5", "8"}),
        ("attr.smartphone", "in", ["no"], {"2", "5"}),
        ("attr.smartphone", "not_in", ["yes"], {"2", "4", "5", "8"}),
        ("attr.age", "eq", 30, {"1"}),
        ("attr.age", "eq", "30", {"1"}),           # a number compared as text
        ("attr.age", "eq", "unknown", {"3"}),
        ("attr.age", "in", [30, 45], {"1", "2"}),
        ("attr.age", "ne", 30, EVERYONE - {"1"}),
        ("attr.age", "not_in", [30, 45], EVERYONE - {"1", "2"}),
    ],
)
def test_equality_rules(people: Engine, field: str, op: str, value: Any, expected: set[str]) -> None:
    assert members(people, rule(field, op, value)) == expected


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        ("gt", 29, {"1", "2", "5"}),
        ("gt", 30, {"2", "5"}),
        ("gte", 30, {"1", "2", "5"}),
        ("lt", 30, {"4", "7"}),
        ("lte", 17, {"4"}),
        ("lte", 16.9, set()),
        ("gt", 60, {"5"}),                          # 60.5: a float attribute
        ("between", [18, 45], {"1", "2", "7"}),
        ("between", [18.5, 60.5], {"1", "2", "5", "7"}),
    ],
)
def test_numeric_ranges_skip_text_values(people: Engine, op: str, value: Any, expected: set[str]) -> None:
    """Subscriber 3's age is "unknown": it is never in a range, and never breaks the query
    (on PostgreSQL a bare CAST of that text to a number would fail)."""
    assert members(people, rule("attr.age", op, value)) == expected


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("attr.smartphone", True, {"1", "2", "3", "5", "6", "7"}),
        ("attr.smartphone", False, {"4", "8"}),
        ("attr.age", True, {"1", "2", "3", "4", "5", "7"}),
        ("attr.nothing", True, set()),
        ("attr.nothing", False, EVERYONE),
        ("name", False, {"3"}),
        ("name", True, EVERYONE - {"3"}),
        ("opted_out_at", True, {"7"}),
        ("opted_out_at", False, EVERYONE - {"7"}),
        ("attr.it's", True, {"1"}),
    ],
)
def test_exists(people: Engine, field: str, value: bool, expected: set[str]) -> None:
    assert members(people, rule(field, "exists", value)) == expected


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        # subscribers 1-7 were created on 2020-08-10, subscriber 8 on 2020-08-18 08:00 local time
        ("gte", date(2020, 8, 18), {"8"}),
        ("gt", date(2020, 8, 17), {"8"}),
        ("gt", date(2020, 8, 18), set()),
        ("lt", date(2020, 8, 18), EVERYONE - {"8"}),
        ("lte", date(2020, 8, 18), EVERYONE),
        ("lte", date(2020, 8, 17), EVERYONE - {"8"}),
        ("eq", date(2020, 8, 10), EVERYONE - {"8"}),
        ("ne", date(2020, 8, 10), {"8"}),
        ("between", [date(2020, 8, 1), date(2020, 8, 10)], EVERYONE - {"8"}),
        ("gte", datetime(2020, 8, 18, 7, 59), {"8"}),          # a TOML local time: the config's zone
        ("gte", datetime(2020, 8, 18, 8, 1), set()),
        ("gte", datetime(2020, 8, 18, 0, 59, tzinfo=UTC), {"8"}),
        ("gte", datetime(2020, 8, 18, 1, 1, tzinfo=UTC), set()),
        ("eq", "2020-08-18", {"8"}),
        ("gte", "2020-08-18T07:59", {"8"}),
        ("in", [date(2020, 8, 1), date(2020, 8, 18)], {"8"}),
        ("not_in", [date(2020, 8, 1), date(2020, 8, 18)], EVERYONE - {"8"}),
    ],
)
def test_created_at_compared_with_dates_and_times(people: Engine, op: str, value: Any, expected: set[str]) -> None:
    assert members(people, rule("created_at", op, value)) == expected


def test_opted_out_at_compared_with_a_date(people: Engine) -> None:
    assert members(people, rule("opted_out_at", "eq", date(2020, 8, 10))) == {"7"}
    assert members(people, rule("opted_out_at", "ne", date(2020, 8, 10))) == EVERYONE - {"7"}
    assert members(people, rule("opted_out_at", "lt", date(2020, 8, 10))) == set()


def test_time_field_with_a_value_that_is_no_time(people: Engine) -> None:
    with pytest.raises(SegmentError, match=r"created_at gte: expected a date or a time, got 'yesterday'"):
        members(people, rule("created_at", "gte", "yesterday"))


def test_rules_areas_and_events_combine_with_and(people: Engine) -> None:
    segment = {
        "areas": ["Sơn La"],
        "rules": [{"field": "attr.smartphone", "eq": "yes"}, {"field": "attr.age", "lt": 40}],
        "events": [{"type": "installed", "has": False}],
    }
    assert members(people, segment) == {"7"}


# -- events -------------------------------------------------------------------

@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"type": "installed"}, {"1", "2", "4"}),
        ({"type": "installed", "has": True}, {"1", "2", "4"}),
        ({"type": "installed", "has": False}, {"3", "5", "6", "7", "8"}),
        # a date is local midnight: 1 installed at 23:30 the evening before, 2 at 00:30
        ({"type": "installed", "since": date(2020, 8, 18)}, {"2"}),
        ({"type": "installed", "since": date(2020, 8, 17)}, {"1", "2"}),
        ({"type": "installed", "has": False, "since": date(2020, 8, 18)}, EVERYONE - {"2"}),
        ({"type": "installed", "since": datetime(2020, 8, 18, 0, 0)}, {"2"}),
        ({"type": "installed", "since": "30d"}, {"1", "2"}),       # 4 installed in June
        ({"type": "installed", "since": "90d"}, {"1", "2", "4"}),
        ({"type": "arrived", "since": "1d"}, set()),                 # 26 hours ago
        ({"type": "arrived", "since": "27h"}, {"3"}),
        ({"type": "arrived", "since": "2d"}, {"3"}),
        ({"type": "opted_out"}, set()),
    ],
)
def test_events(people: Engine, event: dict[str, Any], expected: set[str]) -> None:
    assert members(people, {"events": [event]}) == expected


def test_event_durations_count_from_the_clock(people: Engine) -> None:
    with time_machine.travel(NOW, tick=False):
        assert members(people, {"events": [{"type": "arrived", "since": "1d"}]}, now=None) == set()
        assert members(people, {"events": [{"type": "arrived", "since": "2d"}]}, now=None) == {"3"}
    with time_machine.travel(NOW + timedelta(days=1), tick=False):
        assert members(people, {"events": [{"type": "arrived", "since": "2d"}]}, now=None) == set()


def test_two_events_must_both_hold(people: Engine) -> None:
    segment = {"events": [{"type": "installed", "has": False}, {"type": "arrived", "since": "2d"}]}
    assert members(people, segment) == {"3"}


# -- values are data, never SQL ------------------------------------------------

def test_sql_metacharacters_are_data(people: Engine) -> None:
    assert members(people, rule("attr.note", "eq", METACHARS)) == {"5"}
    assert members(people, rule("attr.note", "in", [METACHARS, "' OR 1=1 --"])) == {"5"}
    assert members(people, rule("name", "eq", METACHARS)) == set()
    assert members(people, rule("name", "eq", "An' OR '1'='1")) == set()
    assert members(people, rule("attr.x' OR '1'='1", "exists", True)) == set()
    assert members(people, rule("attr.x') OR 1=1 --", "eq", "y")) == set()
    assert members(people, {"events": [{"type": "installed' OR '1'='1"}]}) == set()
    assert members(people, {"events": [{"type": "installed' OR '1'='1", "has": False}]}) == EVERYONE
    assert members(people, rule("attr.note", "ne", METACHARS)) == EVERYONE - {"5"}
    # and nothing was changed by any of it
    with people.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(db.subscribers)) == 8
