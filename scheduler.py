"""APScheduler wiring: campaign schedules become runs.

Campaign files are the source of truth.  Each scheduled campaign becomes one
job with a stable id (``campaign:NAME``); a job only plans a run, and a run is
unique per (campaign, scheduled time), so a restart, a reload or a second
firing never plans the same run twice.  Sending stays with ``loa send`` or the
dispatcher.

APScheduler 3.11 is used deliberately: 4.0 is not production-ready, and 3.x
supports exactly one scheduler per job store, which is what loa runs.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.engine import Engine

from loa import db
from loa.campaign import Campaign, load_all
from loa.config import Config
from loa.plan import PlanResult, plan_run

log = logging.getLogger("loa.scheduler")


def trigger_for(campaign: Campaign, tz: ZoneInfo) -> BaseTrigger:
    """The APScheduler trigger of a scheduled campaign, bounded by its dates.

    ``timezone=`` is always passed: a trigger built without it uses the host's
    zone, which is UTC in most containers.
    """
    spec = campaign.schedule
    if spec is None:
        raise ValueError(f"campaign {campaign.name} has no schedule")
    start = datetime.combine(campaign.start, time(0), tz) if campaign.start else None
    end = datetime.combine(campaign.end, time(23, 59, 59), tz) if campaign.end else None
    if spec.cron:
        return CronTrigger(**_cron_fields(spec.cron), start_date=start, end_date=end, timezone=tz)
    if spec.every:
        return IntervalTrigger(seconds=spec.every, start_date=start, end_date=end, timezone=tz)
    at = spec.at if spec.at and spec.at.tzinfo else (spec.at.replace(tzinfo=tz) if spec.at else None)
    return DateTrigger(run_date=at, timezone=tz)


def _cron_fields(expr: str) -> dict[str, str]:
    minute, hour, day, month, day_of_week = expr.split()
    return {"minute": minute, "hour": hour, "day": day, "month": month, "day_of_week": day_of_week}


def scheduled_time(trigger: BaseTrigger, now: datetime, grace: float) -> datetime | None:
    """The fire time a job running at ``now`` stands for: the latest one within ``grace``.

    APScheduler 3 does not pass the scheduled time to the job, and the run's
    identity must be the scheduled time, not the moment the job happened to run.
    """
    earliest = now - timedelta(seconds=grace)
    fire = trigger.get_next_fire_time(None, earliest)
    latest = None
    while fire is not None and fire <= now:
        latest = fire
        fire = trigger.get_next_fire_time(fire, fire + timedelta(microseconds=1))
    return latest.astimezone(UTC) if latest else None


class CampaignScheduler:
    """Builds and refreshes one job per scheduled campaign."""

    def __init__(self, engine: Engine, config: Config, scheduler: BaseScheduler | None = None) -> None:
        self.engine = engine
        self.config = config
        self.scheduler = scheduler or BackgroundScheduler(timezone=config.timezone)
        self.campaigns: dict[str, Campaign] = {}
        self.problems: list[str] = []

    def reload(self) -> list[str]:
        """Re-read the campaign files and make the jobs match them; return job ids."""
        found, self.problems = load_all(self.config.campaigns_dir)
        for problem in self.problems:
            log.error("campaign not scheduled: %s", problem)
        self.campaigns = {n: c for n, c in found.items() if c.trigger == "schedule" and c.schedule}
        wanted = {f"campaign:{name}" for name in self.campaigns}
        for job in self.scheduler.get_jobs():
            if job.id.startswith("campaign:") and job.id not in wanted:
                job.remove()
        for name, campaign in self.campaigns.items():
            assert campaign.schedule is not None
            # replace_existing does not dedupe jobs added before the scheduler starts
            if self.scheduler.get_job(f"campaign:{name}") is not None:
                self.scheduler.remove_job(f"campaign:{name}")
            self.scheduler.add_job(
                self.fire, trigger_for(campaign, self.config.timezone), args=[name],
                id=f"campaign:{name}", name=f"plan {name}", replace_existing=True,
                # campaigns are minutes-grained: the default 1 s grace would drop a run after a pause
                misfire_grace_time=int(campaign.schedule.grace), coalesce=True, max_instances=1,
            )
        return sorted(wanted)

    def fire(self, name: str, now: datetime | None = None) -> PlanResult | None:
        """Plan the run this firing stands for (idempotent per scheduled time)."""
        campaign = self.campaigns.get(name)
        if campaign is None or campaign.schedule is None:
            return None
        now = now or db.utcnow()
        trigger = trigger_for(campaign, self.config.timezone)
        when = scheduled_time(trigger, now, campaign.schedule.grace)
        if when is None:
            log.warning("campaign %s fired at %s outside its schedule's grace; nothing planned", name, now)
            return None
        if campaign.schedule.stop_at_goal and self.goal_met(campaign):
            log.info("campaign %s met its goal; no run for %s", name, when)
            return None
        result = plan_run(self.engine, self.config, campaign, scheduled_for=when, trigger="schedule")
        log.info("campaign %s: run %s for %s (%s rows added)", name, result.run_id, when, result.added)
        return result

    def goal_met(self, campaign: Campaign) -> bool:
        from loa import report

        if campaign.goal is None:
            return False
        try:
            result = report.build(self.engine, campaign.name, campaign.goal)
        except Exception:  # no run yet: the goal cannot have been met through this campaign
            return False
        progress = result.progress(result.total)
        return progress is not None and progress >= 1.0

    def start(self) -> None:
        self.reload()
        self.scheduler.start()

    def shutdown(self, wait: bool = True) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=wait)


def next_runs(config: Config, count: int = 3, now: datetime | None = None) -> dict[str, list[datetime]]:
    """The next fire times of every scheduled campaign, for `loa campaigns list` and checks."""
    found, _ = load_all(config.campaigns_dir)
    now = now or db.utcnow()
    out: dict[str, list[datetime]] = {}
    for name, campaign in found.items():
        if campaign.trigger != "schedule" or campaign.schedule is None:
            continue
        trigger = trigger_for(campaign, config.timezone)
        times: list[datetime] = []
        fire = trigger.get_next_fire_time(None, now)
        while fire is not None and len(times) < count:
            times.append(fire)
            fire = trigger.get_next_fire_time(fire, fire + timedelta(microseconds=1))
        out[name] = times
    return out


__all__ = ["CampaignScheduler", "next_runs", "scheduled_time", "trigger_for"]
