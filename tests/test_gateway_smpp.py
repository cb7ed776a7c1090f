"""The SMPP gateway against a loopback fake SMSC: real sockets, real PDUs.

Nothing is mocked: providers.smpp binds to providers.fakes.smpp.FakeSMSC over
TCP; the fake decodes with smpplib, independently of the provider's reader.
Waits are on conditions (FakeSMSC.wait_for), never fixed sleeps, except one
short negative check that the window holds.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from smpplib import gsm as smpplib_gsm
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from test_gateways_cli import CASES, add_gateway, outbox_rows, plan_campaign
from test_web import dnc, events, outbox, subscriber

from loa import db, inbound
from loa import text as loa_text
from loa.campaign import load_one
from loa.config import load
from loa.dispatch import Dispatcher
from loa.inbound import DEFAULT_OPT_OUT_REPLY
from loa.plan import plan_run
from providers import registry, smpp
from providers.base import (
    AuthError,
    ConfigError,
    OutgoingMessage,
    PermanentError,
    RetryableError,
    ThrottledError,
)
from providers.fakes.smpp import FakeSMSC, gsm7_decode
from providers.smpp import (
    DeliverSM,
    ParsedReceipt,
    SMPPProvider,
    decode_text,
    encode_parts,
    gsm7_encode,
    parse_receipt_text,
)

PHONE = "+84912345678"
VIETNAMESE = (
    "Bộ Y tế khuyến cáo: hãy cài đặt ứng dụng Bluezone để được cảnh báo khi tiếp xúc gần "
    "người nhiễm COVID-19. Bluezone không thu thập vị trí, bảo vệ quyền riêng tư của bạn. "
    "Tải tại https://bluezone.gov.vn — cảm ơn bạn đã chung tay cùng cộng đồng phòng chống dịch!"
)


def msg(key: str = "k1", text: str = "Hello", to: str = PHONE, **kw: Any) -> OutgoingMessage:
    info = loa_text.measure(text)
    kw.setdefault("encoding", info.encoding)
    kw.setdefault("parts", info.parts)
    return OutgoingMessage(key=key, to=to, channel="sms", text=text, **kw)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@pytest.fixture
def smsc() -> Iterator[FakeSMSC]:
    with FakeSMSC(system_id="loa", password="secret") as fake:
        yield fake


@pytest.fixture
def make_provider(smsc: FakeSMSC) -> Iterator[Callable[..., SMPPProvider]]:
    made: list[SMPPProvider] = []

    def make(**options: Any) -> SMPPProvider:
        opts = smsc.provider_options(source_addr="BLUEZONE", system_type="loa",
                                     enquire_link_interval=0) | options
        p = SMPPProvider("smpp-test", opts)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


@pytest.fixture
def provider(make_provider: Callable[..., SMPPProvider]) -> SMPPProvider:
    return make_provider()


# -- sending -----------------------------------------------------------------------

def test_registered_under_type_smpp() -> None:
    assert registry.get("smpp") is SMPPProvider
    assert SMPPProvider.dedupes_by_key is False
    assert SMPPProvider.rate == 50.0


def test_gsm7_message_in_one_part(smsc: FakeSMSC, provider: SMPPProvider) -> None:
    text = "Bluezone: 100% an toan @ home § {ok} €5"
    result = provider.send(msg("k1", text))

    assert smsc.binds == [{"connection": 1, "system_id": "loa", "password": "secret",
                           "system_type": "loa", "status": 0}]
    [s] = smsc.submits
    assert (s.source_addr, s.source_addr_ton, s.source_addr_npi) == ("BLUEZONE", 5, 0)
    assert (s.destination_addr, s.dest_addr_ton, s.dest_addr_npi) == ("84912345678", 1, 1)
    assert (s.data_coding, s.esm_class, s.registered_delivery, s.udh) == (0, 0, 1, b"")
    # unpacked septets with the right table: "§" is 0x5F, "€" is ESC 0x65, "{" ESC 0x28
    assert b"\x5f" in s.short_message and b"\x1b\x65" in s.short_message
    assert b"\x1b\x28ok\x1b\x29" in s.short_message
    assert s.decode() == text
    assert result.provider_id == s.message_id
    assert result.parts == 1 and result.status == "sent"
    assert result.raw["encoding"] == "GSM-7" and result.raw["data_coding"] == 0


def test_long_vietnamese_message_goes_as_ucs2_parts_with_udh(smsc: FakeSMSC,
                                                             provider: SMPPProvider) -> None:
    m = msg("k-vi", VIETNAMESE)
    assert m.encoding == "UCS-2" and m.parts >= 3
    result = provider.send(m)

    parts = smsc.accepted()
    assert len(parts) == m.parts == result.parts
    refs = set()
    for i, s in enumerate(parts, start=1):
        assert s.data_coding == 8
        assert s.esm_class & 0x40
        assert s.udh[:2] == b"\x00\x03" and s.short_message[0] == 5
        ref, total, seq = s.concat
        refs.add(ref)
        assert (total, seq) == (len(parts), i)
        assert len(s.payload) <= 134            # 67 UTF-16 units
    assert len(refs) == 1
    [whole] = smsc.messages()
    assert whole.payload == VIETNAMESE.encode("utf-16-be")
    assert whole.text == VIETNAMESE
    assert result.provider_id == parts[0].message_id
    assert result.raw["message_ids"] == [s.message_id for s in parts]


def test_a_later_part_throttled_is_retried_so_the_message_arrives_whole(
        smsc: FakeSMSC, provider: SMPPProvider) -> None:
    smsc.queue_status(0x00)
    smsc.queue_status(0x58)          # part 2, first try
    result = provider.send(msg("k", VIETNAMESE))
    assert [s.status for s in smsc.submits][:3] == [0x00, 0x58, 0x00]
    assert [m.text for m in smsc.messages()] == [VIETNAMESE]
    assert result.parts == len(smsc.accepted())


def test_a_later_part_refused_for_good_makes_the_send_ambiguous(
        smsc: FakeSMSC, provider: SMPPProvider) -> None:
    smsc.queue_status(0x00)
    smsc.queue_status(0x0B)          # part 2
    with pytest.raises(RetryableError) as info:
        provider.send(msg("k", VIETNAMESE))
    assert info.value.ambiguous and info.value.code == "0x0B"
    assert "partly sent: 1 of" in str(info.value)


# -- receipts ------------------------------------------------------------------------

def test_receipts_arrive_as_deliver_sm_and_are_fetched_once_per_message(
        smsc: FakeSMSC, provider: SMPPProvider) -> None:
    r1 = provider.send(msg("k-gsm", "Xin chao"))
    r2 = provider.send(msg("k-vi", VIETNAMESE))
    parts = 1 + r2.parts
    assert smsc.wait_for(lambda: len(smsc.receipt_acks) == parts)
    assert smsc.receipt_acks == [0] * parts          # every deliver_sm answered ROK

    receipts = sorted(provider.fetch_receipts(), key=lambda r: r.key or "")
    assert [(r.key, r.provider_id, r.status) for r in receipts] == [
        ("k-gsm", r1.provider_id, "delivered"), ("k-vi", r2.provider_id, "delivered")]
    assert all(r.at is not None and r.at.tzinfo is not None for r in receipts)
    assert provider.fetch_receipts() == []


def test_any_failed_part_makes_the_message_undelivered(smsc: FakeSMSC,
                                                       provider: SMPPProvider) -> None:
    # the first part's receipt is lost, the second says UNDELIV
    smsc.receipt_stat = lambda s: {1: None, 2: "UNDELIV"}.get(s.concat[2], "DELIVRD")
    result = provider.send(msg("k", VIETNAMESE))
    assert smsc.wait_for(lambda: len(smsc.receipt_acks) == result.parts - 1)
    [r] = provider.fetch_receipts()
    assert (r.status, r.provider_id, r.key, r.error_code) == (
        "undelivered", result.provider_id, "k", "UNDELIV")
    assert "err:001" in (r.error_text or "")


def test_delivered_is_the_first_parts_word(smsc: FakeSMSC, provider: SMPPProvider) -> None:
    # later parts delivered, the first part's receipt not yet here: no verdict
    smsc.receipt_stat = lambda s: None if s.concat[2] == 1 else "DELIVRD"
    result = provider.send(msg("k", VIETNAMESE))
    assert smsc.wait_for(lambda: len(smsc.receipt_acks) == result.parts - 1)
    assert provider.fetch_receipts() == []
    # a failure after the first part's "delivered" changes nothing (first verdict wins)
    smsc.receipt_stat = lambda s: "DELIVRD" if s.concat[2] == 1 else "UNDELIV"
    result = provider.send(msg("k2", VIETNAMESE))
    assert smsc.wait_for(lambda: len(smsc.receipt_acks) == 2 * result.parts - 1)
    assert [(r.status, r.provider_id) for r in provider.fetch_receipts()] == [
        ("delivered", result.provider_id)]


@pytest.mark.parametrize("stat", ["EXPIRED", "REJECTD", "DELETED"])
def test_final_failure_stats_are_undelivered(smsc: FakeSMSC, provider: SMPPProvider,
                                             stat: str) -> None:
    smsc.receipt_stat = stat
    result = provider.send(msg("k", "hi"))
    assert smsc.wait_for(lambda: len(smsc.receipt_acks) == 1)
    [r] = provider.fetch_receipts()
    assert (r.status, r.provider_id, r.error_code) == ("undelivered", result.provider_id, stat)


def test_receipts_without_tlvs_and_with_a_decimal_id_still_match(
        smsc: FakeSMSC, provider: SMPPProvider) -> None:
    smsc.receipt_tlvs = False
    smsc.receipt_id_decimal = True     # submit_sm_resp said hex, the receipt text says decimal
    result = provider.send(msg("k", "hi"))
    assert smsc.wait_for(lambda: len(smsc.receipt_acks) == 1)
    assert [(r.status, r.provider_id, r.key) for r in provider.fetch_receipts()] == [
        ("delivered", result.provider_id, "k")]


def test_non_final_and_unknown_receipts(provider: SMPPProvider) -> None:
    provider.on_receipt(ParsedReceipt(message_id="X1", stat="ACCEPTD"))
    provider.on_receipt(ParsedReceipt(message_id="X2", stat="ENROUTE"))
    assert provider.fetch_receipts() == []
    # an id this process never sent (a restart, another bind): reported under its own id
    provider.on_receipt(ParsedReceipt(message_id="FFEE01", stat="DELIVRD"))
    [r] = provider.fetch_receipts()
    assert (r.provider_id, r.key, r.status) == ("FFEE01", None, "delivered")


def test_receipt_text_stops_at_the_message_excerpt() -> None:
    fields = parse_receipt_text("id:7 sub:001 dlvrd:000 submit date:2008081234 "
                                "done date:2008081235 stat:UNDELIV err:021 text:stat:DELIVRD id:9")
    assert fields == {"id": "7", "sub": "001", "dlvrd": "000", "submit date": "2008081234",
                      "done date": "2008081235", "stat": "UNDELIV", "err": "021"}


def test_receipt_done_date_in_the_smsc_timezone(provider: SMPPProvider,
                                                make_provider: Callable[..., SMPPProvider]) -> None:
    p = make_provider(receipt_timezone="Asia/Ho_Chi_Minh")
    p.on_receipt(ParsedReceipt(message_id="A1", stat="DELIVRD", done="2008171530"))
    [r] = p.fetch_receipts()
    assert r.at is not None and r.at.isoformat() == "2020-08-17T08:30:00+00:00"


# -- inbound SMS (mobile-originated deliver_sm) --------------------------------------------

def test_inbound_sms_are_answered_decoded_and_queued_apart_from_receipts(
        smsc: FakeSMSC, provider: SMPPProvider) -> None:
    sent = provider.send(msg("k1", "Xin chao"))                 # binds; its receipt follows
    long_reply = "Cảm ơn rất nhiều, tôi đã cài Bluezone rồi 😀 và sẽ nhắc cả nhà cùng cài nhé!"
    assert smsc.send_mo("+84912000001", "STOP")                  # GSM-7
    assert smsc.send_mo("84912000002", "Tu chối")                # UCS-2
    assert smsc.send_mo("+84912000003", long_reply, part_size=20)   # 4 parts with a UDH
    assert smsc.send_mo("+84912000004", "huy " * 30, part_size=50, concat="sar")
    assert smsc.wait_for(lambda: len(smsc.receipt_acks) == 1 + 1 + 1 + 4 + 3)
    assert set(smsc.receipt_acks) == {0}                         # every deliver_sm answered ROK

    inbound = provider.fetch_inbound()
    assert [(m.phone, m.text) for m in inbound] == [
        ("+84912000001", "STOP"), ("+84912000002", "Tu chối"),
        ("+84912000003", long_reply), ("+84912000004", "huy " * 30)]
    assert all(m.at.tzinfo is not None and m.provider_id for m in inbound)
    assert provider.fetch_inbound() == []
    # the receipt is still a receipt, and no inbound SMS became one
    assert [(r.key, r.provider_id, r.status) for r in provider.fetch_receipts()] == [
        ("k1", sent.provider_id, "delivered")]


def test_an_inbound_sms_delivered_twice_keeps_its_id(smsc: FakeSMSC, provider: SMPPProvider) -> None:
    provider.send(msg())
    for text in ("TC", "TC", "tc"):
        assert smsc.send_mo("+84912000001", text)
    first, again, other = provider.fetch_inbound()
    assert first.provider_id == again.provider_id != other.provider_id
    assert first.provider_id.startswith("mo-")


def _part(source: str, number: int, text: str) -> DeliverSM:
    udh = bytes([5, 0, 3, 9, 2, number])
    return DeliverSM(esm_class=0x40, short_message=udh + gsm7_encode(text), tlvs={},
                     source=source, source_ton=1, destination="1234")


def test_a_message_whose_parts_stop_coming_goes_on_if_its_first_part_came(
        provider: SMPPProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    provider.on_inbound(_part("84912000001", 1, "HUY dang ky, "))   # part 2 is lost
    provider.on_inbound(_part("84912000002", 2, "stop it"))        # part 1 is lost
    assert provider.fetch_inbound() == []                            # still waiting
    monkeypatch.setattr(smpp, "PARTS_WAIT", 0.0)
    [m] = provider.fetch_inbound()
    assert (m.phone, m.text) == ("+84912000001", "HUY dang ky, ")   # the first words decide
    assert provider.fetch_inbound() == []


@pytest.mark.parametrize(("data_coding", "payload", "text"), [
    (0x00, gsm7_encode("Δ@ §x €"), "Δ@ §x €"),
    (0x00, "Hủy".encode("latin-1", "replace"), "H?y"),               # not septets: read as Latin-1
    (0x08, "Hủy".encode("utf-16-be"), "Hủy"),
    (0x18, "Hủy".encode("utf-16-be"), "Hủy"),                         # UCS-2, with a message class
    (0xF1, gsm7_encode("TC"), "TC"),
    (0x03, "café".encode("latin-1"), "café"),
    (0x08, "Hu\u0309y".encode("utf-16-be"), "Hủy"),                   # decomposed: NFC
])
def test_inbound_text_decoding(data_coding: int, payload: bytes, text: str) -> None:
    assert decode_text(data_coding, payload) == text


# -- command status mapping --------------------------------------------------------------

@pytest.mark.parametrize("status", [0x58, 0x14])
def test_throttling_statuses_raise_throttled(smsc: FakeSMSC, provider: SMPPProvider,
                                             status: int) -> None:
    smsc.queue_status(status)
    with pytest.raises(ThrottledError) as info:
        provider.send(msg())
    assert not info.value.ambiguous
    assert info.value.code == f"0x{status:02X}"
    assert provider.send(msg("k2")).provider_id      # the next one goes through


@pytest.mark.parametrize(("status", "cls"), [
    (0x0B, PermanentError),      # ESME_RINVDSTADR
    (0x0A, ConfigError),         # ESME_RINVSRCADR: brandname not allowed
    (0x45, RetryableError),      # ESME_RSUBMITFAIL
    (0x08, RetryableError),      # ESME_RSYSERR
    (0x61, PermanentError),      # ESME_RINVSCHED: anything else
])
def test_submit_status_mapping(smsc: FakeSMSC, provider: SMPPProvider, status: int,
                               cls: type) -> None:
    smsc.queue_status(status, destination=PHONE)
    with pytest.raises(cls) as info:
        provider.send(msg())
    assert type(info.value) is cls
    assert info.value.code == f"0x{status:02X}"
    assert not info.value.ambiguous


def test_wrong_password_is_an_auth_error_and_backs_off(smsc: FakeSMSC,
                                                       make_provider: Callable[..., SMPPProvider]) -> None:
    p = make_provider(password="wrong", reconnect_initial=30)
    with pytest.raises(AuthError) as info:
        p.send(msg())
    assert info.value.code == "0x0E"
    # within the back-off the next send fails fast, without another bind
    with pytest.raises(AuthError) as again:
        p.send(msg("k2"))
    assert again.value.retry_after is not None and again.value.retry_after > 20
    assert len(smsc.binds) == 1 and smsc.submits == []


def test_wrong_system_id_is_an_auth_error(make_provider: Callable[..., SMPPProvider]) -> None:
    with pytest.raises(AuthError) as info:
        make_provider(system_id="nobody").check()
    assert info.value.code == "0x0F"


# -- transport ---------------------------------------------------------------------------

def test_no_submit_sm_resp_is_ambiguous_within_the_timeout(
        smsc: FakeSMSC, make_provider: Callable[..., SMPPProvider]) -> None:
    p = make_provider(timeout=0.3)
    smsc.silent = True
    started = time.monotonic()
    with pytest.raises(RetryableError) as info:
        p.send(msg())
    assert info.value.ambiguous
    assert 0.25 <= time.monotonic() - started < 2.0
    assert len(smsc.submits) == 1


def test_a_late_answer_settles_the_ambiguous_message_by_key(
        smsc: FakeSMSC, make_provider: Callable[..., SMPPProvider]) -> None:
    p = make_provider(timeout=0.2)
    smsc.hold()
    with pytest.raises(RetryableError) as info:
        p.send(msg("k-late"))
    assert info.value.ambiguous
    smsc.release()                       # the answer and its receipt come late
    assert smsc.wait_for(lambda: len(smsc.receipt_acks) == 1)
    [r] = p.fetch_receipts()
    assert (r.key, r.provider_id, r.status) == ("k-late", None, "delivered")


def test_connection_dropped_after_submit_is_ambiguous(smsc: FakeSMSC,
                                                      provider: SMPPProvider) -> None:
    smsc.drop_after(1, answer=False)
    with pytest.raises(RetryableError) as info:
        provider.send(msg())
    assert info.value.ambiguous


def test_connection_dropped_by_the_smsc_next_send_reconnects(smsc: FakeSMSC,
                                                             provider: SMPPProvider) -> None:
    smsc.drop_after(1, answer=True)
    assert provider.send(msg("k1")).provider_id
    assert smsc.dropped.wait(5)
    assert wait_until(lambda: not provider.bound)
    result = provider.send(msg("k2"))
    assert result.provider_id == smsc.submits[-1].message_id
    assert [b["connection"] for b in smsc.binds] == [1, 2]


def test_unbind_from_the_smsc_is_answered_and_the_next_send_rebinds(
        smsc: FakeSMSC, provider: SMPPProvider) -> None:
    provider.send(msg("k1"))
    assert smsc.send_unbind()
    assert wait_until(lambda: not provider.bound)
    provider.send(msg("k2"))
    assert len(smsc.binds) == 2 and len(smsc.accepted()) == 2


def test_unreachable_smsc_is_retryable_not_ambiguous_and_backs_off() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]        # closed again: nobody listens there
    p = SMPPProvider("smpp", {"host": "127.0.0.1", "port": port, "system_id": "loa",
                              "password": "secret", "source_addr": "LOA", "timeout": 1,
                              "reconnect_initial": 5})
    with pytest.raises(RetryableError) as info:
        p.send(msg())
    assert not info.value.ambiguous and info.value.retry_after == 5
    with pytest.raises(RetryableError) as again:
        p.send(msg())
    assert not again.value.ambiguous
    assert again.value.retry_after is not None and 0 < again.value.retry_after <= 5
    assert "next bind attempt" in str(again.value)
    p.close()


def test_window_limits_outstanding_submits(smsc: FakeSMSC,
                                           make_provider: Callable[..., SMPPProvider]) -> None:
    p = make_provider(window=3)
    smsc.hold()
    results: list[Any] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        try:
            r: Any = p.send(msg(f"k{i}", to=f"+8491234{i:04d}"))
        except Exception as exc:  # noqa: BLE001 - reported below
            r = exc
        with lock:
            results.append(r)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    assert smsc.wait_for(lambda: smsc.outstanding() == 3)
    # nobody gets past the window while the SMSC keeps its answers back
    assert not smsc.wait_for(lambda: len(smsc.submits) > 3, timeout=0.15)
    smsc.release()
    for t in threads:
        t.join(10)
    assert all(not isinstance(r, Exception) for r in results), results
    assert len(results) == 8 and len(smsc.accepted()) == 8
    assert smsc.max_outstanding == 3


def test_enquire_link_both_ways(smsc: FakeSMSC, make_provider: Callable[..., SMPPProvider]) -> None:
    p = make_provider(enquire_link_interval=0.05)
    p.send(msg())
    assert smsc.wait_for(lambda: smsc.enquire_links >= 2)   # our keepalive, answered
    assert smsc.send_enquire_link()                         # the SMSC's, answered by the reader
    assert p.bound


def test_check_binds_and_unbinds(smsc: FakeSMSC, provider: SMPPProvider) -> None:
    assert provider.check() == f"bound as loa to 127.0.0.1:{smsc.port}"
    assert len(smsc.binds) == 1 and smsc.unbinds == 1
    assert not provider.bound          # check() leaves the sending bind alone


def test_close_unbinds(smsc: FakeSMSC, provider: SMPPProvider) -> None:
    provider.send(msg())
    assert provider.bound
    provider.close()
    assert smsc.unbinds == 1
    assert not provider.bound
    provider.close()                   # twice is fine
    assert smsc.unbinds == 1


# -- through loa: configuration, dispatcher, database -------------------------------------------

def configure_smpp(smsc: FakeSMSC, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway "smpp" in the configuration, bound to the fake SMSC."""
    (case,) = [c for c in CASES if c.name == "smpp"]
    add_gateway(workdir, case.section(str(smsc.port)))
    monkeypatch.setenv("LOA_TEST_SMPP_PASSWORD", smsc.password)


def test_a_campaign_goes_out_through_loa_and_its_receipts_come_back(
        smsc: FakeSMSC, workdir: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    configure_smpp(smsc, workdir, monkeypatch)
    phones = ["+84912000001", "+84912000002", "+84912000003"]
    run_id = plan_campaign(workdir, engine, "sms", "smpp", phones)
    dispatcher = Dispatcher(engine, load(workdir / "config.toml"), threads=2)
    collect = dispatcher.poll
    # Collect receipts by hand, later, so the rows are seen as the sends left them.
    monkeypatch.setattr(dispatcher, "poll", lambda drain=False, timeout=10.0: None)
    try:
        summary = dispatcher.run_until_empty()
        assert summary.paused == {}, summary.paused
        ids = {s.destination_addr: s.message_id for s in smsc.submits}
        assert sorted(ids) == [p.lstrip("+") for p in phones]
        assert sorted(outbox_rows(engine, run_id)) == sorted(("sent", i) for i in ids.values())

        # every deliver_sm receipt reached the bind and was acknowledged ...
        assert smsc.wait_for(lambda: len(smsc.receipt_acks) == len(phones))
        assert smsc.receipt_acks == [0] * len(phones)
        collect()
        # ... and, collected, moved each message forward
        assert sorted(outbox_rows(engine, run_id)) == sorted(("delivered", i) for i in ids.values())
    finally:
        dispatcher.pool.close()
    assert smsc.unbinds == 1


def test_an_smpp_opt_out_reply_opts_out_at_once_and_is_confirmed_once_through_the_bind(
        smsc: FakeSMSC, workdir: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    configure_smpp(smsc, workdir, monkeypatch)
    refuser, thanker, other = phones = ["+84912000001", "+84912000002", "+84912000003"]
    first = plan_campaign(workdir, engine, "sms", "smpp", phones)
    config = load(workdir / "config.toml")
    dispatcher = Dispatcher(engine, config, threads=2)
    try:
        dispatcher.run_until_empty()                      # binds
        assert smsc.wait_for(lambda: len(smsc.receipt_acks) == 3)
        dispatcher.poll()                                 # receipts are still receipts
        assert [state for state, _ in outbox_rows(engine, first)] == ["delivered"] * 3
        assert dispatcher.summary.inbound == 0
        # the next run (a deliberate second round) is planned before anyone replies
        later = plan_run(engine, config, load_one(workdir / "campaigns", "hello"),
                         scheduled_for=db.utcnow(), again=True).run_id
        assert {p: r["state"] for p, r in outbox(engine, later).items()} == dict.fromkeys(phones, "planned")

        assert smsc.send_mo(refuser, "Tu chối")
        dispatcher.poll()
        assert dispatcher.summary.inbound == 1
        assert subscriber(engine, refuser)["opted_out_at"] is not None
        assert dnc(engine) == {refuser: "reply:smpp"}
        [event] = events(engine, refuser)
        assert (event["type"], event["attributes"]) == ("opted_out", {"text": "Tu chối"})
        confirmations = [m.text for m in smsc.messages(refuser)][1:]   # after the first run's
        assert confirmations == [DEFAULT_OPT_OUT_REPLY]

        # the SMSC delivers the same SMS again: handled once, confirmed once
        assert smsc.send_mo(refuser, "Tu chối")
        dispatcher.poll()
        assert len(smsc.messages(refuser)) == 2 and len(events(engine, refuser)) == 1

        # a plain reply is recorded and opts nobody out
        assert smsc.send_mo(thanker, "cảm ơn")
        dispatcher.poll()
        assert [(e["type"], e["attributes"]) for e in events(engine, thanker)] == [
            ("replied", {"text": "cảm ơn"})]
        assert subscriber(engine, thanker)["opted_out_at"] is None and thanker not in dnc(engine)
        assert len(smsc.messages(thanker)) == 1

        # the planned message to the refuser is held back at send time
        dispatcher.run_until_empty()
        rows = outbox(engine, later)
        assert (rows[refuser]["state"], rows[refuser]["reason"]) == ("suppressed", "opted_out")
        assert {rows[thanker]["state"], rows[other]["state"]} <= {"sent", "delivered"}
        assert len(smsc.messages(refuser)) == 2 and len(smsc.messages(other)) == 2
    finally:
        dispatcher.pool.close()
    assert set(smsc.receipt_acks) == {0}


@pytest.fixture
def bound(smsc: FakeSMSC, workdir: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Dispatcher]:
    """A dispatcher whose "smpp" gateway has sent a first campaign to two numbers, so is bound."""
    configure_smpp(smsc, workdir, monkeypatch)
    plan_campaign(workdir, engine, "sms", "smpp", ["+84912000001", "+84912000002"])
    dispatcher = Dispatcher(engine, load(workdir / "config.toml"), threads=2)
    try:
        dispatcher.run_until_empty()
        assert smsc.wait_for(lambda: len(smsc.receipt_acks) == 2)
        yield dispatcher
    finally:
        dispatcher.pool.close()


def test_an_smpp_opt_out_the_database_could_not_record_is_kept_for_the_next_poll(
        smsc: FakeSMSC, bound: Dispatcher, engine: Engine, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    first, second = "+84912000001", "+84912000002"
    real, failures = inbound.opt_out, [first]

    def opt_out_once(conn: Any, phone: str, *args: Any) -> bool:   # the database fails once, on the first
        if phone in failures:
            failures.remove(phone)
            raise OperationalError("INSERT INTO dnc ...", {}, Exception("server closed the connection"))
        return real(conn, phone, *args)

    monkeypatch.setattr(inbound, "opt_out", opt_out_once)
    held = bound.pool.get("smpp").provider
    # both SMS are acknowledged to the SMSC, which will never send them again, and polled as one batch
    assert smsc.send_mo(first, "TC") and smsc.send_mo(second, "TC")
    assert wait_until(lambda: len(held._inbound) == 2)
    bound.poll()
    assert dnc(engine) == {second: "reply:smpp"} and bound.summary.inbound == 1
    assert events(engine, first) == []                             # rolled back whole
    [failed] = [r for r in caplog.records if "not recorded" in r.getMessage()]
    assert "+8491****001" in failed.getMessage() and first not in caplog.text

    bound.poll()                                                   # the kept one is applied now
    assert dnc(engine) == {first: "reply:smpp", second: "reply:smpp"} and bound.summary.inbound == 2
    assert [e["type"] for e in events(engine, first)] == ["opted_out"]
    bound.poll()
    assert bound.summary.inbound == 2
    assert smsc.wait_for(lambda: len(smsc.messages(first)) == len(smsc.messages(second)) == 2)
    assert [m.text for m in smsc.messages(first)][1:] == [DEFAULT_OPT_OUT_REPLY]    # confirmed once


def test_inbound_sms_handed_back_are_fetched_again_first(provider: SMPPProvider) -> None:
    def mo(source: str, text: str) -> DeliverSM:
        return DeliverSM(esm_class=0, short_message=gsm7_encode(text), tlvs={}, source=source, source_ton=1,
                         destination="1234")

    provider.on_inbound(mo("84912000001", "TC"))
    provider.on_inbound(mo("84912000002", "HUY"))
    taken = provider.fetch_inbound()
    provider.on_inbound(mo("84912000003", "STOP"))        # the reader queued another meanwhile
    provider.requeue_inbound(taken)
    assert [m.text for m in provider.fetch_inbound()] == ["TC", "HUY", "STOP"]
    assert provider.fetch_inbound() == []


@pytest.mark.parametrize("source", ["attribute", "template escape"])
def test_a_lone_surrogate_in_a_rendered_sms_is_sent_as_the_replacement_character(
        source: str, smsc: FakeSMSC, workdir: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    if source == "attribute" and engine.dialect.name == "postgresql":
        pytest.skip("PostgreSQL's jsonb refuses a lone surrogate, so none reaches a template from its attributes")
    configure_smpp(smsc, workdir, monkeypatch)
    code = "{{ attr.code }}" if source == "attribute" else '{{ "A\\ud800B" }}'
    run_id = plan_campaign(workdir, engine, "sms", "smpp", [PHONE], sms=f"Mã của bạn: {code}\n",
                           attributes={"code": "A\ud800B"} if source == "attribute" else None)
    dispatcher = Dispatcher(engine, load(workdir / "config.toml"), threads=1)
    try:
        dispatcher.run_until_empty()
    finally:
        dispatcher.pool.close()
    [row] = outbox(engine, run_id).values()
    assert row["state"] in ("sent", "delivered"), row["error_text"]
    [sent] = smsc.messages(PHONE)
    assert sent.text == "Mã của bạn: A\ufffdB"
    # what the ledger counted (cost, rate) is what went out
    info = loa_text.measure(sent.text)
    assert (row["encoding"], row["parts"]) == (info.encoding, info.parts) == ("UCS-2", len(smsc.submits))
    assert [s.data_coding for s in smsc.submits] == [8]


# -- encoding --------------------------------------------------------------------------------

def test_gsm7_table_is_the_real_one() -> None:
    assert gsm7_encode("§") == b"\x5f"
    assert gsm7_encode("@£$¥") == b"\x00\x01\x02\x03"
    assert gsm7_encode("€^{}\\[~]|\f") == (b"\x1b\x65\x1b\x14\x1b\x28\x1b\x29\x1b\x2f"
                                          b"\x1b\x3c\x1b\x3d\x1b\x3e\x1b\x40\x1b\x0a")
    with pytest.raises(UnicodeError):
        gsm7_encode("`")               # smpplib would send 0x5F, shown as "§"
    assert gsm7_decode(gsm7_encode("Ä§¿ € x")) == "Ä§¿ € x"


def test_gsm7_text_the_alphabet_cannot_carry_goes_as_ucs2(smsc: FakeSMSC,
                                                         provider: SMPPProvider) -> None:
    result = provider.send(msg("k", "tick `x`", encoding="GSM-7"))
    assert result.raw["encoding"] == "UCS-2" and result.raw["encoding_fallback"]
    [s] = smsc.submits
    assert s.data_coding == 8 and s.decode() == "tick `x`"


@pytest.mark.parametrize("text", [
    "a" * 160,
    "a" * 161,
    "a" * 152 + "€" + "b" * 20,            # the escape sequence must not be cut
    "x" * 306 + "[",
    "ư" * 70,
    "ư" * 71,
    "ư" * 66 + "😀" + "ư" * 10,             # nor a surrogate pair
    VIETNAMESE,
    "",
])
def test_parts_match_what_loa_planned(text: str) -> None:
    info = loa_text.measure(text)
    encoding, parts = encode_parts(text, info.encoding, reference=7)
    assert encoding == info.encoding
    assert len(parts) == info.parts
    payloads = [p[6:] for p in parts] if len(parts) > 1 else parts
    decoded = [gsm7_decode(p) if encoding == "GSM-7" else p.decode("utf-16-be") for p in payloads]
    assert decoded == loa_text.split_parts(text)


def test_ucs2_parts_have_smpplibs_layout() -> None:
    ours = encode_parts(VIETNAMESE, "UCS-2", reference=42)[1]
    theirs, coding, esm_class = smpplib_gsm.make_parts(VIETNAMESE, encoding=8)
    assert (coding, esm_class) == (8, 0x40)
    assert [p[:3] + p[4:] for p in ours] == [p[:3] + p[4:] for p in theirs]  # all but the reference


# -- configuration ---------------------------------------------------------------------------

@pytest.mark.parametrize(("options", "fragment"), [
    ({"password": "much-too-long"}, "password"),
    ({"system_id": "x" * 16}, "system_id"),
    ({"source_addr": "BRANDNAME_TOO_LONG"}, "source_addr"),
    ({"source_addr": ""}, "source_addr"),
    ({"window": 0}, "window"),
    ({"timeout": "soon"}, "timeout"),
    ({"receipt_timezone": "Mars/Olympus"}, "receipt_timezone"),
])
def test_bad_settings_are_config_errors(options: dict[str, Any], fragment: str) -> None:
    base = {"host": "127.0.0.1", "system_id": "loa", "password": "secret", "source_addr": "LOA"}
    with pytest.raises(ConfigError) as info:
        SMPPProvider("smpp", base | options)
    assert fragment in str(info.value)
