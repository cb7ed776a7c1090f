"""A gateway that writes messages to a JSON Lines file instead of sending them.

Useful for dry runs and for handing a rendered campaign to another system: one
JSON object per line, UTF-8 (Vietnamese text stays readable), flushed per line
so a crash loses at most the line being written.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from providers.base import ConfigError, OutgoingMessage, Provider, SendResult, Setting

__all__ = ["FileProvider"]


class FileProvider(Provider):
    """Appends one JSON line per message to ``path``."""

    type = "file"
    channels = ("sms", "zalo")
    rate = 1000.0
    dedupes_by_key = False  # a re-send appends a second line
    settings = (
        Setting("path", required=True, kind=str, help="JSON Lines file to append to; folders are created"),
    )

    def __init__(self, name: str, options: Mapping[str, Any], state: StateStore | None = None) -> None:
        super().__init__(name, options, state)
        raw = self.options.get("path")
        if not raw:
            raise self.error(ConfigError, "setting 'path' is required")
        self.path = Path(os.path.expanduser(str(raw)))
        self._lock = threading.Lock()
        self._fh: IO[str] | None = None

    def send(self, message: OutgoingMessage) -> SendResult:
        line = json.dumps(self._record(message), ensure_ascii=False, default=str)
        with self._lock:
            fh = self._open()
            try:
                fh.write(line + "\n")
                fh.flush()
            except OSError as exc:
                raise self._unwritable(exc) from exc
        return SendResult(provider_id=f"file-{message.key}", status="sent", parts=message.parts)

    @staticmethod
    def _record(message: OutgoingMessage) -> dict[str, Any]:
        return {
            "key": message.key,
            "to": message.to,
            "channel": message.channel,
            "text": message.text,
            "encoding": message.encoding,
            "parts": message.parts,
            "advertising": message.advertising,
            "template_id": message.template_id,
            "template_data": dict(message.template_data),
            "at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        }

    def _open(self) -> IO[str]:
        # Caller holds the lock.  Opened lazily so configuring the gateway
        # never touches the disk; kept open because campaigns write many lines.
        if self._fh is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            except OSError as exc:
                raise self._unwritable(exc) from exc
        return self._fh

    def _unwritable(self, exc: OSError) -> ConfigError:
        reason = exc.strerror or str(exc)
        return ConfigError(f"cannot write to {self.path}: {reason}", gateway=self.name)

    def check(self) -> str:
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._unwritable(exc) from exc
        if not os.access(folder, os.W_OK | os.X_OK):
            raise self.error(ConfigError, f"cannot write to {self.path}: folder "
                             f"{folder} is not writable")
        if self.path.is_dir():
            raise self.error(ConfigError, f"cannot write to {self.path}: it is a folder")
        if self.path.exists() and not os.access(self.path, os.W_OK):
            raise self.error(ConfigError, f"cannot write to {self.path}: file is read-only")
        return f"file gateway appending to {self.path}"

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
