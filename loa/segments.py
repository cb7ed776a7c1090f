"""Declarative segments compiled to SQL over the subscribers table.

A segment is data, never SQL text::

    [segment]
    areas = ["Sơn La"]                       # each area includes its whole subtree
    [[segment.rules]]
    field = "attributes.smartphone"          # or phone, carrier, name, language, created_at
    eq = "yes"                               # eq ne in not_in gt gte lt lte between exists
    [[segment.events]]
    type = "installed"
    has = false                              # has / has not had the event
    since = "30d"                            # optional: a date, a time or a duration

Values are always bound parameters, so a campaign file cannot inject SQL.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Float, String, and_, case, cast, exists, func, literal, not_, or_, select, true
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from loa import db
from loa.areas import AreaIndex, AreaLookupError
from loa.campaign import parse_duration
from loa.errors import LoaError

S = db.subscribers
FIELDS: dict[str, Any] = {
    "phone": S.c.phone,
    "carrier": S.c.carrier,
    "name": S.c.name,
    "language": S.c.language,
    "created_at": S.c.created_at,
    "opted_out_at": S.c.opted_out_at,
}
ATTRIBUTE_PREFIXES = ("attributes.", "attr.")


def attribute_name(field: str) -> str | None:
    for prefix in ATTRIBUTE_PREFIXES:
        if field.startswith(prefix) and len(field) > len(prefix):
            return field[len(prefix):]
    return None


def field_problem(field: Any) -> str | None:
    if not isinstance(field, str):
        return "must be a string"
    if field in FIELDS or attribute_name(field):
        return None
    return (f"unknown segment field {field!r} (known: {', '.join(FIELDS)}, "
            "or attributes.NAME for an imported column)")


class SegmentError(LoaError):
    pass


def compile_segment(segment: dict[str, Any], conn: Connection, tz: ZoneInfo,
                    now: datetime | None = None) -> ColumnElement[bool]:
    """A WHERE clause over ``subscribers`` selecting the segment."""
    now = now or db.utcnow()
    clauses: list[ColumnElement[bool]] = [true()]
    if segment.get("areas"):
        clauses.append(_areas(segment["areas"], conn))
    for rule in segment.get("rules", []):
        clauses.append(_rule(rule, conn.dialect.name, tz))
    for ev in segment.get("events", []):
        clauses.append(_event(ev, tz, now))
    return and_(*clauses)


def _areas(names: list[str], conn: Connection) -> ColumnElement[bool]:
    index = AreaIndex.load(conn)
    paths = []
    for name in names:
        try:
            paths.append(index.resolve(name).path)
        except AreaLookupError as exc:
            raise SegmentError(f"segment.areas: {exc}") from None
    inner = select(db.areas.c.id).where(or_(*(db.areas.c.path.startswith(p) for p in paths)))
    # On SQLite, "+ 0" keeps the planner from walking the area index (a random read
    # per subscriber) when a sequential scan of the table is several times faster.
    column = S.c.area_id + 0 if conn.dialect.name == "sqlite" else S.c.area_id
    return column.in_(inner)


def _attribute(name: str, dialect: str) -> tuple[ColumnElement[Any], ColumnElement[Any], ColumnElement[Any]]:
    """(text value, numeric value or NULL, JSON type name) of one attribute.

    The numeric value is guarded by the JSON type so that a text attribute in
    one row never makes a range comparison fail on PostgreSQL.
    """
    if dialect == "postgresql":
        text = S.c.attributes.op("->>")(literal(name))
        kind = func.jsonb_typeof(S.c.attributes.op("->")(literal(name)))
        number = case((kind == "number", cast(text, Float)), else_=None)
        return text, number, kind
    path = f'$."{name}"'
    kind = func.json_type(S.c.attributes, path)
    raw = func.json_extract(S.c.attributes, path)
    number = case((kind.in_(("integer", "real")), cast(raw, Float)), else_=None)
    text = case((kind == "text", raw), else_=cast(raw, String))
    return text, number, kind


def _rule(rule: dict[str, Any], dialect: str, tz: ZoneInfo) -> ColumnElement[bool]:
    field = rule["field"]
    op = next(k for k in rule if k != "field")
    value = rule[op]
    attr = attribute_name(field)
    if attr is None:
        column = FIELDS[field]
        if op == "exists":
            present = column.is_not(None) & (column != "") if field not in TIME_FIELDS else column.is_not(None)
            return present if value else not_(present)
        if field in TIME_FIELDS:
            return _time_rule(field, column, op, value, tz)
        return _compare(column, column, op, value)
    text, number, kind = _attribute(attr, dialect)
    if op == "exists":
        present = kind.is_not(None) & (kind != "null")
        return present if value else not_(present)
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in _values(value))
    return _compare(number if numeric else text, text, op, _textual(value, numeric))


def _values(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _textual(value: Any, numeric: bool) -> Any:
    if numeric:
        return value
    if isinstance(value, list):
        return [_one_text(v) for v in value]
    return _one_text(value)


def _one_text(v: Any) -> Any:
    if isinstance(v, bool):
        return "true" if v else "false"
    return v if isinstance(v, str) else str(v)


def _compare(column: ColumnElement[Any], text_column: ColumnElement[Any], op: str, value: Any) -> ColumnElement[bool]:
    if op == "eq":
        return column == value
    if op == "ne":
        return or_(column != value, column.is_(None))
    if op == "in":
        return column.in_(value)
    if op == "not_in":
        return or_(column.not_in(value), column.is_(None))
    if op == "between":
        return column.between(value[0], value[1])
    compare = {"gt": column.__gt__, "gte": column.__ge__, "lt": column.__lt__, "lte": column.__le__}[op]
    return compare(value)


TIME_FIELDS = ("created_at", "opted_out_at")


def _time_rule(field: str, column: ColumnElement[Any], op: str, value: Any, tz: ZoneInfo) -> ColumnElement[bool]:
    """A rule on a timestamp column: a date is a whole local day, a time without
    zone is local time; both are compared as aware UTC (the column refuses naive
    times and plain dates)."""
    values = [_as_time_value(field, op, v, tz) for v in _values(value)]
    if not all(isinstance(v, date) and not isinstance(v, datetime) for v in values):
        bounds = [v if isinstance(v, datetime) else since_time(v, tz, db.utcnow()) for v in values]
        return _compare(column, column, op, bounds if isinstance(value, list) else bounds[0])

    def lo(d: date) -> datetime:
        return since_time(d, tz, db.utcnow())

    def hi(d: date) -> datetime:
        return since_time(d + timedelta(days=1), tz, db.utcnow())

    def on(d: date) -> ColumnElement[bool]:
        return and_(column >= lo(d), column < hi(d))

    if op == "eq":
        return on(values[0])
    if op == "ne":
        return or_(not_(on(values[0])), column.is_(None))
    if op == "in":
        return or_(*(on(d) for d in values))
    if op == "not_in":
        return or_(not_(or_(*(on(d) for d in values))), column.is_(None))
    if op == "between":
        return and_(column >= lo(values[0]), column < hi(values[1]))
    return {"gt": lambda d: column >= hi(d), "gte": lambda d: column >= lo(d),
            "lt": lambda d: column < lo(d), "lte": lambda d: column < hi(d)}[op](values[0])


def _as_time_value(field: str, op: str, v: Any, tz: ZoneInfo) -> date:
    if isinstance(v, str):
        try:
            v = date.fromisoformat(v.strip()) if len(v.strip()) == 10 else datetime.fromisoformat(v.strip())
        except ValueError:
            pass
    if isinstance(v, datetime):
        return v if v.tzinfo else v.replace(tzinfo=tz)
    if isinstance(v, date):
        return v
    raise SegmentError(f"segment.rules: {field} {op}: expected a date or a time, got {v!r}")


def _event(ev: dict[str, Any], tz: ZoneInfo, now: datetime) -> ColumnElement[bool]:
    e = db.events
    cond = [e.c.subscriber_id == S.c.id, e.c.type == ev["type"]]
    since = ev.get("since")
    if since is not None:
        cond.append(e.c.occurred_at >= since_time(since, tz, now))
    had = exists().where(and_(*cond))
    return had if ev.get("has", True) else not_(had)


def since_time(since: Any, tz: ZoneInfo, now: datetime) -> datetime:
    if isinstance(since, str):
        return now - timedelta(seconds=parse_duration(since))
    if isinstance(since, datetime):
        return (since if since.tzinfo else since.replace(tzinfo=tz)).astimezone(UTC)
    if isinstance(since, date):
        return datetime.combine(since, time(0), tz).astimezone(UTC)
    raise SegmentError(f"segment.events.since: cannot use {since!r}")


