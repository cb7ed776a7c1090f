"""Rate limits per gateway, weighted by SMS parts.

GCRA (the generic cell rate algorithm) keeps one number per gateway, the
theoretical arrival time (TAT), so the limit is smooth: at most ``burst``
parts go out back to back, and then one part every ``1/rate`` seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
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

    def now(self) -> float:
        """This limiter's clock, on which :meth:`sleep_until` takes its moments."""
        return self._clock()

    def sleep_until(self, moment: float) -> None:
        """Sleep until ``moment`` of :meth:`now` (a sender marks its message just ahead of it)."""
        wait = moment - self._clock()
        if wait > 0:
            self._sleep(wait)

    def slow_down(self, seconds: float) -> None:
        with self._lock:
            # TAT minus the tolerance is when the next part may leave: push that past `seconds`.
            self._tat = max(self._tat, self._clock() + seconds + self.tolerance)


class PacedMemoryGCRA(MemoryGCRA):
    """The in-process limiter as a dispatcher uses it: paced and booked as :class:`DatabaseGCRA`
    is, for one process.

    Slots are :data:`DatabaseGCRA.MARGIN` under the configured rate and booked a window at a
    time (:meth:`book`); a sender that wakes up more than :data:`DatabaseGCRA.LATE` after its
    slot books again instead of sending (:meth:`wait_until`).  Without that, a sender held up
    by a busy machine sends late while the next one sends on time, and the gateway counts
    more than the rate in a sliding second; with it, every second stays within the limit
    however late the senders wake (the reasoning is :data:`DatabaseGCRA.LATE`'s).
    """

    def __init__(self, rate: float, burst: int = 1, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(rate / (1.0 + DatabaseGCRA.MARGIN), burst, clock=clock, sleep=sleep)
        self.late = DatabaseGCRA.LATE
        self._slowed = float("-inf")    # the last pushback's end: slots booked before it wait too

    def book(self, costs: Sequence[float]) -> list[float]:
        """Consecutive slots for messages of ``costs`` parts: the moment, on :meth:`now`, at
        which each may leave."""
        with self._lock:
            now = self._clock()
            deadlines = []
            for cost in costs:
                self._tat, wait = gcra_step(self._tat, now, cost, self.interval, self.burst)
                deadlines.append(now + wait)
            return deadlines

    def take_now(self, cost: float = 1.0) -> bool:
        """Book ``cost`` parts for this very moment if they conform now, that is when nothing
        booked ahead stands in the way (a limit the senders cannot fill); False, booking
        nothing, otherwise.  A sender too late for its slot goes at once this way rather than
        waiting for a slot after everything booked."""
        with self._lock:
            tat, wait = gcra_step(self._tat, self._clock(), cost, self.interval, self.burst)
            if wait > 0:
                return False
            self._tat = tat
            return True

    def wait_until(self, deadline: float) -> bool:
        """Sleep until a slot from :meth:`book`; False if it was missed (see DatabaseGCRA)."""
        self.sleep_until(deadline)
        return self.on_time(deadline)

    def on_time(self, deadline: float) -> bool:
        """Whether a message booked for ``deadline`` may still leave now."""
        return self._clock() - deadline <= self.late and deadline >= self._slowed

    def slow_down(self, seconds: float) -> None:
        with self._lock:
            self._slowed = max(self._slowed, self._clock() + seconds)
        super().slow_down(seconds)


class DatabaseGCRA:
    """A GCRA limiter shared by every worker on every machine: the gateway's TAT
    lives in the ``gateways`` table and is updated atomically, on the database's
    clock, so hosts whose clocks disagree still share one smooth rate."""

    #: Slots are paced this much under the configured rate.  Between a worker's clock saying
    #: "now" and the gateway counting the request lie the HTTP client, the network and the
    #: gateway's own intake, whose delays vary by a few to a few tens of milliseconds (more
    #: across hosts); at 100/s one interval is 10 ms, so a gateway counting exact slots in
    #: sliding seconds would see 102 or 103 whenever one request is held up and the next is
    #: not.  2% under, it takes a 30 ms hold-up to show one message over the rate.
    MARGIN = 0.02

    #: How late after its slot a message may still be handed to the gateway: half of MARGIN,
    #: in seconds.  Slots are ``(1 + MARGIN) / rate`` apart, so the slots of the sends handed
    #: over in any 1-second window lie within ``1 + LATE`` seconds and number at most
    #: ``rate`` (plus the burst): every second stays within the limit however late each send
    #: is, up to this.  The other half is for what comes after the handover and before the
    #: gateway counts the request: the HTTP client's own work on an interpreter shared with
    #: dozens of sender threads (``bench/dispatch.py`` (b) saw 507 and 514 in a second at
    #: 500/s with all of MARGIN spent on lateness, and 498 and 500 with half of it).
    #: A sender that wakes up later (scheduling, a busy machine, a collector's pause) books
    #: again instead of sending, as often as it takes: on a slow machine loa sends slower,
    #: never in a bunch.
    LATE = MARGIN / 2

    def __init__(self, engine: Any, gateway: str, rate: float, burst: int = 1,
                 *, sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.engine = engine
        self.gateway = gateway
        self.interval = (1.0 + self.MARGIN) / rate
        self.burst = max(int(burst), 1)
        self.late = self.LATE
        self._sleep = sleep
        self._offset: float | None = None    # the database's clock minus time.monotonic()
        self._offset_lock = threading.Lock()
        self._booking = threading.Lock()
        self._slowed = 0.0                   # this process's last pushback, on time.monotonic()
        self._ensure_row()
        self._calibrate()

    def _ensure_row(self) -> None:
        from loa import db

        with self.engine.begin() as conn:
            conn.execute(db.insert_for(conn, db.gateways).values(
                name=self.gateway, tat=0.0, slowed_until=0.0, updated_at=db.utcnow()).on_conflict_do_nothing())

    def _calibrate(self, reads: int = 5) -> None:
        """A first estimate of the clocks' offset from a few quick reads, so that the first
        bookings are placed as precisely as the later ones."""
        from sqlalchemy import select

        with self.engine.connect() as conn:
            query = select(db_epoch(conn.dialect.name))
            for _ in range(reads):
                before = time.monotonic()
                now = float(conn.scalar(query))
                self._observe(now, before, time.monotonic())

    def reserve(self, cost: float = 1.0) -> float:
        """Book ``cost`` parts; return how long the caller must wait, counted from the return."""
        return max(0.0, self.book([cost])[0] - time.monotonic())

    def book(self, costs: Sequence[float]) -> list[float]:
        """Book consecutive slots for messages of ``costs`` parts in one transaction; the
        moment, on this process's ``time.monotonic()`` clock, at which each may leave.

        A dispatcher books a whole window at once: one round trip instead of one per
        message, and the slots stay booked ahead while it records that window and marks
        the next (a limit shared by workers that each booked one message at a time was
        left unbooked whenever they were all between windows, and those slots were lost).

        One statement, ``UPDATE ... RETURNING``, holds the row only while it runs: its
        clock is read once the row is locked (read before a wait for the lock, it would
        be stale and slots would be booked in the past, then sent late and in bunches),
        and no round trip to the client happens under the lock.  The slots, on the
        database's clock, are moved onto ours with the best estimate of the offset
        between the two (:meth:`_observe`), so neither the commit nor a thread slow to
        get the answer moves them later: waits do not accumulate error.
        """
        from sqlalchemy import update

        from loa import db

        g = db.gateways
        total = float(sum(costs))
        tolerance = (self.burst - 1) * self.interval
        # One booking at a time per process: a dozen threads of each of several workers all
        # waiting on one row lock wake each other up at every commit (PostgreSQL) or poll
        # for it (SQLite), and the CPU that burns delays the very sends being timed.
        with self._booking, self.engine.begin() as conn:
            dialect = conn.dialect.name
            if dialect == "postgresql":
                # The row lock is held until the commit ends: waiting there for the WAL flush
                # would serialise every booking behind an fsync (~150/s at most).  A booking
                # lost in a database crash costs at most one early send, not a lost message.
                conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            epoch = db_epoch(dialect)
            before = time.monotonic()
            new_tat, now = conn.execute(
                update(g).where(g.c.name == self.gateway)
                .values(tat=func_greatest(dialect)(g.c.tat, g.c.slowed_until + tolerance, epoch)
                        + total * self.interval)
                .returning(g.c.tat, epoch)
            ).one()
            after = time.monotonic()
        now = float(now)
        offset = self._observe(now, before, after)
        tat = float(new_tat) - total * self.interval     # the TAT this booking started from
        deadlines = []
        for cost in costs:
            tat, wait = gcra_step(tat, now, cost, self.interval, self.burst)
            deadlines.append(now + wait - offset)
        return deadlines

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

    def wait_until(self, deadline: float) -> bool:
        """Sleep until a slot from :meth:`book` (a moment, not a duration: precise whatever
        the booking cost); False if it was missed: the sender woke up too late (a busy
        machine, a collector's pause), or the slot fell in a pushback.  A missed slot must
        not be used (sent that late, the message would overtake the slots booked after its
        own, and the gateway would see a burst over the limit): book another.

        A slot already past when the sender gets to it is missed too: after a pause of the
        whole process the messages it did not pick up in time would otherwise all leave at
        once.  (Senders merely too few for the rate miss their slots the same way; the
        dispatcher then books for each message as it goes, as :meth:`acquire` does.)
        """
        wait = deadline - time.monotonic()
        if wait > 0:
            self._sleep(wait)
        return self.on_time(deadline)

    def on_time(self, deadline: float) -> bool:
        """Whether a message booked for ``deadline`` may still leave now (see LATE)."""
        return time.monotonic() - deadline <= self.late and deadline >= self._slowed

    def acquire(self, cost: float = 1.0) -> float:
        """Book one message's slot and sleep until it; a sender woken too late books again."""
        start = time.monotonic()
        while not self.wait_until(self.book([cost])[0]):
            pass
        return time.monotonic() - start

    def slow_down(self, seconds: float) -> None:
        from sqlalchemy import func, select, update

        from loa import db

        g = db.gateways
        self._slowed = max(self._slowed, time.monotonic() + seconds)   # slots already booked wait too
        with self.engine.begin() as conn:
            now = conn.scalar(select(db_epoch(conn.dialect.name)))
            conn.execute(update(g).where(g.c.name == self.gateway)
                         .values(slowed_until=func.max(g.c.slowed_until, now + seconds)
                                 if conn.dialect.name == "sqlite" else func.greatest(g.c.slowed_until, now + seconds)))


def func_greatest(dialect: str) -> Any:
    """GREATEST(a, b, ...) on PostgreSQL, the many-argument max(a, b, ...) on SQLite."""
    from sqlalchemy import func

    return func.greatest if dialect == "postgresql" else func.max


def db_epoch(dialect: str, at: Any = None) -> Any:
    """``at`` (a timestamp column), or else the database server's clock, in seconds since the epoch."""
    from sqlalchemy import Float, cast, func, literal_column

    if dialect == "postgresql":
        return cast(func.extract("epoch", func.clock_timestamp() if at is None else at), Float)
    # julianday() has millisecond resolution; 2440587.5 is the Julian day of 1970-01-01
    return (func.julianday(literal_column("'now'") if at is None else at) - 2440587.5) * 86400.0
