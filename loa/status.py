"""``loa status``: where every run and gateway stands, from the ledger alone."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from loa import db
from loa import gateways as gw

O, R, C = db.outbox, db.runs, db.campaigns
DUE = ("planned", "deferred", "claimed")
SENT = ("sent", "delivered", "undelivered")


def collect(engine: Engine, recent_runs: int = 20) -> dict[str, Any]:
    now = db.utcnow()
    with engine.connect() as conn:
        runs = conn.execute(
            select(R.c.id, C.c.name, R.c.status, R.c.scheduled_for, R.c.trigger)
            .join(C, C.c.id == R.c.campaign_id).order_by(R.c.id.desc()).limit(recent_runs)
        ).all()
        ids = [r.id for r in runs]
        states: dict[int, dict[str, int]] = {i: {} for i in ids}
        for run_id, state, n in conn.execute(
            select(O.c.run_id, O.c.state, func.count()).where(O.c.run_id.in_(ids)).group_by(O.c.run_id, O.c.state)
        ):
            states[run_id][state] = n
        due = dict(conn.execute(select(O.c.gateway, func.count()).where(O.c.state.in_(DUE))
                                .group_by(O.c.gateway)).all())
        recent = dict(conn.execute(select(O.c.gateway, func.count())
                                   .where(O.c.state.in_(SENT), O.c.sent_at >= now - timedelta(minutes=1))
                                   .group_by(O.c.gateway)).all())
    paused = gw.paused(engine)
    gateways = []
    for name in sorted(set(due) | set(recent) | set(paused)):
        if name is None:
            continue
        rate = recent.get(name, 0) / 60.0
        gateways.append({
            "name": name, "due": due.get(name, 0), "sent_last_minute": recent.get(name, 0), "rate": rate,
            "eta_seconds": (due.get(name, 0) / rate) if rate > 0 and name not in paused else None,
            "paused": paused[name]["reason"] if name in paused else None,
            # ISO 8601 like every other time here (json.dumps would otherwise fall back to str())
            "paused_since": paused[name]["since"].isoformat() if name in paused and paused[name]["since"] else None,
        })
    return {
        "at": now.isoformat(),
        "runs": [{"run": r.id, "campaign": r.name, "status": r.status, "trigger": r.trigger,
                  "scheduled_for": r.scheduled_for.isoformat(), "states": states[r.id]} for r in runs],
        "gateways": gateways,
    }
