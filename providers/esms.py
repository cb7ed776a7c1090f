"""eSMS.vn (ViHAT) SMS brandname gateway.

One message is one ``POST .../MainService.svc/json/SendMultipleMessage_V4_post_json/``
with a JSON body; eSMS answers HTTP 200 with ``{"CodeResult": "100", "SMSID": ...}``
or another ``CodeResult``.  Our message key travels as ``RequestId``: eSMS refuses a
second request with the same id (``CodeResult`` 124), so a re-send after a timeout
cannot send the SMS twice and the adapter declares ``dedupes_by_key``.

Sources (developers.esms.vn, read through the gitbook sources eSMS publishes as
github.com/devesms/gitbook_esms_for_develop_v2 and ..._v2_en):

* send, customer care (CSKH) / OTP:  esms-api/ham-gui-tin/tin-nhan-sms-otp-cskh
  (fields ApiKey, SecretKey, Phone, Content, Brandname, SmsType "2", IsUnicode,
  Sandbox, RequestId "max 50 characters, blocks duplicates within the day",
  SendDate, campaignid, CallbackUrl; answers 100/104/101/124/146/99)
* advertising:                       esms-api/ham-gui-tin/tin-sms-quang-cao
  (SmsType "1"; documented only on SendMultipleSMSBrandname_json with a Phones
  list of at least 30 numbers, code 107 otherwise)
* error codes:                       esms-api/bang-ma-loi  (EN: table-of-error-codes)
* receipts:                          esms-api/callback-url
* status by SMSID:                   esms-api/ham-truy-xuat-va-dang-ky/ham-kiem-tra-tin-nhan-theo-smsid
  (``GET GetSendStatus?RefId=<SMSID>&ApiKey=&SecretKey=``, last 7 days only)
* balance:                           esms-api/ham-truy-xuat-va-dang-ky/ham-lay-so-du-tai-khoan
  (``POST GetBalance_json``; answers ``CodeResponse``, not ``CodeResult``)
* sandbox:                           esms-api/moi-truong-test-sandbox
  ("not stored by eSMS, not charged, not delivered")
* 2015 codes (99, 102, 118, 119, 131, 132) from the V4 REST PDF
  (esms.vn/TailieuAPI_V4_060215_Rest_Public.pdf) as transcribed in
  github.com/yiiviet/yii2-esms ``ResponseData::$responseCodes``.

CodeResult -> error class (send)
================================

====  ===========================================  ==================================
code  documented meaning                           class here
====  ===========================================  ==================================
100   accepted by eSMS (not yet delivered)         SendResult(provider_id=SMSID)
124   duplicate RequestId                          SendResult: already accepted (1)
99    today: "phone number blocked in the system";  RetryableError(ambiguous=True) (2)
      2015: "unknown error, try again later";
      send page: ``{"error": "Invalid request"}``
101   wrong ApiKey / SecretKey                     AuthError
102   today: "no price list"; 2015: "account       AuthError (pauses either way)
      locked"
103   balance too low                              MoneyError
104   brandname does not exist / not active        ConfigError
107   advertising: >= 30 numbers per request        ConfigError (3)
105   message id not found (status APIs)            RetryableError on send; lookup -> None
108   phone number format wrong                     PermanentError
110   request data incorrect                        ConfigError
118   invalid SmsType (2015)                        ConfigError
119   advertising: >= 20 numbers (2015)             ConfigError (3)
120   phone list over the limit                     ConfigError
131   advertising text over 422 chars (2015)        PermanentError
132   no right to send from fixed number (2015)     ConfigError
140   caller IP not whitelisted                     AuthError
146   text does not match a registered CSKH         ConfigError
      template
177   carrier not registered (for this brandname)   NotReachableError (4)
300   message type missing                          ConfigError
301   service type not supported                    ConfigError
204, 210, 687, 788-791, 799  Zalo/OA codes          ConfigError (wrong SmsType?)
other unknown code                                   RetryableError(ambiguous=True)
====  ===========================================  ==================================

(1) The documented 124 answer carries no SMSID (``{"CodeResult": "124",
    "ErrorMessage": "Request exist 1", "SendStatus": "5"}``) and eSMS documents no
    lookup by RequestId (GetSendStatus and GetSmsSentData_V2 take or return only
    SMSIDs).  So 124 returns the SMSID when the answer has one, else
    ``provider_id="esms-req:<RequestId>"``.  Receipts for such a message carry the
    real SMSID plus ``key=RequestId``: loa must match them by key.
(2) Retrying covers both meanings; a truly blocked number fails after the
    dispatcher's retry budget.  eSMS has no documented throttling code; HTTP 429
    is still mapped to ThrottledError.
(3) eSMS documents advertising (SmsType 1) only as batches of >= 30 numbers on
    SendMultipleSMSBrandname_json, awaiting approval.  This adapter sends one
    number per request, so a live account may answer 107/119: the gateway then
    pauses with a message saying so.
(4) A brandname is registered per carrier; 177 hits only recipients on a carrier
    where it is not registered, so it must not pause the whole gateway.  The
    recipient is not reachable by SMS through this sender: the dispatcher fails it
    or moves it to the campaign's next channel.

Delivery callbacks
==================

eSMS calls ``CallbackUrl`` with HTTP GET and query parameters SMSID, SendStatus,
SendSuccess, SendFailed, TotalReceiver, TotalSent, TotalPrice, RequestId, TypeId,
telcoid, phonenumber.  SendStatus: 1 pending approval, 2 waiting to send,
4 rejected, 5 finished ("check SendSuccess/SendFailed to know success or
failure"), 7 sent to the carrier, waiting for the report (0 draft, in
GetSmsSentData_V2).  Here: 5 with SendSuccess >= 1 -> delivered; 5 with
SendSuccess 0 (or SendFailed >= 1) -> undelivered; 4 -> undelivered; 0/1/2/7 and
5 without counts -> no receipt yet.

Callbacks carry no signature.  The adapter appends
``loa_token=hex(HMAC-SHA256(secret_key, "esms-callback:" + gateway name))[:32]``
to CallbackUrl and :meth:`ESMSProvider.webhook` refuses a request without it.
eSMS's samples show the status fields appended as ``<url>?SMSID=...``; should eSMS
append with "?" to a URL that already has a query, the token arrives as
``loa_token=<token>?SMSID=...``, which the webhook also understands.

Assumptions (not documented)
============================

* Phone numbers go as national "0xxxxxxxxx" (every eSMS sample does); only
  Vietnamese numbers (+84) are sent, others fail permanently.
* RequestId dedupe lasts "within the day": a re-send of the same key on a later
  day would be a new SMS.  loa's retries (30 s, 5 min, 30 min) stay well inside
  it.  Keys longer than 50 characters are replaced by a stable digest.
* A RequestId that eSMS refused (101, 103, ...) is assumed not to be burnt.
* HTTP errors: 5xx -> RetryableError (ambiguous unless 503), 401/403 ->
  AuthError, HTTP 400 or a body with an error but no CodeResult (the send page's
  ``{"error": "Invalid request"}``) -> ConfigError (the request shape is wrong
  for every message), 404/405 -> ConfigError (wrong base_url), a non-JSON 2xx
  or a JSON body with neither -> RetryableError(ambiguous=True).  A body with a
  CodeResult is mapped by its code whatever the HTTP status below 500.
* Lookups and callbacks for sandbox messages find nothing: eSMS does not store them.
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import os
import re
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
from urllib3.exceptions import NewConnectionError

from providers.base import (
    AuthError,
    ConfigError,
    DeliveryReceipt,
    MoneyError,
    NotReachableError,
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

__all__ = [
    "CODES",
    "ESMSProvider",
    "callback_token",
    "national_phone",
    "request_id",
]

DEFAULT_BASE_URL = "https://rest.esms.vn/MainService.svc/json/"
SEND_PATH = "SendMultipleMessage_V4_post_json/"
BALANCE_PATH = "GetBalance_json"
STATUS_PATH = "GetSendStatus"

SMS_TYPE_CUSTOMER_CARE = "2"   # "Tin CSKH" / OTP, with a registered brandname
SMS_TYPE_ADVERTISING = "1"     # "Tin quảng cáo"

TOKEN_PARAM = "loa_token"
REQ_ID_PREFIX = "esms-req:"    # provider id of a 124 answer that names no SMSID
MAX_REQUEST_ID = 50            # documented maximum length of RequestId

# CodeResult -> (class, meaning).  None = success.  See the table in the docstring.
CODES: dict[str, tuple[type[ProviderError] | None, str]] = {
    "100": (None, "accepted"),
    "124": (None, "duplicate RequestId: already accepted"),
    "99": (RetryableError, "phone number blocked on eSMS, or unknown error / invalid request"),
    "101": (AuthError, "wrong ApiKey or SecretKey"),
    "102": (AuthError, "no price list for the account (formerly: account locked)"),
    "103": (MoneyError, "balance too low to send"),
    "104": (ConfigError, "brandname does not exist or is not active"),
    "105": (RetryableError, "message id not found"),
    "107": (ConfigError, "eSMS advertising (SmsType 1) needs at least 30 numbers per request; "
                         "this adapter sends one number per request"),
    "108": (PermanentError, "phone number format rejected"),
    "110": (ConfigError, "request data incorrect"),
    "118": (ConfigError, "invalid SmsType"),
    "119": (ConfigError, "eSMS advertising (SmsType 1) needs at least 20 numbers per request; "
                         "this adapter sends one number per request"),
    "120": (ConfigError, "phone list over the limit"),
    "131": (PermanentError, "advertising text longer than 422 characters"),
    "132": (ConfigError, "no right to send from the fixed number"),
    "140": (AuthError, "caller IP is not whitelisted at eSMS"),
    "146": (ConfigError, "text does not match a registered customer-care template"),
    "177": (NotReachableError, "brandname not registered with the recipient's carrier"),
    "300": (ConfigError, "message type (SmsType) missing"),
    "301": (ConfigError, "service type not supported"),
    **{code: (ConfigError, "Zalo/OA error code on an SMS request (check sms_type)")
       for code in ("204", "210", "687", "788", "789", "790", "791", "799")},
}

# SendStatus of callbacks and GetSendStatus.
STATUS_REJECTED = "4"
STATUS_DONE = "5"
STATUS_TEXT = {
    "0": "draft", "1": "pending approval", "2": "waiting to send", "4": "rejected",
    "5": "finished", "7": "sent to the carrier, waiting for the report",
}

_ALLOWED_BRAND = re.compile(r"^[\x20-\x7e]+$")


# --------------------------------------------------------------------------
# Helpers (public: the fake and the web layer use them)
# --------------------------------------------------------------------------

def callback_token(secret_key: str, name: str) -> str:
    """The token this gateway appends to its CallbackUrl."""
    digest = hmac.new(secret_key.encode("utf-8"), f"esms-callback:{name}".encode("utf-8"),
                      hashlib.sha256)
    return digest.hexdigest()[:32]


def request_id(key: str) -> str:
    """Our key as RequestId; keys over eSMS's 50 characters become a stable digest."""
    if len(key) <= MAX_REQUEST_ID:
        return key
    return "loa-h-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]


def national_phone(phone: str) -> str:
    """E.164 "+84912345678" -> "0912345678", the form every eSMS sample uses.

    Raises ValueError for a number that is not Vietnamese.
    """
    digits = re.sub(r"[\s.\-()]", "", str(phone))
    if digits.startswith("+84"):
        rest = digits[3:]
    elif digits.startswith("0") and not digits.startswith("00"):
        rest = digits[1:]
    else:
        raise ValueError(f"not a Vietnamese number: {_mask(digits)}")
    if not rest.isdigit() or not 8 <= len(rest) <= 10 or rest.startswith("0"):
        raise ValueError(f"not a valid Vietnamese number: {_mask(digits)}")
    return "0" + rest


def _mask(phone: str) -> str:
    return f"{phone[:5]}****{phone[-3:]}" if len(phone) > 8 else "****"


def _unaccent(text: str) -> str:
    text = text.replace("đ", "d").replace("Đ", "D")
    decomposed = unicodedata.normalize("NFD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _check_brandname(value: Any) -> str:
    text = str(value or "").strip()
    if not text:
        raise ValueError("setting 'brandname' is required (the sender name registered at eSMS)")
    if not _ALLOWED_BRAND.match(text):
        hint = _unaccent(text)
        suggestion = f" (e.g. {hint!r})" if _ALLOWED_BRAND.match(hint) else ""
        raise ValueError(f"brandname {text!r} must be plain ASCII without diacritics{suggestion}")
    if len(text) > 11:
        raise ValueError(f"brandname {text!r} is {len(text)} characters; SMS brandnames have at most 11")
    return text


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        text = value.strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off", ""}:
            return False
        raise ValueError(f"not a boolean: {value!r}")
    return bool(value)


def _int(value: Any) -> int | None:
    try:
        return int(float(str(value).strip()))
    except (TypeError, ValueError):
        return None


def _code(data: Any) -> str | None:
    """CodeResult (send, status) or CodeResponse (balance, GetSendStatus)."""
    if not isinstance(data, dict):
        return None
    for field in ("CodeResult", "CodeResponse"):
        value = data.get(field)
        if value is not None and str(value).strip():
            return str(value).strip()
    return None


def _retry_after(value: str | None) -> float | None:
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
# The provider
# --------------------------------------------------------------------------

class ESMSProvider(Provider):
    """Sends SMS brandname messages through eSMS.vn's REST API (V4, JSON)."""

    type = "esms"
    channels = ("sms",)
    rate = 20.0
    dedupes_by_key = True  # RequestId = our key; eSMS answers 124 to a repeat
    settings = (
        Setting("api_key", required=True, secret=True, help="eSMS ApiKey"),
        Setting("secret_key", required=True, secret=True,
                help="eSMS SecretKey (also keys the callback token)"),
        Setting("brandname", required=True, kind=str,
                help="registered sender name: ASCII without diacritics, at most 11 characters"),
        Setting("sms_type", required=False, default=SMS_TYPE_CUSTOMER_CARE, kind=str | int,
                help='SmsType of normal messages: "2" customer care / OTP brandname'),
        Setting("sms_type_ads", required=False, default=SMS_TYPE_ADVERTISING, kind=str | int,
                help='SmsType of advertising messages: "1" advertising brandname'),
        Setting("sandbox", required=False, default=False, kind=bool,
                help="send with Sandbox=1: validated, not charged, never delivered"),
        Setting("callback_url", required=False, kind=str,
                help="public URL of loa's eSMS webhook; the gateway appends loa_token"),
        Setting("base_url", required=False, default=DEFAULT_BASE_URL, kind=str,
                help="API root ending in /MainService.svc/json/"),
        Setting("timeout", required=False, default=10.0, kind=float, gt=0, help="seconds per HTTP request"),
    )

    def __init__(self, name: str, options: Mapping[str, Any], state: StateStore | None = None) -> None:
        super().__init__(name, options, state)
        self.api_key = self._secret("api_key")
        self.secret_key = self._secret("secret_key")
        try:
            self.brandname = _check_brandname(self.options.get("brandname"))
            self.sandbox = _as_bool(self.options.get("sandbox", False))
        except ValueError as exc:
            raise self.error(ConfigError, str(exc)) from None
        self.sms_type = self._sms_type("sms_type", SMS_TYPE_CUSTOMER_CARE)
        self.sms_type_ads = self._sms_type("sms_type_ads", SMS_TYPE_ADVERTISING)

        base = str(self.options.get("base_url") or DEFAULT_BASE_URL).strip()
        if not base.startswith(("http://", "https://")):
            raise self.error(ConfigError, f"setting 'base_url' must be an http(s) URL, got {base!r}")
        self.base_url = base.rstrip("/") + "/"

        try:
            timeout = float(self.options.get("timeout", 10.0))
        except (TypeError, ValueError):
            raise self.error(ConfigError, "setting 'timeout' must be a number") from None
        if timeout <= 0:
            raise self.error(ConfigError, "setting 'timeout' must be positive")
        # Connect fails fast; read gets the full budget.
        self.timeout: tuple[float, float] = (min(timeout, 3.05), timeout)

        self.callback_token = callback_token(self.secret_key, self.name)
        self.callback_url = self._callback_url(self.options.get("callback_url"))

        self.session = Sessions()   # one per sender thread, connections kept alive
        self.session.headers["Accept"] = "application/json"

    # -- settings --------------------------------------------------------------
    def _secret(self, name: str) -> str:
        value = self.options.get(name)
        if value is None and self.options.get(f"{name}_env"):
            value = os.environ.get(str(self.options[f"{name}_env"]))
        if not value or not str(value).strip():
            raise self.error(ConfigError, f"setting {name!r} is required ({name}_env = \"VARIABLE\")")
        return str(value).strip()

    def _sms_type(self, name: str, default: str) -> str:
        value = str(self.options.get(name) or default).strip()
        if not value.isdigit():
            raise self.error(ConfigError, f"setting {name!r} must be an eSMS SmsType number, got {value!r}")
        return value

    def _callback_url(self, raw: Any) -> str | None:
        if raw is None or not str(raw).strip():
            return None
        url = str(raw).strip()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise self.error(ConfigError, f"setting 'callback_url' must be an http(s) URL, got {url!r}")
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != TOKEN_PARAM]
        query.append((TOKEN_PARAM, self.callback_token))
        return urlunsplit(parts._replace(query=urlencode(query)))

    # -- sending ---------------------------------------------------------------
    def send(self, message: OutgoingMessage) -> SendResult:
        if message.channel != "sms":
            raise self.error(ConfigError, f"eSMS gateway {self.name} serves channel sms, "
                             f"not {message.channel!r}")
        try:
            phone = national_phone(message.to)
        except ValueError as exc:
            raise self.error(PermanentError, f"eSMS sends to Vietnamese numbers only: {exc}",
                             code="esms-phone") from None
        if not message.text:
            raise self.error(PermanentError, "empty message text", code="esms-empty")
        req_id = request_id(message.key)
        body: dict[str, Any] = {
            "ApiKey": self.api_key,
            "SecretKey": self.secret_key,
            "Phone": phone,
            "Content": message.text,
            "Brandname": self.brandname,
            "SmsType": self.sms_type_ads if message.advertising else self.sms_type,
            "IsUnicode": "1" if message.encoding == "UCS-2" else "0",
            "RequestId": req_id,
            "Sandbox": "1" if self.sandbox else "0",
        }
        if self.callback_url:
            body["CallbackUrl"] = self.callback_url
        data = self._call("POST", SEND_PATH, json=body)
        code = _code(data)
        smsid = str(data.get("SMSID") or "").strip()
        if code in ("100", "124"):
            # 100 without an SMSID, or a 124 (documented without one): accepted all
            # the same; the request id stands in until a receipt names the SMSID.
            provider_id = smsid or REQ_ID_PREFIX + req_id
            return SendResult(provider_id=provider_id, status="sent", raw=dict(data))
        raise self._code_error(code, data, phone=phone)

    def _code_error(self, code: str | None, data: Mapping[str, Any], phone: str = "") -> ProviderError:
        text = str(data.get("ErrorMessage") or data.get("error") or data.get("Message") or "").strip()
        if code is None:
            if text:
                # The send page's "Invalid request" answer: the request shape is wrong,
                # and so for every message.  Pause rather than fail them one by one.
                return self.error(ConfigError, f"eSMS rejected the request: {text}", code="invalid-request")
            return self.error(RetryableError, f"eSMS answer has no CodeResult: {_snippet_json(data)}",
                              ambiguous=True)
        cls, meaning = CODES.get(code, (RetryableError, "undocumented CodeResult"))
        if cls is None:  # a success code where this call expects another answer
            cls, meaning = RetryableError, f"unexpected CodeResult {code}"
        detail = f"{meaning}" + (f": {text}" if text and text.lower() not in meaning.lower() else "")
        if phone and cls in (PermanentError, NotReachableError, RetryableError):
            detail += f" [{_mask(phone)}]"
        if cls is RetryableError:
            # 99 or an undocumented code: the request may have been taken; re-sends
            # are safe because eSMS dedupes on RequestId.
            return self.error(RetryableError, f"eSMS: {detail}", code=code, ambiguous=True)
        return self.error(cls, f"eSMS: {detail}", code=code)

    # -- other calls ---------------------------------------------------------------
    def check(self) -> str:
        data = self._call("POST", BALANCE_PATH,
                          json={"ApiKey": self.api_key, "SecretKey": self.secret_key})
        code = _code(data)
        if code != "100":
            raise self._code_error(code, data)
        balance = data.get("Balance")
        amount = _int(balance)
        shown = f"{amount}" if amount is not None else str(balance)
        mode = ", sandbox" if self.sandbox else ""
        return f"eSMS brandname {self.brandname}{mode}: balance {shown} VND"

    def lookup(self, message_key: str, provider_id: str | None) -> DeliveryReceipt | SendResult | None:
        """GetSendStatus by SMSID.  eSMS offers no lookup by RequestId: a message
        known only by its key (or by ``esms-req:``) cannot be looked up."""
        if not provider_id or provider_id.startswith(REQ_ID_PREFIX):
            return None
        params = {"RefId": provider_id, "ApiKey": self.api_key, "SecretKey": self.secret_key}
        data = self._call("GET", STATUS_PATH, params=params)
        code = _code(data)
        if code == "105":
            return None  # unknown to eSMS (sandbox, too new, or older than 7 days)
        if code != "100":
            raise self._code_error(code, data)
        smsid = str(data.get("SMSID") or provider_id)
        receipt = self._receipt(smsid, str(data.get("SendStatus", "")).strip(),
                                data.get("SendSuccess"), data.get("SendFailed"), message_key)
        return receipt or SendResult(provider_id=smsid, status="sent", raw=dict(data))

    # -- callbacks ------------------------------------------------------------------
    def webhook(self, request: WebhookRequest) -> WebhookResult:
        params = _callback_params(request)
        token = params.get(TOKEN_PARAM, "")
        if not token or not hmac.compare_digest(token.encode("utf-8"), self.callback_token.encode("utf-8")):
            raise WebhookRejected(403, "missing or wrong loa_token")
        smsid = params.get("SMSID", "").strip()
        status = params.get("SendStatus", "").strip()
        if not smsid or not status:
            raise WebhookRejected(400, "SMSID and SendStatus are required")
        key = params.get("RequestId", "").strip() or None
        receipt = self._receipt(smsid, status, params.get("SendSuccess"), params.get("SendFailed"), key)
        return WebhookResult(receipts=(receipt,) if receipt else (), status=200, body=b"OK")

    def _receipt(self, smsid: str, status: str, success: Any, failed: Any,
                 key: str | None) -> DeliveryReceipt | None:
        """SendStatus (+ counts) -> receipt; None while the message is in flight."""
        if status == STATUS_REJECTED:
            return DeliveryReceipt(status="undelivered", provider_id=smsid, key=key,
                                   error_code="esms-status-4", error_text="eSMS: rejected (SendStatus 4)")
        if status != STATUS_DONE:
            return None
        ok, bad = _int(success), _int(failed)
        if ok is not None and ok >= 1:
            return DeliveryReceipt(status="delivered", provider_id=smsid, key=key)
        if ok is None and bad is None:
            return None  # finished, but the counts that say how are missing
        return DeliveryReceipt(status="undelivered", provider_id=smsid, key=key,
                               error_code="esms-status-5",
                               error_text=f"eSMS: finished, not delivered "
                                          f"(SendSuccess {ok}, SendFailed {bad})")

    def close(self) -> None:
        self.session.close()

    # -- transport and error mapping ------------------------------------------------
    def _redact(self, text: str) -> str:
        for secret in (self.secret_key, self.api_key):
            if secret:
                text = text.replace(secret, "***")
        return text

    def _call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        url = self.base_url + path
        try:
            resp = self.session.request(method, url, resend=self.dedupes_by_key, timeout=self.timeout, **kw)
        except requests.ConnectTimeout:
            raise self.error(RetryableError, "eSMS unreachable: connect timeout", ambiguous=False) from None
        except requests.ReadTimeout:
            raise self.error(RetryableError,
                             "no answer from eSMS within the read timeout; the request may have arrived",
                             ambiguous=True) from None
        except requests.ConnectionError as exc:
            reason = getattr(exc.args[0], "reason", None) if exc.args else None
            if isinstance(reason, NewConnectionError):
                raise self.error(RetryableError, f"eSMS unreachable at {self.base_url}: "
                                 f"{self._redact(str(reason))}", ambiguous=False) from None
            raise self.error(RetryableError, f"connection to eSMS lost mid-request: {self._redact(str(exc))}",
                             ambiguous=True) from None
        except requests.RequestException as exc:
            raise self.error(RetryableError, f"HTTP request to eSMS failed: {self._redact(str(exc))}",
                             ambiguous=True) from None
        return self._answer(resp)

    def _answer(self, resp: requests.Response) -> dict[str, Any]:
        status = resp.status_code
        try:
            data = resp.json()
        except ValueError:
            data = None
        snippet = self._redact(_snippet(resp))
        if status == 429:
            raise self.error(ThrottledError, f"HTTP 429 from eSMS: {snippet}", code=status,
                             retry_after=_retry_after(resp.headers.get("Retry-After")))
        if status >= 500:
            raise self.error(RetryableError, f"HTTP {status} from eSMS: {snippet}", code=status,
                             ambiguous=status != 503)
        if isinstance(data, dict) and _code(data) is not None:
            return data  # eSMS's own answer, whatever the HTTP status: map by code
        if 200 <= status < 300:
            if isinstance(data, dict):
                return data  # no code: _code_error decides ("Invalid request" -> ConfigError)
            raise self.error(RetryableError, f"HTTP {status} from eSMS with a non-JSON body: {snippet}",
                             ambiguous=True)
        if status in (401, 403):
            raise self.error(AuthError, f"HTTP {status} from eSMS: {snippet}", code=status)
        if status in (400, 404, 405):
            what = "wrong base_url?" if status != 400 else "request refused as invalid"
            raise self.error(ConfigError, f"HTTP {status} from eSMS ({what}): {snippet}", code=status)
        raise self.error(RetryableError, f"unexpected HTTP {status} from eSMS: {snippet}", code=status,
                         ambiguous=True)


def _callback_params(request: WebhookRequest) -> dict[str, str]:
    params = {str(k): str(v) for k, v in request.form.items()} if request.method.upper() == "POST" else {}
    params.update({str(k): str(v) for k, v in request.query.items()})
    token = params.get(TOKEN_PARAM, "")
    if "?" in token:
        # eSMS appended "?SMSID=..." to a URL that already had "?loa_token=...".
        token, tail = token.split("?", 1)
        params[TOKEN_PARAM] = token
        for k, v in parse_qsl(tail, keep_blank_values=True):
            params.setdefault(k, v)
    return params


def _snippet(resp: requests.Response, limit: int = 160) -> str:
    kind = resp.headers.get("Content-Type", "no content type")
    text = " ".join(resp.text.split())[:limit]
    return f"({kind}) {text!r}"


def _snippet_json(data: Any, limit: int = 160) -> str:
    return repr(data)[:limit]
