"""``/api/v1``: a person's data over HTTP, as ``loa subjects``, ``loa import consents`` and
``loa messages export`` do it on the command line.

- ``POST /subjects/export`` everything loa holds about a number (``subjects.read``);
- ``POST /subjects/restrict`` stop (or, ``lift``, allow again) all processing of it but its
  storage (``subjects.restrict``);
- ``POST /subjects/erase`` erase it but the number's keyed hash (``subjects.erase``);
- ``POST /consents`` record one consent given or withdrawn (``consents.record``);
- ``POST /consents/import`` a CSV of consents, in the background like ``/imports/{kind}``;
- ``GET /messages/export`` the ledger, numbers masked for roles that may not read subscribers.

The number travels in the body, never in the path, so it stays out of access logs.  Each
action takes its reason and is audited with the key as its actor (loa.subjects); the export is
a POST because it is recorded.  Routes, principal and error shape are those of
:mod:`loa.web.api`, on a router of its own.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from loa import audit, auth, consent, db, ledger
from loa import subjects as subj
from loa.errors import InputError
from loa.phones import mask
from loa.web.api import (
    _IMPORT_BODY,
    PREFIX,
    ApiError,
    Body,
    ImportOut,
    Note,
    Reason,
    Who,
    no_nul,
    route,
    start_import,
)
from loa.web.errors import reply

router = APIRouter(prefix=PREFIX, tags=["api v1"], dependencies=[Depends(no_nul)])
PhoneText = Field(min_length=1, max_length=40, description="The number, in any form loa reads (0912..., +84912...)")


class SubjectIn(Body):
    phone: str = PhoneText
    reason: Reason = Field(description="Why: the person's request and its reference (kept in the audit log)")


class RestrictIn(SubjectIn):
    lift: bool = Field(False, description="Lift the restriction: the number may be processed again")


class ConsentIn(Body):
    phone: str = PhoneText
    purpose: Literal["public_interest", "advertising"]
    time: datetime | None = Field(None, description="When it was given (or withdrawn); default now")
    granted: bool = Field(True, description="false records a withdrawal")
    source: str = Field("api", min_length=1, max_length=64, description='Where: "hotel check-in form", ...')
    evidence: Note = Field("", description='What shows it: "SMS reply DK to 8xxx at ..."')


class RestrictOut(BaseModel):
    phone: str = Field(description="The number, masked")
    restricted: bool
    cancelled: int = Field(description="Messages not yet handed to a gateway, cancelled")


class EraseOut(BaseModel):
    erased: bool
    cancelled: int = Field(description="Messages not yet handed to a gateway, cancelled first")
    consents: int
    arrivals: int
    messages: int = Field(description="Messages kept for reports, without their text")
    events: int


class ConsentOut(BaseModel):
    changed: bool = Field(description="false when the same consent was already recorded")


def _engine(request: Request) -> Any:
    return request.app.state.web.engine


def _phone(phone: str) -> str:
    try:
        return subj.parse(phone)
    except InputError as exc:
        raise ApiError(422, str(exc), "phone") from None


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value.isoformat() if isinstance(value, datetime) else value


@route("POST", "/subjects/export", "Everything loa holds about a number: subscriber, attributes, consents, "
       "messages with their texts and states, events, arrivals, opt-outs and clicks (audited)", 403, 404,
       on=router, response_model=dict[str, Any])
def export_subject(request: Request, body: SubjectIn, who: Who) -> dict[str, Any]:
    auth.require(who, "subjects.read")
    return _plain(subj.export(_engine(request), _phone(body.phone), who, body.reason))  # type: ignore[no-any-return]


@route("POST", "/subjects/restrict", "Stop all processing of a number but its storage (or lift that); its "
       "queued messages are cancelled (audited)", 403, 404, on=router, response_model=RestrictOut)
def restrict_subject(request: Request, body: RestrictIn, who: Who) -> dict[str, Any]:
    auth.require(who, "subjects.restrict")
    done = subj.restrict(_engine(request), _phone(body.phone), who, body.reason, lift=body.lift)
    return {"phone": mask(done["phone"]), "restricted": done["restricted"], "cancelled": done["cancelled"]}


@route("POST", "/subjects/erase", "Erase everything loa holds about a number but its keyed hash; 409 while "
       "messages to it are with a gateway, or without $LOA_SUBJECT_KEY (audited)", 403, 404, 409, on=router,
       response_model=EraseOut)
async def erase_subject(request: Request, body: SubjectIn, who: Who) -> dict[str, Any]:
    auth.require(who, "subjects.erase")
    e164 = _phone(body.phone)
    return await run_in_threadpool(subj.erase, _engine(request), e164, who, body.reason)  # type: ignore[no-any-return]


@route("POST", "/consents", "Record a consent a person gave, or withdrew, for a purpose (audited)", 403, 404,
       on=router, response_model=ConsentOut)
def record_consent(request: Request, body: ConsentIn, who: Who) -> dict[str, Any]:
    auth.require(who, "consents.record")
    e164 = _phone(body.phone)
    now = db.utcnow()
    at = now if body.time is None else (body.time if body.time.tzinfo else body.time.replace(tzinfo=UTC))
    if at > now:
        raise ApiError(422, f"time is in the future: {at.isoformat()}", "time")
    S = db.subscribers
    with db.transaction(_engine(request)) as conn:
        sid = conn.scalar(select(S.c.id).where(S.c.phone == e164))
        if sid is None:
            problem, sid = subj.readmit(conn, None, e164, at if body.granted else None)
            if problem:
                raise ApiError(404, f"{mask(e164)}: {problem}", "phone")
        area = conn.scalar(select(db.areas.c.path).join(S, S.c.area_id == db.areas.c.id).where(S.c.id == sid))
        auth.require(who, "consents.record", area or auth.EVERYWHERE)
        changed = consent.record(conn, sid, body.purpose, at, body.source, body.evidence, granted=body.granted)
        if changed:
            audit.record(conn, who.actor, "consents.record", "subject", subj.object_id(e164),
                         after={"purpose": body.purpose, "granted": body.granted, "source": body.source},
                         reason=body.evidence or body.source)
    return {"changed": changed}


@route("POST", "/consents/import", "Import a CSV of consents (phone,purpose,time[,granted,source,evidence]) "
       "in the background, as /imports/{kind}", 403, 413, on=router, status_code=202, response_model=ImportOut,
       openapi_extra=_IMPORT_BODY)
async def import_consents(request: Request, who: Who) -> Any:
    return await start_import(request, "consents", who)  # type: ignore[arg-type]


@route("GET", "/messages/export", "The ledger, one row per message of the key's area; numbers in full only for "
       "roles that may read subscribers (operator and above)", 403, 404, on=router,
       responses={200: {"content": {"application/json": {}, "text/csv": {"schema": {"type": "string"}}}}})
def export_messages(request: Request, who: Who, campaign: str | None = Query(None, max_length=200),
                    run: int | None = Query(None, ge=1, le=2**31 - 1),
                    format: Literal["json", "csv"] = "json") -> Response:
    rows = ledger.rows(_engine(request), who, campaign, run)
    media = "application/json" if format == "json" else "text/csv; charset=utf-8"
    return reply(200, ledger.render(rows, format), media)
