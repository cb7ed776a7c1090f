"""The audit log: who did what, when, to which object, and its state before and after.

Rows are only ever inserted.  Nothing in loa updates or deletes them, and the database
refuses it too (``db.AUDIT_APPEND_ONLY``: triggers on SQLite and PostgreSQL).  A change and
its entry are written in one transaction where the change is loa's own (:func:`record`
takes the change's connection).

Actors are strings: ``user:NAME`` and ``key:PREFIX`` for the API (``loa.auth.Principal``),
and for the command line ``$LOA_ACTOR``, else ``os:`` and the operating system's user.
Entries never carry a secret: callers pass states without password hashes or key secrets
(``loa.auth`` builds them), and :func:`record` refuses keys that look like one.
"""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, or_, select
from sqlalchemy.engine import Connection, Engine

from loa import db
from loa.errors import InputError

T = db.audit_log
_SECRET_KEYS = re.compile(r"password|secret|token|hash", re.IGNORECASE)


def cli_actor() -> str:
    """Who runs a command: ``$LOA_ACTOR``, else ``os:`` and the operating system's user name."""
    named = os.environ.get("LOA_ACTOR", "").strip()
    if named:
        return named[:100]
    try:
        return f"os:{getpass.getuser()}"[:100]
    except (KeyError, OSError):   # no user name (a container without /etc/passwd entry)
        return f"os:uid-{os.getuid()}"


def _checked(state: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if state is None:
        return None
    leaked = sorted(k for k in state if _SECRET_KEYS.search(k))
    if leaked:
        raise ValueError(f"audit entries never carry secrets: {', '.join(leaked)}")
    return dict(state)


def record(conn: Connection, actor: str, action: str, object_type: str = "", object_id: object = "", *,
           before: Mapping[str, Any] | None = None, after: Mapping[str, Any] | None = None,
           reason: str = "") -> int:
    """Append one entry in the caller's transaction; its id."""
    row = conn.execute(insert(T).values(
        at=db.utcnow(), actor=actor[:100], action=action, object_type=object_type,
        object_id=str(object_id)[:200], before=_checked(before), after=_checked(after), reason=reason,
    ).returning(T.c.id)).scalar_one()
    return int(row)


def lifecycle_entry(actor: str, action: str, reason: str | None) -> Any:
    """The ``record`` hook of :mod:`loa.lifecycle`'s changes: the entry ``campaigns.ACTION``
    of the campaign or run, by ``actor``, in the change's transaction."""

    def entry(conn: Connection, change: Any) -> None:
        record(conn, actor, f"campaigns.{action}", change.kind, change.name, before={"state": change.before},
               after={"state": change.after, "messages": change.messages}, reason=reason or "")

    return entry


def record_now(engine: Engine, actor: str, action: str, object_type: str = "", object_id: object = "",
               **kw: Any) -> int:
    """:func:`record` in a transaction of its own: for changes made by several transactions
    (an import, a run's planning), recorded once they are done."""
    with engine.begin() as conn:
        return record(conn, actor, action, object_type, object_id, **kw)


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    at: datetime
    actor: str
    action: str
    object_type: str
    object_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at.isoformat(), "actor": self.actor, "action": self.action,
                "object_type": self.object_type, "object_id": self.object_id, "before": self.before,
                "after": self.after, "reason": self.reason}

    @property
    def object(self) -> str:
        return f"{self.object_type}:{self.object_id}" if self.object_id else self.object_type

    def change(self) -> str:
        """What changed, compactly: ``role: operator → approver``; a new or removed state in full."""
        before, after = self.before or {}, self.after or {}
        if not before or not after:
            state = after or before
            return ", ".join(f"{k}={_short(v)}" for k, v in state.items())
        keys = [k for k in {**before, **after} if before.get(k) != after.get(k)]
        return ", ".join(f"{k}: {_short(before.get(k))} → {_short(after.get(k))}" for k in keys)


def _short(value: Any) -> str:
    text = "–" if value is None else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


_RELATIVE = re.compile(r"^(\d+)\s*([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(value: str, tz: Any) -> datetime:
    """``--since``: a relative age (``30m``, ``2h``, ``7d``, ``1w``) or a date or time in ISO 8601
    (local time, the configuration's time zone, unless it says otherwise)."""
    from loa.importer import RowError, parse_time

    found = _RELATIVE.match(value.strip().lower())
    if found:
        return db.utcnow() - timedelta(**{_UNITS[found[2]]: int(found[1])})
    try:
        return parse_time("--since", value, tz)
    except RowError as exc:
        raise InputError(f"--since: {exc.reason}; or an age such as 30m, 2h, 7d") from None


def query(engine: Engine, *, actor: str | None = None, action: str | None = None, since: datetime | None = None,
          object: str | None = None, limit: int | None = None) -> list[Entry]:
    """Entries, oldest first (the newest ``limit`` of them).

    ``action`` matches itself and its sub-actions (``users`` finds ``users.add``);
    ``object`` is ``TYPE`` or ``TYPE:ID`` (``user:ana``, ``gateway:esms``).
    """
    stmt = select(T)
    if actor:
        stmt = stmt.where(T.c.actor == actor)
    if action:
        stmt = stmt.where(or_(T.c.action == action, T.c.action.startswith(action + ".", autoescape=True)))
    if since is not None:
        stmt = stmt.where(T.c.at >= since)
    if object:
        kind, _, ident = object.partition(":")
        stmt = stmt.where(T.c.object_type == kind)
        if ident:
            stmt = stmt.where(T.c.object_id == ident)
    stmt = stmt.order_by(T.c.id.desc())
    if limit is not None:
        stmt = stmt.limit(limit)
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    return [Entry(r.id, r.at, r.actor, r.action, r.object_type, r.object_id, r.before, r.after, r.reason)
            for r in reversed(rows)]
