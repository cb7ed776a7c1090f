"""The file gateway: JSON lines, thread safety, unwritable paths."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from providers.base import ConfigError, OutgoingMessage
from providers.file import FileProvider


def msg(key: str, **kw: Any) -> OutgoingMessage:
    kw.setdefault("text", "Chào bạn, ưu đãi 50%")
    return OutgoingMessage(key=key, to="+84912345678", channel=kw.pop("channel", "sms"), **kw)


@pytest.fixture
def provider(tmp_path: Path) -> Any:
    p = FileProvider("out", {"path": str(tmp_path / "deep" / "er" / "out.jsonl")})
    yield p
    p.close()


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_declaration() -> None:
    assert FileProvider.type == "file"
    assert FileProvider.channels == ("sms", "zalo")
    assert FileProvider.dedupes_by_key is False
    assert [(s.name, s.required) for s in FileProvider.settings] == [("path", True)]


def test_writes_one_line_per_message(provider: FileProvider) -> None:
    result = provider.send(msg("r1-s1", encoding="UCS-2", parts=2, advertising=True))
    assert (result.provider_id, result.status) == ("file-r1-s1", "sent")
    provider.send(msg("r1-s2", channel="zalo", text="", template_id="T9",
                      template_data={"ten": "Nguyễn Văn Ân"}))
    raw = provider.path.read_text(encoding="utf-8")
    assert "Chào bạn" in raw and "Nguyễn Văn Ân" in raw     # ensure_ascii=False
    first, second = read_lines(provider.path)
    assert set(first) == {"key", "to", "channel", "text", "encoding", "parts", "advertising",
                          "template_id", "template_data", "at"}
    assert (first["key"], first["parts"], first["advertising"]) == ("r1-s1", 2, True)
    assert first["at"].endswith("Z")
    assert second["template_data"] == {"ten": "Nguyễn Văn Ân"} and second["channel"] == "zalo"


def test_flushed_per_line(provider: FileProvider) -> None:
    provider.send(msg("a"))
    # Still open, yet the line is already on disk.
    assert [r["key"] for r in read_lines(provider.path)] == ["a"]


def test_appends_and_resends_duplicate(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    for _ in range(2):
        p = FileProvider("out", {"path": str(path)})
        p.send(msg("same"))
        p.close()
    assert [r["key"] for r in read_lines(path)] == ["same", "same"]


def test_thread_safe(provider: FileProvider) -> None:
    def worker(t: int) -> None:
        for i in range(100):
            provider.send(msg(f"t{t}-{i}", text="x" * 500))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    keys = [r["key"] for r in read_lines(provider.path)]   # every line parses
    assert len(keys) == 800 and len(set(keys)) == 800


def test_unwritable_path_is_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "plain-file"
    blocker.write_text("not a folder")
    path = blocker / "sub" / "out.jsonl"
    p = FileProvider("out", {"path": str(path)})
    with pytest.raises(ConfigError) as info:
        p.send(msg("a"))
    text = str(info.value)
    assert str(path) in text and info.value.gateway == "out"
    assert "Not a directory" in text or "File exists" in text   # the OS reason
    with pytest.raises(ConfigError):
        p.check()


def test_path_is_a_folder(tmp_path: Path) -> None:
    p = FileProvider("out", {"path": str(tmp_path)})
    with pytest.raises(ConfigError):
        p.send(msg("a"))
    with pytest.raises(ConfigError):
        p.check()


def test_missing_path_setting() -> None:
    with pytest.raises(ConfigError):
        FileProvider("out", {})


def test_check(provider: FileProvider) -> None:
    assert str(provider.path) in provider.check()
    assert provider.path.parent.is_dir()
