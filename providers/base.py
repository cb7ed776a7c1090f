"""The contract between loa's dispatcher and a gateway adapter.

A provider turns one :class:`OutgoingMessage` into one gateway call and answers
with a :class:`SendResult` or raises one :class:`ProviderError` subclass.  The
error class, not the gateway's own code, decides what the dispatcher does next:

==================  =====================================================
class               dispatcher's reaction
==================  =====================================================
RetryableError      back off with jitter and try again later
ThrottledError      slow the gateway's rate limiter, then try again
DeferredError       try again at ``retry_after`` (e.g. Zalo's night rule); not a failure
QuotaError          the gateway's own quota is used up until ``retry_after``: every
                    message queued for the gateway waits, without calling it
PermanentError      fail this message with the gateway's code and text
NotReachableError   this recipient is not on this channel: try the next one
OptedOutError       the recipient refused messages (replied STOP): suppress the
                    message and put the number on the do-not-contact list
AuthError           pause the gateway: credentials are wrong or expired
ConfigError         pause the gateway: sender, template or setting is wrong
MoneyError          pause the gateway: balance or quota is exhausted
==================  =====================================================

``ambiguous=True`` on an error means the request may have reached the gateway
(a timeout after the request was written).  The dispatcher then re-sends only
through a gateway whose ``dedupes_by_key`` is true.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, ClassVar, Protocol


@dataclasses.dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One rendered message for one recipient on one channel."""

    key: str                      # our idempotency key, unique per (run, subscriber)
    to: str                       # E.164, e.g. "+84912345678"
    channel: str                  # "sms" or "zalo"
    text: str = ""                # rendered SMS text (NFC), empty for template channels
    encoding: str = "GSM-7"       # "GSM-7" or "UCS-2"
    parts: int = 1                # SMS parts the text needs
    advertising: bool = False
    template_id: str | None = None                       # Zalo ZNS template id
    template_data: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class SendResult:
    """The gateway accepted the message."""

    provider_id: str              # the gateway's id for the message (SID, SMSID, msg_id)
    status: str = "sent"          # "sent", or "delivered" when the gateway confirms at once
    parts: int | None = None      # parts the gateway billed, if it says
    price: float | None = None
    raw: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class DeliveryReceipt:
    """A delivery report, matched to the outbox by provider id or by our key."""

    status: str                   # "delivered" or "undelivered"
    provider_id: str | None = None
    key: str | None = None
    at: datetime | None = None    # aware UTC
    error_code: str | None = None
    error_text: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class NotReceived:
    """A lookup's answer: the gateway keeps a record of every message it takes, by our
    key, and has none of this one.  It never got the message, which is safe to send again."""

    key: str
    reason: str = "the gateway has no message with this key"


@dataclasses.dataclass(frozen=True, slots=True)
class Response:
    """Something a recipient did after a message: installed, clicked, replied."""

    phone: str                    # E.164
    type: str
    at: datetime                  # aware UTC
    key: str | None = None        # the message that prompted it, when known
    source: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class InboundMessage:
    """A message a subscriber sent us (a reply, "TC", "STOP")."""

    phone: str                    # E.164
    text: str
    at: datetime                  # aware UTC
    provider_id: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookRequest:
    """An HTTP request to one of loa's gateway endpoints, as the web layer received it."""

    method: str
    url: str                      # the full public URL the gateway called (signatures cover it)
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]    # case-insensitive lookups: use header()
    body: bytes
    form: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == lowered), None)


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookResult:
    receipts: tuple[DeliveryReceipt, ...] = ()
    inbound: tuple[InboundMessage, ...] = ()
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"


class WebhookRejected(Exception):
    """A webhook request that must change nothing: forged (403) or malformed (400)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class StateStore(Protocol):
    """Durable, shared key-value state for a gateway (e.g. rotating OAuth tokens).

    loa implements it on its database, so every worker on every machine sees
    the same value; ``locked`` holds a lock across processes while the caller
    reads, refreshes and writes.
    """

    def get(self, key: str) -> str | None: ...
    def set(self, key: str, value: str) -> None: ...
    def locked(self, key: str) -> AbstractContextManager[None]: ...


class MemoryStateStore:
    """A StateStore for one process: tests and single-process tools."""

    def __init__(self) -> None:
        self._data: dict[str, str] = {}
        self._locks: dict[str, threading.RLock] = {}
        self._guard = threading.Lock()

    def get(self, key: str) -> str | None:
        return self._data.get(key)

    def set(self, key: str, value: str) -> None:
        self._data[key] = value

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(key, threading.RLock())
        with lock:
            yield


class ProviderError(Exception):
    """A gateway refused or failed a message.  Subclasses say what to do next."""

    kind: ClassVar[str] = "error"

    def __init__(
        self,
        message: str,
        *,
        code: str | int | None = None,
        gateway: str = "",
        retry_after: float | None = None,
        ambiguous: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = None if code is None else str(code)
        self.gateway = gateway
        self.retry_after = retry_after
        self.ambiguous = ambiguous

    def __str__(self) -> str:
        where = f"{self.gateway}: " if self.gateway else ""
        code = f" (code {self.code})" if self.code is not None else ""
        return f"{where}{self.message}{code}"


class RetryableError(ProviderError):
    kind = "retryable"


class ThrottledError(RetryableError):
    kind = "throttled"


class DeferredError(RetryableError):
    """The gateway will take the message later (night rule, daily limit): not a failure.

    ``retry_after`` says when, in seconds; the attempt is not counted against
    the message's retry budget.
    """

    kind = "deferred"


class QuotaError(DeferredError):
    """A quota of the whole gateway is used up (Zalo's daily and monthly ZNS limits).

    Unlike a plain deferral, the answer would be the same for every other
    message: the dispatcher holds the gateway's whole queue until ``retry_after``.
    """

    kind = "quota"


class PermanentError(ProviderError):
    kind = "permanent"


class OptedOutError(PermanentError):
    """The recipient told the gateway to stop (Twilio 21610): a refusal of all contact.

    The dispatcher records it as an inbound "TC" would be recorded, so no other
    campaign, on any gateway, writes to the number again.
    """

    kind = "opted_out"


class NotReachableError(PermanentError):
    """The recipient cannot be reached on this channel (e.g. not a Zalo user)."""

    kind = "not_reachable"


class AuthError(ProviderError):
    kind = "auth"


class ConfigError(ProviderError):
    kind = "config"


class MoneyError(ProviderError):
    kind = "money"


@dataclasses.dataclass(frozen=True, slots=True)
class Setting:
    """A declared provider setting.  ``secret`` settings are read from the
    environment variable named by ``<name>_env`` in the configuration.

    loa checks the configuration against these declarations when it loads it:
    ``kind`` is the value's type as written in TOML (``str``, ``int``, ``float``
    accepting whole numbers too, ``bool``, or a union such as ``str | int``;
    ``None`` accepts anything), and ``gt``, ``ge``, ``le`` bound a number.
    """

    name: str
    required: bool = True
    secret: bool = False
    default: Any = None
    help: str = ""
    kind: Any = None
    gt: float | None = None
    ge: float | None = None
    le: float | None = None


class Provider:
    """Base class of a gateway adapter.

    Subclasses declare ``type`` (the name used in configuration), the
    ``channels`` they serve, their ``settings`` and a default ``rate`` in SMS
    parts per second, then implement :meth:`send`.
    """

    type: ClassVar[str] = ""
    channels: ClassVar[tuple[str, ...]] = ("sms",)
    settings: ClassVar[tuple[Setting, ...]] = ()
    rate: ClassVar[float] = 10.0          # parts per second unless configured
    dedupes_by_key: ClassVar[bool] = False  # a re-send with the same key cannot duplicate
    lookup_by_key: ClassVar[bool] = False   # lookup() finds a message by our key alone (no gateway id)

    def __init__(self, name: str, options: Mapping[str, Any], state: StateStore | None = None) -> None:
        self.name = name
        self.options = dict(options)
        self.state: StateStore = state if state is not None else MemoryStateStore()

    # -- the one required call -------------------------------------------------
    def send(self, message: OutgoingMessage) -> SendResult:
        raise NotImplementedError

    # -- optional hooks -------------------------------------------------------
    def fetch_receipts(self) -> Iterable[DeliveryReceipt]:
        """Receipts the gateway has for us now (polling gateways, simulator)."""
        return ()

    def receipts_recorded(self, receipts: Sequence[DeliveryReceipt], responses: Sequence[Response]) -> None:
        """loa has committed ``receipts`` and ``responses`` from :meth:`fetch_receipts` and
        :meth:`fetch_responses`.  A gateway that holds them until told (a lease, a cursor)
        lets them go here; until then it may hand them out again, and loa records a receipt
        or response twice as once."""

    def fetch_inbound(self) -> Iterable[InboundMessage]:
        """Subscribers' messages the gateway holds for us (an SMPP bind's inbound SMS); loa
        treats them as it treats the inbound of a webhook (:attr:`WebhookResult.inbound`).

        Fetching a message does not settle it: loa hands back, through
        :meth:`requeue_inbound`, those it could not record, and fetches them again."""
        return ()

    def requeue_inbound(self, messages: Sequence[InboundMessage]) -> None:
        """Take back ``messages`` from :meth:`fetch_inbound` that loa could not record (its
        database failed), to be fetched again first, in order.  A gateway that overrides
        fetch_inbound must override this too: it has already acknowledged the SMS, so
        dropping them here would lose a subscriber's refusal."""
        if messages:
            raise NotImplementedError(f"{type(self).__name__} fetches inbound SMS but cannot take them back")

    def fetch_responses(self) -> Iterable[Response]:
        """Recipient responses the gateway observed (simulator only, in practice)."""
        return ()

    def check(self) -> str:
        """Verify credentials and reachability without sending; return a summary."""
        return "no check available"

    def lookup(self, message_key: str, provider_id: str | None
               ) -> DeliveryReceipt | SendResult | NotReceived | None:
        """The gateway's own record of a message whose send outcome is unknown (a timeout, a
        crash during the call), by our key or by its id when one came back.

        * :class:`SendResult` or :class:`DeliveryReceipt`: the gateway took it;
        * :class:`NotReceived`: the gateway can be asked by our key and never took it, so it
          may be sent again.  Only a gateway that records every message it takes under our
          key may say so: absence from a partial record is not proof;
        * ``None``: the gateway cannot tell (no lookup by key, no record yet);
        * a :class:`ProviderError` when the lookup itself failed.
        """
        return None

    def search(self, message_key: str, to: str, since: datetime, known: frozenset[str]
               ) -> DeliveryReceipt | SendResult | NotReceived | None:
        """For a send whose outcome is unknown and that returned no gateway id, on a gateway
        that looks messages up only by its own id: its messages to ``to`` since ``since``
        (before the message could have been sent), less those loa knows as other messages
        (``known``: their gateway ids).  One left is this one; none left, and the gateway
        lists every message it took, means it never got it; several, or no such list: None.
        loa asks only when no other send to ``to`` on this gateway is unknown too."""
        return None

    def webhook(self, request: WebhookRequest) -> WebhookResult:
        """Verify and parse a callback (receipt or inbound SMS); raise WebhookRejected if forged."""
        raise WebhookRejected(404, f"gateway {self.name} takes no callbacks")

    def close(self) -> None:
        """Release connections."""

    def error(self, cls: type[ProviderError], message: str, **kw: Any) -> ProviderError:
        return cls(message, gateway=self.name, **kw)
