"""Areas are data: provinces, districts, communes, whatever the data set carries.

Names are matched ignoring case and diacritics ("Son La" finds "Sơn La"), and
without the administrative prefix ("Mai Son" finds "Huyện Mai Sơn").  A name that
matches several areas is refused with them all, never guessed ("son la": the
province or its city?), unless it is written as one of them is stored.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date
from functools import lru_cache

from sqlalchemy import select, update
from sqlalchemy.engine import Connection
from unidecode import unidecode

from loa import db

ADMIN_PREFIXES = (
    "thanh pho", "thi xa", "thi tran", "tinh", "huyen", "quan", "xa", "phuong", "tp.", "tp",
)
_NON_WORD = re.compile(r"[^0-9a-z]+")


@lru_cache(maxsize=65536)   # imports resolve the same few area names millions of times
def fold(name: str) -> str:
    """Case- and diacritic-insensitive key: "Đắk R'lấp" -> "dak rlap"."""
    ascii_ = unidecode(unicodedata.normalize("NFC", name)).casefold().replace("'", "")
    return _NON_WORD.sub(" ", ascii_).strip()


@lru_cache(maxsize=65536)
def short_fold(name: str) -> str:
    key = fold(name)
    for p in _FOLDED_PREFIXES:
        if key.startswith(p + " "):
            return key[len(p) + 1:]
    return key


_FOLDED_PREFIXES = tuple(fold(p) for p in ADMIN_PREFIXES)
_SAME_PREFIX = {"tp": "thanh pho"}   # "TP. Sơn La" is "Thành phố Sơn La"


def _prefix(name: str) -> str:
    """The administrative prefix of a name, folded ("Thành phố Sơn La" -> "thanh pho"), or ""."""
    key, short = fold(name), short_fold(name)
    prefix = key[: len(key) - len(short)].strip() if short != key else ""
    return _SAME_PREFIX.get(prefix, prefix)


class AreaLookupError(LookupError):
    pass


def candidate_list(areas: Sequence[Area], limit: int = 5) -> str:
    """ "Sơn La (14); Thành phố Sơn La (116)": the areas a name may mean, for an error."""
    text = "; ".join(f"{a.name} ({a.code})" for a in areas[:limit])
    return text + (f" and {len(areas) - limit} more" if len(areas) > limit else "")


@dataclass(frozen=True, slots=True)
class Area:
    id: int
    code: str
    name: str
    parent_id: int | None
    level: str
    path: str
    population: int | None


class AreaIndex:
    """All areas in memory (tens of thousands at most), for lookups during import."""

    def __init__(self, rows: list[Area]) -> None:
        self.by_id: dict[int, Area] = {}
        self.by_code: dict[str, Area] = {}
        self._by_name: dict[str, list[Area]] = defaultdict(list)
        self._by_short: dict[str, list[Area]] = defaultdict(list)
        for area in rows:
            self.add(area)

    @classmethod
    def load(cls, conn: Connection) -> AreaIndex:
        t = db.areas
        rows = conn.execute(
            select(t.c.id, t.c.code, t.c.name, t.c.parent_id, t.c.level, t.c.path, t.c.population)
        )
        return cls([Area(*row) for row in rows])

    def add(self, area: Area) -> None:
        old = self.by_code.get(area.code.casefold())
        if old is not None:
            self._by_name[fold(old.name)].remove(old)
            self._by_short[short_fold(old.name)].remove(old)
        self.by_id[area.id] = area
        self.by_code[area.code.casefold()] = area
        self._by_name[fold(area.name)].append(area)
        self._by_short[short_fold(area.name)].append(area)

    def __len__(self) -> int:
        return len(self.by_code)

    def resolve(self, text: str) -> Area:
        """An area by code or by name; raise AreaLookupError saying why not (see :meth:`matches`)."""
        text = " ".join(text.split())
        if not text:
            raise AreaLookupError("empty area")
        hit = self.by_code.get(text.casefold())
        if hit is not None:
            return hit
        candidates = self.matches(text)
        if len(candidates) > 1:
            raise AreaLookupError(f"area {text!r} is ambiguous: {candidate_list(candidates)}; use the code, "
                                  "or the name as written with its diacritics")
        if candidates:
            return candidates[0]
        raise AreaLookupError(f"no area with code or name {text!r}")

    def matches(self, text: str, among: Collection[int] | None = None) -> list[Area]:
        """Every area that the name ``text`` may mean (of those with an id in ``among``, if given).

        A name is never guessed: it means each area it matches in full or without its
        prefix ("son la" is both the province "Sơn La" and "Thành phố Sơn La").  Only
        a name written as stored, diacritics included ("Sơn La"), picks one of them.
        A prefix that is given picks the areas stored with the same one ("TP Sơn La"
        is "Thành phố Sơn La").
        """
        text = " ".join(text.split())
        key, short = fold(text), short_fold(text)
        candidates = list(self._by_name.get(key, ()))
        if key == short:             # no prefix given: the name with any prefix
            candidates += [a for a in self._by_short.get(short, ()) if a not in candidates]
        elif not candidates:         # a prefix that no stored name has in full: those with the same one
            prefix, others = _prefix(text), self._by_short.get(short, [])
            candidates = [a for a in others if _prefix(a.name) == prefix] or list(others)
        if among is not None:
            candidates = [a for a in candidates if a.id in among]
        if len(candidates) > 1:
            written = unicodedata.normalize("NFC", text).casefold()
            exact = [a for a in candidates if unicodedata.normalize("NFC", a.name).casefold() == written]
            if len(exact) == 1:
                return exact
        return candidates

    def children(self, area_id: int) -> list[Area]:
        return [a for a in self.by_id.values() if a.parent_id == area_id]


def recompute_paths(conn: Connection) -> None:
    """Materialise each area's ancestry as "/root/.../self/" for subtree queries."""
    t = db.areas
    parents = dict(conn.execute(select(t.c.id, t.c.parent_id)).all())
    current = dict(conn.execute(select(t.c.id, t.c.path)).all())
    paths: dict[int, str] = {}

    def path_of(area_id: int) -> str:
        chain: list[int] = []
        node: int | None = area_id
        while node is not None and node not in paths:
            if node in chain:
                raise AreaLookupError(f"areas form a cycle through id {node}")
            chain.append(node)
            node = parents.get(node)
        prefix = paths[node] if node is not None else "/"
        for member in reversed(chain):
            prefix = f"{prefix}{member}/"
            paths[member] = prefix
        return paths[area_id]

    changed = [{"b_id": i, "b_path": path_of(i)} for i in parents if path_of(i) != current.get(i)]
    if changed:
        from sqlalchemy import bindparam

        conn.execute(
            update(t).where(t.c.id == bindparam("b_id")).values(path=bindparam("b_path")),
            changed,
        )


# -- populations --------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Population:
    value: int
    as_of: date | None       # None: a figure imported without a date


def populations_on(conn: Connection, day: date) -> dict[int, Population]:
    """Each area's population in force on ``day``: its latest figure dated on or before it.

    An area whose figures are all dated after ``day`` gets its earliest (the nearest there
    is; its date says so), and an area with only an undated figure gets that one.
    """
    h, t = db.area_populations, db.areas
    out: dict[int, Population] = {}
    rows = conn.execute(select(h.c.area_id, h.c.as_of, h.c.population).order_by(h.c.area_id, h.c.as_of))
    for area_id, as_of, population in rows:
        if area_id not in out or as_of <= day:
            out[area_id] = Population(population, as_of)
    undated = conn.execute(select(t.c.id, t.c.population).where(t.c.population.is_not(None)))
    for area_id, population in undated:
        out.setdefault(area_id, Population(population, None))
    return out
