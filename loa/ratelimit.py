"""Rate limits per gateway, weighted by SMS parts.

GCRA (the generic cell rate algorithm) keeps one number per gateway, the
theoretical arrival time (TAT), so the limit is smooth: at most ``burst``
parts go out back to back, and then one part every ``1/rate`` seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol


class RateLimiter(Protocol):
    def acquire(self, cost: float = 1.0) -> float:
        """Block until ``cost`` parts may be sent; return the seconds waited."""

    def slow_down(self, seconds: float) -> None:
        """Gateway pushback: send nothing more for ``seconds``."""


def gcra_step(tat: float, now: float, cost: float, interval: float, burst: int) -> tuple[float, float]:
    """One GCRA booking: (the new theoretical arrival time, seconds to wait before sending).

    The parts of a message leave together, so it waits until its last part
    conforms: never more than ``burst`` parts back to back.  A message longer
    than the burst waits for an empty bucket instead (it cannot conform, but
    then rides with nothing else).
    """
    tat = max(tat, now)
    ahead = max(min(cost, burst), 1.0) - 1.0
    start = tat + ahead * interval - (burst - 1) * interval
    return tat + cost * interval, max(0.0, start - now)


class MemoryGCRA:
    """A GCRA limiter shared by the threads of one process."""

    def __init__(self, rate: float, burst: int = 1, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.interval = 1.0 / rate
        self.burst = max(int(burst), 1)
        self.tolerance = (self.burst - 1) * self.interval
        self._tat = 0.0
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep

    def reserve(self, cost: float = 1.0) -> float:
        """Book ``cost`` parts; return how long the caller must wait before sending."""
        with self._lock:
            self._tat, wait = gcra_step(self._tat, self._clock(), cost, self.interval, self.burst)
            return wait

    def acquire(self, cost: float = 1.0) -> float:
        wait = self.reserve(cost)
        if wait > 0:
            self._sleep(wait)
        return wait

    def slow_down(self, seconds: float) -> None:
        with self._lock:
            # TAT minus the tolerance is when the next part may leave: push that past `seconds`.
            self._tat = max(self._tat, self._clock() + seconds + self.tolerance)


class DatabaseGCRA:
    """A GCRA limiter shared by every worker on every machine: the gateway's TAT
    lives in the ``gateways`` table and is updated atomically, on the database's
    clock, so hosts whose clocks disagree still share one smooth rate."""

    def __init__(self, engine: Any, gateway: str, rate: float, burst: int = 1,
                 *, sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.engine = engine
        self.gateway = gateway
        self.interval = 1.0 / rate
        self.burst = max(int(burst), 1)
        self._sleep = sleep
        self._ensure_row()

    def _ensure_row(self) -> None:
        from loa import db

        with self.engine.begin() as conn:
            conn.execute(db.insert_for(conn, db.gateways).values(
                name=self.gateway, tat=0.0, slowed_until=0.0, updated_at=db.utcnow()).on_conflict_do_nothing())

    def reserve(self, cost: float = 1.0) -> float:
        from sqlalchemy import select, update

        from loa import db

        g = db.gateways
        with self.engine.begin() as conn:
            now = float(conn.scalar(select(db_epoch(conn.dialect.name))))
            query = select(g.c.tat, g.c.slowed_until).where(g.c.name == self.gateway)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()      # SQLite's BEGIN IMMEDIATE already serialises
            tat, slowed = conn.execute(query).one()
            new_tat, wait = gcra_step(max(tat, slowed + (self.burst - 1) * self.interval), now, cost,
                                      self.interval, self.burst)
            conn.execute(update(g).where(g.c.name == self.gateway).values(tat=new_tat))
        return wait

    def acquire(self, cost: float = 1.0) -> float:
        wait = self.reserve(cost)
        if wait > 0:
            self._sleep(wait)
        return wait

    def slow_down(self, seconds: float) -> None:
        from sqlalchemy import func, select, update

        from loa import db

        g = db.gateways
        with self.engine.begin() as conn:
            now = conn.scalar(select(db_epoch(conn.dialect.name)))
            conn.execute(update(g).where(g.c.name == self.gateway)
                         .values(slowed_until=func.max(g.c.slowed_until, now + seconds)
                                 if conn.dialect.name == "sqlite" else func.greatest(g.c.slowed_until, now + seconds)))


def db_epoch(dialect: str) -> Any:
    """The database server's clock, in seconds since the epoch."""
    from sqlalchemy import Float, cast, func, literal_column

    if dialect == "postgresql":
        return cast(func.extract("epoch", func.clock_timestamp()), Float)
    # julianday('now') has millisecond resolution; 2440587.5 is the Julian day of 1970-01-01
    return (func.julianday(literal_column("'now'")) - 2440587.5) * 86400.0
