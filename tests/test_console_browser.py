"""The console in a real browser: Debian's Chromium driven by Playwright, the whole journey
of an official, in Vietnamese.

The server is loa's web application under uvicorn in a thread on a free 127.0.0.1 port; the
gateway is the eSMS fake (``providers/fakes``), at 5 parts per second so that progress can
be watched on the 5-second poll; a dispatcher thread sends what runs plan, as ``loa serve``'s workers do.

1. an operator signs in and uploads subscribers (one row rejected, its file offered);
2. drafts a campaign, and the part counter changes as the text gets accents;
3. test-sends it to a staff number, and submits it;
4. an approver approves and launches it, starts a run, and watches the sent count grow;
5. pauses and resumes it; cancels a second campaign with a reason;
6. reads the report in Vietnamese; reads the campaign's messages, numbers masked, and shows one
   for a reason (audited); switches to English and back (kept with the user);
7. a viewer bound to Mộc Châu sees only the campaign of Mộc Châu.

Screenshots of the main pages are written to docs/ when ``LOA_SCREENSHOTS=1``.

SQLite only: the same pages run on PostgreSQL in ``test_console.py``.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PG_URL, ROOT, write
from sqlalchemy import select
from sqlalchemy.engine import Engine
from test_cost import esms  # noqa: F401 - the fixture
from test_digest import AREAS

from loa import audit, auth, db, importer, versions
from loa.config import load
from loa.web import Web
from providers.fakes.esms import FakeESMS

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "correct-horse-1"
pytestmark = [
    pytest.mark.skipif(bool(PG_URL), reason="the browser journey runs on SQLite; test_console.py covers PostgreSQL"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (/usr/bin/chromium)"),
]
playwright = pytest.importorskip("playwright.sync_api", reason="playwright (the test extra) is not installed")

OTHER = """
name = "{name}"
description = "{description}"
channels = ["sms"]
[segment]
areas = ["{area}"]
[sms]
template = "sms/{name}.j2"
[window]
start = "00:00"
end = "24:00"
"""


@pytest.fixture
def served(engine: Engine, workdir: Path, esms: FakeESMS) -> Iterator[str]:  # noqa: F811
    import uvicorn

    from loa.dispatch import Dispatcher

    write(workdir / "config.toml", "\n".join([
        'timezone = "Asia/Ho_Chi_Minh"', "[defaults]", 'sms_gateway = "esms"', "[gateways.esms]", 'type = "esms"',
        'api_key_env = "T_ESMS_KEY"', 'secret_key_env = "T_ESMS_SECRET"', 'brandname = "LOA"',
        f'base_url = "{esms.url}"', "rate = 5", "burst = 1", "price_per_part = 800",
        "[send]", "threads = 2", "batch_size = 5", "[approval]", "always = true"]) + "\n")
    config = load(workdir / "config.toml")
    areas = write(workdir / "areas.csv", AREAS)
    importer.run_import(engine, importer.AreasHandler(engine, areas), areas)
    for name, description, area in (("thu-nghiem", "Chiến dịch thử", "Sơn La"),
                                    ("moc-chau", "Nhắc Mộc Châu", "Huyện Mộc Châu")):
        write(workdir / "templates" / "sms" / f"{name}.j2", "Xin chào {{ subscriber.name }}\n")
        write(workdir / "campaigns" / f"{name}.toml", OTHER.format(name=name, description=description, area=area))
    versions.apply(engine, config, "os:test")
    for name, role, area in (("olga", "operator", None), ("anh", "approver", None), ("moc", "viewer", "126")):
        auth.add_user(engine, "os:test", name, PASSWORD, role, area)
    web = Web(engine, config)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(web, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    stop = threading.Event()

    def dispatch() -> None:
        while not stop.is_set():
            Dispatcher(engine, config).run_until_empty()
            stop.wait(0.2)

    threads = [threading.Thread(target=server.run, daemon=True), threading.Thread(target=dispatch, daemon=True)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    stop.set()
    server.should_exit = True
    for t in threads:
        t.join(timeout=10)
    web.pool.close()


def shoot(page: object, name: str, full_page: bool = True) -> None:
    if os.environ.get("LOA_SCREENSHOTS"):
        page.screenshot(path=str(ROOT / "docs" / f"console-{name}.png"), full_page=full_page)  # type: ignore[attr-defined]


def test_an_official_runs_a_campaign_from_upload_to_report(served: str, tmp_path: Path, esms: FakeESMS,  # noqa: F811
                                                           engine: Engine) -> None:
    from playwright.sync_api import expect, sync_playwright

    people = tmp_path / "nguoi-dan.csv"
    rows = [f"0912{i:06d},Người {i},{'126' if i < 30 else '125'}" for i in range(50)]
    people.write_text("phone,name,area\n" + "\n".join(rows) + "\nkhong-phai-so,Sai,126\n", encoding="utf-8")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--lang=vi-VN"])
        page = browser.new_page(viewport={"width": 1100, "height": 800}, locale="vi-VN")
        page.set_default_timeout(15_000)
        console = f"{served}/console"

        def sign_in(name: str) -> None:
            page.goto(f"{console}/login")
            page.get_by_label("Tên đăng nhập").fill(name)
            page.get_by_label("Mật khẩu").fill(PASSWORD)
            page.get_by_role("button", name="Đăng nhập").click()
            expect(page.get_by_role("heading", name="Tổng quan")).to_be_visible()

        def state() -> object:
            return page.locator("#campaign-state")

        # 1. the operator uploads subscribers; one row is rejected and its file offered
        sign_in("olga")
        page.get_by_role("link", name="Nhập dữ liệu").click()
        page.get_by_label("Tệp chứa").select_option("subscribers")
        page.get_by_label("Tệp CSV").set_input_files(str(people))
        shoot(page, "imports")
        page.get_by_role("button", name="Tải lên và nhập").click()
        expect(page.locator("#job")).to_have_attribute("data-state", "done")
        expect(page.locator('[data-count="imported"]')).to_have_text("50")
        expect(page.locator('[data-count="rejected"]')).to_have_text("1")
        with page.expect_download() as download:
            page.get_by_role("link", name="Tải các dòng bị loại (CSV)").click()
        assert "khong-phai-so" in Path(download.value.path()).read_text(encoding="utf-8")

        # 2. a draft: the part counter follows the text as it gets accents
        page.get_by_role("link", name="Chiến dịch mới").click()
        page.get_by_label("Tên (chữ thường, số, -)").fill("bluezone")
        page.get_by_label("Mô tả").fill("Nhắc cài Bluezone")
        page.get_by_label("Địa bàn (mã hoặc tên, cách nhau bằng dấu phẩy)").fill("Sơn La")
        text = page.get_by_label("Nội dung SMS (mẫu)")
        text.fill("Cai dat Bluezone de bao ve minh va cong dong, phong chong dich benh tai Son La. So Y te")
        expect(page.locator('[data-measure="encoding"]')).to_have_text("GSM-7")
        expect(page.locator('[data-measure="parts"]')).to_have_text("1 phần SMS")
        text.fill("Cài đặt Bluezone để bảo vệ mình và cộng đồng, phòng chống dịch bệnh tại Sơn La. Sở Y tế")
        expect(page.locator('[data-measure="encoding"]')).to_have_text("UCS-2")
        expect(page.locator('[data-measure="parts"]')).to_have_text("2 phần SMS")
        page.get_by_label("Khung giờ gửi từ").fill("00:00")
        page.get_by_label("đến", exact=True).fill("24:00")
        shoot(page, "edit")
        page.get_by_role("button", name="Lưu thành phiên bản mới").click()
        expect(page.get_by_role("status")).to_contain_text("Đã lưu phiên bản 1")
        expect(state()).to_have_text("bản nháp")

        # 3. a test send to a staff number, then submit
        page.get_by_label("Số điện thoại cán bộ để gửi thử").fill("0912999999")
        page.get_by_role("button", name="Gửi thử").click()
        expect(page.get_by_role("status")).to_contain_text("Đã gửi thử")
        assert any(m.phone.endswith("912999999") for m in esms.messages.values())
        page.get_by_role("button", name="Trình phê duyệt").click()
        expect(state()).to_have_text("chờ phê duyệt")
        page.get_by_role("button", name="Đăng xuất").click()

        # 4. the approver approves, launches, starts a run and watches it go out
        sign_in("anh")
        page.goto(f"{console}/campaigns/bluezone")
        page.get_by_role("button", name="Phê duyệt").click()
        expect(state()).to_have_text("đã phê duyệt")
        page.get_by_role("button", name="Phát động").click()
        expect(state()).to_have_text("đang chạy")
        page.get_by_role("button", name="Bắt đầu một đợt gửi ngay").click()
        expect(page.get_by_role("status")).to_contain_text("Đã lập đợt gửi")
        sent = page.locator('#progress [data-col="sent"]')
        expect(sent).not_to_have_text("0", timeout=30_000)     # polled every 5 s
        first = int(sent.inner_text().replace(".", ""))
        expect(sent).not_to_have_text(str(first), timeout=30_000)    # it moves while the page is open
        shoot(page, "campaign")

        # 5. pause and resume; cancel the second campaign with a reason
        page.get_by_label("Lý do (bắt buộc)").first.fill("kiểm tra lại nội dung")
        page.get_by_role("button", name="Tạm dừng").click()
        expect(state()).to_have_text("tạm dừng")
        page.get_by_role("button", name="Tiếp tục").click()
        expect(state()).to_have_text("đang chạy")
        expect(page.locator('#progress [data-col="queued"]')).to_have_text("0", timeout=60_000)
        page.goto(f"{console}/campaigns/thu-nghiem")
        page.get_by_label("Lý do (bắt buộc)").last.fill("không cần nữa")
        page.get_by_role("button", name="Hủy chiến dịch").click()
        expect(state()).to_have_text("đã hủy")
        page.goto(f"{console}/")
        shoot(page, "dashboard")

        # 6. the report, in Vietnamese
        page.goto(f"{console}/reports/bluezone")
        expect(page.get_by_role("heading", name="Báo cáo chiến dịch bluezone")).to_be_visible()
        expect(page.locator("#report-table")).to_contain_text("Tổng")
        expect(page.locator("#report-table tbody tr")).to_have_count(2)
        shoot(page, "report")

        # 6b. the campaign's messages, numbers masked; the approver shows one, for a reason
        page.goto(f"{console}/campaigns/bluezone")
        page.get_by_role("link", name="Tin nhắn", exact=True).click()
        expect(page.get_by_role("heading", name="Tin nhắn của bluezone")).to_be_visible()
        first = page.locator("#messages tbody tr").first
        expect(first.locator("[data-phone]")).to_have_text(re.compile(r"^\+8491\*+\d{3}$"))
        first.get_by_text("Hiện số").click()
        first.get_by_label("Lý do (bắt buộc, ghi vào nhật ký kiểm tra)").fill("người dân hỏi lại, phiếu 2026/17")
        shoot(page, "messages", full_page=False)
        first.get_by_role("button", name="Xem", exact=True).click()
        expect(page.locator("#messages tbody tr").first.locator("[data-phone]")).to_have_text(
            re.compile(r"^\+84912\d{6}$"))
        assert [e.reason for e in audit.query(engine, action="subjects") if e.action == "subjects.reveal"] == [
            "người dân hỏi lại, phiếu 2026/17"]

        # 6c. the approver reads the console in English from now on, wherever they sign in
        page.get_by_label("Ngôn ngữ").select_option("en")
        page.get_by_role("button", name="Đổi").click()
        expect(page.get_by_role("heading", name="Messages of bluezone")).to_be_visible()
        with engine.connect() as conn:
            assert conn.scalar(select(db.users.c.language).where(db.users.c.name == "anh")) == "en"
        page.get_by_label("Language").select_option("vi")
        page.get_by_role("button", name="Change").click()
        expect(page.get_by_role("heading", name="Tin nhắn của bluezone")).to_be_visible()

        # on a phone's screen nothing overflows sideways, every field has its label, and the
        # keyboard reaches the page: the first Tab lands on "skip to content"
        page.set_viewport_size({"width": 390, "height": 844})
        for url in ("/", "/reports/bluezone", "/campaigns/bluezone", "/imports", "/campaigns/new",
                    "/campaigns/bluezone/messages"):
            page.goto(console + url)
            assert page.evaluate("document.documentElement.scrollWidth") <= 390, url
            unlabelled = page.evaluate("""[...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
                .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map(e => e.name)""")
            assert unlabelled == [], (url, unlabelled)
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.className") == "skip"
        page.set_viewport_size({"width": 1100, "height": 800})
        page.get_by_role("button", name="Đăng xuất").click()

        # 7. a viewer bound to Mộc Châu sees only Mộc Châu's campaign
        sign_in("moc")
        expect(page.locator("main")).to_contain_text("moc-chau")
        expect(page.locator("main")).not_to_contain_text("bluezone")
        page.goto(f"{console}/reports/bluezone")
        expect(page.get_by_role("heading", name="Không truy cập được")).to_be_visible()
        page.goto(f"{console}/campaigns/moc-chau/messages")
        expect(page.get_by_role("heading", name="Tin nhắn của moc-chau")).to_be_visible()
        expect(page.get_by_text("Hiện số")).to_have_count(0)
        browser.close()
