"""``/hooks/NAME``: the callbacks of gateway NAME (delivery receipts, inbound SMS).

The gateway's adapter checks the request (a signature over the exact public URL and the raw
body, or a token) and answers what the gateway expects; a refusal changes nothing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from loa.errors import LoaError
from loa.receipts import apply_receipts
from loa.web.body import TooLarge, read_body
from loa.web.errors import reply
from providers.base import WebhookRejected, WebhookRequest

if TYPE_CHECKING:
    from loa.web.app import Web

log = logging.getLogger("loa.web")
router = APIRouter(tags=["gateway callbacks"])

_TEXT = {"text/plain": {"schema": {"type": "string"}}}
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Taken in: the answer the gateway expects (plain text, TwiML for Twilio, JSON)",
          "content": {"text/plain": {"schema": {"type": "string"}}, "text/xml": {"schema": {"type": "string"}},
                      "application/json": {"schema": {}}}},
    400: {"description": "Signed, but malformed", "content": _TEXT},
    403: {"description": "Forged, unsigned, or signed for another URL: nothing changes", "content": _TEXT},
    404: {"description": "No such gateway, or one that takes no callbacks", "content": _TEXT},
    413: {"description": "Request body over 1 MB", "content": _TEXT},
    503: {"description": "The gateway is configured but cannot be built (a secret is missing)", "content": _TEXT},
}
_BODY = {"requestBody": {"required": False, "content": {
    "application/x-www-form-urlencoded": {"schema": {"type": "object", "additionalProperties": {"type": "string"}}},
    "application/json": {"schema": {}}}}}


@router.get("/hooks/{name:path}", summary="A gateway's callback (GET: eSMS)", responses=RESPONSES,
            response_class=Response)
async def hook_get(name: str, request: Request) -> Response:
    return await _hook(name, request)


@router.post("/hooks/{name:path}", summary="A gateway's callback (POST: Twilio, Zalo)", responses=RESPONSES,
             response_class=Response, openapi_extra=_BODY)
async def hook_post(name: str, request: Request) -> Response:
    return await _hook(name, request)


async def _hook(name: str, request: Request) -> Response:
    web: Web = request.app.state.web
    name = name.strip("/")
    if name not in web.config.gateways:
        return reply(404, "no such gateway\n")
    try:
        body = await read_body(request)
    except TooLarge:
        return reply(413, "request too large\n")
    except ValueError:
        return reply(400, "bad Content-Length\n")
    return await run_in_threadpool(web.hook, name, webhook_request(web, request, body))


def webhook_request(web: Web, request: Request, body: bytes) -> WebhookRequest:
    """The request as the gateway's adapter sees it: the public URL it called, headers as sent."""
    headers: dict[str, str] = {}
    for key, value in request.scope["headers"]:
        name, text = key.decode("latin-1").title(), value.decode("latin-1")
        if name != "Content-Length":
            headers[name] = f"{headers[name]}, {text}" if name in headers else text
    form: dict[str, str] = {}
    if "application/x-www-form-urlencoded" in headers.get("Content-Type", ""):
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    query = request.scope.get("query_string", b"").decode("latin-1")
    return WebhookRequest(method=request.method, url=web.public_url(request), path=request.scope["path"],
                          query=dict(parse_qsl(query, keep_blank_values=True)), headers=headers, body=body,
                          form=form)


def handle(web: Web, name: str, request: WebhookRequest) -> Response:
    """Verify and apply one callback of gateway ``name`` (in a worker thread: it uses the database)."""
    try:
        gateway = web.pool.get(name)
    except LoaError as exc:
        log.error("callback for gateway %s, which cannot be built: %s", name, exc)
        return reply(503, "gateway not configured\n")
    try:
        result = gateway.provider.webhook(request)
    except WebhookRejected as exc:
        log.warning("gateway %s: callback refused (%s): %s", name, exc.status, exc.reason)
        return reply(exc.status, f"{exc.reason}\n")
    with web.engine.begin() as conn:
        moved = apply_receipts(conn, name, result.receipts)
    for message in result.inbound:
        web.inbound(name, message)
    log.info("gateway %s: %d receipt(s), %d moved a message; %d inbound", name, len(result.receipts), moved,
             len(result.inbound))
    return reply(result.status, result.body, result.content_type)
