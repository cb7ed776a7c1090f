"""How loa's HTTP side answers a refusal or a failure.

loa's own API endpoints answer every error as one JSON shape::

    {"error": {"code": "invalid", "message": "unknown format 'pdf': use html, csv, json", "field": "format"}}

``code`` is one of :data:`CODES` (stable, for programs), ``message`` one line for people,
``field`` the request field at fault, or null.  Gateway callbacks, tracked links and the
unknown paths keep the plain text their callers expect.

``message`` is Vietnamese when the request's ``Accept-Language`` ranks Vietnamese above English
(:func:`language_of`), English otherwise; ``code`` is the same in every language.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from babel.core import negotiate_locale
from pydantic import BaseModel, Field
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("loa.web")

# the error codes, by the HTTP status they come with
CODES = {400: "invalid", 401: "unauthorized", 403: "forbidden", 404: "not_found", 409: "conflict",
         413: "too_large", 422: "rejected", 429: "locked_out", 500: "internal", 503: "unavailable"}
API_PATHS = ("/arrivals", "/report")
API_PREFIX = "/api/"


def accepted_languages(header: str | None) -> list[str]:
    """The language tags of an ``Accept-Language`` header, the most wanted first (RFC 9110
    12.5.4): ``q`` weighs each (1 by default), ``q=0`` refuses one, and ties keep their order."""
    ranked = []
    for n, item in enumerate((header or "").split(",")):
        tag, *params = (part.strip() for part in item.split(";"))
        weight = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = float(value.strip())
                except ValueError:
                    weight = -1.0
        if tag and tag != "*" and 0 < weight <= 1:
            ranked.append((-weight, n, tag))
    return [tag for _, _, tag in sorted(ranked)]


def language_of(header: str | None) -> str:
    """The language of an API error for an ``Accept-Language`` header: "vi" if the client ranks
    Vietnamese above English, "en" otherwise (and without the header)."""
    chosen = negotiate_locale(accepted_languages(header), ["vi", "en"], sep="-")
    return "vi" if chosen and chosen.lower() == "vi" else "en"


def is_api(path: str) -> bool:
    """Whether ``path`` is one of loa's API endpoints, whose errors are the one JSON shape."""
    return path in API_PATHS or path.startswith(API_PREFIX)


class ErrorDetail(BaseModel):
    code: str = Field(description="What went wrong, for programs: " + ", ".join(sorted(set(CODES.values()))))
    message: str = Field(description="One line for people")
    field: str | None = Field(description="The request field at fault (a query parameter, a body item), or null")


class ErrorBody(BaseModel):
    """Every error of loa's API endpoints."""

    error: ErrorDetail


def error_response(status: int, message: str, field: str | None = None, *, code: str | None = None,
                   headers: dict[str, str] | None = None, **extra: Any) -> Response:
    """The JSON error of an API endpoint; ``extra`` keys go beside ``error``."""
    body = {"error": {"code": code or CODES.get(status, "invalid"), "message": message, "field": field}} | extra
    return reply(status, json.dumps(body, ensure_ascii=False), "application/json", headers)


def reply(status: int, body: str | bytes, content_type: str = "text/plain; charset=utf-8",
          headers: dict[str, str] | None = None) -> Response:
    """A response with exactly this Content-Type (Starlette would add a charset to text/* ones)."""
    data = body.encode("utf-8") if isinstance(body, str) else body
    return Response(data, status_code=status, headers={"Content-Type": content_type, **(headers or {})})


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI description of an API endpoint's errors."""
    said = {400: "Bad request: the field named is wrong", 401: "Missing or wrong bearer token",
            403: "The key's role is below the action's, or the object lies outside the key's area",
            404: "Not found", 409: "The object's state does not allow this action: nothing was changed",
            413: "Request body too large", 422: "The field named is wrong: nothing was changed",
            429: "Too many failed sign-ins: try again after Retry-After seconds",
            503: "Switched off: the token's environment variable is not set"}
    return {s: {"model": ErrorBody, "description": said.get(s, "Error")} for s in statuses}


class CatchAll:
    """One bad request must never take the service down: an exception becomes a logged 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            log.exception("error serving %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            if is_api(scope.get("path", "")):
                response = error_response(500, "internal error")
            else:
                response = reply(500, "internal error\n")
            await response(scope, receive, send)
