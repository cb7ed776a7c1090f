"""The configuration is checked once, when it loads, against its declared schema.

A bad value is found before anything runs: the command exits with code 2 and prints
one ``error:`` line per problem, naming the file, the key path and the reason (with
a suggestion for a misspelt key or gateway type), never a traceback.  The commands
run through click's CliRunner, as in test_cli.py, or as a real process where the
old behaviour was to keep running (``loa serve``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import write
from sqlalchemy.engine import Engine

from loa.cli import main


def config(workdir: Path, body: str) -> Path:
    """config.toml in ``workdir``: simulator gateways that work, plus ``body``."""
    return write(workdir / "config.toml", 'timezone = "Asia/Ho_Chi_Minh"\n' + body)


def invoke(workdir: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["--config", str(workdir / "config.toml"), *args], env=env,
                              catch_exceptions=True)


def problem_lines(result: Result, count: int) -> list[str]:
    """The command refused the configuration cleanly: exit 2, ``count`` error lines, no traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == count, result.stderr
    assert all(line.startswith("error: ") for line in lines), lines
    return lines


# -- each value that used to fail late, or not at all -------------------------------------

@pytest.mark.parametrize(("body", "fragments"), [
    pytest.param('[send]\nthreads = "eight"\n', ["send.threads: must be a whole number", "'eight'"], id="threads-word"),
    pytest.param("[send]\nthreads = -1\n", ["send.threads: must be a whole number", "at least 1", "got -1"],
                 id="threads-negative"),
    pytest.param('database_url = "mysql://x"\n',
                 ["database_url: unsupported database 'mysql'", "SQLite", "PostgreSQL"], id="mysql"),
    pytest.param("[serve]\nport = 99999\n", ["serve.port: must be a port number from 1 to 65535", "99999"],
                 id="port-out-of-range"),
    pytest.param('[gateways.sms]\ntype = "twilo"\n',
                 ["gateways.sms.type: unknown gateway type 'twilo'", "did you mean 'twilio'?", "known types: "],
                 id="gateway-type-typo"),
])
def test_send_refuses_a_bad_configuration_before_sending(engine: Engine, workdir: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         body: str, fragments: list[str]) -> None:
    """`loa send` on a database that is ready: the configuration's problem stops it, as one line."""
    if "database_url" in body:
        monkeypatch.delenv("LOA_DATABASE_URL")   # the file's URL is the one used
    path = config(workdir, body)
    [line] = problem_lines(invoke(workdir, "send"), 1)
    assert line.startswith(f"error: {path}: "), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)


def test_every_problem_is_its_own_line(workdir: Path) -> None:
    config(workdir, """
        [send]
        threads = "eight"
        limiter = "shared"
        [serve]
        port = 99999
        [gateways.sms]
        type = "twilo"
        [gateways.tw]
        type = "twilio"
        acount_sid = "AC00000000000000000000000000000000"
        auth_token = "s3cr3t-value"
    """.replace("\n        ", "\n"))
    result = invoke(workdir, "gateways", "list")
    lines = problem_lines(result, 7)
    text = "\n".join(lines)
    for fragment in ("send.threads: ", 'send.limiter: must be "database"', "serve.port: ",
                     "gateways.sms.type: unknown gateway type 'twilo', did you mean 'twilio'?",
                     "gateways.tw.acount_sid: unknown setting for gateway type 'twilio', did you mean 'account_sid'?",
                     'gateways.tw.auth_token: literal secrets are not allowed', 'auth_token_env = "VARIABLE_NAME"',
                     "gateways.tw: missing required setting 'account_sid'"):
        assert fragment in text, (fragment, text)
    assert "s3cr3t-value" not in result.output


def test_an_unknown_gateway_type_is_never_listed_as_active(workdir: Path) -> None:
    config(workdir, '[gateways.sim]\ntype = "simulator"\n[gateways.sms]\ntype = "twilo"\n')
    result = invoke(workdir, "gateways", "list")
    problem_lines(result, 1)
    assert "active" not in result.stdout


def test_serve_refuses_a_port_out_of_range_instead_of_wrapping_it(engine: Engine, workdir: Path) -> None:
    """Port 99999 used to be served as 99999 % 65536 = 34463.  A real process: were it to start
    serving, the timeout (generous, only there to catch that) fails the test."""
    path = config(workdir, "[serve]\nhost = \"127.0.0.1\"\nport = 99999\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    env.pop("LOA_CONFIG", None)
    try:
        done = subprocess.run([sys.executable, "-m", "loa", "--config", str(path), "serve", "--no-scheduler"],
                              capture_output=True, text=True, env=env, timeout=60, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"loa serve kept running with port = 99999: {exc.stdout!r}")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "serving" not in done.stdout
    [line] = done.stderr.splitlines()
    assert line == f"error: {path}: serve.port: must be a port number from 1 to 65535, got 99999", line


def test_loa_config_pointing_at_a_directory_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["gateways", "list"], env={"LOA_CONFIG": str(folder)})
    [line] = problem_lines(result, 1)
    assert f"$LOA_CONFIG points to {folder}, which is a directory" in line, line
    assert "does not exist" not in line


def test_config_option_pointing_at_a_directory_says_so(tmp_path: Path) -> None:
    from loa.config import load
    from loa.errors import ConfigError

    with pytest.raises(ConfigError, match="is a directory, not a configuration file"):
        load(tmp_path)


# -- no key escapes the schema ---------------------------------------------------------------

@pytest.mark.parametrize(("body", "path", "suggestion"), [
    ('timezon = "Asia/Ho_Chi_Minh"\n', "timezon", "timezone"),
    ("[send]\nthread = 4\n", "send.thread", "threads"),
    ("[serve]\nprot = 8080\n", "serve.prot", "port"),
    ("[policy]\nfrequency_hour = 24\n", "policy.frequency_hour", "frequency_hours"),
    ('[digest]\nfolder = "reports"\nformat = ["csv"]\n', "digest.format", "formats"),
    ('[defaults]\nsms_gatway = "sim"\n', "defaults.sms_gatway", "sms_gateway"),
    ('[gateways.sim]\ntype = "simulator"\nseeds = 3\n', "gateways.sim.seeds", "seed"),
])
def test_every_table_refuses_a_key_it_does_not_declare(workdir: Path, body: str, path: str, suggestion: str) -> None:
    config(workdir, body)
    [line] = problem_lines(invoke(workdir, "gateways", "list"), 1)
    assert f": {path}: unknown " in line and f"did you mean {suggestion!r}?" in line, line


@pytest.mark.parametrize(("setting", "reason"), [
    ("delivery_rate = 1.5", "gateways.sim.delivery_rate: must be a number (>= 0, <= 1), got 1.5"),
    ('seed = "one"', "gateways.sim.seed: must be a whole number, got 'one'"),
    ("latency_ms = -5", "gateways.sim.latency_ms: must be a number (>= 0), got -5"),
])
def test_gateway_settings_are_checked_against_the_adapters_declarations(workdir: Path, setting: str,
                                                                        reason: str) -> None:
    config(workdir, f'[gateways.sim]\ntype = "simulator"\n{setting}\n')
    [line] = problem_lines(invoke(workdir, "gateways", "list"), 1)
    assert line.endswith(reason), line


def test_a_database_url_from_the_environment_is_checked_too(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config(workdir, "")
    monkeypatch.setenv("LOA_DATABASE_URL", "mysql://loa:pw@db/loa")
    [line] = problem_lines(invoke(workdir, "status"), 1)
    assert line.startswith("error: $LOA_DATABASE_URL: unsupported database 'mysql'"), line
    assert "pw" not in line
