"""Snapshots: counts per area at dates, as others counted them, and what follows from them.

A province reports Bluezone registrations per district every few days; loa
keeps each figure as stated (``loa import snapshots FILE``, table
``snapshots``) and computes from the counts, per area and metric:

* the series of figures by date, each with its rate against the area's
  population, the change since the previous figure and the progress to the
  goal's share;
* the date the goal would be reached at the current pace: a straight line
  through the last two figures (None when the figure is not growing);
* where the statements disagree with the counts: a stated total against the sum
  of its children, a parent's population against its children's, a stated change
  against the children's changes (or the series), a printed rate against the
  count divided by the population.

Which figure is used for an area that has children (a province): the sum of its
children's figures, plus the people counted in none of them ("district
unknown"), when every child has a figure that day; otherwise the figure stated
for the area itself.  A row that states a change since an earlier date, when
there is no figure for that date, implies one (value minus change): the series
then has two points and a pace.  Rates use each area's own population (the areas
table), as the campaign report does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from fractions import Fraction
from typing import Any, Self

from sqlalchemy import select
from sqlalchemy.engine import Engine

from loa import db
from loa.areas import Area, AreaIndex, AreaLookupError
from loa.campaign import Goal
from loa.errors import NotFound, Text


@dataclass
class Point:
    as_of: date
    value: int                      # the figure used (see the module's docstring)
    stated: int | None = None       # as stated for the area itself
    children: int | None = None     # the children's figures added up, when every child has one
    unallocated: int | None = None  # in the area but in none of its children
    implied: bool = False           # no row for this date: a later row's value minus its stated change
    rate: float | None = None       # value / population
    change: int | None = None       # since the previous point
    days: int | None = None         # since the previous point
    progress: float | None = None   # rate / goal share
    stated_change: int | None = None
    change_since: date | None = None
    stated_rate: str | None = None  # in percent, as printed
    source: str = ""

    @property
    def per_day(self) -> float | None:
        return None if self.change is None or not self.days else self.change / self.days


@dataclass
class Series:
    code: str
    area: str
    level: str
    parent_code: str | None
    metric: str
    population: int | None
    population_as_of: date | None
    points: list[Point] = field(default_factory=list)
    target: float | None = None     # goal share x population
    reached: bool = False           # the latest figure is at or above the target
    projected: date | None = None   # the target reached at the last two points' pace
    on_track: bool | None = None    # projected (or reached) by the goal's date

    @property
    def latest(self) -> Point:
        return self.points[-1]


@dataclass
class Disagreement:
    code: str
    area: str
    metric: str
    as_of: date | None
    kind: str                       # "total", "population", "change" or "rate"
    stated: float | int | str
    computed: float | int
    text: str


@dataclass
class Summary:
    metric: str
    goal: Goal | None
    series: list[Series]
    disagreements: list[Disagreement]

    @property
    def notes(self) -> list[str]:
        return [d.text for d in self.disagreements]

    @property
    def dates(self) -> list[date]:
        return sorted({p.as_of for s in self.series for p in s.points})

    def get(self, code_or_name: str) -> Series:
        for s in self.series:
            if code_or_name in (s.code, s.area):
                return s
        raise KeyError(code_or_name)

    def as_dict(self) -> dict[str, Any]:
        goal = asdict(self.goal) if self.goal else None
        return _jsonable({"metric": self.metric, "goal": goal,
                          "series": [asdict(s) | {"points": [asdict(p) | {"per_day": p.per_day} for p in s.points]}
                                     for s in self.series],
                          "disagreements": [asdict(d) for d in self.disagreements]})


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value.isoformat() if isinstance(value, date) else value


# -- projection ---------------------------------------------------------------------

def project(earlier: tuple[date, int], later: tuple[date, int], target: float) -> date | None:
    """When ``target`` is reached if the count keeps growing as from ``earlier`` to ``later``.

    A straight line through the two points; the first whole day on which it
    reaches the target.  None when the count is not growing (or the target is
    already reached: then there is nothing to project).
    """
    (d1, v1), (d2, v2) = earlier, later
    days = (d2 - d1).days
    if days <= 0 or v2 <= v1 or v2 >= target:
        return None
    pace = Fraction(v2 - v1, days)
    need = Fraction(target) - v2
    return d2 + timedelta(days=math.ceil(need / pace))


# -- loading and computing ------------------------------------------------------------

def summarize(engine: Engine, metric: str = "installed", goal: Goal | None = None,
              under: str | None = None, related_to: Iterable[str] | None = None) -> Summary:
    """Every area's series for ``metric``.

    ``under``: only that area (code or name) and what lies inside it.
    ``related_to``: only areas on the same branch as these codes: each of them,
    its ancestors and what lies inside it (a report's rows: their province and districts).
    """
    t = db.snapshots
    with engine.connect() as conn:
        index = AreaIndex.load(conn)
        as_of = dict(conn.execute(select(db.areas.c.id, db.areas.c.population_as_of)).all())
        rows = [dict(r._mapping) for r in conn.execute(select(t).where(t.c.metric == metric))]
    try:
        root = index.resolve(under) if under else None
    except AreaLookupError as exc:
        raise NotFound(str(exc)) from None
    summary = compute(index, rows, metric, goal, as_of)
    keep: set[str] | None = None
    if root is not None:
        keep = {root.code} | {a.code for a in index.by_id.values() if _inside(index, a, root)}
    if related_to is not None:
        anchors = [a for c in related_to if c and (a := index.by_code.get(c.casefold())) is not None]
        branch = {a.code for a in anchors}
        for a in anchors:
            node = a
            while node.parent_id is not None:
                node = index.by_id[node.parent_id]
                branch.add(node.code)
        branch |= {b.code for b in index.by_id.values() if any(_inside(index, b, a) for a in anchors)}
        keep = branch if keep is None else keep & branch
    if keep is not None:
        summary.series = [s for s in summary.series if s.code in keep]
        summary.disagreements = [d for d in summary.disagreements if d.code in keep]
    return summary


def _inside(index: AreaIndex, area: Area, root: Area) -> bool:
    node = area
    while node.parent_id is not None:
        node = index.by_id[node.parent_id]
        if node.id == root.id:
            return True
    return False


def compute(index: AreaIndex, rows: Iterable[dict[str, Any]], metric: str = "installed",
            goal: Goal | None = None, population_as_of: dict[int, date | None] | None = None) -> Summary:
    """The summary from snapshot rows (as in the table: area_id, as_of, value, unallocated, ...)."""
    stored = {(r["area_id"], r["as_of"]): r for r in rows}
    if not stored:
        raise NotFound(f"no snapshots of {metric!r}; import some with `loa import snapshots FILE`")
    children: dict[int, list[int]] = {}
    for area in index.by_id.values():
        if area.parent_id is not None:
            children.setdefault(area.parent_id, []).append(area.id)
    implied: dict[tuple[int, date], int] = {}
    for (area_id, _), r in stored.items():
        since = r.get("change_since")
        if r.get("stated_change") is not None and since and r.get("value") is not None:
            other = stored.get((area_id, since))
            if other is None or other.get("value") is None:
                implied[(area_id, since)] = r["value"] - r["stated_change"]
    # every area with a figure, and every ancestor (it may add up its children)
    involved: set[int] = set()
    for area_id, _ in (*stored, *implied):
        node: int | None = area_id
        while node is not None and node not in involved:
            involved.add(node)
            node = index.by_id[node].parent_id
    own_dates: dict[int, set[date]] = {}
    for area_id, d in (*stored, *implied):
        own_dates.setdefault(area_id, set()).add(d)

    memo: dict[tuple[int, date], Point | None] = {}

    def point(area_id: int, d: date) -> Point | None:
        if (area_id, d) in memo:
            return memo[(area_id, d)]
        row = stored.get((area_id, d)) or {}
        stated = row.get("value")
        unallocated = row.get("unallocated")
        kids = children.get(area_id, [])
        kid_points = [point(k, d) for k in kids]
        summed = sum(p.value for p in kid_points if p) if kids and all(kid_points) else None
        result: Point | None
        if summed is not None:
            result = Point(d, summed + (unallocated or 0), stated, summed, unallocated,
                           implied=stated is None and any(p.implied for p in kid_points if p))
        elif stated is not None:
            result = Point(d, stated, stated, None, unallocated)
        elif (area_id, d) in implied:
            result = Point(d, implied[(area_id, d)], implied=True)
        else:
            result = None
        if result is not None and row:
            result.stated_change, result.change_since = row.get("stated_change"), row.get("change_since")
            result.stated_rate, result.source = row.get("stated_rate"), row.get("source") or ""
        memo[(area_id, d)] = result
        return result

    def dates_of(area_id: int) -> set[date]:
        out = set(own_dates.get(area_id, ()))
        for k in children.get(area_id, []):
            out |= dates_of(k)
        return out

    series: dict[int, Series] = {}
    for area_id in involved:
        area = index.by_id[area_id]
        points = [p for d in sorted(dates_of(area_id)) if (p := point(area_id, d)) is not None]
        if not points:
            continue
        parent = index.by_id.get(area.parent_id) if area.parent_id is not None else None
        s = Series(area.code, area.name, area.level, parent.code if parent else None, metric, area.population,
                   (population_as_of or {}).get(area_id))
        s.points = points
        _derive(s, goal)
        series[area_id] = s
    ordered = _tree_order(index, series)
    disagreements = _disagreements(index, series, stored, children, point, metric)
    return Summary(metric, goal, ordered, disagreements)


def _derive(s: Series, goal: Goal | None) -> None:
    previous: Point | None = None
    for p in s.points:
        p.rate = p.value / s.population if s.population else None
        if goal and p.rate is not None:
            p.progress = p.rate / goal.share
        if previous is not None:
            p.change, p.days = p.value - previous.value, (p.as_of - previous.as_of).days
        previous = p
    if goal is None or not s.population:
        return
    s.target = goal.share * s.population
    last = s.points[-1]
    s.reached = last.value >= s.target
    if len(s.points) >= 2:
        before = s.points[-2]
        s.projected = project((before.as_of, before.value), (last.as_of, last.value), s.target)
    if goal.by is not None:
        if s.reached:
            s.on_track = True
        elif s.projected is not None:
            s.on_track = s.projected <= goal.by
        elif len(s.points) >= 2:
            s.on_track = False     # not growing


def _tree_order(index: AreaIndex, series: dict[int, Series]) -> list[Series]:
    """Parents before their children; siblings by their latest rate (else figure), highest first."""
    def key(area_id: int) -> tuple[bool, float, int, str]:
        s = series[area_id]
        rate = s.latest.rate
        return (rate is None, -(rate or 0.0), -s.latest.value, s.area)

    out: list[Series] = []

    def visit(area_id: int) -> None:
        out.append(series[area_id])
        kids = [a.id for a in index.children(area_id) if a.id in series]
        for k in sorted(kids, key=key):
            visit(k)

    roots = [a for a in series if index.by_id[a].parent_id not in series]
    for r in sorted(roots, key=key):
        visit(r)
    return out


def _level_word(index: AreaIndex, ids: list[int]) -> str:
    """The level of the areas ``ids`` as a note names it ("district", or "child" when they differ),
    translatable as the report's notes say it."""
    from loa.report import _level_word as word  # loa.report imports this module

    levels = {index.by_id[i].level for i in ids}
    return word(levels.pop() if len(levels) == 1 else "")


class _Figure(Text):
    """A decimal figure in a note, written with ``digits`` decimals the language's way (6.35 / 6,35)."""

    def __new__(cls, value: float, digits: int) -> Self:
        self = super().__new__(cls, "{value}", value=f"{value:.{digits}f}")  # said by in_language, not the catalog
        self.value, self.digits = value, digits
        return self

    def __reduce__(self) -> Any:
        return _Figure, (self.value, self.digits)

    def in_language(self, language: Any) -> str:
        return str(self) if language is None else language.number(self.value, self.digits)


def _sign(value: float) -> str:
    return "+" if value >= 0 else "-"


def _disagreements(index: AreaIndex, series: dict[int, Series], stored: dict[tuple[int, date], dict[str, Any]],
                   children: dict[int, list[int]], point: Any, metric: str) -> list[Disagreement]:
    out: list[Disagreement] = []
    for area_id, s in series.items():
        kids = children.get(area_id, [])
        # populations: the parent's own figure against its children's
        pops = [index.by_id[k].population for k in kids]
        if s.population is not None and kids and all(p is not None for p in pops):
            summed = sum(p for p in pops if p is not None)
            if summed != s.population:
                out.append(Disagreement(
                    s.code, s.area, metric, None, "population", s.population, summed,
                    Text("{parent}: population given as {given:n}, but its {count} {level} areas add up to {summed:n} "
                         "(difference {sign}{difference:n}); shares here use each area's own figure",
                         parent=s.area, given=s.population, count=len(kids), level=_level_word(index, kids),
                         summed=summed, sign=_sign(s.population - summed), difference=abs(s.population - summed))))
        for p in s.points:
            row = stored.get((area_id, p.as_of))
            if row is None:
                continue
            when = p.as_of.isoformat()
            # a stated total against the sum of the children
            if p.stated is not None and p.children is not None and p.stated != p.value:
                rest = (Text(", {value:n} with the {unallocated:n} counted in none of them", value=p.value,
                             unallocated=p.unallocated) if p.unallocated else "")
                out.append(Disagreement(
                    s.code, s.area, metric, p.as_of, "total", p.stated, p.value,
                    Text("{area}: {metric} on {when} stated as {stated:n}, but its {count} {level} areas add up to "
                         "{children:n}{rest} (difference {sign}{difference:n}); {value:n} is used",
                         area=s.area, metric=metric, when=when, stated=p.stated, count=len(kids),
                         level=_level_word(index, kids), children=p.children, rest=rest,
                         sign=_sign(p.stated - p.value), difference=abs(p.stated - p.value), value=p.value)))
            # a stated change against the children's stated changes, or against the series
            if p.stated_change is not None and p.change_since is not None:
                since = p.change_since
                kid_rows = [stored.get((k, p.as_of)) for k in kids]
                found: int | None = None
                what: Text | None = None
                if kids and all(r and r.get("stated_change") is not None and r.get("change_since") == since
                                for r in kid_rows):
                    found = sum(r["stated_change"] for r in kid_rows if r)
                    what = Text("its {count} {level} areas' changes add up to {found:n}", count=len(kids),
                                level=_level_word(index, kids), found=found)
                elif (before := point(area_id, since)) is not None and not before.implied:
                    found = p.value - before.value
                    what = Text("the figures say {value:n} - {before:n} = {sign}{found:n}", value=p.value,
                                before=before.value, sign=_sign(found), found=abs(found))
                if found is not None and found != p.stated_change:
                    out.append(Disagreement(
                        s.code, s.area, metric, p.as_of, "change", p.stated_change, found,
                        Text("{area}: {metric} change from {since} to {when} stated as {stated_sign}{stated:n}, "
                             "but {what} (difference {sign}{difference:n})", area=s.area, metric=metric,
                             since=since.isoformat(), when=when, stated_sign=_sign(p.stated_change),
                             stated=abs(p.stated_change), what=what, sign=_sign(p.stated_change - found),
                             difference=abs(p.stated_change - found))))
            # a printed rate against the count over the population
            if p.stated_rate is not None and p.rate is not None:
                printed = float(p.stated_rate)
                decimals = len(p.stated_rate.partition(".")[2])
                computed = 100 * p.rate
                if abs(computed - printed) > 0.5 * 10 ** -decimals + 1e-9:
                    out.append(Disagreement(
                        s.code, s.area, metric, p.as_of, "rate", p.stated_rate, computed,
                        Text("{area}: rate on {when} printed as {printed}%, but {value:n} / {population:n} = "
                             "{computed}%", area=s.area, when=when, printed=_Figure(printed, decimals),
                             value=p.value, population=s.population, computed=_Figure(computed, decimals + 1))))
    order = {s.code: i for i, s in enumerate(_tree_order(index, series))}
    kinds = ("total", "change", "population", "rate")
    out.sort(key=lambda d: (kinds.index(d.kind), order.get(d.code, 0), d.as_of or date.min))
    return out


__all__ = ["Disagreement", "Point", "Series", "Summary", "compute", "project", "summarize"]
