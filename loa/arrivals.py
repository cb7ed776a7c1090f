"""Arrivals, and the campaigns that greet them.

An operator learns that a subscriber has arrived in a province when the phone
registers on its network there; a hotel learns it at check-in.  Arrivals come
from a CSV (``loa import arrivals``), from ``POST /arrivals`` and from a
watched folder of feed files.  Each campaign with ``trigger = "arrival"``
greets, in the areas of its segment:

* ``delay`` after the arrival, inside the send window (23:30 -> 07:00);
* once per ``regreet_after`` (a visit), never twice for one arrival;
* not at all once the campaign's validity has passed since the arrival.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Integer, and_, exists, func, literal, or_, select
from sqlalchemy.engine import Connection, Engine

from loa import db
from loa.areas import AreaIndex, AreaLookupError
from loa.campaign import Campaign, load_all
from loa.config import Config
from loa.errors import LoaError, Text
from loa.importer import RowError, area_reason, parse_time, phone_reason
from loa.lifecycle import planning_refusal
from loa.phones import PhoneError, normalize
from loa.plan import audience_select, ensure_campaign, gateway_for

log = logging.getLogger("loa.arrivals")
A, O, R = db.arrivals, db.outbox, db.runs


@dataclasses.dataclass
class Outcome:
    accepted: int = 0
    rejected: list[tuple[int, str, str]] = dataclasses.field(default_factory=list)   # (index, field, reason)


def record(engine: Engine, items: Sequence[Mapping[str, Any]], tz: ZoneInfo, *, source: str = "") -> Outcome:
    """Validate and store arrivals {phone, area, time?, source?}; bad ones are rejected with a reason
    and the rest go in.  A missing time means now."""
    outcome = Outcome()
    with engine.connect() as conn:
        index = AreaIndex.load(conn)
    rows: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        try:
            rows.append(_row(item, index, tz, source) | {"_index": i})
        except RowError as exc:
            outcome.rejected.append((i, exc.column, exc.reason))
    if not rows:
        return outcome
    s = db.subscribers
    with engine.begin() as conn:
        ids = dict(conn.execute(select(s.c.phone, s.c.id).where(s.c.phone.in_({r["phone"] for r in rows}))).all())
        now = db.utcnow()
        known = []
        for r in rows:
            if r["phone"] not in ids:
                outcome.rejected.append((r["_index"], "phone", Text("no subscriber has this phone")))
                continue
            known.append({"subscriber_id": ids[r["phone"]], "area_id": r["area_id"], "arrived_at": r["arrived_at"],
                          "source": r["source"], "created_at": now})
        if known:
            conn.execute(db.insert_for(conn, A).on_conflict_do_nothing(), known)
        outcome.accepted = len(known)
    outcome.rejected.sort()
    return outcome


def _row(item: Mapping[str, Any], index: AreaIndex, tz: ZoneInfo, source: str) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise RowError("", Text("an arrival must be an object with phone and area"))
    try:
        phone = normalize(str(item.get("phone") or "")).e164
    except PhoneError as exc:
        raise RowError("phone", phone_reason(exc)) from None
    try:
        area = index.resolve(str(item.get("area") or ""))
    except AreaLookupError as exc:
        raise RowError("area", area_reason(exc, str(item.get("area") or ""))) from None
    when = item.get("time")
    arrived = parse_time("time", str(when), tz) if when else db.utcnow()
    return {"phone": phone, "area_id": area.id, "arrived_at": arrived,
            "source": str(item.get("source") or source)[:64]}


class ArrivalsHandler:
    """``loa import arrivals FILE``: phone, area, time[, source]."""

    kind = "arrivals"
    required = ("phone", "area", "time")
    expected = "phone,area,time[,source]"

    def __init__(self, engine: Engine, path: Path, tz: ZoneInfo) -> None:
        self.path = path
        self.tz = tz
        with engine.connect() as conn:
            self.index = AreaIndex.load(conn)

    def check_header(self, header: Sequence[str]) -> None:
        from loa.importer import _header_error, _missing

        if missing := _missing(header, self.required):
            raise _header_error(str(self.path), self.kind, header, missing, self.expected)

    def prepare(self, row: Mapping[str, str]) -> dict[str, Any]:
        if not row.get("time", "").strip():
            raise RowError("time", Text("empty time"))
        return _row(row, self.index, self.tz, self.path.name)

    def write(self, conn: Connection, records: list[dict[str, Any]]) -> tuple[int, list[Any]]:
        s = db.subscribers
        ids = dict(conn.execute(select(s.c.phone, s.c.id).where(s.c.phone.in_({r["phone"] for r in records}))).all())
        now = db.utcnow()
        rows, late = [], []
        for r in records:
            if r["phone"] not in ids:
                late.append((r, "phone", Text("no subscriber has this phone; import subscribers first")))
                continue
            rows.append({"subscriber_id": ids[r["phone"]], "area_id": r["area_id"], "arrived_at": r["arrived_at"],
                         "source": r["source"], "created_at": now})
        if rows:
            conn.execute(db.insert_for(conn, A).on_conflict_do_nothing(), rows)
        return len(rows), late

    def count(self, conn: Connection) -> int:
        return conn.scalar(select(func.count()).select_from(A)) or 0

    def finish(self, conn: Connection) -> None:
        pass


# -- greeting --------------------------------------------------------------------------

_reported: set[str] = set()


def arrival_campaigns(config: Config, engine: Engine | None = None) -> list[Campaign]:
    """The arrival campaigns: their stored current versions (loa.versions.catalog); without an
    ``engine``, their files."""
    if engine is not None:
        from loa.versions import catalog

        found, problems = catalog(engine, config)
    else:
        found, problems = load_all(config.campaigns_dir)
    for p in problems:   # read every few seconds: say each problem once, not at every tick
        if p not in _reported:
            log.error("campaign not loaded: %s", p)
    _reported.clear()
    _reported.update(problems)
    return [c for c in found.values() if c.trigger == "arrival"]


def greet(engine: Engine, config: Config, campaigns: Iterable[Campaign] | None = None,
          now: datetime | None = None) -> dict[str, int]:
    """Plan greetings for recent arrivals; return rows added per campaign.  Safe to call often."""
    now = now or db.utcnow()
    added = {}
    for campaign in campaigns if campaigns is not None else arrival_campaigns(config, engine):
        try:
            added[campaign.name] = _greet(engine, config, campaign, now)
        except LoaError as exc:   # one broken campaign must not stop the others' greetings
            log.error("campaign %s: arrivals not greeted: %s", campaign.name, exc)
            if campaigns is not None:
                raise
    return added


def _greet(engine: Engine, config: Config, campaign: Campaign, now: datetime) -> int:
    rule = campaign.arrival
    assert rule is not None
    validity = timedelta(hours=campaign.validity_hours)
    first = campaign.channels[0]
    gateway = gateway_for(config, campaign, first.channel)
    with engine.begin() as conn:
        if campaign.version is None:    # a parsed file: recorded as a version first, as plan_run does
            from loa.audit import cli_actor
            from loa.versions import record_definition

            campaign = record_definition(conn, config, campaign, cli_actor())
        campaign_id = ensure_campaign(conn, campaign)
        if halted := planning_refusal(conn, campaign_id, campaign.version):   # not active: nobody is greeted
            log.info("%s: arrivals not greeted", halted)
            return 0
        arrivals = conn.execute(
            select(A.c.subscriber_id, A.c.area_id, A.c.arrived_at)
            .where(A.c.arrived_at >= now - validity, A.c.arrived_at <= now, _in_areas(conn, campaign),
                   ~_greeted(campaign_id, now - timedelta(seconds=rule.regreet_after), validity))
            .order_by(A.c.arrived_at.desc())
        ).all()
        latest: dict[int, tuple[int, datetime]] = {}
        for sid, area_id, at in arrivals:
            latest.setdefault(sid, (area_id, at))     # the most recent arrival of each visitor
        if latest:
            # _greeted counts the visit from now; it counts from the arrival, which may be up to the
            # validity earlier (a feed delivered late): no greeting within regreet_after before it
            regreet = timedelta(seconds=rule.regreet_after)
            last = dict(conn.execute(
                select(O.c.subscriber_id, func.max(O.c.expires_at))
                .where(O.c.subscriber_id.in_(list(latest)),
                       O.c.run_id.in_(select(R.c.id).where(R.c.campaign_id == campaign_id)))
                .group_by(O.c.subscriber_id)).all())
            latest = {sid: (area_id, at) for sid, (area_id, at) in latest.items()
                      if sid not in last or last[sid] - validity <= at - regreet}
        if not latest:
            return 0
        # who may be greeted, and who is suppressed or held out, as for any run;
        # the campaign's areas mean where they arrived, not where they live
        plain = dataclasses.replace(campaign, segment={k: v for k, v in campaign.segment.items() if k != "areas"})
        audience = audience_select(conn, config, plain, now).subquery()
        states = {sid: (state, reason) for sid, state, reason in conn.execute(
            select(audience.c.id, audience.c.state, audience.c.reason).where(audience.c.id.in_(list(latest))))}
        rows = []
        for sid, (area_id, at) in latest.items():
            if sid not in states:
                continue
            state, reason = states[sid]
            run_id = _run_for(conn, campaign, campaign_id, at, config.timezone, now)
            rows.append({"run_id": run_id, "subscriber_id": sid, "area_id": area_id, "state": state, "reason": reason,
                         "channel": first.channel, "gateway": gateway, "due_at": at + timedelta(seconds=rule.delay),
                         "expires_at": at + validity, "attempts": 0, "updated_at": now})
        if not rows:
            return 0
        result = conn.execute(db.insert_for(conn, O).on_conflict_do_nothing(index_elements=["run_id", "subscriber_id"])
                              .execution_options(preserve_rowcount=True), rows)
        n = max(result.rowcount, 0)
    if n:
        log.info("campaign %s: %d arrival greeting(s) planned", campaign.name, n)
    return n


def _in_areas(conn: Connection, campaign: Campaign) -> Any:
    names = campaign.segment.get("areas") or []
    if not names:
        return literal(1, Integer) == 1
    index = AreaIndex.load(conn)
    try:
        paths = [index.resolve(n).path for n in names]
    except AreaLookupError as exc:   # a clean one-line error, as for any segment
        from loa.segments import SegmentError

        raise SegmentError(f"campaign {campaign.name}: segment.areas: {exc}") from None
    inner = select(db.areas.c.id).where(or_(*(db.areas.c.path.startswith(p) for p in paths)))
    return A.c.area_id.in_(inner)


def _greeted(campaign_id: int, since: datetime, validity: timedelta) -> Any:
    """A greeting of this campaign for an arrival after ``since`` (its deadline is the arrival
    plus the validity), i.e. the same visit."""
    return exists().where(and_(O.c.subscriber_id == A.c.subscriber_id, O.c.expires_at >= since + validity,
                               O.c.run_id.in_(select(R.c.id).where(R.c.campaign_id == campaign_id))))


def _run_for(conn: Connection, campaign: Campaign, campaign_id: int, at: datetime, tz: ZoneInfo,
             now: datetime) -> int:
    """The campaign's run for the local day of an arrival (one run per day keeps reports readable)."""
    day = datetime.combine(at.astimezone(tz).date(), time(0), tz).astimezone(at.tzinfo)
    conn.execute(db.insert_for(conn, R).values(
        campaign_id=campaign_id, scheduled_for=day, trigger="arrival", status="planned",
        definition=campaign.snapshot(), created_at=now, planned_at=now, campaign_version=campaign.version,
    ).on_conflict_do_nothing(index_elements=["campaign_id", "scheduled_for"]))
    run_id = conn.scalar(select(R.c.id).where(R.c.campaign_id == campaign_id, R.c.scheduled_for == day))
    # a day's run may have been finished by a dispatcher before this arrival: open it again
    conn.execute(R.update().where(R.c.id == run_id, R.c.status != "planned").values(status="planned",
                                                                                   finished_at=None))
    return run_id
