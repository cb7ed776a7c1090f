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

    #: A sender that wakes up later than this after its slot (scheduling, a busy machine)
    #: books again instead of sending: sent late, it would crowd the slots booked after
    #: it and the gateway would see a burst over the limit.  At most REBOOKS times.
    REBOOKS = 3

    def __init__(self, engine: Any, gateway: str, rate: float, burst: int = 1,
                 *, sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.engine = engine
        self.gateway = gateway
        self.interval = 1.0 / rate
        self.burst = max(int(burst), 1)
        self.late = (self.burst - 1) * self.interval + self.interval / 2
        self._sleep = sleep
        self._offset: float | None = None    # the database's clock minus time.monotonic()
        self._offset_lock = threading.Lock()
        self._ensure_row()

    def _ensure_row(self) -> None:
        from loa import db

        with self.engine.begin() as conn:
            conn.execute(db.insert_for(conn, db.gateways).values(
                name=self.gateway, tat=0.0, slowed_until=0.0, updated_at=db.utcnow()).on_conflict_do_nothing())

    def reserve(self, cost: float = 1.0) -> float:
        """Book ``cost`` parts; return how long the caller must wait, counted from the return."""
        return max(0.0, self._book(cost) - time.monotonic())

    def _book(self, cost: float) -> float:
        """Book ``cost`` parts; the moment on this process's monotonic clock they may leave.

        One statement, ``UPDATE ... RETURNING``, holds the row only while it runs: its
        clock is read once the row is locked (read before a wait for the lock, it would
        be stale and slots would be booked in the past, then sent late and in bunches),
        and no round trip to the client happens under the lock, so a dozen workers'
        threads booking at once queue for microseconds, not for each other's commits.

        The slot, on the database's clock, is moved onto ours with the best estimate of
        the offset between the two (:meth:`_observe`), so neither the commit nor a thread
        slow to get the answer moves it later: waits do not accumulate error.
        """
        from sqlalchemy import update

        from loa import db

        g = db.gateways
        tolerance = (self.burst - 1) * self.interval
        with self.engine.begin() as conn:
            dialect = conn.dialect.name
            if dialect == "postgresql":
                # The row lock is held until the commit ends: waiting there for the WAL flush
                # would serialise every booking behind an fsync (~150/s at most).  A booking
                # lost in a database crash costs at most one early send, not a lost message.
                conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            greatest = func_greatest(dialect)
            epoch = db_epoch(dialect)
            before = time.monotonic()
            new_tat, now = conn.execute(
                update(g).where(g.c.name == self.gateway)
                .values(tat=greatest(g.c.tat, g.c.slowed_until + tolerance, epoch) + cost * self.interval)
                .returning(g.c.tat, epoch)
            ).one()
            after = time.monotonic()
        now = float(now)
        _, wait = gcra_step(float(new_tat) - cost * self.interval, now, cost, self.interval, self.burst)
        return now + wait - self._observe(now, before, after)

    def _observe(self, db_now: float, before: float, after: float) -> float:
        """Refine and return the offset of the database's clock from ours.

        The database read its clock between ``before`` and ``after``, so the offset lies in
        [db_now - after, db_now - before].  The lower bound is tight when the answer came
        back at once; keep the highest lower bound seen, and start again from this one if
        it no longer fits under an upper bound (the database's clock was set back).  The
        2 ms of slack is SQLite's clock, which counts whole milliseconds.
        """
        low, high = db_now - after, db_now - before
        with self._offset_lock:
            if self._offset is None or self._offset > high + 0.002:
                self._offset = low
            else:
                self._offset = max(self._offset, low)
            return self._offset

    def acquire(self, cost: float = 1.0) -> float:
        """Book, then sleep until the slot (a moment, not a duration: precise whatever the
        booking cost).  A sender woken too late books again rather than crowd the next slots."""
        waited = 0.0
        for attempt in range(self.REBOOKS + 1):
            deadline = self._book(cost)
            wait = deadline - time.monotonic()
            if wait > 0:
                self._sleep(wait)
                waited += wait
            if time.monotonic() - deadline <= self.late or attempt == self.REBOOKS:
                break
        return waited

    def slow_down(self, seconds: float) -> None:
        from sqlalchemy import func, select, update

        from loa import db

        g = db.gateways
        with self.engine.begin() as conn:
            now = conn.scalar(select(db_epoch(conn.dialect.name)))
            conn.execute(update(g).where(g.c.name == self.gateway)
                         .values(slowed_until=func.max(g.c.slowed_until, now + seconds)
                                 if conn.dialect.name == "sqlite" else func.greatest(g.c.slowed_until, now + seconds)))


def func_greatest(dialect: str) -> Any:
    """GREATEST(a, b, ...) on PostgreSQL, the many-argument max(a, b, ...) on SQLite."""
    from sqlalchemy import func

    return func.greatest if dialect == "postgresql" else func.max


def db_epoch(dialect: str) -> Any:
    """The database server's clock, in seconds since the epoch."""
    from sqlalchemy import Float, cast, func, literal_column

    if dialect == "postgresql":
        return cast(func.extract("epoch", func.clock_timestamp()), Float)
    # julianday('now') has millisecond resolution; 2440587.5 is the Julian day of 1970-01-01
    return (func.julianday(literal_column("'now'")) - 2440587.5) * 86400.0
