"""The GCRA rate limiter, on a fake clock: exact release times, and a property
over arbitrary traffic that no one-second window carries more than the limit."""

from __future__ import annotations

import threading

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from loa.ratelimit import MemoryGCRA, PacedMemoryGCRA


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.slept.append(seconds)
        self.now += seconds


def limiter(rate: float, burst: int = 1) -> tuple[MemoryGCRA, FakeClock]:
    clock = FakeClock()
    return MemoryGCRA(rate, burst, clock=clock, sleep=clock.sleep), clock


def send_all(lim: MemoryGCRA, clock: FakeClock, costs: list[float]) -> list[float]:
    """One sender thread: acquire each message in turn; return when each left."""
    released = []
    for cost in costs:
        lim.acquire(cost)
        released.append(clock.now)
    return released


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 9) for a, b in zip(times, times[1:], strict=False)]


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError):
        MemoryGCRA(0)
    with pytest.raises(ValueError):
        MemoryGCRA(-5)


def test_steady_state_spacing_is_cost_over_rate() -> None:
    lim, clock = limiter(rate=20)
    released = send_all(lim, clock, [1] * 10)
    assert released[0] == 0.0
    assert gaps(released) == [0.05] * 9
    assert clock.slept == pytest.approx([0.05] * 9)


def test_an_idle_limiter_does_not_make_anyone_wait() -> None:
    lim, clock = limiter(rate=10, burst=1)
    assert lim.acquire() == 0.0
    clock.now += 5.0                       # idle for a long time
    assert lim.acquire() == 0.0
    assert lim.acquire() == pytest.approx(0.1)
    # idle time is not saved up beyond the burst
    clock.now += 60.0
    assert [lim.acquire() for _ in range(3)] == pytest.approx([0.0, 0.1, 0.1])


def test_burst_goes_back_to_back_then_spacing() -> None:
    lim, clock = limiter(rate=10, burst=5)
    released = send_all(lim, clock, [1] * 9)
    assert released[:5] == [0.0] * 5
    assert gaps(released[4:]) == [0.1] * 4
    # after a pause the burst is available again, but not more than it
    clock.now += 10.0
    start = clock.now
    again = send_all(lim, clock, [1] * 7)
    assert [round(t - start, 9) for t in again] == [0.0] * 5 + [0.1, 0.2]


def test_a_message_is_weighted_by_its_parts() -> None:
    lim, clock = limiter(rate=10, burst=1)
    released = send_all(lim, clock, [3, 1, 1, 2, 1])
    # after a 3-part message the next waits 3 intervals; after a 2-part one, 2
    assert gaps(released) == [0.3, 0.1, 0.1, 0.2]


def test_parts_within_the_burst_never_exceed_it_back_to_back() -> None:
    lim, clock = limiter(rate=1, burst=3)
    released = send_all(lim, clock, [2, 3])
    # 2 parts leave at once; the 3-part message must wait until 3 parts of room are back
    assert released[0] == 0.0
    assert released[1] == pytest.approx(2.0)


def test_reserve_books_without_sleeping() -> None:
    lim, clock = limiter(rate=4, burst=1)
    waits = [lim.reserve(1) for _ in range(4)]
    assert waits == pytest.approx([0.0, 0.25, 0.5, 0.75])
    assert clock.slept == [] and clock.now == 0.0


def test_slow_down_delays_the_next_send() -> None:
    lim, clock = limiter(rate=10, burst=1)
    lim.acquire()
    lim.slow_down(2.0)
    assert lim.acquire() == pytest.approx(2.0)
    assert lim.acquire() == pytest.approx(0.1)


def test_slow_down_is_honoured_with_a_burst_too() -> None:
    lim, clock = limiter(rate=10, burst=5)
    lim.slow_down(1.0)
    assert lim.acquire() == pytest.approx(1.0)
    # a pushback shorter than what is already booked changes nothing
    lim2, clock2 = limiter(rate=1, burst=1)
    lim2.acquire(5)
    lim2.slow_down(1.0)
    assert lim2.acquire() == pytest.approx(5.0)


def test_threads_share_one_limit() -> None:
    lim = MemoryGCRA(1000, 1, clock=lambda: 0.0, sleep=lambda s: None)   # frozen clock: only booking
    waits: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(50):
            w = lim.reserve(1)
            with lock:
                waits.append(w)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 400 bookings at the same instant: every slot taken exactly once
    assert sorted(round(w * 1000) for w in waits) == list(range(400))


# -- the property ------------------------------------------------------------------

def max_in_window(releases: list[tuple[float, float]], width: float = 1.0) -> float:
    """The most parts released in any window [t, t + width)."""
    eps = 1e-7
    return max(sum(c for s2, c in releases if s <= s2 < s + width - eps) for s, _ in releases)


@st.composite
def traffic(draw: st.DrawFn, *, costs_within_burst: bool) -> tuple[float, int, list[tuple[float, int]]]:
    rate = draw(st.sampled_from([1, 2, 3, 5, 8, 10, 25, 50]))
    burst = draw(st.integers(1, 8))
    max_cost = burst if costs_within_burst else 6
    arrivals = draw(st.lists(
        st.tuples(st.floats(0, 2, allow_nan=False), st.integers(1, max_cost)), min_size=1, max_size=60,
    ))
    return rate, burst, arrivals


def replay(rate: float, burst: int, arrivals: list[tuple[float, int]]) -> list[tuple[float, float]]:
    """Many senders: each message is booked when it arrives and leaves after its wait."""
    clock = FakeClock()
    lim = MemoryGCRA(rate, burst, clock=clock, sleep=clock.sleep)
    releases = []
    for gap, cost in arrivals:
        clock.now += gap
        releases.append((clock.now + lim.reserve(cost), cost))
    return releases


@settings(max_examples=300, deadline=None)
@given(traffic(costs_within_burst=True))
def test_no_window_of_one_second_exceeds_rate_plus_burst(case: tuple[float, int, list[tuple[float, int]]]) -> None:
    rate, burst, arrivals = case
    releases = replay(rate, burst, arrivals)
    assert max_in_window(releases) <= rate * 1 + burst


@settings(max_examples=300, deadline=None)
@given(traffic(costs_within_burst=True))
def test_one_sender_never_exceeds_rate_plus_burst(case: tuple[float, int, list[tuple[float, int]]]) -> None:
    rate, burst, arrivals = case
    clock = FakeClock()
    lim = MemoryGCRA(rate, burst, clock=clock, sleep=clock.sleep)
    releases = []
    for gap, cost in arrivals:
        clock.now += gap
        lim.acquire(cost)
        releases.append((clock.now, cost))
    assert max_in_window(releases) <= rate * 1 + burst


@settings(max_examples=300, deadline=None)
@given(traffic(costs_within_burst=False))
def test_messages_longer_than_the_burst_exceed_it_only_by_themselves(
        case: tuple[float, int, list[tuple[float, int]]]) -> None:
    # A message's parts leave together, so one longer than the burst is itself over
    # the burst; the limiter must not let anything else ride along with it.
    rate, burst, arrivals = case
    releases = replay(rate, burst, arrivals)
    assert max_in_window(releases) <= rate * 1 + max(burst, max(c for _, c in arrivals))


@settings(max_examples=200, deadline=None)
@given(traffic(costs_within_burst=False))
def test_long_run_throughput_is_the_rate(case: tuple[float, int, list[tuple[float, int]]]) -> None:
    rate, burst, arrivals = case
    releases = replay(rate, burst, arrivals)
    first, last = min(s for s, _ in releases), max(s for s, _ in releases)
    total = sum(c for _, c in releases)
    # everything but the last message fits in [first, last] at the rate, plus one burst
    last_cost = max(c for s, c in releases if s == last)
    assert total - last_cost <= rate * (last - first) + max(burst, max(c for _, c in arrivals)) + 1e-6


# -- paced and booked, as a dispatcher uses it --------------------------------------

@st.composite
def late_senders(draw: st.DrawFn) -> tuple[float, int, list[int], list[float]]:
    rate = draw(st.sampled_from([1, 2, 5, 10, 50, 100, 500]))
    burst = draw(st.integers(1, 4))
    # up to three seconds of traffic at the highest rate: a second must be full to be over
    costs = draw(st.lists(st.integers(1, burst), min_size=1, max_size=10)) * draw(st.integers(1, 150))
    # how late each wake-up is: scheduling, a busy machine, a collector's pause
    delays = draw(st.lists(st.floats(0, 0.3, allow_nan=False), min_size=1, max_size=40))
    return rate, burst, costs, delays


def booked_replay(lim: MemoryGCRA, clock: FakeClock, costs: list[int],
                  delays: list[float]) -> tuple[list[tuple[float, float]], int]:
    """A window booked at once; each sender wakes ``delay`` after its slot and sends if the
    limiter says it is on time, or else books a slot again (as the dispatcher does).  The
    moments the messages left, and the slots missed."""
    import heapq
    import itertools

    late = itertools.cycle([*delays, 0.0])     # a sender is on time sooner or later
    events = [(slot + next(late), slot, cost, i) for i, (slot, cost) in enumerate(zip(lim.book(costs), costs,
                                                                                      strict=True))]
    heapq.heapify(events)
    releases, missed = [], 0
    while events:
        wake, slot, cost, i = heapq.heappop(events)
        clock.now = max(clock.now, wake)
        if lim.on_time(slot):
            releases.append((clock.now, float(cost)))
        else:
            missed += 1
            again = lim.book([cost])[0]
            heapq.heappush(events, (again + next(late), again, cost, i))
    return releases, missed


@settings(max_examples=300, deadline=None)
@given(late_senders())
# the worst case: a quarter of the senders just under the lateness allowed, the others on time
@example((500, 1, [1] * 1500, [0.0099] * 10 + [0.0] * 30))
def test_senders_that_wake_late_never_put_a_second_over_the_limit(case: tuple[float, int, list[int],
                                                                             list[float]]) -> None:
    rate, burst, costs, delays = case
    clock = FakeClock()
    lim = PacedMemoryGCRA(rate, burst, clock=clock, sleep=clock.sleep)
    releases, _ = booked_replay(lim, clock, costs, delays)
    assert sorted(i for i, _ in enumerate(releases)) == list(range(len(costs)))   # every message left
    assert max_in_window(releases) <= rate * 1 + burst


def test_a_late_sender_books_again_and_a_pushback_voids_the_slots_booked_before_it() -> None:
    clock = FakeClock()
    lim = PacedMemoryGCRA(100, 1, clock=clock, sleep=clock.sleep)
    slots = lim.book([1, 1, 1])
    assert slots == pytest.approx([0.0, 0.0102, 0.0204])       # 2% under the configured rate
    assert lim.wait_until(slots[1]) and clock.now == pytest.approx(0.0102)
    clock.now = slots[2] + lim.late + 0.001                     # woke up too late for its slot
    assert not lim.on_time(slots[2])
    again = lim.book([1])[0]
    assert again == pytest.approx(clock.now) and lim.on_time(again)
    ahead = lim.book([1, 1])
    lim.slow_down(1.0)
    assert not any(lim.wait_until(s) for s in ahead)           # booked before the pushback: booked again
    assert lim.book([1])[0] >= clock.now + 1.0 - 0.05


def test_without_the_lateness_check_late_senders_do_put_a_second_over_the_limit() -> None:
    """The check is what keeps the seconds within the limit: a second's worth of senders held
    up 0.3 s (a collector's pause) and sent anyway bunch up with the next second's."""
    delays = [0.3] * 100 + [0.0] * 200
    clock = FakeClock()
    lim = PacedMemoryGCRA(100, 1, clock=clock, sleep=clock.sleep)
    releases, missed = booked_replay(lim, clock, [1] * 300, delays)
    assert missed >= 100 and max_in_window(releases) <= 100 + 1   # held up: booked again
    clock = FakeClock()
    lim = PacedMemoryGCRA(100, 1, clock=clock, sleep=clock.sleep)
    lim.late = float("inf")
    releases, missed = booked_replay(lim, clock, [1] * 300, delays)
    assert missed == 0 and max_in_window(releases) > 100 + 1
