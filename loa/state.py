"""providers.base.StateStore on the database: one value per (gateway, key),
shared by every worker on every machine, with a lock that spans processes.

``locked`` holds a row lock (PostgreSQL ``SELECT ... FOR UPDATE``) or the
database write lock (SQLite ``BEGIN IMMEDIATE``) for the whole block, and the
``get``/``set`` calls made inside it run in that same transaction, so a
single-use refresh token is never spent by two workers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from loa import db

T = db.gateway_state


class DatabaseStateStore:
    def __init__(self, engine: Engine, gateway: str) -> None:
        self.engine = engine
        self.gateway = gateway
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
        if self._conn() is not None:          # re-entrant within a thread
            yield
            return
        with self.engine.begin() as conn:
            # make sure the row exists so that it can be locked
            conn.execute(db.insert_for(conn, T).values(gateway=self.gateway, key=f"lock:{key}", value="",
                                                       updated_at=db.utcnow()).on_conflict_do_nothing())
            if conn.dialect.name == "postgresql":
                conn.execute(select(T.c.value).where(T.c.gateway == self.gateway, T.c.key == f"lock:{key}")
                             .with_for_update())
            self._local.conn = conn
            try:
                yield
            finally:
                self._local.conn = None

    def _read(self, conn: Connection, key: str) -> str | None:
        return conn.scalar(select(T.c.value).where(T.c.gateway == self.gateway, T.c.key == key))

    def _write(self, conn: Connection, key: str, value: str) -> None:
        stmt = db.insert_for(conn, T).values(gateway=self.gateway, key=key, value=value, updated_at=db.utcnow())
        conn.execute(stmt.on_conflict_do_update(index_elements=["gateway", "key"],
                                                set_={"value": stmt.excluded.value,
                                                      "updated_at": stmt.excluded.updated_at}))
