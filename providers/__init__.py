"""Gateway adapters for loa.

This package is a leaf: it depends on requests, twilio and smpplib only, never on
the ``loa`` engine.  Each gateway is one module holding one small ``Provider``
subclass; :mod:`providers.registry` finds them by name or through the
``loa.providers`` entry-point group.
"""

from providers.base import (
    AuthError,
    ConfigError,
    DeferredError,
    DeliveryReceipt,
    InboundMessage,
    MemoryStateStore,
    MoneyError,
    NotReachableError,
    OptedOutError,
    OutgoingMessage,
    PermanentError,
    Provider,
    ProviderError,
    QuotaError,
    Response,
    RetryableError,
    SendResult,
    Setting,
    StateStore,
    ThrottledError,
    WebhookRejected,
    WebhookRequest,
    WebhookResult,
)

__all__ = [
    "DeferredError",
    "InboundMessage",
    "MemoryStateStore",
    "Setting",
    "StateStore",
    "WebhookRejected",
    "WebhookRequest",
    "WebhookResult",
    "AuthError",
    "ConfigError",
    "DeliveryReceipt",
    "MoneyError",
    "NotReachableError",
    "OptedOutError",
    "OutgoingMessage",
    "PermanentError",
    "Provider",
    "ProviderError",
    "QuotaError",
    "Response",
    "RetryableError",
    "SendResult",
    "ThrottledError",
]
