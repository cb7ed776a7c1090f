"""``GET /metrics``: the ledger, read at scrape time, in Prometheus' text format (prometheus_client).

Every process that serves loa's endpoints reports the same ledger figures, so a scrape
of any one of them is the whole picture; ``loa serve`` adds its scheduler's figures.
Each campaign's spend so far and the spend reserved for its messages in flight are read
from the ledger too (``loa_campaign_spent_vnd``, ``loa_campaign_reserved_vnd``).

The counters of people's actions (lifecycle moves, approvals) are counted from the audit
log, where every such action is written in the transaction that makes it, by the CLI
and by the API of any process alike: so every process reports the same totals, which
never go down (the log is append-only), and a restart loses nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select

from loa import db

if TYPE_CHECKING:
    from loa.web.app import Web

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
WAITING = ("planned", "deferred", "claimed")


class LedgerCollector(Collector):
    """Messages by state and gateway, the queue, the send rate and the paused gateways."""

    def __init__(self, web: Web) -> None:
        self.web = web

    def describe(self) -> Iterable[Metric]:
        return []     # registering must not read the database

    def collect(self) -> Iterable[Metric]:
        from loa import gateways as gw

        o = db.outbox
        with self.web.engine.connect() as conn:
            rows = conn.execute(select(o.c.state, o.c.gateway, func.count()).group_by(o.c.state, o.c.gateway)).all()
            sent_minute = conn.scalar(select(func.count()).select_from(o).where(
                o.c.sent_at >= db.utcnow() - timedelta(minutes=1))) or 0
        messages = GaugeMetricFamily("loa_messages", "Messages in the ledger by state and gateway.",
                                     labels=["state", "gateway"])
        for state, gateway, n in rows:
            messages.add_metric([str(state), str(gateway or "")], n)
        yield messages
        yield GaugeMetricFamily("loa_queue_depth", "Messages waiting to be sent.",
                                value=sum(n for state, _, n in rows if state in WAITING))
        yield GaugeMetricFamily("loa_send_rate", "Messages handed to gateways per second over the last minute.",
                                value=round(sent_minute / 60, 3))
        paused = gw.paused(self.web.engine)
        family = GaugeMetricFamily("loa_gateway_paused", "1 while a gateway is paused.", labels=["gateway"])
        for name in self.web.config.gateways:
            family.add_metric([name], 1 if name in paused else 0)
        yield family


class SpendCollector(Collector):
    """Per campaign: VND spent so far (the prices written on its ledger's rows when they were
    sent, loa.cost) and VND reserved for its messages in flight (claimed, sending, unknown),
    which the budget check counts too.  Test sends have a ledger of their own, never counted."""

    def __init__(self, web: Web) -> None:
        self.web = web

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        from loa.cost import HELD

        o, r, c = db.outbox, db.runs, db.campaigns
        held = case((o.c.state.in_(HELD), func.coalesce(o.c.reserved_vnd, 0)), else_=0)
        with self.web.engine.connect() as conn:
            rows = conn.execute(select(c.c.name, func.coalesce(func.sum(o.c.cost_vnd), 0), func.sum(held))
                                .join(r, r.c.campaign_id == c.c.id).join(o, o.c.run_id == r.c.id)
                                .group_by(c.c.name).order_by(c.c.name)).all()
        spent = GaugeMetricFamily("loa_campaign_spent_vnd", "VND spent so far by a campaign's messages, at the "
                                  "prices they were sent at.", labels=["campaign"])
        reserved = GaugeMetricFamily("loa_campaign_reserved_vnd", "VND reserved for a campaign's messages in flight "
                                     "(claimed, sending or of unknown outcome), counted against its budget.",
                                     labels=["campaign"])
        for name, total, holding in rows:
            spent.add_metric([str(name)], int(total or 0))
            reserved.add_metric([str(name)], int(holding or 0))
        yield spent
        yield reserved


# audit actions -> the decision they count as, in loa_approvals_total
APPROVALS = {"campaigns.approve": "approved", "campaigns.reject": "rejected"}


def lifecycle_actions() -> list[str]:
    """The audit actions counted in loa_lifecycle_actions_total: every move of the lifecycle's
    tables but approvals, which have a counter of their own."""
    from loa.lifecycle import CAMPAIGN_ACTIONS, RUN_ACTIONS

    return [f"campaigns.{a}" for a in dict.fromkeys([*CAMPAIGN_ACTIONS, *RUN_ACTIONS])
            if f"campaigns.{a}" not in APPROVALS]


class AuditCollector(Collector):
    """Lifecycle actions by action and kind (campaign, run), and approvals by decision."""

    def __init__(self, web: Web) -> None:
        self.web = web

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        a = db.audit_log
        wanted = [*lifecycle_actions(), *APPROVALS]
        with self.web.engine.connect() as conn:
            rows = conn.execute(select(a.c.action, a.c.object_type, func.count()).where(a.c.action.in_(wanted))
                                .group_by(a.c.action, a.c.object_type)).all()
        actions = CounterMetricFamily("loa_lifecycle_actions", "Pauses, resumes, cancels and other lifecycle moves "
                                      "of campaigns and runs, from the audit log.", labels=["action", "kind"])
        approvals = CounterMetricFamily("loa_approvals", "Approval decisions on campaigns, from the audit log.",
                                        labels=["decision"])
        decisions = dict.fromkeys(APPROVALS.values(), 0)
        for action, kind, n in rows:
            if action in APPROVALS:
                decisions[APPROVALS[action]] += n
            else:
                actions.add_metric([action.removeprefix("campaigns."), str(kind)], n)
        for decision, n in decisions.items():
            approvals.add_metric([decision], n)
        yield actions
        yield approvals


def registry(web: Web) -> CollectorRegistry:
    """The web application's own registry (not prometheus_client's global one): the ledger's
    figures; ``loa serve`` registers its scheduler's beside them."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(LedgerCollector(web))
    reg.register(AuditCollector(web))
    reg.register(SpendCollector(web))
    return reg


def render(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)
