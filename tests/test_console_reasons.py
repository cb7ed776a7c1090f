"""The reasons loa keeps in the database, said in the console's language (``loa.reasons``).

Each reason is produced for real, by loa's own code (a dispatcher held by a frequency cap, by
the send window or by a budget, a pause from the console, a fallback, an expiry, a gateway that
refuses), then read on the console by a Vietnamese user and by an English one.  The database
keeps the English as before: the CLI, the API and the exports read it.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from conftest import VIETNAM, write
from sqlalchemy import select
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient
from test_console import csrf, post, sign_in
from test_dispatch import add_events, import_people, phone

from loa import cost, db, gateways, importer, lifecycle, policy, reasons, subjects
from loa.campaign import Campaign, load_one
from loa.config import Config, load
from loa.dispatch import Dispatcher
from loa.i18n import language
from loa.plan import EVENT_REASON, plan_run
from loa.web import Web
from providers.fakes.esms import FakeESMS
from providers.fakes.twilio import FakeTwilio
from providers.fakes.zalo import FakeZalo

O, C = db.outbox, db.campaigns
ALL_DAY = '[window]\nstart = "00:00"\nend = "24:00"\n'


def configure(workdir: Path, extra: str = "") -> Config:
    """The workdir's configuration with ``extra`` (gateway tables) added."""
    path = workdir / "config.toml"
    if extra:
        path.write_text(path.read_text(encoding="utf-8") + extra, encoding="utf-8")
    return load(path)


def gateway(name: str, **settings: Any) -> str:
    """A [gateways.NAME] table of config.toml."""
    return f"\n[gateways.{name}]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())


def campaign(workdir: Path, name: str, top: str = "", tables: str = ALL_DAY, *, channels: tuple[str, ...] = ("sms",),
             sms: str = "", zalo: str = "") -> Campaign:
    """A campaign for all of Sơn La: ``top`` keys, then ``tables`` ([window] open all day unless
    said), then its [sms] (and [zalo]) with ``sms``/``zalo`` lines added."""
    write(workdir / "templates" / "sms" / f"{name}.j2", "Chao {{ subscriber.name }}\n")
    text = f'name = "{name}"\nchannels = {list(channels)!r}\n'.replace("'", '"') + top
    text += '[segment]\nareas = ["Sơn La"]\n' + tables
    text += f'[sms]\ntemplate = "sms/{name}.j2"\n{sms}\n'
    if "zalo" in channels:
        write(workdir / "templates" / "zalo" / f"{name}.toml", """
            template_id = "9001"
            [data]
            customer_name = "{{ subscriber.name }}"
        """)
        text += f'[zalo]\ntemplate = "zalo/{name}.toml"\n{zalo}\n'
    (workdir / "campaigns" / f"{name}.toml").write_text(text, encoding="utf-8")
    return load_one(workdir / "campaigns", name)


@pytest.fixture(autouse=True)
def in_workdir(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workdir)   # the file gateway's path is relative to the working directory


@pytest.fixture
def web(engine: Engine, workdir: Path) -> Iterator[Web]:
    app = Web(engine, load(workdir / "config.toml"))
    yield app
    app.pool.close()


def readers(web: Web) -> tuple[TestClient, TestClient]:
    """An admin who reads Vietnamese (the default) and one who chose English."""
    vi, en = sign_in(web, "hoa", "admin"), sign_in(web, "ben", "admin")
    en.post("/console/language", data={"csrf": csrf(en.get("/console/").text), "lang": "en", "next": "/console/"})
    return vi, en


def messages(client: TestClient, name: str) -> list[tuple[str, str, str]]:
    """(state, reason, error) of each message on the first page of a campaign's messages."""
    r = client.get(f"/console/campaigns/{name}/messages")
    assert r.status_code == 200, r.text[:300]
    cells = re.findall(r'<span class="state state-[a-z_]+">([^<]*)</span>(?: <small data-reason>([^<]*)</small>)?'
                       r'(?: <small data-error>([^<]*)</small>)?</td>', r.text)
    assert cells, r.text[:500]
    return [(html.unescape(s), html.unescape(why), html.unescape(error)) for s, why, error in cells]


def reasons_of(client: TestClient, name: str) -> set[str]:
    return {why for _, why, _ in messages(client, name) if why}


def shown(client: TestClient, url: str, attribute: str) -> dict[str, str]:
    """What elements with ``attribute`` (its value: their text) show on the page at ``url``."""
    page = client.get(url).text
    return {key: html.unescape(text) for key, text in
            re.findall(rf'{attribute}="([^"]*)">([^<]*)<', page) if text}


def stored(engine: Engine, name: str, column: Any = O.c.reason) -> set[str | None]:
    with engine.connect() as conn:
        return set(conn.scalars(select(column).join(db.runs, db.runs.c.id == O.c.run_id)
                                .join(C, C.c.id == db.runs.c.campaign_id).where(C.c.name == name)))


def send(engine: Engine, config: Config, **kw: Any) -> None:
    dispatcher = Dispatcher(engine, config, **kw)
    try:
        dispatcher.run_until_empty()
    finally:
        dispatcher.pool.close()


# -- the policy: suppressions, the frequency cap, the send window ----------------------------------

def test_the_policys_reasons_are_said_in_each_readers_language(engine: Engine, workdir: Path, tmp_path: Path,
                                                               web: Web) -> None:
    import_people(engine, tmp_path, n=6)
    with engine.begin() as conn:
        policy.opt_out(conn, phone(0), db.utcnow(), "test")          # refused: opted out (and listed)
    listed = write(tmp_path / "dnc.csv", f"phone\n{phone(1)}\n")
    importer.run_import(engine, importer.DncHandler(engine, listed), listed)
    add_events(engine, [phone(2)])                                    # installed already
    config = configure(workdir)
    plan_run(engine, config, campaign(workdir, "first", 'suppress_events = ["installed"]\n'))
    send(engine, config)
    plan_run(engine, config, campaign(workdir, "capped", "frequency_cap = 1\n"))
    send(engine, config)
    night = datetime.combine(datetime.now(VIETNAM).date(), time(23, 30), VIETNAM)
    with time_machine.travel(night, tick=True):           # loa's default window, 07:00-22:00, is shut
        plan_run(engine, config, campaign(workdir, "night", tables=""))
        send(engine, config)
    # the database keeps what it kept: English, and codes
    assert stored(engine, "first") == {"opted_out", "dnc", "event:installed", None}
    assert stored(engine, "capped") == {"opted_out", "dnc", "frequency cap", None}
    assert stored(engine, "night") == {"opted_out", "dnc", "outside the sms send window 07:00-22:00"}

    vi, en = readers(web)
    said = {"first": ({"từ chối nhận tin", "có trong danh sách không nhận cuộc gọi (DNC)", "đã cài đặt"},
                      {"opted out", "on the Do-Not-Call list", "already installed"}),
            "capped": ({"từ chối nhận tin", "có trong danh sách không nhận cuộc gọi (DNC)", "giới hạn tần suất gửi"},
                       {"opted out", "on the Do-Not-Call list", "frequency cap"}),
            "night": ({"từ chối nhận tin", "có trong danh sách không nhận cuộc gọi (DNC)",
                       "ngoài khung giờ gửi SMS 07:00-22:00"},
                      {"opted out", "on the Do-Not-Call list", "outside the sms send window 07:00-22:00"})}
    for name, (in_vietnamese, in_english) in said.items():
        assert reasons_of(vi, name) == in_vietnamese, name
        assert reasons_of(en, name) == in_english, name
    # the states beside them, too
    states_vi, states_en = ({s for s, _, _ in messages(c, "capped")} for c in (vi, en))
    assert {"bị loại trừ", "hoãn lại"} <= states_vi and not {"suppressed", "deferred"} & states_vi
    assert {"suppressed", "deferred"} <= states_en and not {"bị loại trừ", "hoãn lại"} & states_en


# -- pauses: by an official, by the budget; a cancellation --------------------------------------

def test_a_pause_a_budget_stop_and_a_cancellation_are_said_in_each_readers_language(
        engine: Engine, workdir: Path, tmp_path: Path, web: Web) -> None:
    import_people(engine, tmp_path, n=6)
    config = configure(workdir, gateway("priced", type="simulator", rate=100000, delivery_rate=1.0, price_per_part=1000))
    plan_run(engine, config, campaign(workdir, "budgeted", "budget = 2500\n", sms='gateway = "priced"'))
    send(engine, config, threads=1)          # two messages fit; the third would take it over 2,500
    for name in ("held", "stopped"):
        plan_run(engine, config, campaign(workdir, name))
    vi, en = readers(web)
    post(vi, "/console/campaigns/held", "/console/campaigns/held/action/pause", reason="sai nội dung")
    post(vi, "/console/campaigns/stopped", "/console/campaigns/stopped/action/cancel", reason="thôi")

    budget = "budget 2,500 VND: 2,000 VND spent or in flight, and the next message costs 1,000 VND"
    with engine.connect() as conn:
        assert conn.scalar(select(C.c.state_reason).where(C.c.name == "budgeted")) == budget
    assert stored(engine, "budgeted") == {None, f"paused by system: {budget}"}
    assert stored(engine, "held") == {"paused by user:hoa: sai nội dung"}
    assert stored(engine, "stopped") == {"cancelled by user:hoa: thôi"}

    said_vi = ("ngân sách 2.500 đồng: đã chi hoặc đang gửi 2.000 đồng, và tin nhắn tiếp theo có giá 1.000 đồng")
    assert reasons_of(vi, "budgeted") == {f"tạm dừng bởi hệ thống: {said_vi}"}
    assert reasons_of(en, "budgeted") == {f"paused by system: {budget}"}
    assert _state_reason(vi, "budgeted") == said_vi and _state_reason(en, "budgeted") == budget
    assert reasons_of(vi, "held") == {"tạm dừng bởi user:hoa: sai nội dung"}
    assert reasons_of(en, "held") == {"paused by user:hoa: sai nội dung"}
    assert _state_reason(vi, "held") == _state_reason(en, "held") == "sai nội dung"   # an official's words
    assert reasons_of(vi, "stopped") == {"hủy bởi user:hoa: thôi"}
    assert reasons_of(en, "stopped") == {"cancelled by user:hoa: thôi"}


def _state_reason(client: TestClient, name: str) -> str:
    found = re.search(r"<span data-state-reason>([^<]*)</span>", client.get(f"/console/campaigns/{name}").text)
    assert found, name
    return html.unescape(found.group(1))


# -- fallbacks and expiry -------------------------------------------------------------------------

def test_fallbacks_and_an_expiry_are_said_in_each_readers_language(
        engine: Engine, workdir: Path, tmp_path: Path, web: Web, vietnam_daytime: datetime) -> None:
    import_people(engine, tmp_path, n=4)
    config = configure(workdir, gateway("lost", type="simulator", rate=100000, delivery_rate=0.0)
                       + gateway("held", type="simulator"))
    plan_run(engine, config, campaign(workdir, "lost", channels=("sms", "zalo"), sms='gateway = "lost"'))
    plan_run(engine, config, campaign(workdir, "quiet", channels=("sms", "zalo"),
                                      sms='gateway = "jsonl"\nfallback_after = "2h"'))
    plan_run(engine, config, campaign(workdir, "late", "validity_hours = 12\n", sms='gateway = "held"'))
    gateways.pause(engine, "held", "held for the test")      # so that the late campaign's messages wait
    send(engine, config)                                     # every SMS of "lost" is undelivered; "quiet" sent
    Dispatcher(engine, config).fallback_timeouts()
    with time_machine.travel(vietnam_daytime + timedelta(hours=3), tick=True):
        Dispatcher(engine, config).fallback_timeouts()       # no receipt from the file gateway within 2h
    with time_machine.travel(vietnam_daytime + timedelta(hours=13), tick=True):
        Dispatcher(engine, config).expire()
    assert stored(engine, "lost") == {"sms undelivered; moved to zalo"}
    assert stored(engine, "quiet") == {"no sms receipt within 2h; moved to zalo"}
    assert stored(engine, "late", O.c.error_text) == {"not sent within the validity of 12 h"}

    vi, en = readers(web)
    assert reasons_of(vi, "lost") == {"SMS không đến máy; đã chuyển sang Zalo"}
    assert reasons_of(en, "lost") == {"sms undelivered; moved to zalo"}
    assert reasons_of(vi, "quiet") == {"không có báo nhận SMS trong vòng 2h; đã chuyển sang Zalo"}
    assert reasons_of(en, "quiet") == {"no sms receipt within 2h; moved to zalo"}
    assert {(s, e) for s, _, e in messages(vi, "late")} == {("hết hạn", "không gửi được trong thời hạn hiệu lực 12 giờ")}
    assert {(s, e) for s, _, e in messages(en, "late")} == {("expired", "not sent within the validity of 12 h")}


# -- Zalo: a deferral the gateway asks for, a number it cannot reach -------------------------------

def test_what_zalo_answers_is_said_in_each_readers_language_its_words_as_they_are(
        engine: Engine, workdir: Path, tmp_path: Path, web: Web, monkeypatch: pytest.MonkeyPatch,
        vietnam_daytime: datetime) -> None:
    import_people(engine, tmp_path, n=3)
    with FakeZalo() as fake:
        for name, value in (("SECRET", fake.secret_key), ("OA_SECRET", fake.oa_secret), ("AT", fake.access_token),
                            ("RT", fake.refresh_token)):
            monkeypatch.setenv(f"LOA_TEST_ZALO_{name}", value)
        config = configure(workdir, gateway(
            "zl", type="zalo_zns", app_id=fake.app_id, secret_key_env="LOA_TEST_ZALO_SECRET",
            oa_secret_env="LOA_TEST_ZALO_OA_SECRET", access_token_env="LOA_TEST_ZALO_AT",
            refresh_token_env="LOA_TEST_ZALO_RT", base_url=fake.url, oauth_url=fake.url, timeout=5, rate=1000))
        fake.fail_phone(phone(0), -133)      # "no ZNS at night", in daylight: wait and send later
        fake.fail_phone(phone(1), -108)      # not a Zalo user: on to SMS
        plan_run(engine, config, campaign(workdir, "zns", channels=("zalo", "sms"), sms='gateway = "jsonl"',
                                          zalo='gateway = "zl"'))
        gateways.pause(engine, "jsonl", "held for the test")   # the SMS waits, with what Zalo said
        send(engine, config)
    with engine.connect() as conn:
        rows = {p: (state, why, error) for p, state, why, error in conn.execute(
            select(db.subscribers.c.phone, O.c.state, O.c.reason, O.c.error_text)
            .join(db.subscribers, db.subscribers.c.id == O.c.subscriber_id))}
    night, unreachable = rows[phone(0)], rows[phone(1)]
    assert night[:2] == ("deferred", "deferred") and unreachable[0] == "planned"
    assert unreachable[2].startswith("moved to sms: ") and "fake error -108" in unreachable[2]

    vi, en = readers(web)
    seen_vi, seen_en = messages(vi, "zns"), messages(en, "zns")
    assert ("hoãn lại", "cổng gửi tin yêu cầu gửi lại sau", night[2]) in seen_vi       # Zalo's words as they are
    assert ("deferred", "the gateway asked to send later", night[2]) in seen_en
    words = unreachable[2].removeprefix("moved to sms: ")
    assert ("đang chờ", "", f"đã chuyển sang SMS: {words}") in seen_vi
    assert ("queued", "", f"moved to sms: {words}") in seen_en


def test_a_gateways_words_in_a_messages_error_are_shown_as_they_are_their_numbers_masked(
        engine: Engine, workdir: Path, tmp_path: Path, web: Web, monkeypatch: pytest.MonkeyPatch) -> None:
    import_people(engine, tmp_path, n=2)
    for variable in ("TWILIO_REGION", "TWILIO_EDGE"):
        monkeypatch.delenv(variable, raising=False)
    with FakeTwilio() as fake:
        monkeypatch.setenv("LOA_TEST_TWILIO_TOKEN", fake.auth_token)
        config = configure(workdir, gateway("tw", type="twilio", account_sid=fake.account_sid,
                                            auth_token_env="LOA_TEST_TWILIO_TOKEN", from_number="+15005550006",
                                            base_url=fake.url, timeout=5, rate=1000))
        fake.failures[phone(0)] = (400, 21211, f"The 'To' number {phone(0)} is not a valid phone number.")
        plan_run(engine, config, campaign(workdir, "tw", sms='gateway = "tw"'))
        send(engine, config)
    [error] = stored(engine, "tw", O.c.error_text) - {None}
    assert error == "tw: HTTP 400: The 'To' number +8491****000 is not a valid phone number. (code 21211)"
    vi, en = readers(web)
    for client in (vi, en):           # Twilio's words, in no language of ours, as the adapter kept them
        assert [e for _, _, e in messages(client, "tw") if e] == [error]
    # a gateway of a plug-in that keeps the number in its words: the page masks it as it masks the recipients
    with engine.begin() as conn:
        conn.execute(O.update().where(O.c.error_text == error).values(error_text=f"number {phone(0)} is barred"))
    for client in (vi, en):
        assert [e for _, _, e in messages(client, "tw") if e] == ["number +8491****000 is barred"]
        assert phone(0) not in client.get("/console/campaigns/tw/messages").text


# -- gateways paused: on the dashboard and the gateways page --------------------------------------

def test_a_paused_gateways_reason_is_said_in_each_readers_language_and_an_unknown_one_as_it_is(
        engine: Engine, workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import_people(engine, tmp_path, n=2)
    monkeypatch.setenv("T_ESMS_KEY", "not-the-key")
    monkeypatch.setenv("T_ESMS_SECRET", "test-secret-key")
    monkeypatch.delenv("T_ESMS_NOWHERE", raising=False)
    with FakeESMS() as fake:
        tables = "".join(gateway(name, type="esms", api_key_env=key, secret_key_env="T_ESMS_SECRET", brandname="LOA",
                                 base_url=fake.url) for name, key in (("esms", "T_ESMS_KEY"), ("broken", "T_ESMS_NOWHERE")))
        config = configure(workdir, tables)
        plan_run(engine, config, campaign(workdir, "refused", sms='gateway = "esms"'))
        plan_run(engine, config, campaign(workdir, "unbuilt", sms='gateway = "broken"'))
        send(engine, config)
    paused = gateways.paused(engine)
    refusal, unbuilt = paused["esms"]["reason"], paused["broken"]["reason"]
    assert refusal.startswith("auth error: ") and "ApiKey" in refusal        # eSMS's 101, in its words
    words = refusal.removeprefix("auth error: ")
    assert reasons.read(unbuilt) == unbuilt                                    # nothing loa recognises

    app = Web(engine, config)
    try:
        vi, en = readers(app)
        for url, attribute in (("/console/", "data-paused-reason"), ("/console/gateways", "data-paused-reason")):
            assert shown(vi, url, attribute) == {"esms": f"lỗi xác thực: {words}", "broken": unbuilt}, url
            assert shown(en, url, attribute) == {"esms": refusal, "broken": unbuilt}, url
    finally:
        app.pool.close()


# -- the recogniser itself -------------------------------------------------------------------------

SAMPLES: dict[str, dict[str, Any]] = {
    lifecycle.PAUSED: {"who": "user:hoa", "reason": "sai nội dung"},
    lifecycle.CANCELLED: {"who": "system", "reason": "thôi"},
    lifecycle.WAITING: {"state": "pending_approval"},
    cost.BUDGET_STOP: {"budget": 1_234_567, "total": 1_234_000, "next": cost.NEXT_COSTS.format(cost=890)},
    policy.WINDOW: {"channel": "zalo", "start": "06:00", "end": "22:00"},
    Dispatcher.UNDELIVERED: {"channel": "zalo", "next": "sms"},
    Dispatcher.NO_RECEIPT: {"channel": "sms", "after": "90m", "next": "zalo"},
    Dispatcher.EXPIRED: {"hours": 1.5},
    EVENT_REASON: {"kind": "installed"},
    gateways.PAUSED_FOR: {"kind": "money", "text": "103: balance too low"},
    subjects.RESTRICTED: {"who": "user:hoa", "reason": "yêu cầu số 12"},
    subjects.ERASED: {"who": "user:hoa", "reason": "yêu cầu số 13"},
}


@pytest.mark.parametrize("form", list(SAMPLES))
def test_every_stored_format_is_recognised_and_said_in_vietnamese(form: str) -> None:
    text = form.format(**SAMPLES[form])
    read = reasons.read(text)
    assert read is not text and read.in_language(language("vi")) != text, text   # type: ignore[attr-defined]
    if form not in (EVENT_REASON,):   # a sentence: its English is what is stored
        assert str(read) == read.in_language(language("en")) == text          # type: ignore[attr-defined]


def test_numbers_follow_the_language_and_what_loa_did_not_write_stays_as_it_is() -> None:
    vi, en = language("vi"), language("en")
    text = reasons.read(cost.BUDGET_STOP.format(budget=1_234_567, total=1_234_000, next=cost.NEXT_UNPRICED))
    assert text.in_language(vi) == ("ngân sách 1.234.567 đồng: đã chi hoặc đang gửi 1.234.000 đồng, "   # type: ignore[attr-defined]
                                    "và tin nhắn tiếp theo chưa có giá")
    assert reasons.read(Dispatcher.EXPIRED.format(hours=1.5)).in_language(vi).endswith(" 1,5 giờ")  # type: ignore[attr-defined]
    assert reasons.read(Dispatcher.EXPIRED.format(hours=1.5)).in_language(en).endswith(" 1.5 h")    # type: ignore[attr-defined]
    for text in ("Hết tiền {x}: 50%", "paused by", "budget 12 VND: x", "weird error: 42", "", "event:"):
        assert reasons.read(text) == text and type(reasons.read(text)) is str, text
    # a code in an official's reason is the official's word, not loa's
    assert reasons.read("paused by user:hoa: dnc").in_language(vi) == "tạm dừng bởi user:hoa: dnc"  # type: ignore[attr-defined]
    # a pause reason cut to the column's width is still read, its words as they are
    cut = lifecycle.pause_reason("user:hoa", "x" * 300)
    assert len(cut) == lifecycle.REASON_WIDTH
    assert reasons.read(cut).in_language(vi) == "tạm dừng bởi user:hoa: " + "x" * (200 - len("paused by user:hoa: "))  # type: ignore[attr-defined]
