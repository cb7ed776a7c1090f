"""Streaming CSV import of areas, subscribers and events.

Files are read row by row and written in batches, one transaction each, so a
million-row file imports in flat memory.  A row that fails validation is
rejected with its line, column and reason, and copied to a rejects CSV; the
other rows go in.  If a batch fails in the database, that batch is rolled back,
the import stops, and the summary says exactly what was kept.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from functools import lru_cache
from operator import itemgetter
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import (
    Boolean,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    case,
    func,
    literal,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.schema import CreateTable

from loa import db
from loa.areas import Area, AreaIndex, AreaLookupError, fold, recompute_paths
from loa.errors import InputError, Text, say
from loa.phones import PhoneError, e164_and_carrier

BATCH_SIZE = 5000
Progress = Callable[[int, int], None]   # (bytes read, total bytes)
Late = tuple[dict[str, Any], str, str]  # a record refused while writing: (record, column, reason)


class RowError(Exception):
    """A row refused: its ``column`` ("" for the row as a whole) and the ``reason``, a
    :class:`~loa.errors.Text` where it can be said in the reader's language."""

    def __init__(self, column: str, reason: str) -> None:
        super().__init__(reason)
        self.column = column
        self.reason = reason


# The phone parser's reasons (loa.phones), for the catalog: a rejected row says them in its reader's language.
PHONE_REASONS = (Text("empty"), Text("not a valid Vietnamese number"), Text("landline number, not a mobile"),
                 Text("toll-free or premium service number (1800/1900)"), Text("not a mobile number"),
                 Text("not a Vietnamese mobile number"))
_PHONE_REASONS = {str(t): t for t in PHONE_REASONS}


def phone_reason(exc: PhoneError) -> str:
    """Why a phone cell is refused, translatable where the catalog knows the reason."""
    return _PHONE_REASONS.get(exc.reason, exc.reason)


_AMBIGUOUS = re.compile(r"area (?P<text>.*) is ambiguous: (?P<names>.*); use the code, "
                        r"or the name as written with its diacritics", re.DOTALL)


def area_reason(exc: AreaLookupError, text: str) -> str:
    """Why an area cell names no one area (loa.areas' sentence), translatable where it is one of
    the lookup's own sentences; as it is otherwise."""
    said = str(exc)
    text = " ".join(text.split())
    candidates: list[Text] = [Text("empty area"), Text("no area with code or name {text!r}", text=text)]
    if m := _AMBIGUOUS.fullmatch(said):
        candidates.append(Text("area {text} is ambiguous: {names}; use the code, "
                               "or the name as written with its diacritics", text=m["text"], names=m["names"]))
    return next((c for c in candidates if str(c) == said), said)


@dataclass
class ImportSummary:
    kind: str
    path: Path
    read: int = 0
    imported: int = 0
    new: int = 0
    rejected: int = 0
    batches: int = 0
    rejects_path: Path | None = None
    failure: str | None = None          # set when a batch failed and the import stopped
    notes: list[str] = field(default_factory=list)

    @property
    def updated(self) -> int:
        return self.imported - self.new

    def line(self) -> str:
        parts = [f"{self.path.name}: {self.read} rows read, {self.imported} imported"]
        if self.kind != "events":
            parts.append(f"({self.new} new, {self.updated} updated)")
        parts.append(f"{self.rejected} rejected")
        text = " ".join(parts[:2]) + ", " + parts[-1] if self.kind != "events" else ", ".join(parts)
        if self.rejects_path:
            text += f"; rejects in {self.rejects_path}"
        return text


class Handler(Protocol):
    kind: str
    required: tuple[str, ...]

    def check_header(self, header: Sequence[str]) -> None: ...
    def prepare(self, row: Mapping[str, str]) -> dict[str, Any]: ...
    def write(self, conn: Connection, records: list[dict[str, Any]]) -> tuple[int, list[Late]]: ...
    def count(self, conn: Connection) -> int: ...
    def finish(self, conn: Connection) -> None: ...


# -- the generic reader ---------------------------------------------------------

def _check_utf8(path: Path, line: int, values: list[str]) -> None:
    """Undecodable bytes arrive as lone surrogates (surrogateescape): refuse them on their own line."""
    joined = "".join(values)
    if not joined.isascii():
        try:
            joined.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(
                Text("{path}:{line}: not UTF-8 text (save the file as \"CSV UTF-8\")", path=str(path), line=line)
            ) from None


def _records(
    path: Path, progress: Progress | None,
) -> tuple[list[str], Iterator[tuple[int, dict[str, str], list[str], RowError | None]], Callable[[], None]]:
    """The header, then each non-blank row as (line, cells by column, cells, why it is refused or None).

    A row is refused on its own, so that the good rows around it go in: cells beyond the
    header, a NUL character (PostgreSQL refuses it, and with it the whole batch), a cell
    longer than the csv module's field limit.  What leaves the file unreadable past a point
    (an unclosed quote, bytes that are not UTF-8) stops the import at that line.
    """
    try:
        raw = path.open("rb")
    except OSError as exc:
        raise InputError(Text("{path}: cannot read: {problem}", path=str(path), problem=exc.strerror)) from None
    total = path.stat().st_size
    # surrogateescape: the text decoder reads ahead in chunks, so a strict decoder would
    # report a bad byte at the wrong line (often line 1); _check_utf8 finds the right one.
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.reader(text)
    try:
        header = [h.strip() for h in next(reader)]
        _check_utf8(path, 1, header)
        _check_header_cells(path, header)
    except StopIteration:
        raw.close()
        raise InputError(Text("{path}: the file is empty; expected a header row", path=str(path))) from None
    except csv.Error as exc:
        raw.close()
        raise InputError(Text("{path}:{line}: malformed CSV: {problem}", path=str(path), line=1, problem=str(exc))) from None
    except InputError:
        raw.close()
        raise

    width = len(header)

    def rows() -> Iterator[tuple[int, dict[str, str], list[str], RowError | None]]:
        start = reader.line_num + 1
        n = 0
        try:
            while True:
                if progress and n % 500 == 0:   # a redraw per row costs more than the row
                    progress(raw.tell(), total)
                n += 1
                try:
                    values = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:
                    # A cell too long for the csv module, within one line: the reader has
                    # dropped the rest of that line and goes on at the next.  Across lines
                    # (inside quotes) it cannot tell where the row ends: an unclosed quote.
                    if not str(exc).startswith("field larger than field limit") or reader.line_num != start:
                        raise
                    yield start, {}, [], RowError("", Text(
                        "a cell is longer than {limit:n} characters; the row is not copied here",
                        limit=csv.field_size_limit()))
                    start = reader.line_num + 1
                    continue
                joined = "".join(values)   # once per row: the checks below read it, not each cell
                if not joined.isascii():
                    _check_utf8(path, start, values)
                if joined.strip():   # blank only when every cell is
                    problem = (None if len(values) <= width and "\x00" not in joined
                               else _cell_problem(header, values))
                    yield start, dict(zip(header, values, strict=False)), values, problem
                start = reader.line_num + 1
        except csv.Error as exc:
            raise InputError(Text("{path}:{line}: malformed CSV: {problem}", path=str(path), line=start,
                                  problem=str(exc))) from None
        finally:
            if progress:
                progress(total, total)
            raw.close()

    return header, rows(), raw.close


def _check_header_cells(path: Path, header: list[str]) -> None:
    """A column named twice would leave one of its cells unread: refuse the file."""
    seen: dict[str, int] = {}
    for number, name in enumerate(header, 1):
        if "\x00" in name:
            raise InputError(Text("{path}:1: header column {number} contains a NUL character (byte 0x00)",
                                  path=str(path), number=number))
        if name and name in seen:
            raise InputError(Text("{path}:1: column {name!r} is named twice in the header (columns {first} and {number})",
                                  path=str(path), name=name, first=seen[name], number=number))
        seen.setdefault(name, number)


def _cell_problem(header: list[str], values: list[str]) -> RowError | None:
    if len(values) <= len(header) and "\x00" not in "".join(values):
        return None
    for number, value in enumerate(values, 1):
        if "\x00" in value:
            column = header[number - 1] if number <= len(header) else ""
            return RowError(column, Text("cell {number} contains a NUL character (byte 0x00)", number=number))
    extra = [(number, v) for number, v in enumerate(values[len(header):], len(header) + 1) if v.strip()]
    if extra:
        number, value = extra[0]
        shown = value if len(value) <= 40 else value[:40] + "..."
        return RowError("", Text("{cells} cells but the header has {columns} columns: cell {number} ({shown!r}) "
                                 "has no column", cells=len(values), columns=len(header), number=number, shown=shown))
    return None


class _Rejects:
    """A rejects CSV: line, column, reason, then the row as it was; ``word`` writes the reason
    (in a language, or stored to be said in any)."""

    def __init__(self, path: Path, header: list[str], word: Callable[[str], str] = str) -> None:
        self.path = path
        self.header = header
        self.word = word
        self._writer: Any = None
        self._file: Any = None

    def add(self, line: int, column: str, reason: str, values: list[str]) -> None:
        if self._writer is None:
            self._file = self.path.open("w", encoding="utf-8", newline="")
            self._writer = csv.writer(self._file)
            self._writer.writerow(["line", "column", "reason", *self.header])
        self._writer.writerow([line, column, self.word(reason), *values])

    def close(self) -> Path | None:
        if self._file is None:
            return None
        self._file.close()
        return self.path


def run_import(
    engine: Engine,
    handler: Handler,
    path: Path,
    *,
    rejects_path: Path | None = None,
    batch_size: int = BATCH_SIZE,
    progress: Progress | None = None,
    on_reject: Callable[[str], None] | None = None,
    reason: Callable[[str], str] | None = None,
) -> ImportSummary:
    """Import the CSV at ``path`` with ``handler``.  ``reason`` writes a rejected row's reason in
    the rejects file (default: English; ``say_in(language)`` for a reader)."""
    path = Path(path)
    header, rows, close = _records(path, progress)
    try:
        handler.check_header(header)
    except BaseException:
        close()
        raise
    summary = ImportSummary(handler.kind, path)
    rejects = _Rejects(rejects_path or path.with_name(path.stem + ".rejects.csv"), header, reason or str)
    batch: list[dict[str, Any]] = []
    first_line = 0
    unreadable: list[InputError] = []

    def readable_rows() -> Iterator[tuple[int, dict[str, str], list[str], RowError | None]]:
        # The file turns out unreadable part-way: stop reading, but finish the rows
        # before it like a normal end of file, so that what the error says was kept is.
        try:
            yield from rows
        except InputError as exc:
            unreadable.append(exc)

    # One connection for the whole file (db.bulk_connection), one transaction per batch.
    with db.bulk_connection(engine) as conn:
        try:
            with conn.begin():
                before = handler.count(conn)
            for line, row, values, problem in readable_rows():
                summary.read += 1
                try:
                    if problem is not None:
                        raise problem
                    record = handler.prepare(row)
                except RowError as exc:
                    summary.rejected += 1
                    rejects.add(line, exc.column, exc.reason, values)
                    if on_reject:
                        on_reject(_reject_line(path, line, exc.column, exc.reason))
                    continue
                record["_line"], record["_values"] = line, values
                first_line = first_line or line
                batch.append(record)
                if len(batch) >= batch_size:
                    _commit(conn, handler, batch, summary, rejects, path, first_line, line, on_reject)
                    batch, first_line = [], 0
            if batch:
                _commit(conn, handler, batch, summary, rejects, path, first_line, batch[-1]["_line"], on_reject)
            with conn.begin():
                handler.finish(conn)
                summary.new = handler.count(conn) - before
        except _BatchFailed as exc:
            summary.failure = exc.args[0]
            # what was kept must still be complete (area paths), so finish it
            with conn.begin():
                handler.finish(conn)
                summary.new = handler.count(conn) - before
        finally:
            close()
            summary.rejects_path = rejects.close()
    if unreadable and not summary.failure:
        first = unreadable[0].args[0] if unreadable[0].args else str(unreadable[0])
        raise InputError(Text(
            "{problem}; the import stopped there: {imported} rows before it were imported, {rejected} rejected",
            problem=first, imported=summary.imported, rejected=summary.rejected))
    return summary


def say_in(language: Any) -> Callable[[str], str]:
    """A rejected row's reason as a reader of ``language`` (a :class:`loa.i18n.Language`) reads it."""
    return lambda reason: say(reason, language)


def _reject_line(path: Path, line: int, column: str, reason: str) -> str:
    return f"{path}:{line}: {column}: {reason}" if column else f"{path}:{line}: {reason}"


class _BatchFailed(Exception):
    pass


def _commit(conn: Connection, handler: Handler, batch: list[dict[str, Any]], summary: ImportSummary,
            rejects: _Rejects, path: Path, first: int, last: int,
            on_reject: Callable[[str], None] | None) -> None:
    try:
        with conn.begin():
            written, late = handler.write(conn, batch)
    except (SQLAlchemyError, conn.dialect.loaded_dbapi.Error) as exc:   # the driver's own: COPY
        reason = getattr(exc, "orig", None) or exc
        kept = (Text("{n} rows from earlier batches were kept", n=summary.imported) if summary.imported
                else Text("nothing was kept"))
        raise _BatchFailed(Text(
            "{path}: lines {first}-{last}: the database refused the batch ({reason}); "
            "that batch was rolled back and the import stopped; {kept}",
            path=str(path), first=first, last=last, reason=str(reason).splitlines()[0], kept=kept)) from exc
    summary.imported += written
    summary.batches += 1
    for record, column, reason in late:
        summary.rejected += 1
        rejects.add(record["_line"], column, reason, record["_values"])
        if on_reject:
            on_reject(_reject_line(path, record["_line"], column, reason))


# -- field parsers ------------------------------------------------------------

_INT = re.compile(r"^-?(0|[1-9][0-9]*)$")
_FLOAT = re.compile(r"^-?(0|[1-9][0-9]*)\.[0-9]+$")
_EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
TRUE = {"1", "true", "yes", "y", "x", "có", "co"}
FALSE = {"", "0", "false", "no", "n", "không", "khong"}


def attribute_value(text: str) -> Any:
    """Numbers become JSON numbers so segments can compare ranges; "0123" stays text."""
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    return text


@lru_cache(maxsize=8192)
def _attribute(text: str) -> Any:
    """attribute_value, remembered: a column's values repeat (ages, groups, districts)."""
    return attribute_value(text)


def parse_bool(column: str, text: str) -> bool:
    value = text.strip().casefold()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise RowError(column, Text("expected yes/no, got {text!r}", text=text))


def parse_time(column: str, text: str, tz: ZoneInfo) -> datetime:
    """ISO 8601; a time without zone is local time, a bare date is local midnight."""
    value = text.strip()
    if not value:
        raise RowError(column, Text("empty time"))
    try:
        parsed = datetime.fromisoformat(value.replace(" ", "T", 1) if len(value) > 10 else value)
    except ValueError:
        raise RowError(column, Text("not an ISO 8601 time: {text!r} (e.g. 2020-08-17T08:30:00+07:00)",
                                    text=text)) from None
    if len(value) == 10:
        parsed = datetime.combine(parsed.date(), time(0))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    return parsed.astimezone(UTC)


def _fit(column: str, text: str, limit: int) -> str:
    """Refuse a value longer than its database column (PostgreSQL would fail the whole batch)."""
    if len(text) > limit:
        raise RowError(column, Text("too long: {length:n} characters, at most {limit:n}", length=len(text), limit=limit))
    return text


def phone_cell(row: Mapping[str, str]) -> str:
    """The row's ``phone`` cell in E.164, or the row's error on that field."""
    try:
        return e164_and_carrier(row.get("phone", ""))[0]
    except PhoneError as exc:
        raise RowError("phone", phone_reason(exc)) from None


def _missing(header: Sequence[str], needed: Sequence[str]) -> list[str]:
    return [n for n in needed if n not in header]


def _header_error(path_hint: str, kind: str, header: Sequence[str], missing: list[str], expected: str) -> InputError:
    found = ", ".join(h for h in header if h)
    return InputError(Text(
        "{path}: wrong header for {kind}: missing {missing} (found: {found}; expected {expected})",
        path=path_hint, kind=kind, missing=", ".join(missing), found=found or Text("nothing"), expected=expected))


# -- areas --------------------------------------------------------------------

class AreasHandler:
    """Areas by code; a re-import updates what its cells say and keeps what they leave empty.

    A population is dated by its ``population_as_of`` cell, or failing one by ``as_of``
    (``loa import areas --as-of``), and joins the area's history of populations: the
    latest is the area's current figure, and a report takes the one in force at its
    campaign's time.  An undated population is taken only for an area with no dated ones.
    """

    kind = "areas"
    required = ("code", "name")
    expected = "code,name[,parent,level,population,population_as_of]"

    def __init__(self, engine: Engine, path: Path, *, as_of: date | None = None) -> None:
        self.path = path
        self.as_of = as_of
        with engine.connect() as conn:
            self.index = AreaIndex.load(conn)
            h = db.area_populations
            self._dated: dict[int, set[date]] = {}
            for area_id, day in conn.execute(select(h.c.area_id, h.c.as_of)):
                self._dated.setdefault(area_id, set()).add(day)
        self._next_id = max(self.index.by_id, default=0) + 1

    def check_header(self, header: Sequence[str]) -> None:
        if missing := _missing(header, self.required):
            raise _header_error(str(self.path), self.kind, header, missing, self.expected)

    def prepare(self, row: Mapping[str, str]) -> dict[str, Any]:
        code = _fit("code", row.get("code", "").strip(), 32)
        if not code:
            raise RowError("code", Text("empty code"))
        existing = self.index.by_code.get(code.casefold())
        # an empty cell (or a column the file does not have) keeps what is stored
        name = _fit("name", " ".join(row.get("name", "").split()), 200) or (existing.name if existing else "")
        if not name:
            raise RowError("name", Text("empty name"))
        area_id = existing.id if existing else self._take_id()
        parent_id = existing.parent_id if existing else None
        if parent := row.get("parent", "").strip():
            try:
                parent_id = self.index.resolve(parent).id
            except AreaLookupError as exc:
                raise RowError("parent", Text("{problem} (a parent must come earlier in the file or exist already)",
                                              problem=area_reason(exc, parent))) from None
            if parent_id == area_id:
                raise RowError("parent", Text("an area cannot be its own parent"))
            node, seen = parent_id, set()
            while node is not None and node not in seen:   # re-parenting under a descendant
                if node == area_id:
                    raise RowError("parent", Text("{parent!r} lies inside {code} itself; that would make a cycle",
                                                  parent=parent, code=code))
                seen.add(node)
                node = self.index.by_id[node].parent_id if node in self.index.by_id else None
        population = None
        if text := row.get("population", "").strip().replace(",", "").replace("_", ""):
            if not re.fullmatch(r"[0-9]{1,18}", text):
                raise RowError("population", Text("not a whole number: {text!r}", text=row["population"]))
            population = int(text)
        as_of = self.as_of
        if text := row.get("population_as_of", "").strip():
            as_of = parse_date("population_as_of", text)
        dated = self._dated.get(area_id, set())
        if population is not None and as_of is None and dated:
            days = ", ".join(d.isoformat() for d in sorted(dated)[-3:])
            raise RowError("population_as_of", Text(
                "population {population:n} has no date, but {name} has populations dated {days}: "
                "give its date (population_as_of, or --as-of)", population=population, name=name, days=days))
        level = _fit("level", row.get("level", "").strip() or (existing.level if existing else ""), 32)
        if population is not None and as_of is not None:
            self._dated.setdefault(area_id, set()).add(as_of)
        kept = existing.population if existing else None
        self.index.add(Area(area_id, code, name, parent_id, level, "", population if population is not None else kept))
        return {
            "id": area_id, "code": code, "name": name, "name_key": fold(name),
            "short_key": _short(name), "parent_id": parent_id, "level": level,
            "population": population, "population_as_of": as_of if population is not None else None,
        }

    def _take_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def write(self, conn: Connection, records: list[dict[str, Any]]) -> tuple[int, list[Late]]:
        now = db.utcnow()
        t = db.areas
        rows = [{k: v for k, v in r.items() if not k.startswith("_")} | {"updated_at": now, "path": ""} for r in records]
        stmt = db.insert_for(conn, t)
        ex = stmt.excluded
        given = ex.population.is_not(None)
        stmt = stmt.on_conflict_do_update(
            index_elements=["code"],
            set_={c: ex[c] for c in ("name", "name_key", "short_key", "parent_id", "level", "updated_at")} | {
                # a row without a population keeps the stored one; a dated one is put in
                # its place below only if it is the latest
                "population": case((given, ex.population), else_=t.c.population),
                "population_as_of": case((given, ex.population_as_of), else_=t.c.population_as_of),
            },
        )
        conn.execute(stmt, rows)
        dated = {(r["id"], r["population_as_of"]): r["population"] for r in rows
                 if r["population"] is not None and r["population_as_of"] is not None}
        if dated:
            h = db.area_populations
            history = db.insert_for(conn, h)
            conn.execute(history.on_conflict_do_update(
                index_elements=["area_id", "as_of"],
                set_={"population": history.excluded.population, "imported_at": history.excluded.imported_at},
            ), [{"area_id": a, "as_of": d, "population": p, "imported_at": now} for (a, d), p in dated.items()])
            latest = select(h.c.population, h.c.as_of).where(h.c.area_id == t.c.id).order_by(h.c.as_of.desc()).limit(1)
            conn.execute(update(t).where(t.c.id.in_({a for a, _ in dated})).values(
                population=latest.with_only_columns(h.c.population).scalar_subquery(),
                population_as_of=latest.with_only_columns(h.c.as_of).scalar_subquery(),
            ))
        return len(rows), []

    def count(self, conn: Connection) -> int:
        return conn.scalar(select(func.count()).select_from(db.areas)) or 0

    def finish(self, conn: Connection) -> None:
        recompute_paths(conn)


def _short(name: str) -> str:
    from loa.areas import short_fold

    return short_fold(name)


# -- subscribers --------------------------------------------------------------

RESERVED_SUBSCRIBER_COLUMNS = {"phone", "area", "area_code", "area_name", "name", "language", "opted_out"}


class SubscribersHandler:
    kind = "subscribers"
    required = ("phone",)
    expected = "phone[,area|area_code|area_name,name,language,opted_out,<attributes>...]"

    def __init__(self, engine: Engine, path: Path) -> None:
        self.path = path
        self.dialect = engine.dialect.name
        with engine.connect() as conn:
            self.index = AreaIndex.load(conn)
            self.known_keys = set(conn.scalars(select(db.attribute_keys.c.name)))
            # numbers erased at the person's request are checked for only if there are any
            self.any_erased = conn.scalar(select(db.subscribers.c.id).where(db.subscribers.c.erased_at.is_not(None))
                                          .limit(1)) is not None
        self.area_column: str | None = None
        self.attribute_columns: list[str] = []
        self.has_language = self.has_opted_out = True
        self._statements: dict[tuple[bool, bool], str] = {}
        self._areas: dict[str, int] = {}
        self._attribute_cells: Callable[[Mapping[str, str]], tuple[str, ...]] = lambda row: ()
        self._attribute_texts: dict[tuple[str, ...], tuple[str, frozenset[str]]] = {}
        self._attribute_room = 2_000_000    # about as many bytes remembered, at most

    def check_header(self, header: Sequence[str]) -> None:
        if missing := _missing(header, self.required):
            raise _header_error(str(self.path), self.kind, header, missing, self.expected)
        self.area_column = next((c for c in ("area", "area_code", "area_name") if c in header), None)
        if self.area_column and len(self.index) == 0:
            raise InputError(Text("{path}: has an {column} column but no areas are loaded; "
                                  "run `loa import areas FILE` first", path=str(self.path), column=self.area_column))
        blank = [i + 1 for i, h in enumerate(header) if not h]
        if blank:
            raise InputError(Text("{path}:1: header column {number} has no name", path=str(self.path), number=blank[0]))
        self.attribute_columns = [h for h in header if h not in RESERVED_SUBSCRIBER_COLUMNS]
        self.has_language, self.has_opted_out = "language" in header, "opted_out" in header
        if len(self.attribute_columns) == 1:
            only = self.attribute_columns[0]
            self._attribute_cells = lambda row: (row[only],)
        elif self.attribute_columns:
            self._attribute_cells = itemgetter(*self.attribute_columns)   # type: ignore[assignment]
        if long := [h for h in self.attribute_columns if len(h) > 100]:
            raise InputError(Text("{path}:1: column name {name!r}... is too long (at most 100 characters)",
                                  path=str(self.path), name=long[0][:40]))

    def prepare(self, row: Mapping[str, str]) -> dict[str, Any]:
        try:
            phone, operator = e164_and_carrier(row.get("phone", ""))
        except PhoneError as exc:
            raise RowError("phone", phone_reason(exc)) from None
        area_id = None
        if self.area_column and (text := row.get(self.area_column, "").strip()):
            area_id = self._areas.get(text)
            if area_id is None:
                try:
                    area_id = self.index.resolve(text).id
                except AreaLookupError as exc:
                    raise RowError(self.area_column, area_reason(exc, text)) from None
                if len(self._areas) < 100_000:   # an area is named the same way on many rows
                    self._areas[text] = area_id
        language = (row.get("language", "").strip().lower() or None) if self.has_language else None
        if language is not None and not re.fullmatch(r"[a-z]{2,3}(-[a-z0-9]{2,8})?", language):
            raise RowError("language", Text("not a language code: {language!r} (e.g. vi, en)", language=language))
        if language is not None:
            _fit("language", language, 8)
        # a blank cell keeps what was there, like name and area: it must not opt anyone back in
        opted_out = None
        if self.has_opted_out and (text := row.get("opted_out", "")).strip():
            opted_out = parse_bool("opted_out", text)
        attributes, keys = self._attributes(row)
        name = row.get("name", "")
        if "  " in name or name != name.strip() or not name.isprintable():   # else it is already clean
            name = " ".join(name.split())
        return {
            "phone": phone, "carrier": operator, "area_id": area_id,
            "name": _fit("name", name, 200), "language": language,
            "attributes": attributes, "keys": keys, "opted_out": opted_out,
        }

    def _attributes(self, row: Mapping[str, str]) -> tuple[str, frozenset[str]]:
        """The row's attributes as JSON text, and their names.

        The same cells give the same text: an export's attribute columns repeat a few values
        (ages, groups), so the text is made once per combination of cells, not once per row.
        """
        try:
            cells = self._attribute_cells(row)
        except KeyError:    # a short row: a missing cell is an empty one
            cells = tuple(row.get(c, "") for c in self.attribute_columns)
        found = self._attribute_texts.get(cells)
        if found is None:
            stripped = [(c, v.strip()) for c, v in zip(self.attribute_columns, cells, strict=True)]
            values = {c: _attribute(v) for c, v in stripped if v}
            found = _json_text(values), frozenset(values)
            if self._attribute_room > 0:   # columns of unique values fill it, and it stops growing
                self._attribute_room -= 2 * len(found[0]) + 100
                self._attribute_texts[cells] = found
        return found

    def write(self, conn: Connection, records: list[dict[str, Any]]) -> tuple[int, list[Late]]:
        latest: dict[str, dict[str, Any]] = {}
        for r in records:   # the same phone twice in one batch: the later row wins
            latest[r["phone"]] = r
        late = self._erased(conn, records, latest) if self.any_erased else []
        rows = list(latest.values())
        if self.dialect == "postgresql":
            self._copy_upsert(conn, rows)
        else:
            self._upsert(conn, rows)
        self._remember_keys(conn, rows)
        return len(records) - len(late), late

    @staticmethod
    def _erased(conn: Connection, records: list[dict[str, Any]], latest: dict[str, dict[str, Any]]) -> list[Late]:
        """Numbers erased at the person's request come back only with a new consent (loa.subjects):
        their rows are refused, and taken out of ``latest``."""
        from loa.subjects import erased_among

        held = set(conn.scalars(select(db.subscribers.c.phone).where(db.subscribers.c.phone.in_(list(latest)))))
        erased = erased_among(conn, set(latest) - held)
        for phone in erased:
            del latest[phone]
        return [(r, "phone", (f"erased on {erased[r['phone']]:%Y-%m-%d} at the person's request: it comes back "
                              "only with a consent given since (`loa import consents`)"))
                for r in records if r["phone"] in erased]

    # Each batch's values are converted here, once per batch where they are the same for every
    # row (the time), and handed to the driver as they are: SQLAlchemy's per-row processing of
    # parameters costs more than the database's own work.  Rows that give their language or
    # opt-out update it; rows that do not keep what is stored: one statement for each kind.

    def _groups(self, rows: list[dict[str, Any]]) -> Iterator[tuple[bool, bool, list[dict[str, Any]]]]:
        for lang_given in (True, False):
            for opt_given in (True, False):
                part = [r for r in rows if (r["language"] is not None) is lang_given
                        and (r["opted_out"] is not None) is opt_given]
                if part:
                    yield lang_given, opt_given, part

    def _upsert(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        t = db.subscribers
        dialect = conn.dialect
        now = t.c.updated_at.type._cached_bind_processor(dialect)(db.utcnow())
        for lang_given, opt_given, part in self._groups(rows):
            sql = self._statements.get((lang_given, opt_given))
            if sql is None:
                stmt = db.insert_for(conn, t)
                set_ = _subscriber_updates(stmt.excluded, lang_given, opt_given, dialect.name)
                stmt = stmt.on_conflict_do_update(index_elements=["phone"], set_=set_)
                compiled = stmt.compile(dialect=dialect, column_keys=list(_SUBSCRIBER_COLUMNS))
                assert tuple(compiled.positiontup or ()) == _SUBSCRIBER_COLUMNS, compiled.positiontup
                sql = self._statements[(lang_given, opt_given)] = compiled.string
            conn.exec_driver_sql(sql, [
                (r["phone"], r["carrier"], r["area_id"], r["name"], r["language"] or "vi", r["attributes"],
                 now if r["opted_out"] else None, now, now)
                for r in part
            ])

    def _copy_upsert(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """PostgreSQL: COPY the batch into a staging table, then one upsert from it per kind of row."""
        t = db.subscribers
        now = db.utcnow()
        conn.exec_driver_sql(_STAGE_DDL)
        cursor = conn.connection.driver_connection.cursor()
        with cursor.copy(f"COPY {_STAGE.name} ({', '.join(c.name for c in _STAGE.c)}) FROM STDIN") as copy:
            for r in rows:
                copy.write_row((r["phone"], r["carrier"], r["area_id"], r["name"], r["language"] or "vi",
                                r["attributes"], now if r["opted_out"] else None,
                                r["language"] is not None, r["opted_out"] is not None))
        s = _STAGE.c
        given = {(lang, opt) for lang, opt, _ in self._groups(rows)}
        for lang_given, opt_given in sorted(given, reverse=True):
            stmt = db.insert_for(conn, t).from_select(
                list(_SUBSCRIBER_COLUMNS),
                select(s.phone, s.carrier, s.area_id, s.name, s.language, s.attributes, s.opted_out_at,
                       literal(now, db.UTCDateTime), literal(now, db.UTCDateTime))
                .where(s.lang_given.is_(lang_given), s.opt_given.is_(opt_given)),
            )
            set_ = _subscriber_updates(stmt.excluded, lang_given, opt_given, "postgresql")
            conn.execute(stmt.on_conflict_do_update(index_elements=["phone"], set_=set_))
        conn.exec_driver_sql(f"TRUNCATE {_STAGE.name}")

    def _remember_keys(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        new = frozenset().union(*{r["keys"] for r in rows}) - self.known_keys
        if new:
            stmt = db.insert_for(conn, db.attribute_keys).on_conflict_do_nothing()
            conn.execute(stmt, [{"name": k} for k in sorted(new)])
            self.known_keys |= new

    def count(self, conn: Connection) -> int:
        return conn.scalar(select(func.count()).select_from(db.subscribers)) or 0

    def finish(self, conn: Connection) -> None:
        pass


_SUBSCRIBER_COLUMNS = ("phone", "carrier", "area_id", "name", "language", "attributes", "opted_out_at",
                       "created_at", "updated_at")


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _subscriber_updates(ex: Any, lang_given: bool, opt_given: bool, dialect: str) -> dict[str, Any]:
    """What a re-imported row changes: an empty cell keeps what was there, attributes merge."""
    t = db.subscribers
    merge = (t.c.attributes.op("||")(ex.attributes) if dialect == "postgresql"
             else func.json_patch(t.c.attributes, ex.attributes))
    set_: dict[str, Any] = {
        "area_id": func.coalesce(ex.area_id, t.c.area_id),
        "name": func.coalesce(func.nullif(ex.name, literal_column("''")), t.c.name),
        "carrier": ex.carrier, "attributes": merge, "updated_at": ex.updated_at,
    }
    if lang_given:
        set_["language"] = ex.language
    if opt_given:
        # opting in clears the date; opting out keeps the first refusal's date (per row: one
        # batch can hold both)
        set_["opted_out_at"] = case(
            (ex.opted_out_at.is_(None), None),
            else_=func.coalesce(t.c.opted_out_at, ex.opted_out_at),
        )
    return set_


# A batch on its way into subscribers (PostgreSQL): the connection's own, emptied after each batch.
_STAGE = Table(
    "loa_import_subscribers", MetaData(),
    Column("phone", String(16)), Column("carrier", String(40)), Column("area_id", Integer),
    Column("name", String(200)), Column("language", String(8)), Column("attributes", postgresql.JSONB),
    Column("opted_out_at", db.UTCDateTime), Column("lang_given", Boolean), Column("opt_given", Boolean),
    prefixes=["TEMPORARY"],
)
_STAGE_DDL = str(CreateTable(_STAGE, if_not_exists=True).compile(dialect=postgresql.dialect()))


# -- events -------------------------------------------------------------------

RESERVED_EVENT_COLUMNS = {"phone", "type", "time", "source"}


class EventsHandler:
    kind = "events"
    required = ("phone", "type", "time")
    expected = "phone,type,time[,source,<attributes>...]"

    def __init__(self, engine: Engine, path: Path, tz: ZoneInfo) -> None:
        self.path = path
        self.tz = tz
        self.extra: list[str] = []

    def check_header(self, header: Sequence[str]) -> None:
        if missing := _missing(header, self.required):
            raise _header_error(str(self.path), self.kind, header, missing, self.expected)
        self.extra = [h for h in header if h and h not in RESERVED_EVENT_COLUMNS]

    def prepare(self, row: Mapping[str, str]) -> dict[str, Any]:
        phone = phone_cell(row)
        kind = row.get("type", "").strip().lower()
        if not _EVENT_TYPE.match(kind):
            raise RowError("type", Text("not an event type: {kind!r} (lowercase letters, digits, _; e.g. installed)",
                                        kind=kind))
        at = parse_time("time", row.get("time", ""), self.tz)
        attributes = {c: attribute_value(v.strip()) for c in self.extra if (v := row.get(c, "")).strip()}
        return {"phone": phone, "type": kind, "occurred_at": at,
                "source": _fit("source", row.get("source", "").strip() or "import", 64),
                "attributes": attributes or None}

    def write(self, conn: Connection, records: list[dict[str, Any]]) -> tuple[int, list[Late]]:
        unknown: list[Late] = []
        written = record_events(
            conn, records,
            on_unknown=lambda r: unknown.append(
                (r, "phone", Text("no subscriber has this phone; import subscribers first"))),
        )
        return written, unknown

    def count(self, conn: Connection) -> int:
        return conn.scalar(select(func.count()).select_from(db.events)) or 0

    def finish(self, conn: Connection) -> None:
        pass


class DncHandler:
    """The do-not-contact list: the national DNC register ("DK DNC" to 5656) or local refusals.

    Numbers need not be subscribers: a listed number is suppressed whenever it
    appears, at planning and again just before sending.
    """

    kind = "dnc"
    required = ("phone",)
    expected = "phone[,source]"

    def __init__(self, engine: Engine, path: Path) -> None:
        self.path = path

    def check_header(self, header: Sequence[str]) -> None:
        if missing := _missing(header, self.required):
            raise _header_error(str(self.path), self.kind, header, missing, self.expected)

    def prepare(self, row: Mapping[str, str]) -> dict[str, Any]:
        phone = phone_cell(row)
        return {"phone": phone, "source": _fit("source", row.get("source", "").strip() or self.path.name, 64)}

    def write(self, conn: Connection, records: list[dict[str, Any]]) -> tuple[int, list[Late]]:
        now = db.utcnow()
        rows = {r["phone"]: {"phone": r["phone"], "source": r["source"], "added_at": now} for r in records}
        conn.execute(db.insert_for(conn, db.dnc).on_conflict_do_nothing(), list(rows.values()))
        return len(records), []

    def count(self, conn: Connection) -> int:
        return conn.scalar(select(func.count()).select_from(db.dnc)) or 0

    def finish(self, conn: Connection) -> None:
        pass


def record_events(conn: Connection, records: list[dict[str, Any]], on_unknown: Callable[[dict[str, Any]], None] | None = None) -> int:
    """Insert events (phone, type, occurred_at, source, attributes[, outbox_id]) idempotently.

    Returns how many rows were accepted (including ones already present).  An
    ``opted_out`` event opts the subscriber out at once.
    """
    s = db.subscribers
    phones = {r["phone"] for r in records}
    ids = dict(conn.execute(select(s.c.phone, s.c.id).where(s.c.phone.in_(phones))).all())
    now = db.utcnow()
    rows = []
    for r in records:
        sid = ids.get(r["phone"])
        if sid is None:
            if on_unknown:
                on_unknown(r)
            continue
        rows.append({"subscriber_id": sid, "type": r["type"], "occurred_at": r["occurred_at"],
                     "source": r.get("source", ""), "attributes": r.get("attributes"),
                     "outbox_id": r.get("outbox_id"), "created_at": now})
    if rows:
        conn.execute(db.insert_for(conn, db.events).on_conflict_do_nothing(), rows)
        opted = [r for r in rows if r["type"] == "opted_out"]
        for r in opted:
            conn.execute(update(s).where(s.c.id == r["subscriber_id"], s.c.opted_out_at.is_(None))
                         .values(opted_out_at=r["occurred_at"], updated_at=now))
    return len(rows)


# -- snapshots ----------------------------------------------------------------

# "(district unknown)", "không rõ", "chưa xác định": counted in the parent, in none of its children
_UNKNOWN_AREA = re.compile(r"\b(unknown|unallocated|khong ro|chua ro|khong xac dinh|chua xac dinh)\b")
# "Total", "Tổng cộng": the file's stated total for the parent
_TOTAL_AREA = {"total", "grand total", "tong", "tong cong", "cong", "toan tinh", "all"}
_METRIC = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_COUNT = re.compile(r"^-?([0-9]+|[0-9]{1,3}([,. _\u00a0][0-9]{3})+)$")
_PERCENT = re.compile(r"^([0-9]+)(?:[.,]([0-9]+))?\s*%?$")


def _count(column: str, text: str, *, signed: bool = False) -> int:
    """A whole number; thousands may be grouped with ',', '.', ' ' or '_' ("84.124" is 84124)."""
    value = text.strip()
    if not _COUNT.match(value) or (value.startswith("-") and not signed):
        raise RowError(column, Text("not a whole number: {text!r}", text=text) if signed
                       else Text("not a whole number (0 or more): {text!r}", text=text))
    number = int(re.sub(r"[,. _\u00a0]", "", value))
    if abs(number) >= 2**63:
        raise RowError(column, Text("too large: {text!r}", text=text))
    return number


def parse_date(column: str, text: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise RowError(column, Text("not a date (YYYY-MM-DD): {text!r}", text=text)) from None


class SnapshotsHandler:
    """Aggregate counts per area at a date: registrations per district from a ministry's export.

    Columns: ``area`` (code or name), ``value``, ``as_of`` (a date; may be given
    for the whole file instead), and optionally ``metric`` (default
    "installed"), ``source``, ``parent``, ``change``, ``change_since`` and
    ``rate``.  What the file states is kept as stated; :mod:`loa.snapshots`
    computes its own figures and lists where the statements disagree:

    * a row for an area that has children (a province above its districts) is
      the file's stated total for it, compared with the sum of its children;
      so is a "Total" / "Tổng cộng" row, whose ``parent`` names the area;
    * a "(district unknown)" / "không rõ" row, with ``parent``, counts people in
      the parent but in none of its children: kept as the parent's
      ``unallocated`` and added to the children's sum;
    * ``change`` (since ``change_since``) and ``rate`` (in percent, as printed)
      are checked against the counts, never used in their place.

    ``parent`` also scopes name lookups ("Thành phố Sơn La" within "Sơn La").
    The same area, metric and date twice in one file is refused; a re-import
    replaces what an earlier file stated.
    """

    kind = "snapshots"
    required = ("area", "value")
    expected = "area,value,as_of[,metric,source,parent,change,change_since,rate]"

    def __init__(self, engine: Engine, path: Path, *, as_of: date | None = None, metric: str = "installed",
                 source: str | None = None) -> None:
        if not _METRIC.match(metric):
            raise InputError(Text("not a metric name: {metric!r} (lowercase letters, digits, _; e.g. installed)",
                                  metric=metric))
        self.path = path
        self.as_of = as_of
        self.metric = metric
        self.source = source if source is not None else path.name
        with engine.connect() as conn:
            self.index = AreaIndex.load(conn)
        self._children: dict[int, list[Area]] = {}
        for area in self.index.by_id.values():
            if area.parent_id is not None:
                self._children.setdefault(area.parent_id, []).append(area)
        self._seen: set[tuple[int, str, date, bool]] = set()

    def check_header(self, header: Sequence[str]) -> None:
        needed = self.required if self.as_of else (*self.required, "as_of")
        if missing := _missing(header, needed):
            raise _header_error(str(self.path), self.kind, header, missing, self.expected)
        if len(self.index) == 0:
            raise InputError(Text("{path}: no areas are loaded; run `loa import areas FILE` first", path=str(self.path)))
        if "change_since" in header and "change" not in header:
            raise InputError(Text("{path}:1: a change_since column needs a change column", path=str(self.path)))

    def prepare(self, row: Mapping[str, str]) -> dict[str, Any]:
        metric = row.get("metric", "").strip().lower() or self.metric
        if not _METRIC.match(metric):
            raise RowError("metric", Text("not a metric name: {metric!r} (lowercase letters, digits, _; e.g. installed)",
                                          metric=metric))
        as_of = parse_date("as_of", text) if (text := row.get("as_of", "").strip()) else self.as_of
        if as_of is None:
            raise RowError("as_of", Text("empty date"))
        parent = None
        if text := row.get("parent", "").strip():
            try:
                parent = self.index.resolve(text)
            except AreaLookupError as exc:
                raise RowError("parent", area_reason(exc, text)) from None
        name = " ".join(row.get("area", "").split())
        if not name:
            raise RowError("area", Text("empty area"))
        key = fold(name)
        unknown = bool(_UNKNOWN_AREA.search(key))
        if unknown or key in _TOTAL_AREA:
            if parent is None:
                raise RowError("parent", Text(
                    "{name!r} counts people in no known area: say in the parent column which area it belongs to",
                    name=name) if unknown else Text(
                    "{name!r} counts a total: say in the parent column which area it belongs to", name=name))
            area = parent
        else:
            area = self._resolve(name, parent)
        value = _count("value", row.get("value", ""))
        change, since, rate = None, None, None
        if text := row.get("change", "").strip():
            change = _count("change", text, signed=True)
            if not (since_text := row.get("change_since", "").strip()):
                raise RowError("change_since", Text("a change needs the date it is counted from"))
            since = parse_date("change_since", since_text)
            if since >= as_of:
                raise RowError("change_since", Text("{since} is not before as_of {as_of}", since=since, as_of=as_of))
        elif row.get("change_since", "").strip():
            raise RowError("change", Text("change_since is given but the change is empty"))
        if text := row.get("rate", "").strip():
            m = _PERCENT.match(text)
            if not m:
                raise RowError("rate", Text("not a percentage: {text!r} (e.g. 6.4 or 6,4%)", text=text))
            rate = m.group(1) + (f".{m.group(2)}" if m.group(2) is not None else "")
            _fit("rate", rate, 16)
        if unknown and (change is not None or rate is not None):
            raise RowError("area", Text("{name!r} counts people in no known area: it cannot carry a change or a rate",
                                        name=name))
        seen = (area.id, metric, as_of, unknown)
        if seen in self._seen:
            raise RowError("area", Text(
                "people in no area of {name}: {metric} on {as_of} is already given earlier in this file",
                name=area.name, metric=metric, as_of=as_of) if unknown else Text(
                "{name} ({code}): {metric} on {as_of} is already given earlier in this file",
                name=area.name, code=area.code, metric=metric, as_of=as_of))
        self._seen.add(seen)
        return {
            "area_id": area.id, "metric": metric, "as_of": as_of, "unknown": unknown, "value": value,
            "stated_change": change, "change_since": since, "stated_rate": rate,
            "source": _fit("source", row.get("source", "").strip() or self.source, 200),
        }

    def _resolve(self, name: str, parent: Area | None) -> Area:
        if parent is not None:
            # within the parent first: "Mộc Châu" under "Sơn La" is its district, wherever else one is
            hit = self.index.by_code.get(name.casefold())
            if hit is None:
                hits = self.index.matches(name, among={a.id for a in self._within(parent)})
                if len(hits) == 1:
                    return hits[0]
                if hits:
                    names = "; ".join(f"{a.name} ({a.code})" for a in hits[:5])
                    raise RowError("area", Text("area {name!r} is ambiguous in {parent}: {names}; "
                                                "use the code, or the name as written with its diacritics",
                                                name=name, parent=parent.name, names=names))
        try:
            area = self.index.resolve(name)
        except AreaLookupError as exc:
            raise RowError("area", area_reason(exc, name)) from None
        if parent is not None and area.id not in {a.id for a in self._within(parent)}:
            raise RowError("area", Text("{name} ({code}) is not in {parent} ({parent_code})", name=area.name,
                                        code=area.code, parent=parent.name, parent_code=parent.code))
        return area

    def _within(self, parent: Area) -> list[Area]:
        """The parent and everything under it."""
        out, todo = [], [parent]
        while todo:
            area = todo.pop()
            out.append(area)
            todo += self._children.get(area.id, [])
        return out

    def write(self, conn: Connection, records: list[dict[str, Any]]) -> tuple[int, list[Late]]:
        now = db.utcnow()
        t = db.snapshots
        stmt = db.insert_for(conn, t)
        ex = stmt.excluded
        stated = [
            {k: r[k] for k in ("area_id", "metric", "as_of", "value", "stated_change", "change_since",
                               "stated_rate", "source")} | {"imported_at": now}
            for r in records if not r["unknown"]
        ]
        if stated:
            conn.execute(stmt.on_conflict_do_update(
                index_elements=["area_id", "metric", "as_of"],
                set_={c: ex[c] for c in ("value", "stated_change", "change_since", "stated_rate", "source",
                                         "imported_at")},
            ), stated)
        unallocated = [
            {"area_id": r["area_id"], "metric": r["metric"], "as_of": r["as_of"], "unallocated": r["value"],
             "source": r["source"], "imported_at": now}
            for r in records if r["unknown"]
        ]
        if unallocated:
            conn.execute(stmt.on_conflict_do_update(
                index_elements=["area_id", "metric", "as_of"],
                set_={"unallocated": ex.unallocated, "imported_at": ex.imported_at},
            ), unallocated)
        return len(records), []

    def count(self, conn: Connection) -> int:
        return conn.scalar(select(func.count()).select_from(db.snapshots)) or 0

    def finish(self, conn: Connection) -> None:
        pass
