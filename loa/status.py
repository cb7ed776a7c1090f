"""``loa status``: where every run and gateway stands, from the ledger alone.

Rates are measured, never taken from the configuration: the messages handed to a
gateway within the last :data:`WINDOW` (their ``sent_at``), over the part of that
window during which they went out.  An ETA counts only the messages due now
(planned, deferred to a time already past, or in flight); one deferred to later (a
night rule, a quota, a frequency cap) is *waiting* and counts for nothing until its
time.  Messages due on a paused gateway are *blocked*: they wait for an operator,
so no ETA is given for them.  Messages whose send outcome is *unknown* (a crash or a
timeout during the gateway call) are counted per run and per gateway: ``loa messages
reconcile`` asks the gateways about them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from rich.markup import escape
from rich.table import Table
from sqlalchemy import case, func, or_, select, true
from sqlalchemy.engine import Connection, Engine

from loa import db
from loa import gateways as gw
from loa.cost import spend_by_run

O, R, C = db.outbox, db.runs, db.campaigns
IN_FLIGHT = ("claimed", "sending")
OPEN = ("planned", "deferred", *IN_FLIGHT)
SENT = ("sent", "delivered", "undelivered")

# What became of a message, as `loa status` and `loa report` both count it: one outcome per
# ledger state.  "sent" is accepted by the gateway with no receipt yet; "undelivered" is a
# receipt saying the handset was not reached, never a failure to send; "failed" is refused
# (or never sent within the campaign's validity); "unknown" may or may not have gone out;
# "cancelled" was never sent because someone cancelled its run or campaign (loa.lifecycle).
OUTCOMES = ("queued", "sending", "sent", "delivered", "undelivered", "failed", "unknown", "held_out", "suppressed",
            "cancelled")
_OUTCOME_OF = {
    "planned": "queued", "deferred": "queued", "claimed": "sending", "sending": "sending", "sent": "sent",
    "delivered": "delivered", "undelivered": "undelivered", "failed": "failed", "expired": "failed",
    "unknown": "unknown", "held_out": "held_out", "suppressed": "suppressed", "cancelled": "cancelled",
}
HANDED_OVER = ("sent", "delivered", "undelivered")   # outcomes of a message the gateway accepted


def outcome(state: str) -> str:
    """The outcome that a ledger state counts as (a state this version does not know, as itself)."""
    return _OUTCOME_OF.get(state, state)


def states_of(*outcomes: str) -> tuple[str, ...]:
    """The ledger states that count as any of ``outcomes``."""
    return tuple(state for state, o in _OUTCOME_OF.items() if o in outcomes)


def outcomes(states: dict[str, int]) -> dict[str, int]:
    """Counts by ledger state, as counts by outcome."""
    out: dict[str, int] = {}
    for state, n in states.items():
        out[outcome(state)] = out.get(outcome(state), 0) + n
    return out
WINDOW = timedelta(minutes=1)
MIN_SPAN = 1.0     # seconds: a rate measured over less is noise (one message sent just now)


@dataclass
class Flow:
    """Queue and throughput of one run or one gateway."""

    due: int = 0
    waiting: int = 0
    next_at: datetime | None = None      # when the first waiting message is due
    blocked: int = 0                     # due, but on a paused gateway
    sent: int = 0                        # within WINDOW
    first_sent: datetime | None = None   # the oldest of those

    def rate(self, now: datetime) -> float:
        """Messages per second lately, from their ``sent_at``."""
        if not self.sent or self.first_sent is None:
            return 0.0
        return self.sent / max((now - self.first_sent).total_seconds(), MIN_SPAN)

    def eta(self, now: datetime) -> float | None:
        """Seconds until the messages due now are sent, at the current rate; None if unknown."""
        if self.blocked:
            return None
        if not self.due:
            return 0.0
        rate = self.rate(now)
        return self.due / rate if rate > 0 else None

    def as_dict(self, now: datetime) -> dict[str, Any]:
        return {"due": self.due, "waiting": self.waiting, "blocked": self.blocked,
                "next_at": self.next_at.isoformat() if self.next_at else None,
                "sent_last_minute": self.sent, "rate": round(self.rate(now), 3), "eta_seconds": self.eta(now)}


def _queues(conn: Connection, key: Any, now: datetime, where: Any) -> list[tuple[Any, str, int, int, Any]]:
    """(key, gateway, due now, waiting, first waiting due_at) of the open messages."""
    is_due = or_(O.c.state.in_(IN_FLIGHT), O.c.due_at.is_(None), O.c.due_at <= now)
    return [tuple(r) for r in conn.execute(
        select(key, O.c.gateway, func.sum(case((is_due, 1), else_=0)), func.sum(case((is_due, 0), else_=1)),
               func.min(case((is_due, None), else_=O.c.due_at)))
        .where(O.c.state.in_(OPEN), where).group_by(key, O.c.gateway)
    )]


def _sent(conn: Connection, key: Any, now: datetime, where: Any) -> dict[Any, tuple[int, datetime]]:
    rows = conn.execute(select(key, func.count(), func.min(O.c.sent_at))
                        .where(O.c.state.in_(SENT), O.c.sent_at >= now - WINDOW, where)
                        .group_by(key))
    return {k: (n, first) for k, n, first in rows}


def _flows(conn: Connection, key: Any, now: datetime, paused: set[str], where: Any = None) -> dict[Any, Flow]:
    flows: dict[Any, Flow] = {}
    where = true() if where is None else where
    for k, gateway, due, waiting, next_at in _queues(conn, key, now, where):
        f = flows.setdefault(k, Flow())
        f.due += int(due or 0)
        f.waiting += int(waiting or 0)
        f.blocked += int(due or 0) if gateway in paused else 0
        if next_at is not None and (f.next_at is None or next_at < f.next_at):
            f.next_at = next_at
    for k, (n, first) in _sent(conn, key, now, where).items():
        flows.setdefault(k, Flow()).sent, flows[k].first_sent = n, first
    return flows


def collect(engine: Engine, recent_runs: int = 20) -> dict[str, Any]:
    now = db.utcnow()
    paused = gw.paused(engine)
    with engine.connect() as conn:
        runs = conn.execute(
            select(R.c.id, C.c.name, R.c.status, R.c.scheduled_for, R.c.trigger, R.c.state,
                   C.c.state.label("campaign_state"), R.c.campaign_version)
            .join(C, C.c.id == R.c.campaign_id).order_by(R.c.id.desc()).limit(recent_runs)
        ).all()
        ids = [r.id for r in runs]
        states: dict[int, dict[str, int]] = {i: {} for i in ids}
        for run_id, state, n in conn.execute(
            select(O.c.run_id, O.c.state, func.count()).where(O.c.run_id.in_(ids)).group_by(O.c.run_id, O.c.state)
        ):
            states[run_id][state] = n
        by_run = _flows(conn, O.c.run_id, now, set(paused), O.c.run_id.in_(ids))
        spent = spend_by_run(conn, ids)   # what each run's messages cost when they were sent
        by_gateway = _flows(conn, O.c.gateway, now, set(paused))
        # sends whose outcome is unknown (a crash or a timeout during the gateway call), in every run
        unknown = dict(conn.execute(select(O.c.gateway, func.count()).where(O.c.state == "unknown")
                                    .group_by(O.c.gateway)).all())
    gateways = []
    for name in sorted((set(by_gateway) | set(paused) | set(unknown)) - {None}):
        flow = by_gateway.get(name, Flow())
        since = paused[name]["since"] if name in paused else None
        gateways.append({
            "name": name, **flow.as_dict(now), "unknown": unknown.get(name, 0),
            "paused": paused[name]["reason"] if name in paused else None,
            # ISO 8601 like every other time here (json.dumps would otherwise fall back to str())
            "paused_since": since.isoformat() if since else None,
        })
    return {
        "at": now.isoformat(),
        "runs": [{"run": r.id, "campaign": r.name, "status": r.status, "trigger": r.trigger,
                  # the lifecycle: a paused or cancelled run, or campaign, sends nothing
                  "state": r.state, "campaign_state": r.campaign_state,
                  "version": r.campaign_version,     # the campaign version it was planned from
                  "scheduled_for": r.scheduled_for.isoformat(), "states": states[r.id],
                  "outcomes": outcomes(states[r.id]), "spent_vnd": spent.get(r.id, 0),
                  **by_run.get(r.id, Flow()).as_dict(now)} for r in runs],
        "gateways": gateways,
        "unknown": sum(unknown.values()),
    }


# -- the tables of `loa status` ---------------------------------------------------------

COLUMNS = ("sending", "sent", "delivered", "undelivered", "failed", "unknown")   # outcomes with a column of their own


def tables(result: dict[str, Any], tz: ZoneInfo) -> list[Table]:
    runs = Table("campaign", "run", "status", "due", "waiting", *COLUMNS, "other", "spent (VND)", "rate (msg/s)",
                 "ETA", title="runs")
    for r in result["runs"]:
        done = r["outcomes"]
        other = ", ".join(f"{n:,} {k}" for k, n in done.items() if k not in ("queued", *COLUMNS))
        label = r["campaign"] + (f" v{r['version']}" if r.get("version") else "")
        runs.add_row(escape(label), str(r["run"]), _status(r), f"{r['due']:,}", _waiting(r, tz),
                     *(f"{done.get(k, 0):,}" for k in COLUMNS), escape(other), f"{r.get('spent_vnd', 0):,}",
                     f"{r['rate']:.1f}", _eta(r))
    # unknown: the send may or may not have reached the gateway; `loa messages reconcile` asks it
    caption = (f"{result['unknown']:,} message(s) with an unknown outcome: loa messages reconcile"
               if result.get("unknown") else None)
    gws = Table("gateway", "due", "waiting", "sent last minute", "rate (msg/s)", "ETA", "unknown", "state",
                title="gateways", caption=caption)
    for g in result["gateways"]:
        state = f"paused: {g['paused']}" if g["paused"] else "active"
        gws.add_row(escape(g["name"]), f"{g['due']:,}", _waiting(g, tz), f"{g['sent_last_minute']:,}",
                    f"{g['rate']:.1f}", _eta(g), f"{g['unknown']:,}", escape(state))
    return [runs, gws]


def _status(run: dict[str, Any]) -> str:
    """"planned", or "planned, paused" / "planned, campaign paused" when the run or its campaign is halted."""
    state, campaign_state = run.get("state") or "active", run.get("campaign_state") or "active"
    if state != "active":
        return f"{run['status']}, {state}"
    if campaign_state != "active":
        return f"{run['status']}, campaign {campaign_state}"
    return str(run["status"])


def _waiting(flow: dict[str, Any], tz: ZoneInfo) -> str:
    if not flow["waiting"]:
        return "0"
    at = datetime.fromisoformat(flow["next_at"]).astimezone(tz)
    return f"{flow['waiting']:,} from {at:%d/%m %H:%M}"


def _eta(flow: dict[str, Any]) -> str:
    seconds = flow["eta_seconds"]
    if seconds is None:
        return "blocked" if flow["blocked"] else "—"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
