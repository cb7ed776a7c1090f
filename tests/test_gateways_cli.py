"""`loa gateways check NAME` against each gateway's loopback fake.

The gateways are configured the way an operator configures them: a config.toml
naming environment variables (``*_env``) for the secrets, the variables set, and
the command run through click's CliRunner on the real database.  What reached a
gateway is read from its fake, never from loa's own output.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import write
from sqlalchemy import insert, select
from sqlalchemy.engine import Engine

from loa import db
from loa.campaign import load_one
from loa.cli import main
from loa.config import load
from loa.dispatch import Dispatcher
from loa.plan import plan_run
from providers.fakes.esms import FakeESMS
from providers.fakes.smpp import FakeSMSC
from providers.fakes.twilio import FakeTwilio
from providers.fakes.zalo import FakeZalo

TWILIO_SID = "AC" + "0123456789abcdef" * 2


# -- planning a small campaign (shared with the SMPP end-to-end test) ----------------

def plan_campaign(workdir: Path, engine: Engine, channel: str, gateway: str, phones: list[str], *,
                  sms: str = "Xin chào {{ subscriber.name }}\n", attributes: dict[str, str] | None = None) -> int:
    """A one-channel campaign to ``phones`` through ``gateway``, planned now; its run id.  A run
    sends the templates it was planned with: ``sms`` is the SMS template's text."""
    now = db.utcnow()
    with engine.begin() as conn:
        conn.execute(insert(db.subscribers), [
            {"phone": p, "name": f"Người {i}", "attributes": attributes or {}, "created_at": now, "updated_at": now}
            for i, p in enumerate(phones)
        ])
    if channel == "sms":
        (workdir / "templates" / "sms" / "hello.j2").write_text(sms, encoding="utf-8")
    else:
        write(workdir / "templates" / "zalo" / "hello.toml", """
            template_id = "231677"
            [data]
            customer_name = "{{ subscriber.name }}"
        """)
    write(workdir / "campaigns" / "hello.toml", f"""
        name = "hello"
        channels = ["{channel}"]
        [{channel}]
        template = "{channel}/hello.{'j2' if channel == 'sms' else 'toml'}"
        gateway = "{gateway}"
        [window]
        start = "00:00"
        end = "23:59:59.999999"
    """)
    plan = plan_run(engine, load(workdir / "config.toml"), load_one(workdir / "campaigns", "hello"))
    assert plan.states["planned"] == len(phones)
    return plan.run_id


def outbox_rows(engine: Engine, run_id: int) -> list[tuple[str, str | None]]:
    """(state, provider_id) of the run's rows."""
    O = db.outbox
    with engine.connect() as conn:
        rows = conn.execute(select(O.c.state, O.c.provider_id).where(O.c.run_id == run_id).order_by(O.c.id))
        return [(state, provider_id) for state, provider_id in rows]


def add_gateway(workdir: Path, section: str) -> None:
    with (workdir / "config.toml").open("a", encoding="utf-8") as f:
        f.write("\n" + section.strip() + "\n")


def check(workdir: Path, name: str) -> Result:
    args = ["--config", str(workdir / "config.toml"), "gateways", "check", name]
    return CliRunner().invoke(main, args, catch_exceptions=True)


def closed_port() -> int:
    """A local port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the four gateways, as an operator configures them ------------------------------

@dataclasses.dataclass(frozen=True)
class Case:
    """One gateway type: its fake, its config section, its secrets and what check prints."""

    name: str
    start: Callable[[], Any]                   # a fake, as a context manager
    address: Callable[[Any], str]              # where the config points: URL or port
    section: Callable[[str], str]              # the [gateways.NAME] table for an address
    env: Callable[[Any], dict[str, str]]       # the secrets, right for the fake
    wrong: dict[str, str]                      # secrets the fake refuses
    printed: Callable[[Any], str]              # check's line on success
    auth_code: str                             # the gateway's code for refused credentials


def _url_of(fake: Any) -> str:
    return str(fake.url)


CASES = [
    Case(
        name="twilio",
        start=lambda: FakeTwilio(account_sid=TWILIO_SID, auth_token="right-token"),
        address=_url_of,
        section=lambda url: f"""
            [gateways.twilio]
            type = "twilio"
            account_sid_env = "LOA_TEST_TWILIO_SID"
            auth_token_env = "LOA_TEST_TWILIO_TOKEN"
            from_number = "+15005550006"
            base_url = "{url}"
            timeout = 2
        """,
        env=lambda fake: {"LOA_TEST_TWILIO_SID": fake.account_sid, "LOA_TEST_TWILIO_TOKEN": fake.auth_token},
        wrong={"LOA_TEST_TWILIO_TOKEN": "not-the-token"},
        printed=lambda fake: "twilio: account loa test account (active)",
        auth_code="20003",
    ),
    Case(
        name="zalo",
        start=FakeZalo,
        address=_url_of,
        section=lambda url: f"""
            [gateways.zalo]
            type = "zalo_zns"
            app_id = "fake-app"
            secret_key_env = "LOA_TEST_ZALO_SECRET"
            access_token_env = "LOA_TEST_ZALO_ACCESS"
            refresh_token_env = "LOA_TEST_ZALO_REFRESH"
            base_url = "{url}"
            oauth_url = "{url}"
            timeout = 2
        """,
        env=lambda fake: {"LOA_TEST_ZALO_SECRET": fake.secret_key, "LOA_TEST_ZALO_ACCESS": fake.access_token,
                          "LOA_TEST_ZALO_REFRESH": fake.refresh_token},
        # a token pair from an older authorisation: the access token is refused (-124),
        # and so is the refresh token (-14014)
        wrong={"LOA_TEST_ZALO_ACCESS": "old-at", "LOA_TEST_ZALO_REFRESH": "old-rt"},
        printed=lambda fake: "zalo: quota: 1000 remaining of 1000 daily",
        auth_code="-14014",
    ),
    Case(
        name="esms",
        start=lambda: FakeESMS(api_key="right-key", secret_key="right-secret", balance=250_000),
        address=_url_of,
        section=lambda url: f"""
            [gateways.esms]
            type = "esms"
            api_key_env = "LOA_TEST_ESMS_KEY"
            secret_key_env = "LOA_TEST_ESMS_SECRET"
            brandname = "LOA"
            base_url = "{url}"
            timeout = 2
        """,
        env=lambda fake: {"LOA_TEST_ESMS_KEY": fake.api_key, "LOA_TEST_ESMS_SECRET": fake.secret_key},
        wrong={"LOA_TEST_ESMS_KEY": "wrong-key"},
        printed=lambda fake: "esms: eSMS brandname LOA: balance 250000 VND",
        auth_code="101",
    ),
    Case(
        name="smpp",
        start=lambda: FakeSMSC(system_id="loa", password="secret"),
        address=lambda fake: str(fake.port),
        section=lambda port: f"""
            [gateways.smpp]
            type = "smpp"
            host = "127.0.0.1"
            port = {port}
            system_id = "loa"
            password_env = "LOA_TEST_SMPP_PASSWORD"
            source_addr = "BLUEZONE"
            enquire_link_interval = 0
            timeout = 2
        """,
        env=lambda fake: {"LOA_TEST_SMPP_PASSWORD": fake.password},
        wrong={"LOA_TEST_SMPP_PASSWORD": "guess"},
        printed=lambda fake: f"smpp: bound as loa to 127.0.0.1:{fake.port}",
        auth_code="0x0E",
    ),
]


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    return request.param


@pytest.fixture
def fake(case: Case) -> Iterator[Any]:
    with case.start() as server:
        yield server


@pytest.fixture
def configured(case: Case, fake: Any, workdir: Path, engine: Engine,
               monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Configure ``case``'s gateway at ``address`` (default: its fake), secrets overridden by ``env``."""

    def configure(address: str | None = None, **env: str) -> None:
        add_gateway(workdir, case.section(address or case.address(fake)))
        for name, value in (case.env(fake) | env).items():
            monkeypatch.setenv(name, value)

    return configure


def sent_nothing(fake: Any) -> bool:
    if isinstance(fake, FakeZalo):
        return not fake.sent
    if isinstance(fake, FakeSMSC):
        return not fake.submits
    if isinstance(fake, FakeTwilio):
        return not fake.sends()
    return not fake.sends        # eSMS: send calls by RequestId


def contacted(fake: Any) -> bool:
    return bool(fake.connections_opened if isinstance(fake, FakeSMSC) else fake.requests)


def one_error_line(result: Result) -> str:
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: gateway "), line
    return line


# -- each gateway ---------------------------------------------------------------------

def test_check_prints_what_the_gateway_said(case: Case, fake: Any, workdir: Path,
                                            configured: Callable[..., None]) -> None:
    configured()
    result = check(workdir, case.name)
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout.strip() == case.printed(fake)
    assert sent_nothing(fake)
    if isinstance(fake, FakeSMSC):   # the bind was given back
        assert [b["status"] for b in fake.binds] == [0] and fake.unbinds == 1


def test_wrong_credentials_name_the_gateways_code(case: Case, fake: Any, workdir: Path,
                                                  configured: Callable[..., None]) -> None:
    configured(**case.wrong)
    line = one_error_line(check(workdir, case.name))
    assert f"code {case.auth_code})" in line, line
    for secret in case.wrong.values():
        assert secret not in line
    assert sent_nothing(fake)


def test_gateway_down_is_one_clear_line(case: Case, workdir: Path, configured: Callable[..., None]) -> None:
    port = closed_port()
    configured(str(port) if case.name == "smpp" else f"http://127.0.0.1:{port}/")
    line = one_error_line(check(workdir, case.name))
    assert f"127.0.0.1:{port}" in line, line
    assert "unreachable" in line or "cannot connect" in line, line


# -- the check and the workers share one token chain --------------------------------

@pytest.mark.parametrize("case", [c for c in CASES if c.name == "zalo"], ids=["zalo"])
def test_zalo_check_then_send_spend_the_refresh_token_once(fake: FakeZalo, workdir: Path, engine: Engine,
                                                          configured: Callable[..., None],
                                                          vietnam_daytime: datetime) -> None:
    configured()
    fake.expire_token()

    result = check(workdir, "zalo")
    assert result.exit_code == 0, (result.output, result.exception)
    assert fake.refreshes == 1          # the check refreshed, and stored the rotated pair

    run_id = plan_campaign(workdir, engine, "zalo", "zalo", ["+84912000001", "+84912000002"])
    dispatcher = Dispatcher(engine, load(workdir / "config.toml"), threads=2)
    try:
        summary = dispatcher.run_until_empty()
    finally:
        dispatcher.pool.close()

    assert summary.paused == {}, summary.paused
    assert sorted(outbox_rows(engine, run_id)) == sorted(("sent", m["msg_id"]) for m in fake.sent)
    assert len(fake.refresh_requests) == 1 and fake.refresh_attempts == 1
    assert {r.headers["access_token"] for r in fake.template_requests} == {"fake-at-1"}
    assert sorted(m["phone"] for m in fake.sent) == ["84912000001", "84912000002"]


def test_check_without_a_database_refuses_before_touching_the_gateway(
        case: Case, fake: Any, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A check may rotate credentials (Zalo's single-use refresh token): with nowhere to
    # keep them it must not run.  Configuration problems are still reported first.
    monkeypatch.setenv("LOA_DATABASE_URL", f"sqlite:///{workdir / 'not-initialised.db'}")
    add_gateway(workdir, case.section(case.address(fake)))
    for name, value in case.env(fake).items():
        monkeypatch.delenv(name, raising=False)
    result = check(workdir, case.name)
    assert result.exit_code == 2 and "is not set" in result.stderr, result.output
    for name, value in case.env(fake).items():
        monkeypatch.setenv(name, value)
    result = check(workdir, case.name)
    assert result.exit_code == 1 and "run `loa init` first" in result.stderr, result.output
    assert not contacted(fake)


# -- what the gateway type declares, checked against what the service says ------------

@pytest.fixture
def standalone_simulator() -> Iterator[Callable[..., str]]:
    """``python -m providers.simulator`` as an operator starts it, on a free port; its URL."""
    import subprocess
    import sys

    started: list[subprocess.Popen[str]] = []

    def start(*flags: str) -> str:
        proc = subprocess.Popen([sys.executable, "-m", "providers.simulator", "--port", "0", *flags],
                                stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
        started.append(proc)
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("simulator listening on http://"), line
        return line.split()[3]

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(timeout=60)


def test_check_refuses_a_simulator_that_does_not_deduplicate_although_its_type_says_it_does(
        workdir: Path, engine: Engine, standalone_simulator: Callable[..., str]) -> None:
    """simulator_http re-sends a message whose call may have arrived, on the promise that the
    server deduplicates by key; a server started with --no-dedupe breaks it, and says so."""
    url = standalone_simulator("--no-dedupe")
    add_gateway(workdir, f'[gateways.http]\ntype = "simulator_http"\nurl = "{url}"\n')
    add_gateway(workdir, f'[gateways.plain]\ntype = "simulator_http_nodedupe"\nurl = "{url}"\n')

    result = check(workdir, "http")
    assert result.exit_code == 1, (result.output, result.exception)
    line = one_error_line(result)
    assert f"gateway http: the simulator at {url} does not deduplicate by key (started with --no-dedupe)" in line
    assert "gateway type 'simulator_http' re-sends" in line and 'type = "simulator_http_nodedupe"' in line, line

    # a type that never re-sends an ambiguous call is safe on it
    result = check(workdir, "plain")
    assert result.exit_code == 0, (result.output, result.exception)
    assert "does not deduplicate by key" in result.stdout


def test_check_accepts_a_simulator_that_deduplicates(workdir: Path, engine: Engine,
                                                     standalone_simulator: Callable[..., str]) -> None:
    url = standalone_simulator()
    add_gateway(workdir, f'[gateways.http]\ntype = "simulator_http"\nurl = "{url}"\n')
    result = check(workdir, "http")
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout.strip() == f"http: simulator at {url}: ok, deduplicates by key, 0 send calls received"


def test_no_setting_can_make_a_gateway_type_deduplicate(workdir: Path) -> None:
    """The old `dedupe` setting of simulator_http defaulted to true whatever the server did."""
    add_gateway(workdir, '[gateways.http]\ntype = "simulator_http"\nurl = "http://127.0.0.1:9"\ndedupe = true\n')
    result = check(workdir, "http")
    assert result.exit_code == 2 and "Traceback" not in result.output, (result.output, result.exception)
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and "config.toml: gateways.http.dedupe: unknown setting for gateway type " \
        "'simulator_http'" in line, line
