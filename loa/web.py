"""loa's HTTP side: gateway callbacks, opt-out replies, the report, health and metrics.

A plain WSGI application, served by waitress (a production server) in
``loa serve``.  Routes:

=========================  ==========================================================
``POST|GET /hooks/NAME``   callbacks of gateway NAME: receipts and inbound SMS, verified
                           by the gateway's adapter (signature or token); forged -> 403
``GET /l/CODE``            a tracked link: records the click, redirects; forged -> 404
``POST /arrivals``         arrivals to greet, with the bearer token of
                           ``[serve] arrivals_token_env``
``GET /report``            the campaign report, as ``loa report`` makes it:
                           ``?campaign=NAME`` (default: the one run last), ``level=``,
                           ``format=html|csv|json`` (default html); aggregates only, open
                           unless ``[serve] report_token_env`` names a bearer token
``GET /healthz``           200 when the database answers, else 503
``GET /metrics``           Prometheus text format
=========================  ==========================================================

An inbound "TC", "TU CHOI", "HUY" or "STOP" opts the number out at once and
sends one confirmation (:func:`loa.inbound.receive_inbound`, also the path of the
inbound SMS a dispatcher polls from an SMPP bind).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine

from loa import db
from loa.config import Config
from loa.errors import InputError, LoaError, NotFound
from loa.gateways import GatewayPool
from loa.importer import record_events
from loa.inbound import receive_inbound
from loa.receipts import apply_receipts
from providers.base import InboundMessage, WebhookRejected, WebhookRequest

log = logging.getLogger("loa.web")
StartResponse = Callable[..., Any]
MAX_BODY = 1_000_000
REPORT_TYPES = {"html": "text/html; charset=utf-8", "csv": "text/csv; charset=utf-8",
                "json": "application/json; charset=utf-8"}


class Web:
    """The WSGI application."""

    def __init__(self, engine: Engine, config: Config, pool: GatewayPool | None = None) -> None:
        self.engine = engine
        self.config = config
        self.pool = pool or GatewayPool(config, engine)
        self.serve = dict(config.serve)
        self.extra_metrics: list[Callable[[], Iterable[str]]] = []
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or "/"
        method = environ.get("REQUEST_METHOD", "GET").upper()
        try:
            if path == "/healthz" and method == "GET":
                return self._health(start_response)
            if path == "/metrics" and method == "GET":
                return _reply(start_response, 200, self.metrics(), "text/plain; version=0.0.4; charset=utf-8")
            if path.startswith("/l/") and method in ("GET", "HEAD"):
                return self._click(path.removeprefix("/l/"), start_response)
            if path == "/report" and method == "GET":
                return self._report(environ, start_response)
            if path == "/arrivals" and method == "POST":
                return self._arrivals(environ, start_response)
            if path.startswith("/hooks/") and method in ("GET", "POST"):
                return self._hook(path.removeprefix("/hooks/").strip("/"), method, environ, start_response)
            return _reply(start_response, 404, "not found\n")
        except Exception:   # one bad request must never take the service down
            log.exception("error serving %s %s", method, path)
            return _reply(start_response, 500, "internal error\n")

    # -- gateway callbacks ------------------------------------------------------
    def _hook(self, name: str, method: str, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if name not in self.config.gateways:
            return _reply(start_response, 404, "no such gateway\n")
        try:
            gateway = self.pool.get(name)
        except LoaError as exc:
            log.error("callback for gateway %s, which cannot be built: %s", name, exc)
            return _reply(start_response, 503, "gateway not configured\n")
        request = self._request(method, environ)
        if request is None:
            return _reply(start_response, 413, "request too large\n")
        try:
            result = gateway.provider.webhook(request)
        except WebhookRejected as exc:
            log.warning("gateway %s: callback refused (%s): %s", name, exc.status, exc.reason)
            return _reply(start_response, exc.status, f"{exc.reason}\n")
        with self.engine.begin() as conn:
            moved = apply_receipts(conn, name, result.receipts)
        for message in result.inbound:
            self.inbound(name, message)
        log.info("gateway %s: %d receipt(s), %d moved a message; %d inbound", name, len(result.receipts), moved,
                 len(result.inbound))
        return _reply(start_response, result.status, result.body, result.content_type)

    def _request(self, method: str, environ: dict[str, Any]) -> WebhookRequest | None:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length > MAX_BODY:
            return None
        body = environ["wsgi.input"].read(length) if length else b""
        query = dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
        headers = {k[5:].replace("_", "-").title(): v for k, v in environ.items() if k.startswith("HTTP_")}
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        form: dict[str, str] = {}
        if "application/x-www-form-urlencoded" in environ.get("CONTENT_TYPE", ""):
            form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        return WebhookRequest(method=method, url=self.public_url(environ), path=environ.get("PATH_INFO", ""),
                              query=query, headers=headers, body=body, form=form)

    def public_url(self, environ: dict[str, Any]) -> str:
        """The URL the gateway called, which its signature covers: behind a proxy, the
        configured public URL, not the address loa listens on."""
        base = str(self.serve.get("public_url", "")).rstrip("/")
        if not base:
            scheme = environ.get("HTTP_X_FORWARDED_PROTO") or environ.get("wsgi.url_scheme", "http")
            host = environ.get("HTTP_X_FORWARDED_HOST") or environ.get("HTTP_HOST") or (
                f"{environ.get('SERVER_NAME', 'localhost')}:{environ.get('SERVER_PORT', '80')}")
            base = f"{scheme}://{host}"
        query = environ.get("QUERY_STRING", "")
        return f"{base}{environ.get('PATH_INFO', '')}" + (f"?{query}" if query else "")

    # -- tracked links -------------------------------------------------------------------
    def _click(self, code: str, start_response: StartResponse) -> Iterable[bytes]:
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
            return _reply(start_response, 404, "not found\n")
        start_response("302 Found", [("Location", str(target)), ("Content-Length", "0"),
                                     ("Cache-Control", "no-store")])
        return [b""]

    # -- the report ----------------------------------------------------------------------
    def _report(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """``GET /report``: the report ``loa report`` makes, by the same path (``report.render``)."""
        from loa import report

        var = self.serve.get("report_token_env")
        if var and (refused := _refuse_bearer(environ, str(var), "the report is locked")) is not None:
            return _reply(start_response, *refused)
        query = dict(parse_qsl(environ.get("QUERY_STRING", "")))
        fmt = query.get("format", "html")
        if fmt not in report.FORMATS:
            return _reply(start_response, 400, f"unknown format {fmt!r}: use {', '.join(report.FORMATS)}\n")
        try:
            name = query.get("campaign") or report.latest_campaign(self.engine)
            result = report.for_campaign(self.engine, self.config.campaigns_dir, name, query.get("level") or None)
        except NotFound as exc:
            return _reply(start_response, 404, f"{exc}\n")
        except InputError as exc:
            return _reply(start_response, 400, f"{exc}\n")
        return _reply(start_response, 200, report.render(self.engine, result, fmt, lang=self.config.language),
                      REPORT_TYPES[fmt])

    # -- arrivals ------------------------------------------------------------------------
    def _arrivals(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """``POST /arrivals`` with a bearer token: one arrival {phone, area, time?, source?} or a list.

        Bad items are rejected with their index and reason; the others go in."""
        var = str(self.serve.get("arrivals_token_env", "LOA_ARRIVALS_TOKEN"))
        if (refused := _refuse_bearer(environ, var, "arrivals are off")) is not None:
            return _reply(start_response, *refused)
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return _reply(start_response, 400, json.dumps({"error": "bad Content-Length"}), "application/json")
        if length > MAX_BODY:
            return _reply(start_response, 413, json.dumps({"error": "request too large"}), "application/json")
        try:
            payload = json.loads(environ["wsgi.input"].read(length) or b"null")
        except ValueError as exc:
            return _reply(start_response, 400, json.dumps({"error": f"not JSON: {exc}"}), "application/json")
        if not (isinstance(payload, dict) or (isinstance(payload, list) and payload)):
            return _reply(start_response, 400, json.dumps({"error": "send an object or a non-empty list of objects "
                                                                     "with phone and area"}), "application/json")
        items = payload if isinstance(payload, list) else [payload]
        from loa.arrivals import greet, record

        outcome = record(self.engine, items, self.config.timezone, source="http")   # bad items rejected by index
        body: dict[str, Any] = {"accepted": outcome.accepted, "planned": {},
                                "rejected": [{"index": i, "field": f, "reason": r} for i, f, r in outcome.rejected]}
        if outcome.accepted:
            try:
                body["planned"] = greet(self.engine, self.config)
            except LoaError as exc:   # the arrivals are stored; the service loop greets them later
                log.error("arrivals stored but not greeted: %s", exc)
                body["greet_error"] = str(exc)
        return _reply(start_response, 200 if outcome.accepted or not outcome.rejected else 422,
                      json.dumps(body, ensure_ascii=False), "application/json")

    # -- opt-out replies ------------------------------------------------------------
    def inbound(self, gateway: str, message: InboundMessage) -> bool:
        """Record a reply (see :func:`loa.inbound.receive_inbound`). Returns True for an opt-out."""
        return receive_inbound(self.engine, self.pool, self.config, gateway, message)

    # -- operations -------------------------------------------------------------------
    def _health(self, start_response: StartResponse) -> Iterable[bytes]:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
            return _reply(start_response, 503, json.dumps({"ok": False, "database": str(exc)[:200]}),
                          "application/json")
        return _reply(start_response, 200, json.dumps({"ok": True}), "application/json")

    def metrics(self) -> str:
        o = db.outbox
        lines = [
            "# HELP loa_messages Messages in the ledger by state and gateway.",
            "# TYPE loa_messages gauge",
        ]
        with self.engine.connect() as conn:
            rows = conn.execute(select(o.c.state, o.c.gateway, func.count()).group_by(o.c.state, o.c.gateway)).all()
            sent_minute = conn.scalar(select(func.count()).select_from(o).where(
                o.c.sent_at >= db.utcnow() - timedelta(minutes=1))) or 0
        due = 0
        for state, gateway, n in rows:
            lines.append(f'loa_messages{{state="{_label(state)}",gateway="{_label(gateway or "")}"}} {n}')
            if state in ("planned", "deferred", "claimed"):
                due += n
        lines += [
            "# HELP loa_queue_depth Messages waiting to be sent.", "# TYPE loa_queue_depth gauge",
            f"loa_queue_depth {due}",
            "# HELP loa_send_rate Messages handed to gateways per second over the last minute.",
            "# TYPE loa_send_rate gauge", f"loa_send_rate {sent_minute / 60:.3f}",
        ]
        from loa import gateways as gw

        paused = gw.paused(self.engine)
        lines += ["# HELP loa_gateway_paused 1 while a gateway is paused.", "# TYPE loa_gateway_paused gauge"]
        lines += [f'loa_gateway_paused{{gateway="{_label(name)}"}} {1 if name in paused else 0}'
                  for name in self.config.gateways]
        for extra in self.extra_metrics:
            lines += list(extra())
        return "\n".join(lines) + "\n"


def _refuse_bearer(environ: dict[str, Any], var: str, off: str) -> tuple[int, str, str] | None:
    """Why a request without the bearer token in ``$var`` is refused (status, body, type); None to let it in.

    With the variable unset the door stays shut (503) rather than open: naming a token
    in the configuration says the endpoint is meant to be protected."""
    import hmac
    import os

    token = os.environ.get(var, "")
    scheme, _, given = (environ.get("HTTP_AUTHORIZATION") or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        given = ""
    if not token:
        return 503, json.dumps({"error": f"{off}: ${var} is not set"}), "application/json"
    # WSGI hands headers over as latin-1 text: back to the bytes the client sent
    if not hmac.compare_digest(given.strip().encode("latin-1", "replace"), token.encode()):
        return 401, json.dumps({"error": "missing or wrong bearer token"}), "application/json"
    return None


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _reply(start_response: StartResponse, status: int, body: str | bytes,
           content_type: str = "text/plain; charset=utf-8") -> list[bytes]:
    data = body.encode("utf-8") if isinstance(body, str) else body
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 422: "Unprocessable Entity", 404: "Not Found", 413: "Payload Too Large",
              500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "")
    start_response(f"{status} {reason}".strip(), [("Content-Type", content_type), ("Content-Length", str(len(data)))])
    return [data]
