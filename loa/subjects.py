"""A person's rights over their data (Law 91/2025/QH15): see it, have it erased, restrict it.

A subject is one phone number.  :func:`export` gathers everything loa holds about it;
:func:`erase` removes it; :func:`restrict` stops all processing except storage.  Each of them
is written to the audit log with the actor and the reason, under the number's keyed hash,
never the number itself (the audit log is append-only: a number in it could not be erased).

Erasure keeps the subscriber's row, with its area, and the ledger's and events' rows that
reports count, so a past report shows the same totals afterwards; everything that identifies
the person goes: the number becomes its keyed hash (HMAC-SHA256 with ``$LOA_SUBJECT_KEY``,
:func:`pseudonym`), name, attributes, consents, arrivals, message texts, reply texts and
gateway ids are removed.  The hash keeps an opt-out in force and stops a later import of the
number until the person consents again (:func:`readmit`).  On SQLite, ``secure_delete``
(loa.db) zeroes what is deleted and the write-ahead log is truncated afterwards, so the file
holds no trace of the number, free pages included.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.engine import Connection, Engine

from loa import audit, consent, db
from loa.errors import InputError, LoaError, NotFound, SecretMissing
from loa.logs import mask_phones
from loa.phones import PhoneError, mask, normalize
from loa.receipts import lock_rows

log = logging.getLogger("loa.subjects")
KEY_ENV = "LOA_SUBJECT_KEY"
MIN_KEY = 16
S, O, E, A, K, D = db.subscribers, db.outbox, db.events, db.arrivals, db.consents, db.dnc
QUEUED = ("planned", "deferred", "claimed")          # not yet handed to a gateway: cancelled first
# the reason of a message so cancelled (in English as stored; loa.reasons says it in the console's language)
RESTRICTED = "cancelled: processing restricted by {who}: {reason}"
ERASED = "cancelled: erasure requested by {who}: {reason}"
IN_FLIGHT = ("sending", "unknown")                   # with a gateway: an erasure waits for them


def subject_key(required: bool = True) -> bytes | None:
    """The key of the numbers' keyed hash, from ``$LOA_SUBJECT_KEY``."""
    value = os.environ.get(KEY_ENV, "")
    if len(value) >= MIN_KEY:
        return value.encode("utf-8")
    if not required:
        return None
    why = "is not set" if not value else f"is shorter than {MIN_KEY} characters"
    raise SecretMissing(f"${KEY_ENV} {why}: erasure and retention keep a keyed hash of each number; set it to a "
                        "long random secret (e.g. `openssl rand -hex 32`) and keep it")


def pseudonym(key: bytes, e164: str) -> str:
    """What an erased number is kept as: "#" and 60 bits of its HMAC-SHA256 (fits the phone
    column, and cannot be mistaken for a number)."""
    return "#" + hmac.new(key, e164.encode("ascii"), hashlib.sha256).hexdigest()[:15]


def parse(phone: str) -> str:
    try:
        return normalize(phone).e164
    except PhoneError as exc:
        raise InputError(f"phone {mask(phone.strip()) if phone.strip() else repr(phone)}: {exc}") from None


def find(conn: Connection, phone: str) -> Any:
    """The subscriber row of ``phone`` (any format), or one clear error: malformed, erased, unknown."""
    e164 = parse(phone)
    row = conn.execute(select(S).where(S.c.phone == e164)).one_or_none()
    if row is not None:
        return row
    key = subject_key(required=False)
    if key is not None:
        gone = conn.execute(select(S.c.erased_at).where(S.c.phone == pseudonym(key, e164),
                                                        S.c.erased_at.is_not(None))).first()
        if gone is not None:
            raise NotFound(f"{mask(e164)}: erased on {gone.erased_at:%Y-%m-%d} at the person's request; "
                           "loa holds nothing about this number but its keyed hash")
    raise NotFound(f"no subscriber has the number {mask(e164)}")


def _role(who: Any, action: str) -> None:
    """The role is checked before the number is looked up: whether loa holds a number is itself
    personal data, which a role below the action's does not learn."""
    from loa import auth

    auth.require(who, action)


def authorize(conn: Connection, who: Any, row: Any, action: str) -> None:
    """``who`` (a loa.auth.Principal) may take ``action`` on the subject, which lies in its area."""
    from loa import auth

    path = conn.scalar(select(db.areas.c.path).where(db.areas.c.id == row.area_id)) if row.area_id else None
    auth.require(who, action, path or auth.EVERYWHERE)


def _reason(reason: str) -> str:
    text = " ".join((reason or "").split())
    if not text:
        raise InputError("--reason is empty: say why (the person's request, its reference)")
    return mask_phones(text)[:1000]


def object_id(e164: str) -> str:
    """The audit entry's object: the number's keyed hash if there is a key, else its masked form."""
    key = subject_key(required=False)
    return pseudonym(key, e164) if key else mask(e164)


# -- see -------------------------------------------------------------------------------------

def export(engine: Engine, phone: str, who: Any, reason: str, *, action: str = "export") -> dict[str, Any]:
    """Everything loa holds about ``phone`` (audited as ``subjects.show`` or ``subjects.export``)."""
    _role(who, "subjects.read")
    why = _reason(reason)
    with engine.begin() as conn:
        row = find(conn, phone)
        authorize(conn, who, row, "subjects.read")
        data = _gather(conn, row)
        audit.record(conn, who.actor, f"subjects.{action}", "subject", object_id(row.phone), reason=why,
                     after={"messages": len(data["messages"]), "events": len(data["events"]),
                            "arrivals": len(data["arrivals"])})
    return data


def _gather(conn: Connection, row: Any) -> dict[str, Any]:
    areas, R, C = db.areas, db.runs, db.campaigns
    area = conn.execute(select(areas.c.code, areas.c.name).where(areas.c.id == row.area_id)).first()
    subscriber = {"phone": row.phone, "carrier": row.carrier, "name": row.name, "language": row.language,
                  "area": {"code": area.code, "name": area.name} if area else None,
                  "attributes": row.attributes or {}, "opted_out_at": row.opted_out_at,
                  "restricted_at": row.restricted_at, "created_at": row.created_at, "updated_at": row.updated_at}
    messages = [dict(m._mapping) for m in conn.execute(
        select(C.c.name.label("campaign"), O.c.run_id.label("run"), O.c.state, O.c.reason, O.c.channel, O.c.gateway,
               O.c.due_at, O.c.sent_at, O.c.delivered_at, O.c.parts, O.c.cost_vnd, O.c.error_code, O.c.error_text,
               O.c.text)
        .join(R, R.c.id == O.c.run_id).join(C, C.c.id == R.c.campaign_id)
        .where(O.c.subscriber_id == row.id).order_by(O.c.id))]
    events = [dict(e._mapping) for e in conn.execute(
        select(E.c.type, E.c.occurred_at, E.c.source, E.c.attributes).where(E.c.subscriber_id == row.id)
        .order_by(E.c.occurred_at, E.c.id))]
    arrivals = [dict(a._mapping) for a in conn.execute(
        select(areas.c.code.label("area"), areas.c.name.label("area_name"), A.c.arrived_at, A.c.source)
        .join(areas, areas.c.id == A.c.area_id).where(A.c.subscriber_id == row.id).order_by(A.c.arrived_at))]
    opt_outs = [dict(d._mapping) for d in conn.execute(select(D.c.source, D.c.added_at).where(D.c.phone == row.phone))]
    return {"subscriber": subscriber, "consents": consent.of(conn, row.id), "messages": messages,
            "events": [e for e in events if e["type"] != "clicked"], "arrivals": arrivals, "opt_outs": opt_outs,
            "clicks": [{"at": e["occurred_at"], "source": e["source"]} for e in events if e["type"] == "clicked"]}


# -- restrict --------------------------------------------------------------------------------

def _cancel_queued(conn: Connection, sid: int, text: str, now: datetime) -> int:
    queued = and_(O.c.subscriber_id == sid, O.c.state.in_(QUEUED))
    lock_rows(conn, queued)    # in id order, as the workers lock them
    return conn.execute(update(O).where(queued).values(state="cancelled", reason=text[:200], worker=None,
                                                       lease_until=None, updated_at=now)).rowcount


def restrict(engine: Engine, phone: str, who: Any, reason: str, *, lift: bool = False) -> dict[str, Any]:
    """Stop every processing of ``phone`` but its storage (or, ``lift``, allow it again): no run
    plans it, no greeting, and its messages not yet handed to a gateway are cancelled."""
    _role(who, "subjects.restrict")
    why = _reason(reason)
    now = db.utcnow()
    actor = who.actor
    with engine.begin() as conn:
        row = find(conn, phone)
        authorize(conn, who, row, "subjects.restrict")
        cancelled = 0
        if lift:
            conn.execute(update(S).where(S.c.id == row.id).values(restricted_at=None, updated_at=now))
        else:
            conn.execute(update(S).where(S.c.id == row.id).values(restricted_at=func.coalesce(S.c.restricted_at, now)))
            cancelled = _cancel_queued(conn, row.id, RESTRICTED.format(who=actor, reason=why), now)
        after = {"restricted": not lift, "cancelled": cancelled}
        audit.record(conn, actor, "subjects.lift" if lift else "subjects.restrict", "subject", object_id(row.phone),
                     before={"restricted": row.restricted_at is not None}, after=after, reason=why)
    return {"phone": row.phone, "restricted": not lift, "cancelled": cancelled,
            "was_restricted": row.restricted_at is not None}


# -- erase -----------------------------------------------------------------------------------

class InFlight(LoaError):
    """Messages to the number are with a gateway: an erasure waits until they are settled."""


def erase(engine: Engine, phone: str, who: Any, reason: str) -> dict[str, Any]:
    """Erase everything loa holds about ``phone`` but the keyed hash of the number.

    Messages not yet handed to a gateway are cancelled first, with the reason; if any is
    still with a gateway (sending, or of unknown outcome) nothing is erased and
    :class:`InFlight` says so (the cancellations stay).
    """
    _role(who, "subjects.erase")
    key = subject_key()
    assert key is not None
    why = _reason(reason)
    now = db.utcnow()
    actor = who.actor
    with engine.begin() as conn:
        row = find(conn, phone)
        authorize(conn, who, row, "subjects.erase")
        hashed = pseudonym(key, row.phone)
        cancelled = _cancel_queued(conn, row.id, ERASED.format(who=actor, reason=why), now)
        busy = conn.scalar(select(func.count()).select_from(O).where(O.c.subscriber_id == row.id,
                                                                    O.c.state.in_(IN_FLIGHT))) or 0
        if busy:
            audit.record(conn, actor, "subjects.erase", "subject", hashed, reason=why,
                         after={"erased": False, "cancelled": cancelled, "in_flight": busy})
    if busy:
        raise InFlight(f"{mask(row.phone)}: {busy} message(s) are with a gateway (sending, or of unknown outcome): "
                       f"nothing erased ({cancelled} queued message(s) cancelled); erase again once they are "
                       "settled (`loa messages reconcile` asks the gateways)")
    with engine.begin() as conn:
        counts = pseudonymise(conn, row.id, row.phone, hashed, now, erased=True)
        audit.record(conn, actor, "subjects.erase", "subject", hashed, reason=why,
                     after={"erased": True, "cancelled": cancelled, **counts})
    compact(engine)
    return {"erased": True, "cancelled": cancelled, **counts}


def pseudonymise(conn: Connection, sid: int, e164: str, hashed: str, now: datetime, *, erased: bool) -> dict[str, int]:
    """Keep of subscriber ``sid`` only what reports count (its row with its area, its messages'
    states, its events' types and times), the number replaced by ``hashed``.

    ``erased`` (a person's request) also keeps a later import from bringing the number back
    without a new consent; retention (loa.retention) leaves the number free to come back."""
    listed = conn.execute(select(D.c.source, D.c.added_at).where(D.c.phone == e164)).first() if erased else None
    if listed is not None:   # the refusal stays in force under the hash (retention keeps the list as it is)
        conn.execute(delete(D).where(D.c.phone == e164))
        conn.execute(db.insert_for(conn, D).values(phone=hashed, source=listed.source, added_at=listed.added_at)
                     .on_conflict_do_nothing())
    conn.execute(update(S).where(S.c.id == sid).values(
        phone=hashed, carrier="", name="", language="vi", attributes={}, updated_at=now,
        restricted_at=func.coalesce(S.c.restricted_at, now), erased_at=now if erased else None))
    counts = {
        "consents": conn.execute(delete(K).where(K.c.subscriber_id == sid)).rowcount,
        "arrivals": conn.execute(delete(A).where(A.c.subscriber_id == sid)).rowcount,
        "messages": conn.execute(update(O).where(O.c.subscriber_id == sid).values(
            text=None, error_text=None, provider_id=None)).rowcount,
        "events": conn.execute(update(E).where(E.c.subscriber_id == sid, E.c.attributes.is_not(None))
                               .values(attributes=None)).rowcount,
    }
    conn.execute(update(db.test_sends).where(db.test_sends.c.phone == e164).values(phone=hashed))
    _scrub_rejects(conn, e164)
    return counts


def _scrub_rejects(conn: Connection, e164: str) -> None:
    """An import's rejects (kept for the API) copy rows as they were: drop the number's lines."""
    J = db.import_jobs
    national = e164[3:]         # the digits every format of the number holds: 912345678
    for job_id, text in conn.execute(select(J.c.id, J.c.rejects).where(J.c.rejects.contains(national))).all():
        kept = "".join(line for line in text.splitlines(keepends=True) if national not in line)
        conn.execute(update(J).where(J.c.id == job_id).values(rejects=kept))


def compact(engine: Engine) -> None:
    """SQLite: copy the write-ahead log into the file and empty it, so that the old versions
    of erased rows (the log keeps whole pages) leave the disk with it."""
    if engine.dialect.name != "sqlite":
        return
    with engine.connect() as conn:   # outside a transaction, which a checkpoint cannot run in
        raw = conn.connection.dbapi_connection
        assert raw is not None
        busy = raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    if busy and busy[0]:
        log.warning("the write-ahead log could not be emptied now (a reader holds it): the erased rows' old "
                    "pages leave it at the next checkpoint")


def readmit(conn: Connection, config: Any, e164: str, consent_at: datetime | None) -> tuple[str | None, int | None]:
    """A consent for a number loa does not hold: (why it is refused, None) or (None, the new
    subscriber's id).  Only an erased number comes back this way, and only with a consent given
    after its erasure; a refusal recorded before the erasure stays in force."""
    unknown = "no subscriber has this phone; import subscribers first"
    key = subject_key(required=False)
    if key is None:
        return unknown, None
    hashed = pseudonym(key, e164)
    gone = conn.execute(select(S.c.erased_at, S.c.opted_out_at).where(S.c.phone == hashed,
                                                                       S.c.erased_at.is_not(None))).first()
    if gone is None:
        return unknown, None
    if consent_at is None or consent_at <= gone.erased_at:
        return (f"erased on {gone.erased_at:%Y-%m-%d} at the person's request: only a consent given after that "
                "brings the number back"), None
    now = db.utcnow()
    listed = conn.execute(select(D.c.source, D.c.added_at).where(D.c.phone == hashed)).first()
    sid = conn.execute(S.insert().values(
        phone=e164, carrier=normalize(e164).carrier, name="", language="vi", attributes={}, created_at=now,
        updated_at=now, opted_out_at=gone.opted_out_at or (listed.added_at if listed else None),
    ).returning(S.c.id)).scalar_one()
    if listed is not None:
        conn.execute(db.insert_for(conn, D).values(phone=e164, source=listed.source, added_at=listed.added_at)
                     .on_conflict_do_nothing())
    return None, sid


def erased_among(conn: Connection, phones: set[str]) -> dict[str, datetime]:
    """Of numbers loa does not hold, those erased at the person's request, with when."""
    if not phones:
        return {}
    key = subject_key()
    assert key is not None
    hashed = {pseudonym(key, p): p for p in phones}
    rows = conn.execute(select(S.c.phone, S.c.erased_at).where(S.c.phone.in_(list(hashed)),
                                                              S.c.erased_at.is_not(None))).all()
    return {hashed[h]: at for h, at in rows}
