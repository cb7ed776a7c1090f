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
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_STOPPED, BaseScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine

from loa import db, versions
from loa.campaign import Campaign, load_all
from loa.config import Config
from loa.cron import cron_trigger
from loa.lifecycle import planning_refusal
from loa.plan import PlanResult, ensure_campaign, plan_run
from loa.policy import apply_window_edits
from loa.state import DatabaseStateStore

log = logging.getLogger("loa.scheduler")

# A reload asked for with `loa campaigns reload`, from any machine: the active scheduler
# polls this value and rebuilds its jobs when it changes.
RELOAD_STATE = ("_scheduler", "reload")
RELOAD_POLL_SECONDS = 5
RETENTION_HOUR = 3          # local time: the daily purge of personal data past its retention
# At most this many missed fire times are recorded per campaign when a scheduler starts
# after a long stop (an interval campaign down for a month would otherwise add thousands).
MISSED_RECORD_LIMIT = 500
# `every = "6h"` without a start date counts from local midnight of this day: 00:00, 06:00, ...
INTERVAL_EPOCH = date(2000, 1, 1)


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
        return cron_trigger(spec.cron, tz, start_date=start, end_date=end)
    if spec.every:
        # Anchored, so that every trigger built for the campaign (the job's, a firing's, a
        # catch-up's) counts the same times: unanchored, APScheduler counts from "now".
        anchor = start or datetime.combine(INTERVAL_EPOCH, time(0), tz)
        return IntervalTrigger(seconds=spec.every, start_date=anchor, end_date=end, timezone=tz)
    at = spec.at if spec.at and spec.at.tzinfo else (spec.at.replace(tzinfo=tz) if spec.at else None)
    return DateTrigger(run_date=at, timezone=tz)


def fire_times(trigger: BaseTrigger, after: datetime, before: datetime | None = None,
               limit: int | None = None) -> list[datetime]:
    """The trigger's fire times in the open interval (``after``, ``before``), oldest first."""
    times: list[datetime] = []
    fire = trigger.get_next_fire_time(None, after + timedelta(microseconds=1))
    while fire is not None and (before is None or fire < before) and (limit is None or len(times) < limit):
        if fire > after:   # a DateTrigger answers its one date whatever "now" it is given
            times.append(fire)
        fire = trigger.get_next_fire_time(fire, fire + timedelta(microseconds=1))
    return times


def request_reload(engine: Engine) -> str:
    """Ask the active scheduler, wherever it runs, to re-read the campaign files."""
    stamp = db.utcnow().isoformat()
    DatabaseStateStore(engine, RELOAD_STATE[0]).set(RELOAD_STATE[1], stamp)
    return stamp


def _reload_requested(engine: Engine) -> str | None:
    return DatabaseStateStore(engine, RELOAD_STATE[0]).get(RELOAD_STATE[1])


def scheduled_time(trigger: BaseTrigger, now: datetime, grace: float) -> datetime | None:
    """The fire time a job running at ``now`` stands for: the latest one within ``grace``.

    APScheduler 3 does not pass the scheduled time to the job, and the run's
    identity must be the scheduled time, not the moment the job happened to run.
    """
    times = fire_times(trigger, now - timedelta(seconds=grace, microseconds=1), now + timedelta(microseconds=1))
    return times[-1].astimezone(UTC) if times else None


class _Scheduler(BackgroundScheduler):
    """APScheduler's background scheduler, safe to shut down while it fires a job.

    ``shutdown`` marks the scheduler stopped before it takes the job stores' lock, so a
    one-shot job (an ``at`` schedule) that the scheduler's thread is firing at that moment is
    then looked for among the pending jobs of a stopped scheduler, not found, and the thread
    dies with ``JobLookupError``.  A stopped scheduler has no job to remove: that is not an error.
    """

    def remove_job(self, job_id: str, jobstore: str | None = None) -> None:
        try:
            super().remove_job(job_id, jobstore)
        except JobLookupError:
            if self.state != STATE_STOPPED:
                raise


class CampaignScheduler:
    """Builds and refreshes one job per scheduled campaign."""

    def __init__(self, engine: Engine, config: Config, scheduler: BaseScheduler | None = None) -> None:
        self.engine = engine
        self.config = config
        self.scheduler = scheduler or _Scheduler(timezone=config.timezone)
        self.campaigns: dict[str, Campaign] = {}
        self.problems: list[str] = []
        self._reload_seen: str | None = None
        self.scheduler.add_listener(self._missed, EVENT_JOB_MISSED)

    def reload(self) -> list[str]:
        """Re-read the campaigns (their stored versions, loa.versions) and make the jobs match
        them; return job ids."""
        found, self.problems = versions.catalog(self.engine, self.config)
        for problem in self.problems:
            log.error("campaign not scheduled: %s", problem)
        for line in apply_window_edits(self.engine, found):
            log.warning("%s", line)
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
        self._digest_job()
        self._retention_job()
        return sorted(wanted)

    def _digest_job(self) -> None:
        """The daily digest ([digest]) as job ``digest``: here, only the elected scheduler writes it."""
        from loa import digest

        if self.scheduler.get_job("digest") is not None:   # as for campaigns: re-adding does not dedupe
            self.scheduler.remove_job("digest")
        if self.config.digest is None:
            return
        self.scheduler.add_job(
            digest.write_digest, digest.trigger(self.config),
            args=[self.engine, self.config], id="digest", name="daily digest", replace_existing=True,
            # a leader elected at 07:20, or a pause across 07:00, still writes the morning's files
            misfire_grace_time=3600, coalesce=True, max_instances=1,
        )

    def _retention_job(self) -> None:
        """The daily purge of personal data past its retention ([retention], loa.retention), as
        job ``retention``: only the elected scheduler runs it."""
        from loa import retention

        if self.scheduler.get_job("retention") is None:
            self.scheduler.add_job(
                retention.daily, CronTrigger(hour=RETENTION_HOUR, minute=17, timezone=self.config.timezone),
                args=[self.engine, self.config], id="retention", name="daily retention purge",
                replace_existing=True, misfire_grace_time=12 * 3600, coalesce=True, max_instances=1,
            )

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
        return self._plan(campaign, when)

    def _plan(self, campaign: Campaign, when: datetime) -> PlanResult | None:
        assert campaign.schedule is not None
        if campaign.schedule.stop_at_goal and self.goal_met(campaign):
            log.warning("campaign %s met its goal: no run for %s, and no more runs", campaign.name, when)
            job = self.scheduler.get_job(f"campaign:{campaign.name}")
            if job is not None:
                job.remove()
            return None
        with self.engine.connect() as conn:
            campaign_id = conn.scalar(select(db.campaigns.c.id).where(db.campaigns.c.name == campaign.name))
            fresh = versions.stored(conn, campaign.name) if campaign.version is not None else None
            if fresh is not None and fresh.version != campaign.version:   # applied since the last reload
                campaign = versions.campaign_of(self.config, fresh)
            halted = planning_refusal(conn, campaign_id, campaign.version) if campaign_id is not None else None
        if halted:   # not active (loa.lifecycle): its schedule stays, and plans nothing
            log.warning("%s (the run of %s)", halted, when.astimezone(self.config.timezone).isoformat())
            return None
        result = plan_run(self.engine, self.config, campaign, scheduled_for=when, trigger="schedule")
        log.info("campaign %s: run %s for %s (%s rows added)", campaign.name, result.run_id, when, result.added)
        return result

    # -- runs missed while no scheduler ran ------------------------------------------
    def catch_up(self, now: datetime | None = None) -> dict[str, list[datetime]]:
        """Account for every fire time that passed since a campaign's last scheduled run.

        The latest one still within the campaign's grace is planned now (once: runs are
        unique per scheduled time); the others are recorded as ``missed`` runs with the
        reason, so a report shows the gap instead of silently skipping it.  A campaign
        that has never run has no past: only a firing within its grace is caught up.
        Returns the missed times per campaign.
        """
        now = now or db.utcnow()
        missed: dict[str, list[datetime]] = {}
        for name, campaign in self.campaigns.items():
            try:
                times = self._catch_up_one(campaign, now)
            except Exception:   # one campaign's failure must not stop the others being caught up
                log.exception("campaign %s: catching up missed runs failed", name)
                continue
            if times:
                missed[name] = times
        return missed

    def _catch_up_one(self, campaign: Campaign, now: datetime) -> list[datetime]:
        assert campaign.schedule is not None
        grace = timedelta(seconds=campaign.schedule.grace)
        with self.engine.connect() as conn:
            last = _last_scheduled(conn, campaign.name)
        # fire times at or after `now` are the running scheduler's; strictly before are ours
        times = fire_times(trigger_for(campaign, self.config.timezone), last or now - grace, now)
        due = times[-1] if times and now - times[-1] <= grace else None
        gone = times[:-1] if due else times
        if gone:
            self._record_missed(campaign, gone[-MISSED_RECORD_LIMIT:], now)
            if len(gone) > MISSED_RECORD_LIMIT:
                log.warning("campaign %s: %d older missed runs not recorded", campaign.name,
                            len(gone) - MISSED_RECORD_LIMIT)
        if due is not None:
            log.warning("campaign %s: the run of %s was missed while no scheduler ran; planning it now",
                        campaign.name, due.astimezone(self.config.timezone).isoformat())
            self._plan(campaign, due.astimezone(UTC))
        return gone

    def _record_missed(self, campaign: Campaign, times: list[datetime], now: datetime,
                       reason: str | None = None) -> None:
        assert campaign.schedule is not None
        tz = self.config.timezone
        reason = reason or (f"no scheduler was running; one started at {now.astimezone(tz):%Y-%m-%d %H:%M %Z}, "
                            f"past the {campaign.schedule.grace:g} s grace")
        r = db.runs
        with self.engine.begin() as conn:
            campaign_id = ensure_campaign(conn, campaign)
            stmt = db.insert_for(conn, r).values([
                {"campaign_id": campaign_id, "scheduled_for": t.astimezone(UTC), "trigger": "schedule",
                 "status": "missed", "definition": campaign.snapshot(), "created_at": now, "note": reason}
                for t in times
            ])
            # only the times not already on record: a second start must not report them again
            recorded = conn.execute(stmt.on_conflict_do_nothing(index_elements=["campaign_id", "scheduled_for"])
                                    .returning(r.c.scheduled_for)).scalars().all()
        for t in sorted(recorded):
            log.warning("campaign %s: run of %s missed: %s", campaign.name, t.astimezone(tz).isoformat(), reason)

    def _missed(self, event: JobExecutionEvent) -> None:
        """APScheduler skipped a firing past its grace (the process stalled or was paused)."""
        campaign = self.campaigns.get(event.job_id.removeprefix("campaign:"))
        if campaign is None or not event.job_id.startswith("campaign:"):
            return
        try:
            self._record_missed(campaign, [event.scheduled_run_time], db.utcnow(),
                                reason="the scheduler was stalled or paused past the grace")
        except Exception:
            log.exception("campaign %s: recording a missed run failed", campaign.name)

    # -- reloads asked for from the command line -----------------------------------------
    def _watch_reloads(self) -> None:
        try:
            stamp = _reload_requested(self.engine)
        except Exception:   # a database hiccup: the next poll tries again
            log.exception("reload watch: reading the request failed")
            return
        if stamp != self._reload_seen:
            self._reload_seen = stamp
            jobs = self.reload()
            self.catch_up()
            log.warning("campaigns reloaded on request of %s: %s", stamp, ", ".join(jobs) or "no scheduled campaigns")

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
        self._reload_seen = _reload_requested(self.engine)   # a request older than this start is served by it
        self.reload()
        self.catch_up()
        self.scheduler.add_job(self._watch_reloads, "interval", seconds=RELOAD_POLL_SECONDS, id="loa:reload-watch",
                               name="watch for `loa campaigns reload`", replace_existing=True, coalesce=True,
                               max_instances=1, misfire_grace_time=RELOAD_POLL_SECONDS)
        self.scheduler.start()

    def shutdown(self, wait: bool = True) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=wait)


def _last_scheduled(conn: Connection, name: str) -> datetime | None:
    """The latest scheduled time this campaign has a run for (planned or missed)."""
    r, c = db.runs, db.campaigns
    return conn.scalar(select(func.max(r.c.scheduled_for)).select_from(r.join(c, c.c.id == r.c.campaign_id))
                       .where(c.c.name == name, r.c.trigger == "schedule"))


def next_runs(config: Config, count: int = 3, now: datetime | None = None,
              engine: Engine | None = None) -> dict[str, list[datetime]]:
    """The next fire times of every scheduled campaign, for `loa campaigns schedule` and checks:
    their stored versions (loa.versions) with an ``engine``, else their files."""
    found, _ = versions.catalog(engine, config) if engine is not None else load_all(config.campaigns_dir)
    now = now or db.utcnow()
    return {name: fire_times(trigger_for(campaign, config.timezone), now - timedelta(microseconds=1), limit=count)
            for name, campaign in found.items() if campaign.trigger == "schedule" and campaign.schedule is not None}


__all__ = ["CampaignScheduler", "fire_times", "next_runs", "request_reload", "scheduled_time", "trigger_for"]
