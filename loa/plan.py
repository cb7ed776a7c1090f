"""Planning: a run's whole outbox written inside the database in one statement.

``INSERT INTO outbox SELECT ... FROM subscribers WHERE <segment> ON CONFLICT DO
NOTHING``: no row travels through Python, planning the same run twice adds
nothing, and a failure rolls the whole run back.
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    BigInteger,
    Integer,
    case,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import Select

from loa import db
from loa.campaign import Campaign
from loa.config import Config
from loa.consent import suppressions
from loa.errors import CampaignError, LoaError
from loa.lifecycle import LifecycleError, planning_refusal
from loa.segments import compile_segment

S = db.subscribers
O = db.outbox
EVENT_REASON = "event:{kind}"      # the reason of a subscriber suppressed for an event of the campaign's list
HASH_PRIME = 2_147_483_647          # 2^31 - 1: every product below stays under 2^62
HASH_A = 1_103_515_245
HASH_B = 48_271


@dataclass
class PlanResult:
    run_id: int
    campaign: str
    scheduled_for: datetime
    created: bool                                   # False: the run existed already
    added: int = 0                                  # rows this call inserted
    states: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def audience(self) -> int:
        return sum(self.states.values())


def holdout_salt(campaign_name: str) -> int:
    return zlib.crc32(campaign_name.encode("utf-8")) % HASH_PRIME


def holdout_hash(subscriber_id: Any, salt: int) -> Any:
    """A value in [0, 2^31 - 1) per (campaign, subscriber), computed the same way in SQL
    on SQLite and PostgreSQL and in Python.

    x = (id * A + salt) mod p, then h = (x^2 mod p) * B mod p.  The square makes
    it non-linear, so two campaigns' held-out groups are independent (a purely
    linear hash gives every campaign a shifted copy of the same group); quadratic
    sequences are still evenly spread over any run of ids, hence over areas.
    """
    p = HASH_PRIME
    x = (subscriber_id * HASH_A + salt) % p
    return ((x * x) % p * HASH_B) % p


def holdout_expr(subscriber_id: Any, campaign: Campaign) -> Any:
    """True for the campaign's held-out subscribers: deterministic per (campaign, subscriber)."""
    threshold = int(campaign.holdout * HASH_PRIME)
    # BigInteger: the constants do not fit a 32-bit INTEGER, which PostgreSQL would refuse.
    sid = subscriber_id * literal(1, BigInteger)
    return holdout_hash(sid, holdout_salt(campaign.name)) < threshold


def audience_select(conn: Connection, config: Config, campaign: Campaign, now: datetime) -> Select:
    """(subscriber_id, area_id, state, reason) for everyone in the segment."""
    e = db.events
    source: Any = S
    whens: list[tuple[Any, str]] = [(S.c.opted_out_at.is_not(None), "opted_out")]
    dnc = db.dnc.alias("dnc")
    source = source.outerjoin(dnc, dnc.c.phone == S.c.phone)
    whens.append((dnc.c.phone.is_not(None), "dnc"))
    for i, kind in enumerate(campaign.suppress_events):
        # One LEFT JOIN per event type: the database builds the set once, where a
        # correlated EXISTS would probe the events index again for every subscriber.
        had = select(e.c.subscriber_id.label("sid")).where(e.c.type == kind).distinct().subquery(f"sup{i}")
        source = source.outerjoin(had, had.c.sid == S.c.id)
        whens.append((had.c.sid.is_not(None), EVENT_REASON.format(kind=kind)))
    # personal data (loa.consent): a restricted subject is never planned; advertising needs consent
    whens += suppressions(campaign)
    reason = case(*whens, else_=None)
    states = [(cond, "suppressed") for cond, _ in whens]
    if campaign.holdout > 0:
        states.append((holdout_expr(S.c.id, campaign), "held_out"))
    state = case(*states, else_="planned")
    where = compile_segment(campaign.segment, conn, config.timezone, now)
    return (select(S.c.id, S.c.area_id, state.label("state"), reason.label("reason"))
            .select_from(source).where(where, S.c.erased_at.is_(None)))


def gateway_for(config: Config, campaign: Campaign, channel: str) -> str:
    spec = campaign.channel(channel)
    name = spec.gateway or config.default_gateway(channel)
    if name is None:
        raise CampaignError([(f"{campaign.path}: {channel}.gateway: no gateway set and no "
                              f"defaults.{channel}_gateway in {config.label}")])
    config.gateway(name)   # raises for an unknown gateway
    return name


def ensure_campaign(conn: Connection, campaign: Campaign) -> int:
    c = db.campaigns
    now = db.utcnow()
    stmt = db.insert_for(conn, c).values(
        name=campaign.name, description=campaign.description, advertising=campaign.advertising,
        created_at=now, updated_at=now,
    )
    conn.execute(stmt.on_conflict_do_update(
        index_elements=["name"],
        set_={"description": stmt.excluded.description, "advertising": stmt.excluded.advertising,
              "updated_at": stmt.excluded.updated_at},
    ))
    return conn.scalar(select(c.c.id).where(c.c.name == campaign.name))


class RunRefused(LoaError):
    """A manual run that would repeat a recent run, or falls outside the campaign's dates."""

    exit_code = 2


def repeat_interval(campaign: Campaign, tz: ZoneInfo, around: datetime) -> tuple[timedelta, str]:
    """How long one run of ``campaign`` stands for, and where that comes from.

    A repeating schedule's own interval (for a cron schedule, the gap between the fire
    times around ``around``); otherwise the campaign's validity, during which its
    messages may still go out.
    """
    spec = campaign.schedule
    if spec is not None and spec.every:
        return timedelta(seconds=spec.every), "its schedule's interval"
    if spec is not None and spec.cron:
        from loa.cron import cron_trigger

        trigger = cron_trigger(spec.cron, tz)
        start = around - timedelta(days=366)
        fire = trigger.get_next_fire_time(None, start)
        gaps: list[timedelta] = []
        while fire is not None and len(gaps) < 1000:
            nxt = trigger.get_next_fire_time(fire, fire + timedelta(microseconds=1))
            if nxt is None:
                break
            gaps.append(nxt - fire)
            if nxt > around:     # the gap that holds `around`
                return gaps[-1], "its schedule's interval"
            fire = nxt
        if gaps:
            return min(gaps), "its schedule's interval"
    return timedelta(hours=campaign.validity_hours), "validity_hours"


def _span(delta: timedelta) -> str:
    """A duration as a person reads it: "40 s", "12 min", "6 h", "1 h 30 min", "7 d"."""
    minutes, seconds = divmod(int(abs(delta).total_seconds()), 60)
    hours, minutes = divmod(minutes, 60)
    if not hours:
        return f"{minutes} min" if minutes else f"{seconds} s"
    if hours >= 48 and hours % 24 == 0 and not minutes:
        return f"{hours // 24} d"
    return f"{hours} h" + (f" {minutes} min" if minutes else "")


def manual_run_problem(conn: Connection, config: Config, campaign: Campaign, campaign_id: int,
                       scheduled_for: datetime, *, again: bool, outside_dates: bool) -> str | None:
    """Why a manual run of ``campaign`` for ``scheduled_for`` is refused, or None.

    A second run within the campaign's repeat interval (:func:`repeat_interval`) would send
    its audience the same message again; a run outside its ``[dates]`` would send when the
    campaign is not meant to.  ``again`` and ``outside_dates`` are the explicit overrides.
    """
    tz = config.timezone
    name = campaign.name
    if not outside_dates:
        day = scheduled_for.astimezone(tz).date()
        if (campaign.start and day < campaign.start) or (campaign.end and day > campaign.end):
            span = (f"from {campaign.start or 'its start'} to {campaign.end or 'its end'}")
            return (f"campaign {name} runs {span} ([dates] in {campaign.path}); a run now would be on {day}: "
                    f"nothing planned (`loa campaigns run {name} --outside-dates` runs it anyway)")
    if again:
        return None
    interval, source = repeat_interval(campaign, tz, scheduled_for)
    r = db.runs
    earlier = conn.execute(
        select(r.c.id, r.c.scheduled_for, r.c.trigger).where(
            r.c.campaign_id == campaign_id, r.c.status != "missed", r.c.trigger != "arrival",
            r.c.scheduled_for != scheduled_for,
            r.c.scheduled_for > scheduled_for - interval, r.c.scheduled_for < scheduled_for + interval,
        ).order_by(r.c.scheduled_for.desc()).limit(1)
    ).first()
    if earlier is None:
        return None
    when = earlier.scheduled_for.astimezone(tz)
    return (f"campaign {name} already has run {earlier.id} ({earlier.trigger}) for {when:%Y-%m-%d %H:%M %Z}, "
            f"within {source} ({_span(interval)}) of this one: its audience would get the same message again; "
            f"nothing planned (`loa campaigns run {name} --again` plans a deliberate second round)")


def plan_run(engine: Engine, config: Config, campaign: Campaign, *,
             scheduled_for: datetime | None = None, trigger: str = "manual",
             again: bool = False, outside_dates: bool = False) -> PlanResult:
    """Create (or complete) the run of ``campaign`` for ``scheduled_for`` and fill its outbox.

    A new manual run is refused (:class:`RunRefused`) within the repeat interval of another
    run of the campaign, unless ``again``, and outside its ``[dates]``, unless
    ``outside_dates``; completing a run that exists is always allowed.  A campaign that is
    not active gets no run at all (:class:`LifecycleError`), and only the version to plan
    (the approved one, else the current one) is planned.  A campaign given as a parsed file
    (``campaign.version`` None) is recorded as a version first (loa.versions), as an apply
    of that one file would; the run records its version.
    """
    from loa import versions
    from loa.audit import cli_actor

    now = db.utcnow()
    scheduled_for = scheduled_for or now
    first = campaign.channels[0]
    gateway = gateway_for(config, campaign, first.channel)
    with db.bulk_connection(engine) as conn, conn.begin():   # a million rows: the bulk writers' pragmas
        stored = None
        if campaign.version is None:
            stored = versions.stored(conn, campaign.name)
            campaign = versions.record_definition(conn, config, campaign, cli_actor())
        # the upsert locks the campaign's row until commit: two manual runs at once are checked in turn;
        # other campaigns' plans and applies do not wait (record_definition locks this campaign only)
        campaign_id = ensure_campaign(conn, campaign)
        if refusal := planning_refusal(conn, campaign_id, campaign.version):   # not active, or not this version
            if stored is not None and stored.version != campaign.version and " is draft:" in refusal:
                refusal = (f"campaign {campaign.name}: the definition given differs from its stored version "
                           f"{stored.version} and, as a new version, needs approval: nothing planned "
                           f"(`loa campaigns apply` it, then `loa campaigns submit {campaign.name}`)")
            raise LifecycleError(refusal)
        row = conn.execute(select(db.campaigns).where(db.campaigns.c.id == campaign_id)).one()
        if gap := versions.audience_gap(conn, config, campaign, row):   # committed: the campaign goes to draft
            needs = versions.back_to_draft(conn, row, cli_actor(), gap, "nothing planned")
        else:
            result = _fill(conn, config, campaign, campaign_id, now, scheduled_for, trigger, gateway,
                           again=again, outside_dates=outside_dates)
    if gap:
        raise LifecycleError(needs)
    return result


def _fill(conn: Connection, config: Config, campaign: Campaign, campaign_id: int, now: datetime,
          scheduled_for: datetime, trigger: str, gateway: str, *, again: bool, outside_dates: bool) -> PlanResult:
    """Create the run if it is new and fill its outbox, in the caller's transaction."""
    r = db.runs
    first = campaign.channels[0]
    run_id = conn.scalar(select(r.c.id).where(r.c.campaign_id == campaign_id, r.c.scheduled_for == scheduled_for))
    created = run_id is None
    if created and trigger == "manual":
        problem = manual_run_problem(conn, config, campaign, campaign_id, scheduled_for, again=again,
                                     outside_dates=outside_dates)
        if problem:
            raise RunRefused(problem)
    if created:
        run_id = conn.execute(
            r.insert().values(campaign_id=campaign_id, scheduled_for=scheduled_for, trigger=trigger,
                              status="planning", definition=campaign.snapshot(), created_at=now,
                              campaign_version=campaign.version)
            .returning(r.c.id)
        ).scalar_one()
    audience = audience_select(conn, config, campaign, now).subquery()
    rows = select(
        literal(run_id, Integer), audience.c.id, audience.c.area_id, audience.c.state, audience.c.reason,
        literal(first.channel), literal(gateway), literal(scheduled_for, db.UTCDateTime), literal(0, Integer),
        literal(now, db.UTCDateTime),
        literal(scheduled_for + timedelta(hours=campaign.validity_hours), db.UTCDateTime),
    ).where(literal(1, Integer) == 1)  # SQLite needs a WHERE on INSERT ... SELECT ... ON CONFLICT to parse it
    stmt = db.insert_for(conn, O).from_select(
        ["run_id", "subscriber_id", "area_id", "state", "reason", "channel", "gateway", "due_at",
         "attempts", "updated_at", "expires_at"],
        rows,
    ).on_conflict_do_nothing(index_elements=["run_id", "subscriber_id"])
    # A new run's rows are the ones numbered after the outbox's last row: on SQLite nothing else
    # writes until this transaction commits (BEGIN IMMEDIATE), so they can be read in order.
    after = conn.scalar(select(func.max(O.c.id))) if created and conn.dialect.name == "sqlite" else None
    # preserve_rowcount: SQLAlchemy 2.1 does not keep an INSERT's rowcount otherwise, and
    # PostgreSQL (psycopg) then reports -1, i.e. "added 0" for every run.
    added = conn.execute(stmt.execution_options(preserve_rowcount=True)).rowcount
    conn.execute(update(r).where(r.c.id == run_id).values(status="planned", planned_at=now))
    result = PlanResult(run_id, campaign.name, scheduled_for, created, max(added, 0))
    for state, reason, n in _count_states(conn, run_id, created, max(added, 0), after):
        result.states[state] += n
        if reason:
            result.reasons[reason] += n
    return result


def _count_states(conn: Connection, run_id: int, created: bool, added: int,
                  after: int | None = None) -> list[tuple[str, str | None, int]]:
    """The run's messages by (state, reason).

    A new run's rows are all the insert's, and its planned ones carry no reason: the others
    (held out, suppressed: a few) are counted and the planned are the rest, rather than
    sorting every row of a million-message run again.  On SQLite the new rows are those
    numbered ``after`` the outbox's last row before the insert: read in the table's own
    order, not looked up one by one from the (run, subscriber) index.
    """
    q = select(O.c.state, O.c.reason, func.count()).group_by(O.c.state, O.c.reason)
    if not created:
        return [tuple(row) for row in conn.execute(q.where(O.c.run_id == run_id))]   # type: ignore[misc]
    if conn.dialect.name == "sqlite":
        # "+ 0": the run is checked on each row read, so SQLite scans the range rather than the index
        q = q.where(O.c.id > (after or 0), O.c.run_id + 0 == run_id)
    else:
        q = q.where(O.c.run_id == run_id)
    others = [tuple(row) for row in conn.execute(q.where(O.c.state != "planned"))]
    planned = added - sum(n for _, _, n in others)
    return others + [("planned", None, planned)] if planned else others   # type: ignore[return-value]


def preview_counts(engine: Engine, config: Config, campaign: Campaign) -> tuple[Counter[str], Counter[str]]:
    """What planning now would produce, without writing anything."""
    states: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    with engine.connect() as conn:
        audience = audience_select(conn, config, campaign, db.utcnow()).subquery()
        for state, reason, n in conn.execute(
            select(audience.c.state, audience.c.reason, func.count()).group_by(audience.c.state, audience.c.reason)
        ):
            states[state] += n
            if reason:
                reasons[reason] += n
    return states, reasons

