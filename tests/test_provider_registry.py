"""Finding provider classes by configured type."""

from __future__ import annotations

from typing import Any

import pytest

from providers import registry
from providers.base import OutgoingMessage, Provider, SendResult
from providers.file import FileProvider
from providers.simulator import SimulatorHTTPProvider, SimulatorProvider


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    # register() and get() cache into module state; keep tests from leaking into each other.
    monkeypatch.setattr(registry, "_registered", {})
    monkeypatch.setattr(registry, "BUILTIN", dict(registry.BUILTIN))


@pytest.mark.parametrize(("name", "cls"), [
    ("simulator", SimulatorProvider),
    ("simulator_http", SimulatorHTTPProvider),
    ("file", FileProvider),
])
def test_builtin_types(name: str, cls: type[Provider]) -> None:
    assert registry.get(name) is cls
    assert cls.type == name
    assert registry.get(name) is cls   # second call served from the cache


def test_unknown_type_lists_known_types() -> None:
    with pytest.raises(registry.UnknownProviderError) as info:
        registry.get("carrier-pigeon")
    text = str(info.value)
    assert "carrier-pigeon" in text
    for known in ("file", "simulator", "simulator_http"):
        assert known in text
    assert info.value.type_name == "carrier-pigeon"
    assert isinstance(info.value, LookupError)


def test_register_decorator() -> None:
    @registry.register
    class Pigeon(Provider):
        type = "pigeon"

        def send(self, message: OutgoingMessage) -> SendResult:
            return SendResult(provider_id="coo")

    assert registry.get("pigeon") is Pigeon
    assert "pigeon" in registry.known_types()
    assert registry.get("pigeon")("p", {}).send(OutgoingMessage("k", "+84912345678", "sms")) \
        == SendResult(provider_id="coo")


def test_register_needs_a_type() -> None:
    class Nameless(Provider):
        pass

    with pytest.raises(ValueError, match="Nameless"):
        registry.register(Nameless)


def test_target_must_be_a_provider() -> None:
    registry.BUILTIN["bogus"] = "providers.base:Setting"
    with pytest.raises(TypeError, match="not a providers.base.Provider"):
        registry.get("bogus")


def test_providers_do_not_import_loa() -> None:
    import ast
    from pathlib import Path

    import providers

    for path in Path(providers.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[Any] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n == "loa" or n.startswith("loa.") for n in names), path.name
