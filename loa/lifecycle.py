"""The lifecycle of campaigns and runs: who may send, and what pause and cancel do.

A campaign moves through::

    draft -> pending_approval -> approved -> active <-> paused -> finished | cancelled

and a run, on its own, through ``active <-> paused -> cancelled``.  Every move is an
action checked against one table (:data:`CAMPAIGN_ACTIONS`, :data:`RUN_ACTIONS`) by
:func:`transition`, which names what is allowed when a move is not; the state, who
moved it (the actor), when and why are kept on the campaign's or the run's row.

Only the messages of an active run of an active campaign are sent.  The dispatcher
checks this when it claims rows and again in the commit that marks each message
``sending`` just before its gateway call (:func:`halted_runs`), so a pause stops every
worker on every machine after the calls already under way.  What a pause holds back
stays ``planned`` (or ``deferred``) with the pause as its reason, and goes out on resume;
cancel makes every unsent message ``cancelled``, with the actor and the reason, and
leaves alone what was sent or is being sent.

A campaign that needs no approval is active once applied (loa.versions); one that the
``[approval]`` policy covers starts in draft and goes through submit, approve (by a second
user) and launch (loa.approval); planning refuses any campaign that is not active
(:func:`planning_refusal`), and plans only its approved version.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.engine import Connection, Engine

from loa import db
from loa.errors import LoaError, NotFound, Text
from loa.receipts import lock_rows

C, R, O = db.campaigns, db.runs, db.outbox

CAMPAIGN_STATES = ("draft", "pending_approval", "approved", "active", "paused", "finished", "cancelled")
RUN_STATES = ("active", "paused", "cancelled")
SENDING = "active"            # the one state, of a campaign and of a run, whose messages are sent
NO_NEW_RUNS = ("paused", "finished", "cancelled")   # a campaign in these gets no new run

# action -> {state it applies to: the state it leads to}
CAMPAIGN_ACTIONS: dict[str, dict[str, str]] = {
    "submit": {"draft": "pending_approval"},
    "approve": {"pending_approval": "approved"},
    "reject": {"pending_approval": "draft"},
    # a changed version of a campaign that needs approval (loa.versions.apply)
    "edit": {"pending_approval": "draft", "approved": "draft", "active": "draft", "paused": "draft"},
    "launch": {"approved": "active"},
    "pause": {"active": "paused"},
    "resume": {"paused": "active"},
    "finish": {"active": "finished", "paused": "finished"},
    "cancel": {state: "cancelled" for state in ("draft", "pending_approval", "approved", "active", "paused")},
}
RUN_ACTIONS: dict[str, dict[str, str]] = {
    "pause": {"active": "paused"},
    "resume": {"paused": "active"},
    "cancel": {"active": "cancelled", "paused": "cancelled"},
}
PAST = {"submit": Text("submitted for approval"), "approve": Text("approved"), "reject": Text("rejected"),
        "edit": Text("edited"), "launch": Text("launched"), "pause": Text("paused"), "resume": Text("resumed"),
        "finish": Text("finished"), "cancel": Text("cancelled")}
# a state in a message: English keeps the code, other languages say it
STATE_WORDS = {"draft": Text("draft"), "pending_approval": Text("pending_approval"), "approved": Text("approved"),
               "active": Text("active"), "paused": Text("paused"), "finished": Text("finished"),
               "cancelled": Text("cancelled")}

PAUSED_PREFIX = "paused by "        # the reason of a message held back by a pause
CANCELLED_PREFIX = "cancelled by "  # the reason of a message cancelled
# The reasons the outbox stores, in English as the CLI, the API and the exports read them;
# loa.reasons reads them back to say them in the console's language.
PAUSED = PAUSED_PREFIX + "{who}: {reason}"
CANCELLED = CANCELLED_PREFIX + "{who}: {reason}"
WAITING = "campaign {state}"        # a message of a campaign not (yet, or any more) active
REASON_WIDTH = 200                  # outbox.reason


class LifecycleError(LoaError):
    """An action that the campaign's or run's state does not allow (nothing was changed)."""

    exit_code = 2


def transition(kind: str, name: str, current: str, action: str) -> str:
    """The state ``action`` leads a ``kind`` ("campaign" or "run") in ``current`` to; a
    :class:`LifecycleError` naming the states it applies to if it is not allowed."""
    actions = CAMPAIGN_ACTIONS if kind == "campaign" else RUN_ACTIONS
    if action not in actions:
        raise LifecycleError(Text("{kind} {name}: unknown action {action!r} (one of {actions})",
                                  kind=Text("campaign") if kind == "campaign" else Text("run"), name=name,
                                  action=action, actions=", ".join(actions)))
    target = actions[action].get(current)
    if target is None:
        state, allowed, done = _state(current), either(*map(_state, actions[action])), PAST[action]
        if kind == "campaign":
            raise LifecycleError(Text("campaign {name} is {state}: only a campaign that is {allowed} can be {done}",
                                      name=name, state=state, allowed=allowed, done=done))
        raise LifecycleError(Text("run {name} is {state}: only a run that is {allowed} can be {done}",
                                  name=name, state=state, allowed=allowed, done=done))
    return target


def _state(code: str) -> Text | str:
    return STATE_WORDS.get(code, code)


def either(*words: Text | str) -> Text | str:
    """"a or b or c", in any language."""
    said = words[0]
    for word in words[1:]:
        said = Text("{a} or {b}", a=said, b=word)
    return said


def actor() -> str:
    """Who acts from this shell: $LOA_ACTOR, else ``os:`` and the operating system's user (as the
    audit log names a command's actor)."""
    from loa.audit import cli_actor

    return cli_actor()


@dataclass
class Change:
    """One move made: what, from which state to which, and how many messages it touched."""

    kind: str           # "campaign" or "run"
    name: str           # the campaign's name, or "run 12 of NAME"
    before: str
    after: str
    messages: int = 0   # held back (pause), released (resume) or cancelled (cancel)


# Called with the change's connection and the change, before it commits: the audit entry
# of a change goes in the same transaction as the change.
Record = Callable[[Connection, Change], None]


def _reason_text(form: str, who: str, reason: str) -> str:
    return form.format(who=who, reason=reason)[:REASON_WIDTH]


def pause_reason(who: str, reason: str) -> str:
    """The reason a message held back by ``who``'s pause carries (a resume clears it)."""
    return _reason_text(PAUSED, who, reason)


def _lock(conn: Connection, query: Any) -> Any:
    return query.with_for_update() if conn.dialect.name == "postgresql" else query


def change_campaign(engine: Engine, name: str, action: str, *, who: str, reason: str | None,
                    record: Record | None = None) -> Change:
    """Apply ``action`` to campaign ``name`` and to its messages, in one transaction (with
    ``record``'s audit entry)."""
    now = db.utcnow()
    with engine.begin() as conn:
        row = conn.execute(_lock(conn, select(C.c.id, C.c.state).where(C.c.name == name))).first()
        if row is None:
            raise NotFound(Text("campaign {name} is not in the database: it has never been run", name=name))
        after = transition("campaign", name, row.state, action)
        conn.execute(update(C).where(C.c.id == row.id)
                     .values(state=after, state_reason=reason, state_by=who, state_at=now, updated_at=now))
        runs = select(R.c.id).where(R.c.campaign_id == row.id)
        n = 0
        if action == "cancel":
            conn.execute(update(R).where(R.c.campaign_id == row.id, R.c.state != "cancelled")
                         .values(state="cancelled", state_reason=reason, state_by=who, state_at=now))
            n = _cancel_messages(conn, runs, _reason_text(CANCELLED, who, reason or ""), now)
        elif action == "pause":
            n = _hold_messages(conn, runs, _reason_text(PAUSED, who, reason or ""), now)
        elif action == "resume":
            n = _release_messages(conn, runs, now)
        change = Change("campaign", name, row.state, after, n)
        if record is not None:
            record(conn, change)
    return change


def change_run(engine: Engine, campaign: str, run_id: int, action: str, *, who: str,
               reason: str | None, record: Record | None = None) -> Change:
    """Apply ``action`` to run ``run_id`` of ``campaign`` (only) and to its messages."""
    now = db.utcnow()
    label = f"run {run_id} of {campaign}"
    with engine.begin() as conn:
        row = conn.execute(_lock(conn, select(R.c.id, R.c.state, C.c.name).join(C, C.c.id == R.c.campaign_id)
                                 .where(R.c.id == run_id))).first()
        if row is None or row.name != campaign:
            if row is not None:
                raise NotFound(Text("campaign {campaign} has no run {run} (it is a run of {other})",
                                    campaign=campaign, run=run_id, other=row.name))
            raise NotFound(Text("campaign {campaign} has no run {run}", campaign=campaign, run=run_id))
        after = transition("run", Text("{run} of {campaign}", run=run_id, campaign=campaign), row.state, action)
        conn.execute(update(R).where(R.c.id == run_id)
                     .values(state=after, state_reason=reason, state_by=who, state_at=now))
        runs = select(R.c.id).where(R.c.id == run_id)
        n = 0
        if action == "cancel":
            n = _cancel_messages(conn, runs, _reason_text(CANCELLED, who, reason or ""), now)
        elif action == "pause":
            n = _hold_messages(conn, runs, _reason_text(PAUSED, who, reason or ""), now)
        elif action == "resume":
            n = _release_messages(conn, runs, now)
        change = Change("run", label, row.state, after, n)
        if record is not None:
            record(conn, change)
    return change


def stop_all(engine: Engine, *, who: str, reason: str, record: Record | None = None) -> list[Change]:
    """The emergency brake: pause every active campaign (each in its own transaction, with
    ``record``'s audit entry)."""
    with engine.connect() as conn:
        names = conn.scalars(select(C.c.name).where(C.c.state == "active").order_by(C.c.name)).all()
    changes = []
    for name in names:
        try:
            changes.append(change_campaign(engine, name, "pause", who=who, reason=reason, record=record))
        except LifecycleError:   # moved by someone else meanwhile (paused, cancelled): nothing to stop
            continue
    return changes


def _hold_messages(conn: Connection, runs: Any, text: str, now: Any) -> int:
    """The messages waiting to go out keep their state, with the pause as their reason."""
    waiting = and_(O.c.run_id.in_(runs), O.c.state.in_(("planned", "deferred")))
    lock_rows(conn, waiting)
    return conn.execute(update(O).where(waiting).values(reason=text, updated_at=now)).rowcount


def _release_messages(conn: Connection, runs: Any, now: Any) -> int:
    """After a resume: the messages of those runs that may now be sent lose the pause as their
    reason; those still held (their run, or their campaign, is paused) take that pause's."""
    waiting = and_(O.c.run_id.in_(runs), O.c.state.in_(("planned", "deferred")),
                   O.c.reason.like(PAUSED_PREFIX + "%"))
    n = 0
    lock_rows(conn, waiting)
    held = halted_runs(conn, conn.scalars(runs).all())
    if held:
        for run_id, (_, text) in held.items():
            conn.execute(update(O).where(waiting, O.c.run_id == run_id).values(reason=text, updated_at=now))
        waiting = and_(waiting, O.c.run_id.not_in(list(held)))
    n += conn.execute(update(O).where(waiting).values(reason=None, updated_at=now)).rowcount
    return n


def _cancel_messages(conn: Connection, runs: Any, text: str, now: Any) -> int:
    """Every message not yet handed to a gateway: cancelled.  One a worker has claimed is
    taken from it (its mark as ``sending`` then finds it gone); one being sent finishes."""
    unsent = and_(O.c.run_id.in_(runs), O.c.state.in_(("planned", "deferred", "claimed")))
    lock_rows(conn, unsent)   # in id order, as the workers lock them
    return conn.execute(update(O).where(unsent).values(state="cancelled", reason=text, worker=None, lease_until=None,
                                                       updated_at=now)).rowcount


def halted() -> Any:
    """A subquery of the ids of the runs whose messages must not be sent now."""
    return (select(R.c.id).join(C, C.c.id == R.c.campaign_id)
            .where(or_(R.c.state != SENDING, C.c.state != SENDING)))


def cancelled() -> Any:
    """A subquery of the ids of the runs cancelled, or of a cancelled campaign."""
    return (select(R.c.id).join(C, C.c.id == R.c.campaign_id)
            .where(or_(R.c.state == "cancelled", C.c.state == "cancelled")))


def halted_runs(conn: Connection, run_ids: Any) -> dict[int, tuple[str, str]]:
    """Of ``run_ids``, those whose messages must not be sent now: run id -> (the state its
    unsent messages take, their reason)."""
    ids = sorted(set(run_ids))
    if not ids:
        return {}
    rows = conn.execute(
        select(R.c.id, R.c.state, R.c.state_by, R.c.state_reason,
               C.c.state.label("c_state"), C.c.state_by.label("c_by"), C.c.state_reason.label("c_reason"))
        .join(C, C.c.id == R.c.campaign_id)
        .where(R.c.id.in_(ids), or_(R.c.state != SENDING, C.c.state != SENDING))
    ).all()
    out: dict[int, tuple[str, str]] = {}
    for r in rows:
        if "cancelled" in (r.state, r.c_state):
            by, why = (r.c_by, r.c_reason) if r.c_state == "cancelled" else (r.state_by, r.state_reason)
            out[r.id] = ("cancelled", _reason_text(CANCELLED, by or "?", why or ""))
        elif r.c_state == "paused":
            out[r.id] = ("planned", _reason_text(PAUSED, r.c_by or "?", r.c_reason or ""))
        elif r.state == "paused":
            out[r.id] = ("planned", _reason_text(PAUSED, r.state_by or "?", r.state_reason or ""))
        else:   # a campaign not (yet, or any more) active: its messages wait, planned
            out[r.id] = ("planned", WAITING.format(state=r.c_state)[:REASON_WIDTH])
    return out


def no_new_runs(conn: Connection, campaign_id: int) -> str | None:
    """Why campaign ``campaign_id`` may not get a new run now (paused, finished, cancelled), or None."""
    row = conn.execute(select(C.c.name, C.c.state, C.c.state_by, C.c.state_reason)
                       .where(C.c.id == campaign_id)).first()
    if row is None or row.state not in NO_NEW_RUNS:
        return None
    by = f" by {row.state_by}" if row.state_by else ""
    why = f": {row.state_reason}" if row.state_reason else ""
    hint = f"; `loa campaigns resume {row.name}` lets it run again" if row.state == "paused" else ""
    return f"campaign {row.name} is {row.state}{by}{why}: no run planned{hint}"


_HINTS = {
    "draft": "`loa campaigns submit {name}` asks for its approval",
    "pending_approval": "it awaits approval (`loa campaigns approve {name}` by an approver)",
    "approved": "`loa campaigns launch {name}` makes it active",
}


def planning_refusal(conn: Connection, campaign_id: int, version: int | None = None) -> str | None:
    """Why campaign ``campaign_id`` may not get a new run (or greeting) of ``version`` now, in
    one line: it is not active, or ``version`` is not the one to plan (its approved version, if
    it was approved, else its current one); None if it may."""
    if halted := no_new_runs(conn, campaign_id):
        return halted
    row = conn.execute(select(C.c.name, C.c.state, C.c.current_version, C.c.approved_version)
                       .where(C.c.id == campaign_id)).first()
    if row is None:
        return None
    if row.state != SENDING:
        hint = _HINTS.get(row.state, "").format(name=row.name)
        return f"campaign {row.name} is {row.state}: only an active campaign is planned; nothing planned" + (
            f" ({hint})" if hint else "")
    if version is not None:
        if row.approved_version is not None and version != row.approved_version:
            return (f"campaign {row.name}: version {version} is not its approved version {row.approved_version}: "
                    "nothing planned")
        if row.approved_version is None and row.current_version is not None and version != row.current_version:
            return (f"campaign {row.name}: version {version} is not its current version {row.current_version} "
                    "(applied since): nothing planned")
    return None


__all__ = ["CAMPAIGN_ACTIONS", "CAMPAIGN_STATES", "RUN_ACTIONS", "RUN_STATES", "Change", "LifecycleError",
           "Record", "actor", "change_campaign", "change_run", "halted", "halted_runs", "no_new_runs",
           "planning_refusal", "stop_all",
           "transition"]
