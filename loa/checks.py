"""Whole-campaign validation: the file, its templates, its gateways, its segment."""

from __future__ import annotations

import os

from sqlalchemy import select
from sqlalchemy.engine import Engine

from loa import db
from loa.campaign import Campaign, load_all
from loa.config import Config
from loa.errors import LoaError
from loa.render import Renderer, variable_problems


def campaign_problems(config: Config, campaign: Campaign, attribute_keys: set[str] | None,
                      renderer: Renderer | None = None) -> list[str]:
    renderer = renderer or Renderer(config.templates_dir)
    problems: list[str] = []
    for spec in campaign.channels:
        where = f"{campaign.path}: {spec.channel}"
        try:
            paths = renderer.variables(spec.template, spec.channel)
        except LoaError as exc:
            problems.append(f"{where}.template: {exc}")
        else:
            problems += [f"{where}.template ({spec.template}): {p}" for p in variable_problems(paths, attribute_keys)]
            if "link" in paths and campaign.raw.get("link"):
                from loa.links import SECRET_ENV

                if len(os.environ.get(SECRET_ENV, "")) < 16:
                    problems.append(f"{where}.template ({spec.template}): uses {{{{ link }}}}, which needs "
                                    f"${SECRET_ENV} (at least 16 characters) to sign link codes")
                if not config.serve.get("public_url"):
                    problems.append(f"{where}.template ({spec.template}): uses {{{{ link }}}}, which needs "
                                    f"[serve] public_url in {config.label}")
            if "link" in paths and not campaign.raw.get("link"):
                problems.append(f"{where}.template ({spec.template}): uses {{{{ link }}}} but the campaign "
                                "sets no link target (link = \"https://...\")")
        # the gateway is checked even when the template is broken: every problem is listed
        gateway = spec.gateway or config.default_gateway(spec.channel)
        if gateway is None:
            problems.append(f"{where}.gateway: no gateway set and no defaults.{spec.channel}_gateway in {config.label}")
        elif gateway not in config.gateways:
            known = ", ".join(sorted(config.gateways)) or "none"
            problems.append(f"{where}.gateway: unknown gateway {gateway!r} (configured: {known})")
        else:
            problems += _gateway_problems(config, gateway, spec.channel, where)
    return problems + advertising_problems(config, campaign)


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
            problems.append(f"{campaign.path}: sms.gateway: advertising needs a registered brandname: {reason} "
                            f"(gateway {name!r})")
    return problems


def attribute_keys(engine: Engine | None) -> set[str] | None:
    if engine is None:
        return None
    with engine.connect() as conn:
        return set(conn.scalars(select(db.attribute_keys.c.name)))


def validate_all(config: Config, engine: Engine | None) -> tuple[dict[str, Campaign], list[str]]:
    campaigns, problems = load_all(config.campaigns_dir)
    keys = attribute_keys(engine)
    renderer = Renderer(config.templates_dir)
    for campaign in campaigns.values():
        problems += campaign_problems(config, campaign, keys, renderer)
    return campaigns, problems
