"""Whole-campaign validation: the file, its templates, its gateways, its segment."""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from loa import db
from loa.campaign import Campaign, load_all
from loa.config import Config
from loa.errors import LoaError, Text
from loa.render import Renderer, variable_problems

# Validation renders each template for the segment's first members, and for those with the
# longest names and area names, whose messages run longest.
SAMPLE_FIRST = 10
SAMPLE_LONGEST = 3


def campaign_problems(config: Config, campaign: Campaign, attribute_keys: set[str] | None,
                      renderer: Renderer | None = None) -> list[str]:
    renderer = renderer or Renderer(config.templates_dir, campaign.templates)
    problems: list[str] = []
    for spec in campaign.channels:
        where = f"{campaign.path}: {spec.channel}"
        try:
            paths = renderer.variables(spec.template, spec.channel)
        except LoaError as exc:
            problems.append(Text("{where}.template: {problem}", where=where, problem=exc.args[0] if exc.args else exc))
        else:
            problems += [f"{where}.template ({spec.template}): {p}" for p in variable_problems(paths, attribute_keys)]
            if "link" in paths and campaign.raw.get("link"):
                from loa.links import SECRET_ENV

                if len(os.environ.get(SECRET_ENV, "")) < 16:
                    problems.append(Text("{where}.template ({template}): uses {{{{ link }}}}, which needs "
                                         "${env} (at least 16 characters) to sign link codes", where=where,
                                         template=spec.template, env=SECRET_ENV))
                if not config.serve.get("public_url"):
                    problems.append(Text("{where}.template ({template}): uses {{{{ link }}}}, which needs "
                                         "[serve] public_url in {config}", where=where, template=spec.template,
                                         config=config.label))
            if "link" in paths and not campaign.raw.get("link"):
                problems.append(Text("{where}.template ({template}): uses {{{{ link }}}} but the campaign "
                                     "sets no link target (link = \"https://...\")", where=where, template=spec.template))
        # the gateway is checked even when the template is broken: every problem is listed
        gateway = spec.gateway or config.default_gateway(spec.channel)
        if gateway is None:
            problems.append(Text("{where}.gateway: no gateway set and no defaults.{channel}_gateway in {config}",
                                 where=where, channel=spec.channel, config=config.label))
        elif gateway not in config.gateways:
            known = ", ".join(sorted(config.gateways)) or "none"
            problems.append(Text("{where}.gateway: unknown gateway {gateway!r} (configured: {known})", where=where,
                                 gateway=gateway, known=known))
        else:
            problems += _gateway_problems(config, gateway, spec.channel, where)
    from loa.cost import budget_problems

    return problems + advertising_problems(config, campaign) + budget_problems(config, campaign)


def _gateway_problems(config: Config, name: str, channel: str, where: str) -> list[str]:
    from providers import registry

    spec = config.gateway(name)
    try:
        cls = registry.get(spec.type)
    except registry.UnknownProviderError as exc:
        return [f"{spec.source}.type: {exc}"]
    if channel not in cls.channels:
        return [f"{where}.gateway: gateway {name!r} ({spec.type}) does not send {channel} "
                f"(it sends {', '.join(cls.channels)})"]
    return []


# settings that carry an alphanumeric sender (brandname), per gateway type
SENDER_SETTINGS = ("brandname", "source_addr", "from_number")


def advertising_problems(config: Config, campaign: Campaign) -> list[str]:
    """Decree 91/2020: an advertising SMS comes from a registered brandname of at most 11
    characters without diacritics, and carries opt-out instructions (checked by the parser)."""
    from loa.policy import brandname_problem

    if not campaign.advertising:
        return []
    problems = []
    for spec in campaign.channels:
        if spec.channel != "sms":
            continue
        name = spec.gateway or config.default_gateway("sms")
        if name is None or name not in config.gateways:
            continue
        settings = config.gateways[name].settings
        sender = next((str(settings[k]) for k in SENDER_SETTINGS if k in settings), None)
        if sender is not None and not sender.lstrip("+").isdigit() and (reason := brandname_problem(sender)):
            problems.append(Text("{path}: sms.gateway: advertising needs a registered brandname: {reason} "
                                 "(gateway {name!r})", path=str(campaign.path), reason=reason, name=name))
    return problems


def render_problems(config: Config, campaign: Campaign, engine: Engine | None,
                    renderer: Renderer | None = None, *, areas: bool = True,
                    skip: frozenset[str] = frozenset()) -> list[str]:
    """Every template of the campaign, on every channel, rendered as a send would.

    Against real members of its segment, or a synthetic subscriber when it has none (or
    there is no database); a rendering over ``max_parts``, an empty one, a sandbox
    refusal, a loop past the sandbox's bounds or an include outside the templates folder
    is a problem, once per reason.  The segment's areas must resolve, unless ``areas`` is
    False and no area was imported yet.  The channels in ``skip`` (whose templates have
    problems already) are not rendered.
    """
    from loa.preview import sample_contexts
    from loa.segments import SegmentError

    renderer = renderer or Renderer(config.templates_dir, campaign.templates)
    problems: list[str] = []
    samples: list[tuple[str, str, dict[str, Any]]] = []
    if engine is not None:
        try:
            samples = sample_contexts(engine, config, campaign, SAMPLE_FIRST, longest=SAMPLE_LONGEST, any_state=True)
        except SegmentError as exc:
            if areas or areas_imported(engine):
                problems.append(Text("{path}: {reason}", path=str(campaign.path), reason=exc.args[0] if exc.args else exc))
    synthetic = not samples
    if synthetic:
        samples = [("a synthetic subscriber", "", synthetic_context(campaign))]
    for spec in campaign.channels:
        if spec.channel in skip:
            continue
        try:
            renderer.variables(spec.template, spec.channel)
        except LoaError:
            continue    # a template that does not load is reported by campaign_problems
        failed: dict[str, list[str]] = {}
        for who, _, ctx in samples:
            reason = render_failure(config, renderer, campaign, spec.channel, ctx)
            if reason is not None:
                failed.setdefault(reason, []).append(who)
        for reason, who in failed.items():
            whom: str
            if synthetic:
                whom = Text("for a synthetic subscriber: the segment has no members yet") if engine is not None \
                    else Text("for a synthetic subscriber: no database yet")
            elif len(who) == len(samples) == 1:
                whom = Text("for {who}, the segment's one member", who=who[0])
            else:
                whom = Text("for {n:n} of {of:n} sample subscribers, e.g. {who}", n=len(who), of=len(samples), who=who[0])
            problems.append(Text("{path}: {channel}.template: {reason} ({whom})", path=str(campaign.path),
                                 channel=spec.channel, reason=reason, whom=whom))
    return problems


def render_failure(config: Config, renderer: Renderer, campaign: Campaign, channel: str,
                   context: dict[str, Any]) -> str | None:
    """Why rendering ``channel``'s template for ``context`` fails, as a send renders it; or None."""
    spec = campaign.channel(channel)
    context = dict(context)
    if campaign.raw.get("link"):
        from loa.links import url_for

        public = str(config.serve.get("public_url") or "https://loa.invalid")
        context["link"] = url_for(public, 1)
    try:
        if channel == "sms":
            renderer.render_sms(spec.template, context, unaccented=spec.unaccented, max_parts=spec.max_parts,
                                advertising_opt_out=campaign.opt_out if campaign.advertising else None)
        else:
            payload = renderer.render_zalo(spec.template, context)
            empty = [key for key, value in payload.data.items() if not value]
            if empty:
                return (f"template {spec.template!r}: data.{empty[0]} rendered empty "
                        "(a ZNS template needs a value for each of its parameters)")
    except LoaError as exc:
        return str(exc)
    return None


def synthetic_context(campaign: Campaign) -> dict[str, Any]:
    """A plausible recipient for a segment with nobody in it yet: a long name, every attribute the
    templates read set to a word, the segment's first area."""
    areas = campaign.segment.get("areas") or ["Sơn La"]
    province = {"code": "00", "name": str(areas[0]), "level": "province", "population": 0, "parent": None}
    return {
        "subscriber": {"name": "Nguyễn Thị Phương Thảo", "phone": "+84912345678", "language": "vi",
                       "carrier": "Viettel"},
        "attr": _AnyAttribute(),
        "area": {"code": "000", "name": f"Huyện {areas[0]}", "level": "district", "population": 0,
                 "parent": province},
        "campaign": {"name": campaign.name, "description": campaign.description},
    }


class _AnyAttribute(dict[str, str]):
    """A synthetic subscriber's attributes: whatever a template reads is there, as a word."""

    def __missing__(self, key: str) -> str:
        return "có"


def areas_imported(engine: Engine) -> bool:
    with engine.connect() as conn:
        return bool(conn.scalar(select(func.count()).select_from(db.areas)))


def attribute_keys(engine: Engine | None) -> set[str] | None:
    if engine is None:
        return None
    with engine.connect() as conn:
        return set(conn.scalars(select(db.attribute_keys.c.name)))


def validate_all(config: Config, engine: Engine | None, *, folder: bool = False
                 ) -> tuple[dict[str, Campaign], list[str]]:
    """Every campaign's problems: the definition, its templates statically and rendered, its
    gateways, its segment.  Before any area is imported, segment areas are not checked.

    The stored current versions (loa.versions.catalog); the campaigns folder itself with
    ``folder``, or without a database."""
    if engine is None or folder:
        campaigns, problems = load_all(config.campaigns_dir)
    else:
        from loa.versions import catalog

        campaigns, problems = catalog(engine, config)
    keys = attribute_keys(engine)
    for campaign in campaigns.values():
        renderer = Renderer(config.templates_dir, campaign.templates)
        static = campaign_problems(config, campaign, keys, renderer)
        # a variable nobody has is said once, not again for every sample that lacks it
        broken = frozenset(spec.channel for spec in campaign.channels
                           if any(p.startswith(f"{campaign.path}: {spec.channel}.template") for p in static))
        problems += static + render_problems(config, campaign, engine, renderer, areas=False, skip=broken)
    return campaigns, problems
