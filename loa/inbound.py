"""Subscribers' SMS to loa: replies are recorded, refusals take effect at once.

One path for every inbound SMS, whether a webhook brought it (:meth:`loa.web.Web.inbound`)
or a gateway held it for polling (an SMPP bind: :meth:`loa.dispatch.Dispatcher.poll`).
It lives apart from both so that the dispatcher does not depend on the HTTP side.

An inbound "TC", "TU CHOI", "HUY" or "STOP" opts the number out at once and sends one
confirmation through the gateway it came by (``[serve] opt_out_reply``).
"""

from __future__ import annotations

import logging

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from loa import db
from loa.config import Config
from loa.errors import LoaError
from loa.gateways import GatewayPool
from loa.importer import record_events
from loa.phones import PhoneError, mask, normalize
from loa.policy import is_opt_out, opt_out
from loa.text import measure
from providers.base import InboundMessage, OutgoingMessage, ProviderError

log = logging.getLogger("loa.inbound")
DEFAULT_OPT_OUT_REPLY = "Ban da tu choi nhan tin. Ban se khong nhan them tin nhan nao."


def receive_inbound(engine: Engine, pool: GatewayPool, config: Config, gateway: str,
                    message: InboundMessage) -> bool:
    """Record a subscriber's SMS; an opt-out word opts the number out at once and is confirmed
    once, through ``gateway``.  Returns True for an opt-out.

    A database error propagates with nothing recorded, so the caller can offer the message
    again; a message offered again after it was recorded (same ``provider_id``) is not
    recorded or confirmed twice.
    """
    try:
        phone = normalize(message.phone).e164
    except PhoneError:
        log.warning("gateway %s: reply from an unusable number %s", gateway, mask(message.phone))
        return False
    kind = "opted_out" if is_opt_out(message.text) else "replied"
    source = f"{gateway}:{message.provider_id or ''}"[:64]
    s, e = db.subscribers, db.events
    with engine.begin() as conn:
        # FOR UPDATE: concurrent deliveries of one callback (a gateway that gave up waiting)
        # take turns, so the second sees the first one's event (SQLite's BEGIN IMMEDIATE does the same)
        sid = conn.scalar(select(s.c.id).where(s.c.phone == phone).with_for_update())
        seen = sid is not None and conn.scalar(
            select(func.count()).select_from(e).where(e.c.subscriber_id == sid, e.c.type == kind,
                                                      e.c.source == source)) > 0
        if seen and message.provider_id:   # a retried callback or a re-delivered SMS: already handled
            return kind == "opted_out"
        if sid is not None:
            record_events(conn, [{"phone": phone, "type": kind, "occurred_at": message.at, "source": source,
                                  "attributes": {"text": message.text[:160]}}])
        # refusals take effect at once, for subscribers and for numbers loa does not know yet
        added = kind == "opted_out" and opt_out(conn, phone, message.at, f"reply:{gateway}")
    if kind == "opted_out":
        log.warning("gateway %s: %s opted out by reply", gateway, mask(phone))
        # a number loa does not know has no event to recognise a retried callback by:
        # it is confirmed only by the request that put it on the list
        if sid is not None or added:
            _confirm(pool, config, gateway, phone, message)
    return kind == "opted_out"


def _confirm(pool: GatewayPool, config: Config, gateway: str, phone: str, message: InboundMessage) -> None:
    reply = str(config.serve.get("opt_out_reply", DEFAULT_OPT_OUT_REPLY))
    info = measure(reply)
    key = f"loa-optout-{message.provider_id or phone[-9:]}"[:64]
    try:
        gw = pool.get(gateway)
        if "sms" not in gw.provider.channels:
            return
        gw.provider.send(OutgoingMessage(key=key, to=phone, channel="sms", text=reply,
                                         encoding=info.encoding, parts=info.parts))
    except (ProviderError, LoaError) as exc:
        log.error("gateway %s: opt-out confirmation to %s failed: %s", gateway, mask(phone), exc)
