"""Decree 91/2020 in code, on the real database: send windows, frequency caps,
do-not-contact, advertising framing and opt-out words.

Sending tests plan real runs and drive ``Dispatcher.run_until_empty`` at a
travelled clock (time-machine, ticking); what reached a gateway is read from
the simulator network's own ledger or from the file gateway's JSON lines.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine
from click.testing import CliRunner
from conftest import AREAS_CSV, write
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from loa import db, importer
from loa.campaign import Campaign, load_one, parse_file
from loa.checks import advertising_problems, campaign_problems
from loa.cli import main
from loa.config import Config, from_mapping, load
from loa.consent import ConsentsHandler
from loa.dispatch import Dispatcher
from loa.errors import CampaignError
from loa.gateways import Gateway, GatewayPool
from loa.plan import plan_run
from loa.policy import (
    Policy,
    Window,
    advertising_text,
    brandname_problem,
    channel_window,
    is_opt_out,
    parse_window,
)
from loa.ratelimit import MemoryGCRA
from loa.text import measure, unaccent
from providers.simulator import SimulatedNetwork, SimulatorProvider

O = db.outbox
ICT = ZoneInfo("Asia/Ho_Chi_Minh")
OPT_OUT = "Tu choi QC soan TC gui 1234"


def local(y: int, mo: int, d: int, h: int, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=ICT)


# a weekday morning in Vietnam, inside every default window
DAYTIME = local(2030, 3, 12, 9, 0)


# -- helpers -------------------------------------------------------------------------

def phone(i: int) -> str:
    return f"+84912{i:06d}"


def import_people(engine: Engine, folder: Path, n: int) -> None:
    """n subscribers: odd ones in district 116, even ones in 125."""
    areas = write(folder / "areas.csv", AREAS_CSV)
    assert importer.run_import(engine, importer.AreasHandler(engine, areas), areas).imported == 4
    lines = ["phone,name,area"] + [f"0912{i:06d},Người {i},{'116' if i % 2 else '125'}" for i in range(n)]
    subs = folder / "subscribers.csv"
    subs.write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = importer.run_import(engine, importer.SubscribersHandler(engine, subs), subs)
    assert (summary.imported, summary.rejected) == (n, 0)
    # everyone agreed to advertising, which an advertising campaign needs (loa.consent)
    consents = write(folder / "consents.csv", "phone,purpose,time\n"
                     + "".join(f"0912{i:06d},advertising,2026-01-01\n" for i in range(n)))
    summary = importer.run_import(engine, ConsentsHandler(engine, consents, ZoneInfo("Asia/Ho_Chi_Minh")), consents)
    assert (summary.imported, summary.rejected) == (n, 0)


def make_campaign(workdir: Path, name: str, *, channels: tuple[str, ...] = ("sms",),
                  text: str = "Xin chào {{ subscriber.name }}", advertising: bool = False,
                  opt_out: str | None = None, frequency_cap: int | None = None,
                  window: tuple[str, str] | None = None, areas: list[str] | None = None,
                  sms: dict[str, Any] | None = None, zalo: dict[str, Any] | None = None) -> Campaign:
    write(workdir / "templates" / "sms" / f"{name}.j2", text + "\n")
    lines = [f'name = "{name}"', f"channels = {json.dumps(list(channels))}",
             f"advertising = {'true' if advertising else 'false'}"]
    if opt_out is not None:
        lines.append(f"opt_out = {json.dumps(opt_out, ensure_ascii=False)}")
    if frequency_cap is not None:
        lines.append(f"frequency_cap = {frequency_cap}")
    if window:
        lines += ["[window]", f'start = "{window[0]}"', f'end = "{window[1]}"']
    if areas:
        lines += ["[segment]", f"areas = {json.dumps(areas)}"]
    for channel, extra in (("sms", sms), ("zalo", zalo)):
        if channel not in channels:
            continue
        if channel == "zalo":
            write(workdir / "templates" / "zalo" / f"{name}.toml", """
                template_id = "9001"
                [data]
                customer_name = "{{ subscriber.name }}"
            """)
        lines += [f"[{channel}]", f'template = "{channel}/{name}.{"j2" if channel == "sms" else "toml"}"']
        lines += [f"{k} = {json.dumps(v)}" for k, v in (extra or {}).items()]
    (workdir / "campaigns" / f"{name}.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_one(workdir / "campaigns", name)


def sim_pool(config: Config, net: SimulatedNetwork, name: str = "sim") -> GatewayPool:
    pool = GatewayPool(config)
    pool._built[name] = Gateway(name, SimulatorProvider(name, {"network": net}), MemoryGCRA(100_000, 100),
                                100_000.0)
    return pool


def send(engine: Engine, config: Config, net: SimulatedNetwork) -> Counter[str]:
    return Dispatcher(engine, config, pool=sim_pool(config, net)).run_until_empty().outcomes


def rows(engine: Engine, run_id: int | None = None) -> list[dict[str, Any]]:
    stmt = select(O, db.subscribers.c.phone).join(db.subscribers, db.subscribers.c.id == O.c.subscriber_id)
    if run_id is not None:
        stmt = stmt.where(O.c.run_id == run_id)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(stmt.order_by(O.c.id)).mappings()]


def key(row: dict[str, Any]) -> str:
    return db.message_key(row["run_id"], row["subscriber_id"])


def index(row: dict[str, Any]) -> int:
    return int(row["phone"][-6:])


@pytest.fixture(params=["UTC", "America/Los_Angeles"])
def host_tz(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The host's own time zone must not matter: loa works in the configured zone."""
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()


# -- windows ---------------------------------------------------------------------------

def test_window_contains_and_next_open_in_vietnam_time(host_tz: str) -> None:
    w = Window(dtime(7), dtime(22))
    late = local(2030, 3, 12, 23, 30)                        # 16:30 UTC
    assert not w.contains(late, ICT)
    opens = w.next_open(late, ICT)
    assert opens == local(2030, 3, 13, 7, 0) == datetime(2030, 3, 13, 0, 0, tzinfo=UTC)
    assert opens.utcoffset() == timedelta(0)                 # aware UTC, as the ledger stores
    assert w.contains(opens, ICT)

    # 00:30 local is still the previous day in UTC: the opening is the same local day
    after_midnight = local(2030, 3, 13, 0, 30)
    assert after_midnight.astimezone(UTC).day == 12
    assert w.next_open(after_midnight, ICT) == local(2030, 3, 13, 7, 0)

    early = local(2030, 3, 12, 6, 59)
    assert not w.contains(early, ICT)
    assert w.next_open(early, ICT) == local(2030, 3, 12, 7, 0)

    for at in (local(2030, 3, 12, 7, 0), local(2030, 3, 12, 21, 59), local(2030, 3, 12, 21, 59, 59)):
        assert w.contains(at, ICT)
        assert w.next_open(at, ICT) == at
    for at in (local(2030, 3, 12, 22, 0), local(2030, 3, 12, 22, 0, 1)):
        assert not w.contains(at, ICT)
        assert w.next_open(at, ICT) == local(2030, 3, 13, 7, 0)
    # the same instants, given in UTC, answer the same
    assert w.contains(local(2030, 3, 12, 21, 59).astimezone(UTC), ICT)
    assert not w.contains(local(2030, 3, 12, 22, 0).astimezone(UTC), ICT)


def test_channel_window_narrows_zalo_to_its_day() -> None:
    wide = (dtime(5), dtime(23, 30))
    assert channel_window("zalo", wide) == Window(dtime(6), dtime(22))
    assert channel_window("sms", wide) == Window(dtime(5), dtime(23, 30))
    assert channel_window("zalo", (dtime(7), dtime(21))) == Window(dtime(7), dtime(21))
    assert channel_window("zalo", parse_window(None)) == Window(dtime(7), dtime(22))


def test_parse_window_reads_a_snapshot_or_defaults() -> None:
    assert parse_window(None) == (dtime(7), dtime(22))
    assert parse_window({}) == (dtime(7), dtime(22))
    assert parse_window({"start": "05:30"}) == (dtime(5, 30), dtime(22))
    assert parse_window({"start": "08:00:00", "end": "20:15:00"}) == (dtime(8), dtime(20, 15))
    assert parse_window({"start": dtime(9), "end": dtime(10)}) == (dtime(9), dtime(10))


def test_a_run_planned_at_night_is_deferred_to_7_and_sent_then(engine: Engine, workdir: Path, tmp_path: Path,
                                                               host_tz: str) -> None:
    import_people(engine, tmp_path, n=6)
    config = load(workdir / "config.toml")
    net = SimulatedNetwork(seed=7, delivery_rate=1.0)
    night = local(2030, 3, 12, 23, 30)
    with time_machine.travel(night, tick=True):
        plan = plan_run(engine, config, make_campaign(workdir, "night"))
        outcomes = send(engine, config, net)
    assert outcomes == Counter({"deferred": 6})
    assert net.total_received == 0
    for r in rows(engine, plan.run_id):
        assert r["state"] == "deferred"
        assert r["due_at"] == local(2030, 3, 13, 7, 0)
        assert "window" in r["reason"] and "07:00-22:00" in r["reason"] and "sms" in r["reason"]
        assert (r["attempts"], r["worker"], r["lease_until"], r["sent_at"]) == (0, None, None, None)

    with time_machine.travel(local(2030, 3, 13, 6, 59), tick=True):   # still closed: not even due
        assert send(engine, config, net) == Counter()
    assert net.total_received == 0

    with time_machine.travel(local(2030, 3, 13, 7, 1), tick=True):
        outcomes = send(engine, config, net)
    assert outcomes == Counter({"sent": 6})
    final = rows(engine, plan.run_id)
    assert {r["state"] for r in final} == {"delivered"}
    assert {r["attempts"] for r in final} == {1}
    assert all(r["sent_at"] >= local(2030, 3, 13, 7, 1) for r in final)
    assert net.received == Counter({key(r): 1 for r in final})


def test_a_campaign_window_and_zalos_night_rule_apply_at_send_time(engine: Engine, workdir: Path,
                                                                   tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=4)
    config = load(workdir / "config.toml")
    net = SimulatedNetwork(seed=7, delivery_rate=1.0)
    dawn = local(2030, 3, 12, 5, 30)
    with time_machine.travel(dawn, tick=True):
        sms = plan_run(engine, config, make_campaign(workdir, "early-sms", window=("05:00", "23:00")))
        zalo = plan_run(engine, config, make_campaign(workdir, "early-zalo", channels=("zalo",),
                                                      window=("05:00", "23:00")))
        outcomes = send(engine, config, net)
    assert outcomes == Counter({"sent": 4, "deferred": 4})
    assert {r["state"] for r in rows(engine, sms.run_id)} == {"delivered"}     # 05:00-23:00 is open
    for r in rows(engine, zalo.run_id):                                          # but Zalo opens at 06:00
        assert (r["state"], r["due_at"]) == ("deferred", local(2030, 3, 12, 6, 0))
        assert "zalo send window 06:00-22:00" in r["reason"]
        assert key(r) not in net.received
    with time_machine.travel(local(2030, 3, 12, 6, 0, 5), tick=True):
        assert send(engine, config, net) == Counter({"sent": 4})
    assert {r["state"] for r in rows(engine, zalo.run_id)} == {"delivered"}
    assert {m.channel for m in net.messages} == {"sms", "zalo"}


# -- frequency cap ---------------------------------------------------------------------

T = local(2030, 3, 12, 21, 0)
HISTORY = (T - timedelta(hours=13), T - timedelta(hours=8), T - timedelta(hours=3))   # 08:00, 13:00, 18:00


def history(engine: Engine, workdir: Path, config: Config, net: SimulatedNetwork) -> dict[int, list[datetime]]:
    """Public campaigns sent before T: everyone gets two, district 116 (odd) a third.

    Returns each subscriber index's send times, read back from the ledger."""
    segments: tuple[list[str] | None, ...] = (None, None, ["116"])
    for n, (at, areas) in enumerate(zip(HISTORY, segments, strict=True)):
        with time_machine.travel(at, tick=True):
            plan_run(engine, config, make_campaign(workdir, f"news{n}", areas=areas))
            send(engine, config, net)
    sent: dict[int, list[datetime]] = {}
    for r in rows(engine):
        assert r["state"] in ("delivered", "undelivered")     # a message that did not arrive still counts
        sent.setdefault(index(r), []).append(r["sent_at"])
    return sent


def test_a_message_in_flight_elsewhere_counts_toward_the_cap(engine: Engine, workdir: Path,
                                                              tmp_path: Path) -> None:
    """Another worker is in the middle of sending each person a message (``sending``, not yet
    ``sent``, so it has no sent_at): with a cap of one, this campaign's message waits."""
    import_people(engine, tmp_path, n=4)
    config = load(workdir / "config.toml")
    net = SimulatedNetwork(seed=7, delivery_rate=1.0)
    with time_machine.travel(DAYTIME, tick=True):
        busy = plan_run(engine, config, make_campaign(workdir, "busy"))
        with engine.begin() as conn:
            conn.execute(update(O).where(O.c.run_id == busy.run_id)
                         .values(state="sending", worker="elsewhere:1", attempts=1, updated_at=db.utcnow(),
                                 lease_until=db.utcnow() + timedelta(minutes=5)))
        capped = plan_run(engine, config, make_campaign(workdir, "capped", advertising=True, opt_out=OPT_OUT,
                                                        frequency_cap=1))
        send(engine, config, net)
    assert {(r["state"], r["reason"]) for r in rows(engine, capped.run_id)} == {("deferred", "frequency cap")}
    assert not net.received


def test_the_advertising_cap_defers_until_the_oldest_message_leaves_24_hours(engine: Engine, workdir: Path,
                                                                            tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=6)
    config = load(workdir / "config.toml")
    net = SimulatedNetwork(seed=7, delivery_rate=0.6)
    sent = history(engine, workdir, config, net)
    assert {r["state"] for r in rows(engine)} == {"delivered", "undelivered"}
    assert {i: len(t) for i, t in sent.items()} == {i: 3 if i % 2 else 2 for i in range(6)}

    with time_machine.travel(T, tick=True):
        ad = plan_run(engine, config, make_campaign(workdir, "ad", advertising=True, opt_out=OPT_OUT))
        ad2 = plan_run(engine, config, make_campaign(workdir, "ad2", advertising=True, opt_out=OPT_OUT))
        send(engine, config, net)

    now_rows = rows(engine, ad.run_id) + rows(engine, ad2.run_id)
    per_person: dict[int, list[dict[str, Any]]] = {}
    for r in now_rows:
        per_person.setdefault(index(r), []).append(r)
    for i, mine in per_person.items():
        oldest = min(sent[i])
        if i % 2:   # three in the last 24 h already: both held until the oldest is 24 h old
            for r in mine:
                assert (r["state"], r["reason"], r["attempts"]) == ("deferred", "frequency cap", 0)
                assert r["due_at"] == oldest + timedelta(hours=24)
                assert key(r) not in net.received
        else:       # two: one more fits, the other of this same batch waits
            assert sorted(r["state"] == "deferred" for r in mine) == [False, True]
            held = next(r for r in mine if r["state"] == "deferred")
            assert held["reason"] == "frequency cap"
            assert held["due_at"] == oldest + timedelta(hours=24)
            assert key(held) not in net.received

    release = min(min(t) for t in sent.values()) + timedelta(hours=24)
    assert release.astimezone(ICT).hour == 8          # inside the send window
    with time_machine.travel(release + timedelta(minutes=1), tick=True):
        send(engine, config, net)
    after = {r["id"]: r for r in rows(engine, ad.run_id) + rows(engine, ad2.run_id)}
    # the oldest left the window: one more each, never more than 3 in any 24 h
    for i in range(6):
        mine = [r for r in after.values() if index(r) == i]
        assert Counter(r["state"] != "deferred" for r in mine) == (Counter({True: 1, False: 1}) if i % 2
                                                                    else Counter({True: 2}))
    every = sorted((index(r), r["sent_at"]) for r in rows(engine) if r["sent_at"] is not None)
    for i, at in every:
        recent = [t for j, t in every if j == i and at - timedelta(hours=24) < t <= at]
        assert len(recent) <= 3, (i, recent)
    assert set(net.received.values()) == {1}


@pytest.mark.parametrize(("kind", "campaign_cap", "policy", "held"), [
    ("public", None, "", False),                                   # public interest: no cap by default
    ("advertising", None, "", True),                               # advertising: 3 per 24 h
    ("public", 3, "", True),                                       # the campaign's own cap
    ("advertising", 4, "", False),                                 # ... overrides the default
    ("advertising", 0, "", False),                                 # 0 = no cap
    ("public", None, "public_frequency_cap = 3", True),            # [policy] for public campaigns
    ("advertising", None, "advertising_frequency_cap = 4", False),
    ("advertising", None, "frequency_hours = 2", False),           # only T-3h and before: outside 2 h
])
def test_which_cap_applies(engine: Engine, workdir: Path, tmp_path: Path, kind: str,
                           campaign_cap: int | None, policy: str, held: bool) -> None:
    if policy:
        with (workdir / "config.toml").open("a", encoding="utf-8") as f:
            f.write(f"\n[policy]\n{policy}\n")
    import_people(engine, tmp_path, n=2)
    config = load(workdir / "config.toml")
    net = SimulatedNetwork(seed=7, delivery_rate=1.0)
    sent = history(engine, workdir, config, net)
    with time_machine.travel(T, tick=True):
        plan = plan_run(engine, config, make_campaign(
            workdir, "now", advertising=kind == "advertising", opt_out=OPT_OUT if kind == "advertising" else None,
            frequency_cap=campaign_cap))
        send(engine, config, net)
    for r in rows(engine, plan.run_id):
        if held and index(r) % 2:
            assert (r["state"], r["reason"]) == ("deferred", "frequency cap")
            assert r["due_at"] == min(sent[index(r)]) + timedelta(hours=24)
        else:
            assert r["state"] == "delivered", r


def test_policy_caps_from_config_and_campaign() -> None:
    p = Policy.from_config(from_mapping({"policy": {"public_frequency_cap": 2, "frequency_hours": 12}},
                                        root=Path.cwd()))
    assert (p.advertising_cap, p.public_cap, p.cap_hours) == (3, 2, 12.0)
    assert p.cap_for({"advertising": True}) == 3
    assert p.cap_for({}) == 2
    assert p.cap_for({"advertising": True, "frequency_cap": 0}) == 0
    assert Policy().cap_for({}) == 0


# -- do-not-contact ----------------------------------------------------------------------

def test_dnc_suppresses_at_planning_and_again_just_before_sending(engine: Engine, workdir: Path,
                                                                  tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=8)
    config = load(workdir / "config.toml")
    dnc = write(tmp_path / "dnc.csv", """
        phone,source
        0912000001,national
        +84 912 000 002,
        0987654321,national
        not a phone,national
    """)
    result = CliRunner().invoke(main, ["--config", str(workdir / "config.toml"), "import", "dnc", str(dnc)])
    assert result.exit_code == 0, (result.output, result.exception)
    with engine.connect() as conn:
        listed = dict(conn.execute(select(db.dnc.c.phone, db.dnc.c.source)).all())
    assert listed == {phone(1): "national", phone(2): "dnc.csv", "+84987654321": "national"}

    net = SimulatedNetwork(seed=7, delivery_rate=1.0)
    with time_machine.travel(DAYTIME, tick=True):
        plan = plan_run(engine, config, make_campaign(workdir, "c"))
        assert plan.states == Counter({"planned": 6, "suppressed": 2})
        assert plan.reasons == Counter({"dnc": 2})
        planned = rows(engine, plan.run_id)
        assert {index(r): r["reason"] for r in planned if r["state"] == "suppressed"} == {1: "dnc", 2: "dnc"}

        # after planning: one number is listed, another subscriber replies "TC"
        late = write(tmp_path / "late.csv", "phone\n0912000003\n")
        assert importer.run_import(engine, importer.DncHandler(engine, late), late).imported == 1
        with engine.begin() as conn:
            importer.record_events(conn, [{"phone": phone(4), "type": "opted_out", "occurred_at": db.utcnow(),
                                           "source": "sms-reply"}])
        outcomes = send(engine, config, net)

    assert outcomes == Counter({"sent": 4, "suppressed": 2})
    final = {index(r): r for r in rows(engine, plan.run_id)}
    assert {i: (r["state"], r["reason"]) for i, r in final.items() if r["state"] != "delivered"} == {
        1: ("suppressed", "dnc"), 2: ("suppressed", "dnc"), 3: ("suppressed", "dnc"), 4: ("suppressed", "opted_out"),
    }
    for i in (1, 2, 3, 4):
        assert key(final[i]) not in net.received
        assert (final[i]["attempts"], final[i]["sent_at"], final[i]["provider_id"]) == (0, None, None)
    assert set(net.received) == {key(final[i]) for i in (0, 5, 6, 7)}


def test_blocked_reports_opt_out_before_dnc(engine: Engine, tmp_path: Path) -> None:
    import_people(engine, tmp_path, n=3)
    with engine.begin() as conn:
        ids = dict(conn.execute(select(db.subscribers.c.phone, db.subscribers.c.id)).all())
        conn.execute(db.dnc.insert().values(phone=phone(0), source="t", added_at=db.utcnow()))
        conn.execute(db.dnc.insert().values(phone=phone(1), source="t", added_at=db.utcnow()))
        conn.execute(db.subscribers.update().where(db.subscribers.c.phone == phone(1))
                     .values(opted_out_at=db.utcnow()))
    got = Policy().blocked(engine, {ids[p]: p for p in (phone(0), phone(1), phone(2))})
    assert got == {ids[phone(0)]: "dnc", ids[phone(1)]: "opted_out"}
    assert Policy().blocked(engine, {}) == {}


# -- advertising ---------------------------------------------------------------------------

def test_advertising_sms_is_framed_and_counted_after_framing(engine: Engine, workdir: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workdir)     # the file gateway's path is relative to the working directory
    import_people(engine, tmp_path, n=3)
    config = load(workdir / "config.toml")
    body = "Ưu đãi tháng ba cho {{ subscriber.name }}: giảm giá cước"           # ~50 units: 1 UCS-2 part
    plain = "Uu dai thang ba cho {{ subscriber.name }}: " + "giam gia cuoc data 4G " * 5   # ~150 septets
    with time_machine.travel(DAYTIME, tick=True):
        ucs = plan_run(engine, config, make_campaign(workdir, "qc", text=body, advertising=True, opt_out=OPT_OUT,
                                                     sms={"gateway": "jsonl"}))
        gsm = plan_run(engine, config, make_campaign(workdir, "qc-plain", text=plain, advertising=True,
                                                     opt_out="Từ chối QC soạn TC gửi 1234",
                                                     sms={"gateway": "jsonl", "unaccented": True}))
        public = plan_run(engine, config, make_campaign(workdir, "pub", text=body, sms={"gateway": "jsonl"}))
        dispatcher = Dispatcher(engine, config)
        dispatcher.run_until_empty()
        dispatcher.pool.close()

    lines = [json.loads(x) for x in (workdir / "sent.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 9 and len({x["key"] for x in lines}) == 9
    by_key = {x["key"]: x for x in lines}
    for r in rows(engine):
        line = by_key[key(r)]
        i = index(r)
        info = measure(line["text"])
        assert (r["parts"], r["encoding"]) == (line["parts"], line["encoding"]) == (info.parts, info.encoding)
        if r["run_id"] == ucs.run_id:
            assert line["text"] == f"[QC] Ưu đãi tháng ba cho Người {i}: giảm giá cước {OPT_OUT}"
            assert line["advertising"] is True
            # the body alone is one part; "[QC]" and the opt-out make it two
            assert measure(f"Ưu đãi tháng ba cho Người {i}: giảm giá cước").parts == 1
            assert (info.encoding, info.parts) == ("UCS-2", 2)
        elif r["run_id"] == gsm.run_id:
            assert line["text"].startswith(f"[QC] Uu dai thang ba cho Nguoi {i}: giam gia")
            assert line["text"].endswith(" Tu choi QC soan TC gui 1234")    # unaccented too
            assert measure(line["text"].removeprefix("[QC] ").removesuffix(" " + OPT_OUT)).parts == 1
            assert (info.encoding, info.parts) == ("GSM-7", 2)
        else:
            assert r["run_id"] == public.run_id
            assert line["text"] == f"Ưu đãi tháng ba cho Người {i}: giảm giá cước"
            assert line["advertising"] is False and info.parts == 1


def test_advertising_text_frames_once() -> None:
    assert advertising_text("  Giảm giá  ", OPT_OUT) == f"[QC] Giảm giá {OPT_OUT}"
    assert advertising_text("[QC] Giảm giá", OPT_OUT) == f"[QC] Giảm giá {OPT_OUT}"
    assert advertising_text("[qc] Giảm giá", OPT_OUT) == f"[qc] Giảm giá {OPT_OUT}"
    assert advertising_text(f"Giảm giá {OPT_OUT}", OPT_OUT) == f"[QC] Giảm giá {OPT_OUT}"
    assert advertising_text("Giảm giá", "") == "[QC] Giảm giá"


def test_an_advertising_campaign_needs_opt_out_instructions(tmp_path: Path) -> None:
    workdir = tmp_path
    (workdir / "campaigns").mkdir()
    path = write(workdir / "campaigns" / "ad.toml", """
        name = "ad"
        advertising = true
        channels = ["sms"]
        [sms]
        template = "sms/ad.j2"
    """)
    campaign, problems = parse_file(path)
    assert campaign is None
    assert len(problems) == 1 and f"{path}: opt_out: " in problems[0] and "Decree 91" in problems[0]
    with pytest.raises(CampaignError, match="opt_out"):
        load_one(workdir / "campaigns", "ad")
    path.write_text(path.read_text(encoding="utf-8").replace("advertising = true",
                                                             'advertising = true\nopt_out = "   "'))
    assert any(": opt_out: " in p for p in parse_file(path)[1])
    path.write_text(path.read_text(encoding="utf-8").replace('opt_out = "   "', f'opt_out = "{OPT_OUT}"'))
    campaign, problems = parse_file(path)
    assert problems == [] and campaign is not None and campaign.opt_out == OPT_OUT


@pytest.mark.parametrize(("brandname", "problem"), [
    ("SởYTế", "diacritics"),
    ("SOYTE-SONLA-2020", "1 to 11"),
    ("SO*YTE", "1 to 11"),
    ("SOYTE SONLA", None),
    ("+84912000001", None),        # a numeric sender is not a brandname: not this check's business
])
def test_advertising_brandname_is_checked(tmp_path: Path, brandname: str, problem: str | None) -> None:
    workdir = tmp_path               # no database needed: the check reads settings only
    for folder in ("campaigns", "templates/sms", "templates/zalo"):
        (workdir / folder).mkdir(parents=True)
    config = from_mapping({
        "defaults": {"sms_gateway": "esms"},
        "gateways": {"esms": {"type": "esms", "brandname": brandname, "api_key_env": "LOA_T_KEY",
                              "secret_key_env": "LOA_T_SECRET"}},
    }, root=workdir)
    ad = make_campaign(workdir, "ad", advertising=True, opt_out=OPT_OUT)
    pub = make_campaign(workdir, "pub")
    found = advertising_problems(config, ad)
    if problem is None:
        assert found == []
    else:
        assert len(found) == 1
        assert problem in found[0] and repr(brandname) in found[0] and "'esms'" in found[0]
        assert str(ad.path) in found[0]
        # and the whole-campaign check lists it too
        assert found[0] in campaign_problems(config, ad, None)
    assert advertising_problems(config, pub) == []     # public interest may use any sender


def test_brandname_problem_directly() -> None:
    assert brandname_problem("BLUEZONE") is None
    assert brandname_problem("Bộ Y tế") is not None and "diacritics" in brandname_problem("Bộ Y tế")  # type: ignore[operator]
    assert "1 to 11" in (brandname_problem("A" * 12) or "")
    assert "1 to 11" in (brandname_problem("") or "")


# -- opt-out words ---------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["TC", "tc", " Tc ", "Từ chối", "TU CHOI", "tu choi QC", "huỷ", "Hủy", "HUY",
                                  "STOP", "stop please", "Stop.", "tc 1234"])
def test_opt_out_words(text: str) -> None:
    assert is_opt_out(text)


@pytest.mark.parametrize("text", ["TCB", "ok", "", "   ", "Tôi muốn", "stopped", "huyen", "vâng TC", "T C"])
def test_not_opt_out_words(text: str) -> None:
    assert not is_opt_out(text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.one_of(st.sampled_from(list("TCtcUuHhYyOoIiSsPpĐđ .,!ừốủỷýỳ")),
                                  st.characters(codec="utf-8")), max_size=12))
def test_opt_out_ignores_case_and_diacritics(text: str) -> None:
    assert is_opt_out(text) == is_opt_out(text.lower()) == is_opt_out(unaccent(text))


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["TC", "TU CHOI", "HUY", "STOP", "từ chối", "Hủy", "tc"]), st.text(max_size=10))
def test_an_opt_out_word_first_is_an_opt_out(word: str, rest: str) -> None:
    assert is_opt_out(f"{word} {rest}")
    assert is_opt_out(f"  {word}")
