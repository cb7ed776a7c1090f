"""The ``loa`` command line, end to end on the real database.

Most commands run in-process through click's CliRunner (stdout and stderr kept
apart); a few run the installed console script in a subprocess, to see exactly
what a user sees.  Every user error must be one line on stderr, without a
traceback, and a non-zero exit status.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select

from conftest import AREAS_CSV, write
from loa import db
from loa.cli import main

LOA = Path(sys.executable).parent / "loa"

CAMPAIGN = """
name = "remind"
description = "Nhắc cài Bluezone"
channels = ["sms"]
holdout = 0.2
suppress_events = ["installed"]
[segment]
areas = ["Sơn La"]
[sms]
template = "sms/remind.j2"
[window]                          # open all day: the send window is tested in test_policy
start = "00:00"
end = "24:00"
[goal]
event = "installed"
share = 0.5
of = "population"
"""


# -- helpers -------------------------------------------------------------------

def invoke(workdir: Path | None, *args: str) -> Result:
    prefix = ["--config", str(workdir / "config.toml")] if workdir is not None else []
    return CliRunner().invoke(main, [*prefix, *args], catch_exceptions=True)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def one_line_error(result: Result, *fragments: str, code: int | None = None) -> str:
    """Assert the command failed cleanly with one line on stderr; return that line."""
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def run_script(*args: str, cwd: Path, env: dict[str, str] | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("LOA_CONFIG", "LOA_DATABASE_URL")}
    return subprocess.run([str(LOA), *args], cwd=cwd, env=base | (env or {}), capture_output=True,
                          text=True, timeout=timeout, check=False)


def subscribers_csv(folder: Path, n: int = 30, extra: str = "") -> Path:
    lines = ["phone,name,area,smartphone"]
    lines += [f"0912{i:06d},Người {i},{'116' if i % 2 else '125'},yes" for i in range(n)]
    return write(folder / "subscribers.csv", "\n".join(lines) + "\n" + extra)


def engine_of(workdir: Path) -> Any:
    return db.make_engine(os.environ["LOA_DATABASE_URL"])


def count(engine: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(db.outbox).where(*where)) or 0


# -- the whole flow ------------------------------------------------------------------

def test_end_to_end(workdir: Path, tmp_path: Path) -> None:
    r = ok(invoke(workdir, "init"))
    assert re.match(r"(created|checked) loa schema in ", r.stdout)

    r = ok(invoke(workdir, "import", "areas", str(write(tmp_path / "areas.csv", AREAS_CSV))))
    assert "4 rows read, 4 imported (4 new, 0 updated), 0 rejected" in r.stdout

    subs = subscribers_csv(tmp_path, 30, extra="0123,Sai Số,116,yes\n")
    r = ok(invoke(workdir, "import", "subscribers", str(subs)))
    assert "31 rows read, 30 imported (30 new, 0 updated), 1 rejected" in r.stdout
    assert re.search(r"rejected .*subscribers\.csv:32: phone: ", r.stderr)
    assert (tmp_path / "subscribers.rejects.csv").is_file()

    events = write(tmp_path / "events.csv", """
        phone,type,time
        0912000000,installed,2020-08-10T08:00:00+07:00
        0912000001,installed,2020-08-10 09:00
    """)
    r = ok(invoke(workdir, "import", "events", str(events)))
    assert "2 rows read, 2 imported" in r.stdout

    write(workdir / "templates" / "sms" / "remind.j2", "Chào {{ subscriber.name }}, hãy cài Bluezone.\n")
    write(workdir / "campaigns" / "remind.toml", CAMPAIGN)
    r = ok(invoke(workdir, "campaigns", "validate"))
    assert "1 campaign(s) valid" in r.stdout

    r = ok(invoke(workdir, "campaigns", "preview", "remind", "-n", "2"))
    assert "remind" in r.stdout and "Nhắc cài Bluezone" in r.stdout
    assert r.stdout.count("hãy cài Bluezone.") == 2
    assert "If run now" in r.stdout

    r = ok(invoke(workdir, "campaigns", "run", "remind"))
    m = re.search(r"run (\d+) of remind planned 30 rows: audience 30, to send (\d+), held out (\d+), "
                  r"suppressed 2 \(2 event:installed\)", r.stdout)
    assert m, r.stdout
    run_id, to_send, held = (int(x) for x in m.groups())
    assert to_send + held == 28 and held > 0

    engine = engine_of(workdir)
    assert count(engine, db.outbox.c.run_id == run_id) == 30

    r = ok(invoke(workdir, "send"))
    m = re.search(r"sent: (\d+) sent; (\d+) receipts, (\d+) responses", r.stdout)
    assert m, r.stdout
    sent, receipts, responses = (int(x) for x in m.groups())
    assert sent == receipts == to_send
    o = db.outbox
    delivered = count(engine, o.c.state == "delivered")
    assert count(engine, o.c.state.in_(("delivered", "undelivered"))) == to_send
    assert count(engine, o.c.state == "planned") == 0

    r = ok(invoke(workdir, "send"))
    assert "nothing was due" in r.stdout

    data = json.loads(ok(invoke(workdir, "report", "remind", "--format", "json")).stdout)
    total = data["total"]
    assert data["campaign"] == "remind" and data["level"] == "district"
    assert [row["code"] for row in data["rows"]] == ["125", "116"]
    assert sum(row["audience"] for row in data["rows"]) == total["audience"] == 30
    assert (total["suppressed"], total["held_out"], total["sent"], total["delivered"]) == (2, held, to_send, delivered)
    with engine.connect() as conn:
        installs = conn.scalar(select(func.count()).select_from(db.events).where(db.events.c.type == "installed"))
    assert installs == 2 + responses
    assert total["installed_total"] == installs
    assert total["installed_delivered"] == responses          # the simulator's installs follow delivery
    assert total["population"] == 1000
    assert total["progress"] == pytest.approx(installs / 1000 / 0.5)

    rows = list(csv.DictReader(io.StringIO(ok(invoke(workdir, "report", "remind", "--format", "csv")).stdout)))
    assert [row["code"] for row in rows] == ["125", "116", ""]
    for got, want in zip(rows, [*data["rows"], total], strict=True):
        for name in ("audience", "held_out", "suppressed", "sent", "delivered", "failed", "installed_total"):
            assert int(got[name]) == want[name]

    table = ok(invoke(workdir, "report")).stdout       # the latest campaign, as a table, in Vietnamese
    for text in ("remind: theo quận/huyện", "Thành phố Sơn La", "Huyện Mai Sơn", "Tổng", "đối tượng"):
        assert text in table
    one_line_error(invoke(workdir, "report", "remind", "--level", "ward"), "unknown area level 'ward'", code=2)
    engine.dispose()


def test_bracketed_names_are_printed_as_they_are(workdir: Path, tmp_path: Path) -> None:
    ok(invoke(workdir, "init"))
    areas = write(tmp_path / "areas.csv", """
        code,name,parent,level,population
        1,Tỉnh [Thử],,province,100
        2,Khu [A] mới,1,district,60
        3,Khu [/b],1,district,30
    """)
    ok(invoke(workdir, "import", "areas", str(areas)))
    subs = write(tmp_path / "subs.csv", """
        phone,area
        0912000001,2
        0912000002,3
        0912000003,[/x]
    """)
    r = ok(invoke(workdir, "import", "subscribers", str(subs)))
    assert "'[/x]'" in r.stderr                          # the reject, verbatim, and no crash
    write(workdir / "templates" / "sms" / "t.j2", "Xin chào\n")
    write(workdir / "campaigns" / "t.toml", """
        name = "t"
        channels = ["sms"]
        [sms]
        template = "sms/t.j2"
    """)
    ok(invoke(workdir, "campaigns", "run", "t"))
    ok(invoke(workdir, "send"))
    table = ok(invoke(workdir, "report", "t")).stdout
    assert "Khu [A] mới" in table and "Khu [/b]" in table
    note = "Tỉnh [Thử]: population given as 100, but its 2 district areas add up to 90"
    assert note in " ".join(table.split())


# -- errors: one line, no traceback -------------------------------------------------------

def test_unknown_gateway_in_a_campaign(workdir: Path) -> None:
    ok(invoke(workdir, "init"))
    write(workdir / "templates" / "sms" / "t.j2", "Xin chào\n")
    write(workdir / "campaigns" / "t.toml", """
        name = "t"
        channels = ["sms"]
        [sms]
        template = "sms/t.j2"
        gateway = "nowhere"
    """)
    one_line_error(invoke(workdir, "campaigns", "run", "t"), "unknown gateway 'nowhere'", "jsonl, sim", code=2)
    one_line_error(invoke(workdir, "campaigns", "preview", "t"), "unknown gateway 'nowhere'")
    one_line_error(invoke(workdir, "gateways", "check", "nowhere"), "unknown gateway 'nowhere'", code=2)
    with (workdir / "config.toml").open("a", encoding="utf-8") as f:
        f.write('[gateways.carrier-x]\ntype = "carrierx"\n')
    one_line_error(invoke(workdir, "gateways", "check", "carrier-x"), "unknown gateway type 'carrierx'",
                   "known types: ")


def test_missing_secret_for_a_gateway(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOA_TEST_CLI_TOKEN", raising=False)
    with (workdir / "config.toml").open("a", encoding="utf-8") as f:
        f.write('[gateways.remote]\ntype = "simulator_http"\nurl = "http://127.0.0.1:9"\n'
                'token_env = "LOA_TEST_CLI_TOKEN"\n')
    line = one_line_error(invoke(workdir, "gateways", "check", "remote"), "LOA_TEST_CLI_TOKEN", "is not set",
                          code=2)
    assert "gateways.remote.token_env" in line
    # sending through it pauses it: the messages stay planned, and the exit status says so
    ok(invoke(workdir, "init"))
    ok(invoke(workdir, "import", "subscribers", str(write(workdir / "s.csv", "phone\n0912000001\n"))))
    write(workdir / "templates" / "sms" / "t.j2", "Xin chào\n")
    write(workdir / "campaigns" / "t.toml", """
        name = "t"
        channels = ["sms"]
        [sms]
        template = "sms/t.j2"
        gateway = "remote"
        [window]
        start = "00:00"
        end = "24:00"
    """)
    ok(invoke(workdir, "campaigns", "run", "t"))
    r = invoke(workdir, "send")
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.stdout.startswith("sent: 1 planned;")
    assert r.stderr.splitlines() == [f"gateway remote paused: {line.removeprefix('error: ')}; "
                                     "its messages stay planned"]
    # with the secret set, the check gets as far as the (closed) port, and says so in one line
    monkeypatch.setenv("LOA_TEST_CLI_TOKEN", "s3cret")
    line = one_line_error(invoke(workdir, "gateways", "check", "remote"), "gateway remote: ", "unreachable")
    assert "remote: remote:" not in line and "s3cret" not in line
    r = ok(invoke(workdir, "gateways", "check", "sim"))
    assert r.stdout.startswith("sim: simulator seed=7")


def test_files_that_cannot_be_imported(workdir: Path, tmp_path: Path) -> None:
    ok(invoke(workdir, "init"))
    one_line_error(invoke(workdir, "import", "areas", str(tmp_path / "nope.csv")), "nope.csv")
    folder = tmp_path / "a-folder.csv"
    folder.mkdir()
    one_line_error(invoke(workdir, "import", "areas", str(folder)), "a-folder.csv: not a file")
    utf16 = tmp_path / "utf16.csv"
    utf16.write_bytes("code,name\n14,Sơn La\n".encode("utf-16"))
    one_line_error(invoke(workdir, "import", "areas", str(utf16)), "utf16.csv", "UTF-8")
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    one_line_error(invoke(workdir, "import", "areas", str(empty)), "empty")
    # a rejects file that cannot be written
    subs = write(tmp_path / "subs.csv", "phone\n0123\n")
    one_line_error(invoke(workdir, "import", "subscribers", str(subs), "--rejects",
                          str(tmp_path / "no-such-dir" / "r.csv")), "no-such-dir", "No such file")


def test_csv_with_a_wrong_header(workdir: Path, tmp_path: Path) -> None:
    ok(invoke(workdir, "init"))
    bad = write(tmp_path / "areas.csv", "kode,ten\n14,Sơn La\n")
    one_line_error(invoke(workdir, "import", "areas", str(bad)), "wrong header for areas", "missing code, name",
                   code=2)
    bad = write(tmp_path / "events.csv", "phone,type\n0912000001,installed\n")
    one_line_error(invoke(workdir, "import", "events", str(bad)), "wrong header for events", "missing time")


def test_invalid_campaign(workdir: Path) -> None:
    ok(invoke(workdir, "init"))
    write(workdir / "templates" / "sms" / "t.j2", "Xin chào\n")
    write(workdir / "campaigns" / "bad.toml", """
        name = "bad"
        channels = ["sms"]
        holdout = 2
        [sms]
        template = "sms/t.j2"
    """)
    write(workdir / "campaigns" / "nosms.toml", 'name = "nosms"\nchannels = ["sms"]\n')
    one_line_error(invoke(workdir, "campaigns", "run", "bad"), "bad.toml: holdout: must be a fraction", code=2)
    one_line_error(invoke(workdir, "campaigns", "run", "nosms"), "missing [sms] table")
    # validate lists every problem, one per line, then says how many
    r = invoke(workdir, "campaigns", "validate")
    assert r.exit_code != 0 and "Traceback" not in r.output
    lines = r.stderr.splitlines()
    assert len(lines) == 3
    assert any("bad.toml: holdout" in x for x in lines) and any("missing [sms] table" in x for x in lines)
    assert lines[-1].startswith("error: 2 problem(s) in ")


def test_unknown_campaign_name(workdir: Path) -> None:
    ok(invoke(workdir, "init"))
    one_line_error(invoke(workdir, "campaigns", "run", "nosuch"), "no campaign named 'nosuch'", code=2)
    one_line_error(invoke(workdir, "campaigns", "preview", "nosuch"), "no campaign named 'nosuch'")
    one_line_error(invoke(workdir, "report", "nosuch"), "no campaign named 'nosuch'", "has ever run", code=2)
    one_line_error(invoke(workdir, "report"), "no campaign has run yet")


def test_no_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOA_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    one_line_error(invoke(None, "campaigns", "list"), "no configuration found", code=2)
    one_line_error(invoke(None, "--config", str(tmp_path / "missing.toml"), "send"), "missing.toml", "does not exist")
    monkeypatch.setenv("LOA_CONFIG", str(tmp_path / "gone.toml"))
    one_line_error(invoke(None, "report"), "$LOA_CONFIG", "gone.toml")
    broken = write(tmp_path / "broken.toml", "[gateways\n")
    one_line_error(invoke(None, "--config", str(broken), "send"), "not valid TOML")


def test_database_not_initialised(workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOA_DATABASE_URL", f"sqlite:///{tmp_path / 'fresh.db'}")
    areas = write(tmp_path / "areas.csv", AREAS_CSV)
    write(workdir / "templates" / "sms" / "t.j2", "Xin chào\n")
    write(workdir / "campaigns" / "t.toml", 'name = "t"\nchannels = ["sms"]\n[sms]\ntemplate = "sms/t.j2"\n')
    for args in (("send",), ("report",), ("import", "areas", str(areas)), ("campaigns", "run", "t")):
        one_line_error(invoke(workdir, *args), "has no loa schema", "loa init")
    r = ok(invoke(workdir, "init"))
    assert r.stdout.startswith("created loa schema in sqlite:///")
    assert ok(invoke(workdir, "init")).stdout.startswith("checked loa schema")


def test_the_installed_script_reports_errors_in_one_line(tmp_path: Path) -> None:
    r = run_script("campaigns", "list", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.splitlines() == ["error: no configuration found: pass --config FILE, set $LOA_CONFIG, "
                                     "or copy config.example.toml to ./config.toml"]
    write(tmp_path / "config.toml", 'database_url = "sqlite:///loa.db"\n')
    r = run_script("import", "areas", "nope.csv", cwd=tmp_path)
    assert r.returncode != 0 and len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ")


def test_demo_json(tmp_path: Path) -> None:
    r = run_script("demo", "--subscribers", "5000", "--format", "json", "--dir", str(tmp_path / "demo"),
                   cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["campaign"] == "bluezone-reminder" and data["level"] == "district"
    assert len(data["rows"]) == 12
    engine = db.make_engine(f"sqlite:///{tmp_path / 'demo' / 'loa.db'}")
    try:
        with engine.connect() as conn:
            sonla = conn.scalar(select(db.areas.c.path).where(db.areas.c.code == "14"))
            imported = conn.scalar(
                select(func.count()).select_from(db.subscribers)
                .where(db.subscribers.c.area_id.in_(select(db.areas.c.id).where(db.areas.c.path.startswith(sonla))))
            )
    finally:
        engine.dispose()
    assert imported == 5000
    assert sum(row["audience"] for row in data["rows"]) == data["total"]["audience"] == imported
    assert sum(row["sent"] for row in data["rows"]) > 0
    # a demo folder is used once
    again = run_script("demo", "--subscribers", "1000", "--format", "json", "--dir", str(tmp_path / "demo"),
                       cwd=tmp_path)
    assert again.returncode != 0 and again.stderr.startswith("error: ") and len(again.stderr.splitlines()) == 1


def test_send_says_why_messages_failed_grouped_by_reason(workdir: Path, tmp_path: Path) -> None:
    ok(invoke(workdir, "init"))
    ok(invoke(workdir, "import", "areas", str(write(tmp_path / "areas.csv", AREAS_CSV))))
    ok(invoke(workdir, "import", "subscribers", str(subscribers_csv(tmp_path, 5, extra="0912000099,An,116,no\n"))))
    from loa.campaign import load_one
    from loa.config import load
    from loa.plan import plan_run

    # a broken template, planned without the checks of `loa campaigns run` (which refuses it): every
    # message fails at send, for one of two reasons
    write(workdir / "templates" / "sms" / "remind.j2", "{% if attr.smartphone == 'yes' %}{{ x }}{% else %}{{ y }}"
          "{% endif %}\n")
    write(workdir / "campaigns" / "remind.toml", CAMPAIGN.replace("holdout = 0.2", "holdout = 0"))
    config = load(workdir / "config.toml")
    engine = db.make_engine(config.database_url)
    plan_run(engine, config, load_one(config.campaigns_dir, "remind"))
    engine.dispose()
    r = ok(invoke(workdir, "send"))
    assert r.stdout.startswith("sent: 6 failed (5: template 'sms/remind.j2': 'x' is undefined; "
                               "1: template 'sms/remind.j2': 'y' is undefined); "), r.stdout


def test_failures_are_grouped_most_frequent_first_and_the_rest_counted() -> None:
    from collections import Counter

    from loa.cli import FAILURE_GROUPS, _failures

    assert _failures(Counter({"21211: invalid number": 3})) == " (21211: invalid number)"
    many = Counter({f"reason {i}": 10 + i for i in range(FAILURE_GROUPS + 2)})
    shown = _failures(many)
    assert shown.startswith(f" ({10 + FAILURE_GROUPS + 1}: reason {FAILURE_GROUPS + 1}; ")
    assert shown.endswith("; 21: 2 other reasons)"), shown
