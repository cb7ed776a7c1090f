"""A loopback fake of eSMS.vn's REST API (``MainService.svc/json``).

It answers as eSMS documents (see :mod:`providers.esms` for the sources):

* ``POST SendMultipleMessage_V4_post_json/`` -- checks ApiKey/SecretKey (101),
  SmsType (300 missing, 118 unknown), Brandname (104), Phone (108), balance (103);
  dedupes by RequestId for real (a repeat of an accepted RequestId answers 124,
  like the documented ``{"CodeResult": "124", "ErrorMessage": "Request exist 1",
  "SendStatus": "5"}``, without SMSID unless ``smsid_on_duplicate``); charges
  ``price_per_part`` per SMS part; honours ``Sandbox: "1"`` (validated, answered
  100, but not stored, not charged, not deduped, never called back).
* ``POST GetBalance_json`` -- ``{"Balance", "CodeResponse": "100", "UserID"}``.
* ``GET GetSendStatus?RefId=&ApiKey=&SecretKey=`` -- SendStatus/SendSuccess/SendFailed
  of a stored message, ``CodeResponse`` 105 for an unknown SMSID.

Tests program it: ``codes[phone] = "146"`` answers that CodeResult for a phone
(national or E.164), :meth:`fail_next` answers raw HTTP errors, ``latency``
delays the answer *after* the request was processed (a client that times out
leaves an accepted message behind), ``advertising_batch_only`` answers 107 to
SmsType 1 as the current docs imply.  :meth:`deliver` calls the message's
CallbackUrl with HTTP GET the way eSMS does.

``with FakeESMS() as fake: fake.url`` -> ``http://127.0.0.1:<port>/MainService.svc/json/``.

Run one with ``python -m providers.fakes.esms --port 8767``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from providers.fakes import stop_on_ctrl_c

__all__ = ["FakeESMS", "FakeMessage", "RecordedRequest"]

ROOT = "/MainService.svc/json/"
SEND = "SendMultipleMessage_V4_post_json"
BALANCE = "GetBalance_json"
STATUS = "GetSendStatus"

KNOWN_TYPES = {"1", "2", "8"}  # advertising, customer care, fixed number (SMS types)
TELCO_BY_PREFIX = {  # a few prefixes, enough to fill telcoid like eSMS does
    "086": "1", "096": "1", "097": "1", "098": "1", "032": "1", "033": "1", "034": "1",
    "035": "1", "036": "1", "037": "1", "038": "1", "039": "1",
    "089": "2", "090": "2", "093": "2", "070": "2", "076": "2", "077": "2", "078": "2", "079": "2",
    "088": "3", "091": "3", "094": "3", "081": "3", "082": "3", "083": "3", "084": "3", "085": "3",
    "092": "4", "056": "4", "058": "4", "099": "5", "059": "5",
}


@dataclasses.dataclass
class RecordedRequest:
    method: str
    path: str                      # path without the query, e.g. /MainService.svc/json/GetBalance_json
    query: dict[str, str]
    body: Any                      # parsed JSON, or None
    headers: dict[str, str]

    @property
    def endpoint(self) -> str:
        return self.path[len(ROOT):].strip("/") if self.path.startswith(ROOT) else self.path


@dataclasses.dataclass
class FakeMessage:
    smsid: str
    request_id: str
    phone: str                     # as sent ("0912345678")
    content: str
    brandname: str
    sms_type: str
    unicode: bool
    parts: int
    price: int
    callback_url: str | None
    send_status: str = "2"         # 2 waiting to send -> 5 finished (or 4 rejected)
    success: int = 0
    failed: int = 0


def _national(phone: str) -> str:
    phone = str(phone).strip()
    if phone.startswith("+84"):
        return "0" + phone[3:]
    if phone.startswith("84") and len(phone) == 11:
        return "0" + phone[2:]
    return phone


def _parts(content: str, unicode: bool) -> int:
    single, multi = (70, 67) if unicode else (160, 153)
    n = len(content)
    return 1 if n <= single else math.ceil(n / multi)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128   # the default backlog of 5 drops connections under a sender's threads
    app: FakeESMS

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is expected


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = "Microsoft-IIS/10.0"  # eSMS is a WCF service

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _reply(self, status: int, body: Any, content_type: str = "application/json; charset=utf-8") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the client gave up (read timeout)

    def _handle(self, method: str) -> None:
        app = self.server.app
        split = urlsplit(self.path)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body: Any = None
        bad_json = False
        if raw:
            try:
                body = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                bad_json = True
        app._record(RecordedRequest(method, split.path, query, body, dict(self.headers.items())))

        forced = app._take_failure()
        if forced is not None:
            status, payload = forced
            self._reply(status, payload, "text/html; charset=utf-8")
            return
        endpoint = split.path[len(ROOT):].strip("/") if split.path.startswith(ROOT) else None
        if bad_json:
            self._reply(400, {"error": "Invalid request"})
            return
        if method == "POST" and endpoint == SEND:
            answer = app._send(body if isinstance(body, dict) else {})
        elif method == "POST" and endpoint == BALANCE:
            answer = app._balance(body if isinstance(body, dict) else {})
        elif method == "GET" and endpoint == STATUS:
            answer = app._status(query)
        else:
            self._reply(404, b"<html><body>Endpoint not found.</body></html>", "text/html; charset=utf-8")
            return
        if app.latency and endpoint == SEND:
            time.sleep(app.latency)  # processed already: a timed-out client leaves it accepted
        if app.hold is not None and endpoint == SEND:
            app.hold()               # a test's gate: the answer waits until it lets it go
        self._reply(200, answer)

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")


class FakeESMS:
    """eSMS's API on loopback, for tests and demos."""

    def __init__(
        self,
        *,
        api_key: str = "test-api-key",
        secret_key: str = "test-secret-key",
        brandnames: Iterable[str] = ("LOA",),
        balance: int = 1_000_000,
        price_per_part: int = 800,
        latency: float = 0.0,
        smsid_on_duplicate: bool = False,
        advertising_batch_only: bool = False,
        callback_glue: str = "auto",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.secret_key = secret_key
        self.brandnames = set(brandnames)
        self.balance = int(balance)
        self.price_per_part = int(price_per_part)
        self.latency = float(latency)
        self.smsid_on_duplicate = smsid_on_duplicate
        self.advertising_batch_only = advertising_batch_only
        self.callback_glue = callback_glue   # "auto": "&" if the URL has a query; or "?" always
        self.codes: dict[str, str] = {}      # phone -> CodeResult to answer instead
        self.hold: Callable[[], None] | None = None   # called before a send is answered
        self.user_id = 9999

        self.lock = threading.Lock()
        self.requests: list[RecordedRequest] = []
        self.sends: Counter[str] = Counter()      # RequestId -> send calls received (sandbox too)
        self.accepted: Counter[str] = Counter()   # RequestId -> times accepted as a new message
        self.messages: dict[str, FakeMessage] = {}
        self.sandboxed: list[dict[str, Any]] = []
        self._by_request_id: dict[str, str] = {}
        self._failures: deque[tuple[int, bytes]] = deque()

        self._httpd = _HTTPServer((host, port), _Handler)
        self._httpd.app = self
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------
    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._httpd.server_address[0]}:{self.port}{ROOT}"

    def start(self) -> FakeESMS:
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever,
                                            kwargs={"poll_interval": 0.05},
                                            name=f"fake-esms-{self.port}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> FakeESMS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- programming -----------------------------------------------------------
    def program(self, phone: str, code: str | int) -> None:
        """Answer CodeResult ``code`` to every send to ``phone``."""
        with self.lock:
            self.codes[_national(phone)] = str(code)

    def fail_next(self, status: int = 500, count: int = 1, body: bytes = b"<h1>Server Error</h1>") -> None:
        """Answer the next ``count`` requests with a bare HTTP ``status``, processing nothing."""
        with self.lock:
            self._failures.extend([(status, body)] * count)

    def _take_failure(self) -> tuple[int, bytes] | None:
        with self.lock:
            return self._failures.popleft() if self._failures else None

    def _record(self, req: RecordedRequest) -> None:
        with self.lock:
            self.requests.append(req)

    def requests_to(self, endpoint: str) -> list[RecordedRequest]:
        with self.lock:
            return [r for r in self.requests if r.endpoint == endpoint.strip("/")]

    @property
    def send_requests(self) -> list[RecordedRequest]:
        return self.requests_to(SEND)

    # -- endpoints ---------------------------------------------------------------
    def _authorized(self, body: Mapping[str, Any]) -> bool:
        return (str(body.get("ApiKey") or "") == self.api_key
                and str(body.get("SecretKey") or "") == self.secret_key)

    def _send(self, body: dict[str, Any]) -> dict[str, Any]:
        def error(code: str, text: str) -> dict[str, Any]:
            return {"CodeResult": code, "CountRegenerate": 0, "ErrorMessage": text}

        request_id = str(body.get("RequestId") or "")
        sandbox = str(body.get("Sandbox") or "0") == "1"
        with self.lock:
            if request_id:
                self.sends[request_id] += 1
            if not self._authorized(body):
                return error("101", "Authorize Failed")
            sms_type = str(body.get("SmsType") or "")
            if not sms_type:
                return error("300", "Missing SmsType")
            if sms_type not in KNOWN_TYPES:
                return error("118", "SmsType is invalid")
            phone = str(body.get("Phone") or "").strip()
            national = _national(phone)
            if not (national.startswith("0") and national.isdigit() and len(national) in (10, 11)):
                return error("108", "Phone number is not valid")
            if not sandbox and request_id and request_id in self._by_request_id:
                answer = {"CodeResult": "124", "CountRegenerate": 0, "ErrorMessage": "Request exist 1",
                          "SendStatus": self.messages[self._by_request_id[request_id]].send_status}
                if self.smsid_on_duplicate:
                    answer["SMSID"] = self._by_request_id[request_id]
                return answer
            brand = str(body.get("Brandname") or "")
            if sms_type in ("1", "2") and brand not in self.brandnames:
                return error("104", "Brand name code is not exist")
            if sms_type == "1" and self.advertising_batch_only:
                return error("107", "Each request has at least 30 numbers to be approved")
            forced = self.codes.get(national)
            if forced is not None and forced != "100":
                return error(forced, f"programmed CodeResult {forced}")
            content = str(body.get("Content") or "")
            if not content:
                return error("99", "Invalid request")
            unicode = str(body.get("IsUnicode") or "0") == "1"
            parts = _parts(content, unicode)
            price = parts * self.price_per_part
            smsid = uuid.uuid4().hex + "156"
            if sandbox:
                self.sandboxed.append({"SMSID": smsid, **{k: v for k, v in body.items()
                                                          if k not in ("ApiKey", "SecretKey")}})
                return {"CodeResult": "100", "CountRegenerate": 0, "SMSID": smsid, "IsSandbox": "True"}
            if self.balance < price:
                return error("103", "Balance not enough to send message")
            self.balance -= price
            self.messages[smsid] = FakeMessage(
                smsid=smsid, request_id=request_id, phone=phone, content=content, brandname=brand,
                sms_type=sms_type, unicode=unicode, parts=parts, price=price,
                callback_url=str(body.get("CallbackUrl") or "") or None,
            )
            if request_id:
                self._by_request_id[request_id] = smsid
                self.accepted[request_id] += 1
            return {"CodeResult": "100", "CountRegenerate": 0, "SMSID": smsid}

    def _balance(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            if not self._authorized(body):
                return {"Balance": 0, "CodeResponse": "101", "ErrorMessage": "Authorize Failed"}
            return {"Balance": self.balance, "CodeResponse": "100", "UserID": self.user_id}

    def _status(self, query: Mapping[str, str]) -> dict[str, Any]:
        smsid = query.get("RefId", "")
        with self.lock:
            if not self._authorized(query):
                return {"CodeResponse": "101", "SMSID": smsid}
            msg = self.messages.get(smsid)
            if msg is None:
                return {"CodeResponse": "105", "ErrorMessage": "Sms not found"}
            return {"CodeResponse": "100", "SMSID": smsid, "SendFailed": msg.failed,
                    "SendStatus": int(msg.send_status), "SendSuccess": msg.success,
                    "TotalPrice": float(msg.price), "TotalReceiver": 1, "TotalSent": 1}

    # -- callbacks ---------------------------------------------------------------
    def callback_url_for(self, smsid: str, status: int | str = 5, *, success: bool = True) -> str:
        """The GET eSMS would make for ``smsid`` reaching ``status``; updates the message."""
        with self.lock:
            msg = self.messages.get(smsid)
            if msg is None:
                raise KeyError(f"no stored message {smsid!r} (sandbox messages are not stored)")
            if not msg.callback_url:
                raise ValueError(f"message {smsid!r} was sent without CallbackUrl")
            msg.send_status = str(status)
            if msg.send_status == "5":
                msg.success, msg.failed = (1, 0) if success else (0, 1)
            elif msg.send_status == "4":
                msg.success, msg.failed = 0, 1
            params = {
                "SMSID": smsid, "SendFailed": str(msg.failed), "SendStatus": msg.send_status,
                "SendSuccess": str(msg.success), "TotalPrice": f"{msg.price:.4f}", "TotalReceiver": "1",
                "TotalSent": "1", "RequestId": msg.request_id, "TypeId": msg.sms_type,
                "telcoid": TELCO_BY_PREFIX.get(_national(msg.phone)[:3], "1"),
                "phonenumber": _national(msg.phone), "switchsmsid": "",
            }
            url = msg.callback_url
        glue = "?" if self.callback_glue == "?" or "?" not in url else "&"
        return f"{url}{glue}{urlencode(params)}"

    def deliver(self, smsid: str, status: int | str = 5, *, success: bool = True,
                timeout: float = 5.0) -> tuple[int, bytes]:
        """GET the message's CallbackUrl like eSMS does; return (HTTP status, body)."""
        url = self.callback_url_for(smsid, status, success=success)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (loopback/test URL)
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    # -- introspection -------------------------------------------------------------
    def message_for(self, request_id: str) -> FakeMessage | None:
        with self.lock:
            smsid = self._by_request_id.get(request_id)
            return self.messages.get(smsid) if smsid else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m providers.fakes.esms",
                                description="Run a loopback fake of eSMS.vn's brandname SMS API.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8767)
    p.add_argument("--brandname", default="LOA")
    p.add_argument("--latency", type=float, default=0.0)
    args = p.parse_args(argv)
    stop_on_ctrl_c()
    # Ctrl-C may come as soon as the address is out, before print() has returned
    with FakeESMS(host=args.host, port=args.port, brandnames=(args.brandname,), latency=args.latency) as fake, \
            contextlib.suppress(KeyboardInterrupt):
        print(f"fake eSMS at {fake.url}\nbrandname  = {args.brandname}\napi_key    = {fake.api_key}\n"
              f"secret_key = {fake.secret_key}   (export them; name them with api_key_env and secret_key_env)",
              flush=True)
        threading.Event().wait()   # until Ctrl-C: the server answers from its own threads
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
