"""One active scheduler: on PostgreSQL, a session-level advisory lock held on a
dedicated connection elects it; the others stand by and take over within
seconds when the leader dies (its session ends, so its lock goes).

On SQLite every process is on one machine and one file; the lock is a row in
``gateway_state`` refreshed as a heartbeat, and a stale heartbeat is taken over.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from loa import db

log = logging.getLogger("loa.leader")
LOCK_ID = 0x10A5C4ED   # arbitrary, fixed: "loa scheduler"


class Leadership:
    def __init__(self, engine: Engine, on_elected: Callable[[], None], on_lost: Callable[[], None],
                 interval: float = 2.0, stale_after: float = 10.0) -> None:
        self.engine = engine
        self.on_elected = on_elected
        self.on_lost = on_lost
        self.interval = interval
        self.stale_after = stale_after
        # unique per candidate, like a dispatcher's worker id: two in one process must not
        # take each other's heartbeat for their own
        self.me = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.leader = False
        self._conn: Connection | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loa-leader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval * 3)
        self._resign()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                held = self._hold()
            except Exception as exc:  # noqa: BLE001 - a lost database must not kill the thread
                log.warning("leader election: %s", exc)
                held = False
                self._drop_connection()
            try:
                if held and not self.leader:
                    self.leader = True
                    log.warning("%s is now the scheduler leader", self.me)
                    self.on_elected()
                elif not held and self.leader:
                    self.leader = False
                    log.warning("%s lost scheduler leadership", self.me)
                    self.on_lost()
            except Exception:  # noqa: BLE001 - a dead thread would hold the lock with no scheduler running
                log.exception("%s: scheduler %s failed; standing down", self.me,
                              "start" if self.leader else "pause")
                try:
                    self._resign()   # another process, or this one next time, tries again
                except Exception:  # noqa: BLE001
                    self._drop_connection()
                    self.leader = False
            self._stop.wait(self.interval)

    def _hold(self) -> bool:
        if self.engine.dialect.name == "postgresql":
            return self._hold_pg()
        return self._hold_heartbeat()

    def _hold_pg(self) -> bool:
        if self._conn is None:
            # a dedicated connection, never returned to a pool: a pooled one would keep the lock
            self._conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        if self.leader:
            self._conn.execute(text("SELECT 1"))   # the session, hence the lock, is still alive
            return True
        return bool(self._conn.execute(text("SELECT pg_try_advisory_lock(:id)"), {"id": LOCK_ID}).scalar())

    def _hold_heartbeat(self) -> bool:
        now = time.time()
        t = db.gateway_state
        with self.engine.begin() as conn:
            row = conn.execute(text("SELECT value FROM gateway_state WHERE gateway = '_loa' AND key = 'leader'")).scalar()
            holder, _, beat = (row or "").partition("@")
            if row and holder != self.me and now - float(beat or 0) < self.stale_after:
                return False
            stmt = db.insert_for(conn, t).values(gateway="_loa", key="leader", value=f"{self.me}@{now}",
                                                 updated_at=db.utcnow())
            conn.execute(stmt.on_conflict_do_update(index_elements=["gateway", "key"],
                                                    set_={"value": stmt.excluded.value,
                                                          "updated_at": stmt.excluded.updated_at}))
        return True

    def _resign(self) -> None:
        if self.engine.dialect.name != "postgresql" and self.leader:
            with self.engine.begin() as conn:
                conn.execute(text("DELETE FROM gateway_state WHERE gateway = '_loa' AND key = 'leader' "
                                  "AND value LIKE :me"), {"me": f"{self.me}@%"})
        self._drop_connection()
        self.leader = False

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                # invalidate: close the session itself, and with it its advisory lock; a plain
                # close() would return it to the pool still holding the lock
                self._conn.invalidate()
                self._conn.close()
            except Exception:  # noqa: BLE001
                pass
            self._conn = None
