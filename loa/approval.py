"""Four-eyes approval: submit, approve, reject and launch a campaign version.

The ``[approval]`` policy (loa.config.ApprovalPolicy, loa.versions.needs_approval) says which
campaigns need it.  Such a campaign is a draft when a version of it is applied; an operator
submits it (the current version is pinned as ``submitted_version``), a *second* user with
the approver role approves it (``approved_version``: only that version is planned) or rejects
it, and an approver launches it.  Applying a changed version sends it back to draft.

Every function takes the engine, the acting :class:`loa.auth.Principal` and the campaign's
name, checks the role (and the area of the campaign's segment), makes the move and writes
the audit entry in one transaction, and returns what changed; a wrong role, a wrong state,
the submitter approving, or a version that changed since (:class:`StaleVersion`) changes
nothing and raises one clear error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection, Engine

from loa import audit, db, versions
from loa.auth import EVERYWHERE, Forbidden, Principal, require
from loa.config import Config
from loa.errors import InputError, LoaError, NotFound, Text
from loa.lifecycle import PAST, STATE_WORDS, LifecycleError, transition
from loa.versions import StaleVersion

C = db.campaigns
PERMISSION = {"submit": "campaigns.draft", "approve": "campaigns.approve", "reject": "campaigns.approve",
              "launch": "campaigns.launch"}



@dataclass
class Decision:
    """One approval move made."""

    campaign: str
    action: str
    before: str
    after: str
    version: int | None      # the version submitted, approved, rejected or launched
    actor: str


@dataclass
class Review:
    """What an approver sees before approving: the version, its audience, rendered samples with
    their encoding and parts, and the estimated cost (or the parts it is made of)."""

    campaign: str
    version: int
    state: str
    submitted_by: str | None
    submitted_version: int | None
    approval: str | None                 # why the policy asks for approval; None if it does not
    audience: int
    to_send: int
    held_out: int
    suppressed: dict[str, int]
    samples: list[Any] = field(default_factory=list)   # loa.preview.Sample: who, area, channel, text, detail
    errors: list[str] = field(default_factory=list)
    estimated_parts: int = 0             # SMS parts of the messages to send, estimated from the samples
    estimated_cost: float | None = None  # VND, when gateway prices are known (loa.cost.estimate)


def review(engine: Engine, config: Config, name: str, count: int = 3) -> Review:
    """The review of campaign ``name``'s current version (its submitted one, if that is current)."""
    from loa.cost import estimate
    from loa.preview import preview

    campaign = versions.load(engine, config, name)
    with engine.connect() as conn:
        row = conn.execute(select(C.c.state, C.c.state_by, C.c.submitted_version).where(C.c.name == name)).one()
        audience = versions.audience_size(conn, config, campaign)
    result = preview(engine, config, campaign, count)
    # None while the gateway carries no price: the review then shows the parts, which prices multiply
    cost = estimate(engine, config, campaign).cost_vnd
    return Review(
        campaign=name, version=campaign.version or 0, state=row.state,
        submitted_by=row.state_by if row.state == "pending_approval" else None,
        submitted_version=row.submitted_version,
        approval=versions.needs_approval(config.approval, campaign, audience),
        audience=result.audience, to_send=result.planned, held_out=result.held_out,
        suppressed=dict(result.reasons), samples=list(result.samples), errors=list(result.errors),
        estimated_parts=result.estimated_parts, estimated_cost=cost,
    )


def _where(conn: Connection, config: Config, name: str) -> Any:
    """The areas of the campaign's segment (for :func:`require`); the whole country if none."""
    from loa.areas import AreaIndex, AreaLookupError

    version = versions.stored(conn, name)
    names = versions.campaign_of(config, version).segment.get("areas") if version is not None else None
    if not names:
        return EVERYWHERE
    index = AreaIndex.load(conn)
    try:
        return [index.resolve(n) for n in names]
    except AreaLookupError:
        return EVERYWHERE


def record_review(engine: Engine, actor: str, seen: Review) -> None:
    """A review shows real subscribers' names and messages: an access to personal data, audited."""
    audit.record_now(engine, actor, "campaigns.review", "campaign", seen.campaign,
                     after={"version": seen.version, "subscribers_shown": len(seen.samples) + len(seen.errors),
                            "audience": seen.audience})


def check_reviewer(engine: Engine, config: Config, name: str, principal: Principal) -> None:
    """Refuse (:class:`Forbidden`) a ``principal`` who may not approve campaign ``name``, before
    the review shows them its audience's names and messages."""
    with engine.connect() as conn:
        require(principal, PERMISSION["approve"], _where(conn, config, name))


def decide(engine: Engine, config: Config, name: str, action: str, principal: Principal, *,
           reason: str | None = None, version: int | None = None) -> Decision:
    """``action`` (submit, approve, reject, launch) on campaign ``name`` by ``principal``.

    ``version``: the version the actor reviewed; if the campaign's current version is another,
    nothing changes (:class:`StaleVersion`)."""
    if action not in PERMISSION:
        raise LoaError(Text("unknown approval action {action!r} (one of {actions})", action=action,
                            actions=", ".join(PERMISSION)))
    who = principal.actor
    refused: LifecycleError | None = None
    with engine.begin() as conn:
        query = select(C).where(C.c.name == name)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        row = conn.execute(query).first()
        if row is None or row.current_version is None:
            raise NotFound(Text("no campaign named {name!r} in the database: `loa campaigns apply` loads it", name=name))
        require(principal, PERMISSION[action], _where(conn, config, name))
        if action == "reject" and not (reason or "").strip():
            missing = InputError(Text("campaign {name}: a rejection needs a reason (--reason)", name=name))
            missing.field = "reason"
            raise missing
        current = row.current_version
        if version is not None and version != current:
            raise StaleVersion(Text("campaign {name}: version {version} is not its current version {current} "
                                    "(applied since): nothing {done}; review version {current}",
                                    name=name, version=version, current=current, done=PAST[action]))
        if action in ("approve", "reject") and row.submitted_version is not None and row.submitted_version != current:
            raise StaleVersion(Text("campaign {name} changed since it was submitted (version {submitted} "
                                    "submitted, version {current} applied since, now {state}): nothing "
                                    "{done}; it must be submitted again", name=name, submitted=row.submitted_version,
                                    current=current, state=STATE_WORDS.get(row.state, row.state), done=PAST[action]))
        if action == "launch" and row.approved_version is not None and row.approved_version != current:
            raise StaleVersion(Text("campaign {name}: version {approved} was approved, version {current} "
                                    "is current: nothing launched", name=name, approved=row.approved_version,
                                    current=current))
        after = transition("campaign", name, row.state, action)
        if action == "approve" and row.state_by == who:
            raise Forbidden(Text("campaign {name}: {who} submitted version {current} and cannot approve it too: "
                                 "a second user with the approver role must (four eyes)",
                                 name=name, who=who, current=current), "four_eyes")
        stored = versions.stored(conn, name) if action in ("approve", "launch") else None
        campaign = versions.campaign_of(config, stored) if stored is not None else None
        if campaign is not None and action == "launch" and (gap := versions.audience_gap(conn, config, campaign, row)):
            refused = LifecycleError(versions.back_to_draft(conn, row, who, gap, "nothing launched"))
        else:
            _move(conn, row, name, action, who, reason, after, campaign, config)
    if refused is not None:     # raised once the move back to draft is committed
        raise refused
    return Decision(name, action, row.state, after, current, who)


def _move(conn: Connection, row: Any, name: str, action: str, who: str, reason: str | None, after: str,
          campaign: Any, config: Config) -> None:
    """Make the approval move ``action`` on campaign ``row`` and write its audit entry."""
    now = db.utcnow()
    current = row.current_version
    values: dict[str, Any] = {"state": after, "state_by": who, "state_at": now, "state_reason": reason,
                              "updated_at": now}
    if action == "submit":
        values["submitted_version"] = current
    elif action == "approve":
        values["approved_version"] = current
        # what the approver approved: [approval] above_recipients is checked against it later
        values["approved_audience"] = versions.audience_size(conn, config, campaign) if campaign else None
    elif action == "reject":
        values["approved_version"] = None
    conn.execute(update(C).where(C.c.id == row.id).values(**values))
    audit.record(conn, who, f"campaigns.{action}", "campaign", name,
                 before={"state": row.state, "version": current, "submitted_version": row.submitted_version,
                         "approved_version": row.approved_version, "by": row.state_by},
                 after={"state": after, "version": current,
                        "submitted_version": values.get("submitted_version", row.submitted_version),
                        "approved_version": values.get("approved_version", row.approved_version),
                        **({"audience": values["approved_audience"]} if action == "approve" else {})},
                 reason=reason or "")


__all__ = ["Decision", "Review", "check_reviewer", "decide", "record_review", "review"]
