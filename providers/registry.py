"""Find provider classes by their configured ``type``.

Built-in gateways are listed here; third parties add theirs through the
``loa.providers`` entry-point group (``mygw = "mypkg.gw:MyGateway"``) or by
calling :func:`register` before loa loads its configuration.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from providers.base import Provider

GROUP = "loa.providers"

# type -> "module:Class"; imported lazily so an unused gateway's SDK is never loaded.
BUILTIN: dict[str, str] = {
    "simulator": "providers.simulator:SimulatorProvider",
    "simulator_http": "providers.simulator:SimulatorHTTPProvider",
    "simulator_http_nodedupe": "providers.simulator:SimulatorHTTPNoDedupeProvider",
    "file": "providers.file:FileProvider",
    "twilio": "providers.twilio_sms:TwilioProvider",
    "zalo_zns": "providers.zalo_zns:ZaloZNSProvider",
    "esms": "providers.esms:ESMSProvider",
    "smpp": "providers.smpp:SMPPProvider",
}

_registered: dict[str, type[Provider]] = {}


class UnknownProviderError(LookupError):
    def __init__(self, type_name: str, known: list[str]) -> None:
        super().__init__(
            f"unknown gateway type {type_name!r}; known types: {', '.join(sorted(known))}"
        )
        self.type_name = type_name


class BrokenProviderError(UnknownProviderError):
    """The type is declared (built in, or by an entry point) but gives no usable class:
    its module fails to import (often a missing SDK), or the name is not a Provider."""

    def __init__(self, type_name: str, origin: str, cause: str) -> None:
        LookupError.__init__(self, f"gateway type {type_name!r} ({origin}) cannot be loaded: {cause}")
        self.type_name = type_name


def register(cls: type[Provider]) -> type[Provider]:
    """Class decorator: make ``cls`` available under ``cls.type``."""
    if not cls.type:
        raise ValueError(f"{cls.__name__} declares no 'type'")
    _registered[cls.type] = cls
    return cls


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def known_types() -> list[str]:
    return sorted({*BUILTIN, *_registered, *_entry_points()})


def _declared(type_name: str) -> tuple[EntryPoint, str]:
    """Where ``type_name`` comes from, and how to say so in an error."""
    if type_name in BUILTIN:
        return EntryPoint(type_name, BUILTIN[type_name], GROUP), f"built in as {BUILTIN[type_name]}"
    ep = _entry_points().get(type_name)
    if ep is None:
        raise UnknownProviderError(type_name, known_types())
    dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "an installed package"
    return ep, f"entry point {GROUP} {ep.name} = {ep.value} of {dist}"


def get(type_name: str) -> type[Provider]:
    if type_name in _registered:
        return _registered[type_name]
    ep, origin = _declared(type_name)
    try:
        cls = ep.load()
    except Exception as exc:  # a third party's module may raise anything while importing
        raise BrokenProviderError(type_name, origin, f"{type(exc).__name__}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise BrokenProviderError(type_name, origin, "not a providers.base.Provider subclass")
    _registered[type_name] = cls
    return cls
