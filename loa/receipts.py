"""Delivery receipts and recipient responses, applied to the ledger.

States only move forward: a receipt matches a message in ``sending``, ``sent``
or ``unknown`` and never touches one that is already final, so a late or
repeated receipt changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from sqlalchemy import and_, bindparam, func, literal, or_, select, tuple_, update
from sqlalchemy.engine import Connection

from loa import db
from loa.importer import record_events
from providers.base import DeliveryReceipt, Response

O = db.outbox
RECEIVABLE = ("sending", "sent", "unknown")
KEY = re.compile(r"^loa-(\d+)-(\d+)(?:-[a-z]+)?$")   # a fallback channel's message has a suffix


def lock_rows(conn: Connection, where: Any) -> None:
    """Lock the outbox rows matching ``where`` in id order (PostgreSQL; SQLite locks the
    whole database).  Every transaction that updates rows other workers may be updating
    too (a sender recording its window, a receipt poller, a lease renewal, a recovery)
    takes its locks this way first: taken in whatever order each UPDATE scans, two of
    them deadlock, and PostgreSQL aborts one, killing that worker."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(O.c.id).where(where).order_by(O.c.id).with_for_update())


def parse_key(key: str | None) -> tuple[int, int] | None:
    m = KEY.match(key or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def apply_receipts(conn: Connection, gateway: str, receipts: Iterable[DeliveryReceipt]) -> int:
    """Apply receipts; return how many moved a message forward."""
    now = db.utcnow()
    by_id: list[dict[str, object]] = []
    by_key: list[dict[str, object]] = []
    for r in receipts:
        if r.status not in ("delivered", "undelivered"):
            continue
        params = {"b_state": r.status, "b_at": r.at or now, "b_now": now,
                  "b_code": r.error_code if r.status == "undelivered" else None,
                  "b_text": (r.error_text or "")[:500] or None if r.status == "undelivered" else None}
        pair = parse_key(r.key)
        if r.provider_id:
            # the key too: the receipt can come before the sender has written the provider id
            by_id.append(params | {"b_pid": r.provider_id, "b_run": pair[0] if pair else None,
                                   "b_sub": pair[1] if pair else None})
        elif pair is not None:
            by_key.append(params | {"b_run": pair[0], "b_sub": pair[1]})
    moved = 0
    if conn.dialect.name == "postgresql" and (by_id or by_key):
        pairs = [(p["b_run"], p["b_sub"]) for p in by_id + by_key if p["b_run"] is not None]
        pids = [p["b_pid"] for p in by_id]
        lock_rows(conn, and_(O.c.state.in_(RECEIVABLE), or_(
            and_(O.c.gateway == gateway, O.c.provider_id.in_(pids)) if pids else literal(False),
            tuple_(O.c.run_id, O.c.subscriber_id).in_(pairs) if pairs else literal(False))))
    if by_id:
        not_yet_recorded = and_(O.c.provider_id.is_(None), O.c.run_id == bindparam("b_run"),
                                O.c.subscriber_id == bindparam("b_sub"))
        moved += _executemany(
            conn, and_(O.c.gateway == gateway, or_(O.c.provider_id == bindparam("b_pid"), not_yet_recorded)), by_id,
            # a message whose send left no id (a crash, a timeout: unknown) learns it from its receipt
            provider_id=func.coalesce(O.c.provider_id, bindparam("b_pid", type_=O.c.provider_id.type)),
        )
    if by_key:
        moved += _executemany(
            conn, and_(O.c.run_id == bindparam("b_run"), O.c.subscriber_id == bindparam("b_sub")), by_key
        )
    return moved


def _executemany(conn: Connection, where: object, params: list[dict[str, object]], **extra: Any) -> int:
    # plain bound values, not an expanding IN: executemany cannot expand
    stmt = update(O).where(where, O.c.state.in_([literal(s) for s in RECEIVABLE])).values(
        state=bindparam("b_state"), delivered_at=bindparam("b_at", type_=db.UTCDateTime),
        updated_at=bindparam("b_now", type_=db.UTCDateTime),
        error_code=func.coalesce(bindparam("b_code", type_=O.c.error_code.type), O.c.error_code),
        error_text=func.coalesce(bindparam("b_text", type_=O.c.error_text.type), O.c.error_text),
        **extra,
    )
    result = conn.execute(stmt, params)
    return max(result.rowcount, 0)


def apply_responses(conn: Connection, gateway: str, responses: Iterable[Response]) -> int:
    records = []
    for r in responses:
        outbox_id = None
        if (pair := parse_key(r.key)) is not None:
            outbox_id = conn.scalar(select(O.c.id).where(O.c.run_id == pair[0], O.c.subscriber_id == pair[1]))
        records.append({"phone": r.phone, "type": r.type, "occurred_at": r.at,
                        "source": r.source or gateway, "outbox_id": outbox_id, "attributes": None})
    return record_events(conn, records) if records else 0
