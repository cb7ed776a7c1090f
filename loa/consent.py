"""Consent per subscriber and purpose: recorded with its source, time and evidence, withdrawn
by a refusal.

Decree 91/2020 allows advertising messages only to people who agreed to receive them, and the
Law on Personal Data Protection (91/2025/QH15) says silence is not consent.  So an advertising
campaign plans only subscribers with a current ``advertising`` consent (:func:`suppressions`);
the others are suppressed with the reason ``no_consent``.  A consent is current until it is
withdrawn: a refusal ("TC", "STOP", a gateway's STOP answer) withdraws every purpose at once
(:func:`withdraw_all`, called from :func:`loa.policy.opt_out`).  A new grant adds a row, so the
history of what a person said stays.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection, Engine

from loa import db
from loa.errors import LoaError, Text
from loa.importer import (
    Late,
    RowError,
    _fit,
    _header_error,
    _missing,
    parse_bool,
    parse_time,
    phone_cell,
)

PURPOSES = ("public_interest", "advertising")
S, K = db.subscribers, db.consents


def current(purpose: str) -> Any:
    """A subquery of the subscribers with a current consent for ``purpose``."""
    return select(K.c.subscriber_id).where(K.c.purpose == purpose, K.c.withdrawn_at.is_(None))


def suppressions(campaign: Any) -> list[tuple[Any, str]]:
    """The personal-data suppressions of planning, as (condition on ``subscribers``, reason):
    a subject whose processing is restricted (or who was erased) is never planned, and an
    advertising campaign needs a current advertising consent."""
    whens: list[tuple[Any, str]] = [(S.c.restricted_at.is_not(None), "restricted")]
    if campaign.advertising:
        # NOT IN a subquery: built once per statement on both databases (a hashed subplan on
        # PostgreSQL), where a correlated NOT EXISTS in the CASE would be probed per subscriber
        whens.append((S.c.id.not_in(current("advertising")), "no_consent"))
    return whens


def check_purpose(column: str, value: str) -> str:
    purpose = value.strip().lower()
    if purpose not in PURPOSES:
        raise RowError(column, Text("unknown purpose {value!r}: one of {purposes}", value=value,
                                     purposes=", ".join(PURPOSES)))
    return purpose


def record(conn: Connection, subscriber_id: int, purpose: str, given_at: datetime, source: str, evidence: str,
           *, granted: bool = True) -> bool:
    """Record a consent given (a new row) or withdrawn (the current one closed); True if it changed
    anything (the same consent imported twice changes nothing)."""
    now = db.utcnow()
    if not granted:
        return conn.execute(update(K).where(K.c.subscriber_id == subscriber_id, K.c.purpose == purpose,
                                            K.c.withdrawn_at.is_(None), K.c.given_at <= given_at)
                            .values(withdrawn_at=given_at, withdrawn_source=source[:64])).rowcount > 0
    return conn.execute(db.insert_for(conn, K).values(
        subscriber_id=subscriber_id, purpose=purpose, given_at=given_at, source=source[:64], evidence=evidence,
        created_at=now,
    ).on_conflict_do_nothing().execution_options(preserve_rowcount=True)).rowcount > 0


def withdraw_all(conn: Connection, phone: str, at: datetime, source: str) -> int:
    """A refusal withdraws every current consent of the number's subscriber."""
    sid = select(S.c.id).where(S.c.phone == phone).scalar_subquery()
    return conn.execute(update(K).where(K.c.subscriber_id == sid, K.c.withdrawn_at.is_(None))
                        .values(withdrawn_at=at, withdrawn_source=source[:64])).rowcount


def of(conn: Connection, subscriber_id: int) -> list[dict[str, Any]]:
    rows = conn.execute(select(K).where(K.c.subscriber_id == subscriber_id).order_by(K.c.given_at, K.c.id)).all()
    return [{"purpose": r.purpose, "given_at": r.given_at, "source": r.source, "evidence": r.evidence,
             "withdrawn_at": r.withdrawn_at, "withdrawn_source": r.withdrawn_source,
             "current": r.withdrawn_at is None} for r in rows]


_UNKNOWN = Text("no subscriber has this phone; import subscribers first")
_ERASED = re.compile(r"erased on (?P<day>\d{4}-\d{2}-\d{2}) at the person's request: "
                     r"only a consent given after that brings the number back")


def readmit_reason(problem: str) -> str:
    """Why loa.subjects.readmit refused a number, translatable where it is one of its sentences."""
    if problem == str(_UNKNOWN):
        return _UNKNOWN
    if m := _ERASED.fullmatch(problem):
        return Text("erased on {day} at the person's request: only a consent given after that "
                    "brings the number back", day=m["day"])
    return problem


class ConsentsHandler:
    """``loa import consents FILE``: phone, purpose, time[, granted, source, evidence].

    ``granted`` no (or "withdrawn") records a withdrawal.  A number loa does not hold is
    rejected; so is an erased one, unless the row gives a new consent after its erasure,
    which brings the number back (loa.subjects.readmit) with this consent and nothing else.
    """

    kind = "consents"
    required = ("phone", "purpose", "time")
    expected = "phone,purpose,time[,granted,source,evidence]"

    def __init__(self, engine: Engine, path: Path, tz: Any, config: Any = None) -> None:
        self.path, self.tz, self.config = path, tz, config

    def check_header(self, header: Sequence[str]) -> None:
        if missing := _missing(header, self.required):
            raise _header_error(str(self.path), self.kind, header, missing, self.expected)

    def prepare(self, row: Mapping[str, str]) -> dict[str, Any]:
        phone = phone_cell(row)
        purpose = check_purpose("purpose", row.get("purpose", ""))
        at = parse_time("time", row.get("time", ""), self.tz)
        if at > db.utcnow():
            raise RowError("time", Text("in the future: {text!r}", text=row.get("time", "").strip()))
        granted_text = row.get("granted", "").strip()
        granted = True if not granted_text else (False if granted_text.lower() == "withdrawn"
                                                 else parse_bool("granted", granted_text))
        return {"phone": phone, "purpose": purpose, "at": at, "granted": granted,
                "source": _fit("source", row.get("source", "").strip() or self.path.name, 64),
                "evidence": _fit("evidence", " ".join(row.get("evidence", "").split()), 1000)}

    def write(self, conn: Connection, records: list[dict[str, Any]]) -> tuple[int, list[Late]]:
        from loa import subjects

        ids = dict(conn.execute(select(S.c.phone, S.c.id).where(S.c.phone.in_({r["phone"] for r in records}))).all())
        late: list[Late] = []
        written = 0
        for r in records:
            sid = ids.get(r["phone"])
            if sid is None:
                problem, sid = subjects.readmit(conn, self.config, r["phone"], r["at"] if r["granted"] else None)
                if problem:
                    late.append((r, "phone", readmit_reason(problem)))
                    continue
                ids[r["phone"]] = sid
            record(conn, sid, r["purpose"], r["at"], r["source"], r["evidence"], granted=r["granted"])
            written += 1
        return written, late

    def count(self, conn: Connection) -> int:
        return conn.scalar(select(func.count()).select_from(K)) or 0

    def finish(self, conn: Connection) -> None:
        pass


def audience_warnings(engine: Engine, config: Any, campaigns: Mapping[str, Any]) -> list[str]:
    """``loa campaigns validate``: an advertising campaign none of whose audience has an
    advertising consent would send nothing."""
    from loa.plan import preview_counts

    warnings = []
    for campaign in campaigns.values():
        if not campaign.advertising or campaign.trigger == "arrival":
            continue
        try:
            states, reasons = preview_counts(engine, config, campaign)
        except LoaError:   # a segment that does not compile: validate itself reports it
            continue
        if reasons.get("no_consent") and not (states.get("planned") or states.get("held_out")):
            warnings.append(f"{campaign.path}: advertising campaign {campaign.name}: none of the "
                            f"{sum(states.values()):,} subscribers of its audience has an advertising consent; "
                            "all would be suppressed (no_consent): import their consents "
                            "(`loa import consents FILE`)")
    return warnings
