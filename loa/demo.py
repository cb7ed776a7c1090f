"""``loa demo``: Sơn La's Bluezone reminder, end to end, on SQLite.

Real figures, synthetic people: the 12 districts and their populations come
from the province's 17 August 2020 table; the subscribers are generated (no
real numbers), spread by population, and those already registered by that date
are imported as "installed" events so the campaign suppresses them.  The
reminder then goes out through the simulator gateway, some recipients install,
a few of everyone install on their own, and the report shows the difference.
"""

from __future__ import annotations

import csv
import hashlib
import random
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console

import loa
from loa import db, importer
from loa.campaign import load_one
from loa.config import load
from loa.errors import LoaError

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


def project_root() -> Path:
    return Path(loa.__file__).resolve().parent.parent


def districts() -> list[dict[str, str]]:
    with DATA.open(encoding="utf-8") as f:
        return [r for r in csv.DictReader(f) if r["district"] in DISTRICT_CODES]


def write_config(folder: Path, seed: int) -> Path:
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
sms_gateway = "simulator"
zalo_gateway = "simulator"

[gateways.simulator]
type = "simulator"
rate = 100000
seed = {seed}
delivery_rate = 0.96
install_rate = {CAMPAIGN_INSTALL_RATE}

[send]
threads = 4
batch_size = 2000
limiter = "memory"      # one process: no need to share the limit through the database
""",
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


def _pick(seed: int, subscriber_id: int, salt: str) -> float:
    digest = hashlib.blake2b(f"{seed}:{salt}:{subscriber_id}".encode(), digest_size=8).digest()
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
    import dataclasses
    from datetime import time as dtime

    from loa.policy import Window

    if Window(*campaign.window).contains(db.utcnow(), config.timezone):
        return campaign
    say(f"   (it is night in {config.timezone.key}: the demo lifts the campaign's "
        f"{campaign.window[0]:%H:%M}-{campaign.window[1]:%H:%M} send window so that it can run now)")
    raw = dict(campaign.raw) | {"window": {"start": "00:00", "end": "24:00"}}
    return dataclasses.replace(campaign, window=(dtime(0), dtime.max), raw=raw)


def run_demo(directory: Path | None, *, subscribers: int, seed: int, fmt: str, console: Console) -> None:
    from loa import report as rep
    from loa.dispatch import Dispatcher
    from loa.plan import plan_run
    from loa.reportview import render_table

    started = time.perf_counter()
    keep = directory is not None
    folder = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="loa-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "loa.db").exists():
        raise LoaError(f"{folder / 'loa.db'} exists already; give an empty --dir")
    say = (lambda *a, **k: None) if fmt != "table" else (lambda m: console.print(m, highlight=False, soft_wrap=True))
    try:
        config = load(write_config(folder, seed))
        engine = db.make_engine(config.database_url)
        db.create_schema(engine)
        say(f"[bold]loa demo[/bold] in {folder}")
        areas_csv = write_areas(folder)
        s = importer.run_import(engine, importer.AreasHandler(engine, areas_csv), areas_csv)
        say(f"1. areas: {s.line()}")
        subs_csv, shares = write_subscribers(folder, subscribers, seed)
        s = importer.run_import(engine, importer.SubscribersHandler(engine, subs_csv), subs_csv)
        say(f"2. subscribers: {s.line()}  (the last 3 rows are deliberately bad)")
        say(f"3. {prior_installs(engine, shares, seed):,} had installed Bluezone by 2020-08-17 (the province's rates)")
        campaign = load_one(config.campaigns_dir, CAMPAIGN)
        campaign = _within_window(campaign, config, say)
        plan = plan_run(engine, config, campaign)
        say(f"4. run {plan.run_id} planned: {plan.audience:,} residents, {plan.states['planned']:,} to send, "
            f"{plan.states['held_out']:,} held out, {plan.states['suppressed']:,} suppressed")
        dispatcher = Dispatcher(engine, config)
        summary = dispatcher.run_until_empty()
        dispatcher.pool.close()
        outcomes = ", ".join(f"{n:,} {k}" for k, n in sorted(summary.outcomes.items()))
        say(f"5. sent through the simulator: {outcomes}; {summary.receipts:,} receipts, "
            f"{summary.responses:,} installs after the message")
        say(f"6. {organic_installs(engine, seed):,} people installed without a message (the baseline)")
        result = rep.build(engine, CAMPAIGN, campaign.goal)
        if fmt == "csv":
            console.print(rep.to_csv(result), end="", markup=False, highlight=False, soft_wrap=True)
        elif fmt == "json":
            console.print(rep.to_json(result), markup=False, highlight=False, soft_wrap=True)
        else:
            console.print()
            render_table(console, result)
            share = subscribers / sum(int(d["population"]) for d in districts())
            say(f"The {subscribers:,} synthetic subscribers stand for {share:.1%} of the population, so "
                "'installed of pop.' counts only them; with a real subscriber base it is the province's figure.")
            say(f"\ndone in {time.perf_counter() - started:.1f} s. Explore: "
                f"loa --config {folder / 'config.toml'} report --format csv")
        engine.dispose()
    finally:
        if not keep and fmt != "table":
            shutil.rmtree(folder, ignore_errors=True)
