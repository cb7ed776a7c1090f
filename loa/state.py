"""providers.base.StateStore on the database: one value per (gateway, key),
shared by every worker on every machine, with a lock that spans processes.

``locked`` lets one caller at a time read, refresh and write a value (a
single-use refresh token is never spent by two workers), and it is held across
the caller's HTTP call.  How it is held depends on the database:

* PostgreSQL: a row lock (``SELECT ... FOR UPDATE``) in a transaction open for
  the whole block; ``get``/``set`` inside it run in that transaction.  It stops
  only other lockers of that row, and a crashed holder's lock goes with its
  connection.
* SQLite: a lease row claimed in a short transaction, the HTTP call made
  outside any transaction, and the lease cleared afterwards.  SQLite has one
  write lock for the whole database; held across an OAuth call it would stall
  every writer (claims, records, receipts) for up to the HTTP timeout.  A
  holder that dies leaves its lease to expire after ``lease_seconds``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import select, text, update
from sqlalchemy.engine import Connection, Engine

from loa import db
from loa.ratelimit import db_epoch

T = db.gateway_state

# Longer than any gateway call made under the lock (HTTP timeouts are ~10 s): a live
# holder must never lose its lease, or two workers could spend one refresh token.
LEASE_SECONDS = 120.0
# SQLite's own clock, in Unix seconds: one clock for every process on the machine,
# which test clocks (time-machine) in one of them do not move.


class DatabaseStateStore:
    def __init__(self, engine: Engine, gateway: str, *, lease_seconds: float = LEASE_SECONDS) -> None:
        self.engine = engine
        self.gateway = gateway
        self.lease_seconds = lease_seconds
        self._local = threading.local()

    def _conn(self) -> Connection | None:
        return getattr(self._local, "conn", None)

    def get(self, key: str) -> str | None:
        conn = self._conn()
        if conn is not None:
            return self._read(conn, key)
        with self.engine.connect() as fresh:
            return self._read(fresh, key)

    def set(self, key: str, value: str) -> None:
        conn = self._conn()
        if conn is not None:
            self._write(conn, key, value)
            return
        with self.engine.begin() as fresh:
            self._write(fresh, key, value)

    @contextmanager
    def locked(self, key: str) -> Iterator[None]:
        if getattr(self._local, "held", False):   # re-entrant: a thread holds one lock at a time
            yield
            return
        hold = self._row_lock if self.engine.dialect.name == "postgresql" else self._lease
        with hold(f"lock:{key}") as conn:       # get/set run in conn while it is not None
            self._local.held, self._local.conn = True, conn
            try:
                yield
            finally:
                self._local.held, self._local.conn = False, None

    # -- PostgreSQL: a row lock -----------------------------------------------------
    @contextmanager
    def _row_lock(self, lock_key: str) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            # make sure the row exists so that it can be locked
            conn.execute(db.insert_for(conn, T).values(gateway=self.gateway, key=lock_key, value="",
                                                       updated_at=db.utcnow()).on_conflict_do_nothing())
            conn.execute(select(T.c.value).where(T.c.gateway == self.gateway, T.c.key == lock_key)
                         .with_for_update())
            yield conn

    # -- SQLite: a lease ------------------------------------------------------------
    @contextmanager
    def _lease(self, lock_key: str) -> Iterator[None]:
        owner, pause = uuid.uuid4().hex, 0.01
        while (lease := self._claim(lock_key, owner)) is None:   # SQLite has no lock to queue on: poll
            time.sleep(pause)
            pause = min(pause * 2, 0.25)
        try:
            yield
        finally:
            self._release(lock_key, lease)

    def _claim(self, lock_key: str, owner: str) -> str | None:
        """Take the lease if it is free or expired; the lease's value, or None."""
        with self.engine.begin() as conn:             # BEGIN IMMEDIATE: one claimer at a time
            now = float(conn.scalar(select(db_epoch("sqlite"))))   # SQLite's clock: one per database
            held = self._read(conn, lock_key) or ""
            if held and _lease_expiry(held) > now:
                return None
            lease = f"{owner} {now + self.lease_seconds!r}"
            self._write(conn, lock_key, lease)
        return lease

    def _release(self, lock_key: str, lease: str) -> None:
        with self.engine.begin() as conn:             # only our own lease: an expired one may be another's
            conn.execute(update(T).where(T.c.gateway == self.gateway, T.c.key == lock_key, T.c.value == lease)
                         .values(value="", updated_at=db.utcnow()))

    # -- rows ---------------------------------------------------------------------------
    def _read(self, conn: Connection, key: str) -> str | None:
        return conn.scalar(select(T.c.value).where(T.c.gateway == self.gateway, T.c.key == key))

    def _write(self, conn: Connection, key: str, value: str) -> None:
        stmt = db.insert_for(conn, T).values(gateway=self.gateway, key=key, value=value, updated_at=db.utcnow())
        conn.execute(stmt.on_conflict_do_update(index_elements=["gateway", "key"],
                                                set_={"value": stmt.excluded.value,
                                                      "updated_at": stmt.excluded.updated_at}))


def _lease_expiry(value: str) -> float:
    try:
        return float(value.rpartition(" ")[2])
    except ValueError:
        return 0.0          # unreadable: treat as expired rather than locked for ever
