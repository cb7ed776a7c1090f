"""The console's routes: each page a few lines over the engine's functions.

Every route checks the user's role and area with :func:`loa.auth.require` (or the engine
function it calls does), as the API does for a key; an error of the engine (a wrong state, a
stale version, a role or area refused) changes nothing and is shown as one line on the page.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import shutil
import tempfile
import tomllib
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
import tomli_w
from fastapi import APIRouter, FastAPI, Request
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from loa import approval, audit, auth, db, i18n, imports, lifecycle, reasons, versions
from loa.areas import AreaIndex, AreaLookupError
from loa.campaign import parse_text
from loa.errors import CampaignError, LoaError, NotFound, say
from loa.web.console import signout
from loa.web.console.session import (
    CSRF,
    FLASH,
    HEADERS,
    SESSION,
    Signer,
    csp,
    new_csrf_cookie,
)

HERE = Path(__file__).parent
STATIC = HERE / "static"
PREFIX = "/console"
C, R, V = db.campaigns, db.runs, db.campaign_versions
IMPORT_KINDS = ("subscribers", "areas", "events", "dnc", "arrivals", "snapshots")
MAX_UPLOAD = 200_000_000


def N_(message: str) -> str:
    """Marks a string for the catalog; translated where it is shown."""
    return message


STATES = {"draft": N_("draft"), "pending_approval": N_("pending approval"), "approved": N_("approved"),
          "active": N_("active"), "paused": N_("paused"), "finished": N_("finished"), "cancelled": N_("cancelled")}
ACTIONS = {"submit": N_("Submit for approval"), "approve": N_("Approve"), "reject": N_("Reject"),
           "launch": N_("Launch"), "pause": N_("Pause"), "resume": N_("Resume"), "cancel": N_("Cancel campaign")}
# the actions that need a reason: the control plane refuses them without one
NEEDS_REASON = {"reject", "pause", "cancel"}
DECISIONS = set(approval.PERMISSION)            # submit, approve, reject, launch: loa.approval
LIFECYCLE = {"pause", "resume", "cancel"}       # loa.lifecycle
KINDS = {"subscribers": N_("subscribers"), "areas": N_("areas"), "events": N_("events"),
         "dnc": N_("Do-Not-Call list"), "arrivals": N_("arrivals"), "snapshots": N_("snapshots")}
JOB_STATES = {"running": N_("running"), "done": N_("done"), "failed": N_("failed"),
              "interrupted": N_("interrupted")}
ROLES = {"viewer": N_("viewer"), "operator": N_("operator"), "approver": N_("approver"), "admin": N_("admin")}


class SignIn(Exception):
    """No valid session: the browser goes to the sign-in page."""


class Refused(Exception):
    """A POST without a valid CSRF token."""


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env


ENV = _environment()


@dataclass
class Page:
    """One request of a signed-in user: who, in which language, and the form token."""

    request: Request
    who: auth.Principal
    t: i18n.Language
    csrf_cookie: str
    new_csrf: bool = False
    nonce: str = field(default_factory=lambda: secrets.token_urlsafe(16))

    @property
    def web(self) -> Any:
        return self.request.app.state.web

    @property
    def engine(self) -> Any:
        return self.web.engine

    @property
    def config(self) -> Any:
        return self.web.config

    @property
    def csrf(self) -> str:
        return signer(self.request).csrf_token(self.csrf_cookie)

    def local(self, moment: datetime | None) -> str:
        """A moment in the deployment's time zone: 17/08/2020 08:00."""
        if moment is None:
            return i18n.DASH
        tz: ZoneInfo = self.config.timezone
        if moment.tzinfo is None:
            from datetime import UTC

            moment = moment.replace(tzinfo=UTC)
        at = moment.astimezone(tz)
        return f"{self.t.date(at.date())} {at:%H:%M}"


def signer(request: Request) -> Signer:
    state = request.app.state
    if not hasattr(state, "console_signer"):
        state.console_signer = Signer()
    return state.console_signer


def _lang(request: Request) -> str:
    chosen = request.cookies.get("loa_lang")
    return chosen if chosen in i18n.LANGUAGES else request.app.state.web.config.language


def page(request: Request) -> Page:
    """The signed-in user's page context, or :class:`SignIn`."""
    sess = signer(request).session(request.cookies.get(SESSION))
    if sess is None or signout.ended(request.app.state.web.engine, sess):
        raise SignIn()
    try:     # the user's language is theirs in the database, whichever browser they use
        who, lang = auth.principal_and_language(request.app.state.web.engine, sess.user)
    except auth.AuthError:
        raise SignIn() from None
    cookie = request.cookies.get(CSRF)
    lang = lang if lang in i18n.LANGUAGES else i18n.DEFAULT
    return Page(request, who, i18n.language(lang), cookie or new_csrf_cookie(), new_csrf=cookie is None)


async def form_of(request: Request) -> dict[str, Any]:
    """The posted form, after its CSRF token is checked."""
    form = await request.form(max_files=1, max_fields=50, max_part_size=MAX_UPLOAD)
    if not signer(request).csrf_ok(request.cookies.get(CSRF), str(form.get("csrf") or "")):
        raise Refused()
    return dict(form.multi_items()) | {k: form.getlist(k) for k in form if len(form.getlist(k)) > 1}


def secure_headers(response: Response, nonce: str) -> Response:
    response.headers["Content-Security-Policy"] = csp(nonce)
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def set_cookie(response: Response, name: str, value: str, max_age: int | None = None, path: str = "/") -> None:
    response.set_cookie(name, value, max_age=max_age, path=path, secure=True, httponly=True, samesite="strict")


def render(p: Page, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    """A page; ``here`` is where the language switch leads back to, when the page answers a POST."""
    flash = signer(p.request).unsign(FLASH, p.request.cookies.get(FLASH))
    ctx.setdefault("here", None if p.request.method == "GET" else f"{PREFIX}/")
    body = ENV.get_template(template).render(
        _=p.t.gettext, t=p.t, who=p.who, csrf=p.csrf, nonce=p.nonce, p=p, nav=nav(p), states=STATES,
        flash=flash, prefix=PREFIX, roles=ROLES, job_states=JOB_STATES, **ctx)
    response = HTMLResponse(body, status_code=status)
    if p.new_csrf:
        set_cookie(response, CSRF, p.csrf_cookie)
    if flash is not None:
        response.delete_cookie(FLASH, path="/", secure=True, httponly=True, samesite="strict")
    return secure_headers(response, p.nonce)


def fragment(p: Page, template: str, **ctx: Any) -> HTMLResponse:
    body = ENV.get_template(template).render(_=p.t.gettext, t=p.t, who=p.who, csrf=p.csrf, p=p, states=STATES,
                                             prefix=PREFIX, job_states=JOB_STATES, **ctx)
    return secure_headers(HTMLResponse(body), p.nonce)


def back(p: Page, url: str, message: str | None = None, error: bool = False) -> RedirectResponse:
    """Back to a page after a POST, with one line to show there."""
    response = RedirectResponse(url, status_code=303)
    if message:
        set_cookie(response, FLASH, signer(p.request).sign(FLASH, {"text": message, "error": error}), max_age=60)
    return response


def failed(p: Page, exc: LoaError) -> str:
    """An engine's refusal as one line in the reader's language, after a translated lead."""
    return p.t.gettext("Not done: {reason}").format(reason=exc.localized(p.t).splitlines()[0])


def said(p: Page, message: object) -> str:
    """An engine's message (a problem, an error) in the reader's language, where it is a
    :class:`loa.errors.Text`; as it is otherwise."""
    return message.localized(p.t) if isinstance(message, LoaError) else say(message, p.t)


def reason_of(p: Page, stored: str | None) -> str:
    """A reason as the database keeps it (in English), said in the reader's language where it is
    one of loa's own (loa.reasons); an official's or a gateway's words as they are."""
    return say(reasons.read(stored), p.t) if stored else ""


def problems_of(p: Page, exc: Exception) -> list[str]:
    """Every problem an error names, each in the reader's language."""
    return [said(p, problem) for problem in exc.problems] if isinstance(exc, CampaignError) else [said(p, exc)]


CHANNELS = {"sms": N_("SMS"), "zalo": N_("Zalo")}


def _in_language(p: Page, sample: Any) -> Any:
    """A preview's sample with who it is for ("(no name)") and its channel in the reader's language."""
    channel = CHANNELS.get(sample.channel)
    return dataclasses.replace(sample, who=said(p, sample.who),
                               channel=p.t.gettext(channel) if channel else sample.channel)


def nav(p: Page) -> list[tuple[str, str]]:
    items = [(f"{PREFIX}/", N_("Dashboard"))]
    if p.who.can("imports.run"):
        items.append((f"{PREFIX}/imports", N_("Imports")))
    if p.who.can("campaigns.draft"):
        items.append((f"{PREFIX}/campaigns/new", N_("New campaign")))
    items.append((f"{PREFIX}/gateways", N_("Gateways")))
    if p.who.can("users.manage"):
        items += [(f"{PREFIX}/users", N_("Users")), (f"{PREFIX}/keys", N_("API keys"))]
    if p.who.can("audit.read"):
        items.append((f"{PREFIX}/audit", N_("Audit log")))
    return items


# -- where campaigns lie ---------------------------------------------------------------------

def _places(conn: Any, campaign_id: int) -> list[Any]:
    from loa.web.api import Places

    return Places(conn).of(campaign_id)


def _campaign(p: Page, name: str, action: str = "campaigns.read") -> tuple[Any, list[Any]]:
    with p.engine.connect() as conn:
        row = conn.execute(select(C).where(C.c.name == name)).one_or_none()
        if row is None:
            raise NotFound(f"no campaign named {name!r}")
        places = _places(conn, row.id)
    auth.require(p.who, action, places)
    return row, places


# -- the pages ------------------------------------------------------------------------------

router = APIRouter(include_in_schema=False)


def install(app: FastAPI) -> None:
    """Mount the console under /console, its files under /console/static."""

    @app.exception_handler(SignIn)
    async def sign_in(request: Request, exc: SignIn) -> Response:
        if request.headers.get("hx-request"):
            return Response(status_code=204, headers={"HX-Redirect": f"{PREFIX}/login"})
        return RedirectResponse(f"{PREFIX}/login", status_code=303)

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> Response:
        return Response("the form has expired: reload the page and send it again\n", status_code=403,
                        media_type="text/plain; charset=utf-8")

    from loa.web.console import progress

    app.include_router(router)
    app.include_router(progress.router)


@router.get("/")
def root() -> Response:
    return RedirectResponse(f"{PREFIX}/", status_code=303)


@router.get(PREFIX)
def console_root() -> Response:
    return RedirectResponse(f"{PREFIX}/", status_code=303)


@router.get(PREFIX + "/static/{name}")
def static(name: str) -> Response:
    files = {"htmx.min.js": "text/javascript", "console.js": "text/javascript", "console.css": "text/css"}
    if name not in files:
        return Response("not found\n", status_code=404, media_type="text/plain")
    return FileResponse(STATIC / name, media_type=files[name] + "; charset=utf-8",
                        headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"})


# -- signing in and out ----------------------------------------------------------------------

def _anonymous(request: Request) -> Page:
    cookie = request.cookies.get(CSRF)
    nobody = auth.Principal("user", "", "viewer")
    return Page(request, nobody, i18n.language(_lang(request)), cookie or new_csrf_cookie(), new_csrf=cookie is None)


def _login_page(p: Page, status: int = 200, error: str | None = None, name: str = "") -> HTMLResponse:
    return render(p, "login.html", status=status, error=error, name=name)


@router.get(PREFIX + "/login")
def login_form(request: Request) -> Response:
    return _login_page(_anonymous(request))


@router.post(PREFIX + "/login")
async def login(request: Request) -> Response:
    p = _anonymous(request)
    form = await form_of(request)
    name, password = str(form.get("name", "")), str(form.get("password", ""))
    client = request.client.host if request.client else ""
    try:
        who = await run_in_threadpool(auth.authenticate_password, p.engine, name, password, client)
    except auth.LockedOut:
        return _login_page(p, 429, p.t.gettext("Too many failed sign-ins: try again later."), name)
    except auth.AuthError:
        return _login_page(p, 401, p.t.gettext("Wrong user name or password."), name)
    audit.record_now(p.engine, who.actor, "console.login", "user", who.name)
    response = RedirectResponse(f"{PREFIX}/", status_code=303)
    set_cookie(response, SESSION, signer(request).session_cookie(who.name, p.t.code), max_age=None)
    return response


@router.post(PREFIX + "/logout")
async def logout(request: Request) -> Response:
    await form_of(request)
    sess = signer(request).session(request.cookies.get(SESSION))
    if sess is not None:      # every copy of the cookie stops working, not only this browser's
        await run_in_threadpool(signout.end, request.app.state.web.engine, sess)
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(SESSION, path="/", secure=True, httponly=True, samesite="strict")
    return response


@router.post(PREFIX + "/language")
async def set_language(request: Request) -> Response:
    form = await form_of(request)
    lang = str(form.get("lang", ""))
    if lang not in i18n.LANGUAGES:
        lang = i18n.DEFAULT
    target = str(form.get("next") or "")
    if not re.fullmatch(r"/console/[\w./-]*", target) or ".." in target.split("/"):   # back to a page, nowhere else
        target = f"{PREFIX}/"
    response = RedirectResponse(target, status_code=303)
    set_cookie(response, "loa_lang", lang, max_age=365 * 86400)    # the sign-in page's, before a session
    try:
        p = page(request)
    except SignIn:
        return response
    if lang != p.t.code:      # a signed-in user's choice is kept with the user, and audited
        await run_in_threadpool(auth.set_language, p.engine, p.who, p.who.name, lang, "chosen in the console")
    return response


# -- the dashboard ----------------------------------------------------------------------------

def _gateways(p: Page) -> list[dict[str, Any]]:
    from loa import gateways as gw

    paused = gw.paused(p.engine)
    out = []
    for name in sorted(set(p.config.gateways) | set(paused)):
        spec = p.config.gateways.get(name)
        held = paused.get(name)
        out.append({"name": name, "type": spec.type if spec else "—", "rate": spec.rate if spec else None,
                    "paused": held is not None, "reason": reason_of(p, held["reason"]) if held else "",
                    "since": held["since"] if held else None})
    return out


def progress_of(p: Page, names: list[str] | None = None) -> list[Any]:
    from loa.web.console import progress

    return progress.collect(p.engine, p.config, p.request.app.state, p.who, names)


def _poll(p: Page, items: list[Any], one: str | None = None) -> dict[str, Any]:
    """What the polling element needs to start: its ETag and interval (loa.web.console.progress)."""
    from loa.web.console import progress

    return {"etag": progress.etag_of(items, p.t.code, one), "one": one, "poll": progress.POLL_SECONDS}


@router.get(PREFIX + "/")
def dashboard(request: Request) -> Response:
    from loa.web.console.progress import CURRENT

    p = page(request)
    items = progress_of(p)
    current = [i for i in items if i.state in CURRENT]
    other = [i for i in items if i not in current]
    paused = [g for g in _gateways(p) if g["paused"]]
    return render(p, "dashboard.html", current=current, other=other, paused=paused, items=current,
                  **_poll(p, current))


# -- a campaign ----------------------------------------------------------------------------------

def _diff_lines(text: str) -> list[tuple[str, str]]:
    out = []
    for line in text.splitlines():
        kind = "add" if line.startswith("+") and not line.startswith("+++") else \
            "del" if line.startswith("-") and not line.startswith("---") else \
            "hunk" if line.startswith("@@") else ""
        out.append((kind, line))
    return out


def _allowed_actions(p: Page, row: Any, places: list[Any]) -> list[str]:
    """The buttons to show: what the campaign's state allows and the user's role may do."""
    out = []
    for action in ("submit", "approve", "reject", "launch", "pause", "resume", "cancel"):
        if row.state not in lifecycle.CAMPAIGN_ACTIONS[action]:
            continue
        permission = approval.PERMISSION.get(action, f"campaigns.{action}")
        if p.who.can(permission, places):
            out.append(action)
    return out


@router.get(PREFIX + "/campaigns/new")
def new_campaign(request: Request) -> Response:
    p = page(request)
    if not p.who.can("campaigns.draft"):
        return render(p, "error.html", 403, message=p.t.gettext("Your role may not draft campaigns."))
    return render(p, "edit.html", form=_blank_form(), problems=[], errors={}, name=None,
                  measure=_measure(p, "", None))


@router.get(PREFIX + "/campaigns/{name}")
def campaign_page(request: Request, name: str) -> Response:
    p = page(request)
    try:
        row, places = _campaign(p, name)
    except LoaError as exc:
        return render(p, "error.html", 404 if isinstance(exc, NotFound) else 403, message=failed(p, exc))
    history = versions.versions_of(p.engine, name) if row.current_version else []
    diff, a, b = "", None, None
    if len(history) > 1:
        b = _int(request.query_params.get("b")) or row.current_version
        a = _int(request.query_params.get("a")) or (b - 1)
        try:
            diff = versions.diff(p.engine, name, a, b)
        except LoaError as exc:
            diff = said(p, exc)
    review, problems = None, []
    if row.current_version:
        problems = _problems(p, name)
    if row.current_version and p.who.can("campaigns.preview", places):
        try:
            review = approval.review(p.engine, p.config, name, 3)
            approval.record_review(p.engine, p.who.actor, review)   # real subscribers' messages: audited
            review.samples = [_in_language(p, s) for s in review.samples]
        except LoaError as exc:
            problems.append(said(p, exc))
    with p.engine.connect() as conn:
        runs = conn.execute(select(R).where(R.c.campaign_id == row.id).order_by(R.c.id.desc()).limit(20)).all()
    items = progress_of(p, [name])
    current = history[-1] if history else None
    return render(p, "campaign.html", row=row, places=places, history=history, diff=_diff_lines(diff), a=a, b=b,
                  current=current, review=review, problems=problems, runs=runs, items=items, **_poll(p, items, name),
                  state_reason=reason_of(p, row.state_reason),
                  actions=_allowed_actions(p, row, places), action_labels=ACTIONS, needs_reason=NEEDS_REASON,
                  can_test=row.current_version and p.who.can("campaigns.test", places),
                  can_run=row.state == "active" and p.who.can("campaigns.launch", places),
                  can_edit=p.who.can("campaigns.draft", places),
                  can_report=p.who.can("reports.read", places))


def _problems(p: Page, name: str) -> list[str]:
    """What `loa campaigns validate` finds in the current version, statically."""
    from loa.checks import campaign_problems

    try:
        campaign = versions.load(p.engine, p.config, name)
        return [said(p, x) for x in campaign_problems(p.config, campaign, None, versions.renderer_for(p.config, campaign))]
    except LoaError as exc:
        return problems_of(p, exc)


def _int(value: str | None) -> int | None:
    try:
        number = int(value or "")
    except ValueError:
        return None
    return number if 1 <= number < 2**31 else None


@router.post(PREFIX + "/campaigns/{name}/action/{action}")
async def campaign_action(request: Request, name: str, action: str) -> Response:
    p = page(request)
    form = await form_of(request)
    url = f"{PREFIX}/campaigns/{name}"
    if action not in DECISIONS | LIFECYCLE:
        return back(p, url, p.t.gettext("Unknown action."), error=True)
    reason = str(form.get("reason") or "").strip() or None
    if action in NEEDS_REASON and not reason:
        return back(p, url, p.t.gettext("Give a reason for this action."), error=True)
    try:
        await run_in_threadpool(_act, p, name, action, reason, _int(str(form.get("version") or "")))
    except LoaError as exc:
        return back(p, url, failed(p, exc), error=True)
    return back(p, url, p.t.gettext("Done: {action}.").format(action=p.t.gettext(ACTIONS[action])))


def _act(p: Page, name: str, action: str, reason: str | None, version: int | None) -> None:
    if action in DECISIONS:
        approval.decide(p.engine, p.config, name, action, p.who, reason=reason, version=version)
        return
    _campaign(p, name, f"campaigns.{action}")
    lifecycle.change_campaign(p.engine, name, action, who=p.who.actor, reason=reason,
                              record=audit.lifecycle_entry(p.who.actor, action, reason))


@router.post(PREFIX + "/campaigns/{name}/run")
async def run_now(request: Request, name: str) -> Response:
    """Plan a run now, as ``loa campaigns run`` does."""
    p = page(request)
    await form_of(request)
    url = f"{PREFIX}/campaigns/{name}"
    try:
        result = await run_in_threadpool(_plan, p, name)
    except LoaError as exc:
        return back(p, url, failed(p, exc), error=True)
    return back(p, url, p.t.gettext("Run {run} planned: {count} messages to send.").format(
        run=result.run_id, count=p.t.number(result.states["planned"])))


def _plan(p: Page, name: str) -> Any:
    from loa.plan import plan_run

    _campaign(p, name, "campaigns.launch")
    campaign = versions.load(p.engine, p.config, name)
    result = plan_run(p.engine, p.config, campaign)
    audit.record_now(p.engine, p.who.actor, "campaigns.run", "campaign", name, after={
        "run": result.run_id, "scheduled_for": result.scheduled_for.isoformat(), "created": result.created,
        "added": result.added, **{s: result.states[s] for s in ("planned", "held_out", "suppressed")}})
    return result


@router.post(PREFIX + "/campaigns/{name}/test")
async def test_send(request: Request, name: str) -> Response:
    from loa.testsend import send_test

    p = page(request)
    form = await form_of(request)
    url = f"{PREFIX}/campaigns/{name}"
    numbers = [n.strip() for n in str(form.get("to") or "").replace(";", ",").split(",") if n.strip()]

    def send() -> Any:
        _campaign(p, name, "campaigns.test")
        campaign = versions.load(p.engine, p.config, name)
        return send_test(p.engine, p.config, campaign, numbers, actor=p.who.actor, principal=p.who, pool=p.web.pool)

    try:
        trial = await run_in_threadpool(send)
    except LoaError as exc:
        return back(p, url, failed(p, exc), error=True)
    sent = sum(r.state in ("sent", "delivered") for r in trial.results)
    phones = ", ".join(r.phone for r in trial.results)        # masked
    return back(p, url, p.t.gettext("Test sent: {sent} of {count} accepted by the gateway ({phones}).").format(
        sent=sent, count=len(trial.results), phones=phones))


# -- a campaign's messages ---------------------------------------------------------------------

PAGE_SIZE = 50
MESSAGE_STATES = {
    "planned": N_("queued"), "deferred": N_("deferred"), "claimed": N_("sending"), "sending": N_("sending"),
    "sent": N_("sent"), "delivered": N_("delivered"), "undelivered": N_("undelivered"), "failed": N_("failed"),
    "expired": N_("expired"), "unknown": N_("unknown outcome"), "held_out": N_("held out"),
    "suppressed": N_("suppressed"), "cancelled": N_("cancelled")}


@dataclass
class Message:
    id: int
    run: int
    phone: str
    area: str
    state: str
    reason: str | None
    gateway: str | None
    error_code: str | None
    error_text: str | None
    due_at: datetime | None
    sent_at: datetime | None
    delivered_at: datetime | None

    @property
    def erased(self) -> bool:
        return self.phone.startswith("#")      # only the number's keyed hash is left

    @property
    def masked(self) -> str:
        from loa.phones import mask

        return "—" if self.erased else mask(self.phone)


def _said(p: Page, message: Message) -> Message:
    """``message`` with its reason and error in the reader's language; a gateway's words in its
    error are kept, their numbers masked as the page masks the recipients'."""
    from loa.logs import mask_phones

    return dataclasses.replace(message, reason=reason_of(p, message.reason),
                               error_text=reason_of(p, mask_phones(message.error_text or "")))


def _messages_query(p: Page, campaign_id: int) -> Any:
    O, S, AR = db.outbox, db.subscribers, db.areas
    return (select(O.c.id, O.c.run_id, S.c.phone, func.coalesce(AR.c.name, ""), O.c.state, O.c.reason, O.c.gateway,
                   O.c.error_code, O.c.error_text, O.c.due_at, O.c.sent_at, O.c.delivered_at)
            .join(R, R.c.id == O.c.run_id).join(S, S.c.id == O.c.subscriber_id)
            .outerjoin(AR, AR.c.id == O.c.area_id)
            .where(R.c.campaign_id == campaign_id, auth.scope_clause(p.who, O.c.area_id)))


def _messages_page(p: Page, row: Any, places: list[Any], page_no: int, status: int = 200,
                   revealed: dict[int, str] | None = None, errors: dict[int, str] | None = None,
                   typed: dict[int, str] | None = None) -> HTMLResponse:
    """One page of the campaign's ledger, numbers masked; the numbers shown on purpose in
    ``revealed``, each of them audited by :func:`reveal_number`."""
    query = _messages_query(p, row.id)
    with p.engine.connect() as conn:
        total = conn.scalar(select(func.count()).select_from(query.subquery())) or 0
        pages = max(1, -(-total // PAGE_SIZE))
        page_no = min(max(page_no, 1), pages)
        found = [_said(p, Message(*r)) for r in conn.execute(query.order_by(db.outbox.c.id)
                                                             .limit(PAGE_SIZE).offset((page_no - 1) * PAGE_SIZE))]
    response = render(p, "messages.html", status, here=f"{PREFIX}/campaigns/{row.name}/messages", row=row, messages=found, total=total, page_no=page_no, pages=pages,
                      message_states=MESSAGE_STATES, can_reveal=p.who.can("subscribers.read", places),
                      revealed=revealed or {}, errors=errors or {}, typed=typed or {}, problem=None)
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get(PREFIX + "/campaigns/{name}/messages")
def messages_page(request: Request, name: str) -> Response:
    p = page(request)
    try:
        row, places = _campaign(p, name, "runs.read")
    except LoaError as exc:
        return render(p, "error.html", 404 if isinstance(exc, NotFound) else 403, message=failed(p, exc))
    return _messages_page(p, row, places, _int(request.query_params.get("page")) or 1)


@router.post(PREFIX + "/campaigns/{name}/messages/{message_id}/reveal")
async def reveal_number(request: Request, name: str, message_id: int) -> Response:
    """Show one message's number in full, to a role with personal-data access
    (``subscribers.read``), for a reason; audited as ``subjects.reveal`` under the number's
    keyed hash.  The number goes into this answer only: never a URL, a cookie or a log."""
    from loa import subjects
    from loa.logs import mask_phones

    p = page(request)
    form = await form_of(request)
    try:
        row, places = _campaign(p, name, "runs.read")
        auth.require(p.who, "subscribers.read", places)
    except LoaError as exc:
        return render(p, "error.html", 404 if isinstance(exc, NotFound) else 403, message=failed(p, exc))
    page_no = _int(str(form.get("page") or "")) or 1
    with p.engine.connect() as conn:
        found = conn.execute(_messages_query(p, row.id).where(db.outbox.c.id == message_id)).one_or_none()
    if found is None or Message(*found).erased:
        return render(p, "error.html", 404, message=p.t.gettext("No such message in this campaign."))
    reason = " ".join(str(form.get("reason") or "").split())
    if not reason:
        return _messages_page(p, row, places, page_no, 422,
                              errors={message_id: p.t.gettext("Give a reason for this action.")})
    message = Message(*found)
    audit.record_now(p.engine, p.who.actor, "subjects.reveal", "subject", subjects.object_id(message.phone),
                     after={"campaign": name, "message": message_id}, reason=mask_phones(reason)[:1000])
    return _messages_page(p, row, places, page_no, revealed={message_id: message.phone})


# -- editing ---------------------------------------------------------------------------------

def _blank_form() -> dict[str, str]:
    return {"name": "", "description": "", "areas": "", "channel": "sms", "text": "", "window_start": "07:00",
            "window_end": "22:00", "start": "", "end": "", "holdout": "0.1", "goal_event": "installed",
            "goal_share": "0.5", "budget": "", "advertising": "", "opt_out": ""}


def _form_of_version(version: versions.Version) -> dict[str, str]:
    raw = tomllib.loads(version.toml)
    sms = raw.get("sms") or {}
    window, dates, goal = raw.get("window") or {}, raw.get("dates") or {}, raw.get("goal") or {}
    return {"name": version.campaign, "description": str(raw.get("description", "")),
            "areas": ", ".join((raw.get("segment") or {}).get("areas") or []),
            "channel": "sms", "text": version.templates.get(str(sms.get("template", "")), ""),
            "window_start": str(window.get("start", "07:00")), "window_end": str(window.get("end", "22:00")),
            "start": dmy(dates.get("start")), "end": dmy(dates.get("end")),
            "holdout": str(raw.get("holdout", 0)), "goal_event": str(goal.get("event", "installed")),
            "goal_share": str(goal.get("share", "")), "budget": str(raw.get("budget", "")),
            "advertising": "on" if raw.get("advertising") else "", "opt_out": str(raw.get("opt_out", ""))}


def _number(value: str) -> int | float | str:
    try:
        number = float(value.replace(",", "."))
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value and "," not in value else number


_DMY = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})")
NOT_A_DATE = N_("Not a date: write the day as dd/mm/yyyy, for example 17/08/2020.")


def parse_day(value: str) -> date:
    """A day as officials write it, dd/mm/yyyy (17/08/2020), and nothing else: not the ISO
    form, not a browser's locale-dependent picker, and not a day that does not exist."""
    found = _DMY.fullmatch(value.strip())
    if found is None:
        raise ValueError(value)
    day, month, year = (int(g) for g in found.groups())
    return date(year, month, day)


def dmy(value: Any) -> str:
    """A stored day as the form shows it: 17/08/2020."""
    return value.strftime("%d/%m/%Y") if isinstance(value, date) else str(value or "")


def _day_errors(p: Page, form: dict[str, str], fields: tuple[str, ...]) -> tuple[dict[str, date], dict[str, str]]:
    """The form's days, and a message per field whose day is not one."""
    days, errors = {}, {}
    for name in fields:
        text = str(form.get(name) or "").strip()
        if not text:
            continue
        try:
            days[name] = parse_day(text)
        except ValueError:
            errors[name] = p.t.gettext(NOT_A_DATE)
    if "start" in days and "end" in days and days["end"] < days["start"]:
        errors["end"] = p.t.gettext("The last day comes before the first day.")
    return days, errors


def _toml_from_form(form: dict[str, str], base: str | None) -> tuple[str, str, str]:
    """The campaign's TOML with the form's fields set, its SMS template's path and text."""
    raw: dict[str, Any] = tomllib.loads(base) if base else {}
    name = form["name"].strip()
    raw["name"] = name
    raw["description"] = form.get("description", "").strip()
    raw["advertising"] = bool(form.get("advertising"))
    if form.get("opt_out", "").strip():
        raw["opt_out"] = form["opt_out"].strip()
    else:
        raw.pop("opt_out", None)
    raw.setdefault("channels", ["sms"])
    if "sms" not in raw["channels"]:
        raw["channels"] = ["sms", *raw["channels"]]
    sms = raw.setdefault("sms", {})
    sms.setdefault("template", f"sms/{name}.j2")
    areas = [a.strip() for a in form.get("areas", "").split(",") if a.strip()]
    segment = raw.setdefault("segment", {})
    if areas:
        segment["areas"] = areas
    else:
        segment.pop("areas", None)
    raw["holdout"] = _number(form.get("holdout", "0") or "0")
    raw["window"] = {"start": form.get("window_start") or "07:00", "end": form.get("window_end") or "22:00"}
    dates = {k: parse_day(form[k]) for k in ("start", "end") if form.get(k, "").strip()}
    if dates:
        raw["dates"] = dates
    else:
        raw.pop("dates", None)
    if form.get("goal_share", "").strip():
        raw["goal"] = (raw.get("goal") or {}) | {"event": form.get("goal_event") or "installed",
                                                 "share": _number(form["goal_share"])}
    if form.get("budget", "").strip():
        raw["budget"] = _number(form["budget"].replace(".", "").replace(" ", ""))
    else:
        raw.pop("budget", None)
    return tomli_w.dumps(raw), str(sms["template"]), form.get("text", "").replace("\r\n", "\n")


def save_version(p: Page, toml_text: str, templates: dict[str, str], reason: str) -> versions.Applied:
    """Apply one campaign's TOML and templates as its next version, as ``loa campaigns apply``
    does (validated first; nothing is saved with a problem), after checking that the user may
    draft it where its segment lies, and where it lay before."""
    path = p.config.campaigns_dir / "campaign.toml"
    campaign, problems = parse_text(toml_text, path)
    if campaign is None:
        raise CampaignError(problems)
    with p.engine.begin() as conn:
        old = versions.stored(conn, campaign.name)
        index = AreaIndex.load(conn)
        row = conn.execute(select(C.c.id).where(C.c.name == campaign.name)).one_or_none()
        before = _places(conn, row.id) if row is not None else []
    try:
        where: Any = [index.resolve(str(a)) for a in campaign.segment.get("areas") or []] or auth.EVERYWHERE
    except AreaLookupError as exc:
        raise CampaignError([f"segment.areas: {exc}"]) from None
    auth.require(p.who, "campaigns.draft", where)
    if before:
        auth.require(p.who, "campaigns.draft", before)
    work = Path(tempfile.mkdtemp(prefix="loa-console-"))
    try:
        folder, tpl = work / "campaigns", work / "templates"
        folder.mkdir()
        if p.config.templates_dir.is_dir():
            shutil.copytree(p.config.templates_dir, tpl)
        tpl.mkdir(exist_ok=True)
        for rel, text in {**(old.templates if old else {}), **templates}.items():
            target = tpl / rel
            if not target.resolve().is_relative_to(tpl.resolve()):
                raise CampaignError([f"template {rel!r}: outside the templates folder"])
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        (folder / (old.file if old else f"{campaign.name}.toml")).write_text(toml_text, encoding="utf-8")
        try:
            result = versions.apply(p.engine, p.config, p.who.actor, folder=folder, templates=tpl, reason=reason)
        except CampaignError as exc:    # the problems name the file, not the folder it was checked in
            raise CampaignError([q.replace(f"{folder}/", "").replace(f"{tpl}/", "") for q in exc.problems]) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result.campaigns[0]


def _editable(p: Page, name: str) -> versions.Version:
    """The current version of a campaign the user may draft."""
    _campaign(p, name, "campaigns.draft")
    with p.engine.connect() as conn:
        version = versions.stored(conn, name)
    if version is None:
        raise NotFound(f"campaign {name} has no version")
    return version


def _saved(p: Page, applied: versions.Applied) -> Response:
    return back(p, f"{PREFIX}/campaigns/{applied.name}", p.t.gettext("Version {version} saved ({state}).").format(
        version=applied.version, state=p.t.gettext(STATES.get(applied.after, applied.after))))


@router.get(PREFIX + "/campaigns/{name}/edit")
def edit_campaign(request: Request, name: str) -> Response:
    p = page(request)
    try:
        version = _editable(p, name)
    except LoaError as exc:
        return render(p, "error.html", 403, message=failed(p, exc))
    form = _form_of_version(version)
    return render(p, "edit.html", form=form, problems=[], errors={}, name=name, measure=_measure(p, form["text"], name))


@router.post(PREFIX + "/campaigns/save")
async def save_form(request: Request) -> Response:
    p = page(request)
    form = {k: str(v) for k, v in (await form_of(request)).items() if isinstance(v, str)}
    form = _blank_form() | form
    existing = form.get("existing") or None
    base = None
    if existing:
        with p.engine.connect() as conn:
            version = versions.stored(conn, existing)
        base = version.toml if version else None
        form["name"] = existing
    _, errors = _day_errors(p, form, ("start", "end"))
    if errors:     # the form comes back as it was typed, each bad day marked where it is
        return render(p, "edit.html", 422, form=form, problems=[], errors=errors, name=existing,
                      measure=_measure(p, form.get("text", ""), existing))
    try:
        toml_text, template, text = _toml_from_form(form, base)
        applied = await run_in_threadpool(save_version, p, toml_text, {template: text + ("" if text.endswith("\n")
                                                                                           else "\n")},
                                          form.get("reason", ""))
    except (CampaignError, LoaError, tomllib.TOMLDecodeError, ValueError, TypeError) as exc:
        problems = problems_of(p, exc)
        return render(p, "edit.html", 422, form=form, problems=problems, errors={}, name=existing,
                      measure=_measure(p, form.get("text", ""), existing))
    return _saved(p, applied)


@router.get(PREFIX + "/campaigns/{name}/toml")
def toml_editor(request: Request, name: str) -> Response:
    p = page(request)
    try:
        version = _editable(p, name)
    except LoaError as exc:
        return render(p, "error.html", 403, message=failed(p, exc))
    return render(p, "toml.html", name=name, text=version.toml, problems=[])


@router.post(PREFIX + "/campaigns/{name}/toml")
async def save_toml(request: Request, name: str) -> Response:
    p = page(request)
    form = await form_of(request)
    text = str(form.get("toml") or "").replace("\r\n", "\n")
    try:
        _campaign(p, name, "campaigns.draft")
        try:
            declared = tomllib.loads(text).get("name", name)
        except tomllib.TOMLDecodeError as exc:
            raise CampaignError([f"not valid TOML: {exc}"]) from None
        if declared != name:
            raise CampaignError([f"name: this page edits {name!r}, the text names {declared!r}"])
        applied = await run_in_threadpool(save_version, p, text, {}, str(form.get("reason") or ""))
    except (CampaignError, LoaError) as exc:
        problems = problems_of(p, exc)
        return render(p, "toml.html", 422, name=name, text=text, problems=problems)
    return _saved(p, applied)


@dataclass
class Measure:
    encoding: str
    characters: int
    parts: int
    unaccented_parts: int
    price: int | None
    audience: int | None
    cost: int | None


def _measure(p: Page, text: str, name: str | None) -> Measure:
    """The SMS parts of a text as typed, and what it would cost (loa.text, loa.cost)."""
    from loa import cost
    from loa.plan import gateway_for
    from loa.text import measure, nfc, unaccent

    info = measure(nfc(text)) if text else None
    parts = info.parts if info else 0
    audience = price = None
    if name:
        try:
            campaign = versions.load(p.engine, p.config, name)
            with p.engine.connect() as conn:
                audience = versions.audience_size(conn, p.config, campaign)
            price = cost.price(p.config, gateway_for(p.config, campaign, "sms"), "sms", "", parts) if parts else None
        except LoaError:
            pass
    if price is None and parts:
        gateway = p.config.defaults.get("sms_gateway")
        price = cost.price(p.config, gateway, "sms", "", parts) if gateway else None
    return Measure(info.encoding if info else "GSM-7", len(nfc(text)), parts,
                   measure(unaccent(text)).parts if text else 0, price, audience,
                   price * audience if price is not None and audience is not None else None)


@router.get(PREFIX + "/measure")
def measure_text(request: Request) -> Response:
    p = page(request)
    text = request.query_params.get("text", "")[:5000]
    name = request.query_params.get("existing") or None
    if name:
        try:
            _campaign(p, name)
        except LoaError:
            name = None
    return fragment(p, "_measure.html", measure=_measure(p, text, name))


# -- reports ----------------------------------------------------------------------------------

def _report(p: Page, name: str, level: str | None) -> Any:
    from loa import report
    from loa.web.api import _scope_report

    _campaign(p, name, "reports.read")
    result = report.for_campaign(p.engine, p.config.campaigns_dir, name, level or None)
    if p.who.area_path is not None:
        with p.engine.connect() as conn:
            _scope_report(result, p.who, AreaIndex.load(conn))
    return result


@router.get(PREFIX + "/reports/{name}")
def report_page(request: Request, name: str) -> Response:
    from loa import report
    from loa.htmlreport import area_name, level_name, snapshots_table

    p = page(request)
    level = request.query_params.get("level") or None
    try:
        result = _report(p, name, level)
    except LoaError as exc:
        return render(p, "error.html", 404 if isinstance(exc, NotFound) else 403, message=failed(p, exc))
    summary = report.snapshot_summary(p.engine, result)
    if summary is not None and p.who.area_path is not None:
        with p.engine.connect() as conn:
            index = AreaIndex.load(conn)
        summary.series = [s for s in summary.series
                          if (a := index.by_code.get(s.code.casefold())) and auth.within(p.who, a.path)]
    snapshots = snapshots_table(summary, p.t) if summary is not None and summary.series else ""
    rows = [{"name": area_name(result, r, p.t), "row": r} for r in result.rows]
    top = max([r["row"].rate_delivered or 0 for r in rows] + [r["row"].installed_share or 0 for r in rows] + [0.01])
    notes = [said(p, n) for n in report.notes(result, summary)]   # the notes in the reader's language
    return render(p, "report.html", name=name, report=result, rows=rows, top=top, snapshots=snapshots, notes=notes,
                  level=level or result.level, level_label=level_name(p.t, result.level),
                  levels=[(lv, level_name(p.t, lv)) for lv in sorted(report.levels(p.engine))],
                  printing=bool(request.query_params.get("print")))


@router.get(PREFIX + "/reports/{name}/report.{fmt}")
def report_file(request: Request, name: str, fmt: str) -> Response:
    from loa import report
    from loa.htmlreport import render_report

    p = page(request)
    if fmt not in ("csv", "html"):
        return Response("not found\n", status_code=404, media_type="text/plain")
    try:
        result = _report(p, name, request.query_params.get("level") or None)
    except LoaError as exc:
        return render(p, "error.html", 403, message=failed(p, exc))
    if fmt == "csv":
        body = report.render(p.engine, result, "csv", lang=p.t.code)
        kind = "text/csv; charset=utf-8"
    else:
        body = render_report(p.engine, result, lang=p.t.code)
        kind = "text/html; charset=utf-8"
    disposition = f'attachment; filename="{name}-report.{fmt}"'
    return Response(body, media_type=kind, headers={"Content-Disposition": disposition, "Cache-Control": "no-store",
                                                    "X-Content-Type-Options": "nosniff"})


# -- imports ----------------------------------------------------------------------------------

SHOWN_REJECTS = 10   # rejected rows shown on an import's page; the CSV has them all


def _jobs(p: Page, limit: int = 20) -> list[imports.Job]:
    J = db.import_jobs
    with p.engine.connect() as conn:
        ids = list(conn.scalars(select(J.c.id).order_by(J.c.id.desc()).limit(limit)))
    return [imports.get(p.engine, i) for i in ids]


@router.get(PREFIX + "/imports")
def imports_page(request: Request) -> Response:
    p = page(request)
    if not p.who.can("imports.run"):
        return render(p, "error.html", 403, message=p.t.gettext("Your role or area may not import data."))
    return render(p, "imports.html", jobs=_jobs(p), kinds=KINDS, problem=None, errors={}, form={})


@router.post(PREFIX + "/imports")
async def upload(request: Request) -> Response:
    p = page(request)
    form = await form_of(request)
    if not p.who.can("imports.run"):
        return render(p, "error.html", 403, message=p.t.gettext("Your role or area may not import data."))
    kind, part = str(form.get("kind") or ""), form.get("file")
    typed = {"kind": kind, "as_of": str(form.get("as_of") or "")}
    days, errors = _day_errors(p, typed, ("as_of",))
    if errors:
        return render(p, "imports.html", 422, jobs=_jobs(p), kinds=KINDS, problem=None, errors=errors, form=typed)
    if kind not in IMPORT_KINDS or not isinstance(part, UploadFile) or not part.filename:
        return render(p, "imports.html", 422, jobs=_jobs(p), kinds=KINDS, errors={}, form=typed,
                      problem=p.t.gettext("Choose what the file holds, and the file."))
    folder = imports.upload_dir()
    target = folder / "upload.csv"
    with target.open("wb") as out:
        while block := await part.read(1 << 16):
            out.write(block)
    try:
        job = await run_in_threadpool(imports.start, p.engine, p.config, p.who.actor, kind, target,
                                      Path(part.filename).name, days.get("as_of"))
    except LoaError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        return render(p, "imports.html", 422, jobs=_jobs(p), kinds=KINDS, errors={}, form=typed,
                      problem=failed(p, exc).replace(str(target), "the file"))
    if request.headers.get("hx-request"):
        return Response(status_code=204, headers={"HX-Redirect": f"{PREFIX}/imports/{job.id}"})
    return back(p, f"{PREFIX}/imports/{job.id}")


def _job(p: Page, job_id: int, read: Any) -> Any:
    """``read(engine, job_id)`` for a user who may import, else the page that refuses."""
    if not p.who.can("imports.run"):
        return render(p, "error.html", 403, message=p.t.gettext("Your role or area may not import data."))
    try:
        return read(p.engine, job_id)
    except NotFound as exc:
        return render(p, "error.html", 404, message=failed(p, exc))


@router.get(PREFIX + "/imports/{job_id}")
def import_page(request: Request, job_id: int) -> Response:
    p = page(request)
    job = _job(p, job_id, imports.get)
    if isinstance(job, Response):
        return job
    # what the job says, in the reader's language: its failure and its first rejected rows' reasons
    ctx = {"job": job, "kinds": KINDS, "failure": imports.said(job.failure, p.t),
           "rejected": imports.rejected_rows(p.engine, job.id, p.t, SHOWN_REJECTS)
           if job.state != "running" and job.has_rejects else []}
    if request.query_params.get("fragment"):
        return fragment(p, "_import.html", **ctx)
    return render(p, "import.html", **ctx)


@router.get(PREFIX + "/imports/{job_id}/rejects.csv")
def import_rejects(request: Request, job_id: int) -> Response:
    p = page(request)
    text = _job(p, job_id, lambda engine, i: imports.rejects(engine, i, p.t))   # reasons in the reader's language
    if isinstance(text, Response):
        return text
    if text is None:
        return render(p, "error.html", 404, message=p.t.gettext("This import rejected no row."))
    return Response(text, media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="import-{job_id}-rejects.csv"', "Cache-Control": "no-store"})


# -- gateways, users, keys, the audit log ----------------------------------------------------------

@router.get(PREFIX + "/gateways")
def gateways_page(request: Request) -> Response:
    p = page(request)
    return render(p, "gateways.html", gateways=_gateways(p), can_manage=p.who.can("gateways.manage"))


@router.post(PREFIX + "/gateways/{name}/resume")
async def resume_gateway(request: Request, name: str) -> Response:
    from loa import gateways as gw

    p = page(request)
    form = await form_of(request)
    url = f"{PREFIX}/gateways"
    try:
        auth.require(p.who, "gateways.manage")
        gw.resume(p.engine, name, actor=p.who.actor, why=str(form.get("reason") or ""))
    except LoaError as exc:
        return back(p, url, failed(p, exc), error=True)
    return back(p, url, p.t.gettext("Gateway {name} resumed.").format(name=name))


@router.get(PREFIX + "/users")
def users_page(request: Request) -> Response:
    p = page(request)
    if not p.who.can("users.manage"):
        return render(p, "error.html", 403, message=p.t.gettext("Only an administrator manages users."))
    # each user's language named in itself, as the language menu names it
    return render(p, "users.html", users=auth.list_users(p.engine, by=p.who), problem=None,
                  languages={"vi": "Tiếng Việt", "en": "English"})


@router.post(PREFIX + "/users")
async def add_user(request: Request) -> Response:
    p = page(request)
    form = await form_of(request)
    name = str(form.get("name") or "").strip().lower()
    try:
        auth.require(p.who, "users.manage")
        auth.check_name(name)
        auth.check_password(str(form.get("password") or ""))
        auth.add_user(p.engine, p.who, name, str(form.get("password") or ""), str(form.get("role") or ""),
                      str(form.get("area") or "").strip() or None)
    except LoaError as exc:
        return back(p, f"{PREFIX}/users", failed(p, exc), error=True)
    return back(p, f"{PREFIX}/users", p.t.gettext("User {name} added.").format(name=name))


@router.post(PREFIX + "/users/{name}/disable")
async def disable_user(request: Request, name: str) -> Response:
    p = page(request)
    form = await form_of(request)
    try:
        auth.disable_user(p.engine, p.who, name, str(form.get("reason") or ""))
    except LoaError as exc:
        return back(p, f"{PREFIX}/users", failed(p, exc), error=True)
    return back(p, f"{PREFIX}/users", p.t.gettext("User {name} disabled.").format(name=name))


@router.get(PREFIX + "/keys")
def keys_page(request: Request) -> Response:
    p = page(request)
    if not p.who.can("keys.manage"):
        return render(p, "error.html", 403, message=p.t.gettext("Only an administrator manages API keys."))
    return render(p, "keys.html", keys=auth.list_keys(p.engine, by=p.who))


@router.post(PREFIX + "/keys/{key_id}/revoke")
async def revoke_key(request: Request, key_id: int) -> Response:
    p = page(request)
    form = await form_of(request)
    try:
        auth.require(p.who, "keys.manage")
        auth.revoke_key(p.engine, p.who, key_id, str(form.get("reason") or ""))
    except LoaError as exc:
        return back(p, f"{PREFIX}/keys", failed(p, exc), error=True)
    return back(p, f"{PREFIX}/keys", p.t.gettext("Key revoked."))


@router.get(PREFIX + "/audit")
def audit_page(request: Request) -> Response:
    p = page(request)
    if not p.who.can("audit.read"):
        return render(p, "error.html", 403, message=p.t.gettext("Your role may not read the audit log."))
    q = request.query_params
    entries = audit.query(p.engine, actor=q.get("actor") or None, action=q.get("action") or None,
                          object=q.get("object") or None, limit=200)
    return render(p, "audit.html", entries=list(reversed(entries)), q=q)


__all__ = ["ENV", "PREFIX", "install", "router", "save_version"]
