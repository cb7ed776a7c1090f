"""Rate limits per gateway, weighted by SMS parts.

GCRA (the generic cell rate algorithm) keeps one number per gateway, the
theoretical arrival time (TAT), so the limit is smooth: at most ``burst``
parts go out back to back, and then one part every ``1/rate`` seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol


class RateLimiter(Protocol):
    def acquire(self, cost: float = 1.0) -> float:
        """Block until ``cost`` parts may be sent; return the seconds waited."""

    def slow_down(self, seconds: float) -> None:
        """Gateway pushback: send nothing more for ``seconds``."""


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
            now = self._clock()
            tat = max(self._tat, now)
            # The parts leave together, so the message waits until its last part conforms:
            # never more than `burst` parts back to back.  A message longer than the burst
            # waits for an empty bucket instead (it cannot conform, but rides with nothing).
            ahead = max(min(cost, self.burst), 1.0) - 1.0
            start = tat + ahead * self.interval - self.tolerance
            wait = max(0.0, start - now)
            self._tat = tat + cost * self.interval
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
