"""``loa demo --gateway NAME``: the demo through each real adapter against its loopback fake,
and each fake run standalone (``python -m providers.fakes.NAME``).

The demos run in-process (click's CliRunner) so the test can count what reached the
fake; the standalone fakes run as subprocesses and answer one real request each.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections import Counter
from datetime import datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import smpplib.client
import time_machine
from click.testing import CliRunner
from sqlalchemy import func, select

from loa import db
from loa.cli import main
from loa.demo import DISTRICT_CODES
from providers.fakes.esms import FakeESMS
from providers.fakes.smpp import FakeSMSC
from providers.fakes.twilio import FakeTwilio
from providers.fakes.zalo import FakeZalo

ROOT = Path(__file__).resolve().parent.parent
FAKES: dict[str, type] = {"twilio": FakeTwilio, "zalo": FakeZalo, "esms": FakeESMS, "smpp": FakeSMSC}
SENT = ("sent", "delivered", "undelivered")
VIETNAM = ZoneInfo("Asia/Ho_Chi_Minh")


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every fake the demo starts, so the test can read what it received."""
    fakes: list[Any] = []
    for cls in FAKES.values():
        def start(self: Any, _original: Any = cls.start) -> Any:
            fakes.append(self)
            return _original(self)
        monkeypatch.setattr(cls, "start", start)
    return fakes


def received(fake: Any) -> int:
    """Messages that reached the fake, by its own record of requests or submits."""
    if isinstance(fake, FakeTwilio):
        return len(fake.sends())
    if isinstance(fake, FakeZalo):
        return len(fake.template_requests)
    if isinstance(fake, FakeESMS):
        return len(fake.send_requests)
    return len(fake.messages())          # SMPP: parts reassembled into whole messages


def secrets_of(fake: Any) -> list[str]:
    if isinstance(fake, FakeTwilio):
        return [fake.account_sid, fake.auth_token]
    if isinstance(fake, FakeZalo):
        return [fake.secret_key, fake.oa_secret, *fake.spent_refresh_tokens, fake.access_token, fake.refresh_token]
    if isinstance(fake, FakeESMS):
        return [fake.api_key, fake.secret_key]
    return [fake.password]


def ledger(folder: Path) -> Counter[str]:
    engine = db.make_engine(f"sqlite:///{folder / 'loa.db'}")
    try:
        with engine.connect() as conn:
            o = db.outbox
            return Counter(dict(conn.execute(select(o.c.state, func.count()).group_by(o.c.state)).all()))
    finally:
        engine.dispose()


@pytest.mark.parametrize("name", ["twilio", "zalo", "esms", "smpp"])
def test_demo_through_a_gateway_fake(name: str, tmp_path: Path, started: list[Any],
                                     monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    if name == "zalo":            # ZNS sends nothing from 22:00 to 06:00: the demo runs in this process
        request.getfixturevalue("vietnam_daytime")
    monkeypatch.setenv("COLUMNS", "220")   # the table keeps district names on one line
    folder = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--gateway", name, "--subscribers", "1000", "--dir", str(folder)])
    assert result.exit_code == 0, (result.output, result.exception)

    [fake] = started
    states = ledger(folder)
    sent = sum(states[s] for s in SENT)
    assert sent > 700 and received(fake) == sent, (states, received(fake))
    assert states["delivered"] >= 0.9 * sent           # through receipts: the adapter only says "sent"
    if name == "zalo":                                  # Zalo has no failure webhook: those stay sent
        assert states["undelivered"] == 0 and states["delivered"] + states["sent"] == sent
    else:
        assert states["sent"] == 0 and states["undelivered"] > 0

    config = (folder / "config.toml").read_text(encoding="utf-8")
    assert f"[gateways.{name}]" in config and "_env = " in config
    for secret in secrets_of(fake):
        assert secret not in config
    assert not [k for k in os.environ if k.startswith("LOA_DEMO_")]   # the demo's own, restored

    host, port = (fake.host, fake.port) if isinstance(fake, FakeSMSC) else re.findall(r"//([\d.]+):(\d+)", fake.url)[0]
    assert f"gateway: {name}" in result.output and f"{host}:{port}" in result.output
    for district in DISTRICT_CODES:
        assert district in result.output


def test_the_zalo_demo_is_refused_at_night(tmp_path: Path, started: list[Any]) -> None:
    """ZNS sends nothing from 22:00 to 06:00 in Vietnam: the demo says so instead of waiting."""
    night = datetime.combine(datetime.now(VIETNAM).date(), time(23), VIETNAM)
    with time_machine.travel(night, tick=True):
        result = CliRunner().invoke(main, ["demo", "--gateway", "zalo", "--dir", str(tmp_path / "demo")])
    assert result.exit_code != 0 and result.stderr.startswith("error: it is 23:0")
    assert len(result.stderr.splitlines()) == 1 and "--gateway twilio, esms or smpp" in result.stderr
    assert not started and not (tmp_path / "demo").exists()


def test_an_unknown_demo_gateway_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["demo", "--gateway", "sms77", "--dir", str(tmp_path)])
    assert result.exit_code == 2 and "sms77" in result.output


# -- the fakes standalone -------------------------------------------------------------

def _start(name: str) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen([sys.executable, "-m", f"providers.fakes.{name}", "--port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = [proc.stdout.readline() for _ in range({"twilio": 3, "zalo": 1, "esms": 4, "smpp": 3}[name])]  # type: ignore[union-attr]
    return proc, lines


def _value(lines: list[str], key: str) -> str:
    return next(m.group(1) for line in lines if (m := re.search(rf"{key}\s*[=:]\s*(\S+)", line)))


def _ask(name: str, url: str, lines: list[str]) -> None:
    """One real request, answered as the service answers it."""
    if name == "twilio":
        sid, token = _value(lines, "account_sid"), _value(lines, "auth token")
        auth = base64.b64encode(f"{sid}:{token}".encode()).decode()
        req = urllib.request.Request(f"{url}/2010-04-01/Accounts/{sid}.json", headers={"Authorization": f"Basic {auth}"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert json.load(resp)["sid"] == sid
    elif name == "zalo":
        req = urllib.request.Request(f"{url}/message/quota", headers={"access_token": _value(lines, "access_token")})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert json.load(resp)["error"] == 0
    else:
        body = json.dumps({"ApiKey": _value(lines, "api_key"), "SecretKey": _value(lines, "secret_key")}).encode()
        req = urllib.request.Request(f"{url}GetBalance_json", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert json.load(resp)["CodeResponse"] == "100"


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("name", ["twilio", "zalo", "esms", "smpp"])
def test_a_fake_runs_standalone(name: str, stop: signal.Signals) -> None:
    proc, lines = _start(name)
    try:
        assert proc.poll() is None, proc.stderr.read()  # type: ignore[union-attr]
        host, port = re.findall(r"(127\.0\.0\.1):(\d+)", lines[0])[0]
        assert int(port) > 0
        if name == "smpp":
            client = smpplib.client.Client(host, int(port), timeout=5, allow_unknown_opt_params=True)
            client.connect()
            assert client.bind_transceiver(system_id=_value(lines, "system_id"),
                                           password=_value(lines, "password")).status == 0
            client.unbind()
            client.disconnect()
        else:
            _ask(name, re.findall(r"(http://\S+?);?\s", lines[0] + " ")[0], lines)
        proc.send_signal(stop)
        code = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == (0 if stop == signal.SIGINT else -signal.SIGTERM)
    assert "Traceback" not in proc.stderr.read()  # type: ignore[union-attr]
