"""``/api/v1``: campaign definitions (apply, versions, diff, export), previews and test sends.

The world of test_api: Sơn La's Mộc Châu (126, 40 people) and Mai Sơn (125, 24), two campaigns
planned from their files, ``bluezone`` for all of Sơn La and ``mocchau`` for Mộc Châu only.
Applying over the API is ``loa campaigns apply``: the same engine function, the same roles
(an operator drafts), the same audit entries; the API adds the area of the key.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path as FilePath

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient
from test_api import actor, error, key, state_of
from test_api import client as client  # noqa: PLC0414 - the fixtures, shared
from test_api import world as world  # noqa: PLC0414

from loa import audit, db
from loa.config import ApprovalPolicy, Config
from loa.web import Web

REMIND = """name = "remind"
description = "{description}"
channels = ["sms"]
holdout = 0
[segment]
areas = ["{area}"]
[sms]
template = "sms/remind.j2"
[window]
start = "00:00"
end = "24:00"
"""
TEXT = "Chào {{ subscriber.name }}, hãy cài Bluezone.\n"


def remind(description: str = "Nhắc cài Bluezone", area: str = "Sơn La") -> str:
    return REMIND.format(description=description, area=area)


def files(toml: str, template: str = TEXT) -> list[tuple[str, tuple[str, bytes]]]:
    return [("campaign", ("remind.toml", toml.encode())), ("template", ("sms/remind.j2", template.encode()))]


def version_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(db.campaign_versions)) or 0)


def test_apply_adds_a_version_only_when_the_content_changed_by_role_and_area(engine: Engine,
                                                                             client: TestClient) -> None:
    operator, viewer, moc_chau = key(engine, "operator"), key(engine, "viewer"), key(engine, "operator", "126")
    before = version_count(engine)
    error(client.post("/api/v1/campaigns", files=files(remind()), headers=viewer), 403)
    assert "outside the area" in error(client.post("/api/v1/campaigns", files=files(remind()), headers=moc_chau), 403)
    assert version_count(engine) == before                     # refused: nothing applied

    r = client.post("/api/v1/campaigns", files=files(remind()), params={"reason": "đợt 1"}, headers=operator)
    assert r.status_code == 200, r.text
    assert r.json() == {"campaigns": [{"name": "remind", "version": 1, "added": True, "before": None,
                                       "after": "active", "approval": None}], "changed": 1}
    r = client.post("/api/v1/campaigns", files=files(remind()), headers=operator)     # the same content again
    assert r.json()["changed"] == 0 and r.json()["campaigns"][0] | {"before": None} == {
        "name": "remind", "version": 1, "added": False, "before": None, "after": "active", "approval": None}
    # a TOML body alone: its templates are those of its current version (the server has none of it)
    r = client.post("/api/v1/campaigns", content=remind("Nhắc lần 2").encode(),
                    headers=operator | {"Content-Type": "application/toml"})
    assert r.status_code == 200 and r.json()["campaigns"][0]["version"] == 2, r.text
    assert version_count(engine) == before + 2
    # a key bound to Mộc Châu may not take a Sơn La campaign, nor move one into its area
    assert "outside the area" in error(client.post("/api/v1/campaigns", content=remind("x", "Huyện Mộc Châu"),
                                                   headers=moc_chau), 403)
    # a file that does not validate: one line naming it, without the server's folders, nothing applied
    message = error(client.post("/api/v1/campaigns", content=remind().replace("template =", "tempalte ="),
                                headers=operator), 422, "campaign")
    assert "remind.toml: sms.tempalte: unknown key" in message and "/tmp" not in message and "loa-apply" not in message
    error(client.post("/api/v1/campaigns", files=[("campaign", ("x.toml", b"name = "))], headers=operator),
          422, "campaign")
    error(client.post("/api/v1/campaigns", files=files(remind(), "") + [("template", ("../x.j2", b"x"))],
                      headers=operator), 422, "template")
    assert version_count(engine) == before + 2
    applied = audit.query(engine, action="campaigns.apply", object="campaign:remind")
    assert [(e.actor, e.after["version"], e.reason) for e in applied] == [     # type: ignore[index]
        (actor(operator), 1, "đợt 1"), (actor(operator), 2, "")]

    # versions, one version, a diff, the export
    r = client.get("/api/v1/campaigns/remind/versions", headers=viewer)
    assert [(v["version"], v["current"], v["templates"], v["created_by"]) for v in r.json()] == [
        (1, False, ["sms/remind.j2"], actor(operator)), (2, True, ["sms/remind.j2"], actor(operator))]
    r = client.get("/api/v1/campaigns/remind/versions/1", headers=viewer)
    assert r.status_code == 200 and r.json()["toml"] == remind() and r.json()["templates"] == {"sms/remind.j2": TEXT}
    error(client.get("/api/v1/campaigns/remind/versions/9", headers=viewer), 404)
    diff = client.get("/api/v1/campaigns/remind/diff", headers=viewer).json()
    assert (diff["a"], diff["b"]) == (1, 2)
    assert '-description = "Nhắc cài Bluezone"\n+description = "Nhắc lần 2"\n' in diff["diff"]
    assert client.get("/api/v1/campaigns/remind/diff", params={"a": 2}, headers=viewer).json()["diff"] == ""
    exported = client.get("/api/v1/export", headers=viewer).json()["campaigns"]
    assert {c["campaign"]: c["version"] for c in exported} == {"bluezone": 1, "mocchau": 1, "remind": 2}
    assert [c["campaign"] for c in client.get("/api/v1/export", headers=key(engine, "viewer", "126"))
            .json()["campaigns"]] == ["mocchau"]


def test_editing_an_approved_campaign_over_the_api_sends_it_back_to_draft(engine: Engine, world: Config) -> None:
    from loa import approval, auth, versions

    config = dataclasses.replace(world, approval=ApprovalPolicy(advertising=True))
    versions.apply(engine, config, "os:test")
    operator, approver = key(engine, "operator"), key(engine, "approver")
    ad = remind().replace('channels = ["sms"]', 'advertising = true\nopt_out = "Tu choi QC soan TC gui 1234"\n'
                                                'channels = ["sms"]')
    web = Web(engine, config)
    try:
        with TestClient(web, raise_server_exceptions=False) as client:
            r = client.post("/api/v1/campaigns", files=files(ad), headers=operator)
            assert r.json()["campaigns"][0]["after"] == "draft" and "advertising" in r.json()["campaigns"][0]["approval"]
            assert client.post("/api/v1/campaigns/remind/submit", headers=operator).status_code == 200
            second = auth.Principal("key", actor(approver)[4:], "approver")
            approval.decide(engine, config, "remind", "approve", second)
            assert state_of(engine, "remind") == "approved"
            r = client.post("/api/v1/campaigns", files=files(ad.replace("Nhắc cài", "Nhắc lại")), headers=operator)
            assert r.json()["campaigns"][0] | {"approval": None} == {
                "name": "remind", "version": 2, "added": True, "before": "approved", "after": "draft", "approval": None}
    finally:
        web.pool.close()
    with engine.connect() as conn:
        assert conn.execute(select(db.campaigns.c.state, db.campaigns.c.approved_version)
                            .where(db.campaigns.c.name == "remind")).one() == ("draft", None)


def test_preview_renders_samples_with_encoding_parts_and_cost_for_operators(engine: Engine,
                                                                            client: TestClient) -> None:
    operator = key(engine, "operator")
    error(client.get("/api/v1/campaigns/bluezone/preview", headers=key(engine, "viewer")), 403)   # personal data
    error(client.get("/api/v1/campaigns/bluezone/preview", headers=key(engine, "operator", "126")), 403)
    r = client.get("/api/v1/campaigns/mocchau/preview", params={"count": 2}, headers=operator)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["campaign"], body["version"], body["audience"]) == ("mocchau", 1, 40)
    assert body["to_send"] + body["held_out"] == 40 and body["errors"] == []
    assert [(s["encoding"], s["parts"], s["text"]) for s in body["samples"]] == [
        ("UCS-2", 1, "Cài Bluezone để bảo vệ mình")] * 2
    assert body["estimated_parts"] == body["to_send"] and body["parts_per_message"] == 1.0
    assert body["estimate"]["messages"] == body["to_send"]
    assert [e.actor for e in audit.query(engine, action="campaigns.preview")] == [actor(operator)]


@pytest.fixture
def priced(engine: Engine, world: Config) -> Iterator[TestClient]:
    """The world with a price on the simulator gateway: 350 VND per SMS part."""
    gateways = dict(world.gateways)
    sim = gateways["sim"]
    gateways["sim"] = dataclasses.replace(sim, prices=dataclasses.replace(sim.prices, per_part=350))
    web = Web(engine, dataclasses.replace(world, gateways=gateways))
    with TestClient(web, raise_server_exceptions=False) as c:
        yield c
    web.pool.close()


def test_a_test_send_goes_to_staff_and_into_the_test_ledger_only(engine: Engine, priced: TestClient) -> None:
    operator = key(engine, "operator")
    with engine.connect() as conn:
        outbox = conn.execute(select(db.outbox.c.id, db.outbox.c.state).order_by(db.outbox.c.id)).all()
    url = "/api/v1/campaigns/mocchau/test"
    error(priced.post(url, json={"to": ["0912345678"]}, headers=key(engine, "viewer")), 403)
    error(priced.post(url, json={"to": ["0912345678"]}, headers=key(engine, "operator", "125")), 403)
    error(priced.post("/api/v1/campaigns/nope/test", json={"to": ["0912345678"]}, headers=operator), 404)
    assert "'12'" in error(priced.post(url, json={"to": ["12"]}, headers=operator), 422, "to")
    error(priced.post(url, json={"to": ["0912345678"], "subscriber": "0987654321"}, headers=operator),
          422, "subscriber")
    r = priced.post(url, json={"to": ["0912345678", "0912 345 678", "0987000111"]}, headers=operator)
    assert r.status_code == 200, r.text
    trial = r.json()
    assert trial["text"] == "Cài Bluezone để bảo vệ mình" and trial["gateway"] == "sim"
    assert [(t["phone"][-3:], t["state"] in ("sent", "delivered"), t["parts"], t["cost_vnd"])
            for t in trial["results"]] == [("678", True, 1, 350), ("111", True, 1, 350)]
    with engine.connect() as conn:
        tests = conn.execute(select(db.test_sends.c.phone, db.test_sends.c.actor, db.test_sends.c.cost_vnd)
                             .order_by(db.test_sends.c.id)).all()
        assert conn.execute(select(db.outbox.c.id, db.outbox.c.state).order_by(db.outbox.c.id)).all() == outbox
    assert tests == [("+84912345678", actor(operator), 350), ("+84987000111", actor(operator), 350)]
    [entry] = audit.query(engine, action="campaigns.test")
    assert entry.actor == actor(operator) and "+84912345678" not in str(entry.after)


def test_the_role_is_checked_before_the_campaign_is_looked_up_and_a_bound_key_learns_nothing(
        engine: Engine, client: TestClient) -> None:
    from test_api import run_of

    viewer, operator, bound = key(engine, "viewer"), key(engine, "operator"), key(engine, "viewer", "126")
    for name in ("bluezone", "nope"):        # a role too low: 403, whether the campaign exists or not
        error(client.post(f"/api/v1/campaigns/{name}/pause", json={"reason": "x"}, headers=viewer), 403)
        error(client.get(f"/api/v1/campaigns/{name}/preview", headers=viewer), 403)
        error(client.post(f"/api/v1/campaigns/{name}/approve", headers=operator), 403)
        error(client.get(f"/api/v1/campaigns/{name}/review", headers=operator), 403)
        error(client.post(f"/api/v1/campaigns/{name}/test", json={"to": ["0912345678"]}, headers=viewer), 403)
    error(client.post("/api/v1/runs/999/cancel", json={"reason": "x"}, headers=operator), 403)
    # the role, unbound: 404 for what does not exist
    error(client.post("/api/v1/campaigns/nope/pause", json={"reason": "x"}, headers=operator), 404)
    error(client.get("/api/v1/runs/999", headers=viewer), 404)
    # bound to Mộc Châu: a campaign or run outside its area and one that does not exist answer alike
    outside = error(client.get("/api/v1/campaigns/bluezone/versions", headers=bound), 403)
    unknown = error(client.get("/api/v1/campaigns/nope/versions", headers=bound), 403)
    assert outside.replace("'bluezone'", "'X'") == unknown.replace("'nope'", "'X'") and "Sơn La" not in outside
    outside = error(client.get(f"/api/v1/runs/{run_of(engine, 'bluezone')}", headers=bound), 403)
    unknown = error(client.get("/api/v1/runs/2147483647", headers=bound), 403)
    assert outside.replace(f"run {run_of(engine, 'bluezone')} ", "run N ") == unknown.replace("run 2147483647 ", "run N ")
    assert client.get("/api/v1/campaigns/mocchau/versions", headers=bound).status_code == 200


def test_a_campaign_file_without_a_name_is_the_campaign_its_file_names_and_a_toml_body_names_itself(
        engine: Engine, client: TestClient, tmp_path: FilePath) -> None:
    from loa import versions

    operator, moc_chau = key(engine, "operator"), key(engine, "operator", "126")
    nameless = remind(area="Huyện Mộc Châu").replace('name = "remind"\n', "").replace("remind.j2", "bluezone.j2")
    # bluezone.toml without `name` is bluezone, which lies in all of Sơn La: not for a Mộc Châu key
    before = version_count(engine)
    error(client.post("/api/v1/campaigns", files=[("campaign", ("bluezone.toml", nameless.encode()))],
                      headers=moc_chau), 403)
    assert version_count(engine) == before
    r = client.post("/api/v1/campaigns", files=[("campaign", ("bluezone.toml", nameless.encode()))], headers=operator)
    assert r.status_code == 200 and r.json()["campaigns"][0]["name"] == "bluezone", r.text
    # a TOML body names its campaign; a new one is stored as NAME.toml, each in its own file
    error(client.post("/api/v1/campaigns", content=nameless.encode(), headers=operator), 422, "name")
    assert version_count(engine) == before + 1
    for name in ("remind", "other"):
        toml = remind().replace('"remind"', f'"{name}"').replace("remind.j2", "bluezone.j2")   # the server's template
        r = client.post("/api/v1/campaigns", content=toml.encode(), headers=operator | {"Content-Type": "application/toml"})
        assert r.status_code == 200 and r.json()["campaigns"][0]["version"] == 1, r.text
    with engine.connect() as conn:
        assert (versions.stored(conn, "remind").file, versions.stored(conn, "other").file) == (  # type: ignore[union-attr]
            "remind.toml", "other.toml")
    written = versions.export(engine, tmp_path / "campaigns", tmp_path / "templates")
    assert {name: files_[0].name for name, _, files_ in written} == {
        "bluezone": "bluezone.toml", "mocchau": "mocchau.toml", "remind": "remind.toml", "other": "other.toml"}


def test_a_bound_key_tests_with_the_message_of_a_subscriber_of_its_own_area_only(engine: Engine,
                                                                                priced: TestClient) -> None:
    s, a = db.subscribers, db.areas
    with engine.connect() as conn:
        def phone_in(code: str) -> str:
            return str(conn.scalar(select(s.c.phone).join(a, a.c.id == s.c.area_id).where(a.c.code == code)
                                   .order_by(s.c.id).limit(1)))
        moc_chau_person, mai_son_person = phone_in("126"), phone_in("125")
    bound = key(engine, "operator", "126")
    url, staff = "/api/v1/campaigns/mocchau/test", ["0912345678"]
    # a person of Mai Sơn, and a number of no one: one refusal, nothing sent, nothing of the person shown
    elsewhere = error(priced.post(url, json={"to": staff, "subscriber": mai_son_person}, headers=bound),
                      422, "subscriber")
    nobody = error(priced.post(url, json={"to": staff, "subscriber": "0987654321"}, headers=bound), 422, "subscriber")
    assert re.sub(r"\+84\S+", "N", elsewhere) == re.sub(r"\+84\S+", "N", nobody) and "Mộc Châu" in elsewhere
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(db.test_sends)) == 0
    r = priced.post(url, json={"to": staff, "subscriber": moc_chau_person}, headers=bound)
    assert r.status_code == 200, r.text
    r = priced.post(url, json={"to": staff, "subscriber": mai_son_person}, headers=key(engine, "operator"))
    assert r.status_code == 200, r.text          # an unbound key: any subscriber
