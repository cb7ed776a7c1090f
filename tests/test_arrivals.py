"""Arrival campaigns (loa/arrivals.py) on the real database.

Arrivals come in through ``record()`` (what ``POST /arrivals`` uses), the CSV
importer (``loa import arrivals``) and the watched folder of ``loa serve``;
``greet()`` plans one greeting per visit for each campaign with
``trigger = "arrival"``.  Greetings are then sent by the real dispatcher into a
:class:`SimulatedNetwork` whose own ledger says what reached the gateway.
Clocks are moved with time-machine or given as ``now=``; local times are in
the configured zone, Asia/Ho_Chi_Minh (UTC+7).

The people (see :data:`HOMES`): where they live matters to nobody here — the
campaign's areas are where they *arrive*.
"""

from __future__ import annotations

import csv
import json
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests
import time_machine
from click.testing import CliRunner, Result
from sqlalchemy import select
from sqlalchemy.engine import Engine

from conftest import AREAS_CSV, write
from loa import db, importer
from loa.areas import AreaIndex
from loa.arrivals import ArrivalsHandler, Outcome, arrival_campaigns, greet, record
from loa.cli import main
from loa.config import Config, load
from loa.dispatch import Dispatcher
from loa.errors import LoaError
from loa.gateways import Gateway, GatewayPool
from loa.ratelimit import MemoryGCRA
from loa.serve import Service
from providers.simulator import SimulatedNetwork, SimulatorProvider

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
A, O, R, S = db.arrivals, db.outbox, db.runs, db.subscribers
TOKEN = "s3cret-arrivals-token"

# subscriber i -> home area code; 3 has opted out
HOMES = {0: "66", 1: "116", 2: "125", 3: "66", 4: "116", 5: "66"}
OPTED_OUT = {3}


# -- helpers -------------------------------------------------------------------------

def phone(i: int) -> str:
    return f"+84912{i:06d}"


def local_phone(i: int) -> str:
    return f"0912{i:06d}"


def at_local(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    """A local wall-clock time in Asia/Ho_Chi_Minh, as aware UTC."""
    return datetime(year, month, day, hour, minute, tzinfo=TZ).astimezone(UTC)


def import_people(engine: Engine, folder: Path) -> None:
    areas = write(folder / "areas.csv", AREAS_CSV)
    assert importer.run_import(engine, importer.AreasHandler(engine, areas), areas).imported == 4
    lines = ["phone,name,area,opted_out"]
    lines += [f"{local_phone(i)},Người {i},{home},{'yes' if i in OPTED_OUT else ''}" for i, home in HOMES.items()]
    subs = write(folder / "subscribers.csv", "\n".join(lines) + "\n")
    summary = importer.run_import(engine, importer.SubscribersHandler(engine, subs), subs)
    assert (summary.imported, summary.rejected) == (len(HOMES), 0)


def arrival_campaign(workdir: Path, name: str = "greet", *, areas: tuple[str, ...] = ("14",),
                     delay: str = "10m", regreet: str = "30d", validity: float = 24,
                     extra: str = "") -> None:
    write(workdir / "templates" / "sms" / f"{name}.j2", "Chào mừng {{ subscriber.name }} đến Sơn La\n")
    write(workdir / "campaigns" / f"{name}.toml", f"""
        name = "{name}"
        channels = ["sms"]
        validity_hours = {validity}
        trigger = "arrival"
        {extra}
        [segment]
        areas = {json.dumps(list(areas), ensure_ascii=False)}
        [arrival]
        delay = "{delay}"
        regreet_after = "{regreet}"
        [sms]
        template = "sms/{name}.j2"
    """)


def area_ids(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        index = AreaIndex.load(conn)
    return {code: index.resolve(code).id for code in ("14", "116", "125", "66")}


def sub_ids(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(select(S.c.phone, S.c.id)).all())


def arrivals(engine: Engine) -> list[tuple[str, str, datetime, str]]:
    a = db.areas
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            select(S.c.phone, a.c.code, A.c.arrived_at, A.c.source)
            .join(S, S.c.id == A.c.subscriber_id).join(a, a.c.id == A.c.area_id)
            .order_by(A.c.arrived_at, S.c.phone))]


def outbox(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            select(O, S.c.phone, R.c.scheduled_for, R.c.trigger)
            .join(S, S.c.id == O.c.subscriber_id).join(R, R.c.id == O.c.run_id).order_by(O.c.id)).mappings()]


def arrive(engine: Engine, config: Config, *items: tuple[int, str, datetime]) -> Outcome:
    outcome = record(engine, [{"phone": local_phone(i), "area": area, "time": when.isoformat()}
                              for i, area, when in items], config.timezone, source="test")
    assert outcome.rejected == [] and outcome.accepted == len(items)
    return outcome


def sim_pool(config: Config, net: SimulatedNetwork, name: str = "sim") -> GatewayPool:
    pool = GatewayPool(config)
    pool._built[name] = Gateway(name, SimulatorProvider(name, {"network": net}), MemoryGCRA(100_000, 100),
                                100_000.0)
    return pool


def key(row: dict[str, Any]) -> str:
    return db.message_key(row["run_id"], row["subscriber_id"])


def wait_for(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


@pytest.fixture
def people(engine: Engine, workdir: Path) -> Engine:
    import_people(engine, workdir)
    return engine


# -- record() ------------------------------------------------------------------------

def test_record_stores_valid_arrivals_and_rejects_the_rest_with_reasons(people: Engine, config: Config) -> None:
    engine = people
    noon = at_local(2020, 8, 17, 12)
    items: list[Any] = [
        {"phone": local_phone(0), "area": "116", "time": "2020-08-17T10:00:00+07:00"},   # 0: ok
        {"phone": "0912999999", "area": "116", "time": "2020-08-17T10:00:00"},            # 1: nobody has it
        {"phone": "12ab", "area": "116"},                                                  # 2: not a phone
        {"phone": local_phone(1), "area": "Atlantis"},                                     # 3: no such area
        {"phone": phone(2), "area": "Huyện Mai Sơn", "time": "2020-08-17 09:30"},         # 4: ok, by name, local
        {"phone": local_phone(0), "area": "116", "time": "2020-08-17T03:00:00Z"},         # 5: 0 again, same instant
        {"phone": local_phone(4), "area": "66", "source": "hotel-7"},                      # 6: ok, time = now
        {"phone": local_phone(5), "area": "66", "time": "yesterday"},                      # 7: bad time
        "not an object",                                                                   # 8
    ]
    with time_machine.travel(noon, tick=False):
        outcome = record(engine, items, config.timezone, source="http")

    assert outcome.accepted == 4
    assert [(i, f) for i, f, _ in outcome.rejected] == [(1, "phone"), (2, "phone"), (3, "area"), (7, "time"),
                                                        (8, "")]
    reasons = {i: r for i, _, r in outcome.rejected}
    assert "no subscriber has this phone" in reasons[1]
    assert "Atlantis" in reasons[3]
    assert "ISO 8601" in reasons[7]
    assert arrivals(engine) == [
        (phone(2), "125", at_local(2020, 8, 17, 9, 30), "http"),   # a time without zone is local time
        (phone(0), "116", at_local(2020, 8, 17, 10), "http"),      # given twice, stored once
        (phone(4), "66", noon, "hotel-7"),                         # no time: now
    ]

    # the same batch again: accepted, and still stored once
    with time_machine.travel(noon, tick=False):
        again = record(engine, items[:1] + items[4:5], config.timezone, source="http")
    assert (again.accepted, again.rejected) == (2, [])
    assert len(arrivals(engine)) == 3


def test_record_with_nothing_valid_stores_nothing(people: Engine, config: Config) -> None:
    outcome = record(people, [{"phone": "", "area": ""}, {"area": "116"}], config.timezone)
    assert outcome.accepted == 0
    assert [(i, f) for i, f, _ in outcome.rejected] == [(0, "phone"), (1, "phone")]
    assert arrivals(people) == []


# -- greet() ---------------------------------------------------------------------------

def test_greeting_is_planned_where_they_arrive_not_where_they_live(people: Engine, config: Config,
                                                                   workdir: Path) -> None:
    engine = people
    arrival_campaign(workdir, delay="10m", validity=6)
    areas, subs = area_ids(engine), sub_ids(engine)
    t = at_local(2020, 8, 17, 9)
    arrive(engine, config,
           (0, "116", t),                          # lives in Đắk Nông, arrives in a district of Sơn La
           (2, "14", t + timedelta(minutes=5)),    # arrives in the province itself
           (1, "66", t),                           # lives in Sơn La, arrives in Đắk Nông: not greeted
           (4, "116", t - timedelta(hours=7)))     # arrived before the validity: too late to greet

    assert greet(engine, config, now=t + timedelta(minutes=6)) == {"greet": 2}

    rows = outbox(engine)
    got = {r["phone"]: r for r in rows}
    assert len(rows) == 2 and set(got) == {phone(0), phone(2)}
    zero, two = got[phone(0)], got[phone(2)]
    assert (zero["state"], zero["reason"], zero["channel"], zero["gateway"]) == ("planned", None, "sms", "sim")
    assert zero["due_at"] == t + timedelta(minutes=10)
    assert zero["expires_at"] == t + timedelta(hours=6)
    assert zero["area_id"] == areas["116"]                       # where they arrived, for reports
    assert two["due_at"] == t + timedelta(minutes=15) and two["expires_at"] == t + timedelta(hours=6, minutes=5)
    assert two["area_id"] == areas["14"]
    assert {r["subscriber_id"] for r in rows} == {subs[phone(0)], subs[phone(2)]}
    # one run for the local day, triggered by arrivals
    assert {r["run_id"] for r in rows} == {zero["run_id"]}
    assert (zero["scheduled_for"], zero["trigger"]) == (at_local(2020, 8, 17, 0), "arrival")

    # greeting again (as the service does every few seconds) adds nothing
    for minutes in (7, 30, 120):
        assert greet(engine, config, now=t + timedelta(minutes=minutes)) == {"greet": 0}
    assert outbox(engine) == rows


def test_an_arrival_after_local_midnight_belongs_to_the_next_days_run(people: Engine, config: Config,
                                                                       workdir: Path) -> None:
    engine = people
    arrival_campaign(workdir)
    late, early = at_local(2020, 8, 17, 23, 50), at_local(2020, 8, 18, 0, 10)   # 16:50Z and 17:10Z, one UTC day
    arrive(engine, config, (0, "116", late), (2, "125", early))
    assert greet(engine, config, now=early) == {"greet": 2}
    days = {r["phone"]: r["scheduled_for"] for r in outbox(engine)}
    assert days == {phone(0): at_local(2020, 8, 17, 0), phone(2): at_local(2020, 8, 18, 0)}


def test_once_per_visit_and_again_after_regreet_after(people: Engine, config: Config, workdir: Path) -> None:
    engine = people
    arrival_campaign(workdir, regreet="2d", validity=6)
    t = at_local(2020, 8, 17, 10)
    arrive(engine, config, (0, "116", t))
    assert greet(engine, config, now=t + timedelta(minutes=1)) == {"greet": 1}

    # back in the province the next day (another district): the same visit
    second = t + timedelta(days=1, hours=-1)
    arrive(engine, config, (0, "125", second))
    assert greet(engine, config, now=second + timedelta(minutes=1)) == {"greet": 0}

    # more than regreet_after after the greeted arrival: a new visit, greeted again
    third = t + timedelta(days=2, hours=1)
    arrive(engine, config, (0, "125", third))
    assert greet(engine, config, now=third + timedelta(minutes=1)) == {"greet": 1}
    assert greet(engine, config, now=third + timedelta(minutes=2)) == {"greet": 0}

    rows = outbox(engine)
    assert [(r["phone"], r["due_at"] - timedelta(minutes=10)) for r in rows] == [(phone(0), t), (phone(0), third)]
    assert rows[0]["run_id"] != rows[1]["run_id"]
    assert len(arrivals(engine)) == 3


def test_once_per_visit_counts_from_the_arrival_even_when_greeting_runs_late(people: Engine, config: Config,
                                                                             workdir: Path) -> None:
    """A feed delivered hours late: the visit is measured between arrivals, not from when greet() runs."""
    engine = people
    arrival_campaign(workdir, regreet="2d", validity=6)
    t = at_local(2020, 8, 17, 10)
    arrive(engine, config, (0, "116", t))
    assert greet(engine, config, now=t + timedelta(minutes=1)) == {"greet": 1}

    # 1 h short of regreet_after after the greeted arrival: the same visit ...
    second = t + timedelta(days=2, hours=-1)
    arrive(engine, config, (0, "116", second))
    # ... even though greet() only runs 3 h later (still within the validity)
    assert greet(engine, config, now=second + timedelta(hours=3)) == {"greet": 0}
    assert len(outbox(engine)) == 1


def test_opted_out_and_suppressed_like_any_run(people: Engine, config: Config, workdir: Path) -> None:
    engine = people
    arrival_campaign(workdir, extra='suppress_events = ["installed"]')
    t = at_local(2020, 8, 17, 10)
    with engine.begin() as conn:
        importer.record_events(conn, [{"phone": phone(5), "type": "installed", "occurred_at": t - timedelta(days=3),
                                       "source": "test"}])
    arrive(engine, config, (3, "116", t), (5, "125", t), (0, "116", t))
    assert greet(engine, config, now=t + timedelta(minutes=1)) == {"greet": 3}
    got = {r["phone"]: (r["state"], r["reason"]) for r in outbox(engine)}
    assert got == {phone(3): ("suppressed", "opted_out"), phone(5): ("suppressed", "event:installed"),
                   phone(0): ("planned", None)}
    # a suppressed subscriber's visit is settled too: no new row later in the visit
    arrive(engine, config, (3, "125", t + timedelta(hours=1)))
    assert greet(engine, config, now=t + timedelta(hours=1, minutes=1)) == {"greet": 0}


def test_only_arrival_campaigns_greet(people: Engine, config: Config, workdir: Path) -> None:
    arrival_campaign(workdir)
    write(workdir / "templates" / "sms" / "manual.j2", "hi\n")
    write(workdir / "campaigns" / "manual.toml", """
        name = "manual"
        channels = ["sms"]
        [sms]
        template = "sms/manual.j2"
    """)
    assert [c.name for c in arrival_campaigns(config)] == ["greet"]
    t = at_local(2020, 8, 17, 10)
    arrive(people, config, (0, "116", t))
    assert greet(people, config, now=t) == {"greet": 1}


def test_a_campaign_with_an_unknown_area_is_a_clean_error(people: Engine, config: Config, workdir: Path) -> None:
    arrival_campaign(workdir, areas=("Atlantis",))
    t = at_local(2020, 8, 17, 10)
    arrive(people, config, (0, "116", t))
    from loa.arrivals import arrival_campaigns

    with pytest.raises(LoaError, match="Atlantis"):    # asked for by name: the error is the caller's
        greet(people, config, arrival_campaigns(config), now=t)
    # the service's loop greets every campaign: a broken one is logged and the others go on
    assert greet(people, config, now=t) == {}


# -- the dispatcher: the send window and the validity ------------------------------------

def test_a_late_night_arrival_is_greeted_at_seven_exactly_once(people: Engine, config: Config,
                                                                workdir: Path) -> None:
    engine = people
    arrival_campaign(workdir, delay="10m", validity=24)
    net = SimulatedNetwork(seed=7, delivery_rate=1.0)
    night = at_local(2020, 8, 17, 23, 30)
    arrive(engine, config, (0, "116", night))

    with time_machine.travel(night + timedelta(minutes=1), tick=True):
        assert greet(engine, config) == {"greet": 1}
        assert Dispatcher(engine, config, pool=sim_pool(config, net)).run_until_empty().attempted == 0
    [row] = outbox(engine)
    assert (row["state"], row["due_at"]) == ("planned", night + timedelta(minutes=10))

    with time_machine.travel(night + timedelta(minutes=11), tick=True):   # due, but outside 07:00-22:00
        summary = Dispatcher(engine, config, pool=sim_pool(config, net)).run_until_empty()
    [row] = outbox(engine)
    assert summary.outcomes == Counter({"deferred": 1})
    assert (row["state"], row["attempts"]) == ("deferred", 0)
    assert row["due_at"] == at_local(2020, 8, 18, 7)
    assert "send window" in row["reason"]
    assert net.total_received == 0

    with time_machine.travel(at_local(2020, 8, 18, 6, 59), tick=True):
        assert Dispatcher(engine, config, pool=sim_pool(config, net)).run_until_empty().attempted == 0
    assert net.total_received == 0

    with time_machine.travel(at_local(2020, 8, 18, 7, 1), tick=True):
        summary = Dispatcher(engine, config, pool=sim_pool(config, net)).run_until_empty()
        again = Dispatcher(engine, config, pool=sim_pool(config, net)).run_until_empty()
    [row] = outbox(engine)
    assert summary.outcomes == Counter({"sent": 1}) and again.attempted == 0
    assert row["state"] == "delivered" and row["attempts"] == 1
    assert at_local(2020, 8, 18, 7, 1) <= row["sent_at"] < at_local(2020, 8, 18, 7, 2)
    assert net.received == Counter({key(row): 1})
    [message] = net.messages
    assert (message.to, message.text) == (phone(0), "Chào mừng Người 0 đến Sơn La")
    # and the late greeting does not open a second visit
    with time_machine.travel(at_local(2020, 8, 18, 7, 5), tick=True):
        assert greet(engine, config) == {"greet": 0}


def test_a_greeting_past_its_validity_expires_unsent(people: Engine, config: Config, workdir: Path) -> None:
    engine = people
    arrival_campaign(workdir, delay="10m", validity=4)
    net = SimulatedNetwork(seed=7, delivery_rate=1.0)
    two = at_local(2020, 8, 17, 2)
    arrive(engine, config, (0, "116", two), (2, "125", two))
    with time_machine.travel(two + timedelta(minutes=1), tick=True):
        assert greet(engine, config) == {"greet": 2}
    with time_machine.travel(two + timedelta(minutes=15), tick=True):
        summary = Dispatcher(engine, config, pool=sim_pool(config, net)).run_until_empty()
    assert summary.outcomes == Counter({"deferred": 2})
    assert {(r["state"], r["due_at"], r["expires_at"]) for r in outbox(engine)} == {
        ("deferred", at_local(2020, 8, 17, 7), at_local(2020, 8, 17, 6))}

    with time_machine.travel(at_local(2020, 8, 17, 7), tick=True):
        summary = Dispatcher(engine, config, pool=sim_pool(config, net)).run_until_empty()
    assert summary.expired == 2 and summary.attempted == 0
    rows = outbox(engine)
    assert {r["state"] for r in rows} == {"expired"}
    assert all("validity of 4 h" in r["error_text"] for r in rows)
    assert net.total_received == 0
    with engine.connect() as conn:
        assert conn.scalar(select(R.c.status)) == "done"

    # an arrival seen only after its validity is never planned at all
    arrive(engine, config, (4, "116", two))
    assert greet(engine, config, now=two + timedelta(hours=4, minutes=1)) == {"greet": 0}


def test_an_arrival_on_a_finished_days_run_reopens_it(people: Engine, config: Config, workdir: Path) -> None:
    engine = people
    arrival_campaign(workdir, delay="0m")
    net = SimulatedNetwork(seed=7, delivery_rate=1.0)
    t = at_local(2020, 8, 17, 9)
    arrive(engine, config, (0, "116", t))
    with time_machine.travel(t + timedelta(minutes=1), tick=True):
        greet(engine, config)
        Dispatcher(engine, config, pool=sim_pool(config, net)).run_until_empty()
    with engine.connect() as conn:
        assert conn.scalar(select(R.c.status)) == "done"
    arrive(engine, config, (2, "125", t + timedelta(hours=2)))
    with time_machine.travel(t + timedelta(hours=2, minutes=1), tick=True):
        assert greet(engine, config) == {"greet": 1}
        Dispatcher(engine, config, pool=sim_pool(config, net)).run_until_empty()
    rows = outbox(engine)
    assert len({r["run_id"] for r in rows}) == 1 and {r["state"] for r in rows} == {"delivered"}
    assert net.received == Counter({key(r): 1 for r in rows})


def test_regreeting_within_a_day_is_refused_by_validation(workdir: Path) -> None:
    """Greetings go into one run per local day: a visit shorter than a day cannot be told apart."""
    from loa.campaign import parse_file

    arrival_campaign(workdir, regreet="2h", validity=6)
    campaign, problems = parse_file(workdir / "campaigns" / "greet.toml")
    assert campaign is None
    assert any("arrival.regreet_after" in p and "1d" in p for p in problems)


def test_the_greeting_names_the_area_of_arrival(people: Engine, config: Config, workdir: Path) -> None:
    arrival_campaign(workdir)
    write(workdir / "templates" / "sms" / "greet.j2", "Chào mừng đến {{ area.name }}\n")
    net = SimulatedNetwork(seed=7, delivery_rate=1.0)
    t = at_local(2020, 8, 17, 9)
    arrive(people, config, (0, "116", t))                    # lives in Đắk Nông
    with time_machine.travel(t + timedelta(minutes=11), tick=True):
        greet(people, config)
        Dispatcher(people, config, pool=sim_pool(config, net)).run_until_empty()
    assert [m.text for m in net.messages] == ["Chào mừng đến Thành phố Sơn La"]


# -- loa import arrivals -----------------------------------------------------------------

def invoke(*args: str, config_path: Path | None = None, env: dict[str, str] | None = None) -> Result:
    prefix = ["--config", str(config_path)] if config_path is not None else []
    return CliRunner().invoke(main, [*prefix, *args], env=env, catch_exceptions=True)


@pytest.mark.parametrize("via", ["--config", "LOA_CONFIG"])
def test_cli_import_arrivals(people: Engine, workdir: Path, tmp_path: Path, via: str) -> None:
    engine = people
    arrival_campaign(workdir)
    feed = write(tmp_path / "feed.csv", """
        phone,area,time,source
        0912000000,116,2020-08-17T10:00:00+07:00,vinaphone
        0912999999,116,2020-08-17T10:01:00+07:00,vinaphone
        0912000002,Nowhere,2020-08-17T10:02:00+07:00,
        0912000004,66,2020-08-17T10:03:00+07:00,
        0912000005,125,,
    """)
    with time_machine.travel(at_local(2020, 8, 17, 10, 30), tick=True):
        if via == "--config":
            result = invoke("import", "arrivals", str(feed), config_path=workdir / "config.toml")
        else:
            result = invoke("import", "arrivals", str(feed), env={"LOA_CONFIG": str(workdir / "config.toml")})
    assert result.exit_code == 0, (result.output, result.exception)
    assert "5 rows read, 2 imported" in result.stdout and "3 rejected" in result.stdout
    assert "greet: 1 greeting(s) planned" in result.stdout
    assert "Nowhere" in result.stderr and "no subscriber has this phone" in result.stderr

    rejects = (tmp_path / "feed.rejects.csv").read_text(encoding="utf-8").splitlines()
    assert rejects[0] == "line,column,reason,phone,area,time,source"
    assert sorted(line.split(",")[:2] for line in rejects[1:]) == [["3", "phone"], ["4", "area"], ["6", "time"]]
    # the reasons in the configuration's language (Vietnamese by default), as the console shows them
    assert sorted(tuple(row[:3]) for row in csv.reader(rejects[1:])) == [
        ("3", "phone", "không có thuê bao nào có số này; hãy nhập thuê bao trước"),
        ("4", "area", "không có địa bàn nào có mã hoặc tên 'Nowhere'"),
        ("6", "time", "thời gian để trống")]
    assert arrivals(engine) == [(phone(0), "116", at_local(2020, 8, 17, 10), "vinaphone"),
                                (phone(4), "66", at_local(2020, 8, 17, 10, 3), "feed.csv")]
    [row] = outbox(engine)
    assert (row["phone"], row["state"], row["due_at"]) == (phone(0), "planned", at_local(2020, 8, 17, 10, 10))


def test_cli_import_arrivals_with_a_wrong_header(people: Engine, workdir: Path, tmp_path: Path) -> None:
    feed = write(tmp_path / "feed.csv", "phone,where\n0912000000,116\n")
    result = invoke("import", "arrivals", str(feed), config_path=workdir / "config.toml")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "wrong header for arrivals: missing area, time" in result.stderr
    assert arrivals(people) == []


def test_cli_import_arrivals_with_a_broken_campaign_is_one_line(people: Engine, workdir: Path,
                                                                 tmp_path: Path) -> None:
    arrival_campaign(workdir, areas=("Atlantis",))
    feed = write(tmp_path / "feed.csv", "phone,area,time\n0912000000,116,2020-08-17T10:00:00+07:00\n")
    with time_machine.travel(at_local(2020, 8, 17, 10, 5), tick=True):
        result = invoke("import", "arrivals", str(feed), config_path=workdir / "config.toml")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.stderr.splitlines() == [
        "error: campaign greet: segment.areas: no area with code or name 'Atlantis'"]
    assert "1 imported" in result.stdout
    assert len(arrivals(people)) == 1 and outbox(people) == []


# -- POST /arrivals --------------------------------------------------------------------

@pytest.fixture
def service(people: Engine, workdir: Path) -> Iterator[tuple[Service, Config]]:
    arrival_campaign(workdir)
    with (workdir / "config.toml").open("a", encoding="utf-8") as f:
        f.write("\n[serve]\ngreet_every = 3600\n")      # only the requests greet here
    config = load(workdir / "config.toml")
    svc = Service(people, config, port=0, workers=0, scheduler=False)
    svc.start()
    try:
        yield svc, config
    finally:
        svc.stop()


def post(svc: Service, body: Any, token: str | None = TOKEN, raw: bytes | None = None) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else json.dumps(body).encode("utf-8")
    return requests.post(f"http://127.0.0.1:{svc.port}/arrivals", data=data, headers=headers, timeout=10)


def test_post_arrivals(service: tuple[Service, Config], people: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    svc, _ = service
    engine = people
    good = {"phone": local_phone(0), "area": "116"}

    monkeypatch.delenv("LOA_ARRIVALS_TOKEN", raising=False)
    r = post(svc, good)
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
    assert "LOA_ARRIVALS_TOKEN" in r.json()["error"]["message"]

    monkeypatch.setenv("LOA_ARRIVALS_TOKEN", TOKEN)
    for token in (None, "wrong", ""):
        r = post(svc, good, token=token)
        assert r.status_code == 401, token
        assert r.headers["Content-Type"] == "application/json" and "token" in r.json()["error"]["message"]
        assert (r.json()["error"]["code"], r.json()["error"]["field"]) == ("unauthorized", "Authorization")
    assert arrivals(engine) == []

    for raw in (b"{not json", b"", b"null", b"[]", b'"text"'):
        r = post(svc, None, raw=raw)
        assert r.status_code == 400, raw
        assert set(r.json()["error"]) == {"code", "message", "field"} and r.json()["error"]["code"] == "invalid"

    r = post(svc, [{"phone": "12ab", "area": "116"}, {"phone": local_phone(1), "area": "Atlantis"}])
    assert r.status_code == 422
    assert [(x["index"], x["field"]) for x in r.json()["rejected"]] == [(0, "phone"), (1, "area")]
    assert (r.json()["error"]["code"], r.json()["error"]["field"]) == ("rejected", "0.phone")

    start = db.utcnow()
    earlier = start - timedelta(minutes=3)
    r = post(svc, [good, {"phone": "0912999999", "area": "116"},
                   {"phone": local_phone(2), "area": "Sơn La", "time": earlier.astimezone(TZ).isoformat()}])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 2
    assert body["planned"] == {"greet": 2}
    assert body["rejected"] == [{"index": 1, "field": "phone", "reason": "no subscriber has this phone"}]

    got = {p: (area, source) for p, area, _, source in arrivals(engine)}
    assert got == {phone(0): ("116", "http"), phone(2): ("14", "http")}
    rows = {r["phone"]: r for r in outbox(engine)}
    assert set(rows) == {phone(0), phone(2)} and {r["state"] for r in rows.values()} == {"planned"}
    assert start + timedelta(minutes=10) <= rows[phone(0)]["due_at"] <= db.utcnow() + timedelta(minutes=10)
    assert rows[phone(2)]["due_at"] == earlier + timedelta(minutes=10)
    assert rows[phone(2)]["expires_at"] == earlier + timedelta(hours=24)

    # the same arrivals again: nothing new is greeted
    r = post(svc, [{"phone": local_phone(2), "area": "125"}])
    assert r.status_code == 200 and r.json()["planned"] == {"greet": 0}
    assert len(outbox(engine)) == 2


def test_post_arrivals_with_a_configured_token_variable(people: Engine, workdir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    arrival_campaign(workdir)
    with (workdir / "config.toml").open("a", encoding="utf-8") as f:
        f.write('\n[serve]\narrivals_token_env = "LOA_TEST_HOTEL_TOKEN"\n')
    monkeypatch.setenv("LOA_ARRIVALS_TOKEN", TOKEN)      # not the configured variable
    monkeypatch.delenv("LOA_TEST_HOTEL_TOKEN", raising=False)
    svc = Service(people, load(workdir / "config.toml"), port=0, workers=0, scheduler=False)
    svc.start()
    try:
        r = post(svc, {"phone": local_phone(0), "area": "116"})
        assert r.status_code == 503 and "LOA_TEST_HOTEL_TOKEN" in r.json()["error"]["message"]
        monkeypatch.setenv("LOA_TEST_HOTEL_TOKEN", "hotel")
        assert post(svc, {"phone": local_phone(0), "area": "116"}).status_code == 401
        r = post(svc, {"phone": local_phone(0), "area": "116"}, token="hotel")
        assert r.status_code == 200 and r.json()["accepted"] == 1 and r.json()["planned"] == {"greet": 1}
    finally:
        svc.stop()


# -- the watched folder ------------------------------------------------------------------

def test_watched_folder(people: Engine, workdir: Path, tmp_path: Path) -> None:
    engine = people
    arrival_campaign(workdir)
    folder = tmp_path / "feed"
    folder.mkdir()
    with (workdir / "config.toml").open("a", encoding="utf-8") as f:
        f.write(f'\n[serve]\narrivals_folder = {json.dumps(str(folder))}\ngreet_every = 0.2\n')
    config = load(workdir / "config.toml")
    svc = Service(engine, config, port=0, workers=0, scheduler=False)
    svc.start()
    try:
        now = db.utcnow().astimezone(TZ).replace(microsecond=0)
        staged = write(tmp_path / "staging.tmp", textwrap.dedent(f"""\
            phone,area,time
            0912000000,116,{(now - timedelta(minutes=2)).isoformat()}
            0912000004,Atlantis,{now.isoformat()}
        """))
        staged.rename(folder / "vnpt-0001.csv")      # dropped whole, as a feed should be
        write(folder / "bad.csv", "msisdn,cell\n0912000002,116\n")
        (folder / "notes.txt").write_text("not a feed\n", encoding="utf-8")

        # files are set aside with a time stamp, so a feed name used again never overwrites one
        wait_for(lambda: len(list((folder / "done").glob("vnpt-0001.*.csv"))) >= 1
                 and len(list((folder / "failed").glob("bad.*.csv"))) >= 1)
        rows = wait_for(lambda: outbox(engine))
    finally:
        svc.stop()
    assert not (folder / "vnpt-0001.csv").exists() and not (folder / "bad.csv").exists()
    assert (folder / "notes.txt").exists()
    [rejects_file] = (folder / "done").glob("vnpt-0001.*.rejects.csv")
    rejects = rejects_file.read_text(encoding="utf-8")
    assert "Atlantis" in rejects
    assert [(p, area, source) for p, area, _, source in arrivals(engine)] == [(phone(0), "116", "vnpt-0001.csv")]
    [row] = rows
    assert (row["phone"], row["state"]) == (phone(0), "planned")
    assert row["due_at"] == (now - timedelta(minutes=2)).astimezone(UTC) + timedelta(minutes=10)


def test_arrivals_handler_rejects_a_row_without_time(people: Engine, tmp_path: Path, config: Config) -> None:
    feed = write(tmp_path / "f.csv", "phone,area,time\n0912000000,116,\n0912000001,116,2020-08-17T10:00:00\n")
    summary = importer.run_import(people, ArrivalsHandler(people, feed, config.timezone), feed)
    assert (summary.read, summary.imported, summary.rejected) == (2, 1, 1)
    assert arrivals(people) == [(phone(1), "116", at_local(2020, 8, 17, 10), "f.csv")]
