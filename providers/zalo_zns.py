"""Zalo Notification Service (ZNS): approved templates sent to a phone number's Zalo account.

The API, as Zalo documents it (zalo.cloud / developers.zalo.me):

* **Send** ``POST {base_url}/message/template`` with the OA access token in an
  ``access_token`` header and ``{"phone": "84...", "template_id", "template_data",
  "tracking_id"}``.  Zalo answers HTTP 200 even when it refuses: the body's
  ``error`` is 0 on success, ``message`` explains, and ``data`` carries
  ``msg_id``, ``sent_time`` and ``quota.{dailyQuota,remainingQuota}`` (numbers
  that some answers spell as strings).
* **Quota** ``GET {base_url}/message/quota`` -> ``data.{dailyQuota,remainingQuota}``.
* **Status** ``GET {base_url}/message/status?message_id=...`` -> ``data.status``
  (1 delivered, 0 not yet delivered, -1 no such message) and ``data.delivery_time``.
  It is keyed by Zalo's ``msg_id``; there is no lookup by ``tracking_id``.
* **Token refresh** ``POST {oauth_url}/v4/oa/access_token`` with the app secret
  in a ``secret_key`` header and the form ``refresh_token, app_id,
  grant_type=refresh_token``; answers ``{access_token, refresh_token,
  expires_in}`` or an error body ``{error, error_name, error_description}``.
  Access tokens live about 25 hours.  **A refresh token works once**: the answer
  carries its successor, and the old one is dead.
* **Receipts** arrive as the OA webhook event ``user_received_message``
  (``message.msg_id``, ``message.tracking_id``, ``message.delivery_time`` in epoch
  ms), signed with ``X-ZEvent-Signature: mac=<sha256_hex(app_id + raw body +
  timestamp + OA secret key)>``, ``timestamp`` being the body's own field.  Zalo
  sends no event for a message that was not delivered.

How this adapter maps Zalo's ``error`` codes onto loa's error classes:

==============================================  ===================================
code(s)                                         class
==============================================  ===================================
-108 -110 -114 -118 -119 -134 -139 -140 -141    NotReachableError (fall back to SMS)
-124 (access token invalid)                     refresh the token, re-send once;
                                                AuthError if the new one fails too
-133 (no ZNS 22:00-06:00)                       DeferredError until 06:00 Vietnam time
-144 -147 (daily limits)                        QuotaError until 00:00 Vietnam time
-1441 -1471 (monthly limits)                    QuotaError until the 1st, 00:00
-115 -126 -137 -321                             MoneyError
-101..-106 -109 -111 -112 -113 -117 -120        ConfigError
-131 -135 -138 -145 -146
-100, HTTP 5xx, timeouts, dropped connections   RetryableError
any other code                                  PermanentError carrying the code
==============================================  ===================================

A QuotaError is a DeferredError that holds the gateway's whole queue, not just
the one message: every other send would get the same answer until the reset.
Daily limits are deferred to midnight rather than 06:00: the quota resets at
midnight and only some ZNS are bound by the night rule, which answers -133 and
defers again if it applies.  A boundary that passed less than ten minutes ago
may not have passed on Zalo's clock yet, so near one the retry is a minute away
instead of a whole day.

``tracking_id`` is loa's message key, so a webhook receipt names our row even
when Zalo's ``msg_id`` never reached us.  Zalo does not deduplicate on it: a
re-send with the same ``tracking_id`` is a second message, so
``dedupes_by_key`` is False and a send whose outcome is unknown is never
repeated through this gateway.

Tokens live in ``self.state`` (shared by every worker of this gateway, on every
machine) under ``zalo:<gateway name>:...``; the settings ``access_token`` /
``refresh_token`` only seed an empty store.  Rotation holds
``state.locked("zalo:<gateway name>:token")`` and re-reads the stored token
first, so of several workers that see the same token expire, exactly one spends
the refresh token.  If the stored refresh token is refused, a configured
refresh token that differs from the one the store was seeded with (the operator
authorised the app again) is tried, once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import requests
from urllib3.exceptions import NewConnectionError  # requests' own transport

from providers.base import (
    AuthError,
    ConfigError,
    DeferredError,
    DeliveryReceipt,
    MoneyError,
    NotReachableError,
    OutgoingMessage,
    PermanentError,
    Provider,
    ProviderError,
    QuotaError,
    RetryableError,
    SendResult,
    Setting,
    ThrottledError,
    WebhookRejected,
    WebhookRequest,
    WebhookResult,
)
from providers.http import Sessions

__all__ = [
    "ZaloZNSProvider",
    "daily_retry_after",
    "monthly_retry_after",
    "night_retry_after",
    "webhook_signature",
    "zalo_phone",
]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://business.openapi.zalo.me"
DEFAULT_OAUTH_URL = "https://oauth.zaloapp.com"
SEND_PATH = "/message/template"
QUOTA_PATH = "/message/quota"
STATUS_PATH = "/message/status"
REFRESH_PATH = "/v4/oa/access_token"
SIGNATURE_HEADER = "X-ZEvent-Signature"
RECEIVED_EVENT = "user_received_message"


def _vietnam() -> tzinfo:
    try:
        return ZoneInfo("Asia/Ho_Chi_Minh")
    except ZoneInfoNotFoundError:  # no tz database: Vietnam has kept UTC+7, without DST, since 1975
        return timezone(timedelta(hours=7), "ICT")


VIETNAM = _vietnam()

# -- Zalo's codes --------------------------------------------------------------
CODE_UNKNOWN = -100
CODE_TOKEN = -124
CODE_NIGHT = -133
CODE_DAILY_QUOTA = -144

NOT_REACHABLE: dict[int, str] = {
    -108: "phone number invalid",
    -110: "recipient's Zalo version does not support ZNS",
    -114: "recipient is inactive, refused the message or uses an old Zalo version",
    -118: "no Zalo account for this phone number",
    -119: "this Zalo account cannot receive ZNS",
    -134: "recipient has not chosen to receive ZNS",
    -139: "recipient refused this type of ZNS",
    -140: "OA may not send this ZNS to this recipient",
    -141: "recipient refused ZNS from this OA",
}
DAILY_LIMITS: dict[int, str] = {
    -144: "OA's daily ZNS quota is used up",
    -147: "OA's daily limit for this type of ZNS is used up",
}
MONTHLY_LIMITS: dict[int, str] = {
    -1441: "OA's monthly ZNS quota is used up",
    -1471: "OA's monthly limit for this type of ZNS is used up",
}
MONEY: dict[int, str] = {
    -115: "ZNS account is out of quota (balance)",
    -126: "balance too low",
    -137: "payment failed",
    -321: "balance too low",
}
CONFIG: dict[int, str] = {
    -101: "application invalid",
    -102: "application does not exist",
    -103: "application not activated",
    -104: "app secret key invalid",
    -105: "application not linked to an OA",
    -106: "method unsupported",
    -109: "template id invalid",
    -111: "template data empty",
    -112: "template data invalid",
    -113: "template button invalid",
    -117: "OA or app has no permission for this template",
    -120: "OA has no permission for this feature",
    -131: "template not approved",
    -135: "OA has no permission to send ZNS",
    -138: "app has no permission to send ZNS",
    -145: "OA may not send this type of template",
    -146: "template disabled",
}

EXPIRY_MARGIN = 60.0   # refresh this long before a known expiry
SKEW = 600.0           # a boundary this recent may not have passed on Zalo's clock
SOON = 60.0            # retry delay when the clocks may disagree
ODD_NIGHT = 900.0      # -133 in broad daylight: Zalo changed the rule; do not hammer it


# --------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------

def zalo_phone(number: str) -> str:
    """E.164 "+84912345678" (or national "0912345678") -> Zalo's "84912345678"."""
    digits = number.strip().replace(" ", "")
    if digits.startswith("+"):
        digits = digits[1:]
    if not digits.isdigit() or len(digits) < 8:
        raise ValueError(f"not a phone number: {_mask(number)}")
    if digits.startswith("0"):
        digits = "84" + digits[1:]
    return digits


def webhook_signature(app_id: str, body: bytes, timestamp: str, oa_secret: str) -> str:
    """The value Zalo puts in X-ZEvent-Signature."""
    mac = hashlib.sha256(app_id.encode() + body + timestamp.encode() + oa_secret.encode())
    return "mac=" + mac.hexdigest()


def night_retry_after(now: datetime) -> float:
    """Seconds until ZNS may be sent again after -133 (no sending 22:00-06:00)."""
    local = now.astimezone(VIETNAM)
    six = local.replace(hour=6, minute=0, second=0, microsecond=0)
    if local.hour >= 22:
        return (six + timedelta(days=1) - local).total_seconds()
    if local < six:
        return (six - local).total_seconds()
    # Daytime by our clock.  Close to 06:00 or 22:00 the clocks just disagree.
    ten_pm = local.replace(hour=22, minute=0, second=0, microsecond=0)
    if (local - six).total_seconds() < SKEW or (ten_pm - local).total_seconds() < SKEW:
        return SOON
    return ODD_NIGHT


def daily_retry_after(now: datetime) -> float:
    """Seconds until the next midnight in Vietnam, when daily quotas reset."""
    local = now.astimezone(VIETNAM)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if (local - midnight).total_seconds() < SKEW:
        return SOON
    return (midnight + timedelta(days=1) - local).total_seconds()


def monthly_retry_after(now: datetime) -> float:
    """Seconds until 00:00 on the 1st of next month in Vietnam."""
    local = now.astimezone(VIETNAM)
    first = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if (local - first).total_seconds() < SKEW:
        return SOON
    following = (first + timedelta(days=32)).replace(day=1)
    return (following - local).total_seconds()


def _mask(phone: str) -> str:
    return "****" if len(phone) <= 8 else f"{phone[:5]}****{phone[-3:]}"


def _int(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        return float(str(value).strip())
    except (TypeError, ValueError):
        return None


def _from_ms(value: Any) -> datetime | None:
    ms = _float(value)
    if ms is None or ms <= 0:
        return None
    try:
        return datetime.fromtimestamp(ms / 1000.0, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _fingerprint(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------
# The provider
# --------------------------------------------------------------------------

class ZaloZNSProvider(Provider):
    """Sends approved ZNS templates; rotates the OA token through ``self.state``.

    ``options`` may carry ``clock``: a callable returning an aware datetime,
    used for the night rule, quota resets and token expiry (tests).
    """

    type = "zalo_zns"
    channels = ("zalo",)
    rate = 10.0
    dedupes_by_key = False  # tracking_id is for receipts and lookups; Zalo does not dedupe on it
    settings = (
        Setting("app_id", required=True, kind=str | int, help="Zalo app id (Zalo for Developers)"),
        Setting("secret_key", required=True, secret=True,
                help="the app's secret key, for refreshing the OA access token"),
        Setting("oa_secret", required=False, secret=True,
                help="the OA secret key that signs webhooks; without it every webhook is refused"),
        Setting("access_token", required=False, secret=True,
                help="initial OA access token; used only while the state store holds none"),
        Setting("refresh_token", required=False, secret=True,
                help="initial OA refresh token; used only while the state store holds none, "
                     "or when the stored one is refused"),
        Setting("base_url", required=False, default=DEFAULT_BASE_URL, kind=str, help="ZNS API base URL"),
        Setting("oauth_url", required=False, default=DEFAULT_OAUTH_URL, kind=str, help="Zalo OAuth base URL"),
        Setting("timeout", required=False, default=10.0, kind=float, gt=0, help="seconds per HTTP request"),
    )

    def __init__(self, name: str, options: Mapping[str, Any], state: Any = None) -> None:
        super().__init__(name, options, state)
        self.app_id = str(self.options.get("app_id") or "").strip()
        if not self.app_id:
            raise self.error(ConfigError, "setting 'app_id' is required")
        self.secret_key = self._secret("secret_key")
        if not self.secret_key:
            raise self.error(ConfigError, "setting 'secret_key' is required (secret_key_env = \"VAR\")")
        self.oa_secret = self._secret("oa_secret")
        self.base_url = self._url("base_url", DEFAULT_BASE_URL)
        self.oauth_url = self._url("oauth_url", DEFAULT_OAUTH_URL)
        try:
            timeout = float(self.options.get("timeout", 10.0))
        except (TypeError, ValueError):
            raise self.error(ConfigError, "setting 'timeout' must be a number") from None
        if timeout <= 0:
            raise self.error(ConfigError, "setting 'timeout' must be positive")
        # Connect fails fast; read gets the full budget.
        self.timeout: tuple[float, float] = (min(timeout, 3.05), timeout)
        clock = self.options.get("clock")
        self.clock: Callable[[], datetime] = clock if callable(clock) else _utcnow
        self.session = Sessions()   # one per sender thread, connections kept alive
        self.session.headers["Accept"] = "application/json"
        self.remaining_quota: int | None = None   # from the last answer that said
        self.daily_quota: int | None = None
        self._cached: tuple[str, float | None] | None = None   # (access token, expires at)
        self._cache_lock = threading.Lock()

    # -- settings ------------------------------------------------------------
    def _secret(self, name: str) -> str:
        value = self.options.get(name)
        if not value and self.options.get(f"{name}_env"):
            value = os.environ.get(str(self.options[f"{name}_env"]))
        return str(value or "").strip()

    def _url(self, name: str, default: str) -> str:
        url = str(self.options.get(name) or default).rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise self.error(ConfigError, f"setting {name!r} must be an http(s) URL, got {url!r}")
        return url

    # -- the calls -----------------------------------------------------------
    def send(self, message: OutgoingMessage) -> SendResult:
        if not message.template_id:
            raise self.error(ConfigError, "ZNS needs an approved template: the message has no template_id")
        try:
            phone = zalo_phone(message.to)
        except ValueError as exc:
            raise self.error(PermanentError, str(exc), code="invalid-phone") from None
        body = {
            "phone": phone,
            "template_id": str(message.template_id),
            "template_data": dict(message.template_data),
            "tracking_id": message.key,
        }
        payload = json.dumps(body, ensure_ascii=False, default=str).encode("utf-8")
        data = self._call("POST", self.base_url + SEND_PATH, sends_message=True, data=payload,
                          headers={"Content-Type": "application/json"})
        info = data.get("data") if isinstance(data.get("data"), dict) else {}
        msg_id = info.get("msg_id")
        if not msg_id:
            raise self.error(RetryableError, "Zalo answered success without a msg_id", ambiguous=True)
        return SendResult(provider_id=str(msg_id), status="sent", raw=data)

    def check(self) -> str:
        data = self._call("GET", self.base_url + QUOTA_PATH, sends_message=False)
        info = data.get("data") if isinstance(data.get("data"), dict) else {}
        self._track_quota(info)
        remaining = "?" if self.remaining_quota is None else self.remaining_quota
        daily = "?" if self.daily_quota is None else self.daily_quota
        return f"quota: {remaining} remaining of {daily} daily"

    def lookup(self, message_key: str, provider_id: str | None) -> DeliveryReceipt | SendResult | None:
        """Zalo's status endpoint is keyed by msg_id; there is none by tracking_id.

        So a send whose outcome is unknown (no msg_id came back) cannot be looked
        up: this returns None.  With a msg_id it asks ``/message/status``.
        """
        if not provider_id:
            return None
        return self.message_status(provider_id)

    def message_status(self, msg_id: str, phone: str | None = None) -> DeliveryReceipt | SendResult | None:
        """Delivered -> DeliveryReceipt; pushed but not delivered -> SendResult; unknown -> None."""
        params = {"message_id": msg_id}
        if phone:
            params["phone"] = zalo_phone(phone)
        data = self._call("GET", self.base_url + STATUS_PATH, sends_message=False,
                          params=params, raise_codes=False)
        code = _int(data.get("error"))
        info = data.get("data") if isinstance(data.get("data"), dict) else {}
        if code != 0:
            log.info("gateway %s: no status for msg_id %s: %s (code %s)",
                     self.name, msg_id, data.get("message"), code)
            return None
        status = _int(info.get("status"))
        if status == 1:
            return DeliveryReceipt(status="delivered", provider_id=msg_id,
                                   at=_from_ms(info.get("delivery_time")))
        if status == 0:
            return SendResult(provider_id=msg_id, status="sent", raw=data)
        return None

    def webhook(self, request: WebhookRequest) -> WebhookResult:
        if not self.oa_secret:
            raise WebhookRejected(403, "setting 'oa_secret' is not configured: cannot verify webhooks")
        supplied = (request.header(SIGNATURE_HEADER) or "").strip()
        if not supplied:
            raise WebhookRejected(403, f"missing {SIGNATURE_HEADER} header")
        try:
            event = json.loads(request.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise WebhookRejected(400, "body is not JSON") from None
        if not isinstance(event, dict) or event.get("timestamp") in (None, ""):
            raise WebhookRejected(400, "body is not a Zalo event (no timestamp)")
        expected = webhook_signature(self.app_id, request.body, str(event["timestamp"]), self.oa_secret)
        if not hmac.compare_digest(_normalise_mac(supplied), expected):
            raise WebhookRejected(403, f"{SIGNATURE_HEADER} does not match")
        if event.get("event_name") != RECEIVED_EVENT:
            return WebhookResult()   # follows, replies, seen...: not ours to record
        message = event.get("message")
        if not isinstance(message, dict):
            raise WebhookRejected(400, f"{RECEIVED_EVENT} without a message object")
        msg_id, tracking_id = message.get("msg_id"), message.get("tracking_id")
        if not msg_id and not tracking_id:
            raise WebhookRejected(400, f"{RECEIVED_EVENT} names neither msg_id nor tracking_id")
        at = (_from_ms(message.get("delivery_time")) or _from_ms(event.get("delivery_time"))
              or _from_ms(event.get("timestamp")))
        receipt = DeliveryReceipt(
            status="delivered",
            provider_id=str(msg_id) if msg_id else None,
            key=str(tracking_id) if tracking_id else None,
            at=at,
        )
        return WebhookResult(receipts=(receipt,))

    def close(self) -> None:
        self.session.close()

    # -- one ZNS call, with the token dance ----------------------------------
    def _call(self, method: str, url: str, *, sends_message: bool, raise_codes: bool = True,
              headers: Mapping[str, str] | None = None, **kw: Any) -> dict[str, Any]:
        token = self._access_token()
        data = self._zns(method, url, token, sends_message, headers, **kw)
        if _int(data.get("error")) == CODE_TOKEN:
            # Nothing was sent: refresh (or pick up another worker's refresh) and try once more.
            token = self._rotate(token)
            data = self._zns(method, url, token, sends_message, headers, **kw)
            if _int(data.get("error")) == CODE_TOKEN:
                raise self.error(AuthError, "Zalo refused a freshly refreshed access token: "
                                 f"{data.get('message') or 'access token invalid'}", code=CODE_TOKEN)
        info = data.get("data")
        if isinstance(info, dict) and isinstance(info.get("quota"), dict):
            self._track_quota(info["quota"])
        code = _int(data.get("error"))
        if raise_codes and code != 0:
            raise self._code_error(code, data)
        return data

    def _zns(self, method: str, url: str, token: str, sends_message: bool,
             headers: Mapping[str, str] | None, **kw: Any) -> dict[str, Any]:
        resp = self._request(method, url, sends_message, headers={**(headers or {}), "access_token": token},
                             **kw)
        data = self._json(resp, sends_message)
        if not isinstance(data, dict) or "error" not in data:
            raise self.error(RetryableError, f"HTTP {resp.status_code}: answer has no 'error' field: "
                             f"{_snippet(resp)}", ambiguous=sends_message)
        if _int(data["error"]) is None:
            raise self.error(RetryableError, f"answer's 'error' is not a number: {data['error']!r}",
                             ambiguous=sends_message)
        return data

    def _track_quota(self, quota: Mapping[str, Any]) -> None:
        remaining, daily = _int(quota.get("remainingQuota")), _int(quota.get("dailyQuota"))
        if remaining is not None:
            self.remaining_quota = remaining
        if daily is not None:
            self.daily_quota = daily

    def _code_error(self, code: int | None, data: Mapping[str, Any]) -> ProviderError:
        assert code is not None

        def text(table: Mapping[int, str]) -> str:
            return str(data.get("message") or table.get(code) or "Zalo refused the request")
        if code in NOT_REACHABLE:
            return self.error(NotReachableError, text(NOT_REACHABLE), code=code)
        if code == CODE_NIGHT:
            return self.error(DeferredError, text({}) + " (no ZNS 22:00-06:00)", code=code,
                              retry_after=night_retry_after(self.clock()))
        if code in DAILY_LIMITS:
            if code == CODE_DAILY_QUOTA:
                self.remaining_quota = 0
            return self.error(QuotaError, text(DAILY_LIMITS), code=code,
                              retry_after=daily_retry_after(self.clock()))
        if code in MONTHLY_LIMITS:
            return self.error(QuotaError, text(MONTHLY_LIMITS), code=code,
                              retry_after=monthly_retry_after(self.clock()))
        if code in MONEY:
            return self.error(MoneyError, text(MONEY), code=code)
        if code in CONFIG:
            return self.error(ConfigError, text(CONFIG), code=code)
        if code == CODE_UNKNOWN:
            return self.error(RetryableError, text({}), code=code)
        if code == CODE_TOKEN:
            return self.error(AuthError, text({}), code=code)
        return self.error(PermanentError, text({}), code=code)

    # -- tokens --------------------------------------------------------------
    def _key(self, what: str) -> str:
        return f"zalo:{self.name}:{what}"

    def _now(self) -> float:
        return self.clock().timestamp()

    def _remember(self, token: str, expires_at: float | None) -> str:
        with self._cache_lock:
            self._cached = (token, expires_at)
        return token

    def _access_token(self) -> str:
        with self._cache_lock:
            cached = self._cached
        if cached is None:
            token = self.state.get(self._key("access_token"))
            if not token:
                return self._seed()
            cached = (token, _float(self.state.get(self._key("expires_at"))))
            self._remember(*cached)
        token, expires_at = cached
        if expires_at is not None and self._now() >= expires_at - EXPIRY_MARGIN:
            return self._rotate(token)
        return token

    def _seed(self) -> str:
        """Fill an empty store from the settings (once, whoever gets the lock first)."""
        with self.state.locked(self._key("token")):
            token = self.state.get(self._key("access_token"))
            if token:
                return self._remember(token, _float(self.state.get(self._key("expires_at"))))
            access, refresh = self._secret("access_token"), self._secret("refresh_token")
            if refresh:
                self.state.set(self._key("refresh_token"), refresh)
                self.state.set(self._key("seeded_from"), _fingerprint(refresh))
            if access:
                self.state.set(self._key("access_token"), access)
                self.state.set(self._key("expires_at"), "")
                return self._remember(access, None)
            if refresh:
                return self._refresh_locked()
        raise self.error(AuthError, "no Zalo OA token: set access_token_env and refresh_token_env "
                         "(from the OA authorisation) in the gateway's configuration")

    def _rotate(self, failed: str) -> str:
        """Replace ``failed`` with a working token; exactly one worker spends the refresh token."""
        with self.state.locked(self._key("token")):
            current = self.state.get(self._key("access_token"))
            expires_at = _float(self.state.get(self._key("expires_at")))
            fresh = expires_at is None or self._now() < expires_at - EXPIRY_MARGIN
            if current and current != failed and fresh:
                return self._remember(current, expires_at)   # another worker already rotated it
            return self._refresh_locked()

    def _refresh_locked(self) -> str:
        # Caller holds the token lock.
        stored = self.state.get(self._key("refresh_token")) or ""
        try:
            if not stored:
                raise self.error(AuthError, "the Zalo access token expired and no refresh token is stored")
            answer = self._oauth_refresh(stored)
        except AuthError:
            # The stored chain is dead.  A configured refresh token this store has not
            # used yet means the operator authorised the app again: spend it, once.
            configured = self._secret("refresh_token")
            if not configured or configured == stored or \
                    self.state.get(self._key("seeded_from")) == _fingerprint(configured):
                raise
            self.state.set(self._key("seeded_from"), _fingerprint(configured))
            log.warning("gateway %s: stored refresh token refused; trying the configured one", self.name)
            stored = configured
            answer = self._oauth_refresh(configured)
        access = str(answer["access_token"])
        refresh = str(answer.get("refresh_token") or "")
        if not refresh:
            log.warning("gateway %s: Zalo's token answer has no refresh_token", self.name)
            refresh = stored
        lifetime = _float(answer.get("expires_in"))
        expires_at = self._now() + lifetime if lifetime and lifetime > 0 else None
        # The old refresh token is spent: store its successor before anything else.
        self.state.set(self._key("refresh_token"), refresh)
        self.state.set(self._key("access_token"), access)
        self.state.set(self._key("expires_at"), "" if expires_at is None else repr(expires_at))
        log.info("gateway %s: Zalo access token refreshed", self.name)
        return self._remember(access, expires_at)

    def _oauth_refresh(self, refresh_token: str) -> dict[str, Any]:
        form = {"refresh_token": refresh_token, "app_id": self.app_id, "grant_type": "refresh_token"}
        # No message rides on this call, so a timeout here is never an ambiguous send.
        resp = self._request("POST", self.oauth_url + REFRESH_PATH, False, data=form,
                             headers={"secret_key": self.secret_key})
        data = self._json(resp, False)
        if isinstance(data, dict) and data.get("access_token"):
            return data
        fields = data if isinstance(data, dict) else {}
        reason = (fields.get("error_name") or fields.get("error_description")
                  or fields.get("message") or _snippet(resp))
        raise self.error(AuthError, f"Zalo refused to refresh the access token: {reason}",
                         code=fields.get("error"))

    # -- transport -----------------------------------------------------------
    def _request(self, method: str, url: str, sends_message: bool, **kw: Any) -> requests.Response:
        try:
            resp = self.session.request(method, url, timeout=self.timeout, **kw)
        except requests.ConnectTimeout as exc:
            raise self.error(RetryableError, f"Zalo unreachable: connect timeout ({exc})") from exc
        except requests.ReadTimeout as exc:
            raise self.error(RetryableError, "no answer within the read timeout; the request may "
                             "have arrived", ambiguous=sends_message) from exc
        except requests.ConnectionError as exc:
            reason = getattr(exc.args[0], "reason", None) if exc.args else None
            if isinstance(reason, NewConnectionError):
                raise self.error(RetryableError, f"Zalo unreachable at {url}: {reason}") from exc
            raise self.error(RetryableError, f"connection lost mid-request: {exc}",
                             ambiguous=sends_message) from exc
        except requests.RequestException as exc:
            raise self.error(RetryableError, f"HTTP request failed: {exc}",
                             ambiguous=sends_message) from exc
        if not 200 <= resp.status_code < 300:
            raise self._status_error(resp, sends_message)
        return resp

    def _json(self, resp: requests.Response, sends_message: bool) -> Any:
        try:
            return resp.json()
        except ValueError:
            raise self.error(RetryableError, f"HTTP {resp.status_code} with a non-JSON body: "
                             f"{_snippet(resp)}", ambiguous=sends_message) from None

    def _status_error(self, resp: requests.Response, sends_message: bool) -> ProviderError:
        status = resp.status_code
        detail = f"HTTP {status}: {_snippet(resp)}"
        if status == 429:
            return self.error(ThrottledError, detail, code=status,
                              retry_after=_float(resp.headers.get("Retry-After")))
        if status in (401, 403):
            return self.error(AuthError, detail, code=status)
        if status == 404:
            return self.error(ConfigError, f"{detail} (check base_url / oauth_url)", code=status)
        # 503 says "not taken"; other failures may follow acceptance of a send.
        return self.error(RetryableError, detail, code=status, ambiguous=sends_message and status != 503)


def _normalise_mac(value: str) -> str:
    value = value.strip()
    if value[:4].lower() == "mac=":
        value = value[4:].strip()
    return "mac=" + value.lower()


def _snippet(resp: requests.Response, limit: int = 120) -> str:
    kind = resp.headers.get("Content-Type", "no content type")
    text = " ".join(resp.text.split())[:limit]
    return f"({kind}) {text!r}"
