"""loa's HTTP side (loa/web/) under a real uvicorn server, against the gateway fakes.

Every test runs ``loa.serve.Service`` (uvicorn on 127.0.0.1, a free port, no
dispatchers, no scheduler) and talks to it over HTTP.  Messages are sent by the
real dispatcher to loopback fakes of Twilio and eSMS, so the outbox rows carry
the gateway's own ids; callbacks are built and signed with the fakes' helpers,
exactly as the gateways build and sign them.

loa is configured behind a proxy: ``[serve] public_url = "https://loa.example.vn/"``
while the server listens on 127.0.0.1.  Gateways sign the public URL; the tests
sign it too and post to the local address.  A callback signed for the local
address is refused, which shows the signature really is checked against the
configured public URL.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import pytest
import requests
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from conftest import AREAS_CSV, write
from loa import db, importer
from loa import report as rep
from loa.campaign import load_one
from loa.config import Config, load
from loa.dispatch import Dispatcher
from loa.plan import plan_run
from loa.serve import Service
from loa.web import Web
from providers.base import OutgoingMessage
from providers.fakes.esms import FakeESMS
from providers.fakes.twilio import FakeTwilio, signed_callback
from providers.fakes.zalo import FakeZalo
from providers.zalo_zns import ZaloZNSProvider
from test_digest import add_world, run_campaign   # the digest's world: Mộc Châu, two campaigns sent

PUBLIC = "https://loa.example.vn"
SENDER = "+15005550006"
OPT_OUT_REPLY = "LOA: ban da tu choi nhan tin. Soan DK de nhan lai."
O, S, E = db.outbox, db.subscribers, db.events


# -- the site ------------------------------------------------------------------------

@dataclasses.dataclass
class Site:
    engine: Engine
    config: Config
    workdir: Path
    service: Service
    twilio: FakeTwilio
    zalo: FakeZalo
    esms: FakeESMS

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.service.port}"

    def local(self, public_url: str) -> str:
        """The address loa listens on, for a URL under the public one."""
        parts = urlsplit(public_url)
        return urlunsplit(("http", f"127.0.0.1:{self.service.port}", parts.path, parts.query, ""))

    def twilio_post(self, public_url: str, params: dict[str, str], *, token: str | None = None,
                    sign_for: str | None = None, headers: dict[str, str] | None = None) -> requests.Response:
        """POST a Twilio webhook: signed for ``sign_for`` (default: the public URL) with
        ``token`` (default: the account's), sent to loa's local address."""
        if headers is None:
            headers = signed_callback(sign_for or public_url, params, token or self.twilio.auth_token)
        return requests.post(self.local(public_url), data=urlencode(params).encode("utf-8"),
                             headers=headers, timeout=10)

    def inbound(self, phone: str, body: str, **kw: Any) -> tuple[dict[str, str], requests.Response]:
        params = self.twilio.inbound_params(phone, body, to=SENDER)
        return params, self.twilio_post(f"{PUBLIC}/hooks/tw", params, **kw)

    def confirmations(self) -> list[dict[str, str]]:
        """What loa itself sent through Twilio apart from campaign messages."""
        return [r.form for r in self.twilio.sends() if r.form.get("Body") == OPT_OUT_REPLY]


CONFIG = """
[serve]
public_url = "{public}/"
opt_out_reply = "{reply}"

[gateways.tw]
type = "twilio"
account_sid_env = "LOA_TEST_TWILIO_SID"
auth_token_env = "LOA_TEST_TWILIO_TOKEN"
from_number = "{sender}"
status_callback = "{public}/hooks/tw"
base_url = "{twilio}"
timeout = 5
rate = 1000

[gateways.zl]
type = "zalo_zns"
app_id = "{zalo_app}"
secret_key_env = "LOA_TEST_ZALO_SECRET"
oa_secret_env = "LOA_TEST_ZALO_OA_SECRET"
access_token_env = "LOA_TEST_ZALO_AT"
refresh_token_env = "LOA_TEST_ZALO_RT"
base_url = "{zalo}"
oauth_url = "{zalo}"
timeout = 5

[gateways.es]
type = "esms"
api_key_env = "LOA_TEST_ESMS_KEY"
secret_key_env = "LOA_TEST_ESMS_SECRET"
brandname = "LOA"
callback_url = "{public}/hooks/es"
base_url = "{esms}"
timeout = 5
rate = 1000
"""


@pytest.fixture
def site(workdir: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    with FakeTwilio() as tw, FakeZalo() as zl, FakeESMS() as es:
        for var, value in {
            "LOA_TEST_TWILIO_SID": tw.account_sid, "LOA_TEST_TWILIO_TOKEN": tw.auth_token,
            "LOA_TEST_ZALO_SECRET": zl.secret_key, "LOA_TEST_ZALO_OA_SECRET": zl.oa_secret,
            "LOA_TEST_ZALO_AT": zl.access_token, "LOA_TEST_ZALO_RT": zl.refresh_token,
            "LOA_TEST_ESMS_KEY": es.api_key, "LOA_TEST_ESMS_SECRET": es.secret_key,
        }.items():
            monkeypatch.setenv(var, value)
        with (workdir / "config.toml").open("a", encoding="utf-8") as f:
            f.write(CONFIG.format(public=PUBLIC, reply=OPT_OUT_REPLY, sender=SENDER, twilio=tw.url,
                                  zalo_app=zl.app_id, zalo=zl.url, esms=es.url))
        config = load(workdir / "config.toml")
        import_people(engine, workdir, 6)
        service = Service(engine, config, port=0, workers=0, scheduler=False)
        service.start()
        try:
            yield Site(engine, config, workdir, service, tw, zl, es)
        finally:
            service.stop()


# -- helpers -------------------------------------------------------------------------

def phone(i: int) -> str:
    return f"+84912{i:06d}"


def import_people(engine: Engine, folder: Path, n: int) -> None:
    areas = write(folder / "areas.csv", AREAS_CSV)
    importer.run_import(engine, importer.AreasHandler(engine, areas), areas)
    lines = ["phone,name,area"] + [f"0912{i:06d},Người {i},{'116' if i % 2 else '125'}" for i in range(n)]
    subs = folder / "subscribers.csv"
    subs.write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = importer.run_import(engine, importer.SubscribersHandler(engine, subs), subs)
    assert (summary.imported, summary.rejected) == (n, 0)


def campaign(site: Site, name: str, *, channel: str = "sms", gateway: str = "tw") -> Any:
    lines = [f'name = "{name}"', f'channels = ["{channel}"]', "validity_hours = 24"]
    if channel == "sms":
        write(site.workdir / "templates" / "sms" / f"{name}.j2", "Xin chào {{ subscriber.name }}\n")
        lines += ["[sms]", f'template = "sms/{name}.j2"', f'gateway = "{gateway}"']
    else:
        write(site.workdir / "templates" / "zalo" / f"{name}.toml", """
            template_id = "9001"
            [data]
            customer_name = "{{ subscriber.name }}"
        """)
        lines += ["[zalo]", f'template = "zalo/{name}.toml"', f'gateway = "{gateway}"']
    lines += ["[window]", 'start = "00:00"', 'end = "23:59:59.999999"']
    (site.workdir / "campaigns" / f"{name}.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_one(site.workdir / "campaigns", name)


def send(site: Site, name: str, gateway: str) -> dict[str, dict[str, Any]]:
    """Plan and send campaign ``name`` through ``gateway``; its outbox rows by phone."""
    plan = plan_run(site.engine, site.config, campaign(site, name, gateway=gateway))
    Dispatcher(site.engine, site.config).run_until_empty()
    rows = outbox(site.engine, plan.run_id)
    assert rows and all(r["state"] == "sent" and r["provider_id"] for r in rows.values()), rows
    return rows


def outbox(engine: Engine, run_id: int | None = None) -> dict[str, dict[str, Any]]:
    stmt = select(O, S.c.phone).join(S, S.c.id == O.c.subscriber_id)
    if run_id is not None:
        stmt = stmt.where(O.c.run_id == run_id)
    with engine.connect() as conn:
        return {r["phone"]: dict(r) for r in conn.execute(stmt).mappings()}


def row(engine: Engine, outbox_id: int) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(select(O).where(O.c.id == outbox_id)).mappings().one())


def subscriber(engine: Engine, number: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        found = conn.execute(select(S).where(S.c.phone == number)).mappings().first()
    return dict(found) if found else None


def events(engine: Engine, number: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            select(E).join(S, S.c.id == E.c.subscriber_id).where(S.c.phone == number).order_by(E.c.id)).mappings()]


def dnc(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(select(db.dnc.c.phone, db.dnc.c.source)).all())


def key_of(r: dict[str, Any]) -> str:
    return db.message_key(r["run_id"], r["subscriber_id"])


# -- Twilio status callbacks ---------------------------------------------------------

def test_twilio_status_callbacks_move_rows_forward_once_and_only_when_signed(site: Site) -> None:
    rows = send(site, "tw1", "tw")
    a, b, c = rows[phone(0)], rows[phone(1)], rows[phone(2)]
    # the dispatcher asked Twilio to call back on the public URL, naming our key
    sent = {r.form["To"]: r.form for r in site.twilio.sends()}
    assert sent[phone(0)]["StatusCallback"] == f"{PUBLIC}/hooks/tw?loakey={key_of(a)}"
    cb = site.twilio.messages[a["provider_id"]]["_status_callback"]

    # delivered: the row moves
    params = site.twilio.status_callback_params(a["provider_id"], "delivered")
    r = site.twilio_post(cb, params)
    assert r.status_code == 200, r.text
    after = row(site.engine, a["id"])
    assert after["state"] == "delivered" and after["delivered_at"] is not None

    # the same callback again: 200, nothing changes
    r = site.twilio_post(cb, params)
    assert r.status_code == 200
    assert row(site.engine, a["id"]) == after

    # later news never moves it backwards
    for status, code in (("undelivered", 30005), ("failed", 30007), ("sent", None), ("queued", None)):
        late = site.twilio.status_callback_params(a["provider_id"], status, error_code=code)
        r = site.twilio_post(cb, late)
        assert r.status_code == 200, (status, r.text)
        assert row(site.engine, a["id"]) == after, status

    # "sent" is not a receipt: b stays sent; "undelivered" then records Twilio's code
    cb_b = site.twilio.messages[b["provider_id"]]["_status_callback"]
    assert site.twilio_post(cb_b, site.twilio.status_callback_params(b["provider_id"], "sent")).status_code == 200
    assert row(site.engine, b["id"])["state"] == "sent"
    undelivered = site.twilio.status_callback_params(b["provider_id"], "undelivered", error_code=30005)
    assert site.twilio_post(cb_b, undelivered).status_code == 200
    b_after = row(site.engine, b["id"])
    assert (b_after["state"], b_after["error_code"]) == ("undelivered", "30005")
    assert site.twilio_post(cb_b, site.twilio.status_callback_params(b["provider_id"], "delivered")).status_code == 200
    assert row(site.engine, b["id"]) == b_after

    # forged, unsigned, signed for the wrong URL: 403 and c does not move
    cb_c = site.twilio.messages[c["provider_id"]]["_status_callback"]
    good = site.twilio.status_callback_params(c["provider_id"], "delivered")
    before = row(site.engine, c["id"])
    forged = site.twilio_post(cb_c, good, token="0" * 32)
    unsigned = site.twilio_post(cb_c, good, headers={"Content-Type": "application/x-www-form-urlencoded"})
    local = site.twilio_post(cb_c, good, sign_for=site.local(cb_c))   # not what Twilio calls: public_url
    other_query = site.twilio_post(cb_c.replace(key_of(c), key_of(a)), good, sign_for=cb_c)
    assert [x.status_code for x in (forged, unsigned, local, other_query)] == [403, 403, 403, 403]
    assert row(site.engine, c["id"]) == before

    # signed but malformed: no MessageSid
    malformed = {k: v for k, v in good.items() if k not in ("MessageSid", "SmsSid")}
    r = site.twilio_post(cb_c, malformed)
    assert r.status_code == 400, r.text
    assert row(site.engine, c["id"]) == before

    # and the genuine one still works
    assert site.twilio_post(cb_c, good).status_code == 200
    assert row(site.engine, c["id"])["state"] == "delivered"
    assert Counter(r["state"] for r in outbox(site.engine).values()) == Counter(
        delivered=2, undelivered=1, sent=len(rows) - 3)


def test_twilio_receipt_by_key_when_the_send_left_no_sid(site: Site) -> None:
    """A send that timed out leaves the row without Twilio's SID; the loakey in the
    callback URL still finds it."""
    rows = send(site, "tw2", "tw")
    a = rows[phone(3)]
    sid = a["provider_id"]
    with site.engine.begin() as conn:
        conn.execute(O.update().where(O.c.id == a["id"]).values(provider_id=None, state="unknown"))
    cb = site.twilio.messages[sid]["_status_callback"]
    assert site.twilio_post(cb, site.twilio.status_callback_params(sid, "delivered")).status_code == 200
    assert row(site.engine, a["id"])["state"] == "delivered"


# -- inbound SMS: opt-outs and replies -------------------------------------------------

@pytest.mark.parametrize("word", ["TC", "Từ chối", "stop"])
def test_inbound_opt_out_opts_out_at_once_and_confirms_once(site: Site, word: str) -> None:
    who = phone(1)
    params, r = site.inbound(who, word)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/xml") and b"<Response" in r.content

    sub = subscriber(site.engine, who)
    assert sub is not None and sub["opted_out_at"] is not None
    assert dnc(site.engine) == {who: "reply:tw"}
    evs = events(site.engine, who)
    assert [(e["type"], e["source"]) for e in evs] == [("opted_out", f"tw:{params['MessageSid']}")]
    assert evs[0]["attributes"] == {"text": word}
    confirmations = site.confirmations()
    assert len(confirmations) == 1 and confirmations[0]["To"] == who and confirmations[0]["From"] == SENDER
    assert len(site.twilio.sends()) == 1
    # nobody else was touched
    assert all(subscriber(site.engine, phone(i))["opted_out_at"] is None for i in (0, 2, 3))

    # Twilio retries the same webhook: same answer, no second confirmation, no second event
    r = site.twilio_post(f"{PUBLIC}/hooks/tw", params)
    assert r.status_code == 200
    assert len(site.twilio.sends()) == 1
    assert len(events(site.engine, who)) == 1
    assert subscriber(site.engine, who)["opted_out_at"] == sub["opted_out_at"]

    # a forged opt-out changes nothing for anyone
    forged_params, forged = site.inbound(phone(2), word, token="f" * 32)
    assert forged.status_code == 403
    assert subscriber(site.engine, phone(2))["opted_out_at"] is None and phone(2) not in dnc(site.engine)
    assert len(site.twilio.sends()) == 1

    # and the next campaign leaves the number out
    plan = plan_run(site.engine, site.config, campaign(site, "after", gateway="tw"))
    planned = outbox(site.engine, plan.run_id)
    assert planned[who]["state"] == "suppressed"
    assert all(r["state"] == "planned" for p, r in planned.items() if p != who)


def test_plain_reply_is_recorded_and_opts_nobody_out(site: Site) -> None:
    who = phone(2)
    params, r = site.inbound(who, "cảm ơn")
    assert r.status_code == 200
    assert [(e["type"], e["attributes"]) for e in events(site.engine, who)] == [("replied", {"text": "cảm ơn"})]
    assert subscriber(site.engine, who)["opted_out_at"] is None
    assert dnc(site.engine) == {}
    assert site.twilio.sends() == []
    # retried: still one event
    assert site.twilio_post(f"{PUBLIC}/hooks/tw", params).status_code == 200
    assert len(events(site.engine, who)) == 1
    # a sentence that merely mentions "stop" later on is not a refusal
    _, r = site.inbound(who, "Đừng stop chương trình nhé")
    assert r.status_code == 200
    assert subscriber(site.engine, who)["opted_out_at"] is None and dnc(site.engine) == {}


def test_opt_out_from_an_unknown_number_goes_on_the_dnc_list(site: Site) -> None:
    stranger = "+84987654321"
    params, r = site.inbound(stranger, "TC")
    assert r.status_code == 200
    assert dnc(site.engine) == {stranger: "reply:tw"}
    assert subscriber(site.engine, stranger) is None
    assert len(site.confirmations()) == 1 and site.confirmations()[0]["To"] == stranger
    # Twilio retries: still one confirmation
    assert site.twilio_post(f"{PUBLIC}/hooks/tw", params).status_code == 200
    assert len(site.confirmations()) == 1

    # the number arrives later in an import: planning suppresses it for "dnc"
    subs = site.workdir / "more.csv"
    subs.write_text("phone,name,area\n0987654321,Người lạ,116\n", encoding="utf-8")
    assert importer.run_import(site.engine, importer.SubscribersHandler(site.engine, subs), subs).imported == 1
    plan = plan_run(site.engine, site.config, campaign(site, "later", gateway="tw"))
    planned = outbox(site.engine, plan.run_id)
    assert (planned[stranger]["state"], planned[stranger]["reason"]) == ("suppressed", "dnc")
    assert sum(r["state"] == "planned" for r in planned.values()) == 6


# -- Zalo ---------------------------------------------------------------------------

def _zalo_sent(site: Site, name: str) -> dict[str, dict[str, Any]]:
    """Plan a ZNS campaign and hand its rows to FakeZalo through the real adapter, writing
    the outcome as the dispatcher does (the dispatcher itself would keep the rows back
    during Zalo's night, 22:00-06:00, which would make the test depend on the hour)."""
    plan = plan_run(site.engine, site.config, campaign(site, name, channel="zalo", gateway="zl"))
    rows = outbox(site.engine, plan.run_id)
    zl = ZaloZNSProvider("zl", site.zalo.options(timeout=5))
    try:
        with site.engine.begin() as conn:
            for r in rows.values():
                assert r["state"] == "planned" and r["gateway"] == "zl"
                result = zl.send(OutgoingMessage(key=key_of(r), to=r["phone"], channel="zalo", template_id="9001",
                                                 template_data={"customer_name": "x"}))
                conn.execute(O.update().where(O.c.id == r["id"]).values(
                    state="sent", provider_id=result.provider_id, attempts=1, sent_at=db.utcnow(),
                    updated_at=db.utcnow()))
    finally:
        zl.close()
    return outbox(site.engine, plan.run_id)


def test_zalo_delivery_event_by_msg_id_or_tracking_id(site: Site) -> None:
    rows = _zalo_sent(site, "zns")
    a, b, c = rows[phone(0)], rows[phone(1)], rows[phone(2)]
    hook = f"{site.url}/hooks/zl"

    body, headers = site.zalo.signed_webhook(site.zalo.delivery_event(a["provider_id"]))
    r = requests.post(hook, data=body, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert row(site.engine, a["id"])["state"] == "delivered"

    # by tracking_id (our key) alone: the msg_id never reached us
    with site.engine.begin() as conn:
        conn.execute(O.update().where(O.c.id == b["id"]).values(provider_id=None, state="unknown"))
    body, headers = site.zalo.signed_webhook(site.zalo.delivery_event(None, tracking_id=key_of(b)))
    assert requests.post(hook, data=body, headers=headers, timeout=10).status_code == 200
    assert row(site.engine, b["id"])["state"] == "delivered"

    # forged: 403, nothing moves
    before = row(site.engine, c["id"])
    body, headers = site.zalo.signed_webhook(site.zalo.delivery_event(c["provider_id"]), secret="not-the-oa-secret")
    assert requests.post(hook, data=body, headers=headers, timeout=10).status_code == 403
    body, headers = site.zalo.signed_webhook(site.zalo.delivery_event(c["provider_id"]))
    tampered = body.replace(c["provider_id"].encode(), a["provider_id"].encode())
    assert requests.post(hook, data=tampered, headers=headers, timeout=10).status_code == 403
    unsigned = {"Content-Type": "application/json"}
    assert requests.post(hook, data=body, headers=unsigned, timeout=10).status_code == 403
    assert row(site.engine, c["id"]) == before

    # other OA events are acknowledged and ignored
    body, headers = site.zalo.signed_webhook({"event_name": "follow", "follower": {"id": "x"}})
    assert requests.post(hook, data=body, headers=headers, timeout=10).status_code == 200
    assert row(site.engine, c["id"]) == before

    # the genuine one, twice
    body, headers = site.zalo.signed_webhook(site.zalo.delivery_event(c["provider_id"]))
    assert requests.post(hook, data=body, headers=headers, timeout=10).status_code == 200
    delivered = row(site.engine, c["id"])
    assert delivered["state"] == "delivered"
    assert requests.post(hook, data=body, headers=headers, timeout=10).status_code == 200
    assert row(site.engine, c["id"]) == delivered


# -- eSMS ---------------------------------------------------------------------------

def test_esms_callback_needs_the_token(site: Site) -> None:
    rows = send(site, "es1", "es")
    a, b, c = rows[phone(4)], rows[phone(5)], rows[phone(0)]
    assert site.esms.message_for(key_of(a)).callback_url.startswith(f"{PUBLIC}/hooks/es?loa_token=")

    url = site.esms.callback_url_for(a["provider_id"], 5, success=True)
    r = requests.get(site.local(url), timeout=10)
    assert r.status_code == 200, r.text
    assert row(site.engine, a["id"])["state"] == "delivered"

    url_b = site.local(site.esms.callback_url_for(b["provider_id"], 4))
    before = row(site.engine, b["id"])
    token = re.search(r"loa_token=([0-9a-f]+)", url_b).group(1)   # type: ignore[union-attr]
    wrong = url_b.replace(token, "0" * len(token))
    missing = re.sub(r"loa_token=[0-9a-f]+&?", "", url_b)
    assert requests.get(wrong, timeout=10).status_code == 403
    assert requests.get(missing, timeout=10).status_code == 403
    assert row(site.engine, b["id"]) == before

    # eSMS's own GET, as it makes it, but at the local address: rejected (SendStatus 4)
    assert requests.get(url_b, timeout=10).status_code == 200
    after = row(site.engine, b["id"])
    assert (after["state"], after["error_code"]) == ("undelivered", "esms-status-4")

    # eSMS may glue its fields on with a second "?": "...?loa_token=T?SMSID=..."
    site.esms.callback_glue = "?"
    url_c = site.local(site.esms.callback_url_for(c["provider_id"], 5, success=True))
    assert "?SMSID=" in url_c and url_c.count("?") == 2
    assert requests.get(url_c, timeout=10).status_code == 200
    assert row(site.engine, c["id"])["state"] == "delivered"


# -- the rest --------------------------------------------------------------------------

def test_unknown_gateway_routes_and_methods(site: Site) -> None:
    assert requests.post(f"{site.url}/hooks/nosuch", data=b"x", timeout=10).status_code == 404
    assert requests.get(f"{site.url}/hooks/", timeout=10).status_code == 404
    assert requests.get(f"{site.url}/nothing", timeout=10).status_code == 404
    # a configured gateway that takes no callbacks
    assert requests.post(f"{site.url}/hooks/sim", data=b"x", timeout=10).status_code == 404
    assert requests.delete(f"{site.url}/hooks/tw", timeout=10).status_code == 404
    too_big = requests.post(f"{site.url}/hooks/tw", data=b"x" * 1_000_001, timeout=10)
    assert too_big.status_code == 413


def test_healthz(site: Site) -> None:
    r = requests.get(f"{site.url}/healthz", timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json() == {"ok": True}


_PAIR = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"'
SAMPLE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)'
    rf'(?:\{{(?P<labels>{_PAIR}(?:,{_PAIR})*,?)?\}})?'
    r' (?P<value>\S+)(?: -?\d+)?$'
)
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"')


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every line a comment or a sample; samples of a family after its TYPE, families contiguous."""
    assert text.endswith("\n")
    samples: list[tuple[str, dict[str, str], float]] = []
    typed: dict[str, str] = {}
    seen_families: list[str] = []
    for line in text.splitlines():
        assert line.strip() == line and line, repr(line)
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if parts[1] == "TYPE":
                assert parts[2] not in typed, f"TYPE twice for {parts[2]}"
                assert parts[3] in ("counter", "gauge", "histogram", "summary", "untyped"), line
                typed[parts[2]] = parts[3]
            else:
                assert parts[1] == "HELP" and len(parts) == 4, line
            continue
        m = SAMPLE.match(line)
        assert m, f"not a Prometheus sample: {line!r}"
        name = m.group("name")
        assert name in typed, f"{name} has no TYPE before its samples"
        if not seen_families or seen_families[-1] != name:
            assert name not in seen_families, f"samples of {name} are not contiguous"
            seen_families.append(name)
        value = float(m.group("value"))
        assert not math.isnan(value)
        samples.append((name, dict(LABEL.findall(m.group("labels") or "")), value))
    return samples


def test_metrics_are_prometheus_text_and_match_the_ledger(site: Site) -> None:
    send(site, "m1", "tw")
    plan_run(site.engine, site.config, campaign(site, "m2", gateway="es"))
    r = requests.get(f"{site.url}/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = parse_prometheus(r.text)

    counted = {(lb["state"], lb["gateway"]): v for name, lb, v in samples if name == "loa_messages"}
    with site.engine.connect() as conn:
        truth = {(s, g or ""): float(n) for s, g, n in
                 conn.execute(select(O.c.state, O.c.gateway, func.count()).group_by(O.c.state, O.c.gateway))}
    assert counted == truth
    assert truth[("sent", "tw")] == 6 and truth[("planned", "es")] == 6
    values = {name: v for name, lb, v in samples if not lb}
    assert values["loa_queue_depth"] == 6
    assert values["loa_send_rate"] == pytest.approx(6 / 60, abs=0.001)
    assert values["loa_scheduler_leader"] == 0
    paused = {lb["gateway"]: v for name, lb, v in samples if name == "loa_gateway_paused"}
    assert paused == {name: 0 for name in site.config.gateways}


def test_metrics_label_values_are_escaped(site: Site) -> None:
    plan = plan_run(site.engine, site.config, campaign(site, "esc", gateway="tw"))
    odd = 'we"ird\\gw\nx'
    with site.engine.begin() as conn:
        conn.execute(O.update().where(O.c.run_id == plan.run_id).values(gateway=odd))
    samples = parse_prometheus(requests.get(f"{site.url}/metrics", timeout=10).text)
    labels = [lb for name, lb, v in samples if name == "loa_messages"]
    assert labels == [{"state": "planned", "gateway": 'we\\"ird\\\\gw\\nx'}]


def test_healthz_is_503_when_the_database_is_gone(site: Site, tmp_path: Path) -> None:
    broken = Service(db.make_engine(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}"), site.config,
                     port=0, workers=0, scheduler=False)
    broken.start()
    try:
        r = requests.get(f"http://127.0.0.1:{broken.port}/healthz", timeout=10)
        assert r.status_code == 503
        assert r.json()["ok"] is False
    finally:
        broken.stop()
    assert json.loads(requests.get(f"{site.url}/healthz", timeout=10).text) == {"ok": True}


def test_concurrent_deliveries_of_one_opt_out_confirm_once(site: Site) -> None:
    """A gateway that gives up waiting re-sends while the first request is still running."""
    from concurrent.futures import ThreadPoolExecutor

    for who in (phone(3), "+84987000111"):   # a subscriber, and a number loa does not know
        params = site.twilio.inbound_params(who, "TC", to=SENDER)
        before = len(site.confirmations())
        with ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(lambda _: site.twilio_post(f"{PUBLIC}/hooks/tw", params).status_code, range(6)))
        assert codes == [200] * 6
        assert len(site.confirmations()) == before + 1, who
        assert who in dnc(site.engine)
    assert [e["type"] for e in events(site.engine, phone(3))] == ["opted_out"]


# -- the report (GET /report) ----------------------------------------------------------
# These drive the application in process (no server) on the digest tests' world: Mộc Châu
# and Mai Sơn, two campaigns sent through the simulator (bluezone, then remind).

def get(web: Web, path: str, query: str = "", token: str | None = None) -> tuple[int, Mapping[str, str], str]:
    """One GET through the application, in process (no server): status, headers, body."""
    from starlette.testclient import TestClient

    headers = {"Authorization": f"Bearer {token}".encode("latin-1")} if token is not None else {}
    with TestClient(web, raise_server_exceptions=False) as client:
        r = client.get(path + (f"?{query}" if query else ""), headers=headers)   # type: ignore[arg-type]
    assert int(r.headers["Content-Length"]) == len(r.content)
    return r.status_code, r.headers, r.content.decode("utf-8")


@pytest.fixture
def sent(engine: Engine, workdir: Path, config: Config) -> Config:
    add_world(engine, workdir)
    run_campaign(engine, config, "bluezone")
    run_campaign(engine, config, "remind")
    return config


def built(engine: Engine, config: Config, name: str, level: str | None = None) -> rep.Report:
    return rep.build(engine, name, load_one(config.campaigns_dir, name).goal, level)


def test_report_is_the_self_contained_html_page_of_the_latest_campaign(engine: Engine, sent: Config) -> None:
    status, headers, body = get(Web(engine, sent), "/report")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert body.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in body
    assert "<title>remind — báo cáo loa</title>" in body            # run last
    assert "Huyện Mộc Châu" in body and "Huyện Mai Sơn" in body
    assert "Plotly.newPlot" in body and "<script src=" not in body and 'rel="stylesheet"' not in body
    status, _, body = get(Web(engine, sent), "/report", "campaign=bluezone")
    assert status == 200 and "<title>bluezone — báo cáo loa</title>" in body


def test_report_csv_is_loa_reports_csv(engine: Engine, sent: Config) -> None:
    status, headers, body = get(Web(engine, sent), "/report", "campaign=bluezone&format=csv")
    assert status == 200 and headers["Content-Type"] == "text/csv; charset=utf-8"
    report = built(engine, sent, "bluezone")
    assert body == rep.to_csv(report)
    rows = list(csv.DictReader(io.StringIO(body)))
    assert list(rows[0]) == list(rep.FIELDS)
    moc_chau = next(r for r in rows if r["code"] == "126")
    row = next(r for r in report.rows if r.code == "126")
    assert moc_chau["area"] == "Huyện Mộc Châu"
    assert (int(moc_chau["audience"]), int(moc_chau["held_out"]), int(moc_chau["delivered"]),
            int(moc_chau["installed_total"])) == (row.audience, row.held_out, row.delivered, row.installed_total)
    assert row.audience == 40 and row.delivered > 0


def test_report_json_and_level(engine: Engine, sent: Config) -> None:
    status, headers, body = get(Web(engine, sent), "/report", "campaign=remind&format=json&level=province")
    assert status == 200 and headers["Content-Type"] == "application/json; charset=utf-8"
    data = json.loads(body)
    assert data == json.loads(rep.to_json(built(engine, sent, "remind", "province")))
    assert data["level"] == "province" and [r["area"] for r in data["rows"]] == ["Sơn La"]
    assert data["total"]["audience"] == 64


@pytest.mark.parametrize("query, status, code, field, says", [
    ("campaign=nope", 404, "not_found", "campaign", "no campaign named 'nope'"),
    ("format=pdf", 400, "invalid", "format", "unknown format 'pdf': use html, csv, json"),
    ("format=", 400, "invalid", "format", "unknown format '': use html, csv, json"),   # empty is no default
    ("level=commune", 400, "invalid", "level", "unknown area level 'commune' (levels: district, province)"),
])
def test_report_refuses_unknown_campaigns_formats_and_levels(engine: Engine, sent: Config, query: str, status: int,
                                                             code: str, field: str, says: str) -> None:
    got, headers, body = get(Web(engine, sent), "/report", query)
    assert (got, headers["Content-Type"]) == (status, "application/json")
    error = json.loads(body)["error"]
    assert (error["code"], error["field"]) == (code, field)
    assert error["message"].startswith(says) and "\n" not in error["message"]


def test_report_before_any_run_is_404(engine: Engine, config: Config) -> None:
    status, _, body = get(Web(engine, config), "/report")
    assert status == 404 and json.loads(body) == {"error": {
        "code": "not_found", "field": "campaign",
        "message": "no campaign has run yet; name one, or run `loa campaigns run NAME`"}}


def test_report_token_when_configured(engine: Engine, sent: Config, workdir: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with (workdir / "config.toml").open("a", encoding="utf-8") as f:
        f.write('\n[serve]\nreport_token_env = "LOA_TEST_REPORT_TOKEN"\n')
    web = Web(engine, load(workdir / "config.toml"))
    monkeypatch.delenv("LOA_TEST_REPORT_TOKEN", raising=False)
    status, _, body = get(web, "/report", "format=csv", token="anything")
    assert status == 503 and "$LOA_TEST_REPORT_TOKEN is not set" in json.loads(body)["error"]["message"]  # shut
    monkeypatch.setenv("LOA_TEST_REPORT_TOKEN", "s3cret-đúng")
    assert get(web, "/report", "format=csv")[0] == 401
    assert get(web, "/report", "format=csv", token="wrong")[0] == 401
    status, _, body = get(web, "/report", "format=csv", token="s3cret-đúng".encode().decode("latin-1"))
    assert status == 200 and body == rep.to_csv(built(engine, sent, "remind"))
    assert get(Web(engine, sent), "/report", "format=csv")[0] == 200          # no token configured: open


def test_report_over_http(site: Site) -> None:
    """Over HTTP: a campaign sent to Twilio's fake, its report as CSV."""
    send(site, "r1", "tw")
    r = requests.get(f"{site.url}/report", params={"format": "csv"}, timeout=30)
    assert r.status_code == 200 and r.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert r.content.decode("utf-8") == rep.to_csv(rep.build(site.engine, "r1", None))
    assert requests.post(f"{site.url}/report", timeout=10).status_code == 404
