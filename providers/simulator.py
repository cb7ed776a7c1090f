"""A simulated SMS/Zalo gateway for tests, demos and load runs.

Three layers share one world model:

* :class:`SimulatedNetwork` decides, deterministically from a seed, what happens
  to every message (transient failure, permanent refusal, delivery, install) and
  records every request it sees so tests can assert exactly-once delivery.
* :class:`SimulatorProvider` calls a network in-process.
* :class:`SimulatorServer` exposes a network as a small JSON HTTP API on
  loopback, and :class:`SimulatorHTTPProvider` talks to it with ``requests``,
  so the real network failure modes (timeouts, refused connections, 429s) can
  be exercised end to end.  ``GET /v1/messages/<key>`` answers what the network
  accepted under a key (404 ``SIM-NOMESSAGE`` if nothing), as a gateway that can
  be asked by our key does: loa reconciles ambiguous sends with it.

Run a standalone server with ``python -m providers.simulator --port 8765``.
"""

from __future__ import annotations

import argparse
import email.utils
import hashlib
import json
import os
import socket
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from urllib3.exceptions import NewConnectionError  # requests' own transport

from providers.base import (
    AuthError,
    ConfigError,
    DeliveryReceipt,
    MoneyError,
    NotReceived,
    OutgoingMessage,
    PermanentError,
    Provider,
    ProviderError,
    Response,
    RetryableError,
    SendResult,
    Setting,
    StateStore,
    ThrottledError,
)
from providers.http import Sessions

__all__ = [
    "SimulatedNetwork",
    "SimulatorHTTPNoDedupeProvider",
    "SimulatorHTTPProvider",
    "SimulatorProvider",
    "SimulatorServer",
    "mask_phone",
]

CODE_TRANSIENT = "SIM-503"
CODE_INVALID = "SIM-INVALID"
CODE_UNDELIVERED = "SIM-UNDELIV"
CODE_BADREQ = "SIM-BADREQ"
CODE_AUTH = "SIM-AUTH"
CODE_THROTTLED = "SIM-THROTTLED"
CODE_NOTFOUND = "SIM-NOTFOUND"
CODE_NO_MESSAGE = "SIM-NOMESSAGE"   # a lookup by key: no message was ever accepted with it
MESSAGE_PATH = "/v1/messages/"

# how long a receipt or response fetched over HTTP stays hidden before it is handed out
# again, unless its ack comes first
LEASE_SECONDS = 10.0


def mask_phone(phone: str) -> str:
    """Hide the middle of a phone number: "+84912345678" -> "+8491****678"."""
    if len(phone) <= 8:
        return "****"
    return f"{phone[:5]}****{phone[-3:]}"


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(value: Any) -> datetime:
    """Parse an ISO 8601 timestamp into an aware UTC datetime (naive = UTC)."""
    at = datetime.fromisoformat(str(value))
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC)


def _as_epoch(now: float | datetime | None) -> float:
    if now is None:
        return time.time()
    if isinstance(now, datetime):
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        return now.timestamp()
    return float(now)


def _as_bool(value: Any) -> bool:
    # Configuration files and CLI flags give strings; "false" must not be truthy.
    if isinstance(value, str):
        text = value.strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off", ""}:
            return False
        raise ValueError(f"not a boolean: {value!r}")
    return bool(value)


# --------------------------------------------------------------------------
# The world model
# --------------------------------------------------------------------------

class SimulatedNetwork:
    """A deterministic, thread-safe model of a gateway and its recipients.

    Every decision is a hash of the seed and the message key (or phone), so the
    same seed and the same keys reproduce the same fates in any order and from
    any number of threads.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        delivery_rate: float = 0.97,
        failure_rate: float = 0.0,
        permanent_rate: float = 0.0,
        install_rate: float = 0.0,
        latency_ms: float = 0,
        receipt_delay: float = 0.0,
        dedupe: bool = True,
    ) -> None:
        self.seed = int(seed)
        self.delivery_rate = self._rate("delivery_rate", delivery_rate)
        self.failure_rate = self._rate("failure_rate", failure_rate)
        self.permanent_rate = self._rate("permanent_rate", permanent_rate)
        self.install_rate = self._rate("install_rate", install_rate)
        self.latency_ms = self._non_negative("latency_ms", latency_ms)
        self.receipt_delay = self._non_negative("receipt_delay", receipt_delay)
        self.dedupe = _as_bool(dedupe)

        self._lock = threading.Lock()
        self.received: Counter[str] = Counter()   # key -> send calls that reached us
        self.accepted: Counter[str] = Counter()   # key -> times accepted as a new message
        self.messages: list[OutgoingMessage] = []  # every accepted message, in order
        self._by_key: dict[str, SendResult] = {}
        self._records: dict[str, SendResult] = {}   # key -> the last message accepted with it
        self._receipts: list[tuple[float, int, DeliveryReceipt]] = []
        self._responses: list[tuple[float, int, Response]] = []
        # leased over HTTP and not yet acknowledged: seq -> (lease expiry, entry); an
        # entry whose lease runs out is handed out again, so a client that dies between
        # fetching and recording loses nothing
        self._leased: dict[int, tuple[float, tuple[float, int, Any]]] = {}
        self._seq = 0

    # -- option checks ------------------------------------------------------
    @staticmethod
    def _rate(name: str, value: Any) -> float:
        rate = float(value)
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
        return rate

    @staticmethod
    def _non_negative(name: str, value: Any) -> float:
        number = float(value)
        if number < 0:
            raise ValueError(f"{name} must not be negative, got {value!r}")
        return number

    # -- deterministic dice ------------------------------------------------
    def _unit(self, *parts: object) -> float:
        """A reproducible number in [0, 1) for (seed, *parts)."""
        text = "\x1f".join(str(p) for p in (self.seed, *parts))
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64

    def _provider_id(self, key: str, serial: int) -> str:
        text = f"{self.seed}\x1fid\x1f{key}\x1f{serial}"
        return "sim-" + hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()

    def fails_transiently(self, key: str, attempt: int) -> bool:
        return self._unit("fail", key, attempt) < self.failure_rate

    def refuses(self, phone: str) -> bool:
        return self._unit("invalid", phone) < self.permanent_rate

    def delivers(self, key: str) -> bool:
        return self._unit("deliver", key) < self.delivery_rate

    def installs(self, key: str) -> bool:
        return self._unit("install", key) < self.install_rate

    # -- the gateway call ----------------------------------------------------
    def submit(self, message: OutgoingMessage) -> SendResult:
        """Accept ``message`` or raise RetryableError / PermanentError."""
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000.0)  # outside the lock: calls overlap
        with self._lock:
            self.received[message.key] += 1
            attempt = self.received[message.key]
            if self.dedupe and message.key in self._by_key:
                return self._by_key[message.key]
            if self.fails_transiently(message.key, attempt):
                raise RetryableError(
                    f"simulated transient failure (attempt {attempt})", code=CODE_TRANSIENT
                )
            if self.refuses(message.to):
                raise PermanentError(
                    f"recipient {mask_phone(message.to)} refused by the simulated network",
                    code=CODE_INVALID,
                )
            return self._accept(message)

    def _accept(self, message: OutgoingMessage) -> SendResult:
        # Caller holds the lock.
        self.accepted[message.key] += 1
        provider_id = self._provider_id(message.key, self.accepted[message.key])
        result = SendResult(
            provider_id=provider_id,
            status="sent",
            parts=message.parts,
            raw={"id": provider_id, "status": "accepted", "parts": message.parts},
        )
        self.messages.append(message)
        self._records[message.key] = result
        if self.dedupe:
            self._by_key[message.key] = result
        self._schedule(message, provider_id)
        return result

    def _schedule(self, message: OutgoingMessage, provider_id: str) -> None:
        due = time.time() + self.receipt_delay
        at = datetime.fromtimestamp(due, UTC)
        delivered = self.delivers(message.key)
        receipt = DeliveryReceipt(
            status="delivered" if delivered else "undelivered",
            provider_id=provider_id,
            key=message.key,
            at=at,
            error_code=None if delivered else CODE_UNDELIVERED,
            error_text=None if delivered else "simulated: handset unreachable",
        )
        self._seq += 1
        self._receipts.append((due, self._seq, receipt))
        if delivered and self.installs(message.key):
            response = Response(
                phone=message.to, type="installed", at=at, key=message.key, source="simulator"
            )
            self._seq += 1   # ack ids are shared by receipts and responses
            self._responses.append((due, self._seq, response))

    def lookup(self, key: str) -> SendResult | None:
        """The message accepted under ``key`` (the last one, without dedupe), or None if
        none ever was: a call refused, or one that never arrived, left no message."""
        with self._lock:
            return self._records.get(key)

    # -- draining ----------------------------------------------------------
    def take_receipts(self, now: float | datetime | None = None) -> list[DeliveryReceipt]:
        """Remove and return the receipts due at ``now`` (epoch seconds or datetime)."""
        with self._lock:
            due, self._receipts = self._split(self._receipts, _as_epoch(now))
        return due

    def take_responses(self, now: float | datetime | None = None) -> list[Response]:
        """Remove and return the recipient responses due at ``now``."""
        with self._lock:
            due, self._responses = self._split(self._responses, _as_epoch(now))
        return due

    def lease(self, kind: str, seconds: float, now: float | datetime | None = None) -> list[tuple[int, Any]]:
        """Hand out the due receipts (``kind="receipts"``) or responses as (ack id, item),
        each hidden from later leases for ``seconds`` unless :meth:`ack` settles it first."""
        at = _as_epoch(now)
        with self._lock:
            pool = self._receipts if kind == "receipts" else self._responses
            wanted = DeliveryReceipt if kind == "receipts" else Response
            for seq, (until, entry) in list(self._leased.items()):
                if until <= at and isinstance(entry[2], wanted):
                    del self._leased[seq]
                    pool.append(entry)
            ready = sorted((i for i in pool if i[0] <= at), key=lambda i: (i[0], i[1]))
            pool[:] = [i for i in pool if i[0] > at]
            for entry in ready:
                self._leased[entry[1]] = (at + seconds, entry)
        return [(entry[1], entry[2]) for entry in ready]

    def ack(self, ids: Iterable[int]) -> int:
        """Settle leased items for good; returns how many were still leased."""
        with self._lock:
            return sum(self._leased.pop(int(i), None) is not None for i in ids)

    @staticmethod
    def _split(items: list[tuple[float, int, Any]], now: float) -> tuple[list[Any], list[Any]]:
        ready = sorted((i for i in items if i[0] <= now), key=lambda i: (i[0], i[1]))
        later = [i for i in items if i[0] > now]
        return [i[2] for i in ready], later

    # -- introspection -------------------------------------------------------
    @property
    def total_received(self) -> int:
        with self._lock:
            return sum(self.received.values())

    @property
    def total_accepted(self) -> int:
        with self._lock:
            return sum(self.accepted.values())

    def pending(self) -> tuple[int, int]:
        """(receipts, responses) not yet drained, leased and unacknowledged ones included."""
        with self._lock:
            leased = [entry[2] for _, entry in self._leased.values()]
            return (len(self._receipts) + sum(isinstance(i, DeliveryReceipt) for i in leased),
                    len(self._responses) + sum(isinstance(i, Response) for i in leased))

    def options(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "delivery_rate": self.delivery_rate,
            "failure_rate": self.failure_rate,
            "permanent_rate": self.permanent_rate,
            "install_rate": self.install_rate,
            "latency_ms": self.latency_ms,
            "receipt_delay": self.receipt_delay,
            "dedupe": self.dedupe,
        }


NETWORK_OPTIONS = (
    "seed", "delivery_rate", "failure_rate", "permanent_rate",
    "install_rate", "latency_ms", "receipt_delay", "dedupe",
)


def _network_from(options: Mapping[str, Any]) -> SimulatedNetwork:
    return SimulatedNetwork(**{k: options[k] for k in NETWORK_OPTIONS if k in options})


# --------------------------------------------------------------------------
# In-process provider
# --------------------------------------------------------------------------

class SimulatorProvider(Provider):
    """Sends into an in-process :class:`SimulatedNetwork`.

    ``options`` may carry a ready ``network`` object (tests share one to inspect
    it); otherwise one is built from the numeric options.
    """

    type = "simulator"
    channels = ("sms", "zalo")
    rate = 50.0
    lookup_by_key = True
    settings = (
        Setting("seed", required=False, default=0, kind=int, help="seed of every simulated decision"),
        Setting("delivery_rate", required=False, default=0.97, kind=float, ge=0, le=1,
                help="share of accepted messages reported delivered"),
        Setting("failure_rate", required=False, default=0.0, kind=float, ge=0, le=1,
                help="share of send calls failing transiently"),
        Setting("permanent_rate", required=False, default=0.0, kind=float, ge=0, le=1,
                help="share of phone numbers refused permanently"),
        Setting("install_rate", required=False, default=0.0, kind=float, ge=0, le=1,
                help="share of delivered recipients who install"),
        Setting("latency_ms", required=False, default=0, kind=float, ge=0, help="delay per send call"),
        Setting("receipt_delay", required=False, default=0.0, kind=float, ge=0,
                help="seconds before receipts and responses can be fetched"),
        Setting("dedupe", required=False, default=True, kind=bool,
                help="a re-send with the same key returns the first message"),
    )

    def __init__(self, name: str, options: Mapping[str, Any], state: StateStore | None = None) -> None:
        super().__init__(name, options, state)
        network = self.options.get("network")
        if network is None:
            try:
                network = _network_from(self.options)
            except (TypeError, ValueError) as exc:
                raise self.error(ConfigError, f"bad simulator option: {exc}") from exc
        elif not isinstance(network, SimulatedNetwork):
            raise self.error(ConfigError, "option 'network' must be a SimulatedNetwork")
        self.network: SimulatedNetwork = network
        # Per instance: the answer depends on the configured dedupe option.
        self.dedupes_by_key = network.dedupe  # type: ignore[misc]

    def send(self, message: OutgoingMessage) -> SendResult:
        try:
            return self.network.submit(message)
        except ProviderError as exc:
            # Re-raise as our own error so it names this gateway.
            raise self.error(type(exc), exc.message, code=exc.code,
                             retry_after=exc.retry_after, ambiguous=exc.ambiguous) from None

    def fetch_receipts(self) -> list[DeliveryReceipt]:
        return self.network.take_receipts()

    def lookup(self, message_key: str, provider_id: str | None) -> SendResult | NotReceived:
        return self.network.lookup(message_key) or NotReceived(message_key)

    def fetch_responses(self) -> list[Response]:
        return self.network.take_responses()

    def check(self) -> str:
        net = self.network
        return (
            f"simulator seed={net.seed} delivery_rate={net.delivery_rate:g} "
            f"dedupe={net.dedupe}: {net.total_received} send calls received"
        )


# --------------------------------------------------------------------------
# Loopback HTTP server
# --------------------------------------------------------------------------

class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    app: SimulatorServer

    def process_request(self, request: Any, client_address: Any) -> None:
        self.app.opened(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.app.closed(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up is part of the simulation, not a
        # bug: stay quiet instead of printing a traceback to stderr.
        pass


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1: a connection stays open for the client's next request, as a real
    gateway's does; every answer says its Content-Length, and every body is read."""

    server: _HTTPServer
    server_version = "loa-simulator/1"
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    _body = b""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # tests and load runs must stay quiet

    # -- plumbing ------------------------------------------------------------
    def _reply(self, status: int, body: Mapping[str, Any],
               headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        # the head and the body in one write: two small writes on a kept-alive connection
        # can wait for the client's delayed ACK
        self._headers_buffer.append(b"\r\n" + data)
        self.flush_headers()

    def _error(self, status: int, code: str, message: str,
               headers: Mapping[str, str] | None = None) -> None:
        self._reply(status, {"error": {"code": code, "message": message}}, headers)

    def _authorized(self) -> bool:
        token = self.server.app.token
        if token and self.headers.get("Authorization", "") != f"Bearer {token}":
            self._error(401, CODE_AUTH, "missing or wrong bearer token")
            return False
        return True

    def _read_json(self) -> Any:
        return json.loads(self._body.decode("utf-8"))

    # -- routes --------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802
        if not self._authorized():
            return
        if self.path.startswith(MESSAGE_PATH):
            self._lookup(urllib.parse.unquote(self.path.split("?", 1)[0][len(MESSAGE_PATH):]))
            return
        net = self.server.app.network
        path = self.path.split("?", 1)[0]
        if path in ("/v1/receipts", "/v1/responses"):
            # leased, not taken: what is not acknowledged (POST /v1/acks) comes back
            kind = path.rsplit("/", 1)[1]
            try:
                seconds = float(parse_qs(urlsplit(self.path).query).get("lease", [self.server.app.lease])[0])
            except ValueError:
                self._error(400, CODE_BADREQ, "lease must be a number of seconds")
                return
            as_json = _receipt_json if kind == "receipts" else _response_json
            self._reply(200, {kind: [as_json(item) | {"ack": ack} for ack, item in net.lease(kind, seconds)]})
        elif path == "/v1/health":
            # "dedupe": whether a repeated key returns the first message; adapters check it
            self._reply(200, {"ok": True, "received": net.total_received,
                              "accepted": net.total_accepted, "dedupe": net.dedupe})
        else:
            self._error(404, CODE_NOTFOUND, f"no such endpoint: GET {path}")

    def do_POST(self) -> None:  # noqa: N802
        # read whatever the answer: what is left unread would be taken for the next request
        self._body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not self._authorized():
            return
        path = self.path.split("?", 1)[0]
        if path == "/v1/acks":
            try:
                ids = [int(i) for i in self._read_json()["acks"]]
            except (ValueError, TypeError, KeyError) as exc:
                self._error(400, CODE_BADREQ, f"bad request: body must be {{\"acks\": [ids]}} ({exc})")
                return
            self._reply(200, {"acked": self.server.app.network.ack(ids)})
            return
        if path != "/v1/messages":
            self._error(404, CODE_NOTFOUND, f"no such endpoint: POST {path}")
            return
        if self.server.app.should_throttle():
            self._error(429, CODE_THROTTLED, "too many requests", {"Retry-After": "1"})
            return
        try:
            message = _message_from_json(self._read_json())
        except (ValueError, TypeError, KeyError) as exc:
            self._error(400, CODE_BADREQ, f"bad request: {exc}")
            return
        if drop := self.server.app.should_drop(message.key):
            # the connection closes under the request, unanswered, as a kept-alive one that
            # timed out at the gateway just as the request came; "after": accepted first
            if drop == "after":
                self.server.app.network.submit(message)
            self.close_connection = True
            return
        self._submit(message)

    def _lookup(self, key: str) -> None:
        """``GET /v1/messages/<key>``: the message accepted under our key, or 404."""
        found = self.server.app.network.lookup(key)
        if found is None:
            self._error(404, CODE_NO_MESSAGE, f"no message with key {key!r}")
        else:
            self._reply(200, {"id": found.provider_id, "key": key, "status": "accepted", "parts": found.parts})

    def _submit(self, message: OutgoingMessage) -> None:
        try:
            result = self.server.app.network.submit(message)
        except RetryableError as exc:
            self._error(503, exc.code or CODE_TRANSIENT, exc.message)
        except PermanentError as exc:
            self._error(400, exc.code or CODE_INVALID, exc.message)
        else:
            self._reply(201, {"id": result.provider_id, "status": "accepted",
                              "parts": result.parts})


def _message_from_json(body: Any) -> OutgoingMessage:
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    missing = [f for f in ("key", "to") if not body.get(f)]
    if missing:
        raise ValueError(f"missing field(s): {', '.join(missing)}")
    return OutgoingMessage(
        key=str(body["key"]),
        to=str(body["to"]),
        channel=str(body.get("channel") or "sms"),
        text=str(body.get("text") or ""),
        encoding=str(body.get("encoding") or "GSM-7"),
        parts=int(body.get("parts") or 1),
        advertising=bool(body.get("advertising", False)),
        template_id=body.get("template_id"),
        template_data=dict(body.get("template_data") or {}),
    )


def _receipt_json(r: DeliveryReceipt) -> dict[str, Any]:
    return {
        "id": r.provider_id,
        "key": r.key,
        "status": r.status,
        "at": _iso(r.at) if r.at else None,
        "error_code": r.error_code,
        "error_text": r.error_text,
    }


def _response_json(r: Response) -> dict[str, Any]:
    return {"phone": r.phone, "type": r.type, "at": _iso(r.at), "key": r.key}


class SimulatorServer:
    """A :class:`SimulatedNetwork` behind a loopback JSON HTTP API.

    ``with SimulatorServer(seed=1, token="t") as srv: srv.url`` binds at once
    (port 0 picks a free port), serves from a daemon thread and stops on exit.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        throttle_every: int = 0,
        drop_every: int = 0,
        drop: str = "before",
        lease: float = LEASE_SECONDS,
        network: SimulatedNetwork | None = None,
        **network_options: Any,
    ) -> None:
        self.network = network if network is not None else SimulatedNetwork(**network_options)
        self.token = token
        self.throttle_every = int(throttle_every)
        # every drop_every-th message's first call: its connection is closed unanswered, the
        # message accepted first (drop="after") or not (drop="before")
        if drop not in ("before", "after"):
            raise ValueError(f"drop must be 'before' or 'after', got {drop!r}")
        self.drop_every, self.drop = int(drop_every), drop
        self._keys: set[str] = set()   # keys of the send calls seen, for drop_every
        self.connections = 0          # TCP connections accepted so far
        self._open: set[Any] = set()  # connections open now, closed by stop()
        self.lease = float(lease)   # seconds a fetched receipt waits for its ack
        self._posts = 0
        self._count_lock = threading.Lock()
        self._httpd = _HTTPServer((host, port), _Handler)
        self._httpd.app = self
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def should_throttle(self) -> bool:
        """True for every ``throttle_every``-th POST."""
        if self.throttle_every <= 0:
            return False
        with self._count_lock:
            self._posts += 1
            return self._posts % self.throttle_every == 0

    def should_drop(self, key: str) -> str | None:
        """``"before"`` or ``"after"`` for every ``drop_every``-th message's first call (a call
        sent again is answered); else None."""
        if self.drop_every <= 0:
            return None
        with self._count_lock:
            if key in self._keys:
                return None
            self._keys.add(key)
            return self.drop if len(self._keys) % self.drop_every == 0 else None

    def stop_connections(self) -> None:
        """Close the connections kept alive, as a gateway's idle timeout does."""
        with self._count_lock:
            still, self._open = list(self._open), set()
        for conn in still:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def opened(self, conn: Any) -> None:
        with self._count_lock:
            self.connections += 1
            self._open.add(conn)

    def closed(self, conn: Any) -> None:
        with self._count_lock:
            self._open.discard(conn)

    def start(self) -> SimulatorServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                name=f"simulator-{self.port}", daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, and close the connections kept alive: a stopped server answers
        nothing, on new connections or on old ones."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()
        self.stop_connections()

    def serve_forever(self) -> None:
        """Serve in the calling thread (the standalone command)."""
        self._httpd.serve_forever(poll_interval=0.2)

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------
# HTTP provider
# --------------------------------------------------------------------------

class SimulatorHTTPProvider(Provider):
    """Talks to a :class:`SimulatorServer` (or anything speaking its API).

    The type declares that the server deduplicates by key, as a real gateway's adapter
    declares what its service does: the dispatcher then re-sends a message whose first
    call may or may not have arrived.  No setting can say otherwise; :meth:`check` asks
    the server and refuses one started with ``--no-dedupe``, whose stand-in is the type
    ``simulator_http_nodedupe``.
    """

    type = "simulator_http"
    channels = ("sms", "zalo")
    rate = 50.0
    dedupes_by_key = True  # the server returns the first id for a repeated key
    lookup_by_key = True   # GET /v1/messages/<key>
    settings = (
        Setting("url", required=True, kind=str, help="base URL, e.g. http://127.0.0.1:8765"),
        Setting("token", required=False, secret=True, help="bearer token, if the server wants one"),
        Setting("timeout", required=False, default=5.0, kind=float, gt=0, help="seconds per HTTP request"),
    )

    def __init__(self, name: str, options: Mapping[str, Any], state: StateStore | None = None) -> None:
        super().__init__(name, options, state)
        url = str(self.options.get("url") or "").rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise self.error(ConfigError, f"setting 'url' must be an http(s) URL, got {url!r}")
        self.url = url
        try:
            timeout = float(self.options.get("timeout", 5.0))
        except (TypeError, ValueError):
            raise self.error(ConfigError, "setting 'timeout' must be a number") from None
        if timeout <= 0:
            raise self.error(ConfigError, "setting 'timeout' must be positive")
        # Connect fails fast; read gets the full budget because the gateway may be slow.
        self.timeout: tuple[float, float] = (min(timeout, 3.05), timeout)
        self.session = Sessions()   # one per sender thread, connections kept alive
        self.session.headers["Accept"] = "application/json"
        self._acks: dict[Any, list[int]] = {}
        self._acks_lock = threading.Lock()
        token = self.options.get("token")
        if token is None and self.options.get("token_env"):
            token = os.environ.get(str(self.options["token_env"]))
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    # -- calls ---------------------------------------------------------------
    def send(self, message: OutgoingMessage) -> SendResult:
        body = {
            "key": message.key,
            "to": message.to,
            "channel": message.channel,
            "text": message.text,
            "encoding": message.encoding,
            "parts": message.parts,
            "advertising": message.advertising,
            "template_id": message.template_id,
            "template_data": dict(message.template_data),
        }
        resp = self._request("POST", "/v1/messages", json=body)
        data = self._json_or_raise(resp)
        provider_id = data.get("id") if isinstance(data, dict) else None
        if not provider_id:
            raise self.error(RetryableError, f"HTTP {resp.status_code}: answer has no message id",
                             ambiguous=True)
        parts = data.get("parts")
        return SendResult(provider_id=str(provider_id), status="sent",
                          parts=int(parts) if parts is not None else None, raw=data)

    def fetch_receipts(self) -> list[DeliveryReceipt]:
        data = self._get_json("/v1/receipts")
        return self._leased([
            (item.get("ack"), DeliveryReceipt(
                status=str(item["status"]),
                provider_id=item.get("id"),
                key=item.get("key"),
                at=_parse_time(item["at"]) if item.get("at") else None,
                error_code=item.get("error_code"),
                error_text=item.get("error_text"),
            ))
            for item in data.get("receipts", ())
        ])

    def fetch_responses(self) -> list[Response]:
        data = self._get_json("/v1/responses")
        return self._leased([
            (item.get("ack"), Response(phone=str(item["phone"]), type=str(item["type"]),
                                       at=_parse_time(item["at"]), key=item.get("key"), source=self.name))
            for item in data.get("responses", ())
        ])

    def _leased(self, items: list[tuple[Any, Any]]) -> list[Any]:
        # the server hides what it handed out until acknowledged; remember each item's ack
        # id so that receipts_recorded acknowledges exactly what loa has committed
        with self._acks_lock:
            for ack, item in items:
                if ack is not None:
                    self._acks.setdefault(item, []).append(int(ack))
        return [item for _, item in items]

    def receipts_recorded(self, receipts: Sequence[DeliveryReceipt], responses: Sequence[Response]) -> None:
        with self._acks_lock:
            acks = [ack for item in (*receipts, *responses) for ack in self._acks.pop(item, ())]
        if acks:
            self._json_or_raise(self._request("POST", "/v1/acks", json={"acks": acks}))

    def lookup(self, message_key: str, provider_id: str | None) -> SendResult | NotReceived:
        """``GET /v1/messages/<key>``: the server records every message it accepts by key."""
        resp = self._request("GET", MESSAGE_PATH + urllib.parse.quote(message_key, safe=""))
        if resp.status_code == 404:
            try:
                code, _ = _error_fields(resp.json())
            except ValueError:
                code = None
            if code == CODE_NO_MESSAGE:   # this very answer, not a wrong URL's 404
                return NotReceived(message_key)
        data = self._json_or_raise(resp)
        if not isinstance(data, dict) or not data.get("id"):
            raise self.error(RetryableError, f"lookup of {message_key}: answer has no message id")
        parts = data.get("parts")
        return SendResult(provider_id=str(data["id"]), status="sent",
                          parts=int(parts) if parts is not None else None, raw=data)

    def check(self) -> str:
        data = self._get_json("/v1/health")
        dedupes = data.get("dedupe")
        if self.dedupes_by_key and dedupes is not True:
            said = ("does not deduplicate by key (started with --no-dedupe)" if dedupes is False
                    else "does not say whether it deduplicates by key")
            raise self.error(ConfigError, (
                f"the simulator at {self.url} {said}, but gateway type {self.type!r} re-sends a message "
                "whose first call may have arrived, so a crash would send it twice; restart the server "
                "without --no-dedupe, or configure type = \"simulator_http_nodedupe\""))
        state = "ok" if data.get("ok") else "NOT ok"
        kind = "deduplicates by key" if dedupes else "does not deduplicate by key"
        return (f"simulator at {self.url}: {state}, {kind}, "
                f"{data.get('received', '?')} send calls received")

    def close(self) -> None:
        self.session.close()

    # -- transport and error mapping ------------------------------------------
    def _request(self, method: str, path: str, **kw: Any) -> requests.Response:
        try:
            return self.session.request(method, self.url + path, resend=self.dedupes_by_key,
                                        timeout=self.timeout, **kw)
        except requests.ConnectTimeout as exc:
            raise self.error(RetryableError, f"gateway unreachable: connect timeout ({exc})",
                             ambiguous=False) from exc
        except requests.ReadTimeout as exc:
            raise self.error(RetryableError,
                             "no answer within the read timeout; the request may have arrived",
                             ambiguous=True) from exc
        except requests.ConnectionError as exc:
            raise self._connection_error(exc) from exc
        except requests.RequestException as exc:
            raise self.error(RetryableError, f"HTTP request failed: {exc}", ambiguous=True) from exc

    def _connection_error(self, exc: requests.ConnectionError) -> ProviderError:
        # Refused / DNS failure: nothing was sent.  A connection dropped after the
        # request was written may have been processed, so that one is ambiguous.
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        if isinstance(reason, NewConnectionError):
            return self.error(RetryableError, f"gateway unreachable at {self.url}: {reason}",
                              ambiguous=False)
        return self.error(RetryableError, f"connection lost mid-request: {exc}", ambiguous=True)

    def _get_json(self, path: str) -> dict[str, Any]:
        data = self._json_or_raise(self._request("GET", path))
        if not isinstance(data, dict):
            raise self.error(RetryableError, f"GET {path}: answer is not a JSON object")
        return data

    def _json_or_raise(self, resp: requests.Response) -> Any:
        status = resp.status_code
        try:
            data = resp.json()
        except ValueError:
            data = None
        if 200 <= status < 300:
            if data is None:
                raise self.error(RetryableError,
                                 f"HTTP {status} with a non-JSON body: {_snippet(resp)}",
                                 ambiguous=True)
            return data
        raise self._status_error(resp, data)

    def _status_error(self, resp: requests.Response, data: Any) -> ProviderError:
        status = resp.status_code
        code, text = _error_fields(data)
        detail = f"HTTP {status}: {code or '-'} {text or _snippet(resp)}".rstrip()
        if status == 429:
            return self.error(ThrottledError, detail, code=code or status,
                              retry_after=_retry_after(resp.headers.get("Retry-After")))
        if status in (401, 403):
            return self.error(AuthError, detail, code=code or status)
        if status == 402:
            return self.error(MoneyError, detail, code=code or status)
        if data is None:
            # Not the simulator's JSON (a proxy page, a wrong URL): do not let it
            # fail messages for good; retry and let the operator see the text.
            return self.error(RetryableError, f"HTTP {status} with a non-JSON body: "
                              f"{_snippet(resp)}", code=status, ambiguous=status >= 500)
        if status >= 500:
            # 503 is the simulator's "not accepted"; other 5xx may follow acceptance.
            return self.error(RetryableError, detail, code=code or status,
                              ambiguous=status != 503)
        if status in (400, 404, 422):
            return self.error(PermanentError, detail, code=code or status)
        return self.error(RetryableError, f"unexpected {detail}", code=code or status,
                          ambiguous=True)


class SimulatorHTTPNoDedupeProvider(SimulatorHTTPProvider):
    """The simulator over HTTP standing in for a gateway that does not deduplicate (Twilio,
    SMPP): a message whose call may have arrived is marked ``unknown``, never re-sent.
    The server may be started with ``--no-dedupe`` or without it."""

    type = "simulator_http_nodedupe"
    dedupes_by_key = False


def _error_fields(data: Any) -> tuple[str | None, str | None]:
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        err = data["error"]
        code = err.get("code")
        return (None if code is None else str(code)), err.get("message")
    return None, None


def _snippet(resp: requests.Response, limit: int = 120) -> str:
    kind = resp.headers.get("Content-Type", "no content type")
    text = " ".join(resp.text.split())[:limit]
    return f"({kind}) {text!r}"


def _retry_after(value: str | None) -> float | None:
    """Retry-After is delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


# --------------------------------------------------------------------------
# Standalone command
# --------------------------------------------------------------------------

def _parse_args(argv: Iterable[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m providers.simulator",
                                description="Run the loa gateway simulator over HTTP.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--delivery-rate", type=float, default=0.97)
    p.add_argument("--failure-rate", type=float, default=0.0)
    p.add_argument("--permanent-rate", type=float, default=0.0)
    p.add_argument("--install-rate", type=float, default=0.0)
    p.add_argument("--latency-ms", type=float, default=0)
    p.add_argument("--receipt-delay", type=float, default=0.0)
    p.add_argument("--lease", type=float, default=LEASE_SECONDS,
                   help="seconds a fetched receipt or response waits for its ack before it is handed out again")
    p.add_argument("--no-dedupe", action="store_true", help="treat every call as a new message")
    p.add_argument("--throttle-every", type=int, default=0, help="answer every Nth POST with 429")
    p.add_argument("--token", default=os.environ.get("SIMULATOR_TOKEN"),
                   help="require this bearer token (default: $SIMULATOR_TOKEN)")
    return p.parse_args(None if argv is None else list(argv))


def main(argv: Iterable[str] | None = None) -> int:
    args = _parse_args(argv)
    server = SimulatorServer(
        host=args.host, port=args.port, token=args.token, throttle_every=args.throttle_every,
        lease=args.lease, seed=args.seed, delivery_rate=args.delivery_rate, failure_rate=args.failure_rate,
        permanent_rate=args.permanent_rate, install_rate=args.install_rate,
        latency_ms=args.latency_ms, receipt_delay=args.receipt_delay, dedupe=not args.no_dedupe,
    )
    print(f"simulator listening on {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
