"""Log lines for operators and for log collectors, with phone numbers masked.

``loa --log-format`` (or ``$LOA_LOG_FORMAT``) picks one of two formats, one line per record:

* ``kv`` (the default), key=value pairs that read well and parse well (logfmt)::

    at=2030-03-12T02:00:00.123Z level=warning logger=loa.dispatch msg="gateway tw: +8491****001 opted out" gateway=tw

* ``json``, the same fields as one JSON object.

Fields given with ``extra=`` follow the message; a traceback is the last field, on the
same line.

Phone numbers are masked by :class:`MaskPhones`, a filter on the root logger's handlers:
every record passes it before any handler writes it, whoever logged it (loa, a gateway
adapter, requests, uvicorn), so a number is hidden even where a call site forgot
:func:`loa.phones.mask`, or where the number came inside a gateway's error text or an
exception.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import IO, Any

from loa.phones import mask

FORMATS = ("kv", "json")

# An E.164 number (its "+" also URL-encoded, as in a gateway's form body: "To=%2B849..."),
# or a Vietnamese one written nationally ("0912 345 678", "0912.345.678") or as Zalo writes
# it ("84912345678").  Not inside a word or a longer run of digits or hex (ids, epoch times),
# and not "0.123..." (a decimal); "_" counts as a separator, as in "phone_0912345678".
_PHONE = re.compile(r"(?<![^\W_])(?<!\+)(?:(?:\+|%2[Bb])\d(?:[ .-]?\d){7,14}|(?:84|0(?!\.))(?:[ .-]?\d){9,10})"
                    r"(?![^\W_])")
_SEPARATORS = re.compile(r"[ .-]")
_ENCODED_PLUS = "%2B"
# The attributes every LogRecord has: anything else was given with extra=.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def mask_phones(text: str) -> str:
    """``text`` with every phone number in it masked: "0912345678" -> "+8491****678"."""
    return _PHONE.sub(_masked, text) if any(c.isdigit() for c in text) else text


def _masked(match: re.Match[str]) -> str:
    digits = _SEPARATORS.sub("", match.group(0))
    encoded = digits[:3].upper() == _ENCODED_PLUS
    if encoded:
        digits = "+" + digits[3:]
    elif digits.startswith("0"):
        digits = "+84" + digits[1:]
    elif not digits.startswith("+"):
        digits = "+" + digits
    masked = mask(digits)
    # still URL-encoded, so the masked line reads as the request it came from
    return _ENCODED_PLUS + masked[1:] if encoded and masked.startswith("+") else masked


class MaskPhones(logging.Filter):
    """Mask phone numbers in a record's message, arguments, extra fields and traceback.

    The message is rendered with its arguments first, so a number inside any of them
    (a string, an int, an exception, a dict) is found; a record without one is left as
    it was.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self._mask(record)
        except Exception:   # noqa: BLE001 - a record that cannot be rendered is the handler's to report
            pass
        return True

    @staticmethod
    def _mask(record: logging.LogRecord) -> None:
        text = record.getMessage()
        masked = mask_phones(text)
        if masked != text:
            record.msg, record.args = masked, ()
        if record.exc_info and not record.exc_text:
            # formatters reuse exc_text, so the traceback they print is this masked one
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        for name in ("exc_text", "stack_info"):
            if value := getattr(record, name, None):
                setattr(record, name, mask_phones(value))
        for name, value in list(vars(record).items()):
            if name not in _STANDARD and isinstance(value, str):
                setattr(record, name, mask_phones(value))


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """What a line says about a record, in order: time, level, logger, message, extras, traceback."""
    at = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    out: dict[str, Any] = {"at": at, "level": record.levelname.lower(), "logger": record.name,
                           "msg": record.getMessage()}
    out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        out["exc"] = record.exc_text
    if record.stack_info:
        out["stack"] = record.stack_info
    return out


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_value(v)}" for k, v in fields(record).items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(fields(record), ensure_ascii=False, default=str)


def _value(value: Any) -> str:
    """A logfmt value: bare when it can be, else quoted with \\ " and newlines escaped."""
    text = value if isinstance(value, str) else str(value)
    if text and not any(c in text for c in ' ="\\\n\r\t'):
        return text
    for plain, escaped in (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t")):
        text = text.replace(plain, escaped)
    return f'"{text}"'


class _Handler(logging.StreamHandler):   # type: ignore[type-arg]
    """loa's own handler, told apart from a host's so that setup() can replace it."""


def setup(level: int = logging.WARNING, fmt: str = "kv", stream: IO[str] | None = None) -> None:
    """Configure logging for the ``loa`` command: one line per record on stderr, masked.

    Like :func:`logging.basicConfig`, it leaves a host's own handlers (pytest's, an
    embedding program's) and level alone and adds none of its own then; the masking
    filter goes on every handler of the root either way.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: use one of {', '.join(FORMATS)}")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(handler)
    if not root.handlers:
        handler = _Handler(stream)
        handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
        root.addHandler(handler)
        root.setLevel(level)
    install_masking()


def install_masking() -> None:
    """Put :class:`MaskPhones` on every handler of the root logger that lacks it."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, MaskPhones) for f in handler.filters):
            handler.addFilter(MaskPhones())


__all__ = ["FORMATS", "JsonFormatter", "KeyValueFormatter", "MaskPhones", "install_masking", "mask_phones",
           "setup"]
