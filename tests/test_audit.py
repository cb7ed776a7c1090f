"""The audit log (loa.audit, ``loa audit``).

* It is append-only in the database itself: UPDATE and DELETE of its rows fail, on a database
  made by ``create_all`` and on one made by the migrations alike; and loa's code has no
  statement that changes or removes its rows.
* The state-changing commands record who (``$LOA_ACTOR``, else the system user), what, which
  object and its state before and after: gateways resume, imports, campaign runs; and so does
  a preview, which shows subscribers' personal data.
* ``loa audit`` filters by actor, action (and its sub-actions), time and object.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import AREAS_CSV, ROOT, write
from sqlalchemy import inspect, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from test_cli import CAMPAIGN, invoke, ok, one_line_error, subscribers_csv

from loa import audit, db
from loa import gateways as gw


def entries(engine: Engine) -> list[tuple[str, str, str, str]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(db.audit_log.c.actor, db.audit_log.c.action,
                                                      db.audit_log.c.object_type, db.audit_log.c.object_id)
                                               .order_by(db.audit_log.c.id))]


def assert_append_only(engine: Engine) -> None:
    with engine.begin() as conn:
        entry = audit.record(conn, "user:ana", "campaigns.approve", "campaign", "remind",
                             before={"state": "pending_approval"}, after={"state": "approved"}, reason="đã xem")
    for statement in ("UPDATE audit_log SET actor = 'user:mallory' WHERE id = :id",
                      "UPDATE audit_log SET after = NULL",
                      "DELETE FROM audit_log WHERE id = :id",
                      "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="audit_log is append-only"), engine.begin() as conn:
            conn.execute(text(statement), {"id": entry})
    with engine.connect() as conn:
        row = conn.execute(select(db.audit_log).where(db.audit_log.c.id == entry)).one()
    assert (row.actor, row.after, row.reason) == ("user:ana", {"state": "approved"}, "đã xem")


def test_the_database_refuses_to_change_or_remove_an_entry(engine: Engine) -> None:
    assert_append_only(engine)


@pytest.fixture
def schema_restored(engine: Engine) -> object:
    yield
    with engine.begin() as conn:
        for name in reversed(inspect(conn).get_table_names()):
            conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{name}" CASCADE' if conn.dialect.name == "postgresql"
                                 else f'DROP TABLE IF EXISTS "{name}"')
    db.create_schema(engine)


@pytest.mark.parametrize("replay", [True, False], ids=["every-migration", "create-all-and-stamp"])
def test_both_ways_of_making_the_schema_install_the_refusal(engine: Engine, schema_restored: object,
                                                           replay: bool) -> None:
    with engine.begin() as conn:
        for name in reversed(inspect(conn).get_table_names()):
            conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{name}" CASCADE' if conn.dialect.name == "postgresql"
                                 else f'DROP TABLE IF EXISTS "{name}"')
    assert db.create_schema(engine, replay=replay) is True
    assert_append_only(engine)


def test_loa_has_no_statement_that_changes_or_removes_entries() -> None:
    writes = re.compile(r"(update|delete)\(\s*(db\.)?audit_log\b|audit_log\.(update|delete)\(|"
                        r"(UPDATE|DELETE FROM)\s+audit_log", re.IGNORECASE)
    found = [f"{path.relative_to(ROOT)}:{n}" for path in sorted((ROOT / "loa").rglob("*.py"))
             if "migrations" not in path.parts
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if writes.search(line)]
    assert found == []
    assert writes.search("conn.execute(update(db.audit_log).values(actor='x'))")   # the pattern does find one


def test_an_entry_never_carries_a_secret(engine: Engine) -> None:
    with pytest.raises(ValueError, match="never carry secrets: password_hash"), engine.begin() as conn:
        audit.record(conn, "os:root", "users.add", "user", "ana", after={"role": "viewer", "password_hash": "$argon"})
    assert entries(engine) == []


# -- the commands that change state ----------------------------------------------

def test_resume_import_and_run_are_recorded_with_the_actor(workdir: Path, tmp_path: Path, engine: Engine,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOA_ACTOR", raising=False)
    areas = write(tmp_path / "areas.csv", AREAS_CSV)
    ok(invoke(workdir, "import", "areas", str(areas)))
    monkeypatch.setenv("LOA_ACTOR", "chuyên-viên")
    ok(invoke(workdir, "import", "subscribers", str(subscribers_csv(tmp_path, 10, extra="0123,Sai,116,yes\n"))))
    write(workdir / "templates" / "sms" / "remind.j2", "Chào {{ subscriber.name }}, hãy cài Bluezone.\n")
    write(workdir / "campaigns" / "remind.toml", CAMPAIGN)
    ok(invoke(workdir, "campaigns", "preview", "remind", "-n", "2"))
    ok(invoke(workdir, "campaigns", "run", "remind"))
    gw.pause(engine, "sim", "eSMS 101: sai ApiKey")
    ok(invoke(workdir, "gateways", "resume", "sim", "--reason", "đã sửa khoá"))
    one_line_error(invoke(workdir, "gateways", "resume", "sim"), "not paused")     # nothing changed: no entry

    found = entries(engine)
    assert [(actor.startswith("os:"), action) for actor, action, _, _ in found[:1]] == [(True, "imports.areas")]
    assert found[1:] == [("chuyên-viên", "imports.subscribers", "file", str((tmp_path / "subscribers.csv").resolve())),
                         # the first command to read the campaigns loads the folder as version 1
                         ("chuyên-viên", "campaigns.apply", "campaign", "remind"),
                         ("chuyên-viên", "campaigns.preview", "campaign", "remind"),
                         ("chuyên-viên", "campaigns.run", "campaign", "remind"),
                         ("chuyên-viên", "gateways.resume", "gateway", "sim")]
    log = {e["action"]: e for e in json.loads(ok(invoke(workdir, "audit", "--format", "json")).stdout)}
    assert log["imports.subscribers"]["after"] == {"read": 11, "imported": 10, "new": 10, "rejected": 1,
                                                        "failure": None}
    with engine.connect() as conn:
        run_id = conn.scalar(select(db.runs.c.id))
    assert log["campaigns.run"]["after"]["run"] == run_id and log["campaigns.run"]["after"]["added"] == 10
    assert log["campaigns.preview"]["after"] == {"subscribers_shown": 2, "audience": 10}
    assert log["gateways.resume"]["before"]["paused_reason"] == "eSMS 101: sai ApiKey"
    assert log["gateways.resume"]["after"]["paused_reason"] is None
    assert log["gateways.resume"]["reason"] == "đã sửa khoá"


def test_a_resume_and_its_entry_are_one_transaction(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    gw.pause(engine, "sim", "Zalo -124")

    def broken(*args: object, **kw: object) -> int:
        raise RuntimeError("the audit log is unreachable")

    monkeypatch.setattr(audit, "record", broken)
    with pytest.raises(RuntimeError):
        gw.resume(engine, "sim", actor="user:ana")
    assert "sim" in gw.paused(engine)          # no resume without its entry


# -- loa audit -------------------------------------------------------------------

def test_loa_audit_filters_by_actor_action_time_and_object(workdir: Path, engine: Engine) -> None:
    import time_machine

    now = db.utcnow()
    with time_machine.travel(now.replace(year=now.year - 1), tick=False):
        audit.record_now(engine, "user:ana", "users.add", "user", "binh", after={"role": "viewer"})
    audit.record_now(engine, "user:ana", "users.role", "user", "binh", before={"role": "viewer"},
                     after={"role": "operator"}, reason="thăng chức")
    audit.record_now(engine, "key:ab12cd34", "campaigns.pause", "campaign", "remind", reason="sai nội dung")
    audit.record_now(engine, "user:chi", "users_extra", "user", "chi")

    def ids(*args: str) -> list[tuple[str, str]]:
        return [(e["actor"], e["action"]) for e in json.loads(ok(invoke(workdir, "audit", "--format", "json",
                                                                        *args)).stdout)]

    assert ids("--actor", "user:ana") == [("user:ana", "users.add"), ("user:ana", "users.role")]
    assert ids("--action", "users") == [("user:ana", "users.add"), ("user:ana", "users.role")]   # not users_extra
    assert ids("--action", "users.role") == [("user:ana", "users.role")]
    assert ids("--since", "1d") == [("user:ana", "users.role"), ("key:ab12cd34", "campaigns.pause"),
                                    ("user:chi", "users_extra")]
    assert ids("--since", f"{now:%Y-%m-%d}", "--object", "user") == [("user:ana", "users.role"),
                                                                       ("user:chi", "users_extra")]
    assert ids("--object", "campaign:remind") == [("key:ab12cd34", "campaigns.pause")]
    assert ids("--limit", "1") == [("user:chi", "users_extra")]
    table = ok(invoke(workdir, "audit", "--object", "user:binh")).stdout
    assert "role: viewer → operator" in table and "thăng chức" in table
    one_line_error(invoke(workdir, "audit", "--since", "hôm qua"), "--since", "2h, 7d")
    with engine.connect() as conn:    # reading the log wrote nothing to it
        assert conn.scalar(select(db.audit_log.c.id).order_by(db.audit_log.c.id.desc()).limit(1)) == 4
