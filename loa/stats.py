"""Uplift statistics: how much more the targeted responded than the held out.

Pure functions on counts; nothing here reads the database.

The interval for a difference of two independent proportions is Newcombe's
hybrid score interval ("method 10" in R. G. Newcombe, *Interval estimation for
the difference between independent proportions: comparison of eleven methods*,
Statistics in Medicine 17 (1998) 873-890).  Each group's proportion gets its
Wilson score interval (E. B. Wilson, *Probable inference, the law of
succession, and statistical inference*, JASA 22 (1927) 209-212), and the two
are combined "square-and-add":

    d = p1 - p2
    low  = d - sqrt((p1 - l1)^2 + (u2 - p2)^2)
    high = d + sqrt((u1 - p1)^2 + (p2 - l2)^2)

where (l1, u1) and (l2, u2) are the Wilson intervals of p1 and p2.  Unlike the
textbook Wald interval (d +/- z * standard error), it never leaves [-1, 1],
is not degenerate when a group has 0 or all responders, and keeps close to its
nominal coverage with the small response rates and small held-out groups a
campaign has (Newcombe 1998, tables III-IV).

When is a cell "too small to say anything"?  :func:`small_reason` applies the
classic rule of thumb for normal approximations to a binomial, in both groups:

* fewer than ``MIN_PEOPLE`` (30) people, or
* fewer than ``MIN_EVENTS`` (5) responders, or fewer than 5 non-responders.

The interval is still computed (the score method behaves there, the Wald one
does not), but with so few events it is wide and its edges move a lot with one
person more or less, so reports grey such rows out and say why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

MIN_PEOPLE = 30
MIN_EVENTS = 5
CONFIDENCE = 0.95


def z_value(confidence: float = CONFIDENCE) -> float:
    """The two-sided standard normal quantile: 1.959964 for 95%."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _check(x: int, n: int) -> None:
    if n < 0 or x < 0 or x > n:
        raise ValueError(f"need 0 <= responders <= people, got {x} of {n}")


def wilson(x: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson's score interval for the proportion x/n (no continuity correction).

    With z the normal quantile, p = x/n:

        centre = (p + z^2/2n) / (1 + z^2/n)
        half   = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2)
    """
    _check(x, n)
    if n == 0:
        raise ValueError("no people: the proportion is undefined")
    z = z_value(confidence)
    p = x / n
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # exact at the edges: 0/n has lower bound 0, n/n has upper bound 1
    low = 0.0 if x == 0 else max(0.0, centre - half)
    high = 1.0 if x == n else min(1.0, centre + half)
    return low, high


def newcombe(x1: int, n1: int, x2: int, n2: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Newcombe's hybrid score interval for p1 - p2 (p1 = x1/n1, p2 = x2/n2)."""
    p1, p2 = x1 / n1 if n1 else math.nan, x2 / n2 if n2 else math.nan
    l1, u1 = wilson(x1, n1, confidence)
    l2, u2 = wilson(x2, n2, confidence)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return max(-1.0, low), min(1.0, high)


def small_reason(x1: int, n1: int, x2: int, n2: int,
                 min_people: int = MIN_PEOPLE, min_events: int = MIN_EVENTS) -> str | None:
    """Why the comparison of x1/n1 with x2/n2 is too small to read, or None if it is not.

    Group 1 is "targeted", group 2 "held out" in the wording.
    """
    for label, x, n in (("targeted", x1, n1), ("held out", x2, n2)):
        _check(x, n)
        if n < min_people:
            return f"{n} {label} (fewer than {min_people})"
        if x < min_events:
            return f"{x} responders among the {label} (fewer than {min_events})"
        if n - x < min_events:
            return f"{n - x} non-responders among the {label} (fewer than {min_events})"
    return None


@dataclass(frozen=True)
class Uplift:
    """Treated (targeted) against held out: proportions, their difference and its interval.

    ``difference``, ``low`` and ``high`` are proportions (0.1 = ten points);
    the ``*_points`` properties give them in percentage points.
    """

    treated: int
    treated_n: int
    held: int
    held_n: int
    difference: float
    low: float
    high: float
    confidence: float
    small: bool
    reason: str | None

    @property
    def points(self) -> float:
        return 100 * self.difference

    @property
    def low_points(self) -> float:
        return 100 * self.low

    @property
    def high_points(self) -> float:
        return 100 * self.high

    @property
    def significant(self) -> bool:
        """The interval excludes zero (either way)."""
        return self.low > 0 or self.high < 0


def uplift(treated: int, treated_n: int, held: int, held_n: int, confidence: float = CONFIDENCE,
           min_people: int = MIN_PEOPLE, min_events: int = MIN_EVENTS) -> Uplift | None:
    """The uplift of ``treated/treated_n`` over ``held/held_n``; None if either group is empty."""
    _check(treated, treated_n)
    _check(held, held_n)
    if treated_n == 0 or held_n == 0:
        return None
    low, high = newcombe(treated, treated_n, held, held_n, confidence)
    reason = small_reason(treated, treated_n, held, held_n, min_people, min_events)
    return Uplift(treated, treated_n, held, held_n, treated / treated_n - held / held_n, low, high,
                  confidence, reason is not None, reason)


__all__ = ["CONFIDENCE", "MIN_EVENTS", "MIN_PEOPLE", "Uplift", "newcombe", "small_reason", "uplift",
           "wilson", "z_value"]
