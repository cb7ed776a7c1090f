"""Shared fixtures: a real database (SQLite file, or PostgreSQL when
$LOA_TEST_DATABASE_URL is set) and a configuration folder per test.

Time.  Every test runs on the real clock, the same one as the ``loa`` processes it
starts and the database server it talks to, so none of them can disagree about what
time it is.  The hour is never assumed:

* A campaign that a test sends and that is not about the send window opens it all day
  (``[window] start = "00:00", end = "24:00"``); schedules are computed from the real
  clock (``db.utcnow()``), in the test and in its subprocesses alike.
* A test about the time of day itself (send windows, Zalo's night, frequency caps,
  cron triggers) moves this process's clock to the moment it needs with time-machine,
  and ``vietnam_daytime`` does so for the few in-process tests that send by Zalo, whose
  22:00-06:00 rule no campaign can lift.  Such a test runs everything in this process:
  a subprocess would keep the real clock.

The whole suite is checked at Vietnam's night with ``.ci/vietnam-time``, which moves the
clock of every Python process of the tree at once (tests/README.md).
"""

from __future__ import annotations

import json
import os
import textwrap
import uuid
from collections.abc import Iterator
from datetime import datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url

from loa import db
from loa.config import Config, load

PG_URL = os.environ.get("LOA_TEST_DATABASE_URL")
# LOA_TEST_PARTITIONED=1 (PostgreSQL): the suite runs against an outbox partitioned by month of
# runs (`loa db partition`), each test's runs in this month's partition
PARTITIONED = os.environ.get("LOA_TEST_PARTITIONED") == "1"
ROOT = Path(__file__).resolve().parent.parent


def pytest_report_header(config: pytest.Config) -> str:
    outbox = ", outbox partitioned by month" if PG_URL and PARTITIONED else ""
    return f"loa database: {db.redact(PG_URL) if PG_URL else 'SQLite (temporary files)'}{outbox}"


VIETNAM = ZoneInfo("Asia/Ho_Chi_Minh")


@pytest.fixture
def vietnam_daytime() -> Iterator[datetime]:
    """This process's clock at 10:00 today in Vietnam, ticking; the moment it starts at.

    Only for tests that run everything in this process (see the module's docstring):
    its subprocesses, and the database server, keep the real clock."""
    import time_machine

    start = datetime.combine(datetime.now(VIETNAM).date(), time(10), VIETNAM)
    with time_machine.travel(start, tick=True):
        yield start


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str | None]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    if not PG_URL:
        yield None
        return
    admin = db.make_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"loa_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    engine = db.make_engine(url)
    db.create_schema(engine)
    if PARTITIONED:
        from loa import partitions

        partitions.partition(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def database_url(pg_database: str | None, tmp_path: Path) -> Iterator[str]:
    if pg_database is None:
        yield f"sqlite:///{tmp_path / 'loa.db'}"
        return
    engine = db.make_engine(pg_database)
    tables = ", ".join(t.name for t in db.metadata.sorted_tables if t.name != "loa_meta")
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        # loa_meta keeps the schema's version; whether campaigns were applied is the test's own
        conn.execute(text("DELETE FROM loa_meta WHERE key = 'campaigns_source'"))
    if PARTITIONED:   # the runs' ids restarted at 1: back to this month's block
        from loa import partitions

        partitions.open_ahead(engine)
    engine.dispose()
    yield pg_database


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = db.make_engine(database_url)
    db.create_schema(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def workdir(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with config.toml (simulator gateways), campaigns/ and templates/."""
    monkeypatch.delenv("LOA_CONFIG", raising=False)
    monkeypatch.setenv("LOA_DATABASE_URL", database_url)
    (tmp_path / "campaigns").mkdir()
    (tmp_path / "templates" / "sms").mkdir(parents=True)
    (tmp_path / "templates" / "zalo").mkdir(parents=True)
    (tmp_path / "config.toml").write_text(textwrap.dedent("""
        timezone = "Asia/Ho_Chi_Minh"
        [defaults]
        sms_gateway = "sim"
        zalo_gateway = "sim"
        [gateways.sim]
        type = "simulator"
        rate = 100000
        seed = 7
        delivery_rate = 0.9
        install_rate = 0.2
        [gateways.jsonl]
        type = "file"
        path = "sent.jsonl"
        [send]
        threads = 4
        batch_size = 200
    """), encoding="utf-8")
    return tmp_path


@pytest.fixture
def config(workdir: Path) -> Config:
    return load(workdir / "config.toml")


AREAS_CSV = """code,name,parent,level,population,population_as_of
14,Sơn La,,province,1000,2020-08-17
116,Thành phố Sơn La,14,district,400,2020-08-17
125,Huyện Mai Sơn,14,district,600,2020-08-17
66,Đắk Nông,,province,500,2020-08-11
"""


def write(path: Path, content: str, encoding: str = "utf-8") -> Path:
    path.write_text(textwrap.dedent(content).lstrip("\n"), encoding=encoding)
    return path


def write_http_config(workdir: Path, url: str, **sections: dict[str, object]) -> Path:
    """config.toml whose SMS and Zalo go to the loopback simulator (``simulator_http``) at
    ``url``; ``gateway=``, ``send=`` and ``serve=`` add settings to those tables."""
    tables = {"gateways.http": {"type": "simulator_http", "url": url} | sections.pop("gateway", {}), **sections}
    lines = ['timezone = "Asia/Ho_Chi_Minh"', "[defaults]", 'sms_gateway = "http"', 'zalo_gateway = "http"']
    for name, values in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return write(workdir / "config.toml", "\n".join(lines) + "\n")


@pytest.fixture
def areas_csv(tmp_path: Path) -> Path:
    return write(tmp_path / "areas.csv", AREAS_CSV)
