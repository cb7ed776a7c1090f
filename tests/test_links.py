"""Tracked links: signed per-message codes, rendered at send time, clicks recorded, forgeries refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from sqlalchemy import select
from sqlalchemy.engine import Engine

from conftest import write
from loa import db, importer, links
from loa.campaign import load_one
from loa.config import Config, load
from loa.dispatch import Dispatcher
from loa.plan import plan_run
from loa.serve import Service

PUBLIC = "https://l.example.vn"


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(links.SECRET_ENV, "a-test-secret-of-32-characters!!")


def test_codes_round_trip_and_forgeries_are_refused() -> None:
    for oid in (1, 61, 62, 12345, 10**10):
        code = links.code_for(oid)
        assert links.outbox_id(code) == oid
        assert len(code) <= 14
    code = links.code_for(4242)
    flipped = code[:-1] + ("a" if code[-1] != "a" else "b")
    assert links.outbox_id(flipped) is None                       # signature no longer matches
    assert links.outbox_id(links.code_for(4243)[:-6] + code[-6:]) is None   # another id, this id's signature
    assert links.outbox_id("") is None and links.outbox_id("../etc") is None


def test_codes_depend_on_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    code = links.code_for(777)
    monkeypatch.setenv(links.SECRET_ENV, "another-secret-also-32-characters")
    assert links.outbox_id(code) is None
    monkeypatch.setenv(links.SECRET_ENV, "short")
    with pytest.raises(Exception, match="LOA_LINK_SECRET"):
        links.code_for(1)


@pytest.fixture
def linked(workdir: Path, engine: Engine, areas_csv: Path) -> Config:
    text = (workdir / "config.toml").read_text(encoding="utf-8")
    write(workdir / "config.toml", text + f'\n[serve]\npublic_url = "{PUBLIC}"\n')
    write(workdir / "templates" / "sms" / "l.j2", "Cai Bluezone: {{ link }}")
    write(workdir / "campaigns" / "l.toml", '''
        name = "l"
        channels = ["sms"]
        link = "https://bluezone.gov.vn"
        [sms]
        template = "sms/l.j2"
        gateway = "jsonl"
        [window]
        start = "00:00"
        end = "23:59:59"
    ''')
    importer.run_import(engine, importer.AreasHandler(engine, areas_csv), areas_csv)
    subs = write(workdir / "subs.csv", "phone,area\n0912000001,116\n0912000002,125\n")
    importer.run_import(engine, importer.SubscribersHandler(engine, subs), subs)
    return load(workdir / "config.toml")


def test_each_message_gets_its_own_link_and_a_click_redirects_and_is_recorded(
        linked: Config, engine: Engine, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workdir)
    plan_run(engine, linked, load_one(linked.campaigns_dir, "l"))
    Dispatcher(engine, linked).run_until_empty()
    sent = [json.loads(line) for line in (workdir / "sent.jsonl").read_text(encoding="utf-8").splitlines()]
    urls = [m["text"].split(": ", 1)[1] for m in sent]
    assert len(set(urls)) == 2 and all(u.startswith(f"{PUBLIC}/l/") for u in urls)

    service = Service(engine, linked, port=0, workers=0, scheduler=False)
    service.start()
    try:
        base = f"http://127.0.0.1:{service.port}"
        code = urls[0].rsplit("/", 1)[1]
        answer = requests.get(f"{base}/l/{code}", allow_redirects=False, timeout=10)
        assert answer.status_code == 302 and answer.headers["Location"] == "https://bluezone.gov.vn"
        forged = requests.get(f"{base}/l/{code[:-1]}{'x' if code[-1] != 'x' else 'y'}", allow_redirects=False,
                              timeout=10)
        assert forged.status_code == 404
        unknown = requests.get(f"{base}/l/{links.code_for(987654)}", allow_redirects=False, timeout=10)
        assert unknown.status_code == 404
    finally:
        service.stop()
    with engine.connect() as conn:
        clicks = conn.execute(select(db.events.c.type, db.events.c.outbox_id, db.events.c.source)).all()
        oid = links.outbox_id(code)
        phone = conn.scalar(select(db.subscribers.c.phone).join(db.outbox, db.outbox.c.subscriber_id ==
                                                                  db.subscribers.c.id).where(db.outbox.c.id == oid))
    assert clicks == [("clicked", oid, "link")]
    assert phone == sent[0]["to"]
