"""Exports of the ledger (the outbox): one row per message, as CSV or JSON.

A number is personal data: an export carries it only for a role that may read subscribers
(``subscribers.read``, operator and above); for the others it is masked ("+8491****678").
A principal bound to an area gets the messages of its subtree only.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from loa import auth, db
from loa.errors import NotFound
from loa.phones import mask

O, S, R, C, AR = db.outbox, db.subscribers, db.runs, db.campaigns, db.areas
COLUMNS = ("id", "campaign", "run", "phone", "area", "state", "reason", "channel", "gateway", "due_at", "sent_at",
           "delivered_at", "parts", "cost_vnd", "error_code")


def rows(engine: Engine, who: auth.Principal, campaign: str | None = None, run: int | None = None) -> list[dict[str, Any]]:
    auth.require(who, "runs.read")
    numbers = who.can("subscribers.read")
    q = (select(O.c.id, C.c.name.label("campaign"), O.c.run_id.label("run"), S.c.phone, AR.c.code.label("area"),
                O.c.state, O.c.reason, O.c.channel, O.c.gateway, O.c.due_at, O.c.sent_at, O.c.delivered_at, O.c.parts,
                O.c.cost_vnd, O.c.error_code)
         .join(S, S.c.id == O.c.subscriber_id).join(R, R.c.id == O.c.run_id).join(C, C.c.id == R.c.campaign_id)
         .outerjoin(AR, AR.c.id == O.c.area_id).where(auth.scope_clause(who, O.c.area_id)).order_by(O.c.id))
    with engine.connect() as conn:
        if campaign is not None:
            if conn.scalar(select(C.c.id).where(C.c.name == campaign)) is None:
                raise NotFound(f"no campaign named {campaign!r}")
            q = q.where(C.c.name == campaign)
        if run is not None:
            q = q.where(O.c.run_id == run)
        found = [dict(r._mapping) for r in conn.execute(q)]
    if not numbers:
        for r in found:
            r["phone"] = r["phone"] if r["phone"].startswith("#") else mask(r["phone"])
    return found


def render(found: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(found, ensure_ascii=False, indent=2, default=_iso)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in found:
        writer.writerow({k: _iso(v) if hasattr(v, "isoformat") else ("" if v is None else v) for k, v in r.items()})
    return buffer.getvalue()


def _iso(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)
