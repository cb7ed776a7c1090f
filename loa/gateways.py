"""Gateway instances built from configuration: provider plus its rate limiter,
and the gateway's shared state in the database (pause flag, limiter, tokens)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from loa import db
from loa.config import Config, resolve_settings
from loa.errors import ConfigError, NotFound
from loa.ratelimit import DatabaseGCRA, PacedMemoryGCRA, RateLimiter
from providers import registry
from providers.base import Provider, ProviderError, StateStore

G = db.gateways


@dataclass
class Gateway:
    name: str
    provider: Provider
    limiter: RateLimiter
    rate: float


log = logging.getLogger("loa.gateways")

def build(config: Config, name: str, engine: Engine | None = None, *, shared_limit: bool = False) -> Gateway:
    """Build gateway ``name``.  With an engine, its tokens live in the database, and with
    ``shared_limit`` its rate limit is shared by every worker through the database."""
    spec = config.gateway(name)
    try:
        cls = registry.get(spec.type)
    except registry.UnknownProviderError as exc:
        raise ConfigError(f"{spec.source}.type: {exc}") from None
    options = resolve_settings(spec, list(cls.settings))
    state: StateStore | None = None
    if engine is not None:
        from loa.state import DatabaseStateStore

        state = DatabaseStateStore(engine, name)
    try:
        provider = cls(name, options, state)   # every provider takes the store, as Provider does
    except ProviderError as exc:
        raise ConfigError(f"{spec.source}: {exc}") from None
    except Exception as exc:   # a bug in a gateway class (a plug-in's, say) pauses that gateway only
        log.exception("gateway %s: type %r failed to start", name, spec.type)
        raise ConfigError(f"{spec.source}: gateway type {spec.type!r} failed to start: "
                          f"{type(exc).__name__}: {exc}") from None
    rate = float(spec.rate or cls.rate)
    burst = spec.burst or 1
    limiter: RateLimiter = (DatabaseGCRA(engine, name, rate, burst) if shared_limit and engine is not None
                            else PacedMemoryGCRA(rate, burst))
    return Gateway(name, provider, limiter, rate)


class GatewayPool:
    """One instance per gateway name for the life of a dispatcher."""

    def __init__(self, config: Config, engine: Engine | None = None, *, shared_limit: bool = False) -> None:
        self.config = config
        self.engine = engine
        self.shared_limit = shared_limit
        self._built: dict[str, Gateway] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Gateway:
        with self._lock:
            if name not in self._built:
                self._built[name] = build(self.config, name, self.engine, shared_limit=self.shared_limit)
            return self._built[name]

    def __iter__(self) -> Iterator[Gateway]:
        return iter(list(self._built.values()))

    def close(self) -> None:
        for gw in self._built.values():
            gw.provider.close()


# -- pause and resume ---------------------------------------------------------------

# Why the dispatcher paused a gateway that refused it ("auth error: ...", then the gateway's own
# words): kept in English as paused_reason; loa.reasons says it in the console's language.
PAUSED_FOR = "{kind} error: {text}"


def pause(engine: Engine, name: str, reason: str) -> bool:
    """Pause a gateway for every worker; return False if it was paused already."""
    now = db.utcnow()
    with engine.begin() as conn:
        conn.execute(db.insert_for(conn, G).values(name=name, tat=0.0, slowed_until=0.0, updated_at=now)
                     .on_conflict_do_nothing())
        return conn.execute(update(G).where(G.c.name == name, G.c.paused_reason.is_(None))
                            .values(paused_reason=reason[:1000], paused_at=now, updated_at=now)).rowcount > 0


def resume(engine: Engine, name: str, *, actor: str = "unknown", why: str = "") -> str:
    """Clear a pause, recorded in the audit log as ``actor``'s; return the reason it had."""
    from loa import audit

    with engine.begin() as conn:
        row = conn.execute(select(G.c.paused_reason, G.c.paused_at).where(G.c.name == name)).one_or_none()
        if row is None or row.paused_reason is None:
            raise NotFound(f"gateway {name!r} is not paused")
        conn.execute(update(G).where(G.c.name == name)
                     .values(paused_reason=None, paused_at=None, updated_at=db.utcnow()))
        audit.record(conn, actor, "gateways.resume", "gateway", name, reason=why,
                     before={"paused_reason": row.paused_reason, "paused_at": row.paused_at.isoformat()
                             if row.paused_at else None},
                     after={"paused_reason": None, "paused_at": None})
    return str(row.paused_reason)


def paused(engine: Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(G.c.name, G.c.paused_reason, G.c.paused_at)
                            .where(G.c.paused_reason.is_not(None))).all()
    return {name: {"reason": reason, "since": since} for name, reason, since in rows}


def paused_names() -> Any:
    """A subquery of paused gateway names, for claim queries."""
    return select(G.c.name).where(G.c.paused_reason.is_not(None))
