"""Decree 91/2020/NĐ-CP in code: send windows, frequency caps, do-not-contact,
and the shape of advertising messages.

Public-interest messages (health policy, disaster alerts) are not advertising,
but loa keeps the window, caps and opt-out as defaults for every campaign; a
campaign relaxes them explicitly.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

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
