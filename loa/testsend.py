"""Test sends: a campaign's real message, sent to staff before it goes to anyone else.

``loa campaigns test NAME --to PHONE`` renders the message of one subscriber (the one
named, or the first of the campaign's audience) exactly as the dispatcher would, and
sends it through the campaign's real gateway, within that gateway's rate limit, to each
staff number.  Each send is a row of ``test_sends``, a ledger of its own: the outbox,
which reports, ``loa status``, ``/metrics``, the frequency caps and the budgets read,
never holds one.  Who sent it, to which (masked) numbers and whose message, is in the
audit log, written with the rows before anything is sent.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine

from loa import audit, cost, db
from loa.campaign import Campaign
from loa.config import Config
from loa.errors import InputError, LoaError, NotFound, Text
from loa.gateways import GatewayPool
from loa.phones import PhoneError, mask, normalize
from providers.base import OutgoingMessage, ProviderError

T = db.test_sends
MAX_NUMBERS = 10     # a test goes to a few staff phones, not to a list


@dataclass
class TrialResult:
    phone: str                  # masked
    state: str                  # sent, delivered, failed, unknown
    provider_id: str | None = None
    error_code: str | None = None
    error_text: str | None = None
    parts: int | None = None
    cost_vnd: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"phone": self.phone, "state": self.state, "provider_id": self.provider_id,
                "error_code": self.error_code, "error_text": self.error_text, "parts": self.parts,
                "cost_vnd": self.cost_vnd}


@dataclass
class Trial:
    campaign: str
    subscriber: str             # whose message: name and masked number
    channel: str
    gateway: str
    text: str                   # the SMS, or the ZNS template's data
    detail: str                 # encoding and parts, or the ZNS template
    results: list[TrialResult] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"campaign": self.campaign, "subscriber": self.subscriber, "channel": self.channel,
                "gateway": self.gateway, "text": self.text, "detail": self.detail,
                "results": [r.as_dict() for r in self.results]}


def staff_numbers(raw: list[str]) -> list[str]:
    """The numbers to send to, in E.164, each once; an invalid one is refused by name."""
    if not raw:
        raise InputError(Text("a test send needs at least one staff number: --to PHONE"))
    numbers: list[str] = []
    for value in raw:
        try:
            e164 = normalize(value).e164
        except PhoneError as exc:
            raise InputError(Text("--to {value!r}: {reason}; nothing was sent", value=value, reason=exc.reason)) from None
        if e164 not in numbers:
            numbers.append(e164)
    if len(numbers) > MAX_NUMBERS:
        raise InputError(Text("--to: {n} numbers; a test goes to at most {most} staff phones", n=len(numbers),
                              most=MAX_NUMBERS))
    return numbers


def _subscriber_context(engine: Engine, config: Config, campaign: Campaign, phone: str | None,
                        principal: Any = None) -> tuple[int, str, dict[str, Any]]:
    """(subscriber id, who, template context): of the subscriber with ``phone``, or of the first
    member of the campaign's audience.  A principal bound to an area chooses only among the
    subscribers of its subtree, and learns nothing of the others (the same refusal)."""
    from loa.dispatch import _context
    from loa.plan import audience_select

    s, a = db.subscribers, db.areas
    parent = a.alias("parent")
    query = (select(s.c.id, s.c.phone, s.c.name, s.c.language, s.c.carrier, s.c.attributes,
                    a.c.code, a.c.name.label("area_name"), a.c.level, a.c.population,
                    parent.c.code.label("p_code"), parent.c.name.label("p_name"),
                    parent.c.level.label("p_level"), parent.c.population.label("p_population"))
             .outerjoin(a, a.c.id == s.c.area_id).outerjoin(parent, parent.c.id == a.c.parent_id))
    with engine.connect() as conn:
        if phone is not None:
            try:
                e164 = normalize(phone).e164
            except PhoneError as exc:
                raise InputError(Text("--subscriber {phone!r}: {reason}; nothing was sent", phone=phone,
                                      reason=exc.reason)) from None
            within = getattr(principal, "area_path", None)
            chosen = query.where(s.c.phone == e164)
            if within is not None:
                chosen = chosen.where(a.c.path.startswith(within, autoescape=True))
            row = conn.execute(chosen).mappings().first()
            if row is None:
                if within is not None:
                    raise NotFound(Text("--subscriber: no subscriber in the area of {who} has the number {phone}; "
                                        "nothing was sent", who=principal.describe(), phone=mask(e164)))
                raise NotFound(Text("--subscriber: no subscriber has the number {phone}; nothing was sent",
                                    phone=mask(e164)))
        else:
            audience = audience_select(conn, config, campaign, db.utcnow()).subquery()
            row = conn.execute(query.join(audience, audience.c.id == s.c.id)
                               .order_by((audience.c.state != "planned"), s.c.id).limit(1)).mappings().first()
            if row is None:
                raise NotFound(Text("campaign {name}: its audience is empty, so there is no message to "
                                    "test; name a subscriber with --subscriber PHONE", name=campaign.name))
    ctx = _context(dict(row) | {"campaign": campaign.name, "description": campaign.description})
    return int(row["id"]), Text("{name} {phone}", name=row["name"] or Text("(no name)"), phone=mask(row["phone"])), ctx


def _message(config: Config, campaign: Campaign, ctx: dict[str, Any]) -> tuple[str, OutgoingMessage, str, str]:
    """(channel, message without its recipient and key, text, detail), as the dispatcher renders it."""
    from loa.versions import renderer_for

    spec = campaign.channels[0]
    renderer = renderer_for(config, campaign)   # the stored version's templates
    if spec.channel == "sms":
        sms = renderer.render_sms(spec.template, ctx, unaccented=spec.unaccented, max_parts=spec.max_parts,
                                  advertising_opt_out=campaign.opt_out if campaign.advertising else None)
        message = OutgoingMessage(key="", to="", channel="sms", text=sms.text, encoding=sms.info.encoding,
                                  parts=sms.info.parts, advertising=campaign.advertising)
        return "sms", message, sms.text, f"{sms.info.encoding}, {sms.info.parts} part(s)"
    z = renderer.render_zalo(spec.template, ctx)
    message = OutgoingMessage(key="", to="", channel=spec.channel, template_id=z.template_id,
                              template_data=z.data, advertising=campaign.advertising)
    return spec.channel, message, "\n".join(f"{k}: {v}" for k, v in z.data.items()), f"ZNS template {z.template_id}"


def send_test(engine: Engine, config: Config, campaign: Campaign, to: list[str], *, actor: str,
              subscriber: str | None = None, principal: Any = None, pool: GatewayPool | None = None) -> Trial:
    """Send ``campaign``'s real message for one subscriber to the staff numbers ``to``.

    ``actor`` is who sends it (for the audit log and the ledger); with a ``principal``
    (``loa.auth.Principal``), it must be allowed ``campaigns.test`` on the campaign's areas.
    A bad number or subscriber is refused before anything is written or sent.
    """
    from loa.plan import ensure_campaign, gateway_for

    numbers = staff_numbers(to)
    if principal is not None:
        from loa.auth import require

        require(principal, "campaigns.test", _segment_areas(engine, campaign))
    gateway = gateway_for(config, campaign, campaign.channels[0].channel)
    subscriber_id, who, ctx = _subscriber_context(engine, config, campaign, subscriber, principal)
    channel, template, text, detail = _message(config, campaign, ctx)
    carrier = str(ctx["subscriber"].get("carrier") or "")
    result = Trial(campaign.name, who, channel, gateway, text, detail)
    now = db.utcnow()
    with engine.begin() as conn:
        campaign_id = ensure_campaign(conn, campaign)
        ids = [conn.execute(insert(T).values(
            campaign_id=campaign_id, subscriber_id=subscriber_id, phone=phone, actor=actor[:100], channel=channel,
            gateway=gateway, state="sending", created_at=now).returning(T.c.id)).scalar_one() for phone in numbers]
        audit.record(conn, actor, "campaigns.test", "campaign", campaign.name, after={
            "to": [mask(p) for p in numbers], "subscriber": who, "channel": channel, "gateway": gateway,
            "test_sends": ids})
    own_pool = pool is None
    pool = pool or GatewayPool(config, engine, shared_limit=config.send.get("limiter", "database") == "database")
    try:
        for test_id, phone in zip(ids, numbers, strict=True):
            result.results.append(_send_one(engine, config, pool, test_id, phone, gateway, template, carrier))
    finally:
        if own_pool:
            pool.close()
    return result


def _send_one(engine: Engine, config: Config, pool: GatewayPool, test_id: int, phone: str, gateway: str,
              template: OutgoingMessage, carrier: str) -> TrialResult:
    # a key of its own, never a campaign message's: a gateway that deduplicates must not take
    # it for one, nor for an earlier test of another database
    key = f"loa-test-{test_id}-{uuid.uuid4().hex[:8]}"
    message = OutgoingMessage(key=key, to=phone, channel=template.channel, text=template.text,
                              encoding=template.encoding, parts=template.parts, advertising=template.advertising,
                              template_id=template.template_id, template_data=template.template_data)
    values: dict[str, Any]
    try:
        gw = pool.get(gateway)
        gw.limiter.acquire(message.parts)   # the gateway's limit, shared with the workers
        sent = gw.provider.send(message)
        parts = sent.parts or message.parts
        values = {"state": "delivered" if sent.status == "delivered" else "sent", "provider_id": sent.provider_id,
                  "parts": parts, "encoding": message.encoding if message.channel == "sms" else None,
                  "cost_vnd": cost.price(config, gateway, message.channel, carrier, parts), "sent_at": db.utcnow()}
    except ProviderError as exc:
        values = {"state": "unknown" if exc.ambiguous else "failed", "error_code": exc.code or exc.kind,
                  "error_text": str(exc)[:500]}
    except LoaError as exc:   # the gateway cannot be built: a missing secret, a bad setting
        values = {"state": "failed", "error_code": "config", "error_text": str(exc)[:500]}
    with engine.begin() as conn:
        conn.execute(update(T).where(T.c.id == test_id).values(**values))
    return TrialResult(mask(phone), values["state"], values.get("provider_id"), values.get("error_code"),
                      values.get("error_text"), values.get("parts"), values.get("cost_vnd"))


def _segment_areas(engine: Engine, campaign: Campaign) -> list[Any]:
    from loa.areas import AreaIndex

    names = (campaign.segment or {}).get("areas") or []
    with engine.connect() as conn:
        index = AreaIndex.load(conn)
    return [index.resolve(str(name)) for name in names]


__all__ = ["Trial", "TrialResult", "send_test", "staff_numbers"]
