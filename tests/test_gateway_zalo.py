"""The Zalo ZNS gateway against a loopback fake of Zalo's API and OAuth.

Nothing in requests is mocked: every call crosses a real socket to
providers.fakes.zalo.FakeZalo, which checks headers and tokens as Zalo does.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from providers import registry
from providers.base import (
    AuthError,
    ConfigError,
    DeferredError,
    DeliveryReceipt,
    MemoryStateStore,
    MoneyError,
    NotReachableError,
    OutgoingMessage,
    PermanentError,
    QuotaError,
    RetryableError,
    SendResult,
    WebhookRejected,
    WebhookRequest,
)
from providers.fakes.zalo import FakeZalo
from providers.zalo_zns import (
    ZaloZNSProvider,
    daily_retry_after,
    monthly_retry_after,
    night_retry_after,
    zalo_phone,
)

VN = ZoneInfo("Asia/Ho_Chi_Minh")
PHONE = "+84912345678"


def msg(key: str = "loa-1-1", to: str = PHONE, **kw: Any) -> OutgoingMessage:
    kw.setdefault("template_id", "231677")
    kw.setdefault("template_data", {"customer_name": "Nguyễn Văn An", "order_code": "DH001"})
    return OutgoingMessage(key=key, to=to, channel="zalo", **kw)


def vn(*args: int) -> datetime:
    return datetime(*args, tzinfo=VN)


class Clock:
    def __init__(self, at: datetime | None = None) -> None:
        self.at = at or datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
def fake() -> Iterator[FakeZalo]:
    with FakeZalo() as server:
        yield server


@pytest.fixture
def make(fake: FakeZalo) -> Iterator[Callable[..., ZaloZNSProvider]]:
    built: list[ZaloZNSProvider] = []

    def build(name: str = "zalo", state: MemoryStateStore | None = None, **options: Any) -> ZaloZNSProvider:
        provider = ZaloZNSProvider(name, fake.options(**options), state)
        built.append(provider)
        return provider

    yield build
    for provider in built:
        provider.close()


# -- the happy path ---------------------------------------------------------------

def test_send_puts_the_documented_request_on_the_wire(fake: FakeZalo, make: Callable[..., ZaloZNSProvider]) -> None:
    provider = make()
    result = provider.send(msg())

    assert isinstance(result, SendResult)
    assert result.provider_id == fake.sent[0]["msg_id"]
    assert result.status == "sent"
    (req,) = fake.template_requests
    assert req.method == "POST"
    assert req.headers["access_token"] == "fake-at-0"
    assert req.headers["content-type"].startswith("application/json")
    assert req.json == {
        "phone": "84912345678",
        "template_id": "231677",
        "template_data": {"customer_name": "Nguyễn Văn An", "order_code": "DH001"},
        "tracking_id": "loa-1-1",
    }
    assert provider.remaining_quota == 999
    assert provider.daily_quota == 1000
    assert fake.refresh_requests == []


def test_remaining_quota_follows_every_answer(fake: FakeZalo, make: Callable[..., ZaloZNSProvider]) -> None:
    provider = make()
    assert provider.remaining_quota is None
    for i in range(3):
        provider.send(msg(key=f"k{i}"))
    assert provider.remaining_quota == 997
    assert fake.remaining_quota == 997


def test_check_reports_the_quota(make: Callable[..., ZaloZNSProvider]) -> None:
    provider = make()
    provider.send(msg())
    assert provider.check() == "quota: 999 remaining of 1000 daily"
    assert provider.remaining_quota == 999


def test_phone_format() -> None:
    assert zalo_phone("+84912345678") == "84912345678"
    assert zalo_phone("0912345678") == "84912345678"
    with pytest.raises(ValueError):
        zalo_phone("+84 abc")


def test_registered_under_its_type() -> None:
    assert registry.get("zalo_zns") is ZaloZNSProvider
    assert ZaloZNSProvider.channels == ("zalo",)
    assert ZaloZNSProvider.dedupes_by_key is False
    assert ZaloZNSProvider.rate == 10.0
    secrets = {s.name for s in ZaloZNSProvider.settings if s.secret}
    assert secrets == {"secret_key", "oa_secret", "access_token", "refresh_token"}


def test_settings_are_checked(fake: FakeZalo) -> None:
    with pytest.raises(ConfigError, match="app_id"):
        ZaloZNSProvider("z", {**fake.options(), "app_id": ""})
    with pytest.raises(ConfigError, match="secret_key"):
        ZaloZNSProvider("z", {**fake.options(), "secret_key": ""})
    with pytest.raises(ConfigError, match="base_url"):
        ZaloZNSProvider("z", {**fake.options(), "base_url": "ftp://x"})


def test_message_without_template_pauses_without_calling(fake: FakeZalo,
                                                        make: Callable[..., ZaloZNSProvider]) -> None:
    with pytest.raises(ConfigError, match="template_id"):
        make().send(msg(template_id=None))
    assert fake.requests == []


# -- Zalo's error codes -----------------------------------------------------------

@pytest.mark.parametrize(("code", "cls"), [
    (-118, NotReachableError),   # no Zalo account
    (-108, NotReachableError),   # phone invalid for Zalo
    (-119, NotReachableError),
    (-141, NotReachableError),   # user refused ZNS from this OA
    (-115, MoneyError),          # out of quota (balance)
    (-137, MoneyError),
    (-109, ConfigError),         # template id invalid
    (-131, ConfigError),         # template not approved
    (-146, ConfigError),
    (-100, RetryableError),      # unknown error: try again
    (-999, PermanentError),      # not in the table
])
def test_error_codes_map_to_classes(fake: FakeZalo, make: Callable[..., ZaloZNSProvider],
                                    code: int, cls: type[Exception]) -> None:
    fake.fail_phone("84911111111", code)
    with pytest.raises(cls) as info:
        make().send(msg(to="+84911111111"))
    assert type(info.value) is cls
    assert info.value.code == str(code)
    assert info.value.gateway == "zalo"
    assert info.value.ambiguous is False


def test_not_reachable_is_a_permanent_error_for_this_channel(fake: FakeZalo,
                                                            make: Callable[..., ZaloZNSProvider]) -> None:
    fake.fail_phone("84911111111", -118)
    with pytest.raises(PermanentError):   # NotReachableError is one; the dispatcher falls back to SMS
        make().send(msg(to="+84911111111"))


@pytest.mark.parametrize(("code", "now", "wait"), [
    (-133, vn(2024, 5, 6, 23, 0), timedelta(hours=7)),            # night rule -> 06:00
    (-133, vn(2024, 5, 7, 3, 30), timedelta(hours=2, minutes=30)),
    (-144, vn(2024, 5, 6, 15, 0), timedelta(hours=9)),            # daily quota -> midnight
    (-147, vn(2024, 5, 6, 23, 30), timedelta(minutes=30)),
    (-1441, vn(2024, 2, 10, 15, 0), vn(2024, 3, 1) - vn(2024, 2, 10, 15, 0)),   # monthly -> the 1st
    (-1471, vn(2024, 12, 31, 12, 0), timedelta(hours=12)),
])
def test_limits_defer_until_they_lift(fake: FakeZalo, make: Callable[..., ZaloZNSProvider],
                                      code: int, now: datetime, wait: timedelta) -> None:
    fake.fail_next(code)
    provider = make(clock=Clock(now.astimezone(UTC)))
    with pytest.raises(DeferredError) as info:
        provider.send(msg())
    assert info.value.code == str(code)
    assert info.value.retry_after == pytest.approx(wait.total_seconds())
    assert isinstance(info.value, RetryableError)   # not a failure
    # quotas hold the whole gateway; the night rule binds only some templates
    assert isinstance(info.value, QuotaError) is (code != -133)


def test_daily_quota_marks_the_quota_empty() -> None:
    with FakeZalo(daily_quota=1) as small:
        provider = ZaloZNSProvider("zalo", small.options(clock=Clock(vn(2024, 5, 6, 15, 0))))
        provider.send(msg(key="a"))
        with pytest.raises(DeferredError) as info:
            provider.send(msg(key="b"))
        assert info.value.code == "-144"
        assert provider.remaining_quota == 0
        provider.close()


def test_boundaries_near_clock_skew_retry_soon() -> None:
    # Our clock says the limit has lifted, Zalo's does not yet: try again in a minute, not a day.
    assert daily_retry_after(vn(2024, 5, 7, 0, 0, 30)) == 60.0
    assert monthly_retry_after(vn(2024, 6, 1, 0, 2)) == 60.0
    assert night_retry_after(vn(2024, 5, 7, 6, 1)) == 60.0
    assert night_retry_after(vn(2024, 5, 6, 21, 58)) == 60.0
    assert night_retry_after(vn(2024, 5, 6, 22, 0)) == 8 * 3600


def test_http_500_is_transient_and_ambiguous(fake: FakeZalo, make: Callable[..., ZaloZNSProvider]) -> None:
    fake.fail_next(http_status=500)
    with pytest.raises(RetryableError) as info:
        make().send(msg())
    assert type(info.value) is RetryableError
    assert info.value.code == "500"
    assert info.value.ambiguous is True   # a 500 may follow acceptance


def test_http_503_is_transient_not_ambiguous(fake: FakeZalo, make: Callable[..., ZaloZNSProvider]) -> None:
    fake.fail_next(http_status=503)
    with pytest.raises(RetryableError) as info:
        make().send(msg())
    assert info.value.ambiguous is False


def test_read_timeout_is_ambiguous() -> None:
    with FakeZalo(latency=0.6) as slow:
        provider = ZaloZNSProvider("zalo", slow.options(timeout=0.2))
        with pytest.raises(RetryableError) as info:
            provider.send(msg())
        assert info.value.ambiguous is True
        assert len(slow.sent) == 1   # and indeed Zalo took it
        provider.close()


def test_refused_connection_is_not_ambiguous() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = ZaloZNSProvider("zalo", {
        "app_id": "a", "secret_key": "s", "access_token": "t", "refresh_token": "r",
        "base_url": f"http://127.0.0.1:{port}", "timeout": 1,
    })
    with pytest.raises(RetryableError) as info:
        provider.send(msg())
    assert info.value.ambiguous is False
    provider.close()


# -- tokens -----------------------------------------------------------------------

def test_expired_token_is_refreshed_once_then_the_send_succeeds(fake: FakeZalo,
                                                               make: Callable[..., ZaloZNSProvider]) -> None:
    state = MemoryStateStore()
    provider = make(state=state)
    provider.send(msg(key="a"))
    fake.expire_token()

    result = provider.send(msg(key="b"))

    assert result.provider_id == fake.sent[-1]["msg_id"]
    assert fake.refreshes == 1
    (refresh,) = fake.refresh_requests
    assert refresh.headers["secret_key"] == "fake-app-secret"
    assert refresh.form == {"refresh_token": "fake-rt-0", "app_id": "fake-app", "grant_type": "refresh_token"}
    assert [r.headers["access_token"] for r in fake.template_requests] == ["fake-at-0", "fake-at-0", "fake-at-1"]
    # both new tokens are stored for every other worker, with the expiry
    assert state.get("zalo:zalo:access_token") == "fake-at-1"
    assert state.get("zalo:zalo:refresh_token") == "fake-rt-1"
    assert float(state.get("zalo:zalo:expires_at") or 0) > datetime.now(UTC).timestamp() + 80000

    provider.send(msg(key="c"))
    assert fake.refreshes == 1


def test_token_refused_after_refresh_pauses_the_gateway(fake: FakeZalo,
                                                       make: Callable[..., ZaloZNSProvider]) -> None:
    fake.fail_next(-124, times=2)
    with pytest.raises(AuthError) as info:
        make().send(msg())
    assert info.value.code == "-124"
    assert fake.refreshes == 1
    assert fake.sent == []


def test_two_workers_share_one_refresh(fake: FakeZalo, make: Callable[..., ZaloZNSProvider]) -> None:
    fake.refresh_latency = 0.2          # keep the race window open
    state = MemoryStateStore()
    workers = [make(state=state), make(state=state)]
    for i, worker in enumerate(workers):
        worker.send(msg(key=f"warm-{i}"))   # both now hold the same access token
    fake.expire_token()

    barrier = threading.Barrier(2)
    results: list[Any] = [None, None]

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = workers[i].send(msg(key=f"race-{i}"))
        except Exception as exc:  # noqa: BLE001 - reported below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)

    assert all(isinstance(r, SendResult) for r in results), results
    # both raced with the expired token, and both re-sent with the one new token
    assert [r.headers["access_token"] for r in fake.template_requests] == ["fake-at-0"] * 4 + ["fake-at-1"] * 2
    assert len(fake.refresh_requests) == 1   # the single-use refresh token was spent once
    assert fake.refreshes == 1
    assert {m["tracking_id"] for m in fake.sent} >= {"race-0", "race-1"}


def test_separate_stores_would_spend_the_refresh_token_twice(fake: FakeZalo,
                                                             make: Callable[..., ZaloZNSProvider]) -> None:
    # Why the store must be shared: the second worker's refresh token is already spent.
    first, second = make(state=MemoryStateStore()), make(state=MemoryStateStore())
    fake.expire_token()
    first.send(msg(key="a"))
    fake.expire_token()
    with pytest.raises(AuthError) as info:
        second.send(msg(key="b"))
    assert info.value.code == "-14014"
    assert fake.refresh_attempts == 2 and fake.refreshes == 1


def test_store_is_seeded_only_when_empty(fake: FakeZalo, make: Callable[..., ZaloZNSProvider]) -> None:
    state = MemoryStateStore()
    state.set("zalo:zalo:access_token", "fake-at-0")
    state.set("zalo:zalo:refresh_token", "fake-rt-0")
    provider = make(state=state, access_token="stale-from-env", refresh_token="stale-rt-from-env")
    provider.send(msg())
    assert fake.template_requests[0].headers["access_token"] == "fake-at-0"
    assert fake.refreshes == 0


def test_refresh_token_alone_is_enough_to_start(fake: FakeZalo, make: Callable[..., ZaloZNSProvider]) -> None:
    provider = make(access_token="")
    provider.send(msg())
    assert fake.refreshes == 1
    assert fake.template_requests[0].headers["access_token"] == "fake-at-1"


def test_known_expiry_is_refreshed_before_sending(fake: FakeZalo, make: Callable[..., ZaloZNSProvider]) -> None:
    clock = Clock()
    provider = make(access_token="", clock=clock)
    provider.send(msg(key="a"))                        # refresh: expiry now known (25 h)
    clock.at += timedelta(hours=26)
    provider.send(msg(key="b"))
    assert fake.refreshes == 2
    # no request was wasted on a token we knew had expired
    assert [r.headers["access_token"] for r in fake.template_requests] == ["fake-at-1", "fake-at-2"]


def test_new_configured_refresh_token_revives_a_dead_chain(fake: FakeZalo,
                                                           make: Callable[..., ZaloZNSProvider]) -> None:
    state = MemoryStateStore()
    state.set("zalo:zalo:access_token", "dead-at")
    state.set("zalo:zalo:refresh_token", "dead-rt")
    state.set("zalo:zalo:seeded_from", "something-else")
    provider = make(state=state)      # the operator set the fake's current tokens in the env
    provider.send(msg())
    assert fake.refresh_attempts == 2 and fake.refreshes == 1
    assert state.get("zalo:zalo:refresh_token") == "fake-rt-1"


def test_no_tokens_at_all_is_an_auth_error(fake: FakeZalo, make: Callable[..., ZaloZNSProvider]) -> None:
    with pytest.raises(AuthError, match="access_token_env"):
        make(access_token="", refresh_token="").send(msg())
    assert fake.requests == []


# -- lookups ----------------------------------------------------------------------

def test_lookup_without_msg_id_has_nothing_to_ask(fake: FakeZalo, make: Callable[..., ZaloZNSProvider]) -> None:
    assert make().lookup("loa-1-1", None) is None
    assert fake.requests == []


def test_lookup_by_msg_id_asks_the_status_endpoint(fake: FakeZalo, make: Callable[..., ZaloZNSProvider]) -> None:
    provider = make()
    sent = provider.send(msg())
    found = provider.lookup("loa-1-1", sent.provider_id)
    assert isinstance(found, DeliveryReceipt)
    assert found.status == "delivered" and found.provider_id == sent.provider_id
    assert found.at is not None and found.at.tzinfo is not None
    assert fake.requests[-1].query == {"message_id": sent.provider_id}
    assert provider.lookup("loa-9-9", "no-such-id") is None


# -- webhooks ---------------------------------------------------------------------

def hook(body: bytes, headers: dict[str, str]) -> WebhookRequest:
    return WebhookRequest(method="POST", url="https://loa.example/hooks/zalo", path="/hooks/zalo",
                          query={}, headers=headers, body=body)


def test_webhook_receipt(fake: FakeZalo, make: Callable[..., ZaloZNSProvider]) -> None:
    body, headers = fake.signed_webhook(fake.delivery_event("msg-7", "loa-3-4", 1_715_000_000_000))
    result = make().webhook(hook(body, headers))
    assert result.status == 200
    (receipt,) = result.receipts
    assert receipt == DeliveryReceipt(status="delivered", provider_id="msg-7", key="loa-3-4",
                                      at=datetime.fromtimestamp(1_715_000_000, UTC))


def test_webhook_header_lookup_is_case_insensitive(fake: FakeZalo, make: Callable[..., ZaloZNSProvider]) -> None:
    body, headers = fake.signed_webhook(fake.delivery_event("msg-7", "loa-3-4"))
    lowered = {k.lower(): v for k, v in headers.items()}
    assert len(make().webhook(hook(body, lowered)).receipts) == 1


def test_forged_webhook_is_refused(fake: FakeZalo, make: Callable[..., ZaloZNSProvider]) -> None:
    body, headers = fake.signed_webhook(fake.delivery_event("msg-7", "loa-3-4"), secret="guessed")
    with pytest.raises(WebhookRejected) as info:
        make().webhook(hook(body, headers))
    assert info.value.status == 403


def test_tampered_webhook_is_refused(fake: FakeZalo, make: Callable[..., ZaloZNSProvider]) -> None:
    body, headers = fake.signed_webhook(fake.delivery_event("msg-7", "loa-3-4"))
    with pytest.raises(WebhookRejected) as info:
        make().webhook(hook(body.replace(b"msg-7", b"msg-8"), headers))
    assert info.value.status == 403


def test_unsigned_webhook_is_refused(fake: FakeZalo, make: Callable[..., ZaloZNSProvider]) -> None:
    body, _ = fake.signed_webhook(fake.delivery_event("msg-7", "loa-3-4"))
    with pytest.raises(WebhookRejected) as info:
        make().webhook(hook(body, {"Content-Type": "application/json"}))
    assert info.value.status == 403


def test_webhook_without_oa_secret_is_refused(fake: FakeZalo, make: Callable[..., ZaloZNSProvider]) -> None:
    body, headers = fake.signed_webhook(fake.delivery_event("msg-7", "loa-3-4"))
    with pytest.raises(WebhookRejected) as info:
        make(oa_secret="").webhook(hook(body, headers))
    assert info.value.status == 403


def test_malformed_webhook_is_400(make: Callable[..., ZaloZNSProvider]) -> None:
    with pytest.raises(WebhookRejected) as info:
        make().webhook(hook(b"{not json", {"X-ZEvent-Signature": "mac=00"}))
    assert info.value.status == 400


def test_other_events_are_acknowledged_and_ignored(fake: FakeZalo, make: Callable[..., ZaloZNSProvider]) -> None:
    event = {"event_name": "follow", "follower": {"id": "u1"}, "oa_id": "oa"}
    body, headers = fake.signed_webhook(event)
    result = make().webhook(hook(body, headers))
    assert result.status == 200 and result.receipts == () and result.inbound == ()
