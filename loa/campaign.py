"""Campaign definitions: one TOML file each in the campaigns folder.

:func:`load_all` parses every file and :func:`problems` lists every error with
file, key path and reason.  Parsing is strict: an unknown key is an error, so a
typo never silently changes who gets a message.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

from loa.errors import CampaignError, NotFound, Text

CHANNELS = ("sms", "zalo")
TRIGGERS = ("manual", "schedule", "arrival")
TOP_KEYS = {
    "name", "description", "advertising", "channels", "holdout", "suppress_events", "validity_hours",
    "trigger", "segment", "sms", "zalo", "window", "dates", "goal", "schedule", "frequency_cap", "opt_out", "arrival", "link",
    "attribution", "budget",
}
ARRIVAL_KEYS = {"delay", "regreet_after"}
CHANNEL_KEYS = {"sms": {"template", "gateway", "unaccented", "max_parts", "fallback_after"},
                "zalo": {"template", "gateway", "fallback_after"}}
SEGMENT_KEYS = {"areas", "rules", "events"}
RULE_OPS = {"eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "between", "exists"}
EVENT_KEYS = {"type", "has", "since"}
WINDOW_KEYS = {"start", "end"}
DATES_KEYS = {"start", "end"}
GOAL_KEYS = {"event", "share", "of", "by"}
SCHEDULE_KEYS = {"cron", "at", "every", "grace", "stop_at_goal"}
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")
DURATION = re.compile(r"^(\d+)\s*([dhms])$")
# A response counts for a campaign if it comes within this long of the message (or, for the
# held out, of when it would have been sent). A week covers someone who reads an SMS at once
# but installs at the weekend, and keeps a later campaign's effect from being credited here.
ATTRIBUTION = 7 * 86400.0   # seconds: attribution = "7d"
VALIDITY_HOURS = 24          # a message not sent within this long of its run expires


@dataclass(frozen=True)
class ChannelSpec:
    channel: str
    template: str
    gateway: str | None = None
    unaccented: bool = False
    max_parts: int = 6
    fallback_after: float | None = None   # seconds without a receipt before the next channel


@dataclass(frozen=True)
class Goal:
    event: str = "installed"
    share: float = 0.5
    of: str = "population"
    by: date | None = None


@dataclass(frozen=True)
class Schedule:
    """When a scheduled campaign runs, in the configured time zone."""

    cron: str | None = None           # five fields: "0 8 * * *" is every day at 08:00
    at: datetime | None = None        # once
    every: float | None = None        # seconds between runs
    grace: float = 3600.0             # a run missed by less than this still fires on restart
    stop_at_goal: bool = False        # stop scheduling once the goal is met


@dataclass(frozen=True)
class ArrivalRule:
    """How an arrival campaign greets: after ``delay``, once per ``regreet_after``."""

    delay: float = 0.0                # seconds after the arrival
    regreet_after: float = 30 * 86400.0


@dataclass(frozen=True)
class Campaign:
    name: str
    path: Path
    description: str
    advertising: bool
    channels: tuple[ChannelSpec, ...]
    segment: dict[str, Any]
    holdout: float
    suppress_events: tuple[str, ...]
    validity_hours: float
    trigger: str
    window: tuple[time, time]
    start: date | None
    end: date | None
    goal: Goal | None
    arrival: ArrivalRule | None = None
    frequency_cap: int | None = None      # per subscriber per 24 h; None = the configured default
    opt_out: str = ""
    schedule: Schedule | None = None
    attribution: float = ATTRIBUTION      # seconds
    budget: int | None = None             # VND the campaign may spend, over all its runs (loa.cost)
    raw: dict[str, Any] = field(repr=False, default_factory=dict)
    # stored in the database (loa.versions): its version, and the templates it uses ({path: text});
    # None for a definition read from a file that has not been applied
    version: int | None = None
    templates: dict[str, str] | None = field(repr=False, default=None, compare=False)

    def channel(self, name: str) -> ChannelSpec:
        return next(c for c in self.channels if c.channel == name)

    def snapshot(self) -> dict[str, Any]:
        """What a run stores: the definition as it was when the run was planned."""
        return _jsonable(self.raw) | {"name": self.name}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, date | time | datetime):
        return value.isoformat()
    return value


class _Problems:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[str] = []

    def add(self, key: str, reason: str) -> None:
        """One problem: where (the file, the key) in any language, and why (a :class:`Text`, said
        in the reader's language)."""
        where = str(self.path)
        self.items.append(Text("{path}: {key}: {reason}", path=where, key=key, reason=reason) if key
                          else Text("{path}: {reason}", path=where, reason=reason))

    def unknown(self, table: dict[str, Any], known: set[str], prefix: str) -> None:
        for key in table:
            if key not in known:
                self.add(prefix + key, Text("unknown key (known: {known})", known=", ".join(sorted(known))))


def parse_file(path: Path) -> tuple[Campaign | None, list[str]]:
    problems = _Problems(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        problems.add("", Text("cannot read: {reason}", reason=exc.strerror))
        return None, problems.items
    except UnicodeDecodeError as exc:
        problems.add("", Text("not UTF-8 text ({reason} at byte {start})", reason=exc.reason, start=exc.start))
        return None, problems.items
    return parse_text(text, path)


def parse_text(text: str, path: Path) -> tuple[Campaign | None, list[str]]:
    """A campaign from its TOML text; ``path`` names it in problems (its file, or where it came from)."""
    problems = _Problems(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        problems.add("", Text("not valid TOML: {exc}", exc=exc))
        return None, problems.items
    campaign = parse(raw, path, problems)
    return (campaign if not problems.items else None), problems.items


def parse(raw: dict[str, Any], path: Path, problems: _Problems) -> Campaign | None:
    problems.unknown(raw, TOP_KEYS, "")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not NAME.match(name):
        problems.add("name", Text("must be lowercase letters, digits, '-', '_' or '.', got {name!r}", name=name))
    channels = _channels(raw, problems)
    segment = _segment(raw.get("segment"), problems)
    holdout = raw.get("holdout", 0.0)
    if not _number(holdout) or not 0 <= holdout < 1:
        problems.add("holdout", Text("must be a fraction in [0, 1), got {holdout!r}", holdout=holdout))
        holdout = 0.0
    suppress = raw.get("suppress_events", [])
    if not isinstance(suppress, list) or not all(isinstance(s, str) and s for s in suppress):
        problems.add("suppress_events", Text("must be a list of event types, e.g. [\"installed\"]"))
        suppress = []
    validity = raw.get("validity_hours", VALIDITY_HOURS)
    if not _number(validity) or validity <= 0:
        problems.add("validity_hours", Text("must be a positive number, got {validity!r}", validity=validity))
    trigger = raw.get("trigger", "manual")
    if trigger not in TRIGGERS:
        problems.add("trigger", Text("must be one of {known}, got {trigger!r}", known=', '.join(TRIGGERS), trigger=trigger))
    advertising = raw.get("advertising", False)
    if not isinstance(advertising, bool):
        problems.add("advertising", Text("must be true or false"))
    link = raw.get("link", "")
    if not isinstance(link, str) or (link and not link.startswith(("https://", "http://"))):
        problems.add("link", Text("must be the http(s) URL that {{{{ link }}}} redirects to, got {link!r}", link=link))
    cap = raw.get("frequency_cap")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 0):
        problems.add("frequency_cap", Text("must be a whole number of messages per 24 h (0 = no cap), got {cap!r}", cap=cap))
    opt_out = raw.get("opt_out", "")
    if not isinstance(opt_out, str):
        problems.add("opt_out", Text("must be text, e.g. \"Tu choi QC soan TC gui 1234\""))
    elif advertising is True and not opt_out.strip():
        problems.add("opt_out", "an advertising campaign must end its messages with opt-out instructions "
                     "(Decree 91/2020), e.g. opt_out = \"Tu choi QC soan TC gui 1234\"")
    budget = raw.get("budget")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0):
        problems.add("budget", Text("must be a whole number of VND, more than 0, e.g. budget = 5_000_000, got {budget!r}", budget=budget))
    description = raw.get("description", "")
    if not isinstance(description, str):
        problems.add("description", Text("must be a string"))
    window = _window(raw.get("window", {}), problems)
    start, end = _dates(raw.get("dates", {}), problems)
    goal = _goal(raw.get("goal"), problems)
    schedule = _schedule(raw.get("schedule"), problems)
    arrival = _arrival(raw.get("arrival"), trigger, problems)
    attribution = _duration(raw, "attribution", problems, where="")
    if trigger == "schedule" and schedule is None:
        problems.add("schedule", Text("trigger = \"schedule\" needs a [schedule] table (cron, at or every)"))
    if schedule is not None and trigger != "schedule":
        problems.add("trigger", Text("a [schedule] table needs trigger = \"schedule\", got {trigger!r}", trigger=trigger))
    if problems.items:
        return None
    return Campaign(
        name=name, path=path, description=description, advertising=advertising,
        channels=channels, segment=segment, holdout=float(holdout), suppress_events=tuple(suppress),
        validity_hours=float(validity), trigger=trigger, window=window, start=start, end=end,
        goal=goal, schedule=schedule, arrival=arrival, raw=raw, frequency_cap=cap, opt_out=opt_out.strip(),
        attribution=ATTRIBUTION if attribution is None else attribution, budget=budget,
    )


def _channels(raw: dict[str, Any], problems: _Problems) -> tuple[ChannelSpec, ...]:
    names = raw.get("channels")
    if not isinstance(names, list) or not names:
        problems.add("channels", Text("must be a non-empty list, e.g. [\"zalo\", \"sms\"]"))
        return ()
    specs = []
    for i, name in enumerate(names):
        if name not in CHANNELS:
            problems.add(f"channels[{i}]", Text("unknown channel {name!r} (known: {known})", name=name, known=', '.join(CHANNELS)))
            continue
        if names.count(name) > 1 and names.index(name) != i:
            problems.add(f"channels[{i}]", Text("channel {name!r} is listed twice", name=name))
            continue
        table = raw.get(name)
        if not isinstance(table, dict):
            problems.add(name, Text("missing [{name}] table with at least template = \"{name}/....\"", name=name))
            continue
        problems.unknown(table, CHANNEL_KEYS[name], f"{name}.")
        template = table.get("template")
        if not isinstance(template, str) or not template:
            problems.add(f"{name}.template", Text("missing template path (relative to the templates folder)"))
            continue
        gateway = table.get("gateway")
        if gateway is not None and not isinstance(gateway, str):
            problems.add(f"{name}.gateway", Text("must be the name of a gateway in the configuration"))
        max_parts = table.get("max_parts", 6)
        if not isinstance(max_parts, int) or isinstance(max_parts, bool) or not 1 <= max_parts <= 10:
            problems.add(f"{name}.max_parts", Text("must be a whole number from 1 to 10, got {max_parts!r}", max_parts=max_parts))
            max_parts = 6
        unaccented = table.get("unaccented", False)
        if not isinstance(unaccented, bool):
            problems.add(f"{name}.unaccented", Text("must be true or false"))
        fallback = table.get("fallback_after")
        if fallback is not None and not (isinstance(fallback, str) and DURATION.match(fallback)):
            problems.add(f"{name}.fallback_after", Text("must be a duration like \"30m\", got {fallback!r}", fallback=fallback))
            fallback = None
        specs.append(ChannelSpec(name, template, gateway, bool(unaccented), max_parts,
                                 parse_duration(fallback) if fallback else None))
    for name in CHANNELS:
        if name in raw and name not in names:
            problems.add(name, Text("[{name}] is configured but {name!r} is not in channels", name=name))
    return tuple(specs)


def _segment(seg: Any, problems: _Problems) -> dict[str, Any]:
    if seg is None:
        return {}
    if not isinstance(seg, dict):
        problems.add("segment", Text("must be a table"))
        return {}
    problems.unknown(seg, SEGMENT_KEYS, "segment.")
    areas = seg.get("areas", [])
    if not isinstance(areas, list) or not all(isinstance(a, str) and a.strip() for a in areas):
        problems.add("segment.areas", Text("must be a list of area codes or names"))
    for key in ("rules", "events"):
        if not isinstance(seg.get(key, []), list):
            problems.add(f"segment.{key}", Text("must be an array of tables: write [[segment.{key}]], not [segment.{key}]", key=key))
    for i, rule in enumerate(seg.get("rules", []) if isinstance(seg.get("rules", []), list) else []):
        where = f"segment.rules[{i}]"
        if not isinstance(rule, dict):
            problems.add(where, Text("must be a table"))
            continue
        from loa.segments import field_problem  # segments owns the field list

        ops = [k for k in rule if k in RULE_OPS]
        problems.unknown(rule, RULE_OPS | {"field"}, where + ".")
        if "field" not in rule:
            problems.add(where, Text("missing field (e.g. field = \"attributes.smartphone\")"))
        elif reason := field_problem(rule["field"]):
            problems.add(where + ".field", reason)
        if len(ops) != 1:
            problems.add(where, Text("needs exactly one operator of {known}", known=', '.join(sorted(RULE_OPS))))
            continue
        op, value = ops[0], rule[ops[0]]
        if op in ("in", "not_in") and (not isinstance(value, list) or not value):
            problems.add(f"{where}.{op}", Text("must be a non-empty list"))
        elif op == "between" and (not isinstance(value, list) or len(value) != 2):
            problems.add(f"{where}.{op}", Text("must be a list of two bounds, e.g. [18, 60]"))
        elif op in ("eq", "ne") and isinstance(value, list | dict):
            problems.add(f"{where}.{op}", Text("must be a single value (for a list use {value1})", value1='in' if op == 'eq' else 'not_in'))
        elif op == "exists" and not isinstance(value, bool):
            problems.add(f"{where}.{op}", Text("must be true or false"))
        elif op in ("gt", "gte", "lt", "lte") and not isinstance(value, int | float | date):
            problems.add(f"{where}.{op}", Text("must be a number or a date, got {value!r}", value=value))
    for i, ev in enumerate(seg.get("events", []) if isinstance(seg.get("events", []), list) else []):
        where = f"segment.events[{i}]"
        if not isinstance(ev, dict):
            problems.add(where, Text("must be a table"))
            continue
        problems.unknown(ev, EVENT_KEYS, where + ".")
        if not isinstance(ev.get("type"), str):
            problems.add(where + ".type", Text("missing event type (e.g. type = \"installed\")"))
        if not isinstance(ev.get("has", True), bool):
            problems.add(where + ".has", Text("must be true or false"))
        since = ev.get("since")
        if since is not None and not isinstance(since, date | datetime) and not (
            isinstance(since, str) and DURATION.match(since)
        ):
            problems.add(where + ".since", Text("must be a date, a time or a duration like \"30d\", got {since!r}", since=since))
    return seg


def _number(value: Any) -> bool:
    """An int or float; TOML's true/false are bools, which Python counts as ints."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _window(table: Any, problems: _Problems) -> tuple[time, time]:
    if not isinstance(table, dict):
        problems.add("window", Text("must be a table with start and end, e.g. start = \"07:00\""))
        return time(7), time(22)
    problems.unknown(table, WINDOW_KEYS, "window.")
    bounds = []
    for key, default in (("start", "07:00"), ("end", "22:00")):
        value = table.get(key, default)
        try:
            # "24:00" ends the window at midnight: an all-day window is 00:00-24:00
            bounds.append(value if isinstance(value, time) else time.max if str(value) == "24:00"
                          else time.fromisoformat(str(value)))
        except ValueError:
            problems.add(f"window.{key}", Text("not a time of day (HH:MM), got {value!r}", value=value))
            bounds.append(time(7) if key == "start" else time(22))
    if bounds[0] >= bounds[1]:
        problems.add("window", Text("start must be before end"))
    return bounds[0], bounds[1]


def _dates(table: Any, problems: _Problems) -> tuple[date | None, date | None]:
    if not isinstance(table, dict):
        problems.add("dates", Text("must be a table with start and end dates"))
        return None, None
    problems.unknown(table, DATES_KEYS, "dates.")
    out: list[date | None] = []
    for key in ("start", "end"):
        value = table.get(key)
        if value is not None and not isinstance(value, date):
            problems.add(f"dates.{key}", Text("must be a date like 2020-08-20, got {value!r}", value=value))
            value = None
        out.append(value)
    if out[0] and out[1] and out[0] > out[1]:
        problems.add("dates", Text("start is after end"))
    return out[0], out[1]


def _goal(table: Any, problems: _Problems) -> Goal | None:
    if table is None:
        return None
    if not isinstance(table, dict):
        problems.add("goal", Text("must be a table"))
        return None
    problems.unknown(table, GOAL_KEYS, "goal.")
    share = table.get("share", 0.5)
    if not _number(share) or not 0 < share <= 1:
        problems.add("goal.share", Text("must be a fraction in (0, 1], got {share!r}", share=share))
        share = 0.5
    of = table.get("of", "population")
    if of not in ("population", "audience"):
        problems.add("goal.of", Text("must be \"population\" or \"audience\", got {of!r}", of=of))
    by = table.get("by")
    if by is not None and not isinstance(by, date):
        problems.add("goal.by", Text("must be a date, got {by!r}", by=by))
    return Goal(str(table.get("event", "installed")), float(share), str(of), by)


def _schedule(table: Any, problems: _Problems) -> Schedule | None:
    if table is None:
        return None
    if not isinstance(table, dict):
        problems.add("schedule", Text("must be a table with cron, at or every"))
        return None
    problems.unknown(table, SCHEDULE_KEYS, "schedule.")
    given = [k for k in ("cron", "at", "every") if k in table]
    if len(given) != 1:
        problems.add("schedule", "needs exactly one of cron = \"0 8 * * *\", at = 2020-08-18T08:00:00 "
                     "or every = \"6h\"")
        return None
    cron = table.get("cron")
    if cron is not None:
        if not isinstance(cron, str) or len(cron.split()) != 5:
            problems.add("schedule.cron", Text("must have five fields (minute hour day month weekday), got {cron!r}", cron=cron))
            return None
        from loa.cron import cron_trigger

        try:
            cron_trigger(cron, UTC)
        except ValueError as exc:
            problems.add("schedule.cron", f"{exc}")
            return None
    at = table.get("at")
    if at is not None and not isinstance(at, datetime):
        problems.add("schedule.at", Text("must be a date and time like 2020-08-18T08:00:00, got {at!r}", at=at))
        return None
    every = _duration(table, "every", problems)
    grace = _duration(table, "grace", problems)
    stop = table.get("stop_at_goal", False)
    if not isinstance(stop, bool):
        problems.add("schedule.stop_at_goal", Text("must be true or false"))
    return Schedule(cron, at, every, 3600.0 if grace is None else grace, bool(stop))


def _duration(table: dict[str, Any], key: str, problems: _Problems, where: str = "schedule",
              zero_ok: bool = False) -> float | None:
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, str) and DURATION.match(value) and (zero_ok or parse_duration(value) > 0):
        return parse_duration(value)
    problems.add(f"{where}.{key}" if where else key, Text("must be a duration like \"30m\", \"6h\" or \"1d\", got {value!r}", value=value))
    return None


def _arrival(table: Any, trigger: Any, problems: _Problems) -> ArrivalRule | None:
    if table is None:
        return ArrivalRule() if trigger == "arrival" else None
    if not isinstance(table, dict):
        problems.add("arrival", Text("must be a table with delay and regreet_after"))
        return None
    if trigger != "arrival":
        problems.add("arrival", Text("an [arrival] table needs trigger = \"arrival\", got {trigger!r}", trigger=trigger))
    problems.unknown(table, ARRIVAL_KEYS, "arrival.")
    delay = _duration(table, "delay", problems, "arrival", zero_ok=True)
    regreet = _duration(table, "regreet_after", problems, "arrival")
    if regreet is not None and regreet < 86400:
        # greetings go into one run per local day, one row per (run, subscriber)
        problems.add("arrival.regreet_after", f"must be at least \"1d\" (one greeting per visit and day), "
                     f"got {table.get('regreet_after')!r}")
    default = ArrivalRule()
    return ArrivalRule(default.delay if delay is None else delay,
                       default.regreet_after if regreet is None else regreet)


def files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise NotFound(f"campaigns folder {folder} does not exist")
    return sorted(folder.glob("*.toml"))


def load_all(folder: Path) -> tuple[dict[str, Campaign], list[str]]:
    """Every campaign in ``folder`` and every problem found; names must be unique."""
    found: dict[str, Campaign] = {}
    problems: list[str] = []
    for path in files(folder):
        campaign, errs = parse_file(path)
        problems += errs
        if campaign is None:
            continue
        if campaign.name in found:
            problems.append(f"{path}: name: {campaign.name!r} is also defined in {found[campaign.name].path}")
            continue
        found[campaign.name] = campaign
    return found, problems


def load_one(folder: Path, name: str) -> Campaign:
    """The campaign called ``name`` (or in file NAME.toml); raise if absent or invalid."""
    candidates = [p for p in files(folder)]
    for path in candidates:
        campaign, errs = parse_file(path)
        if campaign is not None and campaign.name == name:
            return campaign
        if errs and (path.stem == name or _declared_name(path) == name):
            raise CampaignError(errs)
    known = ", ".join(sorted(p.stem for p in candidates)) or "none"
    raise NotFound(f"no campaign named {name!r} in {folder} (files: {known})")


def _declared_name(path: Path) -> str | None:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8-sig")).get("name")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None


def parse_duration(text: str) -> float:
    """"30d" / "12h" / "45m" / "90s" -> seconds."""
    m = DURATION.match(text)
    if not m:
        raise ValueError(text)
    return int(m.group(1)) * {"d": 86400, "h": 3600, "m": 60, "s": 1}[m.group(2)]
