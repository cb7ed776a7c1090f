"""Signing out ends a session everywhere, not only in the browser that asked.

A session is a signed cookie (:mod:`loa.web.console.session`), valid until its lifetime
ends.  Signing out deletes the cookie, and also records its nonce in
``console_sessions_ended``, which every request checks: a copy of the cookie (another tab's,
a stolen one) stops working at once.  A row is kept until its session would have expired
anyway, and rows past that are deleted at each sign-out.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.engine import Engine

from loa import db
from loa.web.console.session import LIFETIME, Session

E = db.console_sessions_ended


def end(engine: Engine, session: Session) -> None:
    """Record ``session`` as ended (idempotent), and forget the ends that no longer matter."""
    now = db.utcnow()
    expires = datetime.fromtimestamp(session.issued, UTC) + timedelta(seconds=LIFETIME)
    with engine.begin() as conn:
        conn.execute(delete(E).where(E.c.expires_at < now))
        if conn.scalar(select(E.c.nonce).where(E.c.nonce == session.nonce)) is None:
            conn.execute(E.insert().values(nonce=session.nonce, user_name=session.user[:64], ended_at=now,
                                           expires_at=expires))


def ended(engine: Engine, session: Session) -> bool:
    with engine.connect() as conn:
        return conn.scalar(select(E.c.nonce).where(E.c.nonce == session.nonce)) is not None


__all__ = ["end", "ended"]
