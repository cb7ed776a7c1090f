"""Gateway instances built from configuration: provider plus its rate limiter."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from loa.config import Config, resolve_settings
from loa.errors import ConfigError
from loa.ratelimit import MemoryGCRA, RateLimiter
from providers import registry
from providers.base import Provider, ProviderError


@dataclass
class Gateway:
    name: str
    provider: Provider
    limiter: RateLimiter
    rate: float


def build(config: Config, name: str) -> Gateway:
    spec = config.gateway(name)
    try:
        cls = registry.get(spec.type)
    except registry.UnknownProviderError as exc:
        raise ConfigError(f"{spec.source}.type: {exc}") from None
    options = resolve_settings(spec, list(cls.settings))
    try:
        provider = cls(name, options)
    except ProviderError as exc:
        raise ConfigError(f"{spec.source}: {exc}") from None
    rate = float(spec.rate or cls.rate)
    return Gateway(name, provider, MemoryGCRA(rate, spec.burst or 1), rate)


class GatewayPool:
    """One instance per gateway name for the life of a dispatcher."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._built: dict[str, Gateway] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Gateway:
        with self._lock:
            if name not in self._built:
                self._built[name] = build(self.config, name)
            return self._built[name]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._built.values()))

    def close(self) -> None:
        for gw in self._built.values():
            gw.provider.close()
