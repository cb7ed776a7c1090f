"""The console's sessions and forms under attack, in process on a real database.

A session cookie is read again against the database on every request: a user disabled or
given a lower role loses the session's powers at once, and no session outlives its lifetime.
A form's CSRF token belongs to one browser.  Passwords and API keys' secrets appear in no page
and no log line; every page, an error page included, carries the Content-Security-Policy.
"""

from __future__ import annotations

import logging
import re
from datetime import timedelta

import pytest
import time_machine
from sqlalchemy.engine import Engine
from test_api import state_of, world  # noqa: F401 - `world` is a fixture
from test_console import PASSWORD, browser, csrf, post, sign_in
from test_console import web as web  # noqa: PLC0414 - the fixture, shared

from loa import auth
from loa.web import Web
from loa.web.console.session import LIFETIME


@pytest.fixture(autouse=True)
def quick_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cheap argon2 parameters: these tests sign in often, and are not about the hash's cost."""
    from argon2 import PasswordHasher

    cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(auth, "_hasher", lambda: cheap)


def test_a_disabled_user_or_a_lowered_role_loses_its_session_at_once(engine: Engine, web: Web) -> None:
    approver = sign_in(web, "anh", "approver")
    url = "/console/campaigns/bluezone"
    assert "/action/cancel" in approver.get(url).text
    auth.set_role(engine, "os:test", "anh", "viewer", "moved to another office")
    page = approver.get(url).text
    assert "/action/cancel" not in page and "/action/pause" not in page
    post(approver, url, url + "/action/cancel", reason="thử")
    assert state_of(engine, "bluezone") == "active"          # the old session's role is not kept
    auth.disable_user(engine, "os:test", "anh", "left")
    assert approver.get(url).url.path == "/console/login"


def test_a_session_ends_with_its_lifetime(web: Web) -> None:
    client = sign_in(web, "lan", "viewer")
    assert client.get("/console/").url.path == "/console/"
    with time_machine.travel(timedelta(seconds=LIFETIME + 60), tick=False):
        assert client.get("/console/").url.path == "/console/login"


def test_a_form_token_of_another_browser_is_refused(engine: Engine, web: Web) -> None:
    operator = sign_in(web, "olga", "operator")
    intruder = sign_in(web, "ivan", "operator")
    token = csrf(intruder.get("/console/campaigns/bluezone").text)       # the intruder's own, valid token
    r = operator.post("/console/campaigns/bluezone/action/pause", data={"csrf": token, "reason": "csrf"})
    assert r.status_code == 403 and state_of(engine, "bluezone") == "active"


def test_the_language_form_leads_nowhere_but_the_console(web: Web) -> None:
    client = sign_in(web, "lan", "viewer")
    token = csrf(client.get("/console/").text)
    for target in ("https://evil.example/", "//evil.example/console/", "/api/v1/campaigns", "/console/../report",
                   "/console/%2e%2e/report"):
        r = client.post("/console/language", data={"csrf": token, "lang": "en", "next": target},
                        follow_redirects=False)
        assert r.status_code == 303
        location = r.headers["location"]
        assert re.fullmatch(r"/console/[\w/-]*", location), (target, location)


def test_passwords_and_key_secrets_appear_in_no_page_and_no_log(engine: Engine, web: Web,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _, secret = auth.create_key(engine, "os:test", "operator")
    admin = sign_in(web, "root", "admin")
    client = browser(web)
    token = csrf(client.get("/console/login").text)
    client.post("/console/login", data={"csrf": token, "name": "root", "password": "guess-" + PASSWORD})
    users = admin.get("/console/users").text
    post(admin, "/console/users", "/console/users", name="moi", password="mat-khau-moi-123", role="viewer", area="")
    pages = [admin.get(u).text for u in ("/console/users", "/console/keys", "/console/audit", "/console/gateways")]
    assert "moi" in pages[0]
    for text in [users, *pages]:
        assert PASSWORD not in text and "mat-khau-moi-123" not in text and secret not in text
        assert secret.split("_", 2)[2] not in text                  # the key's secret part, never its prefix alone
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert PASSWORD not in logged and "mat-khau-moi-123" not in logged and secret not in logged


def test_every_page_carries_the_policy_and_no_inline_script(web: Web) -> None:
    admin = sign_in(web, "root", "admin")
    for url in ("/console/", "/console/campaigns/bluezone", "/console/campaigns/new", "/console/reports/bluezone",
                "/console/imports", "/console/gateways", "/console/users", "/console/keys", "/console/audit",
                "/console/campaigns/nope", "/console/campaigns/bluezone/edit", "/console/campaigns/bluezone/toml"):
        r = admin.get(url)
        assert r.status_code in (200, 404), (url, r.status_code)
        policy = r.headers.get("Content-Security-Policy", "")
        assert "script-src 'self' 'nonce-" in policy and "unsafe-inline" not in policy.split(";")[1], (url, policy)
        assert r.headers["X-Frame-Options"] == "DENY" and r.headers["Cache-Control"] == "no-store", url
        assert not re.search(r"<script(?![^>]*\bsrc=)", r.text), url           # every script is a file
        assert not re.search(r"\son[a-z]+=", r.text), url                       # and no handler attribute
        for tag in re.findall(r"<(?:input|select|textarea|progress)\b[^>]*>", r.text):   # every field labelled
            if 'type="hidden"' in tag or "aria-label=" in tag:
                continue
            field = re.search(r'\bid="([^"]+)"', tag)
            assert field and f'for="{field.group(1)}"' in r.text, (url, tag)


def test_only_a_role_with_personal_data_sees_subscribers_masked_and_each_look_is_audited(engine: Engine,
                                                                                      web: Web) -> None:
    from loa import audit

    def looks() -> list[str]:
        return [e.actor for e in audit.query(engine, action="campaigns.review")]

    viewer = sign_in(web, "vy", "viewer")
    page = viewer.get("/console/campaigns/mocchau").text
    assert "Người " not in page and not re.search(r"\+?84\d{9}|09\d{8}", page)     # no name, no number
    assert looks() == []
    operator = sign_in(web, "olga", "operator")
    page = re.sub(r'placeholder="[^"]*"', "", operator.get("/console/campaigns/mocchau").text)
    assert "Người " in page                                              # a sample subscriber, by name
    assert re.search(r"\+8491\*{4}\d{3}", page) and not re.search(r"\+?84912\d{6}|0912\d{6}", page)
    operator.get("/console/campaigns/mocchau")
    assert looks() == ["user:olga", "user:olga"]                          # every look, by whom


def test_signing_out_ends_the_session_for_every_copy_of_its_cookie(engine: Engine, web: Web) -> None:
    from loa import db

    client = sign_in(web, "lan", "viewer")
    copy = browser(web)                                   # another tab, or whoever copied the cookie
    copy.cookies.set("loa_session", client.cookies["loa_session"], domain="testserver.local")
    assert copy.get("/console/").url.path == "/console/"
    client.post("/console/logout", data={"csrf": csrf(client.get("/console/").text)})
    assert client.get("/console/").url.path == "/console/login"
    assert copy.get("/console/").url.path == "/console/login"
    again = sign_in(web, "lan2", "viewer")                # a new session of the same browser is another one
    assert again.get("/console/").url.path == "/console/"
    with engine.connect() as conn:
        [row] = conn.execute(db.console_sessions_ended.select()).all()
    assert row.user_name == "lan" and row.expires_at > row.ended_at
