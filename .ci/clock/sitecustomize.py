"""Started by every Python process that ``.ci/vietnam-time`` runs (it puts this folder on
PYTHONPATH): moves the process's clock by ``LOA_CLOCK_SHIFT`` seconds, ticking.

Every process of the tree computes the same moment (the real clock plus the shift), so a
test and the ``loa worker`` or ``loa serve`` it starts agree on the time, as they do on the
real clock.  time-machine moves what Python reads: ``datetime.now()``, ``time.time()``,
``time.localtime()``, and APScheduler and logging through them.  Monotonic clocks, sleeps
and timed waits stay real, and so does the database server's clock, as on a server of
its own.
"""

import os

_shift = os.environ.get("LOA_CLOCK_SHIFT")


def _wall_minus_monotonic() -> float:
    """The wall clock minus the monotonic one, from the read least likely to be preempted.

    The monotonic clock is one for every process of the machine, so a wall clock pinned to
    it at the same distance in each process reads the same everywhere."""
    import time

    best: tuple[float, float] | None = None
    for _ in range(20):
        before = time.monotonic()
        wall = time.time()
        after = time.monotonic()
        if best is None or after - before < best[0]:
            best = (after - before, wall - (before + after) / 2)
    assert best is not None
    return best[1]


if _shift:
    import time

    import time_machine

    _real = _wall_minus_monotonic()
    _traveller = time_machine.travel(time.time() + float(_shift), tick=True).start()
    time.time()   # time-machine starts ticking at the first read, not at start()
    # the time it took to get here, or a preemption, must not make this process's clock differ
    _traveller.shift(_real + float(_shift) - _wall_minus_monotonic())
