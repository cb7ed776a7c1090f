"""Log lines: key=value or JSON, one per record, and no phone number in full anywhere.

Masking is checked where numbers really come from: a gateway whose refusal quotes the
number (in E.164, national and Zalo forms) and an adapter that fails with the number in
its exception, sent through the dispatcher in this process (caplog) and through the
``loa`` command in a subprocess (its stderr, as an operator or a collector reads it).
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy.engine import Engine

from conftest import ROOT
from loa import logs
from loa.config import load
from loa.dispatch import Dispatcher
from loa.plan import plan_run
from providers import registry
from providers.base import OutgoingMessage, PermanentError, Provider, SendResult
from test_dispatch import import_people, make_campaign, outbox, phone

TESTS = Path(__file__).resolve().parent


class Leaky(Provider):
    """Refuses even numbers quoting them, as gateways do; fails unexpectedly on odd ones."""

    type = "test-logs-leaky"
    channels: ClassVar[tuple[str, ...]] = ("sms",)
    rate: ClassVar[float] = 100_000.0

    def send(self, message: OutgoingMessage) -> SendResult:
        national, zalo = "0" + message.to[3:], message.to[1:]
        if int(message.to[-1]) % 2:
            raise RuntimeError(f"adapter bug: cannot encode {message.to}")
        raise self.error(PermanentError, f"{national} ({zalo}) is not a subscriber", code="LEAK")


def every_form(number: str) -> list[str]:
    """The ways a number can be written in full: E.164, national, Zalo's."""
    return [number, "0" + number[3:], number[1:]]


def leaks(text: str, numbers: list[str]) -> list[str]:
    return [form for number in numbers for form in every_form(number) if form in text]


@pytest.fixture
def masked_root() -> Iterator[None]:
    """Masking on the root's handlers (here pytest's), as `loa` installs it; removed afterwards."""
    logs.install_masking()
    yield
    for handler in logging.getLogger().handlers:
        for f in [f for f in handler.filters if isinstance(f, logs.MaskPhones)]:
            handler.removeFilter(f)


# -- masking -------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("to +84912345678", "to +8491****678"),
    ("to 0912345678.", "to +8491****678."),
    ("to 0912 345 678 and 0912.345.679", "to +8491****678 and +8491****679"),
    ("phone=84912345678", "phone=+8491****678"),
    ("old 01623456789 number", "old +8416*****789 number"),
    ("US +1 415 555 0100", "US +1415****100"),
    ("(+84912345678)", "(+8491****678)"),
    # a gateway's form body, URL-encoded: the "+" is "%2B" (or "%2b")
    ("To=%2B84912345678&Body=TC", "To=%2B8491****678&Body=TC"),
    ("from=%2b84912345678", "from=%2B8491****678"),
    # "_" separates, as in a field or file name
    ("phone_0912345678", "phone_+8491****678"),
    ("0912345678_reply.txt", "+8491****678_reply.txt"),
])
def test_numbers_are_masked_in_any_common_form(text: str, expected: str) -> None:
    assert logs.mask_phones(text) == expected


@pytest.mark.parametrize("text", [
    "2030-03-12T02:00:00.123Z", "epoch 1712345678 and 1712345678901", "0.123456789 s", "key loa-3-17",
    "sid SM0912345678abcdef0912345678abcdef", "1,234,567 messages", "run 12 of 840", "port 5432",
    "part 3/6, 153 characters",
    # hex ids that start like a number
    "0123456789abcdef", "id 0123456789ABCDEF", "trace 84912345678ff01", "uuid 01234567-89ab-cdef-0123-456789abcdef",
])
def test_other_numbers_are_left_alone(text: str) -> None:
    assert logs.mask_phones(text) == text


def record_lines(fmt: logging.Formatter, emit: Any) -> list[str]:
    """What a handler with ``fmt`` and the masking filter writes while ``emit(logger)`` logs."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(fmt)
    handler.addFilter(logs.MaskPhones())
    logger = logging.getLogger("loa.test-logs")
    logger.addHandler(handler)
    logger.propagate, logger.level = False, logging.DEBUG
    try:
        emit(logger)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    return stream.getvalue().splitlines()


def emit_everything(logger: logging.Logger) -> None:
    logger.info("refused %s: %s", "+84912345678", ValueError("bad 0912345678"), extra={"to": "84912345678"})
    logger.warning("as an int %d, in a dict %s", 84912345678, {"phone": "+84912345678"})
    try:
        raise RuntimeError("cannot encode +84912345678")
    except RuntimeError:
        logger.exception("send failed")


def test_key_value_lines_mask_message_arguments_extras_and_tracebacks() -> None:
    lines = record_lines(logs.KeyValueFormatter(), emit_everything)
    assert len(lines) == 3                        # one line per record, the traceback included
    assert leaks("\n".join(lines), ["+84912345678"]) == []
    first, second, third = lines
    assert first.startswith("at=") and " level=info logger=loa.test-logs " in first
    assert 'msg="refused +8491****678: bad +8491****678" to=+8491****678' in first
    assert 'msg="as an int +8491****678, in a dict {\'phone\': \'+8491****678\'}"' in second
    assert third.startswith("at=") and 'msg="send failed" exc="Traceback (most recent call last):\\n' in third
    assert "RuntimeError: cannot encode +8491****678" in third


def test_json_lines_carry_the_same_fields() -> None:
    lines = record_lines(logs.JsonFormatter(), emit_everything)
    records = [json.loads(line) for line in lines]
    assert [r["level"] for r in records] == ["info", "warning", "error"]
    assert records[0]["msg"] == "refused +8491****678: bad +8491****678" and records[0]["to"] == "+8491****678"
    assert records[0]["at"].endswith("Z") and records[0]["logger"] == "loa.test-logs"
    assert records[2]["exc"].endswith("RuntimeError: cannot encode +8491****678")
    assert leaks("\n".join(lines), ["+84912345678"]) == []


def test_setup_leaves_a_hosts_handlers_but_masks_them(masked_root: None) -> None:
    before = list(logging.getLogger().handlers)      # pytest's own
    logs.setup(logging.INFO, "json", stream=io.StringIO())
    root = logging.getLogger()
    assert root.handlers == before
    assert all(any(isinstance(f, logs.MaskPhones) for f in h.filters) for h in root.handlers)
    with pytest.raises(ValueError, match="log format"):
        logs.setup(logging.INFO, "xml")


# -- a failed send, end to end ----------------------------------------------------------

@pytest.fixture
def leaky_gateway(monkeypatch: pytest.MonkeyPatch, workdir: Path) -> Any:
    monkeypatch.setattr(registry, "_registered", dict(registry._registered))
    registry.register(Leaky)
    with (workdir / "config.toml").open("a", encoding="utf-8") as f:
        f.write('\n[gateways.leaky]\ntype = "test-logs-leaky"\n')
    return load(workdir / "config.toml")


def test_a_failed_send_logs_no_full_number(engine: Engine, workdir: Path, tmp_path: Path, leaky_gateway: Any,
                                           masked_root: None, caplog: pytest.LogCaptureFixture) -> None:
    import_people(engine, tmp_path, n=4)
    plan_run(engine, leaky_gateway, make_campaign(workdir, "leak", sms_gateway="leaky", window=("00:00", "24:00")))
    with caplog.at_level(logging.INFO):
        Dispatcher(engine, leaky_gateway, threads=2).run_until_empty()

    rows = outbox(engine)
    assert Counter(r["state"] for r in rows) == Counter({"failed": 2, "unknown": 2})
    assert any("+8491****000" in r.getMessage() for r in caplog.records)
    assert any(r.exc_text and "+8491****001" in r.exc_text for r in caplog.records)
    assert leaks(caplog.text, [phone(i) for i in range(4)]) == []


def test_the_loa_command_logs_json_lines_without_numbers(engine: Engine, workdir: Path, tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=4)
    with (workdir / "config.toml").open("a", encoding="utf-8") as f:
        f.write('\n[gateways.leaky]\ntype = "test-logs-leaky"\n')
    make_campaign(workdir, "leak", sms_gateway="leaky", window=("00:00", "24:00"))
    env = {**os.environ, "LOA_LOG_FORMAT": "json", "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)])}
    start = "from providers import registry; import test_logs; registry.register(test_logs.Leaky); " \
            "from loa.cli import main; main()"
    loa = [sys.executable, "-c", start, "--config", str(workdir / "config.toml")]
    subprocess.run([*loa, "campaigns", "run", "leak"], env=env, check=True, capture_output=True, timeout=60)
    done = subprocess.run([*loa, "-v", "send"], env=env, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines()]     # every line is one JSON record
    refusals = [r for r in records if r["logger"] == "loa.dispatch" and r.get("kind") == "permanent"]
    assert len(refusals) == 2 and {r["gateway"] for r in refusals} == {"leaky"}
    assert any("+8491****001" in r.get("exc", "") for r in records)
    assert leaks(done.stdout + done.stderr, [phone(i) for i in range(4)]) == []
