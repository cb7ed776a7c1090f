"""Standard five-field cron strings as APScheduler triggers.

APScheduler 3 numbers weekdays from Monday = 0 where cron starts at Sunday = 0
(its issue 286), so a campaign's ``0 8 * * 1-5`` handed over as is would run
Tuesday to Saturday.  Every cron string in loa (campaign schedules, the digest)
goes through here, and weekdays go over as names.
"""

from __future__ import annotations

from datetime import datetime, tzinfo

from apscheduler.triggers.cron import CronTrigger

WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")   # cron's numbering: Sunday is 0 (and 7)


def cron_trigger(expr: str, tz: tzinfo, start_date: datetime | None = None,
                 end_date: datetime | None = None) -> CronTrigger:
    """A standard five-field cron string as an APScheduler trigger in ``tz``.

    APScheduler 3 numbers weekdays from Monday = 0 where cron starts at Sunday = 0
    (its issue 286), so ``1-5`` would run Tuesday to Saturday: weekdays go over as names.
    """
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"needs five fields (minute hour day month weekday), got {len(fields)}")
    minute, hour, day, month, weekday = fields
    if day not in ("*", "?") and weekday not in ("*", "?"):
        # cron fires when either matches ("the 1st, and every Monday"); APScheduler only when
        # both do.  Neither reading is safe to guess for a campaign: say so instead.
        raise ValueError(f"day of month {day!r} and weekday {weekday!r} are both set; cron would run on "
                         "either, so set one of them (or use two campaigns)")
    return CronTrigger(minute=minute, hour=hour, day=day, month=month, day_of_week=_weekday_names(weekday),
                       start_date=start_date, end_date=end_date, timezone=tz)


def _weekday_names(field: str) -> str:
    days: set[int] = set()
    for part in field.lower().split(","):
        span, slash, step = part.partition("/")
        if span in ("*", "?"):
            first, last = 0, 6
        else:
            start, dash, end = span.partition("-")
            first = _weekday(start)
            last = _weekday(end) if dash else 6 if slash else first   # "1/2": from Monday, every other day
        if last < first or (slash and not (step.isdigit() and int(step) > 0)):
            raise ValueError(f"weekday {part!r} is not a weekday, a range or a step")
        days.update(d % 7 for d in range(first, last + 1, int(step) if slash else 1))   # 7 is Sunday again
    return "*" if len(days) == 7 else ",".join(WEEKDAYS[d] for d in sorted(days))


def _weekday(token: str) -> int:
    if token.isdigit() and int(token) <= 7:
        return int(token)
    if token in WEEKDAYS:
        return WEEKDAYS.index(token)
    raise ValueError(f"weekday {token!r} is not 0-7 or sun-sat")


__all__ = ["WEEKDAYS", "cron_trigger"]
