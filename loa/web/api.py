"""``/api/v1``: the control plane over HTTP, for programs and the console.

Every route but ``POST /api/v1/login`` takes an API key (``Authorization: Bearer
loa_...``, :func:`loa.auth.authenticate_key`) and checks its role and area with
:func:`loa.auth.require` before it reads or changes anything.  A campaign lies where its
runs' segments lie (:class:`Places`): a key bound to an area sees only the campaigns wholly
inside its subtree, and the report of one only for the areas of that subtree.

Errors are the one JSON shape of :mod:`loa.web.errors`: 401 no key, or a wrong or revoked
one; 403 a role below the action's (checked before anything is looked up), or an area
outside the key's subtree; 404 nothing of that name (for a key bound to an area, a campaign
or run that does not exist is the same 403 as one outside its subtree: it learns nothing
of other areas); 409 an action the object's state does not allow (nothing changed); 422 a body
or parameter that is wrong, with its field; 429 too many failed sign-ins.

Every change is made in one transaction with its audit entry, the key as its actor
(``key:PREFIX``).  A route is a few lines over the engine's functions (``loa.lifecycle``,
``loa.auth``, ``loa.imports``, ``loa.report``), which the CLI calls too; a new one is
added with :func:`route`.
"""

from __future__ import annotations

import shutil
import tomllib
from collections.abc import Callable, Sequence
from datetime import date, datetime
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from pydantic import BaseModel, Field, StringConstraints, field_validator
from sqlalchemy import func, select
from sqlalchemy.engine import Connection
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.responses import Response

from loa import audit, auth, db, imports, lifecycle
from loa.areas import AreaIndex, AreaLookupError
from loa.errors import InputError, LoaError, NotFound, Text, say
from loa.i18n import Language, language
from loa.web.errors import error_response, language_of, reply, responses

PREFIX = "/api/v1"
API_KEY = "apiKey"
MAX_IMPORT = 200_000_000      # bytes of one uploaded CSV
ROLES = Literal["viewer", "operator", "approver", "admin"]
ImportKind = Literal["areas", "subscribers", "events", "dnc", "arrivals", "snapshots"]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)]
Note = Annotated[str, StringConstraints(strip_whitespace=True, max_length=1000)]
Id = Annotated[int, Path(ge=1, le=2**31 - 1, description="The id")]   # an INTEGER column on every database
C, R, O, V = db.campaigns, db.runs, db.outbox, db.campaign_versions


class ApiError(Exception):
    """An error answered in the one JSON shape.

    ``message``: a sentence (a :class:`Text` is said in the client's language), or the engine's
    error itself; ``fix`` rewrites the sentence once said (a CLI option into the field's name)."""

    def __init__(self, status: int, message: str | LoaError, field: str | None = None,
                 headers: dict[str, str] | None = None,
                 fix: Callable[[str, Language], str] | None = None) -> None:
        super().__init__(str(message))
        self.status, self.message, self.field, self.headers, self.fix = status, message, field, headers, fix

    def said(self, lang: Language) -> str:
        said = self.message.localized(lang) if isinstance(self.message, LoaError) else say(self.message, lang)
        return self.fix(said, lang) if self.fix else said


def client_language(request: Request) -> Language:
    """The language of the client's error messages: Vietnamese if its ``Accept-Language`` ranks
    it first, English otherwise."""
    return language(language_of(request.headers.get("accept-language")))


def _status_of(exc: LoaError) -> int:
    if isinstance(exc, auth.LockedOut):
        return 429
    if isinstance(exc, auth.AuthError):
        return 401
    if isinstance(exc, auth.Forbidden):
        return 403
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, InputError):
        return 422
    return 409      # LifecycleError, and whatever else the object's state refuses: nothing was changed


def install(app: FastAPI) -> None:
    """Add the routes and the handlers that answer their errors."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc.status, exc.said(client_language(request)), exc.field, headers=exc.headers)

    @app.exception_handler(LoaError)
    async def loa_error(request: Request, exc: LoaError) -> Response:
        status = _status_of(exc)
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, auth.LockedOut) else None
        if status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return error_response(status, exc.localized(client_language(request)).splitlines()[0],
                              getattr(exc, "field", None), headers=headers)

    from loa.web import subjects  # a person's data: its own module, on its own router

    app.include_router(router)
    app.include_router(subjects.router)


# -- who asks --------------------------------------------------------------------------

def principal(request: Request) -> auth.Principal:
    """The principal of the request's API key, or 401."""
    scheme, _, given = (request.headers.get("authorization") or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ApiError(401, Text("an API key is needed: Authorization: Bearer loa_..."), "Authorization",
                       {"WWW-Authenticate": "Bearer"})
    try:
        return auth.authenticate_key(request.app.state.web.engine, given.strip())
    except auth.AuthError as exc:
        raise ApiError(401, exc, "Authorization", {"WWW-Authenticate": "Bearer"}) from None


def no_nul(request: Request) -> None:
    """A NUL character reaches no query: PostgreSQL refuses it in text, and no name holds one."""
    for name, value in [*request.path_params.items(), *request.query_params.multi_items()]:
        if "\x00" in str(value):
            raise ApiError(422, f"{name} contains a NUL character", name)


Who = Annotated[auth.Principal, Depends(principal)]
router = APIRouter(prefix=PREFIX, tags=["api v1"], dependencies=[Depends(no_nul)])


class Body(BaseModel):
    """A request body: no text in it holds a NUL character."""

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("contains a NUL character")
        return value


def route(method: str, path: str, summary: str, *errors: int, public: bool = False, on: APIRouter | None = None,
          **kw: Any) -> Callable[..., Any]:
    """A route of the API (of ``on``, another module's router): its summary, its errors in the one
    shape, and its security scheme."""
    statuses = (*errors, 422) if public else (401, *errors, 422)
    extra = kw.pop("openapi_extra", {}) | {"security": [] if public else [{API_KEY: []}]}
    return (on or router).api_route(path, methods=[method], summary=summary, openapi_extra=extra,
                            responses=responses(*sorted(set(statuses))) | kw.pop("responses", {}), **kw)


def _web(request: Request) -> Any:
    return request.app.state.web


# -- where a campaign lies ---------------------------------------------------------------

def places_of_definitions(index: AreaIndex, definitions: Sequence[Any]) -> list[Any]:
    """The areas that campaign definitions' segments name; the whole country if one of them
    names none, or names one that no longer resolves."""
    places: dict[str, Any] = {}
    for definition in definitions:
        names = ((definition or {}).get("segment") or {}).get("areas") or []
        if not names:
            return [auth.EVERYWHERE]
        for name in names:
            try:
                area = index.resolve(str(name))
            except AreaLookupError:
                return [auth.EVERYWHERE]
            places[area.path] = area
    return list(places.values()) or [auth.EVERYWHERE]


class Places:
    """The areas campaigns lie in: the segment areas of their current version and of their
    runs' definitions; the whole country for a segment without areas, or one that no longer
    resolves (only an unbound key reaches it)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.index = AreaIndex.load(conn)

    def of(self, campaign_id: int, run_id: int | None = None) -> list[Any]:
        q = select(R.c.definition).where(R.c.campaign_id == campaign_id)
        if run_id is not None:
            q = q.where(R.c.id == run_id)
        definitions = list(self.conn.scalars(q))
        if run_id is None:          # a campaign applied but not yet run lies where its version says
            current = self.conn.scalar(
                select(V.c.toml).join(C, (C.c.id == V.c.campaign_id) & (C.c.current_version == V.c.version))
                .where(C.c.id == campaign_id))
            if current is not None:
                try:
                    definitions.append(tomllib.loads(current))
                except tomllib.TOMLDecodeError:     # stored versions were validated when applied
                    return [auth.EVERYWHERE]
        return places_of_definitions(self.index, definitions)

    @staticmethod
    def codes(places: Sequence[Any]) -> list[str]:
        return [p.code for p in places if not isinstance(p, str)]


def _campaign(conn: Connection, name: str) -> Any:
    row = conn.execute(select(C).where(C.c.name == name)).one_or_none()
    if row is None:
        raise NotFound(Text("no campaign named {name!r} (a campaign is known once it has been run)", name=name))
    return row


def _unseen(who: auth.Principal, action: str, what: str) -> auth.Forbidden:
    """The refusal of an area-bound principal for ``what`` outside its subtree, or unknown: one
    answer for both, so that a key learns nothing of the campaigns of other areas."""
    return auth.Forbidden(Text("{action}: {what} is unknown or outside the area of {who}", action=action, what=what,
                               who=who.describe()), "area")


def _check_campaign(conn: Connection, who: auth.Principal, action: str, name: str) -> tuple[Any, list[Any]]:
    """Campaign ``name`` and where it lies, if ``who`` may take ``action`` on it: the role is
    checked first (403), then whether it exists (404; for an area-bound principal, 403 as for
    a campaign outside its subtree), then its areas (403)."""
    auth.require(who, action)
    row = conn.execute(select(C).where(C.c.name == name)).one_or_none()
    if row is None and who.area_path is not None:
        raise _unseen(who, action, Text("campaign {name!r}", name=name))
    row = row if row is not None else _campaign(conn, name)
    places = Places(conn).of(row.id)
    if not who.can(action, places):
        raise _unseen(who, action, Text("campaign {name!r}", name=name))
    return row, places


def _check_run(conn: Connection, who: auth.Principal, action: str, run_id: int) -> Any:
    """Run ``run_id``, if ``who`` may take ``action`` on it (checked as :func:`_check_campaign`)."""
    auth.require(who, action)
    row = conn.execute(select(R, C.c.name.label("campaign")).join(C, C.c.id == R.c.campaign_id)
                       .where(R.c.id == run_id)).one_or_none()
    if row is None or not who.can(action, Places(conn).of(row.campaign_id)):
        if who.area_path is not None:
            raise _unseen(who, action, Text("run {run}", run=run_id))
        if row is None:
            raise NotFound(Text("no run {run}", run=run_id))
        auth.require(who, action, Places(conn).of(row.campaign_id))
    return row


# -- the shapes of answers -----------------------------------------------------------------

class StateOut(BaseModel):
    state: str = Field(description="The lifecycle state")
    state_by: str | None = Field(description="Who moved it there (user:NAME, key:PREFIX, or a CLI actor)")
    state_at: datetime | None
    state_reason: str | None


class RunOut(StateOut):
    id: int
    campaign: str
    scheduled_for: datetime
    trigger: str
    status: str = Field(description="Planning: planning, planned, done, failed, missed")
    created_at: datetime
    planned_at: datetime | None
    finished_at: datetime | None
    states: dict[str, int] = Field(description="Messages by ledger state")
    outcomes: dict[str, int] = Field(description="Messages by outcome, as `loa status` and `loa report` count them")


class CampaignSummary(StateOut):
    name: str
    description: str
    advertising: bool
    areas: list[str] = Field(description="Codes of the areas its segments cover; empty: the whole country")
    created_at: datetime
    updated_at: datetime


class CampaignOut(CampaignSummary):
    runs: list[RunOut] = Field(description="Its runs, the latest first (at most 100)")


class ChangeOut(BaseModel):
    kind: Literal["campaign", "run"]
    name: str
    before: str
    after: str
    messages: int = Field(description="Messages held back (pause), released (resume) or cancelled (cancel)")
    by: str
    reason: str | None


class StopOut(BaseModel):
    paused: list[ChangeOut]


class RunStatus(BaseModel):
    run: int
    state: str
    status: str
    scheduled_for: datetime
    states: dict[str, int]
    outcomes: dict[str, int]


class StatusOut(BaseModel):
    campaign: str
    state: str
    states: dict[str, int]
    outcomes: dict[str, int]
    runs: list[RunStatus]


class ReasonIn(Body):
    reason: Reason = Field(description="Why: kept with the campaign or run, on its messages and in the audit log")


class OptionalReasonIn(Body):
    reason: Note = ""


class UserOut(BaseModel):
    name: str
    role: str
    area: str | None
    area_name: str | None
    created_at: datetime
    disabled_at: datetime | None
    last_login_at: datetime | None


class NewUserIn(Body):
    name: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    password: Annotated[str, StringConstraints(min_length=auth.MIN_PASSWORD, max_length=1000)]
    role: ROLES
    area: Annotated[str, StringConstraints(min_length=1, max_length=32)] | None = Field(
        None, description="Bind the user to this area's subtree (its code)")


class RoleIn(Body):
    role: ROLES
    reason: Note = ""


class KeyOut(BaseModel):
    id: int
    prefix: str
    name: str
    role: str
    area: str | None
    created_by: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class NewKeyIn(Body):
    role: ROLES
    area: Annotated[str, StringConstraints(min_length=1, max_length=32)] | None = Field(
        None, description="Bind the key to this area's subtree (its code)")
    name: Annotated[str, StringConstraints(max_length=100)] = ""


class NewKeyOut(BaseModel):
    key: KeyOut
    secret: str = Field(description="The whole key, shown this once: loa keeps only its hash")


class EntryOut(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    object_type: str
    object_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    reason: str


class AuditOut(BaseModel):
    entries: list[EntryOut] = Field(description="Oldest first: the newest `limit` entries that match")


class GatewayOut(BaseModel):
    name: str
    type: str
    rate: float | None = Field(description="SMS parts per second; null: the gateway's default")
    paused: bool
    paused_reason: str | None
    paused_since: datetime | None


class GatewayResumed(BaseModel):
    name: str
    was_paused_for: str


class LoginIn(Body):
    name: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=1000)]


class PrincipalOut(BaseModel):
    kind: Literal["user", "key"]
    name: str
    role: str
    area: str | None
    area_name: str | None


class ImportProgress(BaseModel):
    bytes_done: int
    bytes_total: int
    rows_done: int = Field(description="Rows imported or rejected so far")
    rows_total: int | None = Field(description="Rows in the file (null if it could not be told before reading)")


class ImportCounts(BaseModel):
    imported: int
    new: int
    rejected: int


class ImportOut(BaseModel):
    id: int
    kind: str
    state: Literal["running", "done", "failed", "interrupted"]
    actor: str
    filename: str
    progress: ImportProgress
    counts: ImportCounts
    failure: str | None = Field(description="Why it failed, in the language of the request's Accept-Language "
                                            "(Vietnamese or English; English without it)")
    rejects: bool = Field(description="Whether rows were rejected: GET .../rejects has them")
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


# -- campaigns and runs ---------------------------------------------------------------------

def _states(conn: Connection, where: Any) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {}
    for run_id, state, n in conn.execute(select(O.c.run_id, O.c.state, func.count()).where(where)
                                         .group_by(O.c.run_id, O.c.state)):
        out.setdefault(run_id, {})[state] = n
    return out


def _run_out(row: Any, states: dict[str, int]) -> dict[str, Any]:
    from loa.status import outcomes

    return {"id": row.id, "campaign": row.campaign, "scheduled_for": row.scheduled_for, "trigger": row.trigger,
            "status": row.status, "state": row.state, "state_by": row.state_by, "state_at": row.state_at,
            "state_reason": row.state_reason, "created_at": row.created_at, "planned_at": row.planned_at,
            "finished_at": row.finished_at, "states": states, "outcomes": outcomes(states)}


def _campaign_out(row: Any, places: Sequence[Any]) -> dict[str, Any]:
    return {"name": row.name, "description": row.description, "advertising": row.advertising, "state": row.state,
            "state_by": row.state_by, "state_at": row.state_at, "state_reason": row.state_reason,
            "areas": Places.codes(places), "created_at": row.created_at, "updated_at": row.updated_at}


@route("GET", "/campaigns", "The campaigns in the key's area", response_model=list[CampaignSummary])
def list_campaigns(request: Request, who: Who) -> list[dict[str, Any]]:
    auth.require(who, "campaigns.read")
    with _web(request).engine.connect() as conn:
        places = Places(conn)
        out = []
        for row in conn.execute(select(C).order_by(C.c.name)):
            where = places.of(row.id)
            if who.can("campaigns.read", where):
                out.append(_campaign_out(row, where))
    return out


@route("GET", "/campaigns/{name}", "A campaign: its state, who moved it there, when and why, and its runs",
       403, 404, response_model=CampaignOut)
def get_campaign(request: Request, name: str, who: Who) -> dict[str, Any]:
    with _web(request).engine.connect() as conn:
        row, places = _check_campaign(conn, who, "campaigns.read", name)
        runs = conn.execute(select(R, C.c.name.label("campaign")).join(C, C.c.id == R.c.campaign_id)
                            .where(R.c.campaign_id == row.id).order_by(R.c.id.desc()).limit(100)).all()
        states = _states(conn, O.c.run_id.in_([r.id for r in runs]))
    return _campaign_out(row, places) | {"runs": [_run_out(r, states.get(r.id, {})) for r in runs]}


@route("GET", "/campaigns/{name}/status", "A campaign's messages by state and outcome, per run, as `loa status`",
       403, 404, response_model=StatusOut)
def campaign_status(request: Request, name: str, who: Who) -> dict[str, Any]:
    from loa.status import outcomes

    with _web(request).engine.connect() as conn:
        row, _ = _check_campaign(conn, who, "status.read", name)
        runs = conn.execute(select(R).where(R.c.campaign_id == row.id).order_by(R.c.id.desc())).all()
        states = _states(conn, O.c.run_id.in_(select(R.c.id).where(R.c.campaign_id == row.id)))
    total: dict[str, int] = {}
    for counts in states.values():
        for state, n in counts.items():
            total[state] = total.get(state, 0) + n
    return {"campaign": row.name, "state": row.state, "states": total, "outcomes": outcomes(total),
            "runs": [{"run": r.id, "state": r.state, "status": r.status, "scheduled_for": r.scheduled_for,
                      "states": states.get(r.id, {}), "outcomes": outcomes(states.get(r.id, {}))} for r in runs]}


@route("GET", "/campaigns/{name}/report", "A campaign's report per area, as `loa report`, within the key's area",
       403, 404, response_class=Response, responses={200: {"description": "The report", "content": {
           "application/json": {"schema": {"type": "object"}}, "text/csv": {"schema": {"type": "string"}}}}})
def campaign_report(request: Request, name: str, who: Who,
                    format: Literal["json", "csv"] = Query("json", description="json (default) or csv"),
                    level: str | None = Query(None, description="Area level to roll up to (district, province)"),
                    ) -> Response:
    from loa import report

    web = _web(request)
    with web.engine.connect() as conn:
        _check_campaign(conn, who, "reports.read", name)
        index = AreaIndex.load(conn) if who.area_path is not None else None
    try:
        result = report.for_campaign(web.engine, web.config.campaigns_dir, name, level or None)
    except InputError as exc:
        raise ApiError(422, exc, "level") from None
    if index is not None:
        _scope_report(result, who, index)
    body = report.render(web.engine, result, format, lang=web.config.language)
    return reply(200, body, "application/json" if format == "json" else "text/csv; charset=utf-8")


def _scope_report(result: Any, who: auth.Principal, index: AreaIndex) -> None:
    """Keep the rows of areas inside the key's subtree, and their total."""
    from loa.report import Row

    def inside(code: str) -> bool:
        area = index.by_code.get(code.casefold()) if code else None
        return area is not None and auth.within(who, area.path)

    result.rows = [r for r in result.rows if inside(r.code)]
    total = Row(code="", area="Total", level="")
    for row in result.rows:
        total.add(row)
    total.population = sum(r.population or 0 for r in result.rows) or None
    result.total = total
    if result.whole and not inside(result.whole):
        result.whole = None


def _change_out(change: lifecycle.Change, who: auth.Principal, reason: str | None) -> dict[str, Any]:
    return {"kind": change.kind, "name": change.name, "before": change.before, "after": change.after,
            "messages": change.messages, "by": who.actor, "reason": reason}


def _campaign_action(request: Request, name: str, who: auth.Principal, action: str,
                     reason: str | None) -> dict[str, Any]:
    engine = _web(request).engine
    with engine.connect() as conn:
        _check_campaign(conn, who, f"campaigns.{action}", name)
    change = lifecycle.change_campaign(engine, name, action, who=who.actor, reason=reason,
                                       record=audit.lifecycle_entry(who.actor, action, reason))
    return _change_out(change, who, reason)


def _run_action(request: Request, run_id: Id, who: auth.Principal, action: str, reason: str | None) -> dict[str, Any]:
    engine = _web(request).engine
    with engine.connect() as conn:
        run = _check_run(conn, who, f"runs.{action}", run_id)
    change = lifecycle.change_run(engine, run.campaign, run_id, action, who=who.actor, reason=reason,
                                  record=audit.lifecycle_entry(who.actor, action, reason))
    return _change_out(change, who, reason)


_LIFECYCLE = (403, 404, 409)


@route("POST", "/campaigns/{name}/pause", "Pause an active campaign: no worker sends its messages from now on",
       *_LIFECYCLE, response_model=ChangeOut)
def pause_campaign(request: Request, name: str, body: ReasonIn, who: Who) -> dict[str, Any]:
    return _campaign_action(request, name, who, "pause", body.reason)


@route("POST", "/campaigns/{name}/resume", "Resume a paused campaign", *_LIFECYCLE, response_model=ChangeOut)
def resume_campaign(request: Request, name: str, who: Who, body: OptionalReasonIn | None = None) -> dict[str, Any]:
    return _campaign_action(request, name, who, "resume", (body.reason if body else "") or None)


# -- approval: submit, approve, reject, launch (loa.approval) ---------------------------------

class DecisionIn(Body):
    reason: str | None = Field(None, max_length=500, description="Why: kept in the audit log")
    version: int | None = Field(None, ge=1, le=2**31 - 1,
                                description="The version the decision is about (approve: the one reviewed); "
                                            "refused with 409 if the campaign has moved on")


class DecisionOut(BaseModel):
    campaign: str
    action: str
    before: str
    after: str
    version: int | None
    by: str


class SampleOut(BaseModel):
    who: str = Field(description="Name and masked phone")
    area: str | None
    channel: str
    text: str
    detail: str = Field(description="Encoding and parts (SMS) or the ZNS template")


class ReviewOut(BaseModel):
    campaign: str
    version: int
    state: str
    submitted_by: str | None
    submitted_version: int | None
    approval: str | None = Field(description="Why the policy asks for approval; null if it does not")
    audience: int
    to_send: int
    held_out: int
    suppressed: dict[str, int]
    samples: list[SampleOut]
    errors: list[str]
    estimated_parts: int
    estimated_cost_vnd: float | None = Field(description="At the gateway's prices; null where it has none")


@route("GET", "/campaigns/{name}/review",
       "What an approver sees before approving: the version, its audience, rendered samples, parts and cost",
       403, 404, response_model=ReviewOut)
def review_campaign(request: Request, name: str, who: Who,
                    count: int = Query(3, ge=1, le=100, description="Sample messages to render")) -> dict[str, Any]:
    from loa import approval

    web = _web(request)
    with web.engine.connect() as conn:
        _check_campaign(conn, who, approval.PERMISSION["approve"], name)
    approval.check_reviewer(web.engine, web.config, name, who)     # samples show subscribers' messages
    seen = approval.review(web.engine, web.config, name, count)
    approval.record_review(web.engine, who.actor, seen)
    return {"campaign": seen.campaign, "version": seen.version, "state": seen.state,
            "submitted_by": seen.submitted_by, "submitted_version": seen.submitted_version,
            "approval": seen.approval, "audience": seen.audience, "to_send": seen.to_send,
            "held_out": seen.held_out, "suppressed": seen.suppressed,
            "samples": [{"who": s.who, "area": s.area, "channel": s.channel, "text": s.text, "detail": s.detail}
                        for s in seen.samples],
            "errors": seen.errors, "estimated_parts": seen.estimated_parts,
            "estimated_cost_vnd": seen.estimated_cost}


def _decide(request: Request, name: str, who: auth.Principal, action: str, body: DecisionIn | None) -> dict[str, Any]:
    from loa import approval

    web = _web(request)
    with web.engine.connect() as conn:
        _check_campaign(conn, who, approval.PERMISSION[action], name)
    reason = ((body.reason or "").strip() or None) if body else None
    decision = approval.decide(web.engine, web.config, name, action, who, reason=reason,
                               version=body.version if body else None)
    return {"campaign": decision.campaign, "action": decision.action, "before": decision.before,
            "after": decision.after, "version": decision.version, "by": decision.actor}


@route("POST", "/campaigns/{name}/submit", "Submit the current version for approval (operator)", *_LIFECYCLE,
       response_model=DecisionOut)
def submit_campaign(request: Request, name: str, who: Who, body: DecisionIn | None = None) -> dict[str, Any]:
    return _decide(request, name, who, "submit", body)


@route("POST", "/campaigns/{name}/approve",
       "Approve the submitted version (approver; not the user who submitted it)", *_LIFECYCLE,
       response_model=DecisionOut)
def approve_campaign(request: Request, name: str, who: Who, body: DecisionIn | None = None) -> dict[str, Any]:
    return _decide(request, name, who, "approve", body)


@route("POST", "/campaigns/{name}/reject", "Send a submitted campaign back to draft (approver)", *_LIFECYCLE,
       response_model=DecisionOut)
def reject_campaign(request: Request, name: str, who: Who, body: DecisionIn | None = None) -> dict[str, Any]:
    return _decide(request, name, who, "reject", body)


@route("POST", "/campaigns/{name}/launch", "Make an approved campaign active (approver)", *_LIFECYCLE,
       response_model=DecisionOut)
def launch_campaign(request: Request, name: str, who: Who, body: DecisionIn | None = None) -> dict[str, Any]:
    return _decide(request, name, who, "launch", body)


@route("POST", "/campaigns/{name}/cancel", "Cancel a campaign for good: every unsent message is cancelled",
       *_LIFECYCLE, response_model=ChangeOut)
def cancel_campaign(request: Request, name: str, body: ReasonIn, who: Who) -> dict[str, Any]:
    return _campaign_action(request, name, who, "cancel", body.reason)


@route("GET", "/runs/{run_id}", "A run: its state, who moved it there, and its messages by state", 403, 404,
       response_model=RunOut)
def get_run(request: Request, run_id: Id, who: Who) -> dict[str, Any]:
    with _web(request).engine.connect() as conn:
        run = _check_run(conn, who, "runs.read", run_id)
        states = _states(conn, O.c.run_id == run_id)
    return _run_out(run, states.get(run_id, {}))


@route("POST", "/runs/{run_id}/pause", "Pause one run", *_LIFECYCLE, response_model=ChangeOut)
def pause_run(request: Request, run_id: Id, body: ReasonIn, who: Who) -> dict[str, Any]:
    return _run_action(request, run_id, who, "pause", body.reason)


@route("POST", "/runs/{run_id}/resume", "Resume one paused run", *_LIFECYCLE, response_model=ChangeOut)
def resume_run(request: Request, run_id: Id, who: Who, body: OptionalReasonIn | None = None) -> dict[str, Any]:
    return _run_action(request, run_id, who, "resume", (body.reason if body else "") or None)


@route("POST", "/runs/{run_id}/cancel", "Cancel one run: its unsent messages are cancelled", *_LIFECYCLE,
       response_model=ChangeOut)
def cancel_run(request: Request, run_id: Id, body: ReasonIn, who: Who) -> dict[str, Any]:
    return _run_action(request, run_id, who, "cancel", body.reason)


@route("POST", "/stop", "The emergency brake: pause every active campaign", 403, response_model=StopOut)
def stop(request: Request, body: ReasonIn, who: Who) -> dict[str, Any]:
    auth.require(who, "stop.all")
    changes = lifecycle.stop_all(_web(request).engine, who=who.actor, reason=body.reason,
                                 record=audit.lifecycle_entry(who.actor, "pause", body.reason))
    return {"paused": [_change_out(c, who, body.reason) for c in changes]}


# -- imports -------------------------------------------------------------------------------

_IMPORT_BODY = {"requestBody": {"required": True, "content": {
    "text/csv": {"schema": {"type": "string"}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "The CSV file"}}}}}}}


AsOf = Annotated[date | None, Query(description="The date of the figures (areas, snapshots) for rows that do "
                                                "not give one")]


@route("POST", "/imports/{kind}", "Import a CSV (the body, or the multipart field `file`) in the background",
       403, 413, status_code=202, response_model=ImportOut, openapi_extra=_IMPORT_BODY)
async def start_import(request: Request, kind: ImportKind, who: Who, as_of: AsOf = None) -> Any:
    auth.require(who, "imports.run")
    web = _web(request)
    folder = imports.upload_dir()
    try:
        upload, filename = await _receive(request, folder)
        job = await run_in_threadpool(imports.start, web.engine, web.config, who.actor, kind, upload, filename, as_of)
    except InputError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        upload_path = str(folder / "upload.csv")
        raise ApiError(422, exc, "as_of" if str(exc).startswith("as_of") else "file",
                       fix=lambda said, _: said.replace(upload_path, "the file")) from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return _job_out(request, job)


async def _receive(request: Request, folder: FilePath) -> tuple[FilePath, str]:
    """The uploaded CSV, written to ``folder``, and its name."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_IMPORT:
        raise ApiError(413, f"the file is over {MAX_IMPORT:,} bytes")
    raw = folder / "body"
    size = 0
    with raw.open("wb") as f:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_IMPORT:
                raise ApiError(413, f"the file is over {MAX_IMPORT:,} bytes")
            f.write(chunk)
    upload = folder / "upload.csv"
    media = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if media != "multipart/form-data":
        raw.rename(upload)
        return upload, "upload.csv"

    async def chunks() -> Any:
        with raw.open("rb") as f:
            while block := f.read(1 << 16):
                yield block

    try:
        form = await MultiPartParser(Headers(scope=request.scope), chunks(), max_files=1, max_fields=10).parse()
    except MultiPartException as exc:
        raise ApiError(422, f"not a multipart form: {exc.message}", "file") from None
    part = form.get("file")
    if not isinstance(part, UploadFile):
        raise ApiError(422, "the multipart form has no file field named 'file'", "file")
    with upload.open("wb") as out:
        while block := await part.read(1 << 16):
            out.write(block)
    await form.close()
    raw.unlink()
    return upload, FilePath(part.filename or "upload.csv").name


@route("GET", "/imports/{job_id}", "An import: its progress (bytes and rows done of the total) and counts",
       403, 404, response_model=ImportOut)
def get_import(request: Request, job_id: Id, who: Who) -> dict[str, Any]:
    auth.require(who, "imports.run")
    return _job_out(request, imports.get(_web(request).engine, job_id))


def _job_out(request: Request, job: imports.Job) -> dict[str, Any]:
    """An import job for the client: its ``failure`` said in the client's language (English unless
    its ``Accept-Language`` ranks Vietnamese first); the other fields the same in every language."""
    out = job.as_dict()
    if job.failure is not None:
        out["failure"] = say(job.failure, client_language(request))
    return out


@route("GET", "/imports/{job_id}/rejects", "The rows an import rejected: line, column, reason (in the language of "
       "the Accept-Language header, English without it), then the row",
       403, 404, 409, response_class=Response,
       responses={200: {"description": "The rejects CSV", "content": {"text/csv": {"schema": {"type": "string"}}}}})
def get_rejects(request: Request, job_id: Id, who: Who) -> Response:
    auth.require(who, "imports.run")
    engine = _web(request).engine
    job = imports.get(engine, job_id)
    if job.state == "running":
        raise ApiError(409, Text("import {id} is still running: its rejects come when it is done", id=job_id))
    if job.state == "interrupted":
        raise ApiError(409, Text("import {id} was interrupted (its process stopped): it has no rejects file; "
                                 "import the file again", id=job_id))
    text = imports.rejects(engine, job_id, client_language(request))   # the reasons in the client's language
    if text is None:
        raise ApiError(404, Text("import {id} rejected no row", id=job_id))
    return reply(200, text, "text/csv; charset=utf-8")


# -- users and keys --------------------------------------------------------------------------

def _user_out(u: auth.User) -> dict[str, Any]:
    return {"name": u.name, "role": u.role, "area": u.area_code, "area_name": u.area_name,
            "created_at": u.created_at, "disabled_at": u.disabled_at, "last_login_at": u.last_login_at}


def _key_out(k: auth.Key) -> dict[str, Any]:
    return {"id": k.id, "prefix": k.prefix, "name": k.name, "role": k.role, "area": k.area_code,
            "created_by": k.created_by, "created_at": k.created_at, "revoked_at": k.revoked_at,
            "last_used_at": k.last_used_at}


def _checked(check: Callable[[str], Any], value: str, field: str) -> Any:
    try:
        return check(value)
    except LoaError as exc:
        raise ApiError(422, exc, field) from None


@route("GET", "/users", "The users (within the key's area)", 403, response_model=list[UserOut])
def list_users(request: Request, who: Who) -> list[dict[str, Any]]:
    return [_user_out(u) for u in auth.list_users(_web(request).engine, by=who)]


@route("POST", "/users", "Add a user", 403, 404, 409, status_code=201, response_model=UserOut)
def add_user(request: Request, body: NewUserIn, who: Who) -> dict[str, Any]:
    auth.require(who, "users.manage")
    name = _checked(auth.check_name, body.name, "name")
    _checked(auth.check_password, body.password, "password")
    try:
        user = auth.add_user(_web(request).engine, who, name, body.password, body.role, body.area)
    except NotFound as exc:
        raise ApiError(422, exc, "area") from None
    return _user_out(user)


@route("POST", "/users/{name}/role", "Set a user's role", 403, 404, response_model=UserOut)
def set_role(request: Request, name: str, body: RoleIn, who: Who) -> dict[str, Any]:
    auth.require(who, "users.manage")
    return _user_out(auth.set_role(_web(request).engine, who, name, body.role, body.reason)[1])


@route("POST", "/users/{name}/disable", "Disable a user: no sign-in from now on", 403, 404, 409,
       response_model=UserOut)
def disable_user(request: Request, name: str, who: Who, body: OptionalReasonIn | None = None) -> dict[str, Any]:
    auth.require(who, "users.manage")
    return _user_out(auth.disable_user(_web(request).engine, who, name, body.reason if body else ""))


@route("GET", "/keys", "The API keys (within the key's area); never their secrets", 403, response_model=list[KeyOut])
def list_keys(request: Request, who: Who) -> list[dict[str, Any]]:
    return [_key_out(k) for k in auth.list_keys(_web(request).engine, by=who)]


@route("POST", "/keys", "Create an API key: its secret is in this answer and nowhere else", 403, status_code=201,
       response_model=NewKeyOut)
def create_key(request: Request, body: NewKeyIn, who: Who) -> dict[str, Any]:
    auth.require(who, "keys.manage")
    try:
        key, secret = auth.create_key(_web(request).engine, who, body.role, body.area, body.name)
    except NotFound as exc:
        raise ApiError(422, exc, "area") from None
    return {"key": _key_out(key), "secret": secret}


@route("DELETE", "/keys/{key_id}", "Revoke an API key: it is refused from now on", 403, 404, 409,
       response_model=KeyOut)
def revoke_key(request: Request, key_id: Id, who: Who,
               reason: str = Query("", max_length=1000, description="Why, for the audit log")) -> dict[str, Any]:
    auth.require(who, "keys.manage")
    return _key_out(auth.revoke_key(_web(request).engine, who, key_id, reason.strip()))


# -- the audit log, gateways, signing in ------------------------------------------------------

@route("GET", "/audit", "The audit log, filtered", 403, response_model=AuditOut)
def get_audit(request: Request, who: Who,
              actor: str | None = Query(None, description="user:NAME, key:PREFIX, os:USER..."),
              action: str | None = Query(None, description="An action and its sub-actions: users, campaigns.pause"),
              object: str | None = Query(None, description="TYPE or TYPE:ID: campaign:remind, user:ana"),
              since: str | None = Query(None, description="An age (30m, 2h, 7d, 1w) or an ISO 8601 date or time"),
              limit: int = Query(100, ge=1, le=1000, description="The newest this many entries")) -> dict[str, Any]:
    auth.require(who, "audit.read")
    web = _web(request)
    try:
        moment = audit.parse_since(since, web.config.timezone) if since else None
    except InputError as exc:
        raise ApiError(422, exc, "since", fix=lambda said, _: said.replace("--since", "since")) from None
    entries = audit.query(web.engine, actor=actor, action=action, since=moment, object=object, limit=limit)
    return {"entries": [{"id": e.id, "at": e.at, "actor": e.actor, "action": e.action, "object_type": e.object_type,
                         "object_id": e.object_id, "before": e.before, "after": e.after, "reason": e.reason}
                        for e in entries]}


@route("GET", "/gateways", "The configured gateways, and which are paused", 403, response_model=list[GatewayOut])
def list_gateways(request: Request, who: Who) -> list[dict[str, Any]]:
    from loa import gateways as gw

    auth.require(who, "gateways.read")
    web = _web(request)
    paused = gw.paused(web.engine)
    names = sorted(set(web.config.gateways) | set(paused))
    out = []
    for name in names:
        spec = web.config.gateways.get(name)
        held = paused.get(name)
        out.append({"name": name, "type": spec.type if spec else "(no longer configured)",
                    "rate": spec.rate if spec else None, "paused": held is not None,
                    "paused_reason": held["reason"] if held else None, "paused_since": held["since"] if held else None})
    return out


@route("POST", "/gateways/{name}/resume", "Resume a gateway paused by an authentication, configuration or money error",
       403, 404, 409, response_model=GatewayResumed)
def resume_gateway(request: Request, name: str, who: Who, body: OptionalReasonIn | None = None) -> dict[str, Any]:
    from loa import gateways as gw

    auth.require(who, "gateways.manage")
    web = _web(request)
    if name not in gw.paused(web.engine):
        if name not in web.config.gateways:
            raise NotFound(f"no gateway named {name!r} (configured: {', '.join(sorted(web.config.gateways))})")
        raise ApiError(409, Text("gateway {name!r} is not paused", name=name))
    try:
        reason = gw.resume(web.engine, name, actor=who.actor, why=body.reason if body else "")
    except NotFound as exc:      # resumed by someone else meanwhile
        raise ApiError(409, exc) from None
    return {"name": name, "was_paused_for": reason}


@route("POST", "/login", "Check a user's name and password (rate-limited); the API itself takes API keys",
       401, 429, public=True, response_model=PrincipalOut)
def login(request: Request, body: LoginIn) -> dict[str, Any]:
    client = request.client.host if request.client else ""
    p = auth.authenticate_password(_web(request).engine, body.name, body.password, client)
    return {"kind": p.kind, "name": p.name, "role": p.role, "area": p.area_code, "area_name": p.area_name}


# -- campaign definitions, previews and test sends (loa.versions, loa.preview, loa.testsend) --
# Applying a definition drafts a campaign: `campaigns.draft` (operator) on the areas of its new
# segment and of where it lies now; reading versions is `campaigns.read`; a preview and a test
# send show real subscribers' messages: `campaigns.preview` and `campaigns.test` (operator).

MAX_DEFINITIONS = 5_000_000     # bytes of one apply: its campaign files and templates
_APPLY_BODY = {"requestBody": {"required": True, "content": {
    "application/toml": {"schema": {"type": "string"}, "example": 'name = "remind"\nchannels = ["sms"]\n'},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "campaign": {"type": "array", "items": {"type": "string", "format": "binary"},
                     "description": "Campaign files (NAME.toml)"},
        "template": {"type": "array", "items": {"type": "string", "format": "binary"},
                     "description": "Templates, each named by its path in the templates folder (sms/remind.j2)"}}}}}}}


class AppliedOut(BaseModel):
    name: str
    version: int = Field(description="Its current version: the new one, or the unchanged one")
    added: bool = Field(description="Whether this apply added the version (false: its content had not changed)")
    before: str | None = Field(description="Its state before (null: a new campaign)")
    after: str = Field(description="Its state now: draft when it needs approval ([approval])")
    approval: str | None = Field(description="Why it needs approval, if it does")


class ApplyOut(BaseModel):
    campaigns: list[AppliedOut]
    changed: int = Field(description="Campaigns given a new version")


class VersionSummary(BaseModel):
    version: int
    file: str
    digest: str = Field(description="SHA-256 of its TOML and templates")
    templates: list[str]
    created_at: datetime
    created_by: str
    runs: int = Field(description="Runs planned from it")
    current: bool
    submitted: bool
    approved: bool


class VersionOut(BaseModel):
    campaign: str
    version: int
    file: str
    toml: str
    templates: dict[str, str] = Field(description="Its templates by path in the templates folder")
    digest: str
    created_at: datetime
    created_by: str


class ExportOut(BaseModel):
    campaigns: list[VersionOut] = Field(description="The current version of each campaign the key may read")


class DiffOut(BaseModel):
    campaign: str
    a: int
    b: int
    diff: str = Field(description="A unified diff of the TOML and templates; empty if they are the same")


class PreviewSample(SampleOut):
    encoding: str | None = Field(description="SMS: GSM-7 or UCS-2")
    parts: int | None = Field(description="SMS parts of this message")


class PreviewOut(BaseModel):
    campaign: str
    version: int
    audience: int
    to_send: int
    held_out: int
    suppressed: dict[str, int]
    samples: list[PreviewSample]
    errors: list[str] = Field(description="Samples whose template failed to render")
    estimated_parts: int
    parts_per_message: float | None
    estimated_cost_vnd: int | None = Field(description="At the gateways' prices; null where one has none")
    estimate: dict[str, Any] | None = Field(description="The estimate by gateway and carrier, budget and notes")


class TestIn(Body):
    to: list[Annotated[str, StringConstraints(min_length=1, max_length=32)]] = Field(
        min_length=1, max_length=10, description="Staff numbers to send the test to")
    subscriber: Annotated[str, StringConstraints(min_length=1, max_length=32)] | None = Field(
        None, description="Whose message (a subscriber's number); default: the first of the audience")


class TestResultOut(BaseModel):
    phone: str = Field(description="Masked")
    state: str = Field(description="sent, delivered, failed or unknown")
    provider_id: str | None
    error_code: str | None
    error_text: str | None
    parts: int | None
    cost_vnd: int | None


class TestOut(BaseModel):
    campaign: str
    subscriber: str = Field(description="Whose message: name and masked number")
    channel: str
    gateway: str
    text: str
    detail: str
    results: list[TestResultOut] = Field(description="One per staff number; kept in the test sends' own ledger")


def _unpack(problems: Sequence[str], folder: FilePath) -> ApiError:
    """The first three problems, and how many more, without the temporary folder's path."""
    shown: str = problems[0] if problems else Text("invalid campaign")
    for problem in problems[1:3]:
        shown = Text("{a}; {b}", a=shown, b=problem)
    if len(problems) > 3:
        shown = Text("{problem} (and {more:n} more)", problem=shown, more=len(problems) - 3)
    return ApiError(422, shown, "campaign",
                    fix=lambda said, _: said.replace(f"{folder}/", "").replace(str(folder), ""))


def _safe_path(name: str, field: str) -> str:
    rel = FilePath(name.replace("\\", "/"))
    if not name or rel.is_absolute() or ".." in rel.parts or any(p.startswith(".") for p in rel.parts):
        raise ApiError(422, f"{field} {name!r}: not a relative path inside its folder", field)
    return rel.as_posix()


BODY_FILE = "campaign.toml"     # where a TOML body is written, until it is named for its campaign


async def _receive_definitions(request: Request, folder: FilePath) -> bool:
    """Write the body's campaign files to ``folder/campaigns`` and its templates to ``folder/uploaded``;
    whether the body was one TOML text (written as :data:`BODY_FILE`)."""
    from loa.web.body import TooLarge, read_body

    try:
        raw = await read_body(request, MAX_DEFINITIONS)
    except TooLarge:
        raise ApiError(413, f"the definitions are over {MAX_DEFINITIONS:,} bytes") from None
    except ValueError:
        raise ApiError(422, "Content-Length is not a number", "Content-Length") from None
    campaigns = folder / "campaigns"
    campaigns.mkdir()
    media = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if media != "multipart/form-data":
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ApiError(422, f"the body is not UTF-8 text ({exc.reason} at byte {exc.start})", "body") from None
        (campaigns / BODY_FILE).write_text(text, encoding="utf-8")
        return True

    async def stream() -> Any:
        yield raw

    try:
        form = await MultiPartParser(Headers(scope=request.scope), stream(), max_files=200, max_fields=10).parse()
    except MultiPartException as exc:
        raise ApiError(422, f"not a multipart form: {exc.message}", "body") from None
    try:
        for field_name, part in form.multi_items():
            if field_name not in ("campaign", "template") or not isinstance(part, UploadFile):
                raise ApiError(422, f"{field_name!r}: a form of campaign and template files only", field_name)
            data = await part.read()
            if field_name == "campaign":
                name = FilePath(_safe_path(part.filename or "", "campaign")).name
                if not name.endswith(".toml"):
                    raise ApiError(422, f"campaign {name!r}: a campaign file is NAME.toml", "campaign")
                (campaigns / name).write_bytes(data)
            else:
                target = folder / "uploaded" / _safe_path(part.filename or "", "template")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
    finally:
        await form.close()
    return False


def _apply_definitions(web: Any, who: auth.Principal, folder: FilePath, reason: str, body: bool) -> dict[str, Any]:
    """Apply the received definitions as ``loa campaigns apply`` does, after checking that
    ``who`` may draft each campaign where it lies now and where its new segment puts it.

    A campaign's templates are the uploaded ones, else its current version's, else the
    server's templates folder.  A file without ``name`` is named by its file, as the CLI
    names it; a TOML body must name itself, and takes the file name of its current version,
    else NAME.toml (export writes each campaign to its own file)."""
    import scheduler
    from loa import versions
    from loa.campaign import NAME as CAMPAIGN_NAME
    from loa.errors import CampaignError

    campaigns, templates = folder / "campaigns", folder / "templates"
    if web.config.templates_dir.is_dir():
        shutil.copytree(web.config.templates_dir, templates)
    templates.mkdir(exist_ok=True)
    files = sorted(campaigns.glob("*.toml"))
    if not files:
        raise ApiError(422, "no campaign definition: send a TOML body, or multipart files named campaign", "campaign")
    with web.engine.connect() as conn:
        index, places = AreaIndex.load(conn), Places(conn)
        for path in files:
            try:
                raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError):
                continue               # refused by the apply, with its line
            if body and "name" not in raw:
                raise ApiError(422, 'a campaign sent as a TOML body names itself: name = "..."', "name")
            name = raw.get("name", path.stem)     # as loa.campaign names it
            if not isinstance(name, str) or not CAMPAIGN_NAME.match(name):
                continue               # refused by the apply, with its line
            current = versions.stored(conn, name)
            for rel, text in (current.templates if current else {}).items():
                target = templates / rel
                if target.resolve().is_relative_to(templates.resolve()):
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(text, encoding="utf-8")
            if body:
                known = current.file if current is not None else ""
                path.rename(campaigns / (known if known.endswith(".toml") and FilePath(known).name == known
                                         else f"{name}.toml"))
            row = conn.execute(select(C.c.id).where(C.c.name == name)).first()
            if row is not None and not who.can("campaigns.draft", places.of(row.id)):
                raise _unseen(who, "campaigns.draft", Text("campaign {name!r}", name=name))
    if (folder / "uploaded").is_dir():
        shutil.copytree(folder / "uploaded", templates, dirs_exist_ok=True)
    drafts = versions.read_folder(campaigns, templates)[0]
    for draft in drafts:           # where the new version puts it
        where: list[Any] = []
        for area in (draft.campaign.segment or {}).get("areas") or []:
            try:
                where.append(index.resolve(str(area)))
            except AreaLookupError:
                where.append(auth.EVERYWHERE)
        if not who.can("campaigns.draft", where or [auth.EVERYWHERE]):
            raise _unseen(who, "campaigns.draft", Text("campaign {name!r}", name=draft.campaign.name))
    try:
        result = versions.apply(web.engine, web.config, who.actor, folder=campaigns, templates=templates,
                                reason=reason)
    except CampaignError as exc:
        raise _unpack(exc.problems, folder) from None
    if result.added:
        scheduler.request_reload(web.engine)
    return {"campaigns": [{"name": a.name, "version": a.version, "added": a.added, "before": a.before,
                           "after": a.after, "approval": a.approval} for a in result.campaigns],
            "changed": len(result.added)}


@route("POST", "/campaigns", "Apply campaign definitions (a TOML body, or multipart files `campaign` and "
       "`template`): each campaign whose content changed gets a new version (operator)", 403, 413,
       response_model=ApplyOut, openapi_extra=_APPLY_BODY)
async def apply_campaigns(request: Request, who: Who,
                          reason: str = Query("", max_length=1000, description="Why: kept in the audit log")) -> Any:
    import tempfile

    auth.require(who, "campaigns.draft")
    with tempfile.TemporaryDirectory(prefix="loa-apply-") as tmp:
        folder = FilePath(tmp)
        body = await _receive_definitions(request, folder)
        return await run_in_threadpool(_apply_definitions, _web(request), who, folder, reason.strip(), body)


def _version_out(v: Any) -> dict[str, Any]:
    return {"campaign": v.campaign, "version": v.version, "file": v.file, "toml": v.toml, "templates": v.templates,
            "digest": v.digest, "created_at": v.created_at, "created_by": v.created_by}


@route("GET", "/campaigns/{name}/versions", "A campaign's stored versions, oldest first", 403, 404,
       response_model=list[VersionSummary])
def list_versions(request: Request, name: str, who: Who) -> list[dict[str, Any]]:
    from loa import versions

    engine = _web(request).engine
    with engine.connect() as conn:
        row, _ = _check_campaign(conn, who, "campaigns.read", name)
        runs = dict(conn.execute(select(R.c.campaign_version, func.count()).where(R.c.campaign_id == row.id)
                                 .group_by(R.c.campaign_version)).all())
    return [{"version": v.version, "file": v.file, "digest": v.digest, "templates": sorted(v.templates),
             "created_at": v.created_at, "created_by": v.created_by, "runs": runs.get(v.version, 0),
             "current": v.version == row.current_version, "submitted": v.version == row.submitted_version,
             "approved": v.version == row.approved_version} for v in versions.versions_of(engine, name)]


@route("GET", "/campaigns/{name}/versions/{version}", "One version of a campaign: its TOML and templates", 403, 404,
       response_model=VersionOut)
def get_version(request: Request, name: str, version: Id, who: Who) -> dict[str, Any]:
    from loa import versions

    with _web(request).engine.connect() as conn:
        _check_campaign(conn, who, "campaigns.read", name)
        found = versions.stored(conn, name, version)
    if found is None:
        raise NotFound(Text("campaign {name} has no version {version}", name=name, version=version))
    return _version_out(found)


@route("GET", "/campaigns/{name}/diff", "A unified diff of two versions (default: the current one and the one "
       "before it)", 403, 404, response_model=DiffOut)
def diff_versions(request: Request, name: str, who: Who,
                  a: int | None = Query(None, ge=1, le=2**31 - 1, description="The older version"),
                  b: int | None = Query(None, ge=1, le=2**31 - 1, description="The newer version (default: current)"),
                  ) -> dict[str, Any]:
    from loa import versions

    engine = _web(request).engine
    with engine.connect() as conn:
        row, _ = _check_campaign(conn, who, "campaigns.read", name)
    b = b or row.current_version or 0
    a = a or b - 1
    return {"campaign": name, "a": a, "b": b, "diff": versions.diff(engine, name, a, b)}


@route("GET", "/export", "Every campaign's current version, its TOML and templates (those the key may read): "
       "what `loa campaigns export` writes", 403, response_model=ExportOut)
def export_campaigns(request: Request, who: Who) -> dict[str, Any]:
    from loa import versions

    auth.require(who, "campaigns.read")
    out = []
    with _web(request).engine.connect() as conn:
        places = Places(conn)
        for row in conn.execute(select(C.c.id, C.c.name).where(C.c.current_version.is_not(None)).order_by(C.c.name)):
            if who.can("campaigns.read", places.of(row.id)) and (found := versions.stored(conn, row.name)):
                out.append(_version_out(found))
    return {"campaigns": out}


def _valid_campaign(web: Any, name: str) -> Any:
    """Campaign ``name``'s current version, checked as `loa campaigns validate` checks it (422)."""
    from loa import versions
    from loa.checks import attribute_keys, campaign_problems

    campaign = versions.load(web.engine, web.config, name)
    if problems := campaign_problems(web.config, campaign, attribute_keys(web.engine)):
        head = problems[0] if len(problems) < 2 else Text("{problem} (and {more:n} more)", problem=problems[0],
                                                           more=len(problems) - 1)
        raise ApiError(422, head, "name")
    return campaign


@route("GET", "/campaigns/{name}/preview", "Real recipients' messages rendered, with encoding and parts, the "
       "audience and the estimated cost, as `loa campaigns preview` (operator)", 403, 404, response_model=PreviewOut)
def preview_campaign(request: Request, name: str, who: Who,
                     count: int = Query(3, ge=1, le=100, description="Sample messages to render")) -> dict[str, Any]:
    from loa.preview import preview, record_preview

    web = _web(request)
    with web.engine.connect() as conn:
        _check_campaign(conn, who, "campaigns.preview", name)
    campaign = _valid_campaign(web, name)
    result = preview(web.engine, web.config, campaign, count)
    record_preview(web.engine, who.actor, name, result)
    estimate = result.estimate
    return {"campaign": name, "version": campaign.version or 0, "audience": result.audience,
            "to_send": result.planned, "held_out": result.held_out, "suppressed": dict(result.reasons),
            "samples": [{"who": s.who, "area": s.area, "channel": s.channel, "text": s.text, "detail": s.detail,
                         "encoding": s.encoding, "parts": s.parts} for s in result.samples],
            "errors": result.errors, "estimated_parts": result.estimated_parts,
            "parts_per_message": round(estimate.parts_per_message, 3) if estimate else None,
            "estimated_cost_vnd": estimate.cost_vnd if estimate else None,
            "estimate": estimate.as_dict() if estimate else None}


@route("POST", "/campaigns/{name}/test", "Send the campaign's real message, rendered for one subscriber, to staff "
       "numbers through its gateway, as `loa campaigns test` (operator): kept apart from the campaign's ledger",
       403, 404, response_model=TestOut)
def test_campaign(request: Request, name: str, body: TestIn, who: Who) -> dict[str, Any]:
    from loa.testsend import send_test, staff_numbers

    web = _web(request)
    with web.engine.connect() as conn:
        _check_campaign(conn, who, "campaigns.test", name)
    try:
        staff_numbers(body.to)        # a bad number is refused before the campaign is even read
    except InputError as exc:
        raise ApiError(422, exc, "to", fix=lambda said, _: said.replace("--to", "to")) from None
    campaign = _valid_campaign(web, name)
    try:
        trial = send_test(web.engine, web.config, campaign, body.to, actor=who.actor, subscriber=body.subscriber,
                          principal=who, pool=web.pool)
    except (InputError, NotFound) as exc:    # whose message: a number of no subscriber, or an empty audience
        raise ApiError(422, exc, "subscriber", fix=lambda said, _: said.replace("--subscriber PHONE", "subscriber")
                       .replace("--subscriber", "subscriber")) from None
    return trial.as_dict()
