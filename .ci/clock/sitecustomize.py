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
if _shift:
    import time

    import time_machine

    time_machine.travel(time.time() + float(_shift), tick=True).start()
