"""A loopback fake of Twilio's REST API (Messages and Account), for tests and demos.

It answers the paths the Messages adapter uses, as Twilio documents them:

* ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` (form-encoded
  ``To``, ``From`` or ``MessagingServiceSid``, ``Body``, ``StatusCallback``,
  ``ValidityPeriod``) -> 201 with a Message resource;
* ``GET /2010-04-01/Accounts/{AccountSid}/Messages/{MessageSid}.json``;
* ``GET /2010-04-01/Accounts/{AccountSid}/Messages.json`` (the list, most recent first,
  filtered by ``To`` and ``From``, paged by ``PageSize`` and ``Page``);
* ``GET /2010-04-01/Accounts/{AccountSid}.json``.

Every request needs HTTP basic auth ``AccountSid:AuthToken`` (else 401 with
Twilio's error 20003).  Errors use Twilio's JSON shape
``{"code", "message", "more_info", "status"}``.

Failures are programmable: ``failures[to] = (400, 21211, "...")`` for one
recipient, ``fail_next.append((500, 20500, "Internal Server Error"))`` for the
next send, ``fail_next.append(RESET)`` to drop the connection after reading
the request, and ``latency`` (seconds) before every answer.  A 4th tuple item
gives extra headers (``{"Retry-After": "2"}``).

``signed_callback(url, params, auth_token)`` returns the headers Twilio would
send with a webhook; :meth:`FakeTwilio.send_status_callback` posts a signed
status callback to a message's ``StatusCallback`` URL.

Run one with ``python -m providers.fakes.twilio --port 8766``.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import email.utils
import json
import math
import secrets
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from twilio.request_validator import RequestValidator

from providers.fakes import stop_on_ctrl_c

__all__ = [
    "RESET",
    "FakeTwilio",
    "RecordedRequest",
    "segments",
    "signed_callback",
]

API_VERSION = "2010-04-01"
RESET = "reset"   # a fail_next entry: close the connection without answering

# GSM 03.38: the basic table, and the extension table (two septets each).
GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXTENSION = frozenset("^{}\\[~]|€\f")


def segments(body: str) -> int:
    """SMS segments for ``body``: GSM-7 (160 / 153 per part) or UCS-2 (70 / 67)."""
    if all(c in GSM_BASIC or c in GSM_EXTENSION for c in body):
        units = sum(2 if c in GSM_EXTENSION else 1 for c in body)
        single, multi = 160, 153
    else:
        units = len(body.encode("utf-16-le")) // 2
        single, multi = 70, 67
    return 1 if units <= single else math.ceil(units / multi)


def signed_callback(url: str, params: Mapping[str, str], auth_token: str) -> dict[str, str]:
    """Headers of a Twilio webhook POST of ``params`` to ``url``, signed with ``auth_token``."""
    signature = RequestValidator(auth_token).compute_signature(url, dict(params))
    return {
        "X-Twilio-Signature": signature,
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        "User-Agent": "TwilioProxy/1.1",
    }


def _rfc2822(at: datetime | None = None) -> str:
    return email.utils.format_datetime(at or datetime.now(UTC))


def _error_body(status: int, code: int | None, message: str) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message, "more_info": None, "status": status}
    if code is not None:
        body["more_info"] = f"https://www.twilio.com/docs/errors/{code}"
    return body


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    auth: tuple[str, str] | None
    headers: dict[str, str]


@dataclasses.dataclass(frozen=True)
class _Failure:
    status: int
    code: int | None
    message: str
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, spec: Any) -> _Failure | str:
        if spec == RESET or isinstance(spec, _Failure):
            return spec
        status, code, message, *rest = spec
        return cls(int(status), None if code is None else int(code), str(message),
                   dict(rest[0]) if rest else {})


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128   # the default backlog of 5 drops connections under a sender's threads
    fake: FakeTwilio

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass   # a client that timed out and hung up is expected in tests


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = "loa-fake-twilio/1"
    # headers and body go out in separate writes: with Nagle on, each answer on a kept-alive
    # connection waits for the client\'s delayed ACK (~40 ms)
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    # -- plumbing ------------------------------------------------------------
    def _reply(self, status: int, body: Mapping[str, Any],
               headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Twilio-Request-Id", "RQ" + secrets.token_hex(16))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: int | None, message: str,
               headers: Mapping[str, str] | None = None) -> None:
        self._reply(status, _error_body(status, code, message), headers)

    def _auth(self) -> tuple[str, str] | None:
        header = self.headers.get("Authorization", "")
        if not header.lower().startswith("basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:].strip()).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return user, password

    def _record(self) -> RecordedRequest:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode("utf-8") if length else ""
        form = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        rec = RecordedRequest(self.command, parts.path, query, form, self._auth(),
                              {k: v for k, v in self.headers.items()})
        self.server.fake._log(rec)
        return rec

    # -- routes --------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802
        self._route(self._record())

    def do_POST(self) -> None:  # noqa: N802
        self._route(self._record())

    def _route(self, rec: RecordedRequest) -> None:
        fake = self.server.fake
        if fake.latency:
            time.sleep(fake.latency)
        base = f"/{API_VERSION}/Accounts/"
        if not rec.path.startswith(base):
            self._error(404, 20404, f"The requested resource {rec.path} was not found")
            return
        if rec.auth != (fake.account_sid, fake.auth_token):
            self._error(401, 20003, "Authenticate",
                        {"WWW-Authenticate": 'Basic realm="Twilio API"'})
            return
        rest = rec.path[len(base):]
        account, _, tail = rest.partition("/")
        if account.removesuffix(".json") != fake.account_sid:
            self._error(404, 20404, f"The requested resource {rec.path} was not found")
            return
        if rec.method == "GET" and not tail and account.endswith(".json"):
            self._reply(200, fake._account_json())
        elif rec.method == "POST" and tail == "Messages.json":
            self._create(rec)
        elif rec.method == "GET" and tail == "Messages.json":
            self._reply(200, fake._list(rec.path, rec.query))
        elif rec.method == "GET" and tail.startswith("Messages/") and tail.endswith(".json"):
            sid = tail[len("Messages/"):-len(".json")]
            record = fake._message(sid)
            if record is None:
                self._error(404, 20404, f"The requested resource {rec.path} was not found")
            else:
                self._reply(200, record)
        else:
            self._error(404, 20404, f"The requested resource {rec.path} was not found")

    def _create(self, rec: RecordedRequest) -> None:
        fake = self.server.fake
        failure = fake._failure_for(rec.form.get("To", ""))
        if failure == RESET:
            self.close_connection = True
            self.connection.close()
            return
        if isinstance(failure, _Failure):
            self._error(failure.status, failure.code, failure.message, failure.headers)
            return
        problem = _validate(rec.form)
        if problem is not None:
            self._error(400, *problem)
            return
        self._reply(201, fake._create(rec.form))


def _validate(form: Mapping[str, str]) -> tuple[int, str] | None:
    to = form.get("To", "")
    if not to:
        return 21604, "A 'To' phone number is required."
    if not form.get("From") and not form.get("MessagingServiceSid"):
        return 21603, "A 'From' or 'MessagingServiceSid' parameter is required to send a message."
    if not to.startswith("+") or not to[1:].isdigit() or not 8 <= len(to) <= 16:
        return 21211, f"The 'To' number {to} is not a valid phone number."
    body = form.get("Body")
    if not body:
        return 21602, "Message body is required."
    if len(body) > 1600:
        return 21617, "The concatenated message body exceeds the 1600 character limit."
    if "ValidityPeriod" in form:
        try:
            valid = 1 <= int(form["ValidityPeriod"]) <= 36000
        except ValueError:
            valid = False
        if not valid:
            return 21624, "Invalid validity period value"
    callback = form.get("StatusCallback")
    if callback and urlsplit(callback).scheme not in ("http", "https"):
        return 21609, "Invalid StatusCallback"
    return None


class FakeTwilio:
    """Twilio's Messages API on 127.0.0.1; use as a context manager.

    ``requests`` lists every request received; ``messages`` maps SID to the
    Message resource as the API returns it.
    """

    def __init__(
        self,
        *,
        account_sid: str | None = None,
        auth_token: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        friendly_name: str = "loa test account",
        account_status: str = "active",
    ) -> None:
        self.account_sid = account_sid or "AC" + secrets.token_hex(16)
        self.auth_token = auth_token or secrets.token_hex(16)
        self.latency = float(latency)
        self.friendly_name = friendly_name
        self.account_status = account_status
        self.failures: dict[str, Any] = {}          # To -> (status, code, message[, headers])
        self.fail_next: deque[Any] = deque()        # the next sends, in order
        self.requests: list[RecordedRequest] = []
        self.messages: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._httpd = _HTTPServer((host, port), _Handler)
        self._httpd.fake = self
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeTwilio:
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever,
                                            kwargs={"poll_interval": 0.05},
                                            name="fake-twilio", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> FakeTwilio:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests look at ----------------------------------------------------
    def sends(self) -> list[RecordedRequest]:
        """The POSTs to Messages.json received, in order."""
        with self._lock:
            return [r for r in self.requests if r.method == "POST" and r.path.endswith("/Messages.json")]

    def set_status(self, sid: str, status: str, *, error_code: int | None = None,
                   error_message: str | None = None, price: str | None = None) -> dict[str, Any]:
        """Move a message along (sent, delivered, undelivered, failed) as Twilio would."""
        with self._lock:
            record = self.messages[sid]
            record["status"] = status
            record["error_code"] = error_code
            record["error_message"] = error_message
            record["date_updated"] = _rfc2822()
            if status in ("sent", "delivered", "undelivered") and record["date_sent"] is None:
                record["date_sent"] = record["date_updated"]
            if price is not None:
                record["price"] = price
            return dict(record)

    def status_callback_params(self, sid: str, status: str, *,
                               error_code: int | None = None) -> dict[str, str]:
        """The form Twilio posts to StatusCallback for ``status`` of message ``sid``."""
        with self._lock:
            record = self.messages[sid]
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "From": record["from"] or "",
            "To": record["to"],
            "MessageSid": sid,
            "SmsSid": sid,
            "MessageStatus": status,
            "SmsStatus": status,
        }
        if record["messaging_service_sid"]:
            params["MessagingServiceSid"] = record["messaging_service_sid"]
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
        return params

    def inbound_params(self, from_: str, body: str, *, to: str = "+15005550006") -> dict[str, str]:
        """The form Twilio posts to a number's incoming-message webhook."""
        sid = "SM" + secrets.token_hex(16)
        return {
            "ToCountry": "US", "ToState": "", "SmsMessageSid": sid, "NumMedia": "0",
            "ToCity": "", "FromZip": "", "SmsSid": sid, "FromState": "", "SmsStatus": "received",
            "FromCity": "", "Body": body, "FromCountry": "VN", "To": to, "ToZip": "",
            "NumSegments": str(segments(body)), "MessageSid": sid, "AccountSid": self.account_sid,
            "From": from_, "ApiVersion": API_VERSION,
        }

    def send_status_callback(self, sid: str, status: str, *, error_code: int | None = None,
                             url: str | None = None, timeout: float = 5.0) -> int:
        """Update ``sid`` and POST a signed status callback to its StatusCallback (or ``url``)."""
        self.set_status(sid, status, error_code=error_code)
        target = url or self.messages[sid].get("_status_callback")
        if not target:
            raise ValueError(f"message {sid} has no StatusCallback")
        params = self.status_callback_params(sid, status, error_code=error_code)
        request = urllib.request.Request(target, data=urlencode(params).encode("utf-8"), method="POST",
                                         headers=signed_callback(target, params, self.auth_token))
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (loopback)
            return int(response.status)

    # -- internals -------------------------------------------------------------
    def _log(self, rec: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(rec)

    def _failure_for(self, to: str) -> _Failure | str | None:
        with self._lock:
            if self.fail_next:
                return _Failure.of(self.fail_next.popleft())
            spec = self.failures.get(to)
        return None if spec is None else _Failure.of(spec)

    def _message(self, sid: str) -> dict[str, Any] | None:
        with self._lock:
            record = self.messages.get(sid)
            return None if record is None else {k: v for k, v in record.items() if not k.startswith("_")}

    def _list(self, path: str, query: Mapping[str, str]) -> dict[str, Any]:
        """``GET .../Messages.json``: Twilio's list, most recent first, filtered by ``To`` and
        ``From``, in pages of ``PageSize`` (default 50) numbered from 0 by ``Page``."""
        size = max(1, min(int(query.get("PageSize") or 50), 1000))
        page = max(0, int(query.get("Page") or 0))
        with self._lock:
            found = [r for r in self.messages.values()
                     if (not query.get("To") or r["to"] == query["To"])
                     and (not query.get("From") or r["from"] == query["From"])]
        found.sort(key=lambda r: r["_created"], reverse=True)
        chunk = found[page * size:(page + 1) * size]

        def uri(n: int) -> str:
            return f"{path}?{urlencode({**{k: v for k, v in query.items() if k != 'Page'}, 'Page': n, 'PageSize': size})}"

        return {
            "messages": [{k: v for k, v in r.items() if not k.startswith("_")} for r in chunk],
            "page": page, "page_size": size, "start": page * size, "end": page * size + max(len(chunk) - 1, 0),
            "uri": uri(page), "first_page_uri": uri(0),
            "next_page_uri": uri(page + 1) if len(found) > (page + 1) * size else None,
            "previous_page_uri": uri(page - 1) if page else None,
        }

    def _create(self, form: Mapping[str, str]) -> dict[str, Any]:
        sid = "SM" + secrets.token_hex(16)
        now = _rfc2822()
        service = form.get("MessagingServiceSid")
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}.json"
        record: dict[str, Any] = {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": form["Body"],
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": form.get("From") or None,
            "messaging_service_sid": service or None,
            "num_media": "0",
            # A Messaging Service picks the sender later: num_segments is "0" until then.
            "num_segments": "0" if service and not form.get("From") else str(segments(form["Body"])),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "accepted" if service else "queued",
            "subresource_uris": {"media": uri.replace(".json", "/Media.json")},
            "to": form["To"],
            "uri": uri,
            "_status_callback": form.get("StatusCallback"),
            "_created": time.time(),
        }
        with self._lock:
            self.messages[sid] = record
        return {k: v for k, v in record.items() if not k.startswith("_")}

    def _account_json(self) -> dict[str, Any]:
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}.json"
        return {
            "auth_token": None,   # the real API returns it; a fake has no reason to echo it
            "date_created": _rfc2822(datetime(2020, 4, 1, tzinfo=UTC)),
            "date_updated": _rfc2822(),
            "friendly_name": self.friendly_name,
            "owner_account_sid": self.account_sid,
            "sid": self.account_sid,
            "status": self.account_status,
            "subresource_uris": {"messages": uri.replace(".json", "/Messages.json")},
            "type": "Full",
            "uri": uri,
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m providers.fakes.twilio",
                                description="Run a loopback fake of Twilio's Messages API.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8766)
    p.add_argument("--latency", type=float, default=0.0)
    args = p.parse_args(argv)
    stop_on_ctrl_c()
    fake = FakeTwilio(host=args.host, port=args.port, latency=args.latency)
    try:   # Ctrl-C may come as soon as the address is out, before print() has returned
        print(f"fake Twilio at {fake.url}\naccount_sid = {fake.account_sid}\n"
              f"auth token  = {fake.auth_token}   (export it; name it with auth_token_env)", flush=True)
        fake._httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        fake._httpd.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
