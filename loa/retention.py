"""Retention: personal data is kept only as long as it serves ([retention] in the configuration).

- arrivals (where and when a tourist arrived: location data) are deleted after
  ``arrivals_days``;
- the rendered text of each message is cleared ``message_texts_days`` after it was sent;
- a subscriber with no message, event, arrival, consent or import for ``ledger_numbers_days``
  keeps only the keyed hash of the number (loa.subjects.pseudonymise): reports still count
  them, nobody can tell who they were, and the number may be imported again as new.

The elected scheduler purges once a day (scheduler.py); ``loa purge --dry-run`` says what
would go.  Each purge that removes anything is written to the audit log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, func, select, update
from sqlalchemy.engine import Engine

from loa import audit, db
from loa.config import Config

log = logging.getLogger("loa.retention")
S, O, E, A, K = db.subscribers, db.outbox, db.events, db.arrivals, db.consents
BATCH = 1000


@dataclass
class Purge:
    arrivals: int = 0
    message_texts: int = 0
    numbers: int = 0
    numbers_skipped: str | None = None   # why the numbers were not hashed (no key)

    def as_dict(self) -> dict[str, Any]:
        return {"arrivals": self.arrivals, "message_texts": self.message_texts, "numbers": self.numbers,
                "numbers_skipped": self.numbers_skipped}


def _inactive(cutoff: datetime) -> Any:
    """Subscribers nothing has happened to since ``cutoff``, still holding a number."""
    def recent(table: Any, column: Any) -> Any:
        return exists().where(table.c.subscriber_id == S.c.id, column >= cutoff)

    return and_(~S.c.phone.startswith("#"), S.c.updated_at < cutoff,
                ~recent(O, func.coalesce(O.c.updated_at, O.c.due_at)), ~recent(E, E.c.occurred_at),
                ~recent(A, A.c.arrived_at), ~recent(K, func.coalesce(K.c.withdrawn_at, K.c.given_at)),
                ~exists().where(O.c.subscriber_id == S.c.id, O.c.state.in_(("planned", "deferred", "claimed",
                                                                            "sending", "unknown"))))


def purge(engine: Engine, config: Config, *, dry_run: bool = False, actor: str = "",
          now: datetime | None = None, key: bytes | None = None) -> Purge:
    """Apply the retention periods (or, ``dry_run``, count what they would remove)."""
    from loa.subjects import compact, pseudonym, pseudonymise

    now = now or db.utcnow()
    keep = config.retention
    arrivals = A.c.arrived_at < now - timedelta(days=keep.arrivals_days)
    texts = and_(O.c.text.is_not(None), func.coalesce(O.c.sent_at, O.c.updated_at) < now - timedelta(
        days=keep.message_texts_days))
    stale = _inactive(now - timedelta(days=keep.ledger_numbers_days))
    result = Purge()
    if key is None:
        result.numbers_skipped = "$LOA_SUBJECT_KEY is not set: numbers are hashed with it"
    if dry_run:
        with engine.connect() as conn:
            result.arrivals = conn.scalar(select(func.count()).select_from(A).where(arrivals)) or 0
            result.message_texts = conn.scalar(select(func.count()).select_from(O).where(texts)) or 0
            result.numbers = conn.scalar(select(func.count()).select_from(S).where(stale)) or 0
        return result
    with engine.begin() as conn:
        result.arrivals = conn.execute(delete(A).where(arrivals)).rowcount
        result.message_texts = conn.execute(update(O).where(texts).values(text=None)).rowcount
    while key is not None:
        with engine.begin() as conn:
            rows = conn.execute(select(S.c.id, S.c.phone).where(stale).order_by(S.c.id).limit(BATCH)).all()
            for sid, phone in rows:
                pseudonymise(conn, sid, phone, pseudonym(key, phone), now, erased=False)
        result.numbers += len(rows)
        if len(rows) < BATCH:
            break
    if result.arrivals or result.message_texts or result.numbers:
        audit.record_now(engine, actor or audit.cli_actor(), "retention.purge", "retention", "",
                         after=result.as_dict(), reason=_periods(config))
        compact(engine)
    return result


def _periods(config: Config) -> str:
    keep = config.retention
    return (f"arrivals {keep.arrivals_days} d, message texts {keep.message_texts_days} d, "
            f"numbers {keep.ledger_numbers_days} d")


def daily(engine: Engine, config: Config) -> None:
    """The elected scheduler's daily purge: what can go without the key goes even without it;
    and, on a partitioned outbox (loa.partitions), the next month's partition opened ahead."""
    from loa import partitions
    from loa.subjects import subject_key

    try:
        if opened := partitions.open_ahead(engine):
            log.info("outbox partition(s) opened: %s", ", ".join(opened))
    except Exception:   # the purge still runs; tomorrow's tries again, and the month is a month ahead
        log.exception("opening the next month's outbox partition failed")

    try:
        result = purge(engine, config, actor="scheduler:retention", key=subject_key(required=False))
    except Exception:   # a failed purge must not stop the scheduler; tomorrow's tries again
        log.exception("retention purge failed")
        return
    if result.numbers_skipped:
        log.error("retention: numbers not hashed: %s", result.numbers_skipped)
    log.info("retention purge: %d arrival(s), %d message text(s), %d number(s)", result.arrivals,
             result.message_texts, result.numbers)


__all__ = ["Purge", "daily", "purge"]
