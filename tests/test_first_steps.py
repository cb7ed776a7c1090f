"""A new user's first steps: `loa init` from nothing, what `loa send` says about deferred
messages, an edited send window, and the demo's folder."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from test_cli import invoke, ok, one_line_error

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def empty(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder, with no configuration anywhere."""
    folder = tmp_path / "new"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.delenv("LOA_CONFIG", raising=False)
    monkeypatch.setenv("LOA_DATABASE_URL", database_url)
    return folder


def test_init_from_nothing_writes_the_examples_and_the_tour_goes_on(empty: Path) -> None:
    r = ok(invoke(None, "init"))
    assert "wrote config.toml from config.example.toml" in r.stdout
    assert f"wrote the example campaigns to {empty / 'campaigns'}" in r.stdout
    assert f"wrote the example templates to {empty / 'templates'}" in r.stdout
    assert filecmp.cmp(empty / "config.toml", ROOT / "config.example.toml", shallow=False)
    for folder in ("campaigns", "templates"):
        cmp = filecmp.dircmp(ROOT / folder, empty / folder)
        assert not (cmp.left_only or cmp.right_only or cmp.diff_files), folder
    listed = ok(invoke(None, "campaigns", "list")).stdout
    assert "bluezone-reminder" in listed and "tourist-greeting" in listed
    ok(invoke(None, "campaigns", "validate"))


def test_init_never_overwrites(empty: Path) -> None:
    ok(invoke(None, "init"))
    mine = "# my own configuration\n" + (empty / "config.toml").read_text(encoding="utf-8")
    (empty / "config.toml").write_text(mine, encoding="utf-8")
    (empty / "campaigns" / "bluezone-reminder.toml").unlink()
    r = ok(invoke(None, "init"))
    assert "wrote" not in r.stdout and r.stdout.startswith("checked loa schema")
    assert (empty / "config.toml").read_text(encoding="utf-8") == mine
    assert not (empty / "campaigns" / "bluezone-reminder.toml").exists()   # the folder is the user's


def test_init_writes_an_explicit_config_path(empty: Path) -> None:
    target = empty / "etc" / "loa.toml"
    r = ok(invoke(None, "--config", str(target), "init"))
    assert f"wrote {target}" in r.stdout
    assert (empty / "etc" / "campaigns" / "bluezone-reminder.toml").is_file()   # beside the configuration


def test_init_without_examples_still_needs_a_configuration(empty: Path) -> None:
    one_line_error(invoke(None, "init", "--no-examples"), "no configuration found")
    assert list(empty.iterdir()) == []


def test_the_demo_removes_its_temporary_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from click.testing import CliRunner

    from loa.cli import main

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    result = CliRunner().invoke(main, ["demo", "--subscribers", "1000"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "temporary folder is removed; run with --dir DIR to keep it" in result.output
    assert list(scratch.iterdir()) == []

    kept = tmp_path / "kept"
    result = CliRunner().invoke(main, ["demo", "--subscribers", "1000", "--dir", str(kept)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert f"Explore: loa --config {kept / 'config.toml'}" in result.output
    assert (kept / "loa.db").is_file()
