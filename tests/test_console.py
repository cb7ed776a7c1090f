"""The web console's server side (``/console``), in process on a real database.

The world of ``test_api``: Sơn La's Mộc Châu (126) and Mai Sơn (125), ``bluezone`` for all of
Sơn La and ``mocchau`` for Mộc Châu only, both planned.  Users sign in through the form; the
browser journey itself is ``test_console_browser.py``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient
from test_api import add_campaign, state_of, world  # noqa: F401 - `world` is a fixture
from test_cli import invoke, ok, one_line_error
from test_digest import CAMPAIGN

from loa import audit, auth, db
from loa.config import Config
from loa.errors import LoaError
from loa.phones import mask
from loa.web import Web

PASSWORD = "correct-horse-1"


@pytest.fixture
def web(engine: Engine, world: Config) -> Iterator[Web]:  # noqa: F811
    app = Web(engine, world)
    yield app
    app.pool.close()


def browser(web: Web) -> TestClient:
    return TestClient(web, base_url="https://testserver", raise_server_exceptions=True)


def csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page[:500]
    return found.group(1)


def sign_in(web: Web, name: str, role: str, area: str | None = None) -> TestClient:
    auth.add_user(web.engine, "os:test", name, PASSWORD, role, area)
    client = browser(web)
    token = csrf(client.get("/console/login").text)
    r = client.post("/console/login", data={"csrf": token, "name": name, "password": PASSWORD})
    assert r.status_code == 200 and r.url.path == "/console/", r.text[:300]
    return client


def post(client: TestClient, page: str, url: str, **data: str) -> str:
    """Post a form from ``page`` (its CSRF token) and return the page it leads to."""
    r = client.post(url, data={"csrf": csrf(client.get(page).text), **data})
    assert r.status_code in (200, 422), (r.status_code, r.text[:300])
    return r.text


def test_sign_in_sets_safe_cookies_a_strict_policy_and_vietnamese(web: Web) -> None:
    client = browser(web)
    r = client.get("/console/")
    assert r.url.path == "/console/login"
    assert "Đăng nhập" in r.text and 'lang="vi"' in r.text
    policy = r.headers["Content-Security-Policy"]
    assert "script-src 'self' 'nonce-" in policy and "unsafe-inline" not in policy.split("style-src")[0]
    assert "<script>" not in r.text and " on" + "click=" not in r.text
    auth.add_user(web.engine, "os:test", "ana", PASSWORD, "viewer")
    token = csrf(r.text)
    r = client.post("/console/login", data={"csrf": token, "name": "ana", "password": "wrong-password"},
                    follow_redirects=False)
    assert r.status_code == 401 and "Sai tên đăng nhập hoặc mật khẩu" in r.text and "wrong-password" not in r.text
    r = client.post("/console/login", data={"csrf": token, "name": "ana", "password": PASSWORD},
                    follow_redirects=False)
    assert r.status_code == 303
    cookie = r.headers["set-cookie"].lower()
    assert "loa_session=" in cookie and "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    assert PASSWORD not in r.text
    page = client.get("/console/")
    assert page.status_code == 200 and "Tổng quan" in page.text and "ana" in page.text
    # a form without its token changes nothing
    assert client.post("/console/logout", data={}).status_code == 403
    assert client.post("/console/logout", data={"csrf": "forged"}).status_code == 403
    client.post("/console/logout", data={"csrf": csrf(page.text)})
    assert client.get("/console/").url.path == "/console/login"
    # a forged session cookie is no session
    client.cookies.set("loa_session", "eyJ1IjoiYWRtaW4ifQ.forged", domain="testserver.local")  # sent
    assert client.get("/console/").url.path == "/console/login"


def test_english_per_user_and_formats(web: Web) -> None:
    client = sign_in(web, "ben", "viewer")
    home = client.get("/console/").text
    client.post("/console/language", data={"csrf": csrf(home), "lang": "en", "next": "/console/"})
    assert "Dashboard" in client.get("/console/").text
    client.post("/console/language", data={"csrf": csrf(home), "lang": "vi", "next": "/console/"})
    assert "Tổng quan" in client.get("/console/").text


def test_the_users_page_shows_each_users_language(engine: Engine, web: Web) -> None:
    admin = sign_in(web, "an", "admin")
    auth.add_user(engine, "os:test", "ben", PASSWORD, "viewer")
    auth.set_language(engine, "os:test", "ben", "en")
    page = admin.get("/console/users").text
    assert "<th scope=\"col\">Ngôn ngữ</th>" in page
    rows = {m[0]: m[1] for m in re.findall(r"<tr><td>([^<]+)</td>.*?<td lang=\"(vi|en)\">", page, re.DOTALL)}
    assert rows == {"an": "vi", "ben": "en"}
    assert '<td lang="en">English</td>' in page and '<td lang="vi">Tiếng Việt</td>' in page


def test_each_users_language_is_kept_with_the_user_and_every_change_is_audited(
        engine: Engine, web: Web, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ben = sign_in(web, "ben", "viewer")
    home = ben.get("/console/").text
    assert "Tổng quan" in home and 'lang="vi"' in home
    ben.post("/console/language", data={"csrf": csrf(home), "lang": "en", "next": "/console/"})
    assert "Dashboard" in ben.get("/console/").text
    with engine.connect() as conn:
        assert conn.scalar(select(db.users.c.language).where(db.users.c.name == "ben")) == "en"
    # another browser, signed in afresh with no language cookie, gets the user's language
    other = browser(web)
    r = other.post("/console/login", data={"csrf": csrf(other.get("/console/login").text), "name": "ben",
                                           "password": PASSWORD})
    assert r.url.path == "/console/" and "Dashboard" in r.text and 'lang="en"' in r.text
    # the command line sets it for the user, in every browser at once
    monkeypatch.setenv("LOA_ACTOR", "trưởng-phòng")
    said = ok(invoke(workdir, "users", "language", "ben", "vi", "--reason", "cán bộ đọc tiếng Việt")).stdout
    assert "ben: language en → vi" in said
    assert "Tổng quan" in ben.get("/console/").text and "Tổng quan" in other.get("/console/").text
    one_line_error(invoke(workdir, "users", "language", "nobody", "en"), "no user named 'nobody'")
    assert invoke(workdir, "users", "language", "ben", "fr").exit_code != 0
    entries = [(e.actor, e.before, e.after, e.reason) for e in audit.query(engine, object="user:ben")
               if e.action == "users.language"]
    assert entries == [("user:ben", {"language": "vi"}, {"language": "en"}, "chosen in the console"),
                       ("trưởng-phòng", {"language": "en"}, {"language": "vi"}, "cán bộ đọc tiếng Việt")]
    # choosing the language already set writes nothing; nobody sets another user's language but an admin
    ben.post("/console/language", data={"csrf": csrf(home), "lang": "vi", "next": "/console/"})
    assert len([e for e in audit.query(engine, object="user:ben") if e.action == "users.language"]) == 2
    auth.add_user(engine, "os:test", "cam", PASSWORD, "approver")
    with pytest.raises(auth.Forbidden):
        auth.set_language(engine, auth.Principal("user", "cam", "approver"), "ben", "en")
    auth.set_language(engine, auth.Principal("user", "root", "admin"), "ben", "en")
    with pytest.raises(LoaError, match="unknown language"):
        auth.set_language(engine, "os:test", "ben", "fr")


def test_a_district_viewer_sees_only_its_district(engine: Engine, web: Web) -> None:
    viewer = sign_in(web, "moc", "viewer", "126")
    home = viewer.get("/console/").text
    assert "mocchau" in home and "bluezone" not in home
    assert viewer.get("/console/campaigns/bluezone").status_code == 403
    assert viewer.get("/console/reports/bluezone").status_code == 403
    report = viewer.get("/console/reports/mocchau", params={"level": "province"})
    assert report.status_code == 200 and 'data-code="14"' not in report.text     # the province is outside
    everyone = sign_in(web, "all", "viewer")
    assert 'data-code="14"' in everyone.get("/console/reports/mocchau", params={"level": "province"}).text
    csv = everyone.get("/console/reports/mocchau/report.csv").text
    assert csv.startswith("code,") or "code" in csv.splitlines()[0]
    assert "<html" in everyone.get("/console/reports/mocchau/report.html").text
    # a viewer has no buttons, and its posts are refused by the control plane
    page = viewer.get("/console/campaigns/mocchau").text
    assert "/action/pause" not in page
    post(viewer, "/console/campaigns/mocchau", "/console/campaigns/mocchau/action/pause", reason="x")
    assert state_of(engine, "mocchau") == "active"


def test_pause_resume_and_cancel_follow_the_roles_with_their_audit_entries(engine: Engine, web: Web) -> None:
    operator = sign_in(web, "olga", "operator")
    url = "/console/campaigns/bluezone"
    page = post(operator, url, url + "/action/pause", reason="")
    assert "Hãy nêu lý do" in page and state_of(engine, "bluezone") == "active"
    post(operator, url, url + "/action/pause", reason="sai nội dung")
    assert state_of(engine, "bluezone") == "paused"
    page = post(operator, url, url + "/action/resume")
    assert "Không thực hiện được: vai trò người vận hành không được phép thực hiện campaigns.resume: cần vai trò " \
           "người phê duyệt trở lên (người dùng olga (người vận hành))" in page   # the engine's refusal, in Vietnamese
    assert state_of(engine, "bluezone") == "paused"
    approver = sign_in(web, "anh", "approver")
    post(approver, url, url + "/action/resume")
    assert state_of(engine, "bluezone") == "active"
    post(approver, url, url + "/action/cancel", reason="thôi")
    assert state_of(engine, "bluezone") == "cancelled"
    actions = [(e.actor, e.action) for e in audit.query(engine, object="campaign:bluezone")
               if e.action.startswith("campaigns.") and e.action not in ("campaigns.apply", "campaigns.review")]
    assert actions == [("user:olga", "campaigns.pause"), ("user:anh", "campaigns.resume"),
                       ("user:anh", "campaigns.cancel")]


def test_the_engines_refusals_and_the_samples_are_in_the_users_language(engine: Engine, web: Web) -> None:
    operator = sign_in(web, "olga", "operator")
    url = "/console/campaigns/bluezone"
    post(operator, url, url + "/action/pause", reason="sai nội dung")
    page = post(operator, url, url + "/action/pause", reason="lần nữa")
    assert ("Không thực hiện được: chiến dịch bluezone đang ở trạng thái tạm dừng: chỉ chiến dịch ở trạng thái "
            "đang chạy mới có thể tạm dừng") in page
    assert "is paused" not in page
    page = post(operator, url, url + "/action/submit")
    assert "chỉ chiến dịch ở trạng thái bản nháp mới có thể trình phê duyệt" in page
    operator.post("/console/language", data={"csrf": csrf(page), "lang": "en", "next": url})
    page = post(operator, url, url + "/action/pause", reason="again")
    assert "Not done: campaign bluezone is paused: only a campaign that is active can be paused" in page
    page = post(operator, url, url + "/action/resume")
    assert "Not done: campaigns.resume is not allowed for role operator: it needs approver or above" in page
    # the preview's samples: whom and by which channel, in the reader's language
    approver = sign_in(web, "anh", "approver")
    page = approver.get("/console/campaigns/mocchau").text
    assert "· tin nhắn SMS ·" in page and "· sms ·" not in page
    with engine.begin() as conn:
        conn.execute(db.subscribers.update().values(name=""))
    page = approver.get("/console/campaigns/mocchau").text
    assert "(không có tên) " in page and "(no name)" not in page
    approver.post("/console/language", data={"csrf": csrf(page), "lang": "en", "next": "/console/"})
    page = approver.get("/console/campaigns/mocchau").text
    assert "(no name) " in page and "· SMS ·" in page


def test_editing_validates_before_saving_and_counts_parts(engine: Engine, web: Web) -> None:
    operator = sign_in(web, "olga", "operator")
    plain = operator.get("/console/measure", params={"text": "Cai Bluezone"}).text
    accented = operator.get("/console/measure", params={"text": "Cài Bluezone để bảo vệ mình " * 3}).text
    assert "GSM-7" in plain and "1 phần SMS" in plain
    assert "UCS-2" in accented and "2 phần SMS" in accented
    form = {"name": "nhac-nho", "description": "Nhắc", "areas": "Huyện Mộc Châu", "text": "Xin chào {{ subscriber.name }}",
            "window_start": "00:00", "window_end": "24:00", "holdout": "0.1", "goal_share": "0.5"}
    page = post(operator, "/console/campaigns/new", "/console/campaigns/save", **(form | {"areas": "Nowhere"}))
    assert "chưa lưu gì" in page
    with engine.connect() as conn:
        assert conn.scalar(select(db.campaigns.c.id).where(db.campaigns.c.name == "nhac-nho")) is None
    page = post(operator, "/console/campaigns/new", "/console/campaigns/save", **form)
    assert "Đã lưu phiên bản 1" in page
    toml_url = "/console/campaigns/nhac-nho/toml"
    page = post(operator, toml_url, toml_url, toml='name = "nhac-nho"\nchannels = ["fax"]\n')
    assert "channels[0]: không có kênh" in page and "unknown channel" not in page and "chưa lưu gì" in page
    page = post(operator, toml_url, toml_url, toml='name = "nhac-nho"\nchannels = ["sms"]\nholdout = 2\n')
    assert "holdout: phải là một tỷ lệ trong [0; 1), nhưng nhận được 2" in page      # the validation, in Vietnamese
    toml = CAMPAIGN.format(name="nhac-nho").replace('template = "sms/nhac-nho.j2"', 'gateway = "nope"\ntemplate = "sms/x.j2"')
    page = post(operator, toml_url, toml_url, toml=toml)
    assert "sms.gateway: không có cổng gửi tin &#39;nope&#39;" in page and "chưa lưu gì" in page
    # a district operator may not draft for the whole province
    district = sign_in(web, "dan", "operator", "126")
    page = post(district, "/console/campaigns/new", "/console/campaigns/save", **(form | {"name": "x", "areas": "Sơn La"}))
    assert "Không thực hiện được" in page or "chưa lưu gì" in page
    with engine.connect() as conn:
        assert conn.scalar(select(db.campaigns.c.id).where(db.campaigns.c.name == "x")) is None


def test_days_are_typed_dd_mm_yyyy_and_a_bad_one_is_marked_on_its_field(engine: Engine, web: Web) -> None:
    operator = sign_in(web, "olga", "operator")
    new = operator.get("/console/campaigns/new").text
    assert 'type="date"' not in new and 'id="start" name="start" type="text"' in new and "ngày/tháng/năm" in new
    form = {"name": "ngay", "description": "Nhắc tiêm", "areas": "Huyện Mộc Châu", "text": "Xin chào",
            "window_start": "00:00", "window_end": "24:00", "holdout": "0.1"}

    def save(**days: str) -> tuple[int, str]:
        r = operator.post("/console/campaigns/save", data={"csrf": csrf(new), **form, **days})
        return r.status_code, r.text

    for bad in ("31/02/2027", "2027-01-05", "5/1/27", "05/01/2027x", "hôm nay"):
        status, page = save(start=bad)
        assert status == 422, (bad, page[:300])
        field = re.search(r'<input id="start"[^>]*>', page)
        assert field and 'aria-invalid="true"' in field.group(0) and f'value="{bad}"' in field.group(0), bad
        assert 'id="start-error"' in page and "Không phải ngày" in page and 'value="Nhắc tiêm"' in page
        assert 'id="end-error"' not in page
    status, page = save(start="31/01/2027", end="05/01/2027")
    assert status == 422 and 'id="end-error"' in page and "Ngày cuối đứng trước ngày đầu" in page
    with engine.connect() as conn:
        assert conn.scalar(select(db.campaigns.c.id).where(db.campaigns.c.name == "ngay")) is None
    status, page = save(start="5/1/2027", end="31/01/2027")
    assert status == 200 and "Đã lưu phiên bản 1" in page
    from loa import versions

    with engine.connect() as conn:
        stored = versions.stored(conn, "ngay")
    assert stored is not None and "start = 2027-01-05" in stored.toml and "end = 2027-01-31" in stored.toml
    edit = operator.get("/console/campaigns/ngay/edit").text
    assert 'value="05/01/2027"' in edit and 'value="31/01/2027"' in edit
    # the date of an import's figures is read the same way
    r = operator.post("/console/imports", data={"csrf": csrf(new), "kind": "snapshots", "as_of": "2020-08-17"},
                      files={"file": ("s.csv", b"area,value\n", "text/csv")})
    assert r.status_code == 422 and 'id="as_of-error"' in r.text and 'value="2020-08-17"' in r.text


@contextmanager
def statements(engine: Engine) -> Iterator[list[str]]:
    """The SQL statements run on ``engine`` meanwhile."""
    seen: list[str] = []

    def count(conn: object, cursor: object, sql: str, *args: object) -> None:
        seen.append(sql)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_progress_is_polled_with_one_aggregate_and_an_unchanged_poll_renders_nothing(
        engine: Engine, web: Web, world: Config, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from loa.campaign import load_one
    from loa.plan import plan_run
    from loa.web.console import pages

    admin = sign_in(web, "root", "admin")
    home = admin.get("/console/").text
    assert 'hx-get="/console/progress"' in home and 'hx-trigger="every 5s"' in home and "If-None-Match" in home
    first = admin.get("/console/progress")
    assert first.status_code == 200 and 'data-campaign="bluezone"' in first.text and 'data-campaign="mocchau"' in first.text
    etag = first.headers["etag"]
    assert etag.startswith('"') and first.headers["cache-control"] == "no-cache, private"
    # nothing changed: answered before any template is rendered
    monkeypatch.setattr(pages, "fragment", lambda *a, **k: pytest.fail("rendered an unchanged poll"))
    with statements(engine) as seen:
        again = admin.get("/console/progress", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    assert sum(" outbox" in q for q in seen) == 1, seen          # one aggregate over the ledger
    by_htmx = admin.get("/console/progress", headers={"If-None-Match": etag, "HX-Request": "true"})
    assert by_htmx.status_code == 204 and by_htmx.content == b""
    monkeypatch.undo()
    # five messages sent: a new ETag and the new count
    O, R, C = db.outbox, db.runs, db.campaigns
    with engine.begin() as conn:
        ids = list(conn.scalars(select(O.c.id).join(R, R.c.id == O.c.run_id).join(C, C.c.id == R.c.campaign_id)
                                .where(C.c.name == "bluezone", O.c.state == "planned").order_by(O.c.id).limit(5)))
        conn.execute(update(O).where(O.c.id.in_(ids)).values(state="sent", sent_at=db.utcnow(), cost_vnd=800))
    moved = admin.get("/console/progress", headers={"If-None-Match": etag})
    assert moved.status_code == 200 and moved.headers["etag"] != etag
    assert re.search(r'data-campaign="bluezone">.*?data-col="sent">5<', moved.text, re.DOTALL)
    assert "4.000" in moved.text                                     # the spend, in VND
    # a campaign's page polls its own row; a district viewer gets only its district's, whatever it asks
    one = admin.get("/console/progress", params={"campaign": "mocchau"}).text
    assert 'data-campaign="mocchau"' in one and "bluezone" not in one
    moc = sign_in(web, "moc", "viewer", "126")
    assert 'data-campaign="bluezone"' not in moc.get("/console/progress", params={"campaign": "bluezone"}).text
    assert "mocchau" in moc.get("/console/progress").text and "bluezone" not in moc.get("/console/progress").text
    # the statements of a poll do not grow with the number of campaigns, bound user or not
    counts = {}
    for n in (2, 5):
        for i in range(len(counts) and 3):
            add_campaign(workdir, f"them{i}", "Huyện Mộc Châu")
            plan_run(engine, world, load_one(world.campaigns_dir, f"them{i}"))
        for who in (admin, moc):
            who.get("/console/progress")
            with statements(engine) as seen:
                assert who.get("/console/progress").status_code == 200
            counts[n, who is admin] = len(seen)
    assert "them2" in admin.get("/console/progress").text
    assert counts[2, True] == counts[5, True] and counts[2, False] == counts[5, False], counts


def test_a_campaigns_messages_are_masked_and_a_number_is_shown_only_for_a_reason_and_audited(
        engine: Engine, web: Web, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOA_SUBJECT_KEY", "9" * 64)
    O, R, C, S = db.outbox, db.runs, db.campaigns, db.subscribers
    with engine.connect() as conn:
        ledger = conn.execute(select(O.c.id, S.c.phone).join(S, S.c.id == O.c.subscriber_id)
                              .join(R, R.c.id == O.c.run_id).join(C, C.c.id == R.c.campaign_id)
                              .where(C.c.name == "bluezone").order_by(O.c.id)).all()
    assert len(ledger) > 50
    first, phone = ledger[0]
    operator = sign_in(web, "olga", "operator")
    url = "/console/campaigns/bluezone/messages"
    assert url in operator.get("/console/campaigns/bluezone").text
    page = operator.get(url).text
    assert re.findall(r"\+84\d{9}", page) == [] and mask(phone) in page
    assert "Hiện số" in page and f'data-message="{first}"' in page and 'rel="next"' in page
    assert len(re.findall(r"data-message=", page)) == 50 and "trang 1/2" in page
    second = operator.get(url, params={"page": "2"}).text
    assert len(re.findall(r"data-message=", second)) == len(ledger) - 50 and f'data-message="{first}"' not in second
    reveal = f"{url}/{first}/reveal"

    def reveals() -> list[audit.Entry]:
        return [e for e in audit.query(engine, action="subjects") if e.action == "subjects.reveal"]

    # no reason: the field says so, no number, no entry; no form token: refused
    r = operator.post(reveal, data={"csrf": csrf(page), "reason": "  "})
    assert r.status_code == 422 and f'id="why-{first}-error"' in r.text and phone not in r.text and not reveals()
    assert operator.post(reveal, data={"reason": "x"}).status_code == 403 and not reveals()
    r = operator.post(reveal, data={"csrf": csrf(page), "reason": "dân hỏi lại số 0912345678", "page": "1"})
    assert r.status_code == 200 and f'data-phone="{first}">{phone}<' in r.text
    assert r.headers["cache-control"] == "no-store" and re.findall(r"\+84\d{9}", r.text) == [phone]
    [entry] = reveals()
    assert (entry.actor, entry.object_type, entry.after) == ("user:olga", "subject", {"campaign": "bluezone",
                                                                                       "message": first})
    assert entry.object_id.startswith("#") and phone not in str(entry.as_dict()) and "0912345678" not in entry.reason
    # a viewer never sees the button, and is refused
    viewer = sign_in(web, "vy", "viewer")
    seen = viewer.get(url).text
    assert "Hiện số" not in seen and "/reveal" not in seen and "che" in seen
    r = viewer.post(reveal, data={"csrf": csrf(seen), "reason": "tò mò"})
    assert r.status_code == 403 and phone not in r.text and len(reveals()) == 1
    # a district operator sees its district's messages only, and reveals none of another campaign
    district = sign_in(web, "dan", "operator", "126")
    assert district.get(url).status_code == 403
    assert district.post(reveal, data={"csrf": csrf(seen), "reason": "x"}).status_code in (403, 404)
    assert district.get("/console/campaigns/mocchau/messages").status_code == 200
    assert len(reveals()) == 1


def test_an_upload_shows_its_counts_and_offers_its_rejects(engine: Engine, web: Web) -> None:
    operator = sign_in(web, "olga", "operator")
    token = csrf(operator.get("/console/imports").text)
    body = "phone,name,area\n0913000001,Lan,126\nnot-a-phone,Bad,126\n"
    r = operator.post("/console/imports", data={"csrf": token, "kind": "subscribers"},
                      files={"file": ("people.csv", body.encode(), "text/csv")})
    assert r.status_code == 200 and re.search(r"/console/imports/\d+$", str(r.url)), r.text[:300]
    deadline = time.monotonic() + 30
    while 'data-state="running"' in (page := operator.get(str(r.url), params={"fragment": "1"}).text):
        assert time.monotonic() < deadline, page
        time.sleep(0.05)
    assert re.search(r'data-count="imported">1<', page) and re.search(r'data-count="rejected">1<', page)
    rejects = operator.get(str(r.url) + "/rejects.csv")
    assert rejects.status_code == 200 and "not-a-phone" in rejects.text
    viewer = sign_in(web, "vy", "viewer")
    assert viewer.get("/console/imports").status_code == 403


def test_the_reports_notes_are_in_the_readers_language(engine: Engine, web: Web) -> None:
    # the province's population is not the sum of its two districts': the report says so under the table
    vi, en = sign_in(web, "vu", "viewer"), sign_in(web, "eve", "viewer")
    en.post("/console/language", data={"csrf": csrf(en.get("/console/").text), "lang": "en", "next": "/console/"})

    def notes(client: TestClient, **params: str) -> list[str]:
        page = client.get("/console/reports/mocchau", params=params).text
        section = page.split('<section aria-labelledby="notes-h"', 1)
        assert len(section) == 2, page[-2000:]
        return re.findall(r"<li>([^<]*)</li>", section[1].split("</section>", 1)[0])

    said = notes(vi)
    assert said == [("Sơn La: dân số ghi là 1.248.415, nhưng 2 địa bàn cấp quận/huyện của nó cộng lại được 275.746 "
                     "(chênh lệch +972.669); tỷ lệ ở đây dùng số liệu riêng của từng địa bàn")], said
    assert notes(vi, print="1") == said                   # the print page too
    assert notes(en) == [("Sơn La: population given as 1,248,415, but its 2 district areas add up to 275,746 "
                          "(difference +972,669); shares here use each area&#39;s own figure")]


def _uploaded(client: TestClient, kind: str, body: bytes) -> tuple[str, str]:
    """Upload ``body`` as a ``kind`` file; the job's URL and its page once the import is over."""
    token = csrf(client.get("/console/imports").text)
    r = client.post("/console/imports", data={"csrf": token, "kind": kind},
                    files={"file": ("people.csv", body, "text/csv")})
    assert r.status_code == 200 and re.search(r"/console/imports/\d+$", str(r.url)), r.text[:300]
    deadline = time.monotonic() + 30
    while 'data-state="running"' in (page := client.get(str(r.url)).text):
        assert time.monotonic() < deadline, page
        time.sleep(0.05)
    return str(r.url), page


def test_an_imports_reasons_and_failure_are_in_the_readers_language(engine: Engine, web: Web) -> None:
    from loa import imports

    vi = sign_in(web, "vu", "operator")                    # Vietnamese: the default
    en = sign_in(web, "eve", "operator")
    en.post("/console/language", data={"csrf": csrf(en.get("/console/").text), "lang": "en", "next": "/console/"})
    body = "phone,name,area\n0913000001,Lan,126\nnot-a-phone,Bad,126\n0913000002,Hoa,Atlantis\n"
    url, page = _uploaded(vi, "subscribers", body.encode())
    reasons = re.findall(r"<td data-reason>([^<]*)</td>", page)
    assert reasons == ["không phải số điện thoại Việt Nam hợp lệ",
                       "không có địa bàn nào có mã hoặc tên &#39;Atlantis&#39;"], page
    assert re.findall(r"<td data-reason>([^<]*)</td>", en.get(url).text) == [
        "not a valid Vietnamese number", "no area with code or name &#39;Atlantis&#39;"]
    # the download: the same machine-readable columns, the reason in the reader's language
    csv_vi, csv_en = vi.get(url + "/rejects.csv").text, en.get(url + "/rejects.csv").text
    assert csv_vi.splitlines()[0] == csv_en.splitlines()[0] == "line,column,reason,phone,name,area"
    assert csv_vi.splitlines()[1:] == ["3,phone,không phải số điện thoại Việt Nam hợp lệ,not-a-phone,Bad,126",
                                       "4,area,không có địa bàn nào có mã hoặc tên 'Atlantis',0913000002,Hoa,Atlantis"]
    assert csv_en.splitlines()[1] == "3,phone,not a valid Vietnamese number,not-a-phone,Bad,126"
    job_id = int(url.rsplit("/", 1)[1])
    assert (imports.rejects(engine, job_id) or "").splitlines() == csv_en.splitlines()   # the API's: English
    # a failure is kept so that each reader reads it in their language
    url, page = _uploaded(vi, "subscribers", b"phone,name,area\n0913000003,Lan,126\n0913000004,\xff\xfe,126\n")
    failure = re.search(r"<p class=\"flash error\" data-failure>([^<]*)</p>", page)
    assert failure and failure.group(1) == (
        "tệp:3: không phải văn bản UTF-8 (hãy lưu tệp dạng &#34;CSV UTF-8&#34;); việc nhập dừng ở đó: "
        "1 dòng trước đó đã được nhập, 0 dòng bị loại"), page
    english = en.get(url).text
    assert ("the file:3: not UTF-8 text (save the file as &#34;CSV UTF-8&#34;); the import stopped there: "
            "1 rows before it were imported, 0 rejected") in english
    assert imports.get(engine, int(url.rsplit("/", 1)[1])).as_dict()["failure"].startswith("the file:3: not UTF-8")
    # a file refused when it is uploaded: said of "the file", in the reader's language
    token = csrf(vi.get("/console/imports").text)
    refused = vi.post("/console/imports", data={"csrf": token, "kind": "subscribers"},
                      files={"file": ("people.csv", b"name,area\nLan,126\n", "text/csv")})
    assert refused.status_code == 422
    assert "tệp: tiêu đề sai cho subscribers: thiếu phone (tìm thấy: name, area; cần " in refused.text, refused.text[-3000:]
    assert "/upload.csv" not in refused.text

