"""Finding provider classes by configured type."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from loa.cli import main
from loa.config import load
from loa.gateways import build
from providers import registry
from providers.base import MemoryStateStore, OutgoingMessage, Provider, SendResult
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
    with pytest.raises(registry.BrokenProviderError, match="not a providers.base.Provider"):
        registry.get("bogus")


@pytest.mark.parametrize("type_name", sorted(registry.BUILTIN))
def test_every_builtin_takes_the_state_store(type_name: str) -> None:
    # loa.gateways.build passes the database's store to every gateway it builds
    cls = registry.get(type_name)
    inspect.signature(cls).bind(type_name, {}, MemoryStateStore())


# -- third-party gateways, installed as a distribution with an entry point --------------

PIGEON = """
from providers.base import OutgoingMessage, Provider, SendResult


class Pigeon(Provider):
    type = "pigeon"

    def send(self, message: OutgoingMessage) -> SendResult:
        return SendResult(provider_id=f"coo-{message.key}")


NOT_A_PROVIDER = object()
"""

ENTRY_POINTS = """
[loa.providers]
pigeon = loa_pigeon:Pigeon
sdkless = loa_pigeon_sdk:Gateway
misnamed = loa_pigeon:Nope
notaprovider = loa_pigeon:NOT_A_PROVIDER
"""


@pytest.fixture
def pigeon_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The distribution "loa-pigeon" installed as pip leaves it: modules and a dist-info."""
    site = tmp_path / "site-packages"
    info = site / "loa_pigeon-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: loa-pigeon\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    (site / "loa_pigeon.py").write_text(PIGEON)
    # a gateway whose SDK is not installed: the commonest broken entry point
    (site / "loa_pigeon_sdk.py").write_text("import pigeon_sdk_not_installed\n")
    monkeypatch.syspath_prepend(str(site))
    yield site
    for name in ("loa_pigeon", "loa_pigeon_sdk"):
        sys.modules.pop(name, None)


def test_third_party_gateway_is_found_by_name(pigeon_dist: Path, workdir: Path) -> None:
    assert {"pigeon", "sdkless"} <= set(registry.known_types())
    cls = registry.get("pigeon")
    assert (cls.__name__, cls.__module__, cls.type) == ("Pigeon", "loa_pigeon", "pigeon")
    assert issubclass(cls, Provider)

    # configured by type name, like any built-in gateway
    with (workdir / "config.toml").open("a", encoding="utf-8") as f:
        f.write('[gateways.coop]\ntype = "pigeon"\n')
    gateway = build(load(workdir / "config.toml"), "coop")
    assert isinstance(gateway.provider, cls)
    assert gateway.provider.send(OutgoingMessage("k1", "+84912345678", "sms")).provider_id == "coo-k1"


@pytest.mark.parametrize(("type_name", "cause"), [
    ("sdkless", "ModuleNotFoundError: No module named 'pigeon_sdk_not_installed'"),
    ("misnamed", "AttributeError"),
    ("notaprovider", "not a providers.base.Provider subclass"),
])
def test_broken_entry_point_is_a_clear_error(pigeon_dist: Path, workdir: Path, type_name: str, cause: str) -> None:
    with pytest.raises(registry.BrokenProviderError) as info:
        registry.get(type_name)
    text = str(info.value)
    assert f"gateway type {type_name!r}" in text
    assert "loa-pigeon" in text and "loa.providers" in text    # where to look: the package
    assert cause in text
    assert isinstance(info.value, registry.UnknownProviderError)   # callers treat it as unusable

    # the operator sees it as one line naming the configured gateway, not a traceback
    with (workdir / "config.toml").open("a", encoding="utf-8") as f:
        f.write(f'[gateways.broken]\ntype = "{type_name}"\n')
    result = CliRunner().invoke(main, ["--config", str(workdir / "config.toml"), "gateways", "check", "broken"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and "gateways.broken.type" in line and cause in line, line


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
