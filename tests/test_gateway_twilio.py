"""The Twilio adapter, driven through the real twilio SDK against a loopback FakeTwilio.

Nothing in the SDK or in requests is mocked: every test goes over HTTP.
"""

from __future__ import annotations

import base64
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

import pytest

import providers.twilio_sms as twilio_sms
from providers import registry
from providers.base import (
    AuthError,
    ConfigError,
    DeliveryReceipt,
    MoneyError,
    NotReceived,
    OptedOutError,
    OutgoingMessage,
    PermanentError,
    ProviderError,
    RetryableError,
    SendResult,
    ThrottledError,
    WebhookRejected,
    WebhookRequest,
)
from providers.fakes.twilio import RESET, FakeTwilio, segments, signed_callback
from providers.twilio_sms import ERROR_CLASSES, TwilioProvider, mask_numbers

PHONE = "+84912345678"
SENDER = "+15005550006"
HOOK = "https://loa.example.vn/hooks/twilio/tw"


def msg(key: str = "k1", to: str = PHONE, text: str = "Xin chào", **kw: Any) -> OutgoingMessage:
    return OutgoingMessage(key=key, to=to, channel=kw.pop("channel", "sms"), text=text, **kw)


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as server:
        yield server


def provider(fake: FakeTwilio, **options: Any) -> TwilioProvider:
    opts: dict[str, Any] = {
        "account_sid": fake.account_sid,
        "auth_token": fake.auth_token,
        "from_number": SENDER,
        "base_url": fake.url,
        "timeout": 5.0,
    }
    opts.update(options)
    return TwilioProvider("tw", {k: v for k, v in opts.items() if v is not None})


@pytest.fixture
def tw(fake: FakeTwilio) -> Iterator[TwilioProvider]:
    p = provider(fake, status_callback=HOOK)
    yield p
    p.close()


def hook_request(url: str, params: dict[str, str], headers: dict[str, str] | None = None,
                 method: str = "POST") -> WebhookRequest:
    parts = urlsplit(url)
    return WebhookRequest(method=method, url=url, path=parts.path,
                          query=dict(parse_qsl(parts.query)), headers=headers or {},
                          body=b"", form=params)


def signed(fake: FakeTwilio, url: str, params: dict[str, str]) -> WebhookRequest:
    return hook_request(url, params, signed_callback(url, params, fake.auth_token))


# -- registry and settings -------------------------------------------------------

def test_registered_under_twilio() -> None:
    cls = registry.get("twilio")
    assert cls is TwilioProvider
    assert (cls.type, cls.channels, cls.dedupes_by_key, cls.rate) == ("twilio", ("sms",), False, 10.0)
    names = {s.name for s in cls.settings}
    assert names == {"account_sid", "auth_token", "from_number", "messaging_service_sid",
                     "status_callback", "validity_period", "timeout", "base_url"}
    assert next(s for s in cls.settings if s.name == "auth_token").secret


@pytest.mark.parametrize("options, match", [
    ({"from_number": None}, "exactly one of 'from_number' and 'messaging_service_sid'"),
    ({"messaging_service_sid": "MG" + "0" * 32}, "exactly one"),
    ({"account_sid": "not-a-sid"}, "account_sid"),
    ({"auth_token": ""}, "auth_token"),
    ({"validity_period": 0}, "between 1 and 36000"),
    ({"validity_period": 36001}, "between 1 and 36000"),
    ({"timeout": 0}, "timeout"),
    ({"status_callback": "ftp://x"}, "status_callback"),
    ({"base_url": "api.twilio.com"}, "base_url"),
    ({"from_number": None, "messaging_service_sid": "SV123"}, "messaging_service_sid"),
])
def test_bad_settings_are_config_errors(fake: FakeTwilio, options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        provider(fake, **options)


def test_account_sid_from_environment(fake: FakeTwilio, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TW_SID", fake.account_sid)
    p = provider(fake, account_sid=None, account_sid_env="TW_SID")
    assert p.account_sid == fake.account_sid
    assert p.send(msg()).provider_id.startswith("SM")


def test_error_table_is_documented() -> None:
    doc = twilio_sms.__doc__ or ""
    for code, cls in ERROR_CLASSES.items():
        row = next((line for line in doc.splitlines() if line.startswith(f"{code} ")), None)
        assert row is not None, f"code {code} missing from the module's table"
        assert row.rstrip().endswith(cls.__name__), row


# -- sending ---------------------------------------------------------------------

def test_send_reaches_the_wire_form_encoded_with_basic_auth(fake: FakeTwilio) -> None:
    p = provider(fake, status_callback=HOOK + "?gw=tw", validity_period=3600)
    result = p.send(msg(key="run7:42"))

    [req] = fake.sends()
    assert req.path == f"/2010-04-01/Accounts/{fake.account_sid}/Messages.json"
    assert req.auth == (fake.account_sid, fake.auth_token)
    assert req.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    assert req.form["To"] == PHONE
    assert req.form["From"] == SENDER
    assert req.form["Body"] == "Xin chào"
    assert req.form["ValidityPeriod"] == "3600"
    assert "MessagingServiceSid" not in req.form
    callback = urlsplit(req.form["StatusCallback"])
    assert callback._replace(query="").geturl() == HOOK
    assert parse_qs(callback.query) == {"gw": ["tw"], "loakey": ["run7:42"]}

    assert isinstance(result, SendResult)
    assert result.status == "sent"
    assert result.provider_id in fake.messages and len(result.provider_id) == 34
    assert result.parts == 1
    assert result.price is None


def test_segments_read_back_from_twilio(fake: FakeTwilio) -> None:
    p = provider(fake)
    vietnamese = "Nhắc nhở: hãy cài đặt Bluezone để bảo vệ bản thân và cộng đồng. " * 2  # UCS-2
    ascii_text = "Hello " * 40                                                            # GSM-7, 240
    assert p.send(msg(text=vietnamese)).parts == segments(vietnamese) == 2
    assert p.send(msg(text=ascii_text)).parts == 2
    assert p.send(msg(text="x" * 160)).parts == 1


def test_messaging_service_sender(fake: FakeTwilio) -> None:
    service = "MG" + "ab" * 16
    p = provider(fake, from_number=None, messaging_service_sid=service)
    result = p.send(msg())
    [req] = fake.sends()
    assert req.form["MessagingServiceSid"] == service
    assert "From" not in req.form and "StatusCallback" not in req.form
    assert result.parts is None   # Twilio reports num_segments "0" until it picks a sender


def test_price_is_read_when_present(fake: FakeTwilio, tw: TwilioProvider) -> None:
    sid = tw.send(msg()).provider_id
    fake.set_status(sid, "sent", price="-0.04650")
    found = tw.lookup("k1", sid)
    assert isinstance(found, SendResult) and found.price == pytest.approx(-0.0465)


# -- errors ------------------------------------------------------------------------

@pytest.mark.parametrize("failure, cls, code", [
    ((400, 21211, f"The 'To' number {PHONE} is not a valid phone number."), PermanentError, "21211"),
    ((400, 21610, "Attempt to send to unsubscribed recipient"), OptedOutError, "21610"),
    ((400, 21614, f"'To' number {PHONE} is not a valid mobile number"), PermanentError, "21614"),
    ((400, 21408, "Permission to send an SMS has not been enabled for the region indicated by the 'To' "
                  f"number: {PHONE}"), ConfigError, "21408"),
    ((400, 21606, f"The 'From' phone number provided ({SENDER}) is not a valid message-capable Twilio "
                  "phone number for this destination."), ConfigError, "21606"),
    ((401, 20003, "Authenticate"), AuthError, "20003"),
    ((401, 20005, "Account not active"), MoneyError, "20005"),
    ((429, 20429, "Too Many Requests"), ThrottledError, "20429"),
    ((400, 21611, "This 'From' number has exceeded the maximum number of queued messages"),
     ThrottledError, "21611"),
    ((500, 20500, "Internal Server Error"), RetryableError, "20500"),
    ((503, 20503, "Service Unavailable"), RetryableError, "20503"),
    ((400, 29999, "Something Twilio has not documented yet"), PermanentError, "29999"),
])
def test_twilio_errors_map_to_classes(fake: FakeTwilio, tw: TwilioProvider,
                                      failure: tuple[int, int, str], cls: type[ProviderError],
                                      code: str) -> None:
    fake.failures[PHONE] = failure
    with pytest.raises(ProviderError) as info:
        tw.send(msg())
    exc = info.value
    assert type(exc) is cls
    assert exc.code == code
    assert exc.gateway == "tw"
    assert f"HTTP {failure[0]}" in exc.message
    assert PHONE not in str(exc) and SENDER not in str(exc)   # masked
    assert len(fake.sends()) == 1


def test_error_text_is_twilios_message_with_the_number_masked(fake: FakeTwilio, tw: TwilioProvider) -> None:
    with pytest.raises(PermanentError) as info:
        tw.send(msg(to="+8491234567890123"))      # too long: the fake answers 21211 like Twilio
    assert info.value.code == "21211"
    assert info.value.message == "HTTP 400: The 'To' number +8491****123 is not a valid phone number."


def test_unsubscribed_21610_is_an_opt_out(fake: FakeTwilio, tw: TwilioProvider) -> None:
    fake.failures[PHONE] = (400, 21610, "Attempt to send to unsubscribed recipient")
    with pytest.raises(OptedOutError) as info:
        tw.send(msg())
    assert isinstance(info.value, PermanentError)    # a refusal of this message too
    assert (info.value.code, info.value.kind) == ("21610", "opted_out")
    assert not info.value.ambiguous
    assert str(info.value) == "tw: HTTP 400: Attempt to send to unsubscribed recipient (code 21610)"


def test_wrong_token_is_an_auth_error(fake: FakeTwilio) -> None:
    p = provider(fake, auth_token="wrong-token")
    with pytest.raises(AuthError) as info:
        p.send(msg())
    assert info.value.code == "20003"
    assert fake.requests[-1].auth == (fake.account_sid, "wrong-token")


def test_429_carries_retry_after(fake: FakeTwilio, tw: TwilioProvider) -> None:
    fake.fail_next.append((429, 20429, "Too Many Requests", {"Retry-After": "3"}))
    with pytest.raises(ThrottledError) as info:
        tw.send(msg())
    assert info.value.retry_after == 3.0
    assert not info.value.ambiguous          # Twilio: a 429 is never processed
    assert tw.send(msg()).provider_id         # fail_next is used up


def test_5xx_ambiguity(fake: FakeTwilio, tw: TwilioProvider) -> None:
    fake.fail_next.extend([(500, 20500, "Internal Server Error"), (503, 20503, "Service Unavailable")])
    with pytest.raises(RetryableError) as first:
        tw.send(msg())
    with pytest.raises(RetryableError) as second:
        tw.send(msg())
    assert first.value.ambiguous and not second.value.ambiguous


def test_empty_body_is_a_config_error(fake: FakeTwilio, tw: TwilioProvider) -> None:
    with pytest.raises(ConfigError) as info:
        tw.send(msg(text=""))
    assert info.value.code == "21602"


def test_read_timeout_after_sending_is_ambiguous(fake: FakeTwilio) -> None:
    p = provider(fake, timeout=0.2)
    fake.latency = 1.0
    with pytest.raises(RetryableError) as info:
        p.send(msg())
    assert info.value.ambiguous
    assert type(info.value) is RetryableError
    assert len(fake.sends()) == 1             # it did reach Twilio


def test_connection_dropped_mid_request_is_ambiguous(fake: FakeTwilio, tw: TwilioProvider) -> None:
    fake.fail_next.append(RESET)
    with pytest.raises(RetryableError) as info:
        tw.send(msg())
    assert info.value.ambiguous


def test_connection_refused_is_not_ambiguous(fake: FakeTwilio) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = provider(fake, base_url=f"http://127.0.0.1:{port}")
    with pytest.raises(RetryableError) as info:
        p.send(msg())
    assert not info.value.ambiguous
    assert "unreachable" in info.value.message


def test_twilio_region_and_edge_are_ignored(fake: FakeTwilio, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWILIO_REGION", "au1")
    monkeypatch.setenv("TWILIO_EDGE", "sydney")
    p = provider(fake)
    assert p.client.region is None and p.client.edge is None
    assert p.send(msg()).provider_id in fake.messages
    assert p.check().startswith("account ")


def test_not_an_sms_message(fake: FakeTwilio, tw: TwilioProvider) -> None:
    with pytest.raises(ConfigError):
        tw.send(msg(channel="zalo"))
    assert fake.sends() == []


def test_mask_numbers() -> None:
    assert mask_numbers(f"The 'To' number {PHONE} is not valid") == "The 'To' number +8491****678 is not valid"
    assert mask_numbers("error 21211 at 10:30") == "error 21211 at 10:30"


# -- check and lookup ----------------------------------------------------------------

def test_check_fetches_the_account(fake: FakeTwilio, tw: TwilioProvider) -> None:
    assert tw.check() == "account loa test account (active)"
    req = fake.requests[-1]
    assert (req.method, req.path) == ("GET", f"/2010-04-01/Accounts/{fake.account_sid}.json")
    assert req.auth == (fake.account_sid, fake.auth_token)


def test_check_with_a_bad_token(fake: FakeTwilio) -> None:
    with pytest.raises(AuthError) as info:
        provider(fake, auth_token="nope").check()
    assert info.value.code == "20003"


def test_check_reports_a_suspended_account(fake: FakeTwilio, tw: TwilioProvider) -> None:
    fake.account_status = "suspended"
    with pytest.raises(MoneyError, match="suspended"):
        tw.check()


def test_lookup(fake: FakeTwilio, tw: TwilioProvider) -> None:
    sid = tw.send(msg(key="k9")).provider_id
    pending = tw.lookup("k9", sid)
    assert isinstance(pending, SendResult) and pending.provider_id == sid and pending.parts == 1

    fake.set_status(sid, "delivered")
    done = tw.lookup("k9", sid)
    assert isinstance(done, DeliveryReceipt)
    assert (done.status, done.provider_id, done.key, done.error_code) == ("delivered", sid, "k9", None)
    assert done.at is not None and done.at.tzinfo is not None

    fake.set_status(sid, "undelivered", error_code=30003, error_message="Unreachable destination handset")
    failed = tw.lookup("k9", sid)
    assert isinstance(failed, DeliveryReceipt)
    assert (failed.status, failed.error_code) == ("undelivered", "30003")

    fake.set_status(sid, "failed", error_code=30007)
    assert tw.lookup("k9", sid).status == "undelivered"   # type: ignore[union-attr]

    assert tw.lookup("k9", None) is None
    assert tw.lookup("k9", "SM" + "0" * 32) is None       # Twilio: 20404


# -- webhooks ------------------------------------------------------------------------

def test_signed_status_callback_is_a_receipt(fake: FakeTwilio, tw: TwilioProvider) -> None:
    sid = tw.send(msg(key="run1:7")).provider_id
    url = fake.sends()[0].form["StatusCallback"]
    fake.set_status(sid, "delivered")
    result = tw.webhook(signed(fake, url, fake.status_callback_params(sid, "delivered")))
    [receipt] = result.receipts
    assert (receipt.status, receipt.provider_id, receipt.key) == ("delivered", sid, "run1:7")
    assert result.status == 200 and result.inbound == ()


@pytest.mark.parametrize("status", ["undelivered", "failed"])
def test_failed_status_callback_carries_the_error_code(fake: FakeTwilio, tw: TwilioProvider,
                                                       status: str) -> None:
    sid = tw.send(msg()).provider_id
    params = fake.status_callback_params(sid, status, error_code=30006)
    [receipt] = tw.webhook(signed(fake, HOOK, params)).receipts
    assert (receipt.status, receipt.error_code, receipt.key) == ("undelivered", "30006", None)


@pytest.mark.parametrize("status", ["queued", "accepted", "sending", "sent"])
def test_intermediate_statuses_are_ignored(fake: FakeTwilio, tw: TwilioProvider, status: str) -> None:
    sid = tw.send(msg()).provider_id
    result = tw.webhook(signed(fake, HOOK, fake.status_callback_params(sid, status)))
    assert result.receipts == () and result.inbound == ()


def test_forged_or_unsigned_callbacks_are_rejected(fake: FakeTwilio, tw: TwilioProvider) -> None:
    sid = tw.send(msg()).provider_id
    params = fake.status_callback_params(sid, "delivered")
    with pytest.raises(WebhookRejected) as unsigned:
        tw.webhook(hook_request(HOOK, params))
    assert unsigned.value.status == 403

    forged = signed_callback(HOOK, params, "not-the-token")
    with pytest.raises(WebhookRejected) as wrong_key:
        tw.webhook(hook_request(HOOK, params, forged))
    assert wrong_key.value.status == 403

    good = signed_callback(HOOK, params, fake.auth_token)
    tampered = dict(params, MessageStatus="undelivered")
    with pytest.raises(WebhookRejected) as changed:
        tw.webhook(hook_request(HOOK, tampered, good))
    assert changed.value.status == 403

    with pytest.raises(WebhookRejected) as other_url:
        tw.webhook(hook_request(HOOK + "?loakey=someone-else", params, good))
    assert other_url.value.status == 403


@pytest.mark.parametrize("drop", ["MessageSid", "MessageStatus"])
def test_malformed_callbacks_are_400(fake: FakeTwilio, tw: TwilioProvider, drop: str) -> None:
    sid = tw.send(msg()).provider_id
    params = fake.status_callback_params(sid, "delivered")
    params.pop(drop)
    params.pop("SmsSid" if drop == "MessageSid" else "SmsStatus")
    with pytest.raises(WebhookRejected) as info:
        tw.webhook(signed(fake, HOOK, params))
    assert info.value.status == 400


def test_inbound_tc_sms(fake: FakeTwilio, tw: TwilioProvider) -> None:
    params = fake.inbound_params(PHONE, "TC", to=SENDER)
    result = tw.webhook(signed(fake, HOOK, params))
    [inbound] = result.inbound
    assert (inbound.phone, inbound.text, inbound.provider_id) == (PHONE, "TC", params["MessageSid"])
    assert inbound.at.tzinfo is not None
    assert result.receipts == ()
    assert result.content_type == "text/xml"
    assert result.body.endswith(b"<Response/>")


def test_inbound_from_a_raw_body(fake: FakeTwilio, tw: TwilioProvider) -> None:
    from urllib.parse import urlencode

    params = fake.inbound_params(PHONE, "Tôi muốn TC", to=SENDER)
    request = WebhookRequest(method="POST", url=HOOK, path="/hooks/twilio/tw", query={},
                             headers=signed_callback(HOOK, params, fake.auth_token),
                             body=urlencode(params).encode("utf-8"))
    [inbound] = tw.webhook(request).inbound
    assert inbound.text == "Tôi muốn TC"


def test_status_callback_posted_by_the_fake_end_to_end(fake: FakeTwilio) -> None:
    """The fake posts a signed callback to a real listener; the adapter accepts what arrived."""
    seen: list[WebhookRequest] = []

    class Hook(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            url = f"http://127.0.0.1:{self.server.server_address[1]}{self.path}"
            parts = urlsplit(url)
            seen.append(WebhookRequest("POST", url, parts.path, dict(parse_qsl(parts.query)),
                                       dict(self.headers.items()), body,
                                       dict(parse_qsl(body.decode("utf-8")))))
            self.send_response(204)
            self.end_headers()

    listener = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=listener.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{listener.server_address[1]}/hooks/twilio/tw"
        p = provider(fake, status_callback=url)
        sid = p.send(msg(key="e2e")).provider_id
        assert fake.send_status_callback(sid, "undelivered", error_code=30005) == 204
    finally:
        listener.shutdown()
        listener.server_close()
    [request] = seen
    [receipt] = p.webhook(request).receipts
    assert (receipt.provider_id, receipt.key, receipt.status, receipt.error_code) == \
        (sid, "e2e", "undelivered", "30005")


def test_fake_rejects_requests_without_basic_auth(fake: FakeTwilio) -> None:
    import json
    import urllib.error
    import urllib.request

    url = f"{fake.url}/2010-04-01/Accounts/{fake.account_sid}.json"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url, timeout=5)
    assert info.value.code == 401
    assert json.loads(info.value.read()) == {
        "code": 20003, "message": "Authenticate",
        "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401,
    }
    token = base64.b64encode(f"{fake.account_sid}:{fake.auth_token}".encode()).decode()
    req = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert json.loads(resp.read())["sid"] == fake.account_sid


def test_search_reads_twilios_list_of_messages_to_the_number(fake: FakeTwilio, tw: TwilioProvider) -> None:
    """For a send that returned no SID: Twilio's list of messages to the number, most recent
    first, back to ``since``, less the SIDs loa knows: one left is ours, none means Twilio
    never got it, several cannot be told apart."""
    since = datetime.now(UTC) - timedelta(minutes=1)
    sid = tw.send(msg("k1")).provider_id
    found = tw.search("k1", PHONE, since, frozenset())
    assert isinstance(found, SendResult) and found.provider_id == sid
    assert isinstance(tw.search("k1", PHONE, since, frozenset({sid})), NotReceived)
    assert isinstance(tw.search("k1", PHONE, datetime.now(UTC) + timedelta(minutes=5), frozenset()), NotReceived)
    assert isinstance(tw.search("k1", "+84912000999", since, frozenset()), NotReceived)   # nothing to that number
    tw.send(msg("k2"))
    assert tw.search("k1", PHONE, since, frozenset()) is None                # two: which one is ours?

    # the one left unknown is the oldest of 60: found on the list's second page
    other = "+84912000111"
    sids = [tw.send(msg(f"m{i}", to=other)).provider_id for i in range(60)]
    found = tw.search("m0", other, since, frozenset(sids[1:]))
    assert isinstance(found, SendResult) and found.provider_id == sids[0]
    pages = [r for r in fake.requests if r.method == "GET" and r.path.endswith("/Messages.json")
             and r.query.get("To") == other]
    assert len(pages) == 2
