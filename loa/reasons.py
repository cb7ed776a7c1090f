"""Why a message waits, ended as it did, or a gateway or campaign stopped, in the reader's language.

The outbox's ``reason`` and ``error_text``, a gateway's ``paused_reason`` and a campaign's
``state_reason`` are stored in English: the CLI, the API, the CSV exports and the reports read
them as they are, so they stay so.  Each producer writes its text from one format kept next to
it (:data:`loa.policy.CAP_REASON`, :data:`loa.lifecycle.PAUSED`, :data:`loa.cost.BUDGET_STOP`,
:attr:`loa.dispatch.Dispatcher.EXPIRED`, ...).  :func:`read` recognises a stored text by that
format and gives it back as a :class:`loa.errors.Text`, which the console says in its user's
language (numbers in the language's format); a text it does not recognise, such as a gateway's
own words or an official's reason, comes back unchanged, and so does the part of a sentence
that quotes one ("auth error: " and then the gateway's text).
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Callable
from typing import Any

from loa import cost, lifecycle, policy, subjects
from loa import gateways as gw
from loa.errors import Text
from loa.plan import EVENT_REASON

# A field of a format as it appears in a stored text: "10,000" for {x:,}, "12" or "1.5" for {x:g}
_FIELDS = {"": r".*?", ",": r"\d{1,3}(?:,\d{3})*", "g": r"\d+(?:\.\d+)?"}


@functools.cache
def _compiled(form: str) -> tuple[re.Pattern[str], dict[str, str]]:
    pattern, specs = [], {}
    for literal, name, spec, _ in string.Formatter().parse(form):
        pattern.append(re.escape(literal))
        if name is not None:
            specs[name] = spec or ""
            pattern.append(f"(?P<{name}>{_FIELDS[specs[name]]})")
    return re.compile("".join(pattern), re.DOTALL), specs


def fields(form: str, text: str) -> dict[str, Any] | None:
    """The values that ``form`` (a ``str.format`` template) was filled with to give ``text``,
    numbers as numbers; None if ``text`` is not made from ``form``."""
    pattern, specs = _compiled(form)
    found = pattern.fullmatch(text)
    if found is None:
        return None
    return {name: _number(value, specs[name]) for name, value in found.groupdict().items()}


def _number(value: str, spec: str) -> Any:
    if spec == ",":
        return int(value.replace(",", ""))
    if spec == "g":
        number = float(value)
        return int(number) if number.is_integer() else number
    return value


# -- the words inside the sentences ---------------------------------------------------------------

CHANNELS = {"sms": Text("sms"), "zalo": Text("zalo")}
ACTORS = {cost.SYSTEM: Text("system")}        # other actors (user:ana, key:3) are names, said as they are
# what a message is held back for, stored as a code
CODES = {
    "opted_out": Text("opted out"),
    "dnc": Text("on the Do-Not-Call list"),
    "restricted": Text("processing restricted at the person's request"),
    "no_consent": Text("no advertising consent"),
    "throttled": Text("the gateway asked to slow down"),
    "deferred": Text("the gateway asked to send later"),
    "quota": Text("the gateway's quota is used up"),
    policy.CAP_REASON: Text("frequency cap"),
}
# a gateway paused by the dispatcher, by the kind of error it answered
PAUSES = {"auth": lambda text: Text("auth error: {text}", text=text),
          "config": lambda text: Text("config error: {text}", text=text),
          "money": lambda text: Text("money error: {text}", text=text)}


def _channel(code: str) -> Text | str:
    return CHANNELS.get(code, code)


def _actor(who: str) -> Text | str:
    return ACTORS.get(who, who)


# The reason of a pause or a cancellation is an official's own words, said as they are, unless it
# is one of loa's sentences (a budget stop): a code ("dnc") that an official typed stays a word.
def _paused(f: dict[str, Any]) -> Text:
    return Text("paused by {who}: {reason}", who=_actor(f["who"]), reason=_sentence(f["reason"]))


def _cancelled(f: dict[str, Any]) -> Text:
    return Text("cancelled by {who}: {reason}", who=_actor(f["who"]), reason=_sentence(f["reason"]))


def _waiting(f: dict[str, Any]) -> Text:
    return Text("campaign {state}", state=lifecycle.STATE_WORDS.get(f["state"], f["state"]))


def _budget(f: dict[str, Any]) -> Text | None:
    if f["next"] == cost.NEXT_UNPRICED:
        nxt = Text("has no price")
    elif (costs := fields(cost.NEXT_COSTS, f["next"])) is not None:
        nxt = Text("costs {cost:n} VND", cost=costs["cost"])
    else:
        return None
    return Text("budget {budget:n} VND: {total:n} VND spent or in flight, and the next message {next}",
                budget=f["budget"], total=f["total"], next=nxt)


def _window(f: dict[str, Any]) -> Text:
    return Text("outside the {channel} send window {start}-{end}", channel=_channel(f["channel"]),
                start=f["start"], end=f["end"])


def _undelivered(f: dict[str, Any]) -> Text:
    return Text("{channel} undelivered; moved to {next}", channel=_channel(f["channel"]), next=_channel(f["next"]))


def _no_receipt(f: dict[str, Any]) -> Text:
    return Text("no {channel} receipt within {after}; moved to {next}", channel=_channel(f["channel"]),
                after=f["after"], next=_channel(f["next"]))


def _expired(f: dict[str, Any]) -> Text:
    return Text("not sent within the validity of {hours:n} h", hours=f["hours"])


def _event(f: dict[str, Any]) -> Text | None:
    # an event type is the campaign's own word; the usual ones are in the catalog (the report's)
    return Text("already {event}", event=Text(f["kind"])) if f["kind"] else None


def _gateway_paused(f: dict[str, Any]) -> Text | None:
    said = PAUSES.get(f["kind"])
    return said(f["text"]) if said else None


def _restricted(f: dict[str, Any]) -> Text:
    return Text("cancelled: processing restricted by {who}: {reason}", who=_actor(f["who"]), reason=f["reason"])


def _erased(f: dict[str, Any]) -> Text:
    return Text("cancelled: erasure requested by {who}: {reason}", who=_actor(f["who"]), reason=f["reason"])


def _moved(f: dict[str, Any]) -> Text:
    return Text("moved to {channel}: {text}", channel=_channel(f["channel"]), text=f["text"])


def _unknown(f: dict[str, Any]) -> Text:
    return Text("outcome unknown: {text}", text=f["text"])


def _gave_up(f: dict[str, Any]) -> Text:
    return Text("gave up after {attempts:n} attempts: {text}", attempts=f["attempts"], text=f["text"])


def _opted_out_at(f: dict[str, Any]) -> Text:
    return Text("opted out at the gateway ({code})", code=f["code"])


@functools.cache
def _formats() -> list[tuple[str, Callable[[dict[str, Any]], Text | None]]]:
    # the dispatcher's own texts, imported when first needed (it imports much of loa)
    from loa.dispatch import Dispatcher

    return [
        (lifecycle.PAUSED, _paused), (lifecycle.CANCELLED, _cancelled), (lifecycle.WAITING, _waiting),
        (cost.BUDGET_STOP, _budget), (policy.WINDOW, _window),
        (Dispatcher.UNDELIVERED, _undelivered), (Dispatcher.NO_RECEIPT, _no_receipt), (Dispatcher.EXPIRED, _expired),
        (EVENT_REASON, _event), (gw.PAUSED_FOR, _gateway_paused),
        (subjects.RESTRICTED, _restricted), (subjects.ERASED, _erased),
        (Dispatcher.MOVED, _moved), (Dispatcher.UNKNOWN, _unknown), (Dispatcher.GAVE_UP, _gave_up),
        (Dispatcher.OPTED_OUT, _opted_out_at),
    ]


def read(stored: str) -> str:
    """``stored`` as a :class:`Text` that can be said in any language, where it is one of loa's
    own reasons; any other text (a gateway's, an official's) as it is."""
    return CODES.get(stored) or _sentence(stored)


def _sentence(stored: str) -> str:
    """``stored`` as a :class:`Text` where it is made from one of the formats; else as it is."""
    for form, said in _formats():
        found = fields(form, stored) if stored else None
        if found is not None and (text := said(found)) is not None:
            return text
    return stored


__all__ = ["CODES", "fields", "read"]
