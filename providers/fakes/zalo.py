"""A loopback fake of Zalo's ZNS API and OA OAuth, for tests and demos.

It answers the paths the real service documents, in its shapes:

* ``POST /message/template``: checks the ``access_token`` header (an unknown or
  expired token answers ``error -124`` with HTTP 200, as Zalo does), takes a
  message, counts the daily quota down and answers ``data.msg_id``,
  ``data.sent_time`` and ``data.quota`` (numbers as strings, as seen in the wild);
* ``GET /message/quota`` and ``GET /message/status?message_id=...``;
* ``POST /v4/oa/access_token``: checks the ``secret_key`` header and that the
  form's ``refresh_token`` is the current one.  Refresh tokens are single-use:
  a used one answers ``error -14014`` ("Invalid refresh token").

It is the standard library's ThreadingHTTPServer on purpose: Werkzeug's
development server drops header names containing underscores, which is
exactly what ``access_token`` and ``secret_key`` are.

Run a standalone server with ``python -m providers.fakes.zalo --port 8766``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from providers.fakes import stop_on_ctrl_c

__all__ = ["FakeZalo", "RecordedRequest"]

OAUTH_PATH = "/v4/oa/access_token"
CODE_TOKEN = -124
CODE_TEMPLATE_ID = -109
CODE_TEMPLATE_DATA = -111
CODE_PHONE = -108
CODE_DAILY_QUOTA = -144
CODE_BAD_REFRESH = -14014   # "Invalid refresh token", as Zalo's OAuth answers it
CODE_BAD_SECRET = -14002    # this fake's code for a wrong secret_key / app_id


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    """One request as it reached the fake."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]        # names lower-cased
    body: bytes
    json: Any = None
    form: dict[str, str] = dataclasses.field(default_factory=dict)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128   # the default backlog of 5 drops connections under a sender's threads
    fake: FakeZalo

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is a test case, not a bug


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = "fake-zalo/1"
    # headers and body go out in separate writes: with Nagle on, each answer on a kept-alive
    # connection waits for the client\'s delayed ACK (~40 ms)
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _reply(self, status: int, body: Mapping[str, Any] | bytes,
               content_type: str = "application/json; charset=utf-8") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> RecordedRequest:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        parsed: Any = None
        form: dict[str, str] = {}
        if kind == "application/json":
            try:
                parsed = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                parsed = None
        elif kind == "application/x-www-form-urlencoded":
            form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        request = RecordedRequest(
            method=self.command, path=parts.path, query=dict(parse_qsl(parts.query)),
            headers={k.lower(): v for k, v in self.headers.items()}, body=body, json=parsed, form=form,
        )
        self.server.fake._log(request)
        return request

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    def _dispatch(self) -> None:
        request = self._record()
        fake = self.server.fake
        status, body, delay = fake._answer(request)
        if delay:
            time.sleep(delay)  # after processing: a client that gives up leaves an accepted message
        if isinstance(body, bytes):
            self._reply(status, body, "text/html; charset=utf-8")
        else:
            self._reply(status, body)


class FakeZalo:
    """Zalo's ZNS API and OA OAuth on 127.0.0.1.

    ``with FakeZalo() as zalo: zalo.url`` binds at once (port 0 picks a free
    port), serves from daemon threads and stops on exit.  Point both the
    provider's ``base_url`` and ``oauth_url`` at ``zalo.url``.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        app_id: str = "fake-app",
        secret_key: str = "fake-app-secret",
        oa_secret: str = "fake-oa-secret",
        access_token: str = "fake-at-0",
        refresh_token: str = "fake-rt-0",
        daily_quota: int = 1000,
        expires_in: int = 90000,
        latency: float = 0.0,
        refresh_latency: float = 0.0,
    ) -> None:
        self.app_id = app_id
        self.secret_key = secret_key
        self.oa_secret = oa_secret
        self.access_token = access_token
        self.refresh_token = refresh_token
        self.daily_quota = int(daily_quota)
        self.remaining_quota = int(daily_quota)
        self.expires_in = int(expires_in)
        self.latency = float(latency)                  # before answering /message/template
        self.refresh_latency = float(refresh_latency)  # before answering the OAuth refresh
        self.phone_errors: dict[str, int] = {}         # "84..." -> Zalo error code
        self.refreshes = 0                             # successful refreshes
        self.refresh_attempts = 0
        self.requests: list[RecordedRequest] = []
        self.sent: list[dict[str, Any]] = []           # accepted messages
        self.spent_refresh_tokens: list[str] = []
        self._token_valid = True
        self._next: deque[tuple[int | None, int | None]] = deque()   # (Zalo code, HTTP status)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._httpd = _HTTPServer((host, port), _Handler)
        self._httpd.fake = self
        self._thread: threading.Thread | None = None

    # -- programming it ----------------------------------------------------------
    def fail_phone(self, phone: str, code: int) -> None:
        """Every send to ``phone`` ("84..." or "+84...") answers Zalo error ``code``."""
        with self._lock:
            self.phone_errors[phone.lstrip("+")] = int(code)

    def fail_next(self, code: int | None = None, *, http_status: int | None = None, times: int = 1) -> None:
        """The next ``times`` sends answer Zalo error ``code``, or HTTP ``http_status``."""
        with self._lock:
            self._next.extend([(code, http_status)] * times)

    def expire_token(self) -> None:
        """The current access token stops working; the refresh token still does."""
        with self._lock:
            self._token_valid = False

    @property
    def template_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == "/message/template"]

    @property
    def refresh_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == OAUTH_PATH]

    # -- webhooks --------------------------------------------------------------
    def delivery_event(self, msg_id: str | None, tracking_id: str | None = None,
                       delivered_at_ms: int | None = None) -> dict[str, Any]:
        """A ``user_received_message`` event, as Zalo posts it for a delivered ZNS."""
        now = int(time.time() * 1000)
        message: dict[str, Any] = {"delivery_time": str(delivered_at_ms or now)}
        if msg_id is not None:
            message["msg_id"] = msg_id
        if tracking_id is not None:
            message["tracking_id"] = tracking_id
        return {
            "event_name": "user_received_message",
            "app_id": self.app_id,
            "sender": {"id": "fake-oa"},
            "recipient": {"id": "fake-user"},
            "message": message,
            "timestamp": str(now),
        }

    def signed_webhook(self, event: Mapping[str, Any], *, secret: str | None = None) -> tuple[bytes, dict[str, str]]:
        """(raw body, headers) of a webhook signed as Zalo signs it (or with ``secret``)."""
        event = dict(event)
        event.setdefault("app_id", self.app_id)
        event.setdefault("timestamp", str(int(time.time() * 1000)))
        body = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        key = self.oa_secret if secret is None else secret
        mac = hashlib.sha256(
            self.app_id.encode() + body + str(event["timestamp"]).encode() + key.encode()
        ).hexdigest()
        return body, {"Content-Type": "application/json", "X-ZEvent-Signature": f"mac={mac}"}

    # -- serving ---------------------------------------------------------------
    def _log(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _answer(self, request: RecordedRequest) -> tuple[int, Mapping[str, Any] | bytes, float]:
        route = (request.method, request.path)
        if route == ("POST", "/message/template"):
            return self._send(request)
        if route == ("GET", "/message/quota"):
            return 200, self._quota(request), 0.0
        if route == ("GET", "/message/status"):
            return 200, self._status(request), 0.0
        if route == ("POST", OAUTH_PATH):
            body = self._refresh(request)
            return 200, body, self.refresh_latency
        return 404, {"error": -106, "message": f"no such endpoint: {request.method} {request.path}"}, 0.0

    def _token_ok(self, request: RecordedRequest) -> bool:
        # Caller holds the lock.
        return self._token_valid and request.headers.get("access_token") == self.access_token

    def _quota_json(self) -> dict[str, str]:
        return {"dailyQuota": str(self.daily_quota), "remainingQuota": str(self.remaining_quota)}

    def _send(self, request: RecordedRequest) -> tuple[int, Mapping[str, Any] | bytes, float]:
        with self._lock:
            if self._next:
                code, http_status = self._next.popleft()
                if http_status is not None:
                    return http_status, b"<html><body>Internal Server Error</body></html>", 0.0
                if code is not None and code != CODE_TOKEN:
                    return 200, {"error": code, "message": f"fake error {code}"}, 0.0
                if code == CODE_TOKEN:
                    return 200, {"error": CODE_TOKEN, "message": "Access token is invalid"}, 0.0
            if not self._token_ok(request):
                return 200, {"error": CODE_TOKEN, "message": "Access token is invalid"}, 0.0
            body = request.json if isinstance(request.json, dict) else {}
            phone = str(body.get("phone") or "")
            if not phone.isdigit():
                return 200, {"error": CODE_PHONE, "message": "Phone number invalid"}, 0.0
            if phone in self.phone_errors:
                code = self.phone_errors[phone]
                return 200, {"error": code, "message": f"fake error {code} for this phone"}, 0.0
            if not body.get("template_id"):
                return 200, {"error": CODE_TEMPLATE_ID, "message": "Template ID invalid"}, 0.0
            if not isinstance(body.get("template_data"), dict):
                return 200, {"error": CODE_TEMPLATE_DATA, "message": "Template data empty"}, 0.0
            if self.remaining_quota <= 0:
                return 200, {"error": CODE_DAILY_QUOTA, "message": "Daily quota exceeded"}, 0.0
            self.remaining_quota -= 1
            msg_id = f"fake-msg-{next(self._ids)}"
            sent_ms = int(time.time() * 1000)
            self.sent.append({
                "msg_id": msg_id, "phone": phone, "template_id": body["template_id"],
                "template_data": body["template_data"], "tracking_id": body.get("tracking_id"),
                "sent_time": sent_ms,
            })
            answer = {"error": 0, "message": "Success", "data": {
                "msg_id": msg_id, "sent_time": str(sent_ms), "quota": self._quota_json(),
            }}
        return 200, answer, self.latency

    def _quota(self, request: RecordedRequest) -> Mapping[str, Any]:
        with self._lock:
            if not self._token_ok(request):
                return {"error": CODE_TOKEN, "message": "Access token is invalid"}
            return {"error": 0, "message": "Success", "data": self._quota_json()}

    def _status(self, request: RecordedRequest) -> Mapping[str, Any]:
        with self._lock:
            if not self._token_ok(request):
                return {"error": CODE_TOKEN, "message": "Access token is invalid"}
            msg_id = request.query.get("message_id", "")
            found = next((m for m in self.sent if m["msg_id"] == msg_id), None)
        if found is None:
            return {"error": 0, "message": "Success",
                    "data": {"status": -1, "message": "The message does not exist"}}
        return {"error": 0, "message": "Success", "data": {
            "status": 1, "delivery_time": str(found["sent_time"] + 1500),
            "message": "The message was delivered to the user's phone",
        }}

    def _refresh(self, request: RecordedRequest) -> Mapping[str, Any]:
        form = request.form
        with self._lock:
            self.refresh_attempts += 1
            if request.headers.get("secret_key") != self.secret_key or form.get("app_id") != self.app_id:
                return {"error": CODE_BAD_SECRET, "error_name": "Invalid app id or secret key",
                        "error_description": "secret_key header or app_id does not match the app"}
            if form.get("grant_type") != "refresh_token":
                return {"error": -14003, "error_name": "Invalid grant type"}
            if form.get("refresh_token") != self.refresh_token:
                return {"error": CODE_BAD_REFRESH, "error_name": "Invalid refresh token",
                        "error_description": "refresh token is invalid, expired or already used"}
            self.spent_refresh_tokens.append(self.refresh_token)
            self.refreshes += 1
            self.access_token = f"fake-at-{self.refreshes}"
            self.refresh_token = f"fake-rt-{self.refreshes}"
            self._token_valid = True
            return {"access_token": self.access_token, "refresh_token": self.refresh_token,
                    "expires_in": str(self.expires_in)}

    # -- lifecycle -------------------------------------------------------------
    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def options(self, **extra: Any) -> dict[str, Any]:
        """Provider options pointing at this fake, with its credentials."""
        return {
            "app_id": self.app_id, "secret_key": self.secret_key, "oa_secret": self.oa_secret,
            "access_token": self.access_token, "refresh_token": self.refresh_token,
            "base_url": self.url, "oauth_url": self.url, **extra,
        }

    def start(self) -> FakeZalo:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                name=f"fake-zalo-{self.port}", daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def serve_forever(self) -> None:
        self._httpd.serve_forever(poll_interval=0.2)

    def __enter__(self) -> FakeZalo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m providers.fakes.zalo",
                                description="Run a fake Zalo ZNS + OAuth server.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8766)
    p.add_argument("--daily-quota", type=int, default=1000)
    args = p.parse_args(None if argv is None else list(argv))
    stop_on_ctrl_c()
    fake = FakeZalo(host=args.host, port=args.port, daily_quota=args.daily_quota)
    try:   # Ctrl-C may come as soon as the address is out, before print() has returned
        print(f"fake Zalo listening on {fake.url}; app_id={fake.app_id} "
              f"access_token={fake.access_token} refresh_token={fake.refresh_token}", flush=True)
        fake.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
