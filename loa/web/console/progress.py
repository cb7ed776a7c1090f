"""The live progress of campaigns on the dashboard and a campaign's page, polled every 5 s.

A poll costs the same few statements however many campaigns there are: the session's and the
user's (``loa.web.console.pages.page``), the campaigns the user may read (with, for a user
bound to an area, the areas they lie in), and one aggregate over the ledger for all of them,
grouped by campaign and state.  The next scheduled runs are computed at most once a minute
per process, and again as soon as one of them is due.

The answer carries an ETag made of the figures it shows.  A poll whose figures have not
changed is answered before any template is rendered: 304, or 204 to htmx, which then keeps
the table as it is.  htmx sends the ETag it was given as ``If-None-Match`` (``hx-headers`` of
the polling element, which each answer replaces).
"""

from __future__ import annotations

import hashlib
import json
import time
import tomllib
from dataclasses import astuple, dataclass
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.engine import Connection
from starlette.responses import Response

from loa import auth, db
from loa.areas import AreaIndex
from loa.errors import LoaError
from loa.status import IN_FLIGHT, MIN_SPAN, OPEN, SENT, WINDOW, outcome
from loa.web.api import places_of_definitions

C, R, O, V = db.campaigns, db.runs, db.outbox, db.campaign_versions
POLL_SECONDS = 5
CURRENT = ("active", "paused", "approved")       # the dashboard's campaigns being (or about to be) sent
NEXT_RUNS_FOR = 60.0                              # seconds a computed set of next runs is kept

router = APIRouter(include_in_schema=False)


@dataclass
class Progress:
    name: str
    state: str
    description: str
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    queued: int = 0
    total: int = 0
    rate: float = 0.0
    eta: float | None = None
    next_send: datetime | None = None
    next_run: datetime | None = None
    spent: int = 0
    budget: int | None = None

    @property
    def done_share(self) -> float | None:
        return (self.sent + self.delivered + self.failed) / self.total if self.total else None

    def shown(self) -> tuple[Any, ...]:
        """What the table shows of it, at the precision it shows (the ETag's matter)."""
        eta = None if self.eta is None else (round(self.eta) if self.eta < 60 else f"{round(self.eta / 60)} min")
        return (*astuple(self)[:9], round(self.rate, 1), eta, *(str(m) for m in (self.next_send, self.next_run)),
                self.spent, self.budget)


def _budget(definition: Any) -> int | None:
    budget = (definition or {}).get("budget") if isinstance(definition, dict) else None
    return int(budget) if budget else None


def _readable(conn: Connection, who: auth.Principal, rows: list[Any]) -> list[Any]:
    """The rows of the campaigns ``who`` may read: all of them for an unbound user; for a
    bound one, two statements whatever their number (the areas, and the runs' definitions)."""
    if who.area_path is None:
        return [r for r in rows if who.can("campaigns.read", auth.EVERYWHERE)]
    index = AreaIndex.load(conn)
    definitions: dict[int, list[Any]] = {r.id: [] for r in rows}
    for campaign_id, definition in conn.execute(select(R.c.campaign_id, R.c.definition)
                                                .where(R.c.campaign_id.in_(list(definitions)))):
        definitions[campaign_id].append(definition)
    out = []
    for r in rows:
        mine = list(definitions[r.id])
        if r.toml is not None:                 # a campaign applied but not yet run lies where its version says
            try:
                mine.append(tomllib.loads(r.toml))
            except tomllib.TOMLDecodeError:
                mine.append(None)
        if who.can("campaigns.read", places_of_definitions(index, mine)):
            out.append(r)
    return out


def _aggregate(conn: Connection, ids: list[int], now: datetime) -> list[Any]:
    """One statement: per campaign and ledger state, the count, the spend, what is due now,
    when the first waiting message is due, and what was sent within the last minute."""
    is_due = or_(O.c.state.in_(IN_FLIGHT), O.c.due_at.is_(None), O.c.due_at <= now)
    is_open = O.c.state.in_(OPEN)
    recent = and_(O.c.state.in_(SENT), O.c.sent_at >= now - WINDOW)
    return list(conn.execute(
        select(R.c.campaign_id, O.c.state, func.count(), func.coalesce(func.sum(O.c.cost_vnd), 0),
               func.sum(case((and_(is_open, is_due), 1), else_=0)),
               func.min(case((and_(is_open, ~is_due), O.c.due_at), else_=None)),
               func.sum(case((recent, 1), else_=0)),
               func.min(case((recent, O.c.sent_at), else_=None)))
        .join(R, R.c.id == O.c.run_id).where(R.c.campaign_id.in_(ids)).group_by(R.c.campaign_id, O.c.state)))


def collect(engine: Any, config: Any, state: Any, who: auth.Principal, names: list[str] | None = None) -> list[Progress]:
    """The progress of the campaigns ``who`` may read (of ``names`` only, if given), by name."""
    now = db.utcnow()
    latest = (select(R.c.definition).where(R.c.campaign_id == C.c.id).order_by(R.c.id.desc()).limit(1)
              .correlate(C).scalar_subquery())
    q = (select(C.c.id, C.c.name, C.c.state, C.c.description, latest.label("definition"), V.c.toml)
         .outerjoin(V, and_(V.c.campaign_id == C.c.id, V.c.version == C.c.current_version)).order_by(C.c.name))
    if names is not None:
        q = q.where(C.c.name.in_(names))
    with engine.connect() as conn:
        rows = _readable(conn, who, list(conn.execute(q)))
        found = _aggregate(conn, [r.id for r in rows], now) if rows else []
    upcoming = next_runs(engine, config, state)
    items = {r.id: Progress(r.name, r.state, r.description or "", next_run=upcoming.get(r.name),
                            budget=_budget(r.definition)) for r in rows}
    due: dict[int, int] = {}
    recent: dict[int, tuple[int, datetime | None]] = {}
    for campaign_id, ledger_state, n, spent, due_now, next_at, sent_recently, first_recent in found:
        item, kind = items[campaign_id], outcome(ledger_state)
        item.spent += int(spent or 0)
        if kind in ("sent", "undelivered", "sending"):
            item.sent += n
        elif kind == "delivered":
            item.delivered += n
        elif kind in ("failed", "unknown"):
            item.failed += n
        elif kind == "queued":
            item.queued += n
        if kind not in ("held_out", "suppressed", "cancelled"):
            item.total += n
        due[campaign_id] = due.get(campaign_id, 0) + int(due_now or 0)
        if next_at is not None and (item.next_send is None or next_at < item.next_send):
            item.next_send = next_at
        if sent_recently:
            count, first = recent.get(campaign_id, (0, None))
            recent[campaign_id] = (count + int(sent_recently),
                                   first_recent if first is None or first_recent < first else first)
    for campaign_id, item in items.items():
        count, first = recent.get(campaign_id, (0, None))
        if count and first is not None:
            item.rate = count / max((now - first).total_seconds(), MIN_SPAN)
        waiting = due.get(campaign_id, 0)
        item.eta = None if not waiting else (waiting / item.rate if item.rate > 0 else None)
    return list(items.values())


def next_runs(engine: Any, config: Any, state: Any) -> dict[str, datetime]:
    """The next scheduled run of each campaign, computed at most once a minute per process,
    and again as soon as one of them has come."""
    cached = getattr(state, "console_next_runs", None)
    now = db.utcnow()
    if cached is not None and time.monotonic() - cached[0] < NEXT_RUNS_FOR and all(t > now for t in cached[1].values()):
        return dict(cached[1])
    try:
        import scheduler

        found = {name: times[0] for name, times in scheduler.next_runs(config, 1, engine=engine).items() if times}
    except (ImportError, LoaError):
        found = {}
    state.console_next_runs = (time.monotonic(), found)
    return dict(found)


def etag_of(items: list[Progress], language: str, one: str | None) -> str:
    shown = json.dumps([language, one, *[i.shown() for i in items]], default=str, ensure_ascii=False)
    return '"' + hashlib.sha256(shown.encode()).hexdigest()[:24] + '"'


def _matches(request: Request, etag: str) -> bool:
    given = request.headers.get("if-none-match", "")
    return any(tag.strip().removeprefix("W/") == etag for tag in given.split(",")) or given.strip() == "*"


@router.get("/console/progress")
def poll(request: Request) -> Response:
    """The progress table of the dashboard (the campaigns being sent), or of ``?campaign=NAME``."""
    from loa.web.console.pages import fragment, page

    p = page(request)
    one = request.query_params.get("campaign") or None
    items = collect(p.engine, p.config, request.app.state, p.who, [one] if one else None)
    if one is None:
        items = [i for i in items if i.state in CURRENT]
    etag = etag_of(items, p.t.code, one)
    headers = {"ETag": etag, "Cache-Control": "no-cache, private", "Vary": "Cookie, HX-Request"}
    if _matches(request, etag):       # nothing new: nothing rendered, nothing sent
        return Response(status_code=204 if request.headers.get("hx-request") else 304, headers=headers)
    response = fragment(p, "_poll.html", items=items, etag=etag, one=one, poll=POLL_SECONDS)
    response.headers.update(headers)
    return response


__all__ = ["CURRENT", "POLL_SECONDS", "Progress", "collect", "etag_of", "next_runs", "router"]
