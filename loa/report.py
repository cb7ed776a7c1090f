"""The per-area report: computed from the ledger and the events, never typed in.

For one campaign (all its runs) and each area:

* population (with its date): the figure in force when the campaign's first run was
  scheduled, and audience (people in any run's outbox);
* held out, suppressed, sent (handed to a gateway), delivered, undelivered,
  failed (people, not messages; outcomes as :mod:`loa.status` defines them, so
  ``loa status`` and the report agree);
* responders (the goal's event, "installed" by default) within the
  campaign's attribution window (``attribution``, 7 days by default): among
  the delivered, counted from the delivery; among the held out, from the
  planned send time.  Uplift is the difference between everyone targeted
  (intent to treat, counted from the planned send time like the held out, so
  both arms have the same clock) and the held out, in points, with its 95%
  interval (uplift_low, uplift_high: Newcombe's hybrid score interval, see
  :mod:`loa.stats`) and ``small`` when either group is too small to read it;
* everyone installed in the area (whatever prompted it) as a share of the
  population, and the progress towards the campaign's goal.

A person's response to a message is their first event at or after its planned
send time; earlier ones are history.  It counts if it falls inside the window:
for the delivered, ``[delivered, delivered + window)`` (someone who installed
while their message was still queued did so without it); for the targeted and
the held out, ``[planned, planned + window)``.  A message marked delivered with
no delivery time (a gateway's record, not a receipt) is clocked from its send.
A message sent with no receipt yet is not counted as delivered, so it stays out
of the delivered's rate but in the intent-to-treat uplift, which needs no
receipts: with a gateway that never sends them, read the uplift.

Rows are the areas at one level (``--level``): the level the audience lives at
by default, and every area at that level in the campaign's segment, with zeros
where no one of the audience lives.  People recorded at a coarser area (a
province, when the rows are districts) are counted on their own line, "(not in
a district)", never in the province's row beside its districts: each person,
and each resident, is counted once.  With snapshots of the goal's event, the
output carries them too (:func:`snapshot_summary`): their rates, changes, pace
and the disagreements they show.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import BigInteger, and_, case, func, literal, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import ColumnElement, Subquery

from loa import db, snapshots, stats
from loa.areas import Area, AreaIndex, AreaLookupError, populations_on
from loa.campaign import ATTRIBUTION, VALIDITY_HOURS, ArrivalRule, Goal, load_one, parse_duration
from loa.config import DEFAULT_TIMEZONE
from loa.errors import InputError, LoaError, NotFound, Text
from loa.ratelimit import db_epoch
from loa.snapshots import Series, Summary
from loa.status import HANDED_OVER, states_of

O, R, E, S = db.outbox, db.runs, db.events, db.subscribers
SENT_STATES = states_of(*HANDED_OVER)
NO_AREA = "(no area)"


def outside_label(level: str) -> str:
    """The line of the people recorded at no area of the report's level: "(not in a district)"."""
    return f"(not in a {level})"


@dataclass
class Row:
    code: str
    area: str
    level: str
    population: int | None = None
    population_as_of: date | None = None
    audience: int = 0
    held_out: int = 0
    suppressed: int = 0
    targeted: int = 0
    sent: int = 0
    delivered: int = 0
    undelivered: int = 0
    failed: int = 0
    installed_delivered: int = 0
    installed_targeted: int = 0
    installed_held_out: int = 0
    installed_total: int = 0
    spent_vnd: int = 0          # what the messages sent there cost when they were sent (loa.cost)

    def add(self, other: Row) -> None:
        for name in (*COUNTS, "spent_vnd"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def rate_delivered(self) -> float | None:
        return _ratio(self.installed_delivered, self.delivered)

    @property
    def rate_held_out(self) -> float | None:
        return _ratio(self.installed_held_out, self.held_out)

    @property
    def rate_targeted(self) -> float | None:
        return _ratio(self.installed_targeted, self.targeted)

    @property
    def uplift_points(self) -> float | None:
        if self.rate_targeted is None or self.rate_held_out is None:
            return None
        return 100 * (self.rate_targeted - self.rate_held_out)

    @property
    def installed_share(self) -> float | None:
        return _ratio(self.installed_total, self.population)

    # The uplift's 95% interval (Newcombe's hybrid score method, see loa.stats), in points,
    # and whether either group is too small to read it (stats.small_reason says why).
    @property
    def uplift(self) -> stats.Uplift | None:
        if not (0 <= self.installed_targeted <= self.targeted and 0 <= self.installed_held_out <= self.held_out):
            return None
        return stats.uplift(self.installed_targeted, self.targeted, self.installed_held_out, self.held_out)

    @property
    def uplift_low(self) -> float | None:
        u = self.uplift
        return None if u is None else u.low_points

    @property
    def uplift_high(self) -> float | None:
        u = self.uplift
        return None if u is None else u.high_points

    @property
    def small(self) -> bool | None:
        """None when there is nothing to compare (no one targeted or no one held out)."""
        u = self.uplift
        return None if u is None else u.small

    @property
    def small_reason(self) -> str | None:
        u = self.uplift
        return None if u is None else u.reason


COUNTS = ("audience", "held_out", "suppressed", "targeted", "sent", "delivered", "undelivered", "failed",
          "installed_delivered", "installed_targeted", "installed_held_out", "installed_total")


def _ratio(a: int, b: int | None) -> float | None:
    return a / b if b else None


@dataclass
class Report:
    campaign: str
    event: str
    goal: Goal | None
    level: str
    rows: list[Row]
    total: Row
    notes: list[str] = field(default_factory=list)
    attribution: float | None = ATTRIBUTION   # seconds; None when the runs' windows differ
    population_on: date | None = None         # the day whose populations are used: the first run's
    whole: str | None = None    # the area the rows make up, children all listed (the province of its districts)
    # the campaign versions its runs were planned from (loa.versions): version -> run ids; the
    # text that went out is `loa campaigns diff NAME` / the stored version's templates
    versions: dict[int, list[int]] = field(default_factory=dict)

    def progress(self, row: Row) -> float | None:
        if self.goal is None:
            return None
        base = row.installed_share if self.goal.of == "population" else _ratio(row.installed_total, row.audience)
        return None if base is None else base / self.goal.share


def campaigns_with_runs(engine: Engine) -> list[str]:
    """Names of the campaigns that have at least one run, the most recently run first."""
    c, r = db.campaigns, db.runs
    latest = func.max(r.c.created_at)
    stmt = select(c.c.name).join(r, r.c.campaign_id == c.c.id).group_by(c.c.name).order_by(latest.desc(), c.c.name)
    with engine.connect() as conn:
        return [str(name) for name in conn.scalars(stmt)]


def latest_campaign(engine: Engine) -> str:
    """The campaign a report is about when none is named: the one run last."""
    names = campaigns_with_runs(engine)
    if not names:
        raise NotFound("no campaign has run yet; name one, or run `loa campaigns run NAME`")
    return names[0]


def levels(engine: Engine) -> set[str]:
    """The area levels a report can roll up to."""
    with engine.connect() as conn:
        return {str(level) for level in conn.scalars(select(db.areas.c.level).distinct()) if level}


def for_campaign(engine: Engine, campaigns_dir: Path, name: str, level: str | None = None) -> Report:
    """The report of campaign ``name`` against the goal in its file, as ``loa report`` makes it.

    A campaign file that is gone or broken leaves the report without a goal rather than
    without figures: the ledger still holds every message.
    """
    if level is not None and level not in (known := levels(engine)):
        raise InputError(f"unknown area level {level!r} (levels: {', '.join(sorted(known)) or 'none imported'})")
    from loa.versions import campaign_of, stored

    with engine.connect() as conn:
        version = stored(conn, name)
    try:
        # the stored current version's goal, once the campaign has one; else its file's
        goal = campaign_of(_config_for(campaigns_dir), version).goal if version is not None \
            else load_one(campaigns_dir, name).goal
    except NotFound as exc:   # no file: a campaign the ledger knows is still reported, without a goal
        with engine.connect() as conn:
            if conn.scalar(select(db.campaigns.c.id).where(db.campaigns.c.name == name)) is None:
                raise NotFound(f"{exc}; and no campaign of that name has ever run") from None
        goal = None
    except LoaError:
        goal = None
    return build(engine, name, goal, level)


def _config_for(campaigns_dir: Path) -> Any:
    """Just enough of a configuration to parse a stored version (named after its folder)."""
    from types import SimpleNamespace

    return SimpleNamespace(campaigns_dir=campaigns_dir)


def build(engine: Engine, campaign: str, goal: Goal | None, level: str | None = None) -> Report:
    event = goal.event if goal else "installed"
    with engine.connect() as conn:
        campaign_id = conn.scalar(select(db.campaigns.c.id).where(db.campaigns.c.name == campaign))
        if campaign_id is None:
            raise NotFound(f"campaign {campaign!r} has no runs yet; run `loa campaigns run {campaign}` first")
        index = AreaIndex.load(conn)
        clocks = _run_clocks(conn, campaign_id)
        per_area = _per_area(conn, campaign_id, event, clocks)
        installed = _installed_by_area(conn, event)
        first = conn.scalar(select(func.min(R.c.scheduled_for)).where(R.c.campaign_id == campaign_id))
        day = first.astimezone(ZoneInfo(DEFAULT_TIMEZONE)).date() if first else db.utcnow().date()
        index, as_of = _populations_in_force(conn, index, day)
        definitions = [d or {} for d in conn.scalars(select(R.c.definition).where(R.c.campaign_id == campaign_id))]
        versions: dict[int, list[int]] = {}
        for run_id, number in conn.execute(select(R.c.id, R.c.campaign_version).where(
                R.c.campaign_id == campaign_id, R.c.campaign_version.is_not(None)).order_by(R.c.id)):
            versions.setdefault(number, []).append(run_id)
        cancelled = conn.execute(
            select(R.c.id, func.count()).join(db.outbox, db.outbox.c.run_id == R.c.id)
            .where(R.c.campaign_id == campaign_id, db.outbox.c.run_id.in_(list(clocks)),
                   db.outbox.c.state == "cancelled")
            .group_by(R.c.id).order_by(R.c.id)).all()
    used = {a for a in per_area if a is not None}
    level = level or _deepest_level(index, used)
    rows: dict[int | str | None, Row] = {}
    for area_id, counts in per_area.items():
        key, target = _row_of(index, area_id, level)
        row = rows.get(key) or _new_row(target, as_of, key, level)
        rows[key] = row
        row.add(counts)
    segment, notes = _segment_areas(index, definitions, level)
    for area in segment:
        rows.setdefault(area.id, _new_row(area, as_of, area.id, level))
    for area_id, n in installed.items():
        key, _ = _row_of(index, area_id, level)
        if key in rows:
            rows[key].installed_total += n
    ordered = sorted(rows.values(), key=lambda r: (r.code == "", -(r.population or 0), r.area))
    total = Row(code="", area="Total", level="")
    for row in ordered:
        total.add(row)
    total.population = sum(r.population or 0 for r in ordered) or None
    windows = {c.window for c in clocks.values()}
    report = Report(campaign, event, goal, level, ordered, total,
                    attribution=windows.pop() / 1000 if len(windows) == 1 else None, population_on=day,
                    whole=_whole(index, ordered, level))
    report.notes = _disagreements(index, ordered, level) + notes
    if later := [r for r in ordered if r.population_as_of and r.population_as_of > day]:
        used = [Text("{area} (used {day})", area=r.area, day=r.population_as_of) for r in later]
        report.notes.append(Text("no population dated on or before {day} (the campaign's first run) for: {areas}",
                                 day=day, areas=_joined(used)))
    if len(windows) > 1:
        report.notes.append(Text(
            "the runs have different attribution windows ({windows}): each run's responses are counted within its own",
            windows=", ".join(_duration_text(w / 1000) for w in sorted(windows))))
    if any(r.population is None and r.code for r in ordered):
        missing = ", ".join(r.area for r in ordered if r.population is None and r.code)
        report.notes.append(Text("no population for: {areas}; their shares are left blank", areas=missing))
    report.versions = versions
    if cancelled:   # counted as targeted and not sent, as the intent-to-treat uplift needs
        runs = [Text("run {run}: {n:n}", run=run_id, n=n) for run_id, n in cancelled]
        report.notes.append(Text("{n:n} message(s) cancelled before they were sent ({runs})",
                                 n=sum(n for _, n in cancelled), runs=_joined(runs)))
    return report


def _joined(items: list[Text]) -> Text:
    """Sentences joined by ", ", each said in the reader's language (the joint is no sentence
    of the catalog: it stays as it is)."""
    joint = ", ".join(f"{{i{n}}}" for n in range(len(items)))
    return Text(joint, **{f"i{n}": t for n, t in enumerate(items)})


_LEVEL_WORDS = ("province", "district", "commune", "ward", "region")   # loa.htmlreport.LEVELS says them


def _level_word(level: str) -> str:
    """A level as a note names it, translatable where the catalog knows it."""
    if level in _LEVEL_WORDS:
        return Text(level)
    return level or Text("child")


def _row_of(index: AreaIndex, area_id: int | None, level: str) -> tuple[int | str | None, Area | None]:
    """The row that people recorded at ``area_id`` count in: (its key, its area).

    Their area's ancestor at ``level`` (or the area itself); ("outside", None) when the area
    lies above that level or beside it (a province when the rows are districts), and
    (None, None) for no area at all.
    """
    area = index.by_id.get(area_id) if area_id is not None else None
    if area is None:
        return None, None
    target = _ancestor_at(index, area, level)
    return (target.id, target) if target is not None else ("outside", None)


def _segment_areas(index: AreaIndex, definitions: list[dict[str, Any]], level: str) -> tuple[list[Area], list[str]]:
    """Every area at ``level`` in the segments the runs were planned with (inside each of their
    areas, or above it), so that a district where no one of the audience lives still has its row;
    and a note for a segment area that no longer resolves."""
    out: dict[int, Area] = {}
    notes: list[str] = []
    names = dict.fromkeys(str(n) for d in definitions for n in (d.get("segment") or {}).get("areas") or [])
    for name in names:
        try:
            root = index.resolve(name)
        except AreaLookupError as exc:
            from loa.importer import area_reason

            notes.append(Text("segment area {name!r}: {problem}; only its areas with an audience are listed",
                              name=name, problem=area_reason(exc, name)))
            continue
        if (above := _ancestor_at(index, root, level)) is not None:
            out[above.id] = above
        out |= {a.id: a for a in index.by_id.values()
                if a.level == level and a.path.startswith(root.path) and a.id != root.id}
    return list(out.values()), notes


def _whole(index: AreaIndex, rows: list[Row], level: str) -> str | None:
    """The code of the one area whose children at ``level`` are exactly the rows' areas, if any."""
    areas = [index.by_code.get(r.code.casefold()) for r in rows if r.code]
    parents = {a.parent_id for a in areas if a is not None}
    if len(parents) != 1 or None in parents or None in areas:
        return None
    parent = index.by_id[parents.pop()]  # type: ignore[arg-type]
    children = {a.id for a in index.children(parent.id) if a.level == level}
    return parent.code if children == {a.id for a in areas if a is not None} else None


@dataclass(frozen=True)
class _Clock:
    """A run's timing, in milliseconds: how far its messages' expiry lies after their planned
    send time, and its attribution window."""

    lead: int
    window: int


def _run_clocks(conn: Connection, campaign_id: int) -> dict[int, _Clock]:
    runs = conn.execute(select(R.c.id, R.c.definition).where(R.c.campaign_id == campaign_id))
    return {run_id: _clock(definition or {}) for run_id, definition in runs}


def _clock(definition: dict[str, Any]) -> _Clock:
    """From the campaign as the run planned it, so a run keeps its window if the file changes.

    Planning sets a message's expiry to its planned send time plus the validity (an arrival
    greeting's to the arrival plus the validity, its send time being the arrival plus the
    delay).  due_at moves with every deferral and retry; the expiry never does.
    """
    lead = float(definition.get("validity_hours", VALIDITY_HOURS)) * 3600
    delay = (definition.get("arrival") or {}).get("delay")
    if definition.get("trigger") == "arrival":
        lead -= parse_duration(delay) if delay else ArrivalRule().delay
    window = definition.get("attribution")
    return _Clock(round(1000 * lead), round(1000 * (parse_duration(window) if window else ATTRIBUTION)))


def _ms(dialect: str, at: Any) -> ColumnElement[Any]:
    """A timestamp in milliseconds since the epoch: windows are added to it on both backends,
    and SQLite has no interval type.  SQLite's julianday() is a float: rounded to the millisecond
    it reads, so that equal times compare equal."""
    ms = db_epoch(dialect, at) * 1000
    return ms if dialect == "postgresql" else func.round(ms)


def _per_run(run_id: ColumnElement[Any], values: dict[int, int]) -> ColumnElement[Any]:
    distinct = set(values.values())
    if len(distinct) <= 1:   # the usual case: one literal rather than a CASE over every run
        return literal(distinct.pop() if distinct else 0, BigInteger)   # a 30-day window passes 2^31 ms
    return case({k: literal(v, BigInteger) for k, v in values.items()}, value=run_id)


def _clock_of(conn: Connection, clocks: dict[int, _Clock]) -> tuple[Any, Any, Any]:
    """A message's clock in milliseconds, over the outbox joined to its run: planned (when it
    was to go out), reached (when it was delivered) and the window."""
    d = conn.dialect.name
    lead = _per_run(O.c.run_id, {k: c.lead for k, c in clocks.items()})
    window = _per_run(O.c.run_id, {k: c.window for k, c in clocks.items()})
    planned = func.coalesce(_ms(d, O.c.expires_at) - lead, _ms(d, R.c.scheduled_for))
    reached = case((O.c.state == "delivered", _ms(d, func.coalesce(O.c.delivered_at, O.c.sent_at))), else_=None)
    return planned, reached, window


def _first_responses(conn: Connection, campaign_id: int, event: str, clocks: dict[int, _Clock]) -> Subquery:
    """Each message's first ``event`` at or after its planned send time.

    Driven by the events (few) and reaching each one's messages through the outbox's
    (run, subscriber) key, so the campaign's million messages are read once, by the caller.
    """
    planned, _, _ = _clock_of(conn, clocks)
    at = _ms(conn.dialect.name, E.c.occurred_at)
    return (
        select(O.c.id, func.min(at).label("at"))
        .select_from(E.join(O, O.c.subscriber_id == E.c.subscriber_id).join(R, R.c.id == O.c.run_id))
        .where(R.c.campaign_id == campaign_id, O.c.run_id.in_(list(clocks)), E.c.type == event, at >= planned)
        .group_by(O.c.id).subquery("first_response")
    )


def _anyone(cond: Any, one_run: bool) -> Any:
    flag = case((cond, 1), else_=0)
    return flag if one_run else func.max(flag)


def _people(conn: Connection, campaign_id: int, event: str, clocks: dict[int, _Clock]) -> Subquery:
    """One line per (subscriber, area) over all runs: what happened to them, whether they
    responded within each arm's window, and what their messages cost.

    A run holds one message per subscriber, so with a single run each message is a person
    already and is not grouped again.
    """
    first = _first_responses(conn, campaign_id, event, clocks)
    planned, reached, window = _clock_of(conn, clocks)
    one_run = len(clocks) == 1
    at = first.c.at
    # the same window from the same clock for the targeted and the held out: the uplift
    # compares like with like, whenever (or whether) the messages were delivered
    from_planned = at < planned + window
    from_delivery = and_(at >= reached, at < reached + window)
    targeted = O.c.state.not_in(("held_out", "suppressed"))
    stmt = (
        select(
            O.c.subscriber_id, O.c.area_id,
            _anyone(O.c.state == "held_out", one_run).label("held"),
            _anyone(O.c.state == "suppressed", one_run).label("supp"),
            _anyone(targeted, one_run).label("targeted"),
            _anyone(O.c.state.in_(SENT_STATES), one_run).label("sent"),
            _anyone(O.c.state.in_(states_of("delivered")), one_run).label("delivered"),
            _anyone(O.c.state.in_(states_of("undelivered")), one_run).label("undelivered"),
            _anyone(O.c.state.in_(states_of("failed")), one_run).label("failed"),
            _anyone(from_delivery, one_run).label("resp_delivered"),
            _anyone(and_(targeted, from_planned), one_run).label("resp_targeted"),
            _anyone(and_(O.c.state == "held_out", from_planned), one_run).label("resp_held"),
            (O.c.cost_vnd if one_run else func.sum(O.c.cost_vnd)).label("cost"),
        )
        .select_from(O.join(R, R.c.id == O.c.run_id).outerjoin(first, first.c.id == O.c.id))
        # the campaign's runs by id, not only through the join: PostgreSQL then reads their rows by
        # the outbox's (run, subscriber) key, or their partitions only, however long the ledger is
        .where(R.c.campaign_id == campaign_id, O.c.run_id.in_(list(clocks)))
    )
    return (stmt if one_run else stmt.group_by(O.c.subscriber_id, O.c.area_id)).subquery("person")


def _per_area(conn: Connection, campaign_id: int, event: str, clocks: dict[int, _Clock]) -> dict[int | None, Row]:
    """People per area, and what was spent there: one line per (subscriber, area) over all
    runs, then summed, in one statement."""
    p = _people(conn, campaign_id, event, clocks).c
    # Over several runs one person can be targeted in one and suppressed (or held out)
    # in another: count each person once, as targeted, else held out, else suppressed;
    # as undelivered only if no message of theirs was delivered, and as failed only if
    # none was ever sent.
    held = and_(p.held == 1, p.targeted == 0)
    supp = and_(p.supp == 1, p.targeted == 0, p.held == 0)
    undelivered = and_(p.undelivered == 1, p.delivered == 0)
    failed = and_(p.failed == 1, p.sent == 0)
    stmt = (
        select(
            p.area_id,
            func.count(),
            func.sum(case((held, 1), else_=0)), func.sum(case((supp, 1), else_=0)), func.sum(p.targeted),
            func.sum(p.sent), func.sum(p.delivered), func.sum(case((undelivered, 1), else_=0)),
            func.sum(case((failed, 1), else_=0)),
            func.sum(p.resp_delivered), func.sum(p.resp_targeted),
            func.sum(case((and_(held, p.resp_held == 1), 1), else_=0)),
            func.sum(p.cost),
        )
        .group_by(p.area_id)
    )
    out: dict[int | None, Row] = {}
    for area_id, *numbers, spent in conn.execute(stmt):
        row = Row("", "", "", spent_vnd=int(spent or 0))
        for name, value in zip(COUNTS[:-1], numbers, strict=True):
            setattr(row, name, int(value or 0))
        out[area_id] = row
    return out


def _installed_by_area(conn: Connection, event: str) -> dict[int | None, int]:
    stmt = (
        select(S.c.area_id, func.count(func.distinct(E.c.subscriber_id)))
        .join(S, S.c.id == E.c.subscriber_id).where(E.c.type == event).group_by(S.c.area_id)
    )
    return dict(conn.execute(stmt).all())


def _duration_text(seconds: float) -> str:
    """7 days as "7d", as a campaign file writes it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _deepest_level(index: AreaIndex, used: Iterable[int]) -> str:
    levels = {index.by_id[a].level for a in used if a in index.by_id}
    if len(levels) == 1:
        return levels.pop()
    # mixed levels: pick the shallowest so every row rolls up into one level
    depth = {index.by_id[a].level: index.by_id[a].path.count("/") for a in used if a in index.by_id}
    return min(depth, key=depth.get) if depth else ""  # type: ignore[arg-type]


def _ancestor_at(index: AreaIndex, area: Area, level: str) -> Area | None:
    """The area itself or its ancestor at ``level``; None if neither is."""
    node: Area | None = area
    while node is not None:
        if node.level == level:
            return node
        node = index.by_id.get(node.parent_id) if node.parent_id is not None else None
    return None


def _populations_in_force(conn: Connection, index: AreaIndex, day: date) -> tuple[AreaIndex, dict[int, date | None]]:
    """The areas with the population each had on ``day``, and that figure's date."""
    figures = populations_on(conn, day)
    areas = [replace(a, population=figures[a.id].value if a.id in figures else None) for a in index.by_id.values()]
    return AreaIndex(areas), {k: f.as_of for k, f in figures.items()}


def population_caption(report: Report) -> str:
    """Which populations the shares use: "population as of 2020-08-17 (in force on ...)"."""
    dates = sorted({r.population_as_of for r in report.rows if r.population_as_of})
    if not dates:
        return ""
    when = dates[0].isoformat() if len(dates) == 1 else f"{dates[0]} to {dates[-1]}, by area"
    undated = sum(1 for r in report.rows if r.population is not None and r.population_as_of is None)
    return (f"population as of {when}" + (f" ({undated} undated)" if undated else "")
            + f": the figures in force on {report.population_on}, the campaign's first run")


def _new_row(area: Area | None, as_of: dict[int, date | None], key: int | str | None, level: str) -> Row:
    if area is None:
        return Row(code="", area=outside_label(level) if key == "outside" else NO_AREA, level="")
    return Row(code=area.code, area=area.name, level=area.level, population=area.population,
               population_as_of=as_of.get(area.id))


def _disagreements(index: AreaIndex, rows: list[Row], level: str) -> list[str]:
    """Where a parent's given population differs from the sum of its children's."""
    notes = []
    parents: dict[int, list[Row]] = {}
    for row in rows:
        area = index.by_code.get(row.code.casefold()) if row.code else None
        if area is not None and area.parent_id is not None:
            parents.setdefault(area.parent_id, []).append(row)
    for parent_id, children in parents.items():
        parent = index.by_id[parent_id]
        all_children = index.children(parent_id)
        if parent.population is None or not all_children or any(c.population is None for c in all_children):
            continue
        summed = sum(c.population or 0 for c in all_children)
        if summed != parent.population:
            difference = parent.population - summed
            notes.append(Text(
                "{parent}: population given as {given:n}, but its {count} {level} areas add up to {summed:n} "
                "(difference {sign}{difference:n}); shares here use each area's own figure",
                parent=parent.name, given=parent.population, count=len(all_children),
                level=_level_word(level), summed=summed,
                sign="+" if difference >= 0 else "-", difference=abs(difference)))
    return notes


# -- snapshots ----------------------------------------------------------------

def snapshot_summary(engine: Engine, report: Report) -> Summary | None:
    """The snapshots of the report's event for its areas (their parents and children too), if any."""
    try:
        summary = snapshots.summarize(engine, metric=report.event, goal=report.goal,
                                      related_to=[r.code for r in report.rows])
    except NotFound:
        return None
    return summary if summary.series else None


def pace(series: Series) -> str:
    """When the goal is reached at the pace of the last two snapshots: "2020-09-30 (late)"."""
    if series.reached:
        return "reached"
    if series.projected is not None:
        return series.projected.isoformat() + ("" if series.on_track is None else " (on track)" if series.on_track
                                               else " (late)")
    return "not growing" if len(series.points) >= 2 else ""


def flags(summary: Summary, code: str) -> str:
    """The kinds of disagreement found in an area's statements, e.g. "total; rate"."""
    kinds = dict.fromkeys(d.kind for d in summary.disagreements if d.code == code)
    return "; ".join(kinds)


def _snapshot_cells(summary: Summary | None, code: str | None) -> dict[str, Any]:
    """The latest snapshot of an area, as the CSV's snapshot_* columns (blank without one)."""
    series = next((s for s in summary.series if s.code == code), None) if summary and code else None
    if series is None:
        return {}
    p = series.latest
    return {"snapshot_as_of": p.as_of.isoformat(), "snapshot_value": p.value, "snapshot_rate": p.rate,
            "snapshot_change": p.change, "snapshot_change_days": p.days, "snapshot_per_day": p.per_day,
            "snapshot_goal_at": pace(series), "snapshot_flags": flags(summary, series.code)}  # type: ignore[arg-type]


# -- output -------------------------------------------------------------------

FIELDS = ("code", "area", "population", "population_as_of", "audience", "held_out", "suppressed", "sent",
          "delivered", "undelivered", "failed", "installed_delivered", "rate_delivered", "installed_held_out",
          "rate_held_out", "uplift_points", "uplift_low", "uplift_high", "small", "installed_total",
          "installed_share", "progress", "spent_vnd")
SNAPSHOT_FIELDS = ("snapshot_as_of", "snapshot_value", "snapshot_rate", "snapshot_change", "snapshot_change_days",
                   "snapshot_per_day", "snapshot_goal_at", "snapshot_flags")


def as_records(report: Report) -> list[dict[str, Any]]:
    records = []
    for row in [*report.rows, report.total]:
        rec = asdict(row) | {
            "rate_delivered": row.rate_delivered, "rate_held_out": row.rate_held_out,
            "rate_targeted": row.rate_targeted, "uplift_points": row.uplift_points,
            "uplift_low": row.uplift_low, "uplift_high": row.uplift_high, "small": row.small,
            "small_reason": row.small_reason,
            "installed_share": row.installed_share, "progress": report.progress(row),
        }
        rec["population_as_of"] = row.population_as_of.isoformat() if row.population_as_of else None
        records.append(rec)
    return records


def to_csv(report: Report, summary: Summary | None = None) -> str:
    """One line per area and the total; with snapshots, each line also has its area's latest
    (the total's is the area its rows make up, when there is one)."""
    fields = FIELDS + (SNAPSHOT_FIELDS if summary is not None else ())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    codes = [*(r.code for r in report.rows), report.whole]
    for rec, code in zip(as_records(report), codes, strict=True):
        writer.writerow({k: _cell(v) for k, v in (rec | _snapshot_cells(summary, code)).items()})
    return buf.getvalue()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return round(value, 6) if isinstance(value, float) else value


def to_json(report: Report, summary: Summary | None = None) -> str:
    goal = asdict(report.goal) if report.goal else None
    if goal and goal["by"]:
        goal["by"] = goal["by"].isoformat()
    attribution = None if report.attribution is None else _duration_text(report.attribution)
    return json.dumps({"campaign": report.campaign, "event": report.event, "level": report.level, "goal": goal,
                       "attribution": attribution, "whole": report.whole,
                       "versions": {str(v): runs for v, runs in sorted(report.versions.items())},
                       "rows": as_records(report)[:-1], "total": as_records(report)[-1],
                       "notes": notes(report, summary),
                       "snapshots": summary.as_dict() if summary is not None else None},
                      ensure_ascii=False, indent=2)


def notes(report: Report, summary: Summary | None = None) -> list[str]:
    """The report's notes and the snapshots', each finding said once (a population that its
    districts do not add up to is found by both)."""
    return list(dict.fromkeys([*report.notes, *(summary.notes if summary is not None else [])]))

FORMATS = ("html", "csv", "json")


def render(engine: Engine, report: Report, fmt: str, *, generated_at: datetime | None = None,
           lang: str | None = None) -> str:
    """The report as ``loa report`` writes it in ``fmt``: one path for the CLI, ``/report`` and the
    digest.  The page is in ``lang`` (the configuration's language; Vietnamese by default)."""
    if fmt == "html":
        from loa.htmlreport import render_report  # htmlreport imports this module

        return render_report(engine, report, generated_at=generated_at, lang=lang)
    if fmt == "csv":
        return to_csv(report, snapshot_summary(engine, report))
    if fmt == "json":
        return to_json(report, snapshot_summary(engine, report))
    raise InputError(f"unknown report format {fmt!r} (formats: {', '.join(FORMATS)})")
