"""``loa campaigns preview``: real recipients rendered, and the run's size."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from loa import db
from loa.campaign import Campaign
from loa.config import Config
from loa.errors import LoaError, Text
from loa.phones import mask
from loa.plan import audience_select, preview_counts
from loa.render import Renderer


@dataclass
class Sample:
    who: str
    area: str
    channel: str
    text: str
    detail: str
    encoding: str | None = None   # SMS: GSM-7 or UCS-2
    parts: int | None = None      # SMS parts of this message


@dataclass
class PreviewResult:
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    states: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    estimated_parts: int = 0
    estimate: Any = None          # loa.cost.Estimate: what running it now would cost

    @property
    def audience(self) -> int:
        return sum(self.states.values())

    @property
    def planned(self) -> int:
        return self.states["planned"]

    @property
    def held_out(self) -> int:
        return self.states["held_out"]


def sample_contexts(engine: Engine, config: Config, campaign: Campaign, count: int, *,
                    longest: int = 0, any_state: bool = False) -> list[tuple[str, str, dict[str, Any]]]:
    """(who, area name, template context) of real recipients of ``campaign``, masked.

    The first ``count`` to be sent by id; with ``longest``, also that many with the longest
    names and area names, whose messages run longest; with ``any_state``, held-out and
    suppressed members stand in when nobody is to be sent.
    """
    from loa.dispatch import _context

    s, a = db.subscribers, db.areas
    parent = a.alias("parent")
    with engine.connect() as conn:
        audience = audience_select(conn, config, campaign, db.utcnow()).subquery()
        query = (
            select(s.c.id, s.c.phone, s.c.name, s.c.language, s.c.carrier, s.c.attributes,
                   a.c.code, a.c.name.label("area_name"), a.c.level, a.c.population,
                   parent.c.code.label("p_code"), parent.c.name.label("p_name"), parent.c.level.label("p_level"),
                   parent.c.population.label("p_population"))
            .join(audience, audience.c.id == s.c.id)
            .outerjoin(a, a.c.id == s.c.area_id).outerjoin(parent, parent.c.id == a.c.parent_id)
        )
        planned = query.where(audience.c.state == "planned")
        rows = list(conn.execute(planned.order_by(s.c.id).limit(count)).mappings())
        if not rows and any_state:
            planned = query
            rows = list(conn.execute(query.order_by(s.c.id).limit(count)).mappings())
        if longest and rows:
            for column in (s.c.name, a.c.name):
                # coalesce: PostgreSQL sorts NULLs first in a descending order
                rows += conn.execute(planned.order_by(func.coalesce(func.length(column), 0).desc(), s.c.id)
                                     .limit(longest)).mappings()
    seen: set[int] = set()
    samples = []
    for row in rows:
        if row["id"] in seen:
            continue
        seen.add(row["id"])
        ctx = _context(dict(row) | {"campaign": campaign.name, "description": campaign.description})
        samples.append((Text("{name} {phone}", name=row["name"] or Text("(no name)"), phone=mask(row["phone"])),
                        row["area_name"] or "-", ctx))
    return samples


def preview(engine: Engine, config: Config, campaign: Campaign, count: int = 3) -> PreviewResult:
    result = PreviewResult()
    result.states, result.reasons = preview_counts(engine, config, campaign)
    renderer = Renderer(config.templates_dir, campaign.templates)   # its stored version's templates
    spec = campaign.channels[0]
    sample_parts = []
    for who, area, ctx in sample_contexts(engine, config, campaign, count):
        try:
            if spec.channel == "sms":
                sms = renderer.render_sms(spec.template, ctx, unaccented=spec.unaccented, max_parts=spec.max_parts,
                                          advertising_opt_out=campaign.opt_out if campaign.advertising else None)
                sample_parts.append(sms.info.parts)
                detail = f"{sms.info.encoding}, {sms.info.units} units, {sms.info.parts} part(s)"
                result.samples.append(Sample(who, area, "sms", sms.text, detail, sms.info.encoding, sms.info.parts))
            else:
                z = renderer.render_zalo(spec.template, ctx)
                text = "\n".join(f"{k}: {v}" for k, v in z.data.items())
                result.samples.append(Sample(who, area, spec.channel, text, f"ZNS template {z.template_id}"))
        except LoaError as exc:
            result.errors.append(f"{who}: {exc}")
    if sample_parts:
        result.estimated_parts = round(result.planned * sum(sample_parts) / len(sample_parts))
    if not result.errors:
        from loa.cost import estimate

        result.estimate = estimate(engine, config, campaign)
        if spec.channel == "sms":   # one figure for the parts: the estimate's, from the larger sample
            result.estimated_parts = result.estimate.parts
    return result


def record_preview(engine: Engine, actor: str, name: str, result: PreviewResult) -> None:
    """A preview shows real subscribers' names and messages: an access to personal data, audited."""
    from loa import audit

    audit.record_now(engine, actor, "campaigns.preview", "campaign", name,
                     after={"subscribers_shown": len(result.samples) + len(result.errors), "audience": result.audience})


__all__ = ["preview", "record_preview"]
