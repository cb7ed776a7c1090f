"""Find provider classes by their configured ``type``.

Built-in gateways are listed here; third parties add theirs through the
``loa.providers`` entry-point group (``mygw = "mypkg.gw:MyGateway"``) or by
calling :func:`register` before loa loads its configuration.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from providers.base import Provider

# type -> "module:Class"; imported lazily so an unused gateway's SDK is never loaded.
BUILTIN: dict[str, str] = {
    "simulator": "providers.simulator:SimulatorProvider",
    "simulator_http": "providers.simulator:SimulatorHTTPProvider",
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


def register(cls: type[Provider]) -> type[Provider]:
    """Class decorator: make ``cls`` available under ``cls.type``."""
    if not cls.type:
        raise ValueError(f"{cls.__name__} declares no 'type'")
    _registered[cls.type] = cls
    return cls


def _entry_points() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group="loa.providers")}


def known_types() -> list[str]:
    return sorted({*BUILTIN, *_registered, *_entry_points()})


def get(type_name: str) -> type[Provider]:
    if type_name in _registered:
        return _registered[type_name]
    target = BUILTIN.get(type_name) or _entry_points().get(type_name)
    if target is None:
        raise UnknownProviderError(type_name, known_types())
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise TypeError(f"{target} is not a providers.base.Provider subclass")
    _registered[type_name] = cls
    return cls
