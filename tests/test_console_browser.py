"""The web console as officials use it: Playwright drives Debian's Chromium through a whole journey.

loa's application runs under uvicorn on a free 127.0.0.1 port in a thread, with a worker (the
real dispatcher) in another, sending through eSMS's loopback fake at 8 parts a second, so that
the progress of a launch can be seen moving.  The journey:

1. an operator signs in; 2. uploads subscribers and sees the rejects; 3. drafts a campaign and
watches the part counter change for an accented text; 4. test-sends it; 5. submits it;
6. an approver signs in and approves; 7. launches, starts a run and watches the progress move;
8. pauses, then resumes; 9. cancels a second campaign; 10. reads the report in Vietnamese;
11. a viewer bound to Mộc Châu sees only Mộc Châu.

Screenshots of the main pages go to ``docs/`` when ``LOA_CONSOLE_SCREENSHOTS=1``.

SQLite only: the console's server side is tested on both databases by ``test_console.py``;
this test is about the browser.  Playwright's own browser download is never used: Chromium is
Debian's ``/usr/bin/chromium``.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from test_cost import esms as esms  # noqa: PLC0414 - the fixture, shared
from test_digest import AREAS

from loa import auth, importer
from loa.config import Config, load
from loa.dispatch import Dispatcher
from loa.web import Web
from loa.web.server import WebServer
from providers.fakes.esms import FakeESMS

CHROMIUM = Path("/usr/bin/chromium")
DOCS = Path(__file__).resolve().parent.parent / "docs"
PASSWORD = "mat-khau-dai-12345"
UNACCENTED = "Moi ban tiem chung tai tram y te xa. " * 4          # 148 characters: 1 GSM-7 part
ACCENTED = "Mời bạn tiêm chủng tại trạm y tế xã. " * 4            # the same in Vietnamese: UCS-2, 3 parts

pytestmark = [
    pytest.mark.skipif(bool(os.environ.get("LOA_TEST_DATABASE_URL")),
                       reason="the browser journey runs on SQLite; test_console.py covers PostgreSQL"),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (/usr/bin/chromium)"),
]
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright (the test extra) is not installed")


def write_config(workdir: Path, fake: FakeESMS) -> Config:
    (workdir / "config.toml").write_text("\n".join([
        'timezone = "Asia/Ho_Chi_Minh"', "[defaults]", 'sms_gateway = "esms"',
        "[gateways.esms]", 'type = "esms"', 'api_key_env = "T_ESMS_KEY"', 'secret_key_env = "T_ESMS_SECRET"',
        'brandname = "LOA"', f'base_url = "{fake.url}"', "rate = 8", "burst = 1", "price_per_part = 800",
        "[send]", "threads = 2", "batch_size = 4",
        "[approval]", "always = true"]) + "\n", encoding="utf-8")
    return load(workdir / "config.toml")


@dataclass
class Site:
    url: str
    engine: Engine
    workdir: Path


@pytest.fixture
def site(engine: Engine, workdir: Path, esms: FakeESMS) -> Iterator[Site]:
    """Sơn La (14) with Mộc Châu (126) and Mai Sơn (125), three users, the console and a worker."""
    config = write_config(workdir, esms)
    areas = workdir / "areas.csv"
    areas.write_text(AREAS.lstrip("\n"), encoding="utf-8")
    importer.run_import(engine, importer.AreasHandler(engine, areas), areas)
    for name, role, area in (("olga", "operator", None), ("anh", "approver", None), ("vy", "viewer", "126")):
        auth.add_user(engine, "os:test", name, PASSWORD, role, area)
    web = Web(engine, config)
    server = WebServer(web)
    server.start()
    worker = Dispatcher(engine, config)
    sending = threading.Thread(target=worker.run_forever, kwargs={"idle": 0.1, "housekeeping_every": 0.5},
                               name="loa-worker", daemon=True)
    sending.start()
    try:
        yield Site(f"http://127.0.0.1:{server.port}", engine, workdir)
    finally:
        worker.stop.set()
        sending.join(timeout=30)
        server.stop()
        web.pool.close()


@pytest.fixture
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


def subscribers_csv(folder: Path) -> Path:
    """40 people in Mộc Châu, 24 in Mai Sơn, and two rows the import rejects."""
    lines = ["phone,name,area"] + [f"0912{i:06d},Người {i},{'126' if i < 40 else '125'}" for i in range(64)]
    lines += ["12345,Số sai,126", "0912000999,Không rõ nơi,999"]
    path = folder / "thue-bao.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def shot(page: object, name: str) -> None:
    if os.environ.get("LOA_CONSOLE_SCREENSHOTS"):
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=str(DOCS / f"console-{name}.png"), full_page=True)  # type: ignore[attr-defined]


def sign_in(page: object, site: Site, name: str) -> None:
    p = page
    p.goto(f"{site.url}/console/login")  # type: ignore[attr-defined]
    p.fill("#name", name)  # type: ignore[attr-defined]
    p.fill("#password", PASSWORD)  # type: ignore[attr-defined]
    p.press("#password", "Enter")  # type: ignore[attr-defined]
    p.wait_for_url(f"{site.url}/console/")  # type: ignore[attr-defined]


def sign_out(page: object) -> None:
    page.get_by_role("button", name="Đăng xuất").click()  # type: ignore[attr-defined]
    page.wait_for_url(re.compile(r".*/console/login$"))  # type: ignore[attr-defined]


def test_an_operator_and_an_approver_run_a_campaign_from_upload_to_report(site: Site, browser: object,
                                                                          esms: FakeESMS) -> None:
    expect = playwright_api.expect
    expect.set_options(timeout=15_000)
    context = browser.new_context(locale="vi-VN", viewport={"width": 1100, "height": 900})  # type: ignore[attr-defined]
    context.set_default_timeout(15_000)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)

    # 1. the operator signs in: the console is in Vietnamese
    sign_in(page, site, "olga")
    expect(page.locator("h1")).to_have_text("Tổng quan")
    shot(page, "dashboard-empty")

    # 2. uploads subscribers, sees the progress end, the counts and the rejects
    page.get_by_role("link", name="Nhập dữ liệu").click()
    page.select_option("#kind", "subscribers")
    page.set_input_files("#file", str(subscribers_csv(site.workdir)))
    page.get_by_role("button", name="Tải lên và nhập").click()
    page.wait_for_url(re.compile(r".*/console/imports/\d+$"))
    expect(page.locator("#job")).to_have_attribute("data-state", "done")
    expect(page.locator("[data-count=imported]")).to_have_text("64")
    expect(page.locator("[data-count=rejected]")).to_have_text("2")
    with page.expect_download() as download:
        page.get_by_role("link", name=re.compile("dòng bị loại")).click()
    rejects = Path(download.value.path()).read_text(encoding="utf-8")
    assert "12345" in rejects and "999" in rejects and "0912000001" not in rejects, rejects
    shot(page, "import")

    # 3. drafts a campaign: the part counter changes as accented text is typed
    page.get_by_role("link", name="Chiến dịch mới").click()
    page.fill("#f-name", "tiemchung")
    page.fill("#f-description", "Tiêm chủng mở rộng")
    page.fill("#f-areas", "Sơn La")
    page.fill("#f-ws", "00:00")          # all day: the journey does not depend on the hour
    page.fill("#f-we", "24:00")
    page.locator("#f-text").fill(UNACCENTED)
    parts = page.locator("[data-measure=parts]")
    expect(parts).to_contain_text("1 ")
    expect(page.locator("[data-measure=encoding]")).to_have_text("GSM-7")
    page.locator("#f-text").fill(ACCENTED)
    expect(page.locator("[data-measure=encoding]")).to_have_text("UCS-2")
    expect(parts).to_contain_text("3 ")
    shot(page, "edit")
    page.get_by_role("button", name="Lưu thành phiên bản mới").click()
    page.wait_for_url(re.compile(r".*/console/campaigns/tiemchung$"))
    expect(page.locator("#campaign-state")).to_have_text("bản nháp")

    # 4. test-sends it to a staff number, which the gateway receives
    page.fill("#test-to", "0987 654 321")
    page.get_by_role("button", name="Gửi thử").click()
    expect(page.locator(".flash")).to_contain_text("+8498****321")   # masked
    assert [m.phone for m in esms.messages.values()] == ["84987654321"]
    assert "0987654321" not in page.content() and "84987654321" not in page.content()

    # 5. submits it for approval
    page.get_by_role("button", name="Trình phê duyệt", exact=True).click()
    expect(page.locator("#campaign-state")).to_have_text("chờ phê duyệt")
    sign_out(page)

    # 6. the approver signs in and approves what was submitted
    sign_in(page, site, "anh")
    page.goto(f"{site.url}/console/campaigns/tiemchung")
    shot(page, "campaign")
    page.fill("#reason-approve", "Đã kiểm tra nội dung")
    page.get_by_role("button", name="Phê duyệt", exact=True).click()
    expect(page.locator("#campaign-state")).to_have_text("đã phê duyệt")

    # 7. launches it, starts a run, and watches the progress move
    page.get_by_role("button", name="Phát động", exact=True).click()
    expect(page.locator("#campaign-state")).to_have_text("đang chạy")
    page.get_by_role("button", name="Bắt đầu một đợt gửi ngay").click()
    sent = page.locator("#progress [data-col=sent]")
    expect(sent).not_to_have_text("0")
    first = int(sent.inner_text().replace(".", ""))
    expect(sent).not_to_have_text(str(first))

    # 8. pauses (a reason is asked for), then resumes
    page.fill("#reason-pause", "Tạm dừng để kiểm tra")
    page.get_by_role("button", name="Tạm dừng", exact=True).click()
    expect(page.locator("#campaign-state")).to_have_text("tạm dừng")
    page.get_by_role("button", name="Tiếp tục", exact=True).click()
    expect(page.locator("#campaign-state")).to_have_text("đang chạy")
    expect(page.locator("#progress [data-col=queued]")).to_have_text("0", timeout=30_000)
    shot(page, "campaign-sent")

    # 9. cancels a second campaign, with its reason
    page.goto(f"{site.url}/console/campaigns/new")
    page.fill("#f-name", "mocchau")
    page.fill("#f-areas", "126")
    page.fill("#f-ws", "00:00")
    page.fill("#f-we", "24:00")
    page.locator("#f-text").fill("Mộc Châu: mời bạn tiêm chủng.")
    page.get_by_role("button", name="Lưu thành phiên bản mới").click()
    page.wait_for_url(re.compile(r".*/console/campaigns/mocchau$"))
    page.fill("#reason-cancel", "Không còn cần thiết")
    page.get_by_role("button", name="Hủy chiến dịch").click()
    expect(page.locator("#campaign-state")).to_have_text("đã hủy")

    # 10. reads the report in Vietnamese: its numbers written the Vietnamese way
    page.goto(f"{site.url}/console/reports/tiemchung?level=district")
    expect(page.locator("h1")).to_contain_text("Báo cáo")
    table = page.locator("#report-table")
    expect(table.locator("tbody tr")).to_have_count(2)
    expect(table).to_contain_text("Mộc Châu")
    expect(table).to_contain_text("Mai Sơn")
    assert re.search(r"\d+,\d+ %", table.inner_text()), table.inner_text()
    shot(page, "report")
    sign_out(page)

    # 11. a viewer bound to Mộc Châu sees only what lies in Mộc Châu
    sign_in(page, site, "vy")
    body = page.locator("main").inner_text()
    assert "mocchau" in body and "tiemchung" not in body, body
    page.goto(f"{site.url}/console/reports/tiemchung")
    expect(page.locator("main")).not_to_contain_text("Mai Sơn")
    expect(page.locator("h1")).not_to_contain_text("tiemchung")
    page.goto(f"{site.url}/console/campaigns/mocchau")
    expect(page.get_by_role("button", name="Tạm dừng", exact=True)).to_have_count(0)
    expect(page.get_by_role("button", name="Hủy chiến dịch")).to_have_count(0)

    # 12. a phone screen: the menu and the campaign's actions fit its width, keyboard included
    phone = browser.new_context(locale="vi-VN", viewport={"width": 375, "height": 740},  # type: ignore[attr-defined]
                                is_mobile=True, has_touch=True)
    small = phone.new_page()
    sign_in(small, site, "anh")
    small.goto(f"{site.url}/console/campaigns/tiemchung")
    assert small.evaluate("document.documentElement.scrollWidth") <= 375 + 1
    small.keyboard.press("Tab")
    assert small.evaluate("document.activeElement.className") == "skip"
    shot(small, "phone")
    phone.close()
    context.close()
    assert problems == [], problems          # no script error, no CSP violation
