"""Twilio Programmable Messaging (SMS) through the official ``twilio`` SDK.

One :class:`OutgoingMessage` is one ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``.
The API has no idempotency key, so ``dedupes_by_key`` is false: a send whose
outcome is unknown (a read timeout, a dropped connection, a 5xx other than
503) is reported ``ambiguous=True`` and the dispatcher does not re-send it
through this gateway.

Settings
--------

=====================  ===========================================================
``account_sid``        Account SID, ``AC`` + 32 hex (or ``account_sid_env``)
``auth_token``         secret: always ``auth_token_env = "VARIABLE"`` in configuration
``from_number``        sender: a Twilio number (E.164), short code or alphanumeric ID
``messaging_service_sid``  sender: a Messaging Service ``MG...``; exactly one of the two
``status_callback``    public URL of loa's Twilio webhook; Twilio posts receipts there.
                       loa appends ``loakey=<message key>`` so a receipt can be matched
                       even when the send itself timed out
``validity_period``    seconds (1..36000) a message may wait in Twilio's queue
``timeout``            seconds per HTTP request (connect and read), default 10
``base_url``           replaces ``https://api.twilio.com`` (tests, egress proxies)
=====================  ===========================================================

``TWILIO_REGION`` / ``TWILIO_EDGE`` in the environment would make the SDK
rewrite every host (``api.sydney.au1.twilio.com``); the adapter clears both on
its client, so the configured ``base_url`` (or api.twilio.com) is always used.

Error mapping
-------------

Twilio answers a refused request with an HTTP status and a JSON body
``{"code": 21211, "message": ..., "more_info": ..., "status": 400}``.  The
Twilio code decides the class when it is in this table (sources: the
``https://www.twilio.com/docs/api/errors/<code>`` pages):

=====  ===============================================================  =================
code   Twilio's meaning                                                 class
=====  ===============================================================  =================
10001  Account is not active (balance at or below zero)                 MoneyError
20003  Authenticate: wrong Account SID / Auth Token (HTTP 401)          AuthError
20005  Account not active (out of funds, trial not activated)           MoneyError
20403  403 Forbidden: account suspended or closed                       AuthError
20429  Too many concurrent requests (HTTP 429; never processed)         ThrottledError
21211  Invalid 'To' phone number                                        PermanentError
21265  'To' number is a short code                                      PermanentError
21266  'To' and 'From' are the same number                              PermanentError
21408  Geo permission for the destination region is disabled            ConfigError
21601  'From' is not an SMS-capable number of this account              ConfigError
21602  Message body is required                                         ConfigError
21603  'From' or 'MessagingServiceSid' is required                      ConfigError
21604  'To' phone number is required                                    PermanentError
21606  'From' is not a message-capable Twilio number for this dest.     ConfigError
21608  'To' is not verified (trial account / no compliance profile)     ConfigError
21610  Recipient replied STOP (unsubscribed from this sender)           OptedOutError
21611  'From' has more than 10 hours of messages queued                 ThrottledError
21612  'To' not reachable from this 'From' (routing, sender rules)      PermanentError
21614  'To' is not a valid mobile number                                PermanentError
21617  Body exceeds 1600 characters                                     PermanentError
21624  Invalid ValidityPeriod                                           ConfigError
21635  'To' is a landline                                               PermanentError
21659  'From' is not a Twilio number / short code country mismatch      ConfigError
21660  'From' does not belong to this account                           ConfigError
21701  Messaging Service does not exist (for this account)              ConfigError
21705  Messaging Service SID is invalid                                 ConfigError
30001  Queue overflow                                                   ThrottledError
30002  Account suspended                                                MoneyError
30005  Unknown destination handset                                      PermanentError
30006  Landline or unreachable carrier                                  PermanentError
30007  Message filtered by the carrier                                  PermanentError
90007  Invalid validity period value                                    ConfigError
=====  ===============================================================  =================

**21610 is the opt-out signal**: an OptedOutError (a PermanentError) with
``code="21610"``.  The subscriber sent STOP to our sender and Twilio will refuse
every message until they send START, so the engine suppresses the message and
opts the number out as it would for an inbound "TC".  The 3xxxx codes
normally arrive asynchronously, as ``ErrorCode`` of an undelivered receipt;
they are in the table for the rare synchronous answer.

Any other code falls back on the HTTP status: 401/403 AuthError, 404
ConfigError (wrong account or base URL), 429 ThrottledError (``retry_after``
from ``Retry-After``), 503 RetryableError, other 5xx RetryableError with
``ambiguous=True`` on a send (Twilio may have created the message), other 4xx
PermanentError.  Transport failures: refused / unresolvable / connect timeout
is RetryableError (nothing sent); a read timeout or a connection dropped after
the request was written is RetryableError(ambiguous=True).

Every error carries Twilio's code and message; phone numbers in Twilio's text
are masked ("+8491****678").
"""

from __future__ import annotations

import email.utils
import logging
import os
import re
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from urllib3.exceptions import NewConnectionError

from providers.base import (
    AuthError,
    ConfigError,
    DeliveryReceipt,
    InboundMessage,
    MoneyError,
    NotReceived,
    OptedOutError,
    OutgoingMessage,
    PermanentError,
    Provider,
    ProviderError,
    RetryableError,
    SendResult,
    Setting,
    StateStore,
    ThrottledError,
    WebhookRejected,
    WebhookRequest,
    WebhookResult,
)
from providers.http import Sessions

try:  # RFC 9457 errors of newer services; absent from early twilio 9.x releases
    from twilio.base.exceptions import TwilioServiceException
except ImportError:  # pragma: no cover
    class TwilioServiceException(TwilioException):  # type: ignore[no-redef]
        status: int = 0
        code: int | None = None
        title: str = ""
        detail: str | None = None

__all__ = ["ERROR_CLASSES", "TwilioProvider", "mask_numbers"]

API_HOST = "https://api.twilio.com"
KEY_PARAM = "loakey"   # query parameter added to status_callback: our message key
MAX_VALIDITY = 36000   # seconds; Twilio errors 21624 / 90007

# Twilio error code -> class.  Keep in step with the table in the module docstring.
ERROR_CLASSES: dict[int, type[ProviderError]] = {
    10001: MoneyError,
    20003: AuthError,
    20005: MoneyError,
    20403: AuthError,
    20429: ThrottledError,
    21211: PermanentError,
    21265: PermanentError,
    21266: PermanentError,
    21408: ConfigError,
    21601: ConfigError,
    21602: ConfigError,
    21603: ConfigError,
    21604: PermanentError,
    21606: ConfigError,
    21608: ConfigError,
    21610: OptedOutError,
    21611: ThrottledError,
    21612: PermanentError,
    21614: PermanentError,
    21617: PermanentError,
    21624: ConfigError,
    21635: PermanentError,
    21659: ConfigError,
    21660: ConfigError,
    21701: ConfigError,
    21705: ConfigError,
    30001: ThrottledError,
    30002: MoneyError,
    30005: PermanentError,
    30006: PermanentError,
    30007: PermanentError,
    90007: ConfigError,
}

# Message statuses (Message resource): which ones are final, and how loa reads them.
DELIVERED = frozenset({"delivered", "read"})
UNDELIVERED = frozenset({"undelivered", "failed", "canceled"})
PENDING = frozenset({"queued", "accepted", "scheduled", "sending", "sent", "partially_delivered"})
INBOUND = frozenset({"", "received", "receiving"})

TWIML_EMPTY = b'<?xml version="1.0" encoding="UTF-8"?><Response/>'

_ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
_SERVICE_SID = re.compile(r"^MG[0-9a-fA-F]{32}$")
_SDK_PREFIX = re.compile(r"^Unable to \w+ record(?::\s*)?", re.I)
_NUMBER = re.compile(r"\+?\d[\d\s().-]{6,}\d")

# The SDK logs every request line and header at INFO; keep that out of campaign logs.
_http_log = logging.getLogger(__name__ + ".http")
_http_log.setLevel(logging.WARNING)


def _mask_one(number: str) -> str:
    digits = re.sub(r"[^\d+]", "", number)
    if len(digits) <= 8:
        return "****"
    return f"{digits[:5]}****{digits[-3:]}"


def mask_numbers(text: str) -> str:
    """Mask every phone-number-like run in ``text``: "+84912345678" -> "+8491****678"."""
    return _NUMBER.sub(lambda m: _mask_one(m.group(0)), text)


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


def _int_or_none(value: Any) -> int | None:
    try:
        number = int(str(value))
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _float_or_none(value: Any) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class _HttpClient(TwilioHttpClient):
    """TwilioHttpClient that remembers, per thread, the last response.

    TwilioRestException carries no headers; a 429's ``Retry-After`` is read
    from the response this thread received last.
    """

    def __init__(self, timeout: float) -> None:
        self.sessions = Sessions()   # one per sender thread, connections kept alive
        super().__init__(timeout=timeout, logger=_http_log)
        self._local = threading.local()

    @property
    def session(self) -> Any:
        """This thread's session (TwilioHttpClient sends through ``self.session``)."""
        return self.sessions.get()

    @session.setter
    def session(self, value: Any) -> None:
        if value is not None:   # the one TwilioHttpClient makes for all threads: not used
            value.close()

    def request(self, *args: Any, **kwargs: Any) -> Any:
        self._local.response = None
        response = super().request(*args, **kwargs)
        self._local.response = response
        return response

    def last_header(self, name: str) -> str | None:
        response = getattr(self._local, "response", None)
        headers = getattr(response, "headers", None) or {}
        lowered = name.lower()
        return next((str(v) for k, v in headers.items() if k.lower() == lowered), None)


class TwilioProvider(Provider):
    """SMS through Twilio's Messages API.  See the module docstring for the error table.

    A refusal with Twilio code 21610 (the recipient texted STOP to our sender)
    is an OptedOutError: the engine suppresses the message and the number.
    """

    type = "twilio"
    channels = ("sms",)
    rate = 10.0
    dedupes_by_key = False  # the Messages API has no idempotency key
    settings = (
        Setting("account_sid", required=True, kind=str,
                help="Account SID (AC...); account_sid_env reads it from the environment"),
        Setting("auth_token", required=True, secret=True, help="Auth Token of the account"),
        Setting("from_number", required=False, kind=str,
                help="sender: Twilio number in E.164, short code or alphanumeric sender ID"),
        Setting("messaging_service_sid", required=False, kind=str,
                help="sender: Messaging Service SID (MG...), instead of from_number"),
        Setting("status_callback", required=False, kind=str,
                help="public URL of loa's Twilio webhook, for delivery receipts"),
        Setting("validity_period", required=False, kind=int, ge=1, le=36000,
                help="seconds (1..36000) a message may wait in Twilio's queue"),
        Setting("timeout", required=False, default=10.0, kind=float, gt=0, help="seconds per HTTP request"),
        Setting("base_url", required=False, kind=str,
                help="API base URL instead of https://api.twilio.com (tests, proxies)"),
    )

    def __init__(self, name: str, options: Mapping[str, Any], state: StateStore | None = None) -> None:
        super().__init__(name, options, state)
        self.account_sid = self._text("account_sid")
        self.auth_token = self._text("auth_token")
        if not self.account_sid:
            raise self.error(ConfigError, "setting 'account_sid' is required")
        if not _ACCOUNT_SID.match(self.account_sid):
            raise self.error(ConfigError, "setting 'account_sid' must be 'AC' followed by 32 hex digits")
        if not self.auth_token:
            raise self.error(ConfigError, "setting 'auth_token' is required (auth_token_env = \"VARIABLE\")")

        self.from_number = self._text("from_number")
        self.messaging_service_sid = self._text("messaging_service_sid")
        if bool(self.from_number) == bool(self.messaging_service_sid):
            raise self.error(ConfigError,
                             "set exactly one of 'from_number' and 'messaging_service_sid'")
        if self.messaging_service_sid and not _SERVICE_SID.match(self.messaging_service_sid):
            raise self.error(ConfigError,
                             "setting 'messaging_service_sid' must be 'MG' followed by 32 hex digits")

        self.status_callback = self._text("status_callback")
        if self.status_callback and not _is_http_url(self.status_callback):
            raise self.error(ConfigError, "setting 'status_callback' must be an http(s) URL")

        self.validity_period = self._validity_period(self.options.get("validity_period"))
        self.timeout = self._timeout(self.options.get("timeout", 10.0))

        base_url = self._text("base_url")
        if base_url and not _is_http_url(base_url):
            raise self.error(ConfigError, f"setting 'base_url' must be an http(s) URL, got {base_url!r}")
        self.base_url = (base_url or API_HOST).rstrip("/")

        self._http = _HttpClient(self.timeout)
        self.client = Client(self.account_sid, self.auth_token, http_client=self._http)
        # TWILIO_REGION / TWILIO_EDGE would rewrite every host; this adapter talks to
        # base_url (or api.twilio.com) and nothing else.
        self.client.region = None
        self.client.edge = None
        self.client.api.base_url = self.base_url
        self.client.api.v2010  # noqa: B018 - built now, not lazily by two threads at once
        self._validator = RequestValidator(self.auth_token)

    # -- settings ------------------------------------------------------------
    def _text(self, name: str) -> str:
        value = self.options.get(name)
        if value is None and self.options.get(f"{name}_env"):
            value = os.environ.get(str(self.options[f"{name}_env"]))
        return "" if value is None else str(value).strip()

    def _validity_period(self, value: Any) -> int | None:
        if value in (None, ""):
            return None
        try:
            seconds = int(str(value))
        except ValueError:
            raise self.error(ConfigError, "setting 'validity_period' must be a whole number of seconds") from None
        if not 1 <= seconds <= MAX_VALIDITY:
            raise self.error(ConfigError,
                             f"setting 'validity_period' must be between 1 and {MAX_VALIDITY} seconds")
        return seconds

    def _timeout(self, value: Any) -> float:
        try:
            timeout = float(value)
        except (TypeError, ValueError):
            raise self.error(ConfigError, "setting 'timeout' must be a number") from None
        if timeout <= 0:
            raise self.error(ConfigError, "setting 'timeout' must be positive")
        return timeout

    def _callback_for(self, key: str) -> str | None:
        if not self.status_callback:
            return None
        parts = urlsplit(self.status_callback)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != KEY_PARAM]
        query.append((KEY_PARAM, key))
        return urlunsplit(parts._replace(query=urlencode(query)))

    # -- calls ---------------------------------------------------------------
    def send(self, message: OutgoingMessage) -> SendResult:
        if message.channel not in self.channels:
            raise self.error(ConfigError, f"gateway type twilio sends SMS only, not {message.channel!r}")
        kwargs: dict[str, Any] = {"to": message.to, "body": message.text}
        if self.messaging_service_sid:
            kwargs["messaging_service_sid"] = self.messaging_service_sid
        else:
            kwargs["from_"] = self.from_number
        callback = self._callback_for(message.key)
        if callback:
            kwargs["status_callback"] = callback
        if self.validity_period is not None:
            kwargs["validity_period"] = self.validity_period
        created = self._call(lambda: self._messages().create(**kwargs), sending=True)
        sid = getattr(created, "sid", None)
        if not sid:
            raise self.error(RetryableError, "Twilio accepted the request but returned no message SID",
                             ambiguous=True)
        return self._result(created)

    def check(self) -> str:
        account = self._call(lambda: self.client.api.v2010.accounts(self.account_sid).fetch(),
                             sending=False)
        name = account.friendly_name or self.account_sid
        status = str(account.status or "unknown")
        if status == "suspended":
            raise self.error(MoneyError, f"account {name} is suspended (balance or policy)")
        if status == "closed":
            raise self.error(AuthError, f"account {name} is closed")
        return f"account {name} ({status})"

    def lookup(self, message_key: str, provider_id: str | None) -> DeliveryReceipt | SendResult | None:
        """Twilio's record of a message by SID; without a SID there is nothing to look up."""
        if not provider_id:
            return None
        try:
            record = self._call(lambda: self._messages(provider_id).fetch(), sending=False)
        except ProviderError as exc:
            if exc.code == "20404":
                return None
            raise
        status = str(record.status or "")
        if status in DELIVERED or status in UNDELIVERED:
            delivered = status in DELIVERED
            code = record.error_code
            return DeliveryReceipt(
                status="delivered" if delivered else "undelivered",
                provider_id=record.sid or provider_id,
                key=message_key,
                at=_aware(record.date_updated),
                error_code=None if delivered or code is None else str(code),
                error_text=None if delivered else (record.error_message or status),
            )
        return self._result(record)

    def search(self, message_key: str, to: str, since: datetime, known: frozenset[str]
               ) -> DeliveryReceipt | SendResult | NotReceived | None:
        """Twilio's list of messages to ``to`` (``GET .../Messages.json?To=``, most recent
        first), read back to ``since``.  Twilio creates a Message resource for every request
        it accepts, so an empty list (after the settling delay) means it never got ours.
        The list is not filtered by DateSent: a queued message has no date_sent yet."""
        candidates = []
        page = self._call(lambda: self._messages().page(to=to, page_size=50), sending=False)
        while page is not None:
            for record in page:
                created = _aware(record.date_created)
                if created is not None and created < since:
                    page = None
                    break
                if record.sid in known or not str(record.direction or "").startswith("outbound"):
                    continue
                if self.from_number and record.from_ != self.from_number:
                    continue
                if self.messaging_service_sid and record.messaging_service_sid not in (None,
                                                                                        self.messaging_service_sid):
                    continue
                candidates.append(record)
                if len(candidates) > 1:
                    return None    # two messages to one number: which is ours cannot be told
            if page is not None:
                page = self._call(page.next_page, sending=False)
        if not candidates:
            return NotReceived(message_key, f"Twilio lists no message to this number since {since:%Y-%m-%d %H:%M} UTC")
        return self.lookup(message_key, candidates[0].sid)

    def webhook(self, request: WebhookRequest) -> WebhookResult:
        """A status callback (receipt) or an incoming SMS, both signed by Twilio."""
        fields = self._fields(request)
        signature = request.header("X-Twilio-Signature")
        if not signature:
            raise WebhookRejected(403, "missing X-Twilio-Signature")
        signed = fields if request.method.upper() == "POST" else {}
        if not self._validator.validate(request.url, signed, signature):
            raise WebhookRejected(403, "X-Twilio-Signature does not match")

        sid = fields.get("MessageSid") or fields.get("SmsSid")
        if not sid:
            raise WebhookRejected(400, "no MessageSid")
        status = (fields.get("MessageStatus") or fields.get("SmsStatus") or "").strip().lower()

        if "Body" in fields and status in INBOUND:
            sender = fields.get("From")
            if not sender or not fields.get("To"):
                raise WebhookRejected(400, "incoming message without From/To")
            inbound = InboundMessage(phone=sender, text=fields["Body"], at=datetime.now(UTC),
                                     provider_id=sid)
            return WebhookResult(inbound=(inbound,), body=TWIML_EMPTY, content_type="text/xml")
        if not status:
            raise WebhookRejected(400, "neither MessageStatus nor Body")
        if status not in DELIVERED and status not in UNDELIVERED:
            return WebhookResult()   # queued, sent, sending...: not a receipt
        delivered = status in DELIVERED
        receipt = DeliveryReceipt(
            status="delivered" if delivered else "undelivered",
            provider_id=sid,
            key=request.query.get(KEY_PARAM) or None,
            at=datetime.now(UTC),
            error_code=None if delivered else (fields.get("ErrorCode") or None),
            error_text=None if delivered else (fields.get("ErrorMessage") or status),
        )
        return WebhookResult(receipts=(receipt,))

    def close(self) -> None:
        self._http.sessions.close()

    # -- plumbing ------------------------------------------------------------
    def _messages(self, sid: str | None = None) -> Any:
        account = self.client.api.v2010.accounts(self.account_sid)
        return account.messages(sid) if sid else account.messages

    @staticmethod
    def _fields(request: WebhookRequest) -> dict[str, str]:
        if request.method.upper() != "POST":
            return dict(request.query)
        if request.form:
            return dict(request.form)
        try:
            return dict(parse_qsl(request.body.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError:
            raise WebhookRejected(400, "body is not UTF-8 form data") from None

    def _result(self, record: Any) -> SendResult:
        raw = {
            "sid": record.sid,
            "status": record.status,
            "num_segments": record.num_segments,
            "price": record.price,
            "price_unit": record.price_unit,
            "messaging_service_sid": record.messaging_service_sid,
        }
        # Messaging Service messages report num_segments "0" until a sender is chosen.
        return SendResult(provider_id=str(record.sid), status="sent",
                          parts=_int_or_none(record.num_segments),
                          price=_float_or_none(record.price), raw=raw)

    def _call(self, fn: Any, *, sending: bool) -> Any:
        try:
            return fn()
        except (TwilioRestException, TwilioServiceException) as exc:
            raise self._api_error(exc, sending=sending) from None
        except requests.ConnectTimeout as exc:
            raise self.error(RetryableError, f"Twilio unreachable at {self.base_url}: connect timeout",
                             ambiguous=False) from exc
        except requests.ReadTimeout as exc:
            raise self.error(RetryableError,
                             f"no answer from Twilio within {self.timeout:g} s; the request may have arrived",
                             ambiguous=sending) from exc
        except requests.ConnectionError as exc:
            reason = getattr(exc.args[0], "reason", None) if exc.args else None
            if isinstance(reason, NewConnectionError):
                raise self.error(RetryableError, f"Twilio unreachable at {self.base_url}: "
                                 f"{type(reason).__name__}", ambiguous=False) from exc
            raise self.error(RetryableError, f"connection to Twilio lost mid-request: {type(exc).__name__}",
                             ambiguous=sending) from exc
        except requests.RequestException as exc:
            raise self.error(RetryableError, f"HTTP request to Twilio failed: {type(exc).__name__}",
                             ambiguous=sending) from exc
        except (ValueError, TwilioException) as exc:
            # A 2xx whose body is not Twilio's JSON (a proxy page): the message may exist.
            raise self.error(RetryableError, f"unreadable answer from Twilio: {mask_numbers(str(exc))[:200]}",
                             ambiguous=sending) from exc

    def _api_error(self, exc: TwilioRestException | TwilioServiceException, *, sending: bool) -> ProviderError:
        status = int(exc.status or 0)
        if isinstance(exc, TwilioServiceException):
            text = ": ".join(p for p in (exc.title, exc.detail) if p)
        else:
            text = _SDK_PREFIX.sub("", str(exc.msg or "")).strip()
        text = mask_numbers(text or "no message")
        code = exc.code if isinstance(exc.code, int) and exc.code != status else None
        detail = f"HTTP {status}: {text}"
        cls = ERROR_CLASSES.get(code) if code is not None else None
        if cls is None:
            cls = _class_for_status(status)
        kw: dict[str, Any] = {"code": code if code is not None else status}
        if issubclass(cls, ThrottledError):
            kw["retry_after"] = _retry_after(self._http.last_header("Retry-After"))
        elif cls is RetryableError:
            # A 5xx after a POST may follow the creation of the message; 503 says it did not.
            kw["ambiguous"] = sending and status != 503
        return self.error(cls, detail, **kw)


def _class_for_status(status: int) -> type[ProviderError]:
    if status in (401, 403):
        return AuthError
    if status == 404:
        return ConfigError
    if status == 429:
        return ThrottledError
    if status >= 500 or status == 0:
        return RetryableError
    if 400 <= status < 500:
        return PermanentError
    return RetryableError


def _aware(at: datetime | None) -> datetime | None:
    if at is None:
        return None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)
