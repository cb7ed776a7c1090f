"""The eSMS.vn adapter against a loopback fake of eSMS's documented API.

Nothing in requests is mocked: every call crosses a real socket, and receipts
travel as the HTTP GET eSMS makes to CallbackUrl.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from providers import registry
from providers.base import (
    AuthError,
    ConfigError,
    DeliveryReceipt,
    MoneyError,
    NotReachableError,
    OutgoingMessage,
    PermanentError,
    ProviderError,
    RetryableError,
    SendResult,
    WebhookRejected,
    WebhookRequest,
)
from providers.esms import ESMSProvider, callback_token, national_phone, request_id
from providers.fakes.esms import FakeESMS

PHONE = "+84912345678"
NATIONAL = "0912345678"
API_KEY = "test-api-key"
SECRET = "test-secret-key"


def msg(key: str = "loa-1-1", to: str = PHONE, **kw: Any) -> OutgoingMessage:
    kw.setdefault("text", "Ma xac nhan cua ban la 1234")
    return OutgoingMessage(key=key, to=to, channel=kw.pop("channel", "sms"), **kw)


# -- fixtures ----------------------------------------------------------------

@pytest.fixture
def fake() -> Iterator[FakeESMS]:
    with FakeESMS(api_key=API_KEY, secret_key=SECRET, brandnames=("LOA", "LOA QC")) as srv:
        yield srv


@pytest.fixture
def make() -> Iterator[Callable[..., ESMSProvider]]:
    made: list[ESMSProvider] = []

    def build(base_url: str, name: str = "esms", **options: Any) -> ESMSProvider:
        opts = {"api_key": API_KEY, "secret_key": SECRET, "brandname": "LOA",
                "base_url": base_url, "timeout": 2.0, **options}
        provider = ESMSProvider(name, opts)
        made.append(provider)
        return provider

    yield build
    for provider in made:
        provider.close()


class _Receiver:
    """loa's web layer in miniature: turns each GET into a WebhookRequest."""

    def __init__(self) -> None:
        self.provider: ESMSProvider | None = None
        self.receipts: list[DeliveryReceipt] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:  # noqa: N802
                split = urlsplit(self.path)
                request = WebhookRequest(
                    method="GET", url=f"http://127.0.0.1:{receiver.port}{self.path}", path=split.path,
                    query=dict(parse_qsl(split.query, keep_blank_values=True)),
                    headers=dict(self.headers.items()), body=b"",
                )
                assert receiver.provider is not None
                try:
                    result = receiver.provider.webhook(request)
                    status, body = result.status, result.body
                    receiver.receipts.extend(result.receipts)
                except WebhookRejected as exc:
                    status, body = exc.status, exc.reason.encode()
                receiver.statuses.append(status)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def url(self, path: str = "/hooks/esms") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._thread.join()
        self._httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    r = _Receiver()
    yield r
    r.stop()


def hook(provider: ESMSProvider, **query: str) -> WebhookRequest:
    return WebhookRequest(method="GET", url="https://loa.example/hooks/esms", path="/hooks/esms",
                          query=query, headers={}, body=b"")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- configuration -------------------------------------------------------------

def test_registered_and_declares_its_settings() -> None:
    assert registry.get("esms") is ESMSProvider
    settings = {s.name: s for s in ESMSProvider.settings}
    assert settings["api_key"].secret and settings["secret_key"].secret
    assert settings["brandname"].required and not settings["brandname"].secret
    assert settings["sms_type"].default == "2" and settings["sms_type_ads"].default == "1"
    assert settings["sandbox"].default is False
    assert settings["base_url"].default == "https://rest.esms.vn/MainService.svc/json/"
    assert ESMSProvider.dedupes_by_key is True
    assert ESMSProvider.rate == 20.0 and ESMSProvider.channels == ("sms",)


@pytest.mark.parametrize("brandname", ["Điện Lực", "Ha Noi ơi", "ABCDEFGHIJKL", "", "   "])
def test_bad_brandname_is_a_config_error_at_construction(brandname: str) -> None:
    with pytest.raises(ConfigError) as err:
        ESMSProvider("esms", {"api_key": "k", "secret_key": "s", "brandname": brandname})
    assert err.value.gateway == "esms"


def test_diacritics_error_suggests_the_plain_form() -> None:
    with pytest.raises(ConfigError, match="'Dien Luc'"):
        ESMSProvider("esms", {"api_key": "k", "secret_key": "s", "brandname": "Điện Lực"})


@pytest.mark.parametrize("options", [
    {"api_key": ""}, {"secret_key": None}, {"base_url": "ftp://x"}, {"timeout": 0},
    {"timeout": "soon"}, {"sandbox": "maybe"}, {"sms_type": "cskh"}, {"callback_url": "not a url"},
])
def test_other_bad_settings(options: dict[str, Any]) -> None:
    base = {"api_key": "k", "secret_key": "s", "brandname": "LOA"}
    with pytest.raises(ConfigError):
        ESMSProvider("esms", base | options)


def test_phone_and_request_id_helpers() -> None:
    assert national_phone("+84912345678") == "0912345678"
    assert national_phone("0912345678") == "0912345678"
    assert national_phone("+84 24 3825 1234") == "02438251234"
    for bad in ("+14155550100", "912345678", "+840912345678", "+84abc"):
        with pytest.raises(ValueError):
            national_phone(bad)
    assert request_id("loa-12-345") == "loa-12-345"
    long = "k" * 80
    assert request_id(long) == request_id(long) and len(request_id(long)) <= 50


# -- sending -------------------------------------------------------------------

def test_send_success_puts_the_documented_json_on_the_wire(
    fake: FakeESMS, make: Callable[..., ESMSProvider], receiver: _Receiver,
) -> None:
    gw = make(fake.url, callback_url=receiver.url())
    result = gw.send(msg("loa-7-42"))

    stored = fake.message_for("loa-7-42")
    assert stored is not None
    assert isinstance(result, SendResult) and result.provider_id == stored.smsid and result.status == "sent"
    (req,) = fake.send_requests
    assert req.method == "POST"
    assert req.path.endswith("/MainService.svc/json/SendMultipleMessage_V4_post_json/")
    assert req.headers.get("Content-Type", "").startswith("application/json")
    body = req.body
    token = hmac.new(SECRET.encode(), b"esms-callback:esms", hashlib.sha256).hexdigest()[:32]
    assert body == {
        "ApiKey": API_KEY, "SecretKey": SECRET, "Phone": NATIONAL,
        "Content": "Ma xac nhan cua ban la 1234", "Brandname": "LOA", "SmsType": "2",
        "IsUnicode": "0", "RequestId": "loa-7-42", "Sandbox": "0",
        "CallbackUrl": f"{receiver.url()}?loa_token={token}",
    }
    assert gw.callback_token == token == callback_token(SECRET, "esms")
    assert fake.balance == 1_000_000 - 800


def test_unicode_and_advertising_types(fake: FakeESMS, make: Callable[..., ESMSProvider]) -> None:
    gw = make(fake.url)
    gw.send(msg("k-uni", text="Xin chào Hà Nội", encoding="UCS-2"))
    gw.send(msg("k-ads", advertising=True, to="+84987654321"))
    uni, ads = (r.body for r in fake.send_requests)
    assert uni["IsUnicode"] == "1" and uni["SmsType"] == "2" and uni["Content"] == "Xin chào Hà Nội"
    assert ads["IsUnicode"] == "0" and ads["SmsType"] == "1" and ads["Phone"] == "0987654321"
    assert "CallbackUrl" not in uni  # no callback_url configured: lookups only

    custom = make(fake.url, sms_type=8, sms_type_ads="2")
    custom.send(msg("k-8"))
    custom.send(msg("k-ads2", advertising=True))
    assert [r.body["SmsType"] for r in fake.send_requests[2:]] == ["8", "2"]


def test_sandbox_is_sent_not_charged_not_stored(fake: FakeESMS, make: Callable[..., ESMSProvider]) -> None:
    gw = make(fake.url, sandbox="true")
    result = gw.send(msg("k-sb"))
    assert fake.send_requests[0].body["Sandbox"] == "1"
    assert result.provider_id and fake.balance == 1_000_000 and not fake.messages
    assert gw.lookup("k-sb", result.provider_id) is None  # eSMS keeps no sandbox messages
    assert "sandbox" in gw.check()


def test_non_vietnamese_number_fails_without_a_request(fake: FakeESMS,
                                                        make: Callable[..., ESMSProvider]) -> None:
    with pytest.raises(PermanentError):
        make(fake.url).send(msg(to="+14155550100"))
    assert fake.requests == []


# -- code classes ----------------------------------------------------------------

@pytest.mark.parametrize(("code", "cls"), [
    ("146", ConfigError),
    ("177", NotReachableError),
    ("108", PermanentError),
    ("140", AuthError),
    ("102", AuthError),
    ("99", RetryableError),
    ("555", RetryableError),   # undocumented
])
def test_programmed_codes_map_to_classes(fake: FakeESMS, make: Callable[..., ESMSProvider],
                                         code: str, cls: type[ProviderError]) -> None:
    fake.program(PHONE, code)
    with pytest.raises(cls) as err:
        make(fake.url).send(msg())
    assert err.value.code == code and err.value.gateway == "esms"
    if cls is RetryableError:
        assert err.value.ambiguous  # harmless: eSMS dedupes the re-send
    assert fake.accepted["loa-1-1"] == 0


def test_177_is_per_recipient_not_a_pause(fake: FakeESMS, make: Callable[..., ESMSProvider]) -> None:
    fake.program("0921234567", "177")   # a Vietnamobile number
    gw = make(fake.url)
    with pytest.raises(PermanentError):  # NotReachableError is permanent for this recipient
        gw.send(msg("k-vnm", to="+84921234567"))
    assert gw.send(msg("k-vtl")).provider_id  # the rest keep going


def test_101_wrong_keys(fake: FakeESMS, make: Callable[..., ESMSProvider]) -> None:
    with pytest.raises(AuthError) as err:
        make(fake.url, secret_key="not-the-s3cret").send(msg())
    assert err.value.code == "101" and "s3cret" not in str(err.value)


def test_103_balance(fake: FakeESMS, make: Callable[..., ESMSProvider]) -> None:
    fake.balance = 500
    with pytest.raises(MoneyError) as err:
        make(fake.url).send(msg())
    assert err.value.code == "103"


def test_104_brandname_not_registered(fake: FakeESMS, make: Callable[..., ESMSProvider]) -> None:
    with pytest.raises(ConfigError) as err:
        make(fake.url, brandname="OTHER").send(msg())
    assert err.value.code == "104"


def test_107_advertising_needs_batches(make: Callable[..., ESMSProvider]) -> None:
    with FakeESMS(api_key=API_KEY, secret_key=SECRET, advertising_batch_only=True) as srv:
        gw = make(srv.url)
        assert gw.send(msg("k-care")).provider_id
        with pytest.raises(ConfigError, match="30 numbers") as err:
            gw.send(msg("k-ads", advertising=True))
        assert err.value.code == "107"


def test_http_500_is_retryable_and_ambiguous_503_is_not(fake: FakeESMS,
                                                          make: Callable[..., ESMSProvider]) -> None:
    gw = make(fake.url)
    fake.fail_next(500)
    with pytest.raises(RetryableError) as err:
        gw.send(msg())
    assert err.value.ambiguous and err.value.code == "500"
    fake.fail_next(503)
    with pytest.raises(RetryableError) as err:
        gw.send(msg())
    assert not err.value.ambiguous
    assert gw.send(msg()).provider_id and fake.accepted["loa-1-1"] == 1


def test_http_404_and_invalid_request_pause_the_gateway(fake: FakeESMS,
                                                          make: Callable[..., ESMSProvider]) -> None:
    with pytest.raises(ConfigError):
        make(fake.url.replace("/json/", "/xml/")).send(msg())
    fake.fail_next(400, body=b'{"error": "Invalid request"}')
    with pytest.raises(ConfigError):
        make(fake.url).send(msg())


def test_connection_refused_is_not_ambiguous_and_hides_secrets(make: Callable[..., ESMSProvider]) -> None:
    gw = make(f"http://127.0.0.1:{free_port()}/MainService.svc/json/")
    with pytest.raises(RetryableError) as err:
        gw.send(msg())
    assert not err.value.ambiguous
    with pytest.raises(RetryableError) as err:
        gw.lookup("k", "some-smsid")  # GET with the keys in the query string
    assert SECRET not in str(err.value) and API_KEY not in str(err.value)


# -- dedupe ----------------------------------------------------------------------

def test_duplicate_request_id_is_already_accepted(fake: FakeESMS, make: Callable[..., ESMSProvider]) -> None:
    gw = make(fake.url)
    first = gw.send(msg("loa-3-9"))
    again = gw.send(msg("loa-3-9"))
    assert fake.sends["loa-3-9"] == 2 and fake.accepted["loa-3-9"] == 1 and len(fake.messages) == 1
    assert again.raw["CodeResult"] == "124"
    # eSMS's documented 124 answer names no SMSID and there is no lookup by RequestId
    assert again.provider_id == "esms-req:loa-3-9" != first.provider_id
    assert gw.lookup("loa-3-9", again.provider_id) is None


def test_duplicate_with_smsid_returns_it(make: Callable[..., ESMSProvider]) -> None:
    with FakeESMS(api_key=API_KEY, secret_key=SECRET, smsid_on_duplicate=True) as srv:
        gw = make(srv.url)
        assert gw.send(msg("k")).provider_id == gw.send(msg("k")).provider_id


def test_read_timeout_then_resend_is_accepted_once(fake: FakeESMS, make: Callable[..., ESMSProvider],
                                                   receiver: _Receiver) -> None:
    gw = make(fake.url, timeout=0.3, callback_url=receiver.url())
    receiver.provider = gw
    fake.latency = 1.0
    with pytest.raises(RetryableError) as err:
        gw.send(msg("loa-5-5"))
    assert err.value.ambiguous  # the request reached eSMS and was accepted
    assert fake.accepted["loa-5-5"] == 1

    fake.latency = 0.0
    result = gw.send(msg("loa-5-5"))      # the dispatcher's re-send, same key
    assert fake.sends["loa-5-5"] == 2 and fake.accepted["loa-5-5"] == 1
    assert fake.balance == 1_000_000 - 800   # charged once

    # The receipt names the SMSID and our key, so loa can match it either way.
    stored = fake.message_for("loa-5-5")
    assert stored is not None
    assert fake.deliver(stored.smsid) == (200, b"OK")
    (receipt,) = receiver.receipts
    assert receipt.status == "delivered" and receipt.provider_id == stored.smsid
    assert receipt.key == "loa-5-5" and result.provider_id == "esms-req:loa-5-5"


# -- check and lookup --------------------------------------------------------------

def test_check_reports_balance(fake: FakeESMS, make: Callable[..., ESMSProvider]) -> None:
    gw = make(fake.url)
    assert "balance 1000000 VND" in gw.check()
    gw.send(msg(text="x" * 200))   # two GSM parts
    assert "balance 998400 VND" in gw.check()
    (req, *_) = fake.requests_to("GetBalance_json")
    assert req.method == "POST" and req.body == {"ApiKey": API_KEY, "SecretKey": SECRET}


def test_check_with_bad_key(fake: FakeESMS, make: Callable[..., ESMSProvider]) -> None:
    with pytest.raises(AuthError) as err:
        make(fake.url, api_key="nope").check()
    assert err.value.code == "101"


def test_lookup_by_smsid(fake: FakeESMS, make: Callable[..., ESMSProvider], receiver: _Receiver) -> None:
    gw = make(fake.url, callback_url=receiver.url())
    receiver.provider = gw
    sid = gw.send(msg("k-ok")).provider_id
    pending = gw.lookup("k-ok", sid)
    assert isinstance(pending, SendResult) and pending.provider_id == sid
    fake.deliver(sid, 5)
    found = gw.lookup("k-ok", sid)
    assert isinstance(found, DeliveryReceipt) and found.status == "delivered" and found.key == "k-ok"

    bad = gw.send(msg("k-bad", to="+84987654321")).provider_id
    fake.deliver(bad, 5, success=False)
    lost = gw.lookup("k-bad", bad)
    assert isinstance(lost, DeliveryReceipt) and lost.status == "undelivered"
    assert gw.lookup("k-x", "no-such-smsid") is None
    assert gw.lookup("k-x", None) is None
    (req, *_) = fake.requests_to("GetSendStatus")
    assert req.method == "GET" and req.query == {"RefId": sid, "ApiKey": API_KEY, "SecretKey": SECRET}


# -- callbacks ----------------------------------------------------------------------

def test_receipts_travel_as_esms_get_callbacks(fake: FakeESMS, make: Callable[..., ESMSProvider],
                                               receiver: _Receiver) -> None:
    gw = make(fake.url, callback_url=receiver.url() + "?gw=esms")
    receiver.provider = gw
    ok = gw.send(msg("k-1")).provider_id
    ko = gw.send(msg("k-2", to="+84987654321")).provider_id
    rej = gw.send(msg("k-3", to="+84977777777")).provider_id
    assert fake.deliver(ok, 7) == (200, b"OK")          # sent to carrier: nothing final yet
    assert fake.deliver(ok, 5) == (200, b"OK")
    assert fake.deliver(ko, 5, success=False) == (200, b"OK")
    assert fake.deliver(rej, 4) == (200, b"OK")
    got = {r.provider_id: r for r in receiver.receipts}
    assert len(receiver.receipts) == 3
    assert got[ok].status == "delivered" and got[ok].key == "k-1" and got[ok].error_code is None
    assert got[ko].status == "undelivered" and got[ko].error_code == "esms-status-5"
    assert got[rej].status == "undelivered" and got[rej].error_code == "esms-status-4"


def test_callback_glued_with_a_second_question_mark(make: Callable[..., ESMSProvider],
                                                    receiver: _Receiver) -> None:
    with FakeESMS(api_key=API_KEY, secret_key=SECRET, callback_glue="?") as srv:
        gw = make(srv.url, callback_url=receiver.url())
        receiver.provider = gw
        sid = gw.send(msg("k-glue")).provider_id
        assert "?loa_token=" in srv.callback_url_for(sid) and srv.callback_url_for(sid).count("?") == 2
        assert srv.deliver(sid) == (200, b"OK")
        assert [r.provider_id for r in receiver.receipts] == [sid]


def test_webhook_token(fake: FakeESMS, make: Callable[..., ESMSProvider]) -> None:
    gw = make(fake.url, callback_url="https://loa.example/hooks/esms")
    fields = {"SMSID": "abc", "SendStatus": "5", "SendSuccess": "1", "SendFailed": "0",
              "RequestId": "loa-1-1", "phonenumber": NATIONAL}
    result = gw.webhook(hook(gw, **fields, loa_token=gw.callback_token))
    assert result.status == 200 and result.body == b"OK"
    assert result.receipts == (DeliveryReceipt(status="delivered", provider_id="abc", key="loa-1-1"),)

    for bad in ({}, {"loa_token": ""}, {"loa_token": "0" * 32},
                {"loa_token": callback_token(SECRET, "other-gateway")},
                {"loa_token": callback_token("other-secret", "esms")}, {"loa_token": "é"}):
        with pytest.raises(WebhookRejected) as err:
            gw.webhook(hook(gw, **fields, **bad))
        assert err.value.status == 403


@pytest.mark.parametrize("missing", ["SMSID", "SendStatus"])
def test_webhook_malformed(fake: FakeESMS, make: Callable[..., ESMSProvider], missing: str) -> None:
    gw = make(fake.url)
    fields = {"SMSID": "abc", "SendStatus": "5", "SendSuccess": "1", "loa_token": gw.callback_token}
    del fields[missing]
    with pytest.raises(WebhookRejected) as err:
        gw.webhook(hook(gw, **fields))
    assert err.value.status == 400


@pytest.mark.parametrize(("fields", "status"), [
    ({"SendStatus": "5", "SendSuccess": "1", "SendFailed": "0"}, "delivered"),
    ({"SendStatus": "5", "SendSuccess": "0", "SendFailed": "1"}, "undelivered"),
    ({"SendStatus": "5", "SendSuccess": "0"}, "undelivered"),
    ({"SendStatus": "4"}, "undelivered"),
    ({"SendStatus": "5"}, None),          # finished, but no counts: wait for a lookup
    ({"SendStatus": "1"}, None),
    ({"SendStatus": "2"}, None),
    ({"SendStatus": "7"}, None),
])
def test_webhook_status_mapping(fake: FakeESMS, make: Callable[..., ESMSProvider],
                                fields: dict[str, str], status: str | None) -> None:
    gw = make(fake.url)
    result = gw.webhook(hook(gw, SMSID="abc", loa_token=gw.callback_token, **fields))
    assert result.status == 200 and result.body == b"OK"
    assert [r.status for r in result.receipts] == ([status] if status else [])
