"""The HTML report, opened in headless Chromium: charts drawn, names intact, rows sortable, no network.

A Sơn La campaign with the province's 12 real districts and synthetic people
(one subscriber for every 500 residents, three in ten held out) is planned for
real; fates and installs are then written in, drawn from a seeded generator.
The province's own table of 17 August goes in as snapshots.  The page is
rendered, written to a file and opened with ``chromium --headless``, whose DOM
(after the scripts ran) is checked; LOA_UPDATE_SCREENSHOT=1 also saves the screenshot to docs/report.png.
"""

from __future__ import annotations

import os

import csv
import html
import json
import random
import re
import shutil
import struct
import subprocess
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import ROOT, write
from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from loa import db, importer
from loa import report as rep
from loa import snapshots as snap
from loa.campaign import load_one
from loa.config import Config
from loa.demo import DATA as SON_LA_CSV
from loa.demo import DISTRICT_CODES
from loa.errors import Text
from loa.htmlreport import render_html, render_report
from loa.plan import plan_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync", "--virtual-time-budget=5000"]
GENERATED = datetime(2020, 8, 18, 2, 0, tzinfo=UTC)
CAMPAIGN = """
name = "bluezone"
channels = ["sms"]
holdout = 0.3
suppress_events = ["installed"]
[segment]
areas = ["Sơn La"]
[sms]
template = "sms/bluezone.j2"
[goal]
event = "installed"
share = 0.5
of = "population"
by = 2020-08-20
"""

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install -y chromium); "
                             "the page is still rendered and checked without it")


def son_la() -> list[dict[str, str]]:
    with SON_LA_CSV.open(encoding="utf-8") as f:
        return [r for r in csv.DictReader(f) if r["district"] in DISTRICT_CODES]


@pytest.fixture
def world(engine: Engine, workdir: Path, tmp_path: Path, config: Config) -> tuple[rep.Report, snap.Summary]:
    rng = random.Random(2020)
    districts = son_la()
    areas = ["code,name,parent,level,population,population_as_of", "14,Sơn La,,province,1248415,2020-08-17"]
    areas += [f"{DISTRICT_CODES[d['district']]},{d['district']},14,district,{d['population']},2020-08-17"
              for d in districts]
    path = write(tmp_path / "areas.csv", "\n".join(areas) + "\n")
    importer.run_import(engine, importer.AreasHandler(engine, path), path)
    subs = ["phone,area"]
    for d in districts:
        subs += [f"09{DISTRICT_CODES[d['district']]}{i:05d},{DISTRICT_CODES[d['district']]}"
                 for i in range(int(d["population"]) // 500)]
    path = write(tmp_path / "subscribers.csv", "\n".join(subs) + "\n")
    importer.run_import(engine, importer.SubscribersHandler(engine, path), path)
    s = db.subscribers
    with engine.connect() as conn:
        people = conn.execute(select(s.c.id, s.c.phone)).all()
    before = db.utcnow() - timedelta(days=2)
    with engine.begin() as conn:   # a few had installed before: the campaign suppresses them
        importer.record_events(conn, [{"phone": p, "type": "installed", "occurred_at": before, "source": "t"}
                                      for _, p in people if rng.random() < 0.06])
    write(workdir / "templates" / "sms" / "bluezone.j2", "Cài Bluezone để bảo vệ mình và cộng đồng\n")
    write(workdir / "campaigns" / "bluezone.toml", CAMPAIGN)
    campaign = load_one(workdir / "campaigns", "bluezone")
    plan = plan_run(engine, config, campaign)
    o = db.outbox
    with engine.connect() as conn:
        planned_at = conn.scalar(select(db.runs.c.planned_at).where(db.runs.c.id == plan.run_id))
        outbox = conn.execute(select(o.c.subscriber_id, o.c.state).where(o.c.run_id == plan.run_id)).all()
    phone = dict(people)
    sent_at, after = planned_at + timedelta(hours=1), planned_at + timedelta(hours=3)
    fates: dict[str, list[int]] = {"delivered": [], "undelivered": [], "failed": []}
    installs = []
    for sid, state in outbox:
        if state == "held_out":
            if rng.random() < 0.10:
                installs.append(sid)
        elif state == "planned":
            fate = "delivered" if rng.random() < 0.92 else rng.choice(["undelivered", "failed"])
            fates[fate].append(sid)
            if fate == "delivered" and rng.random() < 0.24:
                installs.append(sid)
    with engine.begin() as conn:
        for fate, ids in fates.items():
            conn.execute(update(o).where(o.c.run_id == plan.run_id, o.c.subscriber_id.in_(ids))
                         .values(state=fate, sent_at=None if fate == "failed" else sent_at))
        importer.record_events(conn, [{"phone": phone[i], "type": "installed", "occurred_at": after,
                                       "source": "t"} for i in installs])
    # the province's table of 17 August, as snapshots (with its changes since 12 August)
    rows = ["area,parent,as_of,value,change,change_since,rate"]
    with SON_LA_CSV.open(encoding="utf-8") as f:
        for r in csv.DictReader(f):
            change = r["change_since_2020_08_12"]
            rows.append(f"{r['district']},Sơn La,2020-08-17,{r['registered_2020_08_17']},{change},"
                        f"{'2020-08-12' if change else ''},{r['rate_as_printed']}")
    rows.append("Sơn La,,2020-08-17,84124,19867,2020-08-12,")
    path = write(tmp_path / "snapshots.csv", "\n".join(rows) + "\n")
    assert importer.run_import(engine, importer.SnapshotsHandler(engine, path), path).rejected == 0
    return rep.build(engine, "bluezone", campaign.goal), snap.summarize(engine, goal=campaign.goal)


# -- the page as written ---------------------------------------------------------------------

class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if not self._in_script:
            self.text.append(data)


def parse(page: str) -> _Elements:
    parser = _Elements()
    parser.feed(page)
    return parser


def test_the_page_is_self_contained(world: tuple[rep.Report, snap.Summary]) -> None:
    report, summary = world
    page = render_html(report, summary, generated_at=GENERATED)
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page
    found = parse(page)
    # nothing is fetched: no src or href anywhere, and no stylesheet imports
    assert [a for _, a in found.tags if a.get("src") or a.get("href")] == []
    assert "@import" not in page and "url(" not in page.split("<script>", 1)[0]
    scripts = [a for t, a in found.tags if t == "script"]
    assert len(scripts) == 3 and "plotly.js v" in page
    # the figures are data, and every "<" inside them is escaped
    specs_text = page.split('id="loa-figures">', 1)[1].split("</script>", 1)[0]
    assert "<" not in specs_text
    specs = json.loads(specs_text)
    assert list(specs) == ["chart-rates", "chart-funnel", "chart-trend", "chart-uplift"]
    # the ledger's share per district, and beside it the province's own count
    ledger, counted = specs["chart-rates"]["data"]
    assert ledger["type"] == counted["type"] == "bar" and len(ledger["x"]) == len(counted["x"]) == 12
    assert ledger["y"] == pytest.approx([100 * r.installed_total / r.population for r in report.rows])
    mai_son = [r.code for r in report.rows].index("125")
    assert counted["y"][mai_son] == pytest.approx(100 * 10_329 / 162_696)
    assert counted["name"] == "cài đặt, số liệu thống kê ngày 17/08/2020"     # Vietnamese unless asked otherwise
    assert specs["chart-funnel"]["data"][0]["x"] == [report.total.audience, report.total.sent,
                                                     report.total.delivered, report.total.installed_delivered]
    assert len(specs["chart-trend"]["data"]) == 13                      # the province and its 12 districts
    uplift = specs["chart-uplift"]["data"]
    assert sum(len(t["x"]) for t in uplift) == 13                      # 12 districts and the total
    text = " ".join(found.text)
    for d in son_la():
        assert d["district"] in text
    assert "Huyện Mai Sơn: tỷ lệ ngày 2020-08-17 in là 6,4 %, nhưng 10.329 / 162.696 = 6,35 %" in text
    # the report's own note, in the page's language, said once though the snapshots find it too
    assert text.count("Sơn La: dân số ghi là 1.248.415, nhưng 12 địa bàn cấp quận/huyện của nó cộng lại được") == 1
    assert "population given as 1,248,415" not in text


def test_the_notes_follow_the_pages_language(world: tuple[rep.Report, snap.Summary]) -> None:
    report, summary = world
    report.notes.append(Text("no population for: {areas}; their shares are left blank", areas="Xã A, Xã B"))
    said = {}
    for lang in ("vi", "en"):
        page = render_html(report, summary, generated_at=GENERATED, lang=lang)
        items = page.split('<ul class="notes">', 1)[1].split("</ul>", 1)[0]
        said[lang] = [html.unescape(li) for li in re.findall(r"<li>(.*?)</li>", items)]
    assert "không có dân số cho: Xã A, Xã B; tỷ lệ của các địa bàn này để trống" in said["vi"]
    assert "no population for: Xã A, Xã B; their shares are left blank" in said["en"]
    assert any(n.startswith("Sơn La: dân số ghi là 1.248.415, nhưng 12 địa bàn cấp quận/huyện") for n in said["vi"])
    assert any(n.startswith("Sơn La: population given as 1,248,415, but its 12 district areas") for n in said["en"])


def test_escaping(world: tuple[rep.Report, snap.Summary]) -> None:
    report, summary = world
    report.rows[0].area = "Khu <b>A</b> & \"B\""
    page = render_html(report, summary, generated_at=GENERATED)
    assert "Khu <b>" not in page
    assert "Khu &lt;b&gt;A&lt;/b&gt; &amp; &quot;B&quot;" in page      # in the table
    # plotly reads a few HTML tags in labels: the charts get the name escaped too
    assert "Khu &lt;b&gt;A&lt;/b&gt; &amp; &quot;B&quot;" in page.split('id="loa-figures">', 1)[1]


def test_without_snapshots_or_holdout(world: tuple[rep.Report, snap.Summary]) -> None:
    report, _ = world
    for row in [*report.rows, report.total]:
        row.held_out = row.installed_held_out = 0
    page = render_html(report, None, generated_at=GENERATED)
    specs = json.loads(page.split('id="loa-figures">', 1)[1].split("</script>", 1)[0])
    assert list(specs) == ["chart-rates", "chart-funnel"]
    assert len(specs["chart-rates"]["data"]) == 1                       # no snapshot to compare with


# -- the page in a browser ------------------------------------------------------------------

def chromium(tmp_path: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    assert CHROMIUM is not None
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra, url],
                          capture_output=True, text=True, timeout=180, check=True)


def rows_of(dom: str, table_id: str) -> list[str]:
    body = dom.split(f'id="{table_id}"', 1)[1].split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return re.findall(r'<tr data-code="([^"]*)"', body)


def chart(dom: str, chart_id: str) -> str:
    start = dom.index(f'id="{chart_id}"')
    return dom[start:dom.index("</section>", start)]


@needs_chromium
def test_in_chromium(world: tuple[rep.Report, snap.Summary], tmp_path: Path) -> None:
    report, summary = world
    page = tmp_path / "report.html"
    page.write_text(render_html(report, summary, generated_at=GENERATED), encoding="utf-8")
    netlog, shot = tmp_path / "net.json", tmp_path / "report.png"
    # One load (plotly.js is 4.8 MB to parse): the DOM after the scripts ran, a screenshot, and the
    # network log.  No network at all: every host is unresolvable and every proxy unreachable, and
    # the log must show no request from the page (the browser's own calls home aside).
    # "#sort=population" asks the table's script to sort by population, smallest first.
    dom = chromium(tmp_path, page.as_uri() + "#sort=population", "--dump-dom",
                   f"--screenshot={shot}", "--window-size=1280,1600", "--hide-scrollbars",
                   f"--log-net-log={netlog}", "--host-resolver-rules=MAP * ~NOTFOUND",
                   "--proxy-server=127.0.0.1:9").stdout

    # every chart drawn by plotly.js: its <svg class="main-svg"> layers and the traces in them
    for cid in ("chart-rates", "chart-funnel", "chart-trend", "chart-uplift"):
        part = chart(dom, cid)
        assert "js-plotly-plot" in part and part.count('class="main-svg"') >= 2, cid
    rates = chart(dom, "chart-rates")
    assert rates.count('class="trace bars"') == 2                       # the ledger's, the snapshot's
    assert rates.count('<g class="point">') == 24                       # a bar per district in each
    assert "mục tiêu 50 % đến ngày 20/08/2020" in rates                  # the goal line's label, in Vietnamese
    assert chart(dom, "chart-funnel").count('<g class="point">') == 4   # four stages
    assert chart(dom, "chart-trend").count('class="trace scatter') == 13
    assert chart(dom, "chart-uplift").count('class="errorbar"') == 13   # an interval per point
    # the names, intact (precomposed, as written), in the table, the axes and the legend
    for d in son_la():
        assert dom.count(d["district"]) >= 3, d["district"]
    # the table: a row per district, sorted by the script as the address asked
    by_population = sorted(report.rows, key=lambda r: r.population or 0)
    assert rows_of(dom, "report-table") == [r.code for r in by_population]
    assert dom.count('aria-sort="ascending"') == 1
    assert len(rows_of(dom, "snapshots-table")) == 13

    assert page_requests(netlog) == []

    # read in Vietnamese: the page says so, its headings and figures are Vietnamese
    assert '<html lang="vi">' in dom
    assert ">Dân số</th>" in dom and ">Theo quận/huyện <small>" in dom
    assert f">{report.total.audience:,}</td>".replace(",", ".") in dom   # 12.345, not 12,345

    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (1280, 1600)
    if os.environ.get("LOA_UPDATE_SCREENSHOT"):   # refresh the README's picture on request only
        docs = ROOT / "docs"
        docs.mkdir(exist_ok=True)
        (docs / "report.png").write_bytes(png)


def page_requests(netlog: Path) -> list[str]:
    """The URLs the page asked for, from the browser's network log.

    Chromium logs its own background calls too (time, updates, accounts); those
    have no initiating origin ("not an origin"), while anything a file:// page
    asks for has the opaque origin "null".
    """
    text = netlog.read_text(encoding="utf-8", errors="replace").rstrip().rstrip(",")
    if not text.endswith("}"):
        text += "]}"      # the log is left unterminated when the browser exits abruptly
    log = json.loads(text)
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [e["params"]["url"] for e in log["events"]
            if e["type"] == start_job and "url" in e.get("params", {})
            and e["params"].get("initiator") != "not an origin"]


@needs_chromium
def test_the_network_check_can_fail(tmp_path: Path) -> None:
    """A page that does fetch something is caught by the same check."""
    page = write(tmp_path / "fetches.html", """
        <!DOCTYPE html><html><body><img src="http://example.com/x.png">
        <script>fetch("https://cdn.plot.ly/plotly.min.js").catch(function () {});</script></body></html>
    """)
    netlog = tmp_path / "net.json"
    chromium(tmp_path, page.as_uri(), "--dump-dom", f"--log-net-log={netlog}",
             "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9")
    assert sorted(page_requests(netlog)) == ["http://example.com/x.png", "https://cdn.plot.ly/plotly.min.js"]


def test_render_report_finds_the_snapshots(engine: Engine, world: tuple[rep.Report, snap.Summary]) -> None:
    report, _ = world
    page = render_report(engine, report, generated_at=GENERATED)
    specs = json.loads(page.split('id="loa-figures">', 1)[1].split("</script>", 1)[0])
    assert list(specs) == ["chart-rates", "chart-funnel", "chart-trend", "chart-uplift"]
    assert len(specs["chart-trend"]["data"]) == 13
    with engine.begin() as conn:
        conn.execute(db.snapshots.delete())
    page = render_report(engine, report, generated_at=GENERATED)
    assert "chart-trend" not in page and "snapshots-table" not in page


def test_the_tables_show_undelivered_and_the_snapshots_disagreements(world: tuple[rep.Report, snap.Summary]) -> None:
    report, summary = world
    page = render_html(report, summary, generated_at=GENERATED)
    table = page.split('id="report-table"', 1)[1].split("</table>", 1)[0]
    assert '<th data-key="undelivered" data-type="num" scope="col">Không đến máy</th>' in table
    total = table.split("<tfoot>", 1)[1]
    assert f'<td data-value="{report.total.undelivered}">{report.total.undelivered:,}</td>'.replace(",", ".") in total
    assert report.total.undelivered > 0
    snapshots = page.split('id="snapshots-table"', 1)[1].split("</table>", 1)[0]
    rows = {code: row for code, row in re.findall(r'<tr data-code="([^"]*)">(.*?)</tr>', snapshots)}
    assert rows["125"].endswith("<td>rate</td>")                       # Mai Sơn's printed 6.4%
    assert rows["14"].endswith("<td>total; change; population</td>")   # the letter's own totals
