"""``loa demo``: Sơn La's Bluezone reminder, end to end, on SQLite.

Real figures, synthetic people: the 12 districts and their populations come
from the province's 17 August 2020 table; the subscribers are generated (no
real numbers), spread by population, and those already registered by that date
are imported as "installed" events so the campaign suppresses them.  The
reminder then goes out through the simulator gateway, some recipients install,
a few of everyone install on their own, and the report shows the difference.
The one figure of "installs after the message" that the demo states is the
report's own (see :func:`after_message_line`): an install counts when it falls
within the attribution window after the reminder reached the person, whether the
reminder prompted it or not, so it is more than the simulator's installs alone.

``--gateway twilio|zalo|esms|smpp`` sends the same campaign through that
gateway's real adapter and the real dispatcher, against the gateway's loopback
fake from ``providers/fakes/`` started in this process.  Receipts come back the
way the gateway sends them: signed callbacks over HTTP to loa's own web
endpoints (served by uvicorn, as ``loa serve`` does), or ``deliver_sm`` on the
SMPP bind.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import os
import random
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from rich.console import Console

import loa
from loa import db, importer
from loa.campaign import Campaign, ChannelSpec, load_one
from loa.config import Config, load
from loa.errors import LoaError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from loa.dispatch import Dispatcher
    from loa.report import Report

DATA = Path(loa.__file__).parent / "data" / "son_la_bluezone_2020-08-17.csv"
CAMPAIGN = "bluezone-reminder"
PROVINCE_POPULATION_PRINTED = 1_248_415   # the letter's printed total; its districts add up to less
AS_OF = "2020-08-17"
DISTRICT_CODES = {  # General Statistics Office codes of Sơn La's districts (2020)
    "Thành phố Sơn La": "116", "Huyện Quỳnh Nhai": "118", "Huyện Thuận Châu": "119", "Huyện Mường La": "120",
    "Huyện Bắc Yên": "121", "Huyện Phù Yên": "122", "Huyện Mộc Châu": "123", "Huyện Yên Châu": "124",
    "Huyện Mai Sơn": "125", "Huyện Sông Mã": "126", "Huyện Sốp Cộp": "127", "Huyện Vân Hồ": "128",
}
FAMILY = ["Lò", "Cầm", "Quàng", "Lường", "Vì", "Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Đinh", "Hà", "Sùng", "Giàng"]
GIVEN = ["Văn Minh", "Thị Hoa", "Văn Thắng", "Thị Lan", "Văn Hùng", "Thị Mai", "A Páo", "Thị Hương", "Văn Toàn",
         "Thị Thu", "Văn Dũng", "Thị Ngọc", "Văn Sơn", "Thị Dung"]
# Current mobile prefixes (0 + 2 digits) and one old 11-digit prefix to show the conversion.
PREFIXES = ["086", "096", "097", "098", "032", "033", "034", "035", "036", "037", "038", "039",
            "088", "091", "094", "083", "084", "085", "081", "082", "090", "093", "070", "079",
            "077", "076", "078", "056", "058"]
OLD_PREFIX = "0168"  # Viettel, became 038
CAMPAIGN_INSTALL_RATE = 0.14   # share of those who get the reminder and then install
ORGANIC_INSTALL_RATE = 0.03    # share of everyone left who installs anyway in the same days
DELIVERY_RATE = 0.96           # share of accepted messages that reach the handset
GATEWAYS = ("simulator", "twilio", "zalo", "esms", "smpp")
SUBSCRIBERS = 60_000           # with the simulator
FAKE_SUBSCRIBERS = 2_000       # through a fake: a request per message and a callback per receipt
ZALO_TEMPLATE = "zalo/bluezone_reminder.toml"


def project_root() -> Path:
    return Path(loa.__file__).resolve().parent.parent


def districts() -> list[dict[str, str]]:
    with DATA.open(encoding="utf-8") as f:
        return [r for r in csv.DictReader(f) if r["district"] in DISTRICT_CODES]


def write_config(folder: Path, seed: int, fake: DemoFake | None = None, hooks: str = "") -> Path:
    """The demo's configuration; with a fake, its gateway is the default of the fake's channel."""
    root = project_root()
    for needed in ("campaigns", "templates"):
        if not (root / needed).is_dir():
            raise LoaError(f"the demo needs the {needed}/ folder of a loa checkout (looked in {root}); "
                           "install with `pip install -e .` from the clone")
    path = folder / "config.toml"
    path.write_text(
        f"""# written by `loa demo`
database_url = "sqlite:///loa.db"
timezone = "Asia/Ho_Chi_Minh"
campaigns_dir = "{(root / 'campaigns').as_posix()}"
templates_dir = "{(root / 'templates').as_posix()}"

[defaults]
sms_gateway = "{fake.name if fake and fake.channel == 'sms' else 'simulator'}"
zalo_gateway = "{fake.name if fake and fake.channel == 'zalo' else 'simulator'}"

[gateways.simulator]
type = "simulator"
rate = 100000
seed = {seed}
delivery_rate = {DELIVERY_RATE}
install_rate = {CAMPAIGN_INSTALL_RATE}

[send]
threads = {fake.threads if fake else 4}
batch_size = 2000
limiter = "memory"      # one process: no need to share the limit through the database
""" + (fake.table(hooks) if fake else ""),
        encoding="utf-8",
    )
    return path


def write_areas(folder: Path) -> Path:
    path = folder / "areas.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["code", "name", "parent", "level", "population", "population_as_of"])
        w.writerow(["14", "Sơn La", "", "province", PROVINCE_POPULATION_PRINTED, AS_OF])
        for d in districts():
            w.writerow([DISTRICT_CODES[d["district"]], d["district"], "14", "district", d["population"], AS_OF])
    return path


def spread(total: int, weights: list[int]) -> list[int]:
    """Split ``total`` by ``weights`` with the largest-remainder method (sums exactly)."""
    whole = sum(weights)
    exact = [total * w / whole for w in weights]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(weights)), key=lambda i: exact[i] - counts[i], reverse=True)[: total - sum(counts)]:
        counts[i] += 1
    return counts


def write_subscribers(folder: Path, n: int, seed: int) -> tuple[Path, dict[str, float]]:
    """Subscribers spread by population; returns also each district's 2020-08-17 install share."""
    rng = random.Random(seed)
    rows = districts()
    counts = spread(n, [int(r["population"]) for r in rows])
    numbers = rng.sample(range(10_000_000), n)   # unique 7-digit subscriber parts
    path = folder / "subscribers.csv"
    shares = {}
    i = 0
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["phone", "name", "area", "smartphone", "age"])
        for row, count in zip(rows, counts, strict=True):
            shares[row["district"]] = int(row["registered_2020_08_17"]) / int(row["population"])
            # half the rows name the district by name without its prefix or diacritics, as field data does
            for _ in range(count):
                tail = f"{numbers[i]:07d}"
                phone = f"{OLD_PREFIX}{tail}" if i % 20 == 0 else f"{PREFIXES[i % len(PREFIXES)]}{tail}"
                area = DISTRICT_CODES[row["district"]] if i % 2 else _plain(row["district"])
                name = f"{rng.choice(FAMILY)} {rng.choice(GIVEN)}"
                w.writerow([phone, name, area, "yes" if rng.random() < 0.7 else "no", rng.randint(16, 75)])
                i += 1
        # three rows as field data has them: a landline, a short number, a district that is not in Sơn La
        w.writerow(["0212 3852 101", "Văn phòng UBND", "Mai Sơn", "no", ""])
        w.writerow(["09123", "Lỗi Số", "Mộc Châu", "yes", "40"])
        w.writerow(["0912000111", "Khách", "Huyện Đắk Mil", "yes", "33"])
    return path, shares


def _plain(name: str) -> str:
    from unidecode import unidecode

    return unidecode(name.removeprefix("Huyện ").removeprefix("Thành phố ")) if "Huyện" in name else name


def _pick(seed: int, subject: int | str, salt: str) -> float:
    """A uniform draw in [0, 1) fixed by the seed, so a demo can be run again with the same outcome."""
    digest = hashlib.blake2b(f"{seed}:{salt}:{subject}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def prior_installs(engine: db.Engine, shares: dict[str, float], seed: int) -> int:  # type: ignore[name-defined]
    """Those registered by 2020-08-17, district by district, as "installed" events."""
    from sqlalchemy import select

    at = datetime(2020, 8, 17, 1, 0, tzinfo=UTC)
    s, a = db.subscribers, db.areas
    with engine.begin() as conn:
        people = conn.execute(select(s.c.id, s.c.phone, a.c.name).join(a, a.c.id == s.c.area_id)).all()
        records = [
            {"phone": phone, "type": "installed", "occurred_at": at, "source": "bluezone-2020-08-17"}
            for sid, phone, district in people if _pick(seed, sid, "prior") < shares.get(district, 0)
        ]
        importer.record_events(conn, records)
    return len(records)


def organic_installs(engine, seed: int) -> int:  # type: ignore[no-untyped-def]
    """A few people install without any message: the baseline the holdout measures."""
    from sqlalchemy import select

    now = db.utcnow()
    s, e = db.subscribers, db.events
    with engine.begin() as conn:
        installed = select(e.c.subscriber_id).where(e.c.type == "installed")
        people = conn.execute(select(s.c.id, s.c.phone).where(s.c.id.not_in(installed))).all()
        records = [
            {"phone": phone, "type": "installed", "occurred_at": now + timedelta(hours=1 + 47 * _pick(seed, sid, "t")),
             "source": "organic"}
            for sid, phone in people if _pick(seed, sid, "organic") < ORGANIC_INSTALL_RATE
        ]
        importer.record_events(conn, records)
    return len(records)


def _within_window(campaign, config, say):  # type: ignore[no-untyped-def]
    """At night the reminder would wait for 07:00; the demo lifts the window instead, and says so."""
    from datetime import time as dtime

    from loa.policy import Window

    if Window(*campaign.window).contains(db.utcnow(), config.timezone):
        return campaign
    say(f"   (it is night in {config.timezone.key}: the demo lifts the campaign's "
        f"{campaign.window[0]:%H:%M}-{campaign.window[1]:%H:%M} send window so that it can run now)")
    raw = dict(campaign.raw) | {"window": {"start": "00:00", "end": "24:00"}}
    return dataclasses.replace(campaign, window=(dtime(0), dtime.max), raw=raw)


def _on_zalo(campaign: Campaign) -> Campaign:
    """The reminder as a ZNS template message (its Zalo template ships beside the SMS one)."""
    raw = {k: v for k, v in campaign.raw.items() if k != "sms"} | {"channels": ["zalo"],
                                                                   "zalo": {"template": ZALO_TEMPLATE}}
    return dataclasses.replace(campaign, channels=(ChannelSpec("zalo", ZALO_TEMPLATE),), raw=raw)


def recipients_install(engine: Engine, seed: int) -> int:
    """A gateway reports deliveries, not installs: those come from the app's own figures.
    The demo makes them up as the simulator does, for a share of those who got the reminder."""
    from sqlalchemy import select

    o, s = db.outbox, db.subscribers
    with engine.begin() as conn:
        people = conn.execute(select(o.c.id, s.c.id, s.c.phone, o.c.delivered_at)
                              .join(s, s.c.id == o.c.subscriber_id).where(o.c.state == "delivered")).all()
        records = [
            {"phone": phone, "type": "installed", "occurred_at": at + timedelta(hours=1 + 23 * _pick(seed, sid, "t")),
             "source": "bluezone", "outbox_id": outbox_id}
            for outbox_id, sid, phone, at in people if _pick(seed, sid, "installs") < CAMPAIGN_INSTALL_RATE
        ]
        importer.record_events(conn, records)
    return len(records)


# -- real gateways, against their loopback fakes ------------------------------------

class DemoFake:
    """A real gateway's loopback fake, as ``loa demo --gateway NAME`` drives it.

    The adapter is configured for the fake as for the service: plain settings in
    the file, secrets named by ``*_env`` and set in this process's environment
    only.  :meth:`deliver` has the fake send its receipts the way the gateway does.
    """

    name: ClassVar[str]                 # the --gateway choice and the [gateways.NAME]
    type: ClassVar[str]                 # the adapter's type
    label: ClassVar[str]
    receipts: ClassVar[str]             # how receipts come back, for the demo's story
    channel: ClassVar[str] = "sms"
    callbacks: ClassVar[bool] = True    # receipts are HTTP calls to loa's /hooks/NAME
    threads: ClassVar[int] = 4          # sending threads ([send] threads)

    def __init__(self, seed: int, subscribers: int) -> None:
        self.seed = seed
        self.secrets: dict[str, str] = {}   # setting -> value
        self.server: Any = None

    @classmethod
    def refuse_now(cls) -> None:
        """Raise LoaError if the gateway would take nothing now (checked before any work)."""

    @property
    def url(self) -> str:
        return str(self.server.url)

    def settings(self, hooks: str) -> dict[str, Any]:
        raise NotImplementedError

    def accepted(self) -> int:
        """Messages the fake accepted."""
        raise NotImplementedError

    def deliver(self, hooks: str, dispatcher: Dispatcher) -> None:
        raise NotImplementedError

    def delivers(self, phone: str) -> bool:
        return _pick(self.seed, phone, "delivered") < DELIVERY_RATE

    def variable(self, setting: str) -> str:
        return f"LOA_DEMO_{self.name}_{setting}".upper()

    def environment(self) -> dict[str, str]:
        return {self.variable(k): v for k, v in self.secrets.items()}

    def table(self, hooks: str) -> str:
        """``[gateways.NAME]`` in TOML (JSON's scalars are TOML's); secrets only by variable name."""
        # rate: the fake is on this machine; the demo measures loa, not a contract's rate
        settings = {"type": self.type, "rate": 100_000, **self.settings(hooks),
                    **{f"{k}_env": self.variable(k) for k in self.secrets}}
        lines = [f"[gateways.{self.name}]   # the loopback fake of {self.label}, started by the demo"]
        lines += [f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in settings.items()]
        return "\n" + "\n".join(lines) + "\n"

    def __enter__(self) -> DemoFake:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()


class TwilioDemo(DemoFake):
    name = type = "twilio"
    label = "Twilio"
    receipts = "as signed status callbacks to /hooks/twilio"
    threads = 8   # its fake keeps connections open and answers each call ~40 ms late (Nagle): overlap them

    def __init__(self, seed: int, subscribers: int) -> None:
        from providers.fakes.twilio import FakeTwilio

        super().__init__(seed, subscribers)
        self.server = FakeTwilio()
        self.secrets = {"account_sid": self.server.account_sid, "auth_token": self.server.auth_token}

    def settings(self, hooks: str) -> dict[str, Any]:
        return {"from_number": "+15005550006", "status_callback": f"{hooks}/hooks/{self.name}",
                "base_url": self.url, "timeout": 5.0}

    def accepted(self) -> int:
        return len(self.server.messages)

    def deliver(self, hooks: str, dispatcher: Dispatcher) -> None:
        for sid, record in list(self.server.messages.items()):
            ok = self.delivers(record["to"])
            # 30003: unreachable destination handset
            self.server.send_status_callback(sid, "delivered" if ok else "undelivered",
                                             error_code=None if ok else 30003)


class ZaloDemo(DemoFake):
    name, type, label, channel = "zalo", "zalo_zns", "Zalo ZNS", "zalo"
    receipts = "as signed user_received_message webhooks to /hooks/zalo (none for the undelivered, as Zalo does)"

    def __init__(self, seed: int, subscribers: int) -> None:
        from providers.fakes.zalo import FakeZalo

        super().__init__(seed, subscribers)
        self.secrets = {k: secrets.token_hex(16) for k in ("secret_key", "oa_secret", "access_token", "refresh_token")}
        self.server = FakeZalo(daily_quota=2 * subscribers, **self.secrets)

    @classmethod
    def refuse_now(cls) -> None:
        """ZNS sends nothing from 22:00 to 06:00 in Vietnam: every message would wait until morning."""
        from zoneinfo import ZoneInfo

        from loa.policy import ZALO_NIGHT, Window

        tz = ZoneInfo("Asia/Ho_Chi_Minh")
        if not Window(*ZALO_NIGHT).contains(db.utcnow(), tz):
            raise LoaError(f"it is {db.utcnow().astimezone(tz):%H:%M} in Vietnam, and ZNS sends nothing from "
                           f"{ZALO_NIGHT[1]:%H:%M} to {ZALO_NIGHT[0]:%H:%M}; run the Zalo demo by day, "
                           "or try --gateway twilio, esms or smpp")

    def settings(self, hooks: str) -> dict[str, Any]:
        return {"app_id": self.server.app_id, "base_url": self.url, "oauth_url": self.url, "timeout": 5.0}

    def accepted(self) -> int:
        return len(self.server.sent)

    def deliver(self, hooks: str, dispatcher: Dispatcher) -> None:
        import requests

        with requests.Session() as session:
            for sent in list(self.server.sent):
                if self.delivers(sent["phone"]):
                    event = self.server.delivery_event(sent["msg_id"], sent["tracking_id"])
                    body, headers = self.server.signed_webhook(event)
                    session.post(f"{hooks}/hooks/{self.name}", data=body, headers=headers,
                                 timeout=5).raise_for_status()


class ESMSDemo(DemoFake):
    name = type = "esms"
    label = "eSMS.vn"
    receipts = "as GET callbacks to /hooks/esms"
    brandname = "SOYTE-SONLA"

    def __init__(self, seed: int, subscribers: int) -> None:
        from providers.fakes.esms import FakeESMS

        super().__init__(seed, subscribers)
        self.secrets = {"api_key": secrets.token_hex(16), "secret_key": secrets.token_hex(16)}
        self.server = FakeESMS(brandnames=(self.brandname,), balance=10**12, **self.secrets)

    def settings(self, hooks: str) -> dict[str, Any]:
        return {"brandname": self.brandname, "callback_url": f"{hooks}/hooks/{self.name}",
                "base_url": self.url, "timeout": 5.0}

    def accepted(self) -> int:
        return len(self.server.messages)

    def deliver(self, hooks: str, dispatcher: Dispatcher) -> None:
        for smsid, message in list(self.server.messages.items()):
            status, body = self.server.deliver(smsid, 5, success=self.delivers(message.phone))
            if status != 200:
                raise LoaError(f"loa answered eSMS's callback with HTTP {status}: {body[:200]!r}")


class SMPPDemo(DemoFake):
    name = type = "smpp"
    label = "an SMSC (SMPP 3.4)"
    receipts = "as deliver_sm receipts on the bind"
    callbacks = False

    def __init__(self, seed: int, subscribers: int) -> None:
        from providers.fakes.smpp import FakeSMSC

        super().__init__(seed, subscribers)
        self.secrets = {"password": secrets.token_hex(4)}   # SMPP passwords are at most 8 characters
        self.server = FakeSMSC(system_id="loa", password=self.secrets["password"])
        self.server.receipt_stat = lambda part: "DELIVRD" if self.delivers(part.destination_addr) else "UNDELIV"

    @property
    def url(self) -> str:
        return f"smpp://{self.server.host}:{self.server.port}"

    def settings(self, hooks: str) -> dict[str, Any]:
        return {"host": self.server.host, "port": self.server.port, "system_id": self.server.system_id,
                "source_addr": "SOYTE", "timeout": 5.0}

    def accepted(self) -> int:
        return len(self.server.messages())

    def deliver(self, hooks: str, dispatcher: Dispatcher) -> None:
        # the SMSC sends a receipt after each submit_sm_resp; once it has them all acknowledged,
        # the adapter holds every one, and one more poll hands them to the ledger
        self.server.wait_for(lambda: len(self.server.receipt_acks) >= len(self.server.accepted()), timeout=30)
        dispatcher.poll()


FAKES: dict[str, type[DemoFake]] = {f.name: f for f in (TwilioDemo, ZaloDemo, ESMSDemo, SMPPDemo)}


class CallbackServer:
    """loa's web endpoints (the application of ``loa serve``) on a loopback port, served by
    uvicorn: the fakes call ``/hooks/NAME`` over HTTP as the real gateways call loa."""

    def __init__(self) -> None:
        # bound now, served once the configuration exists: the gateway settings need the URL
        from loa.web.server import bind

        self.socket = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self._server: Any = None
        self._web: Any = None

    def start(self, engine: Engine, config: Config) -> None:
        from loa.web import Web, WebServer

        self._web = Web(engine, config)
        self._server = WebServer(self._web, sock=self.socket)
        self._server.start("loa-demo-web")

    def __enter__(self) -> CallbackServer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.stop(timeout=10)
        if self._web is not None:
            self._web.pool.close()
        self.socket.close()


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Secrets in this process's environment, as an operator exports real ones; restored after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -- the run ---------------------------------------------------------------------------

Say = Callable[[str], None]


@dataclasses.dataclass
class _Demo:
    folder: Path
    seed: int
    subscribers: int
    say: Say
    fake: DemoFake | None = None
    hooks: CallbackServer | None = None

    def populate(self, engine: Engine) -> None:
        areas_csv = write_areas(self.folder)
        s = importer.run_import(engine, importer.AreasHandler(engine, areas_csv), areas_csv)
        self.say(f"1. areas: {s.line()}")
        subs_csv, shares = write_subscribers(self.folder, self.subscribers, self.seed)
        s = importer.run_import(engine, importer.SubscribersHandler(engine, subs_csv), subs_csv)
        self.say(f"2. subscribers: {s.line()}  (the last 3 rows are deliberately bad)")
        self.say(f"3. {prior_installs(engine, shares, self.seed):,} had installed Bluezone by 2020-08-17 "
                 "(the province's rates)")

    def campaign(self, config: Config) -> Campaign:
        campaign = load_one(config.campaigns_dir, CAMPAIGN)
        if self.fake is not None and self.fake.channel == "zalo":
            campaign = _on_zalo(campaign)
        return _within_window(campaign, config, self.say)

    def send(self, engine: Engine, config: Config) -> None:
        from loa.dispatch import Dispatcher

        if self.hooks is not None:
            self.hooks.start(engine, config)
        dispatcher = Dispatcher(engine, config)
        try:
            summary = dispatcher.run_until_empty()
            if self.fake is not None:
                self.fake.deliver(self.hooks.url if self.hooks else "", dispatcher)
        finally:
            dispatcher.pool.close()
        outcomes = ", ".join(f"{n:,} {k}" for k, n in sorted(summary.outcomes.items()))
        if self.fake is None:
            self.say(f"5. sent through the simulator: {outcomes}; {summary.receipts:,} receipts "
                     f"({_receipts(engine)}); the simulator had {summary.responses:,} of the recipients install")
            return
        self.say(f"5. sent through the {self.fake.type} adapter: {outcomes}; the fake accepted "
                 f"{self.fake.accepted():,}; {_receipted(engine):,} receipts came back {self.fake.receipts} "
                 f"({_receipts(engine)})")
        self.say(f"   {recipients_install(engine, self.seed):,} of the recipients install "
                 "(made up, as the app's own figures would be imported)")

    def gateway_line(self) -> str:
        if self.fake is None:
            return "gateway: the simulator (in process, no network)"
        hooks = f"; loa's callbacks at {self.hooks.url}/hooks/{self.fake.name}" if self.hooks else ""
        return (f"gateway: {self.fake.name} (the {self.fake.type} adapter), against the loopback fake of "
                f"{self.fake.label} at {self.fake.url}{hooks}")


def _receipted(engine: Engine) -> int:
    from sqlalchemy import func, select

    o = db.outbox
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(o)
                           .where(o.c.state.in_(("delivered", "undelivered")))) or 0


def _receipts(engine: Engine) -> str:
    """"48,228 delivered, 2,015 undelivered": what the receipts said."""
    from sqlalchemy import func, select

    o = db.outbox
    with engine.connect() as conn:
        got = dict(conn.execute(select(o.c.state, func.count()).where(o.c.state.in_(("delivered", "undelivered")))
                                .group_by(o.c.state)).all())
    return f"{got.get('delivered', 0):,} delivered, {got.get('undelivered', 0):,} undelivered"


def after_message_line(report: Report) -> str:
    """Step 7: the report's count of installs after the message, as its table shows it."""
    t = report.total
    window = f"{report.attribution / 86400:g} days" if report.attribution else "its run's attribution window"
    return (f"7. {t.installed_delivered:,} installs after the message, of {t.delivered:,} delivered: everyone who "
            f"installed within {window} of the reminder reaching them, whether it prompted them (step 5) or not "
            "(step 6); the table's 'after msg'")


def _print_report(console: Console, engine: Engine, result: Report, fmt: str, subscribers: int, say: Say) -> None:
    from loa import report as rep
    from loa.reportview import render_table

    if fmt in ("csv", "json"):
        console.print(rep.render(engine, result, fmt), end="" if fmt == "csv" else "\n", markup=False,
                      highlight=False, soft_wrap=True)
    else:
        console.print()
        render_table(console, result, rep.snapshot_summary(engine, result), lang="en")   # its story quotes the English table
        share = subscribers / sum(int(d["population"]) for d in districts())
        say(f"The {subscribers:,} synthetic subscribers stand for {share:.1%} of the population, so "
            "'installed of pop.' counts only them; with a real subscriber base it is the province's figure.")


def report(engine: Engine, campaign: Campaign) -> Report:
    """The demo's report: the one its table (or CSV, or JSON) shows and its story quotes."""
    from loa import report as rep

    return rep.build(engine, CAMPAIGN, campaign.goal)


def run_demo(directory: Path | None, *, subscribers: int | None = None, seed: int, fmt: str, console: Console,
             gateway: str = "simulator") -> None:
    """The whole demo; ``gateway`` is "simulator" or one of :data:`FAKES`."""
    from loa.plan import plan_run

    if gateway not in GATEWAYS:
        raise LoaError(f"unknown demo gateway {gateway!r}: use one of {', '.join(GATEWAYS)}")
    if gateway in FAKES:
        FAKES[gateway].refuse_now()
    started = time.perf_counter()
    count = subscribers or (SUBSCRIBERS if gateway == "simulator" else FAKE_SUBSCRIBERS)
    keep = directory is not None
    folder = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="loa-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "loa.db").exists():
        raise LoaError(f"{folder / 'loa.db'} exists already; give an empty --dir")
    say: Say = (lambda m: None) if fmt != "table" else (lambda m: console.print(m, highlight=False, soft_wrap=True))
    try:
        with contextlib.ExitStack() as stack:
            demo = _Demo(folder, seed, count, say)
            if gateway in FAKES:
                demo.fake = stack.enter_context(FAKES[gateway](seed, count))
                demo.hooks = stack.enter_context(CallbackServer()) if demo.fake.callbacks else None
                stack.enter_context(_environment(demo.fake.environment()))
            config = load(write_config(folder, seed, demo.fake, demo.hooks.url if demo.hooks else ""))
            engine = db.make_engine(config.database_url)
            stack.callback(engine.dispose)
            db.create_schema(engine)
            say(f"[bold]loa demo[/bold] in {folder}")
            say(demo.gateway_line())
            demo.populate(engine)
            campaign = demo.campaign(config)
            plan = plan_run(engine, config, campaign, outside_dates=True)   # 2020's campaign, replayed today
            say(f"4. run {plan.run_id} planned: {plan.audience:,} residents, {plan.states['planned']:,} to send, "
                f"{plan.states['held_out']:,} held out, {plan.states['suppressed']:,} suppressed")
            demo.send(engine, config)
            say(f"6. {organic_installs(engine, seed):,} people installed without a message (the baseline)")
            result = report(engine, campaign)
            say(after_message_line(result))
            _print_report(console, engine, result, fmt, count, say)
            elapsed = f"\ndone in {time.perf_counter() - started:.1f} s."
            say(f"{elapsed} Explore: loa --config {folder / 'config.toml'} report --format csv" if keep else
                f"{elapsed} Its temporary folder is removed; run with --dir DIR to keep it and explore.")
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
