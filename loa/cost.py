"""What campaigns cost: estimates before a run, spend from the ledger, and budgets.

Prices are the gateways' (configuration: ``price_per_part``, optionally
``price_per_part_by_carrier``, and ``price_per_zns``, in VND).  A message's price is
fixed when it is sent: the dispatcher writes it on its outbox row (``cost_vnd``), so
the spend of a campaign is a sum over its ledger that a later change of price leaves
alone.  A message moved on to a fallback channel and sent again adds that send's price.

A campaign's ``budget`` (VND, over all its runs) is held by reservation.  Before a worker
sends a batch it has claimed and rendered, it takes its campaign's row lock and checks
that what was spent, plus what every worker holds for messages in flight (claimed,
sending, or of unknown outcome: ``reserved_vnd``), plus this batch stays within the
budget; it writes its reservations in the same transaction.  Messages that do not fit
go back unsent and the campaign is paused by ``system``, with the reason, before any
of them could go over.  A reservation is the message's own price (it is rendered), so
the check is exact while gateways count parts as loa does; a send that fails frees its
reservation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, bindparam, case, func, select, update
from sqlalchemy.engine import Connection, Engine

from loa import db, lifecycle
from loa.campaign import Campaign
from loa.config import Config
from loa.errors import LoaError, NotFound, Text

O, R, C, S = db.outbox, db.runs, db.campaigns, db.subscribers
HELD = ("claimed", "sending", "unknown")   # a reservation counts while the message may still go out
SYSTEM = "system"                          # the actor of a pause for budget
# Why a campaign was paused for its budget, as its state_reason and its messages keep it (in
# English, which the CLI, the API and the exports read; loa.reasons says it in the console's language)
BUDGET_STOP = "budget {budget:,} VND: {total:,} VND spent or in flight, and the next message {next}"
NEXT_COSTS = "costs {cost:,} VND"
NEXT_UNPRICED = "has no price"
SAMPLE = 50                                # recipients rendered for an estimate's parts per message
SAMPLE_LONGEST = 5


def price(config: Config, gateway: str, channel: str, carrier: str, parts: int) -> int | None:
    """What one message costs through ``gateway``, in VND; None without a price for it."""
    spec = config.gateways.get(gateway)
    if spec is None:
        return None
    if channel == "sms":
        per_part = spec.prices.sms_part(carrier)
        return None if per_part is None else per_part * max(parts, 1)
    return spec.prices.per_zns


def missing_price(config: Config, gateway: str, channel: str) -> str | None:
    """Why messages of ``channel`` through ``gateway`` have no price, or None."""
    spec = config.gateways.get(gateway)
    if spec is None:
        return f"no gateway {gateway!r}"
    if channel == "sms" and spec.prices.per_part is None and not spec.prices.by_carrier:
        return f"gateway {gateway} has no price_per_part"
    if channel != "sms" and spec.prices.per_zns is None:
        return f"gateway {gateway} has no price_per_zns"
    return None


def vnd(amount: int | None) -> str:
    """An amount as the command line prints it: "84,126 VND"."""
    return "—" if amount is None else f"{amount:,} VND"


# -- estimates ----------------------------------------------------------------------------

@dataclass
class EstimateLine:
    channel: str
    gateway: str
    carrier: str            # as phonenumbers names it; "" for unknown
    messages: int
    parts: float            # estimated SMS parts (messages for ZNS)
    unit_price: int | None  # per part, or per ZNS message
    cost_vnd: int | None

    def as_dict(self) -> dict[str, Any]:
        return {"channel": self.channel, "gateway": self.gateway, "carrier": self.carrier,
                "messages": self.messages, "parts": round(self.parts), "unit_price_vnd": self.unit_price,
                "cost_vnd": self.cost_vnd}


@dataclass
class Estimate:
    """What a run planned now would cost if every message went by the first channel."""

    campaign: str
    channel: str
    gateway: str
    messages: int = 0
    parts_per_message: float = 0.0
    lines: list[EstimateLine] = field(default_factory=list)
    budget: int | None = None
    spent_vnd: int = 0            # by earlier runs: the budget covers every run
    notes: list[str] = field(default_factory=list)

    @property
    def parts(self) -> int:
        return round(sum(line.parts for line in self.lines))

    @property
    def cost_vnd(self) -> int | None:
        """The total, or None when some messages have no price (see ``notes``)."""
        if any(line.cost_vnd is None for line in self.lines):
            return None
        return sum(line.cost_vnd or 0 for line in self.lines)

    @property
    def over_budget(self) -> bool:
        cost = self.cost_vnd
        return self.budget is not None and cost is not None and self.spent_vnd + cost > self.budget

    def as_dict(self) -> dict[str, Any]:
        return {"campaign": self.campaign, "channel": self.channel, "gateway": self.gateway,
                "messages": self.messages, "parts_per_message": round(self.parts_per_message, 3),
                "parts": self.parts, "cost_vnd": self.cost_vnd, "budget_vnd": self.budget,
                "spent_vnd": self.spent_vnd, "over_budget": self.over_budget,
                "lines": [line.as_dict() for line in self.lines], "notes": self.notes}


def parts_per_message(engine: Engine, config: Config, campaign: Campaign, sample: int = SAMPLE) -> float:
    """The mean SMS parts of the first channel's message, rendered for a sample of the
    audience (its first members and those with the longest names, whose messages run
    longest); 1 for ZNS, and for an audience of nobody."""
    from loa.preview import sample_contexts
    from loa.versions import renderer_for

    spec = campaign.channels[0]
    if spec.channel != "sms":
        return 1.0
    renderer = renderer_for(config, campaign)   # the stored version's templates
    parts = []
    for who, _, ctx in sample_contexts(engine, config, campaign, sample, longest=SAMPLE_LONGEST):
        try:
            sms = renderer.render_sms(spec.template, ctx, unaccented=spec.unaccented, max_parts=spec.max_parts,
                                      advertising_opt_out=campaign.opt_out if campaign.advertising else None)
        except LoaError as exc:
            raise LoaError(Text("campaign {name}: cannot estimate its cost: {who}: {problem}", name=campaign.name,
                                who=who, problem=exc.args[0] if exc.args else str(exc))) from None
        parts.append(sms.info.parts)
    return sum(parts) / len(parts) if parts else 1.0


def estimate(engine: Engine, config: Config, campaign: Campaign, *, parts: float | None = None) -> Estimate:
    """The cost of running ``campaign`` now: its audience to send, per carrier, times the parts
    of its rendered message (``parts`` if the caller rendered them, else a sample here), at the
    first channel's gateway's prices."""
    from loa.plan import audience_select, gateway_for

    spec = campaign.channels[0]
    gateway = gateway_for(config, campaign, spec.channel)
    per_message = parts if parts is not None else parts_per_message(engine, config, campaign)
    result = Estimate(campaign.name, spec.channel, gateway, parts_per_message=per_message, budget=campaign.budget)
    with engine.connect() as conn:
        audience = audience_select(conn, config, campaign, db.utcnow()).subquery()
        carriers = conn.execute(
            select(S.c.carrier, func.count()).join(audience, audience.c.id == S.c.id)
            .where(audience.c.state == "planned").group_by(S.c.carrier).order_by(S.c.carrier)).all()
        result.spent_vnd = _spent(conn, campaign.name)
    prices = config.gateway(gateway).prices
    for carrier, n in carriers:
        if spec.channel == "sms":
            unit = prices.sms_part(carrier or "")
            line_parts = n * per_message
        else:
            unit, line_parts = prices.per_zns, float(n)
        result.lines.append(EstimateLine(spec.channel, gateway, carrier or "", int(n), line_parts, unit,
                                          None if unit is None else round(line_parts * unit)))
        result.messages += int(n)
    if why := missing_price(config, gateway, spec.channel):
        result.notes.append(f"{why} in {config.label}: the cost is unknown")
    elif any(line.cost_vnd is None for line in result.lines):
        unpriced = sorted({line.carrier or "unknown carrier" for line in result.lines if line.cost_vnd is None})
        result.notes.append(f"gateway {gateway} has no price for {', '.join(unpriced)} (no price_per_part "
                            f"besides price_per_part_by_carrier): the cost is unknown")
    if len(campaign.channels) > 1:
        result.notes.append(f"if every message goes by {spec.channel}; those that fall back to "
                            f"{', '.join(c.channel for c in campaign.channels[1:])} cost more")
    return result


# -- spend ----------------------------------------------------------------------------------

@dataclass
class Spend:
    campaign: str
    spent_vnd: int = 0
    messages: int = 0           # sent with a price
    unpriced: int = 0           # sent through a gateway that had no price then
    held_vnd: int = 0           # reserved for messages in flight
    budget: int | None = None

    @property
    def left_vnd(self) -> int | None:
        return None if self.budget is None else self.budget - self.spent_vnd - self.held_vnd

    def as_dict(self) -> dict[str, Any]:
        return {"campaign": self.campaign, "spent_vnd": self.spent_vnd, "messages": self.messages,
                "unpriced": self.unpriced, "in_flight_vnd": self.held_vnd, "budget_vnd": self.budget,
                "left_vnd": self.left_vnd}


def _campaign_rows(name: str) -> Any:
    return O.c.run_id.in_(select(R.c.id).join(C, C.c.id == R.c.campaign_id).where(C.c.name == name))


def _spent(conn: Connection, name: str) -> int:
    return int(conn.scalar(select(func.coalesce(func.sum(O.c.cost_vnd), 0)).where(_campaign_rows(name))) or 0)


def spend(engine: Engine, name: str) -> Spend:
    """What campaign ``name`` has spent so far, by its ledger; its budget is its latest run's."""
    from loa.status import HANDED_OVER, states_of

    handed = states_of(*HANDED_OVER)
    with engine.connect() as conn:
        if conn.scalar(select(C.c.id).where(C.c.name == name)) is None:
            raise NotFound(Text("campaign {name!r} has no runs yet", name=name))
        row = conn.execute(select(
            func.coalesce(func.sum(O.c.cost_vnd), 0),
            func.sum(case((and_(O.c.cost_vnd.is_not(None), O.c.state.in_(handed)), 1), else_=0)),
            func.sum(case((and_(O.c.cost_vnd.is_(None), O.c.state.in_(handed)), 1), else_=0)),
            func.coalesce(func.sum(case((O.c.state.in_(HELD), O.c.reserved_vnd), else_=None)), 0),
        ).where(_campaign_rows(name))).one()
        definition = conn.scalar(select(R.c.definition).join(C, C.c.id == R.c.campaign_id)
                                 .where(C.c.name == name).order_by(R.c.id.desc()).limit(1)) or {}
    budget = definition.get("budget")
    return Spend(name, int(row[0] or 0), int(row[1] or 0), int(row[2] or 0), int(row[3] or 0),
                 int(budget) if budget else None)


def spend_by_run(conn: Connection, run_ids: Iterable[int]) -> dict[int, int]:
    """Run id -> VND spent (runs without a priced message are absent)."""
    ids = list(run_ids)
    if not ids:
        return {}
    return {run_id: int(total) for run_id, total in conn.execute(
        select(O.c.run_id, func.sum(O.c.cost_vnd)).where(O.c.run_id.in_(ids), O.c.cost_vnd.is_not(None))
        .group_by(O.c.run_id))}


def spend_by_area(conn: Connection, campaign_id: int) -> dict[int | None, int]:
    """Outbox area id -> VND spent by the campaign there."""
    return {area_id: int(total) for area_id, total in conn.execute(
        select(O.c.area_id, func.sum(O.c.cost_vnd)).join(R, R.c.id == O.c.run_id)
        .where(R.c.campaign_id == campaign_id, O.c.cost_vnd.is_not(None)).group_by(O.c.area_id))}


# -- budgets --------------------------------------------------------------------------------

@dataclass
class BudgetStop:
    """A campaign whose next message would go over its budget."""

    campaign: str
    reason: str
    given_back: int = 0


def reserve(engine: Engine, worker: str, items: Sequence[Any]) -> tuple[set[int], list[BudgetStop]]:
    """Hold the price of each of ``items`` (claimed by ``worker``, rendered: ``id``, ``run_id``,
    ``definition``, ``cost``) and check the budgets of their campaigns.

    Returns the ids of the items given back unsent, because they would take their campaign
    over its budget (and every later item of that campaign in ``items``), and one
    :class:`BudgetStop` per such campaign.  One transaction, which holds the row lock of every
    budgeted campaign involved: workers reserving for one campaign at once do so in turn, each
    seeing what the others hold.
    """
    priced = [i for i in items if i.cost is not None]
    budgeted: dict[str, list[Any]] = {}
    for item in items:
        if item.definition.get("budget"):
            budgeted.setdefault(str(item.definition.get("name")), []).append(item)
    if not priced and not budgeted:
        return set(), []
    refused: set[int] = set()
    stops: list[BudgetStop] = []
    now = db.utcnow()
    mine = and_(O.c.state == "claimed", O.c.worker == worker)
    with engine.begin() as conn:
        if budgeted:
            ids = _lock_campaigns(conn, list(budgeted))
            committed = _committed(conn, list(ids.values()))
            for name, its in budgeted.items():
                total = committed.get(ids.get(name), 0)
                for n, item in enumerate(its):
                    budget = int(item.definition["budget"])
                    if item.cost is not None and total + item.cost <= budget:
                        total += item.cost
                        continue
                    rest = its[n:]
                    refused |= {i.id for i in rest}
                    nxt = NEXT_UNPRICED if item.cost is None else NEXT_COSTS.format(cost=item.cost)
                    stops.append(BudgetStop(name, BUDGET_STOP.format(budget=budget, total=total, next=nxt), len(rest)))
                    break
        from loa.receipts import lock_rows

        lock_rows(conn, O.c.id.in_([i.id for i in items]))
        held = [{"b_id": i.id, "v_reserved": i.cost} for i in priced if i.id not in refused]
        if held:
            conn.execute(update(O).where(O.c.id == bindparam("b_id"), mine)
                         .values(reserved_vnd=bindparam("v_reserved")), held)
        for stop in stops:   # held back with the pause that follows as their reason (a resume clears it)
            back = [i.id for i in budgeted[stop.campaign] if i.id in refused]
            conn.execute(update(O).where(O.c.id.in_(back), mine)
                         .values(state="planned", worker=None, lease_until=None, reserved_vnd=None, updated_at=now,
                                 reason=lifecycle.pause_reason(SYSTEM, stop.reason)))
    return refused, stops


def _lock_campaigns(conn: Connection, names: list[str]) -> dict[str, int]:
    """The ids of campaigns ``names``, their rows locked in id order (SQLite: the database is)."""
    query = select(C.c.name, C.c.id).where(C.c.name.in_(names)).order_by(C.c.id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return {name: campaign_id for name, campaign_id in conn.execute(query)}


def _committed(conn: Connection, campaign_ids: list[int]) -> dict[int, int]:
    """Per campaign: VND spent plus VND held for messages in flight, in one statement (a message
    moving from one to the other meanwhile is counted once)."""
    if not campaign_ids:
        return {}
    held = case((O.c.state.in_(HELD), func.coalesce(O.c.reserved_vnd, 0)), else_=0)
    rows = conn.execute(
        select(R.c.campaign_id, func.sum(func.coalesce(O.c.cost_vnd, 0) + held))
        .join(R, R.c.id == O.c.run_id).where(R.c.campaign_id.in_(campaign_ids)).group_by(R.c.campaign_id))
    return {campaign_id: int(total or 0) for campaign_id, total in rows}


def pause_for_budget(engine: Engine, stop: BudgetStop) -> bool:
    """Pause the campaign by ``system`` with the budget as the reason, audited in the same
    transaction; False if it was not active any more (paused meanwhile, by another worker)."""
    from loa import audit

    def record(conn: Connection, change: lifecycle.Change) -> None:
        audit.record(conn, SYSTEM, "campaigns.pause", change.kind, change.name, before={"state": change.before},
                     after={"state": change.after, "messages": change.messages}, reason=stop.reason)

    try:
        lifecycle.change_campaign(engine, stop.campaign, "pause", who=SYSTEM, reason=stop.reason, record=record)
    except (lifecycle.LifecycleError, NotFound):
        return False
    return True


def budget_problems(config: Config, campaign: Campaign) -> list[str]:
    """A budget needs a price for every channel's gateway: without one it cannot be held."""
    if campaign.budget is None:
        return []
    problems = []
    for spec in campaign.channels:
        gateway = spec.gateway or config.default_gateway(spec.channel)
        if gateway and gateway in config.gateways and (why := missing_price(config, gateway, spec.channel)):
            problems.append(Text("{path}: budget: {why} in {config}, so the budget cannot be held for its "
                                 "{channel} messages", path=str(campaign.path), why=why, config=config.label,
                                 channel=spec.channel))
    return problems


def apply_budget_edits(engine: Engine, campaigns: dict[str, Campaign]) -> list[str]:
    """Open runs take their campaign's current budget (a raised budget lets a campaign paused
    for it be resumed); one line per run changed."""
    changed = []
    with engine.begin() as conn:
        runs = conn.execute(select(R.c.id, C.c.name, R.c.definition).join(C, C.c.id == R.c.campaign_id)
                            .where(R.c.status == "planned", C.c.name.in_(list(campaigns)))).all()
        for run_id, name, definition in runs:
            old, new = definition.get("budget"), campaigns[name].budget
            if old == new:
                continue
            conn.execute(update(R).where(R.c.id == run_id).values(definition=definition | {"budget": new}))
            changed.append(f"run {run_id} of {name}: budget {vnd(old) if old else 'none'} -> "
                           f"{vnd(new) if new else 'none'}")
    return changed


__all__ = ["BudgetStop", "Estimate", "Spend", "apply_budget_edits", "budget_problems", "estimate", "pause_for_budget",
           "price", "reserve", "spend", "spend_by_area", "spend_by_run", "vnd"]
