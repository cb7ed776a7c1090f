"""``/api/v1``: the control plane over HTTP, with API keys, roles, areas and the audit log.

The application runs in process (Starlette's TestClient) on a real database: Sơn La's
Mộc Châu (126) and Mai Sơn (125), two campaigns planned, ``bluezone`` for all of Sơn La and
``mocchau`` for Mộc Châu only.  Keys are made as ``loa keys create`` makes them; a key
bound to Mộc Châu sees ``mocchau`` and nothing of ``bluezone``.
"""

from __future__ import annotations

import csv
import io
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from loa import audit, auth, db
from loa import gateways as gw
from loa.campaign import load_one
from loa.config import Config
from loa.plan import plan_run
from loa.web import Web
from test_digest import CAMPAIGN, add_world, write


def add_campaign(workdir: Path, name: str, area: str) -> None:
    write(workdir / "templates" / "sms" / f"{name}.j2", "Cài Bluezone để bảo vệ mình\n")
    write(workdir / "campaigns" / f"{name}.toml", CAMPAIGN.format(name=name).replace('"Sơn La"', f'"{area}"'))


@pytest.fixture
def world(engine: Engine, workdir: Path, config: Config) -> Config:
    """Two campaigns planned (not sent): bluezone (Sơn La, 64 people) and mocchau (Mộc Châu, 40)."""
    add_world(engine, workdir)
    for name, area in (("bluezone", "Sơn La"), ("mocchau", "Huyện Mộc Châu")):
        add_campaign(workdir, name, area)
        plan_run(engine, config, load_one(config.campaigns_dir, name))
    return config


@pytest.fixture
def client(engine: Engine, world: Config) -> Iterator[TestClient]:
    web = Web(engine, world)
    with TestClient(web, raise_server_exceptions=False) as c:
        yield c
    web.pool.close()


def key(engine: Engine, role: str, area: str | None = None) -> dict[str, str]:
    """The Authorization header of a new key."""
    _, secret = auth.create_key(engine, "os:test", role, area)
    return {"Authorization": f"Bearer {secret}"}


def actor(headers: dict[str, str]) -> str:
    return "key:" + headers["Authorization"].split("_")[1]


def error(r: Any, status: int, field: str | None = None) -> str:
    """The message of an error answer, after checking its status, shape and field."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}, body
    assert body["error"]["field"] == field, body
    assert body["error"]["message"] and "\n" not in body["error"]["message"]
    return str(body["error"]["message"])


def entries(engine: Engine, **kw: Any) -> list[audit.Entry]:
    """The audit entries the API's actions wrote: not the versions the fixtures' planning applied."""
    return [e for e in audit.query(engine, **kw) if e.action != "campaigns.apply"]


def state_of(engine: Engine, name: str) -> str:
    with engine.connect() as conn:
        return str(conn.scalar(select(db.campaigns.c.state).where(db.campaigns.c.name == name)))


def run_of(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(db.runs.c.id).join(db.campaigns).where(db.campaigns.c.name == name)))


# -- campaigns, runs, status, report ------------------------------------------------------

def test_a_key_sees_the_campaigns_of_its_area_with_their_state_and_runs(engine: Engine, client: TestClient) -> None:
    everywhere, moc_chau = key(engine, "viewer"), key(engine, "viewer", "126")
    r = client.get("/api/v1/campaigns", headers=everywhere)
    assert r.status_code == 200 and [c["name"] for c in r.json()] == ["bluezone", "mocchau"]
    assert {c["name"]: c["areas"] for c in r.json()} == {"bluezone": ["14"], "mocchau": ["126"]}
    r = client.get("/api/v1/campaigns", headers=moc_chau)
    assert [c["name"] for c in r.json()] == ["mocchau"]

    r = client.get("/api/v1/campaigns/mocchau", headers=moc_chau)
    assert r.status_code == 200
    body = r.json()
    assert body["state"] == "active" and body["advertising"] is False
    [run] = body["runs"]
    assert run["id"] == run_of(engine, "mocchau") and run["state"] == "active" and run["campaign"] == "mocchau"
    assert sum(run["states"].values()) == 40 and run["outcomes"]["queued"] + run["outcomes"]["held_out"] == 40

    assert "outside the area" in error(client.get("/api/v1/campaigns/bluezone", headers=moc_chau), 403)
    error(client.get(f"/api/v1/runs/{run_of(engine, 'bluezone')}", headers=moc_chau), 403)
    error(client.get("/api/v1/campaigns/nope", headers=everywhere), 404)
    error(client.get("/api/v1/runs/999", headers=everywhere), 404)
    r = client.get(f"/api/v1/runs/{run['id']}", headers=moc_chau)
    assert r.status_code == 200 and r.json()["states"] == run["states"]


def test_status_counts_the_ledger_by_state_and_outcome(engine: Engine, client: TestClient) -> None:
    r = client.get("/api/v1/campaigns/bluezone/status", headers=key(engine, "viewer", "14"))
    assert r.status_code == 200
    body = r.json()
    with engine.connect() as conn:
        states = dict(conn.execute(select(db.outbox.c.state, func.count()).where(
            db.outbox.c.run_id == run_of(engine, "bluezone")).group_by(db.outbox.c.state)).all())
    assert body["states"] == states and sum(states.values()) == 64
    assert body["outcomes"]["held_out"] == states.get("held_out", 0) > 0
    assert [run["states"] for run in body["runs"]] == [states]
    error(client.get("/api/v1/campaigns/bluezone/status", headers=key(engine, "viewer", "126")), 403)


def test_the_report_is_loa_reports_within_the_keys_area(engine: Engine, client: TestClient) -> None:
    admin, moc_chau = key(engine, "viewer"), key(engine, "viewer", "126")
    r = client.get("/api/v1/campaigns/mocchau/report", params={"level": "province"}, headers=admin)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert [row["code"] for row in r.json()["rows"]] == ["14"]            # Mộc Châu's people, counted in Sơn La
    assert r.json()["total"]["audience"] == 40
    r = client.get("/api/v1/campaigns/mocchau/report", params={"level": "province"}, headers=moc_chau)
    assert r.json()["rows"] == [] and r.json()["total"]["audience"] == 0  # the province is not in its area
    r = client.get("/api/v1/campaigns/mocchau/report", params={"format": "csv"}, headers=moc_chau)
    assert r.status_code == 200 and r.headers["Content-Type"] == "text/csv; charset=utf-8"
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["code"] for row in rows] == ["126", ""] and rows[0]["audience"] == "40"
    error(client.get("/api/v1/campaigns/bluezone/report", headers=moc_chau), 403)
    error(client.get("/api/v1/campaigns/mocchau/report", params={"level": "commune"}, headers=admin), 422, "level")
    error(client.get("/api/v1/campaigns/mocchau/report", params={"format": "pdf"}, headers=admin), 422, "format")


# -- the lifecycle ------------------------------------------------------------------------

def test_pause_resume_and_cancel_a_campaign_by_role_with_their_audit_entries(engine: Engine,
                                                                             client: TestClient) -> None:
    operator, approver = key(engine, "operator", "126"), key(engine, "approver")
    r = client.post("/api/v1/campaigns/mocchau/pause", json={"reason": "wrong link"}, headers=operator)
    assert r.status_code == 200, r.text
    assert r.json() | {"messages": 0} == {"kind": "campaign", "name": "mocchau", "before": "active", "after": "paused",
                                          "messages": 0, "by": actor(operator), "reason": "wrong link"}
    assert r.json()["messages"] > 0 and state_of(engine, "mocchau") == "paused"
    body = client.get("/api/v1/campaigns/mocchau", headers=operator).json()
    assert (body["state_by"], body["state_reason"]) == (actor(operator), "wrong link") and body["state_at"]
    [entry] = entries(engine, action="campaigns.pause")
    assert (entry.actor, entry.object, entry.reason) == (actor(operator), "campaign:mocchau", "wrong link")
    assert (entry.before, entry.after) == ({"state": "active"}, {
        "state": "paused", "messages": r.json()["messages"]})

    # resume takes an approver; pausing what is paused is a conflict; neither changes anything
    assert "needs approver" in error(client.post("/api/v1/campaigns/mocchau/resume", headers=operator), 403)
    assert "is paused" in error(client.post("/api/v1/campaigns/mocchau/pause", json={"reason": "again"},
                                            headers=operator), 409)
    error(client.post("/api/v1/campaigns/bluezone/pause", json={"reason": "x"}, headers=operator), 403)
    assert state_of(engine, "bluezone") == "active" and len(entries(engine, action="campaigns")) == 1

    r = client.post("/api/v1/campaigns/mocchau/resume", headers=approver)
    assert r.status_code == 200 and r.json()["after"] == "active" and r.json()["reason"] is None
    r = client.post("/api/v1/campaigns/mocchau/cancel", json={"reason": "ended"}, headers=approver)
    assert r.status_code == 200 and state_of(engine, "mocchau") == "cancelled"
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).where(db.outbox.c.run_id == run_of(engine, "mocchau"),
                                                      db.outbox.c.state == "cancelled")) == r.json()["messages"] > 0
    error(client.post("/api/v1/campaigns/mocchau/resume", headers=approver), 409)
    assert [e.action for e in entries(engine, action="campaigns")] == [
        "campaigns.pause", "campaigns.resume", "campaigns.cancel"]
    error(client.post("/api/v1/campaigns/nope/pause", json={"reason": "x"}, headers=approver), 404)


def test_runs_are_paused_resumed_and_cancelled_on_their_own(engine: Engine, client: TestClient) -> None:
    operator, approver = key(engine, "operator"), key(engine, "approver", "14")
    run = run_of(engine, "bluezone")
    r = client.post(f"/api/v1/runs/{run}/pause", json={"reason": "check counts"}, headers=operator)
    assert r.status_code == 200 and r.json()["kind"] == "run" and r.json()["after"] == "paused"
    assert state_of(engine, "bluezone") == "active"
    assert client.get(f"/api/v1/runs/{run}", headers=operator).json()["state"] == "paused"
    error(client.post(f"/api/v1/runs/{run}/resume", headers=operator), 403)
    error(client.post(f"/api/v1/runs/{run}/resume", headers=key(engine, "approver", "126")), 403)
    assert client.post(f"/api/v1/runs/{run}/resume", json={"reason": "fine"}, headers=approver).status_code == 200
    assert client.post(f"/api/v1/runs/{run}/cancel", json={"reason": "dup"}, headers=approver).status_code == 200
    error(client.post(f"/api/v1/runs/{run}/pause", json={"reason": "x"}, headers=operator), 409)
    error(client.post("/api/v1/runs/999/pause", json={"reason": "x"}, headers=operator), 404)
    assert [(e.action, e.actor, e.object_type) for e in entries(engine, action="campaigns")] == [
        ("campaigns.pause", actor(operator), "run"), ("campaigns.resume", actor(approver), "run"),
        ("campaigns.cancel", actor(approver), "run")]


def test_stop_pauses_every_active_campaign_and_only_for_an_unbound_key(engine: Engine, client: TestClient) -> None:
    error(client.post("/api/v1/stop", json={"reason": "wrong text"}, headers=key(engine, "operator", "14")), 403)
    error(client.post("/api/v1/stop", json={"reason": "wrong text"}, headers=key(engine, "viewer")), 403)
    assert (state_of(engine, "bluezone"), state_of(engine, "mocchau")) == ("active", "active")
    operator = key(engine, "operator")
    r = client.post("/api/v1/stop", json={"reason": "wrong text"}, headers=operator)
    assert r.status_code == 200 and [c["name"] for c in r.json()["paused"]] == ["bluezone", "mocchau"]
    assert (state_of(engine, "bluezone"), state_of(engine, "mocchau")) == ("paused", "paused")
    assert [(e.object_id, e.actor) for e in entries(engine, action="campaigns.pause")] == [
        ("bluezone", actor(operator)), ("mocchau", actor(operator))]
    assert client.post("/api/v1/stop", json={"reason": "again"}, headers=operator).json() == {"paused": []}


def test_a_bad_body_is_refused_with_its_field_and_changes_nothing(engine: Engine, client: TestClient) -> None:
    admin = key(engine, "admin")
    before = len(entries(engine))
    error(client.post("/api/v1/campaigns/mocchau/pause", headers=admin), 422, "body")
    error(client.post("/api/v1/campaigns/mocchau/pause", json={}, headers=admin), 422, "reason")
    error(client.post("/api/v1/campaigns/mocchau/pause", json={"reason": "   "}, headers=admin), 422, "reason")
    error(client.post("/api/v1/campaigns/mocchau/cancel", content=b"{nope", headers=admin
                      | {"Content-Type": "application/json"}), 422, "body")
    error(client.post("/api/v1/runs/abc/pause", json={"reason": "x"}, headers=admin), 422, "run_id")
    error(client.post("/api/v1/users", json={"name": "ana", "password": "short", "role": "viewer"},
                      headers=admin), 422, "password")
    error(client.post("/api/v1/users", json={"name": "ana", "password": "long enough pw", "role": "boss"},
                      headers=admin), 422, "role")
    error(client.post("/api/v1/users", json={"name": "Ana Smith!", "password": "long enough pw", "role": "viewer"},
                      headers=admin), 422, "name")
    error(client.post("/api/v1/users", json={"name": "ana", "password": "long enough pw", "role": "viewer",
                                             "area": "999"}, headers=admin), 422, "area")
    error(client.post("/api/v1/keys", json={"role": "viewer", "area": "999"}, headers=admin), 422, "area")
    assert state_of(engine, "mocchau") == "active" and auth.list_users(engine) == []
    assert len(entries(engine)) == before


# -- who may call -------------------------------------------------------------------------

def test_no_key_a_wrong_key_and_a_revoked_key_get_401(engine: Engine, client: TestClient) -> None:
    r = client.get("/api/v1/campaigns")
    assert "API key" in error(r, 401, "Authorization") and r.headers["WWW-Authenticate"] == "Bearer"
    error(client.get("/api/v1/campaigns", headers={"Authorization": "Bearer nope"}), 401, "Authorization")
    admin, viewer = key(engine, "admin"), key(engine, "viewer")
    forged = viewer["Authorization"][:-4] + "AAAA"
    error(client.get("/api/v1/campaigns", headers={"Authorization": forged}), 401, "Authorization")
    prefix = actor(viewer).removeprefix("key:")
    [viewer_key] = [k for k in client.get("/api/v1/keys", headers=admin).json() if k["prefix"] == prefix]
    assert client.get("/api/v1/campaigns", headers=viewer).status_code == 200
    r = client.delete(f"/api/v1/keys/{viewer_key['id']}", params={"reason": "left"}, headers=admin)
    assert r.status_code == 200 and r.json()["revoked_at"]
    assert "revoked" in error(client.get("/api/v1/campaigns", headers=viewer), 401, "Authorization")
    error(client.delete(f"/api/v1/keys/{viewer_key['id']}", headers=admin), 409)
    error(client.delete("/api/v1/keys/999", headers=admin), 404)
    [entry] = entries(engine, action="keys.revoke")
    assert (entry.actor, entry.object_id, entry.reason) == (actor(admin), str(viewer_key["id"]), "left")


def test_users_and_keys_are_managed_by_admins_within_their_area(engine: Engine, client: TestClient) -> None:
    admin, local_admin, operator = key(engine, "admin"), key(engine, "admin", "126"), key(engine, "operator")
    r = client.post("/api/v1/users", json={"name": "ana", "password": "a long password", "role": "operator",
                                            "area": "126"}, headers=local_admin)
    assert r.status_code == 201 and r.json()["area"] == "126" and r.json()["role"] == "operator"
    error(client.post("/api/v1/users", json={"name": "binh", "password": "a long password", "role": "viewer",
                                              "area": "14"}, headers=local_admin), 403)
    error(client.post("/api/v1/users", json={"name": "binh", "password": "a long password", "role": "viewer"},
                      headers=operator), 403)
    error(client.post("/api/v1/users", json={"name": "ana", "password": "a long password", "role": "viewer"},
                      headers=admin), 409)
    assert [u["name"] for u in client.get("/api/v1/users", headers=local_admin).json()] == ["ana"]
    error(client.get("/api/v1/users", headers=operator), 403)
    r = client.post("/api/v1/users/ana/role", json={"role": "approver", "reason": "promoted"}, headers=admin)
    assert r.status_code == 200 and r.json()["role"] == "approver"
    error(client.post("/api/v1/users/nobody/role", json={"role": "viewer"}, headers=admin), 404)
    assert client.post("/api/v1/users/ana/disable", json={"reason": "left"}, headers=admin).json()["disabled_at"]
    error(client.post("/api/v1/users/ana/disable", headers=admin), 409)
    assert [(e.action, e.actor) for e in entries(engine, object="user:ana")] == [
        ("users.add", actor(local_admin)), ("users.role", actor(admin)), ("users.disable", actor(admin))]

    r = client.post("/api/v1/keys", json={"role": "viewer", "area": "126", "name": "dashboard"}, headers=admin)
    assert r.status_code == 201
    secret = r.json()["secret"]
    assert re.fullmatch(r"loa_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", secret) and r.json()["key"]["area"] == "126"
    assert [c["name"] for c in client.get("/api/v1/campaigns", headers={"Authorization": f"Bearer {secret}"})
            .json()] == ["mocchau"]
    listed = client.get("/api/v1/keys", headers=admin)
    assert listed.status_code == 200 and secret.split("_", 2)[2] not in listed.text
    error(client.post("/api/v1/keys", json={"role": "admin"}, headers=local_admin), 403)
    [entry] = entries(engine, action="keys.create", actor=actor(admin))
    assert entry.after == {"prefix": secret.split("_")[1], "name": "dashboard", "role": "viewer", "area": "126",
                           "revoked_at": None}


def test_the_audit_log_is_read_with_filters_by_approvers_and_above(engine: Engine, client: TestClient) -> None:
    operator, approver = key(engine, "operator"), key(engine, "approver")
    client.post("/api/v1/campaigns/mocchau/pause", json={"reason": "x"}, headers=operator)
    client.post("/api/v1/campaigns/mocchau/resume", headers=approver)
    r = client.get("/api/v1/audit", params={"action": "campaigns", "object": "campaign:mocchau"}, headers=approver)
    assert r.status_code == 200
    assert [(e["action"], e["actor"]) for e in r.json()["entries"] if e["action"] != "campaigns.apply"] == [
        ("campaigns.pause", actor(operator)), ("campaigns.resume", actor(approver))]
    r = client.get("/api/v1/audit", params={"actor": actor(approver), "since": "1h", "limit": 1}, headers=approver)
    assert [e["action"] for e in r.json()["entries"]] == ["campaigns.resume"]
    error(client.get("/api/v1/audit", headers=operator), 403)
    error(client.get("/api/v1/audit", headers=key(engine, "admin", "14")), 403)
    error(client.get("/api/v1/audit", params={"since": "yesterday"}, headers=approver), 422, "since")
    error(client.get("/api/v1/audit", params={"limit": 0}, headers=approver), 422, "limit")


def test_gateways_are_listed_and_an_admin_resumes_a_paused_one(engine: Engine, client: TestClient) -> None:
    admin, operator = key(engine, "admin"), key(engine, "operator")
    assert gw.pause(engine, "sim", "auth error 101")
    r = client.get("/api/v1/gateways", headers=key(engine, "viewer", "126"))
    assert r.status_code == 200
    listed = {g["name"]: g for g in r.json()}
    assert listed["sim"]["paused"] and listed["sim"]["paused_reason"] == "auth error 101"
    assert listed["jsonl"]["paused"] is False and listed["jsonl"]["type"] == "file"
    error(client.post("/api/v1/gateways/sim/resume", headers=operator), 403)
    r = client.post("/api/v1/gateways/sim/resume", json={"reason": "key renewed"}, headers=admin)
    assert r.status_code == 200 and r.json() == {"name": "sim", "was_paused_for": "auth error 101"}
    assert gw.paused(engine) == {}
    error(client.post("/api/v1/gateways/sim/resume", headers=admin), 409)
    error(client.post("/api/v1/gateways/nope/resume", headers=admin), 404)
    [entry] = entries(engine, action="gateways.resume")
    assert (entry.actor, entry.object_id, entry.reason) == (actor(admin), "sim", "key renewed")


def test_sign_in_checks_the_password_and_locks_out_after_repeated_failures(engine: Engine,
                                                                          client: TestClient) -> None:
    auth.add_user(engine, "os:test", "ana", "a long password", "operator", "126")
    r = client.post("/api/v1/login", json={"name": "Ana", "password": "a long password"})
    assert r.status_code == 200
    assert r.json() == {"kind": "user", "name": "ana", "role": "operator", "area": "126",
                        "area_name": "Huyện Mộc Châu"}
    for _ in range(auth.MAX_FAILURES_PER_NAME):
        assert "wrong user name or password" in error(
            client.post("/api/v1/login", json={"name": "ana", "password": "guess"}), 401)
    r = client.post("/api/v1/login", json={"name": "ana", "password": "a long password"})
    assert "too many failed sign-ins" in error(r, 429) and int(r.headers["Retry-After"]) > 0
    error(client.post("/api/v1/login", json={"name": "ana"}), 422, "password")


# -- imports ------------------------------------------------------------------------------

def wait_done(client: TestClient, headers: dict[str, str], job: int) -> dict[str, Any]:
    deadline = time.monotonic() + 120      # a hang, not a speed: a few hundred rows take well under a second
    while time.monotonic() < deadline:
        body = client.get(f"/api/v1/imports/{job}", headers=headers).json()
        if body["state"] != "running":
            return dict(body)
        time.sleep(0.05)
    raise AssertionError(f"import {job} still running after 120 s: {body}")


def test_an_uploaded_csv_is_imported_in_the_background_with_progress_and_rejects(
        engine: Engine, client: TestClient) -> None:
    operator = key(engine, "operator")
    lines = ["phone,name,area"] + [f"0913{i:06d},Khách {i},125" for i in range(300)]
    lines[10] = "not-a-phone,Sai,125"
    lines[20] = "0913999999,Không rõ,Hà Giang"
    body = ("\n".join(lines) + "\n").encode()
    r = client.post("/api/v1/imports/subscribers", content=body,
                    headers=operator | {"Content-Type": "text/csv"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["kind"] == "subscribers" and job["actor"] == actor(operator)
    assert job["progress"]["rows_total"] == 300 and job["progress"]["bytes_total"] == len(body)
    done = wait_done(client, operator, job["id"])
    assert done["state"] == "done" and done["failure"] is None and done["finished_at"]
    assert done["counts"] == {"imported": 298, "new": 298, "rejected": 2}
    assert done["progress"] | {} == {"bytes_done": len(body), "bytes_total": len(body), "rows_done": 300,
                                     "rows_total": 300}
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(db.subscribers)) == 64 + 298
    r = client.get(f"/api/v1/imports/{job['id']}/rejects", headers=operator)
    assert r.status_code == 200 and r.headers["Content-Type"] == "text/csv; charset=utf-8"
    rejects = list(csv.DictReader(io.StringIO(r.text)))
    assert [(row["line"], row["column"], row["phone"], row["reason"]) for row in rejects] == [
        ("11", "phone", "not-a-phone", "not a valid Vietnamese number"),
        ("21", "area", "0913999999", "no area with code or name 'Hà Giang'")]
    # the reasons in the language the client asks for; the other cells and the header the same
    r = client.get(f"/api/v1/imports/{job['id']}/rejects", headers=operator | {"Accept-Language": "vi, en;q=0.5"})
    assert r.status_code == 200 and r.text.splitlines()[0] == "line,column,reason,phone,name,area"
    assert [(row["line"], row["column"], row["phone"], row["reason"]) for row in csv.DictReader(io.StringIO(r.text))] == [
        ("11", "phone", "not-a-phone", "không phải số điện thoại Việt Nam hợp lệ"),
        ("21", "area", "0913999999", "không có địa bàn nào có mã hoặc tên 'Hà Giang'")]
    assert [(e.action, e.actor, e.object) for e in entries(engine, action="imports")] == [
        ("imports.upload", actor(operator), f"import:{job['id']}"),
        ("imports.subscribers", actor(operator), f"import:{job['id']}")]
    assert entries(engine, action="imports.subscribers")[0].after == {
        "read": 300, "imported": 298, "new": 298, "rejected": 2, "failure": None}

    # a multipart upload of a file without rejects
    r = client.post("/api/v1/imports/dnc", files={"file": ("dnc.csv", b"phone\n0913000001\n", "text/csv")},
                    headers=operator)
    assert r.status_code == 202 and r.json()["filename"] == "dnc.csv"
    done = wait_done(client, operator, r.json()["id"])
    assert done["counts"]["imported"] == 1 and done["rejects"] is False
    error(client.get(f"/api/v1/imports/{done['id']}/rejects", headers=operator), 404)


def test_an_upload_that_cannot_be_imported_is_refused_at_once(engine: Engine, client: TestClient) -> None:
    operator = key(engine, "operator")
    csv_body = operator | {"Content-Type": "text/csv"}
    assert "phone" in error(client.post("/api/v1/imports/subscribers", content=b"name,area\nAn,125\n",
                                        headers=csv_body), 422, "file")
    assert "empty" in error(client.post("/api/v1/imports/subscribers", content=b"", headers=csv_body), 422, "file")
    error(client.post("/api/v1/imports/dnc", files={"other": ("x.csv", b"phone\n")}, headers=operator), 422, "file")
    error(client.post("/api/v1/imports/dnc", params={"as_of": "2020-01-01"}, content=b"phone\n",
                      headers=csv_body), 422, "as_of")
    error(client.post("/api/v1/imports/people", content=b"phone\n", headers=csv_body), 422, "kind")
    error(client.post("/api/v1/imports/dnc", content=b"phone\n", headers=csv_body | key(engine, "viewer")), 403)
    error(client.post("/api/v1/imports/dnc", content=b"phone\n", headers=csv_body | key(engine, "admin", "14")),
          403)
    error(client.get("/api/v1/imports/1", headers=operator), 404)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(db.import_jobs)) == 0
    assert entries(engine, action="imports") == []
    assert not [t for t in threading.enumerate() if t.name.startswith("loa-import-")]


# -- metrics ------------------------------------------------------------------------------

def test_metrics_count_lifecycle_actions_and_approvals_from_the_audit_log(engine: Engine,
                                                                         client: TestClient) -> None:
    approver = key(engine, "approver")
    client.post("/api/v1/campaigns/mocchau/pause", json={"reason": "x"}, headers=approver)
    client.post("/api/v1/campaigns/mocchau/resume", headers=approver)
    client.post(f"/api/v1/runs/{run_of(engine, 'bluezone')}/pause", json={"reason": "x"}, headers=approver)
    # what another process wrote (the CLI, another `loa serve`) counts the same
    audit.record_now(engine, "os:ana", "campaigns.pause", "campaign", "bluezone")
    audit.record_now(engine, "user:binh", "campaigns.approve", "campaign", "bluezone")
    text = client.get("/metrics").text
    assert 'loa_lifecycle_actions_total{action="pause",kind="campaign"} 2.0' in text
    assert 'loa_lifecycle_actions_total{action="resume",kind="campaign"} 1.0' in text
    assert 'loa_lifecycle_actions_total{action="pause",kind="run"} 1.0' in text
    assert 'loa_approvals_total{decision="approved"} 1.0' in text
    assert 'loa_approvals_total{decision="rejected"} 0.0' in text
    assert "# TYPE loa_lifecycle_actions_total counter" in text


def test_an_import_that_stops_midway_fails_with_what_it_kept(engine: Engine, client: TestClient) -> None:
    operator = key(engine, "operator")
    body = b"phone\n0913000001\n0913000002\n\xff\xfe\n0913000003\n"      # line 4 is not UTF-8
    r = client.post("/api/v1/imports/dnc", content=body, headers=operator | {"Content-Type": "text/csv"})
    assert r.status_code == 202
    done = wait_done(client, operator, r.json()["id"])
    assert done["state"] == "failed" and "line 4" not in done["failure"] and ":4: not UTF-8" in done["failure"]
    assert "upload" not in done["failure"] and done["counts"]["imported"] == 2
    # said in the language the client asks for; the state and counts the same
    vi = client.get(f"/api/v1/imports/{done['id']}", headers=operator | {"Accept-Language": "vi"}).json()
    assert done["failure"].startswith('the file:4: not UTF-8 text (save the file as "CSV UTF-8"); the import stopped')
    assert vi["failure"] == ('tệp:4: không phải văn bản UTF-8 (hãy lưu tệp dạng "CSV UTF-8"); việc nhập dừng ở đó: '
                             "2 dòng trước đó đã được nhập, 0 dòng bị loại")
    assert vi["failure"] != done["failure"] and vi | {"failure": None} == done | {"failure": None}
    [entry] = entries(engine, action="imports.dnc")
    assert entry.after is not None and entry.after["failure"] == done["failure"]


def test_a_nul_character_is_refused_wherever_it_is_sent(engine: Engine, client: TestClient) -> None:
    admin = key(engine, "admin")
    error(client.post("/api/v1/campaigns/mocchau/pause", json={"reason": "a\x00b"}, headers=admin), 422, "reason")
    error(client.get("/api/v1/campaigns/a%00b", headers=admin), 422, "name")
    error(client.get("/api/v1/audit", params={"actor": "a\x00"}, headers=admin), 422, "actor")
    error(client.post("/api/v1/login", json={"name": "ana\x00", "password": "x"}), 422, "name")
    error(client.post("/api/v1/keys", json={"role": "viewer", "name": "\x00"}, headers=admin), 422, "name")
    assert state_of(engine, "mocchau") == "active"


def test_an_imports_progress_is_readable_while_it_runs(engine: Engine, client: TestClient,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import timedelta

    from loa import imports

    reached, go = threading.Event(), threading.Event()
    on_bytes = imports._Progress.on_bytes

    def held(self: Any, done: int, total: int) -> None:
        on_bytes(self, done, total)
        if self.imported and not reached.is_set():   # the first batch is in: hold the import between batches
            reached.set()
            assert go.wait(120)

    monkeypatch.setattr(imports, "PROGRESS_EVERY", timedelta(0))
    monkeypatch.setattr(imports._Progress, "on_bytes", held)
    operator = key(engine, "operator")
    body = ("\n".join(["phone"] + [f"0914{i:06d}" for i in range(12_000)]) + "\n").encode()
    r = client.post("/api/v1/imports/dnc", content=body, headers=operator | {"Content-Type": "text/csv"})
    assert r.status_code == 202
    try:
        assert reached.wait(120)
        now = client.get(f"/api/v1/imports/{r.json()['id']}", headers=operator).json()
        assert now["state"] == "running" and now["counts"]["imported"] == 5000
        assert now["progress"]["rows_done"] == 5000 and now["progress"]["rows_total"] == 12_000
        assert 0 < now["progress"]["bytes_done"] < now["progress"]["bytes_total"] == len(body)
        error(client.get(f"/api/v1/imports/{r.json()['id']}/rejects", headers=operator), 409)
    finally:
        go.set()
    done = wait_done(client, operator, r.json()["id"])
    assert done["state"] == "done" and done["counts"]["imported"] == 12_000


def test_a_lifecycle_change_and_its_audit_entry_are_one_transaction(engine: Engine, world: Config) -> None:
    from loa import lifecycle

    def fails(conn: Any, change: Any) -> None:
        audit.record(conn, "key:x", "campaigns.pause", change.kind, change.name, after={"token": "leak"})

    with pytest.raises(ValueError, match="never carry secrets"):
        lifecycle.change_campaign(engine, "mocchau", "pause", who="key:x", reason="r", record=fails)
    assert state_of(engine, "mocchau") == "active" and entries(engine) == []
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).where(db.outbox.c.reason.like("paused by%"))) == 0


def test_an_upload_over_the_limit_is_refused_and_a_job_whose_process_died_is_interrupted(
        engine: Engine, client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import timedelta

    from sqlalchemy import insert

    from loa.web import api

    operator = key(engine, "operator")
    monkeypatch.setattr(api, "MAX_IMPORT", 100)
    body = ("\n".join(["phone"] + [f"0914{i:06d}" for i in range(20)]) + "\n").encode()
    r = client.post("/api/v1/imports/dnc", content=body, headers=operator | {"Content-Type": "text/csv"})
    assert "100 bytes" in error(r, 413)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(db.import_jobs)) == 0

    long_ago = db.utcnow() - timedelta(hours=1)
    with engine.begin() as conn:
        conn.execute(insert(db.import_jobs).values(
            id=7, kind="dnc", state="running", actor="key:x", filename="dnc.csv", bytes_total=10, bytes_done=5,
            rows_total=2, rows_done=1, imported=1, new=1, rejected=0, created_at=long_ago, updated_at=long_ago))
    assert client.get("/api/v1/imports/7", headers=operator).json()["state"] == "interrupted"
    assert "interrupted" in error(client.get("/api/v1/imports/7/rejects", headers=operator), 409)


def test_approval_over_the_api_by_two_keys_with_the_review_first(engine: Engine, world: Config,
                                                                  workdir: Path) -> None:
    import dataclasses

    from loa import versions
    from loa.config import ApprovalPolicy

    config = dataclasses.replace(world, approval=ApprovalPolicy(always=True))
    write(workdir / "templates" / "sms" / "bluezone.j2", "Cài Bluezone ngay hôm nay\n")
    versions.apply(engine, config, "os:test")                    # a changed version: back to draft
    assert state_of(engine, "bluezone") == "draft"
    operator, approver, viewer = key(engine, "operator"), key(engine, "approver"), key(engine, "viewer")
    other = key(engine, "approver", "126")       # Mộc Châu is within Sơn La, not the whole of it
    web = Web(engine, config)
    try:
        with TestClient(web, raise_server_exceptions=False) as client:
            url = "/api/v1/campaigns/bluezone"
            error(client.post(f"{url}/submit", headers=viewer), 403)
            r = client.post(f"{url}/submit", json={"reason": "đợt 2"}, headers=operator)
            assert r.status_code == 200, r.text
            assert r.json() | {"by": None} == {"campaign": "bluezone", "action": "submit", "before": "draft",
                                               "after": "pending_approval", "version": 2, "by": None}
            # the review is for those who may approve: it shows the audience's messages
            error(client.get(f"{url}/review", headers=operator), 403)
            error(client.get(f"{url}/review", headers=other), 403)
            seen = client.get(f"{url}/review", params={"count": 2}, headers=approver)
            assert seen.status_code == 200, seen.text
            review = seen.json()
            assert (review["version"], review["state"], review["submitted_by"]) == (2, "pending_approval",
                                                                                   actor(operator))
            assert review["to_send"] > 0 and len(review["samples"]) == 2
            assert all(s["text"] == "Cài Bluezone ngay hôm nay" for s in review["samples"])
            with engine.connect() as conn:                          # the numbers are masked
                phones = [p[-9:] for p in conn.scalars(select(db.subscribers.c.phone))]
            assert phones and not any(p in seen.text for p in phones)
            error(client.post(f"{url}/approve", headers=operator), 403)
            error(client.post(f"{url}/launch", headers=approver), 409)          # not approved yet
            error(client.post(f"{url}/approve", json={"version": 1}, headers=approver), 409)   # not what was submitted
            error(client.post(f"{url}/approve", json={"version": 0}, headers=approver), 422, "version")
            error(client.post(f"{url}/reject", json={"reason": " "}, headers=approver), 422, "reason")
            error(client.post(f"{url}/reject", headers=viewer), 403)
            assert state_of(engine, "bluezone") == "pending_approval"
            r = client.post(f"{url}/approve", json={"version": 2, "reason": "ok"}, headers=approver)
            assert r.status_code == 200 and r.json()["after"] == "approved", r.text
            r = client.post(f"{url}/launch", headers=approver)
            assert r.status_code == 200 and r.json()["after"] == "active", r.text
    finally:
        web.pool.close()
    assert state_of(engine, "bluezone") == "active"
    assert [(e.action, e.actor) for e in entries(engine, object="campaign:bluezone")
            if e.action != "campaigns.review"][-3:] == [
        ("campaigns.submit", actor(operator)), ("campaigns.approve", actor(approver)),
        ("campaigns.launch", actor(approver))]
    assert [e.actor for e in entries(engine, action="campaigns.review")] == [actor(approver)]
