"""The simulated gateway: world model, in-process provider, HTTP server and client.

HTTP tests run against a real loopback server; nothing in requests is mocked.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from providers.base import (
    AuthError,
    ConfigError,
    MoneyError,
    NotReceived,
    OutgoingMessage,
    PermanentError,
    ProviderError,
    RetryableError,
    SendResult,
    ThrottledError,
)
from providers.simulator import (
    SimulatedNetwork,
    SimulatorHTTPNoDedupeProvider,
    SimulatorHTTPProvider,
    SimulatorProvider,
    SimulatorServer,
    mask_phone,
)

PHONE = "+84912345678"


def msg(key: str = "k1", to: str = PHONE, **kw: Any) -> OutgoingMessage:
    kw.setdefault("text", "Xin chào")
    return OutgoingMessage(key=key, to=to, channel=kw.pop("channel", "sms"), **kw)


def phone(i: int) -> str:
    return f"+849{i:08d}"


# -- fixtures ----------------------------------------------------------------

@pytest.fixture
def server_factory() -> Iterator[Callable[..., SimulatorServer]]:
    started: list[SimulatorServer] = []

    def make(**options: Any) -> SimulatorServer:
        srv = SimulatorServer(**options).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
def client_factory() -> Iterator[Callable[..., SimulatorHTTPProvider]]:
    made: list[SimulatorHTTPProvider] = []

    def make(url: str, **options: Any) -> SimulatorHTTPProvider:
        options.setdefault("timeout", 2.0)
        provider = SimulatorHTTPProvider("simhttp", {"url": url, **options})
        made.append(provider)
        return provider

    yield make
    for provider in made:
        provider.close()


@pytest.fixture
def canned_server() -> Iterator[Callable[..., str]]:
    """A loopback server answering every request with one fixed response,
    for statuses the simulator itself never produces (402, 403, HTML 502...)."""
    servers: list[ThreadingHTTPServer] = []

    def make(status: int, body: bytes | str | dict[str, Any],
             content_type: str = "application/json", headers: dict[str, str] | None = None) -> str:
        if isinstance(body, dict):
            body = json.dumps(body)
        data = body.encode() if isinstance(body, str) else body

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    yield make
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- SimulatedNetwork --------------------------------------------------------

class TestNetwork:
    def test_accepts_and_reports(self) -> None:
        net = SimulatedNetwork(delivery_rate=1.0, install_rate=1.0)
        result = net.submit(msg("a", parts=2))
        assert result.provider_id.startswith("sim-") and len(result.provider_id) == 20
        assert result.status == "sent" and result.parts == 2
        [receipt] = net.take_receipts()
        assert receipt.status == "delivered" and receipt.key == "a"
        assert receipt.provider_id == result.provider_id
        assert receipt.at is not None and receipt.at.tzinfo is not None
        assert receipt.at.utcoffset() == timedelta(0)
        [response] = net.take_responses()
        assert (response.phone, response.type, response.key) == (PHONE, "installed", "a")
        assert response.at.utcoffset() == timedelta(0)

    def test_drained_once(self) -> None:
        net = SimulatedNetwork(install_rate=1.0, delivery_rate=1.0)
        net.submit(msg("a"))
        assert len(net.take_receipts()) == 1 and len(net.take_responses()) == 1
        assert net.take_receipts() == [] and net.take_responses() == []

    def test_undelivered_receipt_has_code(self) -> None:
        net = SimulatedNetwork(delivery_rate=0.0, install_rate=1.0)
        net.submit(msg("a"))
        [receipt] = net.take_receipts()
        assert receipt.status == "undelivered" and receipt.error_code == "SIM-UNDELIV"
        assert net.take_responses() == []  # only delivered recipients install

    def test_same_seed_same_fates(self) -> None:
        opts = dict(delivery_rate=0.5, install_rate=0.5, failure_rate=0.3, permanent_rate=0.2)

        def run(seed: int) -> list[tuple[str, str]]:
            net = SimulatedNetwork(seed=seed, **opts)
            out = []
            for i in range(300):
                try:
                    out.append((net.submit(msg(f"k{i}", to=phone(i))).provider_id, "ok"))
                except ProviderError as exc:
                    out.append(("", exc.code or ""))
            out += [(r.key or "", r.status) for r in net.take_receipts()]
            out += [(r.key or "", r.type) for r in net.take_responses()]
            return out

        assert run(7) == run(7)
        assert run(7) != run(8)

    def test_fates_do_not_depend_on_order(self) -> None:
        keys = [f"k{i}" for i in range(200)]
        a, b = SimulatedNetwork(seed=3, delivery_rate=0.5), SimulatedNetwork(seed=3, delivery_rate=0.5)
        for k in keys:
            a.submit(msg(k))
        for k in reversed(keys):
            b.submit(msg(k))
        fates = lambda net: {r.key: (r.status, r.provider_id) for r in net.take_receipts()}  # noqa: E731
        assert fates(a) == fates(b)

    def test_rates_roughly_honoured(self) -> None:
        n = 2000
        net = SimulatedNetwork(seed=11, delivery_rate=0.9, install_rate=0.3)
        for i in range(n):
            net.submit(msg(f"k{i}", to=phone(i)))
        receipts = net.take_receipts()
        delivered = sum(r.status == "delivered" for r in receipts)
        installs = len(net.take_responses())
        assert len(receipts) == n
        # ~4.5 standard deviations either side: a broken rate fails, noise does not.
        assert 0.87 * n <= delivered <= 0.93 * n
        assert 0.255 * delivered <= installs <= 0.345 * delivered

    def test_failure_and_permanent_rates(self) -> None:
        n = 2000
        net = SimulatedNetwork(seed=5, failure_rate=0.2, permanent_rate=0.1)
        transient = permanent = 0
        for i in range(n):
            try:
                net.submit(msg(f"k{i}", to=phone(i)))
            except PermanentError as exc:
                assert exc.code == "SIM-INVALID"
                permanent += 1
            except RetryableError as exc:
                assert exc.code == "SIM-503"
                transient += 1
        assert 0.17 * n <= transient <= 0.23 * n
        assert 0.07 * (n - transient) <= permanent <= 0.13 * (n - transient)

    def test_transient_failure_clears_on_retry(self) -> None:
        net = SimulatedNetwork(seed=1, failure_rate=0.5)
        outcomes = {}
        for i in range(50):
            key = f"k{i}"
            for attempt in range(1, 30):
                try:
                    net.submit(msg(key))
                    outcomes[key] = attempt
                    break
                except RetryableError:
                    continue
        assert len(outcomes) == 50                      # every key got through eventually
        assert any(a > 1 for a in outcomes.values())    # and some needed a retry
        assert all(net.accepted[k] == 1 for k in outcomes)
        assert sum(net.received.values()) == sum(outcomes.values())

    def test_permanent_refusal_is_per_phone(self) -> None:
        net = SimulatedNetwork(seed=2, permanent_rate=0.5)
        refused = [p for p in (phone(i) for i in range(40)) if net.refuses(p)]
        assert refused
        for key in ("x", "y", "z"):
            with pytest.raises(PermanentError) as info:
                net.submit(msg(key, to=refused[0]))
            assert refused[0] not in str(info.value)    # the phone is masked
            assert mask_phone(refused[0]) in str(info.value)

    def test_dedupe_on(self) -> None:
        net = SimulatedNetwork(install_rate=1.0, delivery_rate=1.0)
        first = net.submit(msg("a"))
        again = net.submit(msg("a"))
        assert again.provider_id == first.provider_id
        assert net.received["a"] == 2 and net.accepted["a"] == 1
        assert len(net.take_receipts()) == 1 and len(net.take_responses()) == 1

    def test_dedupe_off(self) -> None:
        net = SimulatedNetwork(install_rate=1.0, delivery_rate=1.0, dedupe=False)
        ids = {net.submit(msg("a")).provider_id for _ in range(3)}
        assert len(ids) == 3
        assert net.received["a"] == 3 and net.accepted["a"] == 3
        assert len(net.take_receipts()) == 3 and len(net.take_responses()) == 3

    def test_receipt_delay(self) -> None:
        net = SimulatedNetwork(receipt_delay=60.0, install_rate=1.0, delivery_rate=1.0)
        before = datetime.now(UTC)
        net.submit(msg("a"))
        assert net.take_receipts() == [] and net.take_responses() == []
        assert net.pending() == (1, 1)
        later = before + timedelta(seconds=61)
        [receipt] = net.take_receipts(now=later)
        [response] = net.take_responses(now=later.timestamp())
        assert receipt.at is not None and receipt.at >= before + timedelta(seconds=60)
        assert response.at == receipt.at

    def test_thread_safe_counts(self) -> None:
        net = SimulatedNetwork()

        def worker(t: int) -> None:
            for i in range(200):
                net.submit(msg(f"k{i % 50}"))   # every key sent many times, concurrently

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert net.total_received == 1600
        assert set(net.accepted.values()) == {1} and len(net.accepted) == 50
        assert len(net.take_receipts()) == 50

    @pytest.mark.parametrize("opts", [{"delivery_rate": 1.5}, {"failure_rate": -0.1},
                                      {"latency_ms": -1}])
    def test_bad_options(self, opts: dict[str, Any]) -> None:
        with pytest.raises(ValueError):
            SimulatedNetwork(**opts)


def test_mask_phone() -> None:
    assert mask_phone("+84912345678") == "+8491****678"


# -- SimulatorProvider -------------------------------------------------------

class TestSimulatorProvider:
    def test_send_and_fetch(self) -> None:
        p = SimulatorProvider("sim", {"seed": 1, "delivery_rate": 1.0, "install_rate": 1.0})
        assert p.type == "simulator" and p.channels == ("sms", "zalo") and p.rate == 50.0
        result = p.send(msg("a", channel="zalo", template_id="t1", template_data={"ten": "Lan"}))
        assert result.provider_id.startswith("sim-")
        assert [r.key for r in p.fetch_receipts()] == ["a"]
        assert [r.type for r in p.fetch_responses()] == ["installed"]
        assert list(p.fetch_receipts()) == []
        assert "1 send calls" in p.check()

    def test_settings_all_optional(self) -> None:
        names = {s.name for s in SimulatorProvider.settings}
        assert {"seed", "delivery_rate", "failure_rate", "permanent_rate", "install_rate",
                "latency_ms", "receipt_delay", "dedupe"} <= names
        assert not any(s.required for s in SimulatorProvider.settings)

    def test_dedupes_by_key_follows_option(self) -> None:
        assert SimulatorProvider("a", {}).dedupes_by_key is True
        assert SimulatorProvider("b", {"dedupe": False}).dedupes_by_key is False
        assert SimulatorProvider("c", {"dedupe": "false"}).dedupes_by_key is False
        assert SimulatorProvider.dedupes_by_key is False  # class default untouched

    def test_errors_name_the_gateway(self) -> None:
        p = SimulatorProvider("sim-a", {"failure_rate": 1.0})
        with pytest.raises(RetryableError) as info:
            p.send(msg())
        assert info.value.gateway == "sim-a" and info.value.code == "SIM-503"
        p = SimulatorProvider("sim-b", {"permanent_rate": 1.0})
        with pytest.raises(PermanentError) as perm:
            p.send(msg())
        assert perm.value.gateway == "sim-b" and perm.value.code == "SIM-INVALID"
        assert PHONE not in str(perm.value)

    def test_bad_option_is_config_error(self) -> None:
        with pytest.raises(ConfigError) as info:
            SimulatorProvider("sim", {"delivery_rate": 2})
        assert info.value.gateway == "sim"

    def test_shared_network(self) -> None:
        net = SimulatedNetwork()
        p = SimulatorProvider("sim", {"network": net})
        p.send(msg("a"))
        assert net.accepted["a"] == 1


# -- SimulatorServer + SimulatorHTTPProvider ---------------------------------

class TestHTTP:
    def test_success_path(self, server_factory: Any, client_factory: Any) -> None:
        srv = server_factory(seed=4, delivery_rate=1.0, install_rate=1.0)
        client = client_factory(srv.url)
        assert client.dedupes_by_key is True
        result = client.send(msg("a", text="Chúc mừng năm mới", encoding="UCS-2", parts=2))
        assert result.provider_id.startswith("sim-") and result.parts == 2
        assert srv.network.messages[0].text == "Chúc mừng năm mới"
        [receipt] = client.fetch_receipts()
        assert (receipt.status, receipt.key, receipt.provider_id) == ("delivered", "a",
                                                                     result.provider_id)
        assert receipt.at is not None and receipt.at.utcoffset() == timedelta(0)
        [response] = client.fetch_responses()
        assert (response.phone, response.type, response.key) == (PHONE, "installed", "a")
        assert response.at.utcoffset() == timedelta(0)
        # drained once
        assert client.fetch_receipts() == [] and client.fetch_responses() == []
        assert "1 send calls" in client.check()

    def test_same_ids_as_in_process(self, server_factory: Any, client_factory: Any) -> None:
        srv = server_factory(seed=9)
        client = client_factory(srv.url)
        local = SimulatedNetwork(seed=9)
        for i in range(5):
            assert client.send(msg(f"k{i}")).provider_id == local.submit(msg(f"k{i}")).provider_id

    def test_dedupe_over_http(self, server_factory: Any, client_factory: Any) -> None:
        srv = server_factory()
        client = client_factory(srv.url)
        assert client.send(msg("a")).provider_id == client.send(msg("a")).provider_id
        assert srv.network.received["a"] == 2 and srv.network.accepted["a"] == 1
        assert len(client.fetch_receipts()) == 1

    def test_whether_it_dedupes_is_the_types_not_a_setting(self) -> None:
        assert SimulatorHTTPProvider.dedupes_by_key is True
        assert SimulatorHTTPNoDedupeProvider.dedupes_by_key is False
        for cls in (SimulatorHTTPProvider, SimulatorHTTPNoDedupeProvider):
            assert "dedupe" not in {s.name for s in cls.settings}
            assert cls("h", {"url": "http://127.0.0.1:9", "dedupe": not cls.dedupes_by_key}).dedupes_by_key \
                is cls.dedupes_by_key

    def test_dedupe_off_over_http(self, server_factory: Any, client_factory: Any) -> None:
        srv = server_factory(dedupe=False)
        client = client_factory(srv.url)
        assert client.send(msg("a")).provider_id != client.send(msg("a")).provider_id
        assert srv.network.accepted["a"] == 2

    def test_503_is_retryable(self, server_factory: Any, client_factory: Any) -> None:
        client = client_factory(server_factory(failure_rate=1.0).url)
        with pytest.raises(RetryableError) as info:
            client.send(msg())
        err = info.value
        assert type(err) is RetryableError and err.code == "SIM-503" and not err.ambiguous
        assert "HTTP 503" in str(err) and err.gateway == "simhttp"

    def test_400_is_permanent(self, server_factory: Any, client_factory: Any) -> None:
        client = client_factory(server_factory(permanent_rate=1.0).url)
        with pytest.raises(PermanentError) as info:
            client.send(msg())
        assert info.value.code == "SIM-INVALID" and "HTTP 400" in str(info.value)
        assert PHONE not in str(info.value)

    def test_429_is_throttled(self, server_factory: Any, client_factory: Any) -> None:
        srv = server_factory(throttle_every=2)
        client = client_factory(srv.url)
        client.send(msg("a"))
        with pytest.raises(ThrottledError) as info:
            client.send(msg("b"))
        assert info.value.code == "SIM-THROTTLED" and info.value.retry_after == 1.0
        assert "HTTP 429" in str(info.value)
        client.send(msg("b"))
        assert srv.network.received["b"] == 1  # the throttled call never reached the network

    def test_401_is_auth(self, server_factory: Any, client_factory: Any) -> None:
        srv = server_factory(token="s3cret")
        with pytest.raises(AuthError) as info:
            client_factory(srv.url).send(msg())
        assert info.value.code == "SIM-AUTH" and "HTTP 401" in str(info.value)
        with pytest.raises(AuthError):
            client_factory(srv.url, token="wrong").check()
        assert client_factory(srv.url, token="s3cret").send(msg()).provider_id
        assert srv.network.total_received == 1

    def test_bad_request(self, server_factory: Any) -> None:
        import requests

        srv = server_factory()
        r = requests.post(srv.url + "/v1/messages", data=b"{not json", timeout=2)
        assert r.status_code == 400 and r.json()["error"]["code"] == "SIM-BADREQ"
        r = requests.post(srv.url + "/v1/messages", json={"key": "a"}, timeout=2)
        assert r.status_code == 400 and "to" in r.json()["error"]["message"]
        r = requests.get(srv.url + "/v1/health", timeout=2)
        assert r.json() == {"ok": True, "received": 0, "accepted": 0, "dedupe": True}
        assert requests.get(srv.url + "/nope", timeout=2).status_code == 404

    def test_read_timeout_is_ambiguous(self, server_factory: Any, client_factory: Any) -> None:
        srv = server_factory(latency_ms=600)
        client = client_factory(srv.url, timeout=0.15)
        with pytest.raises(RetryableError) as info:
            client.send(msg("slow"))
        assert info.value.ambiguous is True
        # The request did arrive: once the server catches up, a re-send with the
        # same key is answered from the dedupe table, never accepted twice.
        deadline = time.monotonic() + 3
        while srv.network.accepted["slow"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert srv.network.accepted["slow"] == 1

    def test_connection_refused_not_ambiguous(self, client_factory: Any) -> None:
        client = client_factory(f"http://127.0.0.1:{closed_port()}")
        with pytest.raises(RetryableError) as info:
            client.send(msg())
        assert info.value.ambiguous is False and "unreachable" in str(info.value)
        with pytest.raises(RetryableError):
            client.check()

    def test_stopped_server_refuses(self, server_factory: Any, client_factory: Any) -> None:
        srv = server_factory()
        client = client_factory(srv.url)
        client.send(msg("a"))
        srv.stop()
        with pytest.raises(RetryableError) as info:
            client.send(msg("b"))
        assert info.value.ambiguous is False

    def test_receipt_delay_over_http(self, server_factory: Any, client_factory: Any) -> None:
        srv = server_factory(receipt_delay=0.3)
        client = client_factory(srv.url)
        client.send(msg("a"))
        assert client.fetch_receipts() == []
        time.sleep(0.35)
        assert [r.key for r in client.fetch_receipts()] == ["a"]

    def test_context_manager(self) -> None:
        with SimulatorServer(seed=1) as srv:
            assert srv.url.startswith("http://127.0.0.1:")
            provider = SimulatorHTTPProvider("s", {"url": srv.url})
            try:
                assert "ok" in provider.check()
            finally:
                provider.close()

    @pytest.mark.parametrize("opts", [{"url": ""}, {"url": "ftp://x"},
                                      {"url": "http://x", "timeout": 0}])
    def test_bad_settings(self, opts: dict[str, Any]) -> None:
        with pytest.raises(ConfigError):
            SimulatorHTTPProvider("s", opts)

    def test_setting_declarations(self) -> None:
        by_name = {s.name: s for s in SimulatorHTTPProvider.settings}
        assert by_name["url"].required
        assert by_name["token"].secret and not by_name["token"].required
        assert by_name["timeout"].default == 5.0


class TestHTTPStatusMapping:
    """Statuses and bodies only a foreign or broken gateway produces."""

    @pytest.mark.parametrize(("status", "cls", "code"), [
        (402, MoneyError, "NOFUNDS"),
        (403, AuthError, "FORBIDDEN"),
        (404, PermanentError, "NOPE"),
        (422, PermanentError, "BADTPL"),
        (500, RetryableError, "BOOM"),
    ])
    def test_json_errors(self, canned_server: Any, client_factory: Any,
                         status: int, cls: type[ProviderError], code: str) -> None:
        url = canned_server(status, {"error": {"code": code, "message": "went wrong"}})
        with pytest.raises(cls) as info:
            client_factory(url).send(msg())
        assert info.value.code == code
        assert f"HTTP {status}" in str(info.value) and "went wrong" in str(info.value)

    def test_non_json_error_body(self, canned_server: Any, client_factory: Any) -> None:
        url = canned_server(502, "<html>Bad Gateway</html>", content_type="text/html")
        with pytest.raises(RetryableError) as info:
            client_factory(url).send(msg())
        assert "non-JSON" in str(info.value) and "HTTP 502" in str(info.value)

    def test_non_json_success_body(self, canned_server: Any, client_factory: Any) -> None:
        url = canned_server(201, "accepted", content_type="text/plain")
        with pytest.raises(RetryableError) as info:
            client_factory(url).send(msg())
        assert "non-JSON" in str(info.value) and info.value.ambiguous

    def test_retry_after_http_date(self, canned_server: Any, client_factory: Any) -> None:
        from email.utils import format_datetime

        when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
        url = canned_server(429, {"error": {"code": "SLOW", "message": "slow down"}},
                            headers={"Retry-After": when})
        with pytest.raises(ThrottledError) as info:
            client_factory(url).send(msg())
        assert info.value.retry_after is not None and 20 <= info.value.retry_after <= 31


# -- lookups by our key ------------------------------------------------------------

def test_the_server_answers_a_lookup_by_key_with_what_it_accepted(
        server_factory: Callable[..., SimulatorServer], client_factory: Callable[..., SimulatorHTTPProvider],
        canned_server: Callable[..., str]) -> None:
    """``GET /v1/messages/<key>``: the message accepted under the key, or 404 SIM-NOMESSAGE
    when none ever was (never sent, or refused), which only that answer may mean."""
    srv = server_factory(seed=1, dedupe=False, failure_rate=0.0, permanent_rate=0.0)
    client = client_factory(srv.url)
    sent = client.send(msg("loa-7-1"))
    found = client.lookup("loa-7-1", None)
    assert isinstance(found, SendResult) and found.provider_id == sent.provider_id and found.status == "sent"
    assert client.lookup("loa-7-2", None) == NotReceived("loa-7-2")
    assert client.lookup("loa 7/3?x", None) == NotReceived("loa 7/3?x")        # the key travels quoted
    assert SimulatorProvider("sim", {"network": srv.network}).lookup("loa-7-1", None) == srv.network.lookup("loa-7-1")

    refusing = server_factory(seed=1, failure_rate=1.0)     # every call refused with 503: nothing accepted
    with pytest.raises(RetryableError):
        client_factory(refusing.url).send(msg("loa-8-1"))
    assert client_factory(refusing.url).lookup("loa-8-1", None) == NotReceived("loa-8-1")

    # a 404 that is not the server's answer about the key (an old server, a wrong URL) proves nothing
    elsewhere = canned_server(404, {"error": {"code": "SIM-NOTFOUND", "message": "no such endpoint"}})
    with pytest.raises(ProviderError):
        client_factory(elsewhere).lookup("loa-7-2", None)
