"""The web application: routes, the report, arrivals, tracked links, health and metrics.

See :mod:`loa.web` for the table of routes.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from sqlalchemy import select, text
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from loa import __version__, db
from loa.config import Config
from loa.errors import InputError, LoaError, NotFound
from loa.gateways import GatewayPool
from loa.importer import record_events
from loa.inbound import receive_inbound
from loa.web import api, console, hooks
from loa.web import metrics as prom
from loa.web.body import MAX_BODY, TooLarge, read_body
from loa.web.errors import CatchAll, error_response, is_api, reply, responses
from providers.base import InboundMessage, WebhookRequest

log = logging.getLogger("loa.web")
REPORT_TYPES = {"html": "text/html; charset=utf-8", "csv": "text/csv; charset=utf-8",
                "json": "application/json; charset=utf-8"}
BEARER = "bearerToken"

__all__ = ["MAX_BODY", "REPORT_TYPES", "Web"]


class Web:
    """loa's web application, an ASGI application: ``Web(engine, config)`` is what uvicorn serves."""

    def __init__(self, engine: Engine, config: Config, pool: GatewayPool | None = None) -> None:
        self.engine = engine
        self.config = config
        self.pool = pool or GatewayPool(config, engine)
        self.serve = dict(config.serve)
        self.registry = prom.registry(self)
        self.app = create_app(self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    def public_url(self, request: Request) -> str:
        """The URL the gateway called, which its signature covers: behind a proxy, the
        configured public URL, not the address loa listens on; the path and query as sent."""
        base = str(self.serve.get("public_url", "")).rstrip("/")
        if not base:
            scheme = request.headers.get("x-forwarded-proto") or request.scope.get("scheme", "http")
            host = request.headers.get("x-forwarded-host") or request.headers.get("host")
            if not host:
                server = request.scope.get("server") or ("localhost", 80)
                host = f"{server[0]}:{server[1]}"
            base = f"{scheme}://{host}"
        raw = request.scope.get("raw_path")
        path = raw.decode("latin-1") if raw else request.scope["path"]
        query = request.scope.get("query_string", b"").decode("latin-1")
        return f"{base}{path}" + (f"?{query}" if query else "")

    # -- gateway callbacks and opt-out replies ----------------------------------------
    def hook(self, name: str, request: WebhookRequest) -> Response:
        return hooks.handle(self, name, request)

    def inbound(self, gateway: str, message: InboundMessage) -> bool:
        """Record a reply (see :func:`loa.inbound.receive_inbound`). Returns True for an opt-out."""
        return receive_inbound(self.engine, self.pool, self.config, gateway, message)

    # -- tracked links -------------------------------------------------------------------
    def click(self, code: str) -> Response:
        """Record a click on a message's link and redirect to the campaign's target."""
        from loa.links import outbox_id

        try:
            oid = outbox_id(code)
        except LoaError:
            oid = None   # links are off ($LOA_LINK_SECRET unset): nothing can be verified
        target = None
        if oid is not None:
            o, r, s = db.outbox, db.runs, db.subscribers
            with self.engine.begin() as conn:
                row = conn.execute(select(s.c.phone, r.c.definition).select_from(
                    o.join(r, r.c.id == o.c.run_id).join(s, s.c.id == o.c.subscriber_id)).where(o.c.id == oid)).first()
                if row is not None:
                    target = (row.definition or {}).get("link")
                    record_events(conn, [{"phone": row.phone, "type": "clicked", "occurred_at": db.utcnow(),
                                          "source": "link", "outbox_id": oid, "attributes": None}])
        if not target:
            return reply(404, "not found\n")
        return Response(b"", status_code=302, headers={"Location": str(target), "Cache-Control": "no-store"})

    # -- the report ----------------------------------------------------------------------
    def report(self, request: Request, campaign: str | None, level: str | None, fmt: str | None) -> Response:
        """``GET /report``: the report ``loa report`` makes, by the same path (``report.render``)."""
        from loa import report

        var = self.serve.get("report_token_env")
        if var and (refused := refuse_bearer(request, str(var), "the report is locked")) is not None:
            return refused
        fmt = "html" if fmt is None else fmt    # "format=" is a format, and not one loa writes
        if fmt not in report.FORMATS:
            return error_response(400, f"unknown format {fmt!r}: use {', '.join(report.FORMATS)}", "format")
        try:
            name = campaign or report.latest_campaign(self.engine)
            result = report.for_campaign(self.engine, self.config.campaigns_dir, name, level or None)
        except NotFound as exc:
            return error_response(404, str(exc), "campaign")
        except InputError as exc:
            return error_response(400, str(exc), "level")
        return reply(200, report.render(self.engine, result, fmt, lang=self.config.language), REPORT_TYPES[fmt])

    # -- arrivals ------------------------------------------------------------------------
    def arrivals(self, payload: Any) -> Response:
        """One arrival {phone, area, time?, source?} or a list: bad items are rejected with their
        index and reason; the others go in."""
        from loa.arrivals import greet, record

        if not (isinstance(payload, dict) or (isinstance(payload, list) and payload)):
            return error_response(400, "send an object or a non-empty list of objects with phone and area")
        items = payload if isinstance(payload, list) else [payload]
        outcome = record(self.engine, items, self.config.timezone, source="http")   # bad items rejected by index
        body: dict[str, Any] = {"accepted": outcome.accepted, "planned": {},
                                "rejected": [{"index": i, "field": f, "reason": r} for i, f, r in outcome.rejected]}
        if outcome.accepted:
            try:
                body["planned"] = greet(self.engine, self.config)
            except LoaError as exc:   # the arrivals are stored; the service loop greets them later
                log.error("arrivals stored but not greeted: %s", exc)
                body["greet_error"] = str(exc)
        elif outcome.rejected:
            i, field, reason = outcome.rejected[0]
            more = f" (and {len(outcome.rejected) - 1} more)" if len(outcome.rejected) > 1 else ""
            return error_response(422, f"no arrival taken: item {i}: {reason}{more}",
                                  f"{i}.{field}" if field else str(i), **body)
        return reply(200, json.dumps(body, ensure_ascii=False), "application/json")

    # -- operations -------------------------------------------------------------------
    def health(self) -> Response:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
            return reply(503, json.dumps({"ok": False, "database": str(exc)[:200]}), "application/json")
        return reply(200, json.dumps({"ok": True}), "application/json")

    def metrics(self) -> str:
        """The Prometheus exposition of :attr:`registry`: the ledger, and what ``loa serve`` adds."""
        return prom.render(self.registry).decode("utf-8")


def refuse_bearer(request: Request, var: str, off: str) -> Response | None:
    """The refusal of a request without the bearer token in ``$var``; None to let it in.

    With the variable unset the door stays shut (503) rather than open: naming a token
    in the configuration says the endpoint is meant to be protected."""
    token = os.environ.get(var, "")
    scheme, _, given = (request.headers.get("authorization") or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        given = ""
    if not token:
        return error_response(503, f"{off}: ${var} is not set")
    # headers arrive as latin-1 text: back to the bytes the client sent
    if not hmac.compare_digest(given.strip().encode("latin-1", "replace"), token.encode()):
        return error_response(401, "missing or wrong bearer token", "Authorization",
                              headers={"WWW-Authenticate": "Bearer"})
    return None


# -- the application ----------------------------------------------------------------------

_JSON_ANY: dict[str, Any] = {"application/json": {"schema": {}}}
ARRIVAL = {"type": "object", "required": ["phone", "area"], "properties": {
    "phone": {"type": "string", "description": "The subscriber's phone, Vietnamese or E.164", "examples": ["0912345678"]},
    "area": {"type": "string", "description": "Area code or name", "examples": ["116"]},
    "time": {"type": "string", "description": "When they arrived (ISO 8601; without a zone: loa's timezone); "
                                              "default now"},
    "source": {"type": "string"}}}
ARRIVALS_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "oneOf": [ARRIVAL, {"type": "array", "items": ARRIVAL, "minItems": 1}]}}}}}
ARRIVALS_RESULT = {"type": "object", "required": ["accepted", "planned", "rejected"], "properties": {
    "accepted": {"type": "integer"},
    "planned": {"type": "object", "additionalProperties": {"type": "integer"},
                "description": "Greetings planned, by campaign"},
    "rejected": {"type": "array", "items": {"type": "object", "properties": {
        "index": {"type": "integer"}, "field": {"type": "string"}, "reason": {"type": "string"}}}},
    "greet_error": {"type": "string"}}}


def create_app(web: Web) -> FastAPI:
    app = FastAPI(title="loa", version=__version__, summary="SMS and Zalo campaigns for Vietnam",
                  docs_url=None, redoc_url=None, redirect_slashes=False)
    app.state.web = web
    app.add_middleware(CatchAll)
    app.include_router(hooks.router)
    api.install(app)
    console.install(app)
    console.install(app)

    @app.exception_handler(HTTPException)
    async def unknown(request: Request, exc: HTTPException) -> Response:
        if is_api(request.url.path):
            if exc.status_code in (404, 405):
                return error_response(404, "no such endpoint")
            if exc.status_code == 400 and request.url.path.startswith("/api/"):   # a body FastAPI cannot read
                return error_response(422, f"{exc.detail}: send JSON in UTF-8", "body")
            return error_response(exc.status_code, str(exc.detail))
        if exc.status_code in (404, 405):      # no such route, or not with this method
            return reply(404, "not found\n")
        return reply(exc.status_code, f"{exc.detail}\n")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ())]
        field = ".".join(loc[1:]) or (loc[0] if loc else None)
        message = str(first.get("msg", "invalid request"))
        if is_api(request.url.path):   # the API's bodies and parameters: 422, the field named
            if first.get("type") == "json_invalid":
                why = (first.get("ctx") or {}).get("error", "")
                return error_response(422, f"the body is not JSON: {why}".rstrip(": "), "body")
            return error_response(422, f"{field}: {message}" if field else message, field)
        return error_response(400, message, field)

    link_responses: dict[int | str, dict[str, Any]] = {
        302: {"description": "To the campaign's link (Location)"},
        404: {"description": "Forged, unknown, or links are off", "content": {"text/plain": {"schema": {"type": "string"}}}}}

    @app.get("/l/{code}", tags=["links"], response_class=Response, responses=link_responses,
             summary="A tracked link: record the click, redirect to the campaign's link")
    def click(code: str) -> Response:
        return web.click(code)

    @app.head("/l/{code}", tags=["links"], response_class=Response, responses=link_responses,
              summary="A tracked link, as a link preview fetches it: recorded and redirected as GET is")
    def click_head(code: str) -> Response:
        return web.click(code)

    @app.get("/report", tags=["api"], response_class=Response, summary="The campaign report, as `loa report` makes it",
             responses={200: {"description": "The report", "content": {
                 "text/html": {"schema": {"type": "string"}}, "text/csv": {"schema": {"type": "string"}},
                 "application/json": {"schema": {"type": "object"}}}}} | responses(400, 401, 404, 503),
             openapi_extra={"security": [{BEARER: []}, {}]})
    def report(request: Request,
               campaign: str | None = Query(None, description="Campaign name; default: the one run last"),
               level: str | None = Query(None, description="Area level to roll up to (district, province)"),
               format: str | None = Query(None, description="html (default), csv or json",
                                          json_schema_extra={"enum": ["html", "csv", "json"]}),
               ) -> Response:
        return web.report(request, campaign, level, format)

    @app.post("/arrivals", tags=["api"], response_class=Response, summary="Arrivals to greet",
              responses={200: {"description": "Taken in; bad items listed with their index",
                               "content": {"application/json": {"schema": ARRIVALS_RESULT}}}}
              | responses(400, 401, 413, 422, 503),
              openapi_extra=ARRIVALS_BODY | {"security": [{BEARER: []}]})
    async def arrivals(request: Request) -> Response:
        var = str(web.serve.get("arrivals_token_env", "LOA_ARRIVALS_TOKEN"))
        if (refused := refuse_bearer(request, var, "arrivals are off")) is not None:
            return refused
        try:
            body = await read_body(request)
        except TooLarge:
            return error_response(413, "request too large")
        except ValueError:
            return error_response(400, "bad Content-Length", "Content-Length")
        try:
            payload = json.loads(body or b"null")
        except ValueError as exc:
            return error_response(400, f"not JSON: {exc}")
        return await run_in_threadpool(web.arrivals, payload)

    @app.get("/healthz", tags=["operations"], response_class=Response, summary="200 when the database answers",
             responses={200: {"content": _JSON_ANY, "description": '{"ok": true}'},
                        503: {"content": _JSON_ANY, "description": "The database does not answer"}})
    def health() -> Response:
        return web.health()

    @app.get("/metrics", tags=["operations"], response_class=Response, summary="Prometheus text format",
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "The ledger's figures, read now"}})
    def metrics() -> Response:
        return reply(200, prom.render(web.registry), prom.CONTENT_TYPE)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes,
                                 description="loa's HTTP endpoints. Errors of the API endpoints are one JSON "
                                             'shape: `{"error": {"code", "message", "field"}}`.')
            schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes[BEARER] = {
                "type": "http", "scheme": "bearer",
                "description": "The token in the environment variable [serve] arrivals_token_env "
                               "(report_token_env for /report) names"}
            schemes[api.API_KEY] = {
                "type": "http", "scheme": "bearer",
                "description": "An API key of loa (`loa keys create`, or POST /api/v1/keys): loa_XXXXXXXX_..."}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
