"""Decree 91/2020/NĐ-CP in code: send windows, frequency caps, do-not-contact,
and the shape of advertising messages.

Public-interest messages (health policy, disaster alerts) are not advertising,
but loa keeps the window, caps and opt-out as defaults for every campaign; a
campaign relaxes them explicitly.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection, Engine

from loa import db

ADVERTISING_PREFIX = "[QC]"
BRANDNAME = re.compile(r"^[A-Za-z0-9 ._-]{1,11}$")
ZALO_NIGHT = (time(6), time(22))     # ZNS refuses sends between 22:00 and 06:00 (error -133)
OPT_OUT_WORDS = ("TC", "TU CHOI", "HUY", "STOP")


@dataclass(frozen=True, slots=True)
class Window:
    start: time
    end: time

    def contains(self, at: datetime, tz: ZoneInfo) -> bool:
        local = at.astimezone(tz).time()
        return self.start <= local < self.end

    def next_open(self, at: datetime, tz: ZoneInfo) -> datetime:
        """``at`` if the window is open then, else the next opening (aware UTC)."""
        if self.contains(at, tz):
            return at
        local = at.astimezone(tz)
        day = local.date() if local.time() < self.start else local.date() + timedelta(days=1)
        return datetime.combine(day, self.start, tz).astimezone(UTC)


DEFAULT_WINDOW = (time(7), time(22))


def parse_window(table: Any) -> tuple[time, time]:
    """A campaign snapshot's [window] (strings or times), or the default 07:00-22:00."""
    if not isinstance(table, Mapping):
        return DEFAULT_WINDOW
    bounds = []
    for key, default in zip(("start", "end"), DEFAULT_WINDOW, strict=True):
        value = table.get(key)
        if value == "24:00":
            value = time.max           # the end of the day: "00:00"-"24:00" is all day
        bounds.append(value if isinstance(value, time) else time.fromisoformat(value) if value else default)
    return bounds[0], bounds[1]


WINDOW_REASON = "outside the "   # how a message deferred by its send window is marked (dispatch)
# The reasons a message held back by the policy keeps in the outbox (in English, which the CLI,
# the API and the exports read; loa.reasons says them in the console's language)
WINDOW = WINDOW_REASON + "{channel} send window {start}-{end}"
CAP_REASON = "frequency cap"


def window_reason(channel: str, window: Window) -> str:
    """Why a message of ``channel`` waits for ``window``: "outside the sms send window 07:00-22:00"."""
    return WINDOW.format(channel=channel, start=f"{window.start:%H:%M}", end=f"{window.end:%H:%M}")


def _window_text(window: tuple[time, time]) -> str:
    return f"{window[0]:%H:%M}-{'24:00' if window[1] == time.max else f'{window[1]:%H:%M}'}"


def apply_window_edits(engine: Engine, campaigns: Mapping[str, Any]) -> list[str]:
    """Make open runs follow their campaign's edited send window.

    A run keeps the definition it was planned with, but the send window is a rule about
    when to send, not what: after an edit, messages waiting for the old window are
    released, and each is held again, if at all, by the new window when next claimed.
    ``campaigns`` maps names to the campaigns as their files now say (loa.campaign.Campaign);
    one line is returned per run changed.
    """
    windows = {name: campaign.snapshot().get("window") for name, campaign in campaigns.items()}
    r, o, c = db.runs, db.outbox, db.campaigns
    changed = []
    with engine.begin() as conn:
        runs = conn.execute(select(r.c.id, c.c.name, r.c.definition).join(c, c.c.id == r.c.campaign_id)
                            .where(r.c.status == "planned", c.c.name.in_(list(windows)))).all()
        for run_id, name, definition in runs:
            old, new = parse_window(definition.get("window")), parse_window(windows[name])
            if old == new:
                continue
            note = f"send window {_window_text(old)} -> {_window_text(new)}"
            conn.execute(update(r).where(r.c.id == run_id).values(definition=definition | {"window": windows[name]}))
            released = conn.execute(update(o).where(
                o.c.run_id == run_id, o.c.state == "deferred", o.c.reason.like(f"{WINDOW_REASON}%")
            ).values(due_at=db.utcnow())).rowcount
            changed.append(f"run {run_id} of {name}: {note}; {released:,} message(s) waiting for the old window "
                           "released")
    return changed


def channel_window(channel: str, campaign_window: tuple[time, time]) -> Window:
    """The campaign's window, narrowed by the channel's own rule (Zalo's night)."""
    start, end = campaign_window
    if channel == "zalo":
        start, end = max(start, ZALO_NIGHT[0]), min(end, ZALO_NIGHT[1])
    return Window(start, end)


def brandname_problem(name: str) -> str | None:
    """Why a brandname cannot carry advertising, or None."""
    if not BRANDNAME.match(name):
        if unicodedata.normalize("NFD", name) != name or not name.isascii():
            return f"brandname {name!r} has diacritics or non-ASCII characters"
        return f"brandname {name!r} must be 1 to 11 letters, digits, spaces, '.', '_' or '-'"
    return None


def advertising_text(body: str, opt_out: str) -> str:
    """"[QC] body ... opt-out": the prefix first, the refusal instructions last."""
    text = body.strip()
    if not text.upper().startswith((ADVERTISING_PREFIX, "[AD]")):
        text = f"{ADVERTISING_PREFIX} {text}"
    if opt_out and not text.rstrip().endswith(opt_out.strip()):
        text = f"{text.rstrip()} {opt_out.strip()}"
    return text


def is_opt_out(text: str) -> bool:
    """TC, TU CHOI, HUY, STOP in any case, with or without diacritics, alone or leading."""
    from unidecode import unidecode

    words = re.sub(r"[^A-Z ]+", " ", unidecode(text).upper()).split()
    joined = " ".join(words)
    return any(joined == w or joined.startswith(w + " ") for w in OPT_OUT_WORDS)


def opt_out(conn: Connection, phone: str, at: datetime, source: str) -> bool:
    """A refusal, effective at once: the number goes on the do-not-contact list (so it holds
    for numbers loa does not know yet, and for re-imports) and its subscriber, if any, is
    marked opted out.  True if the number was not on the list before.

    The one place a refusal is recorded, whether it came as a reply ("TC") or as a
    gateway's answer (Twilio 21610).
    """
    # preserve_rowcount: SQLAlchemy 2.1 drops an INSERT's rowcount otherwise (-1 on PostgreSQL)
    added = conn.execute(db.insert_for(conn, db.dnc).values(
        phone=phone, source=source[:64], added_at=db.utcnow()
    ).on_conflict_do_nothing().execution_options(preserve_rowcount=True)).rowcount > 0
    s = db.subscribers
    conn.execute(update(s).where(s.c.phone == phone, s.c.opted_out_at.is_(None))
                 .values(opted_out_at=at, updated_at=db.utcnow()))
    from loa.consent import withdraw_all

    withdraw_all(conn, phone, at, source)   # a refusal withdraws every purpose's consent
    return added


SENT = ("sending", "sent", "delivered", "undelivered")


@dataclass(frozen=True)
class Policy:
    """Caps and lists checked just before each send (planning checks them too)."""

    advertising_cap: int = 3          # messages per subscriber per `cap_hours`, advertising campaigns
    public_cap: int = 0               # the same for public-interest campaigns; 0 = no cap
    cap_hours: float = 24.0

    @classmethod
    def from_config(cls, config: Any) -> Policy:
        table = getattr(config, "policy", {}) or {}
        return cls(int(table.get("advertising_frequency_cap", 3)), int(table.get("public_frequency_cap", 0)),
                   float(table.get("frequency_hours", 24)))

    def cap_for(self, definition: Mapping[str, Any]) -> int:
        own = definition.get("frequency_cap")
        if own is not None:
            return int(own)
        return self.advertising_cap if definition.get("advertising") else self.public_cap

    def blocked(self, engine: Engine, phones: Mapping[int, str]) -> dict[int, str]:
        """Subscribers who must not be contacted now, with the reason: opted out or on the DNC list."""
        if not phones:
            return {}
        s, d = db.subscribers, db.dnc
        with engine.connect() as conn:
            opted = set(conn.scalars(select(s.c.id).where(s.c.id.in_(list(phones)), s.c.opted_out_at.is_not(None))))
            listed = set(conn.scalars(select(d.c.phone).where(d.c.phone.in_(list(set(phones.values()))))))
        out = {sid: "opted_out" for sid in opted}
        out.update({sid: "dnc" for sid, phone in phones.items() if phone in listed and sid not in out})
        return out

    def over_cap(self, engine: Engine, items: Sequence[Any], now: datetime) -> dict[Any, datetime]:
        """Items whose subscriber has had their cap of messages in the last ``cap_hours``,
        each with the time the oldest of those leaves the window."""
        capped = [i for i in items if self.cap_for(i.definition) > 0]
        if not capped:
            return {}
        o = db.outbox
        since = now - timedelta(hours=self.cap_hours)
        ids = {i.subscriber_id for i in capped}
        with engine.connect() as conn:
            rows = conn.execute(
                select(o.c.subscriber_id, o.c.sent_at)
                .where(o.c.subscriber_id.in_(ids), o.c.state.in_(SENT),
                       func.coalesce(o.c.sent_at, o.c.updated_at) >= since,
                       o.c.id.not_in([i.id for i in capped]))
            ).all()
        recent: dict[int, list[datetime]] = {}
        for sid, sent_at in rows:
            recent.setdefault(sid, []).append(sent_at or now)
        held: dict[Any, datetime] = {}
        for item in capped:
            times = sorted(recent.get(item.subscriber_id, []))
            cap = self.cap_for(item.definition)
            if len(times) >= cap:
                held[item] = times[len(times) - cap] + timedelta(hours=self.cap_hours)
            else:   # this batch's own sends count too
                recent.setdefault(item.subscriber_id, []).append(now)
        return held
