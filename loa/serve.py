"""``loa serve``: the web endpoints, the elected scheduler and dispatchers in one process."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine

from loa.config import Config
from loa.dispatch import Dispatcher
from loa.leader import Leadership
from loa.web import Web, WebServer

log = logging.getLogger("loa.serve")


class Service:
    def __init__(self, engine: Engine, config: Config, *, host: str = "127.0.0.1", port: int = 8080,
                 workers: int = 1, scheduler: bool = True, idle: float = 1.0) -> None:
        import scheduler as scheduling

        self.engine = engine
        self.config = config
        self.workers = workers
        self.web = Web(engine, config)
        self.server = WebServer(self.web, host, port)        # bound now: a taken port fails here
        self.host, self.port = self.server.host, self.server.port
        self.dispatchers = [Dispatcher(engine, config) for _ in range(workers)]
        self.idle = idle
        self.scheduler = scheduling.CampaignScheduler(engine, config) if scheduler else None
        self.leadership = Leadership(engine, self._elected, self._lost) if scheduler else None
        self.web.registry.register(SchedulerCollector(self))
        self._threads: list[threading.Thread] = []
        self._web_stop = threading.Event()

    # -- life ----------------------------------------------------------------------
    def start(self) -> None:
        self._threads.append(self.server.start("loa-web"))
        self._spawn(self._arrivals_loop, "loa-arrivals")
        for d in self.dispatchers:
            self._spawn(lambda d=d: d.run_forever(idle=self.idle), f"loa-dispatch-{d.worker}")
        if self.leadership:
            self.leadership.start()

    def stop(self) -> None:
        for d in self.dispatchers:
            d.stop.set()
        if self.leadership:
            self.leadership.stop()
        if self.scheduler:
            self.scheduler.shutdown(wait=False)
        self._web_stop.set()
        self.server.stop(timeout=0)
        for t in self._threads:
            t.join(timeout=30)
        for d in self.dispatchers:
            d.pool.close()
        self.web.pool.close()

    def _arrivals_loop(self) -> None:
        """Greet arrivals every few seconds, and take in feed files dropped in the watched folder."""
        from pathlib import Path

        from loa import importer
        from loa.arrivals import ArrivalsHandler, greet

        every = max(0.1, float(self.config.serve.get("greet_every", 15)))
        folder = self.config.serve.get("arrivals_folder")
        if folder:
            base = self.config.path.parent if self.config.path else Path.cwd()
            folder = base / str(folder)        # a relative folder is beside the configuration
        # A file is taken once its size and modification time held still for a whole tick: one
        # still being written is left for later.  Its time stamp is never compared with this
        # host's clock, which need not agree with the clock of whoever writes the folder.
        seen: dict[Path, tuple[int, int]] = {}
        while not self._web_stop.wait(every):
            try:
                if folder:
                    still: dict[Path, tuple[int, int]] = {}
                    for path in sorted(Path(folder).glob("*.csv")):
                        st = path.stat()
                        still[path] = (st.st_size, st.st_mtime_ns)
                        if seen.get(path) == still[path]:
                            self._take_feed(path, importer, ArrivalsHandler)
                            del still[path]
                    seen = still
                greet(self.engine, self.config)
            except Exception:   # keep the service up; the next tick tries again
                log.exception("arrivals: greeting failed")

    def _take_feed(self, path: Any, importer: Any, handler_cls: Any) -> None:
        """Import one feed file, then move it to done/ (or failed/) so it is read once."""
        if path.name.endswith(".rejects.csv"):
            return
        stamp = time.strftime("%Y%m%dT%H%M%S")
        name = f"{path.stem}.{stamp}{path.suffix}"      # never overwrite an earlier feed of the same name
        rejects = path.parent / f"{path.stem}.{stamp}.rejects.csv"
        try:
            summary = importer.run_import(self.engine, handler_cls(self.engine, path, self.config.timezone), path,
                                          rejects_path=rejects)
            log.warning("arrivals feed %s", summary.line())
            target = path.parent / ("done" if not summary.failure else "failed")
        except Exception as exc:  # noqa: BLE001 - a bad file is set aside, not retried forever
            log.error("arrivals feed %s refused: %s", path.name, exc)
            target = path.parent / "failed"
        target.mkdir(exist_ok=True)
        path.rename(target / name)
        if rejects.exists():
            rejects.rename(target / rejects.name)

    def reload(self) -> None:
        if self.scheduler and self.leadership and self.leadership.leader:
            jobs = self.scheduler.reload()
            log.warning("campaigns reloaded: %s", ", ".join(jobs) or "no scheduled campaigns")

    def _spawn(self, target: Any, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    # -- scheduler leadership -----------------------------------------------------------
    def _elected(self) -> None:
        assert self.scheduler is not None
        sched = self.scheduler.scheduler
        if sched.running:
            self.scheduler.reload()
            self.scheduler.catch_up()       # what the previous leader missed before it died
            sched.resume()
        else:
            self.scheduler.start()

    def _lost(self) -> None:
        if self.scheduler and self.scheduler.scheduler.running:
            self.scheduler.scheduler.pause()



class SchedulerCollector(Collector):
    """The serve process's own figures: whether it leads the scheduler, and when each campaign fires next."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        service = self.service
        leader = bool(service.leadership and service.leadership.leader)
        yield GaugeMetricFamily("loa_scheduler_leader", "1 if this process runs the active scheduler.",
                                value=1 if leader else 0)
        fire = GaugeMetricFamily("loa_next_fire_time_seconds", "Next scheduled run per campaign (Unix time).",
                                 labels=["campaign"])
        # a scheduler that lost the election is only paused, and still "running"
        if service.scheduler and leader and service.scheduler.scheduler.running:
            for job in service.scheduler.scheduler.get_jobs():
                if job.id.startswith("campaign:") and job.next_run_time is not None:   # not the digest, not the watcher
                    fire.add_metric([job.id.removeprefix("campaign:")], round(job.next_run_time.timestamp()))
        yield fire
