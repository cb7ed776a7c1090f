"""Users, roles, areas and API keys (loa.auth), through the engine and ``loa users|keys``.

* Passwords are argon2id hashes, given by $LOA_NEW_PASSWORD or a prompt, never an argument,
  and appear in no output, no audit entry and no column but the hash.
* Sign-ins are locked out per user name and per client by failures kept in the database:
  another engine (another process) sees the same lockout, which ends with its window.
* ``require`` follows the declared table of roles, and an area-bound principal acts only in
  its area's subtree.
* An API key is printed once; the database keeps its SHA-256 only; a wrong secret, an
  unknown prefix or a revoked key is refused.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
import time_machine
from conftest import AREAS_CSV, write
from sqlalchemy import select, text
from sqlalchemy.engine import Engine
from test_cli import invoke, ok, one_line_error

from loa import auth, db
from loa.auth import AuthError, Forbidden, LockedOut, Principal

PASSWORD = "ngựa-đúng-pin-kẹp-7"


@pytest.fixture
def ready(workdir: Path, tmp_path: Path, engine: Engine) -> Path:
    ok(invoke(workdir, "import", "areas", str(write(tmp_path / "areas.csv", AREAS_CSV))))
    return workdir


def paths(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(select(db.areas.c.code, db.areas.c.path)).all())


def everything_stored(engine: Engine) -> str:
    """Every row of the tables loa.auth writes, and of the audit log, as text."""
    with engine.connect() as conn:
        return "\n".join(str(conn.execute(select(t)).all())
                         for t in (db.users, db.api_keys, db.login_attempts, db.audit_log))


# -- users ---------------------------------------------------------------------------

def test_users_are_added_listed_given_roles_and_disabled_and_the_password_is_only_hashed(
        ready: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOA_NEW_PASSWORD", PASSWORD)
    monkeypatch.setenv("LOA_ACTOR", "trưởng-phòng")
    said = ok(invoke(ready, "users", "add", "Ana", "--role", "operator", "--area", "14"))
    assert said.stdout.strip() == "user ana added: operator, bound to Sơn La (14)"
    ok(invoke(ready, "users", "add", "binh", "--role", "admin"))
    one_line_error(invoke(ready, "users", "add", "ana", "--role", "viewer"), "a user named 'ana' exists already")
    one_line_error(invoke(ready, "users", "add", "chi", "--role", "viewer", "--area", "999"),
                   "no area with code '999'")
    # a password is never an argument
    assert invoke(ready, "users", "add", "chi", "--role", "viewer", "--password", PASSWORD).exit_code != 0
    monkeypatch.setenv("LOA_NEW_PASSWORD", "ngắn")
    one_line_error(invoke(ready, "users", "add", "chi", "--role", "viewer"), "password too short")
    monkeypatch.delenv("LOA_NEW_PASSWORD")
    one_line_error(invoke(ready, "users", "add", "chi", "--role", "viewer"), "$LOA_NEW_PASSWORD")

    said = ok(invoke(ready, "users", "role", "ana", "approver", "--reason", "trực tuần")).stdout
    assert "ana: operator → approver" in said
    ok(invoke(ready, "users", "disable", "binh"))
    one_line_error(invoke(ready, "users", "disable", "binh"), "disabled already")
    one_line_error(invoke(ready, "users", "role", "dung", "viewer"), "no user named 'dung'")
    ok(invoke(ready, "users", "language", "ana", "en"))
    listed = ok(invoke(ready, "users", "list")).stdout
    assert "ana" in listed and "approver" in listed and "Sơn La (14)" in listed
    assert "binh" in listed and "disabled" in listed
    # each user's language: the one it chose (en), the default (vi) for the other
    rows = {cells[0]: cells for line in listed.splitlines()
            if len(cells := [c.strip() for c in re.split(r"[│┃|]", line.strip("│┃| "))]) > 3}
    assert rows["name"][3] == "language" and rows["ana"][3] == "en" and rows["binh"][3] == "vi"

    with engine.connect() as conn:
        hashes = dict(conn.execute(select(db.users.c.name, db.users.c.password_hash)).all())
    assert set(hashes) == {"ana", "binh"}
    assert all(h.startswith("$argon2id$") for h in hashes.values())
    assert PASSWORD not in everything_stored(engine)
    with engine.connect() as conn:
        log = str(conn.execute(select(db.audit_log)).all())
    assert not any(h in log or h[-22:] in listed for h in hashes.values())

    entries = json.loads(ok(invoke(ready, "audit", "--object", "user:ana", "--format", "json")).stdout)
    assert [(e["action"], e["actor"]) for e in entries] == [("users.add", "trưởng-phòng"),
                                                            ("users.role", "trưởng-phòng"),
                                                            ("users.language", "trưởng-phòng")]
    assert entries[1]["before"]["role"] == "operator" and entries[1]["after"]["role"] == "approver"
    assert entries[1]["reason"] == "trực tuần"


def test_a_bound_admin_manages_users_only_inside_its_area(ready: Path, engine: Engine) -> None:
    p = paths(engine)
    son_la_admin = Principal("user", "tinh-son-la", "admin", area_path=p["14"], area_code="14", area_name="Sơn La")
    user = auth.add_user(engine, son_la_admin, "mai-son", PASSWORD, "operator", "125")
    assert user.area_code == "125"
    with pytest.raises(Forbidden, match=r"outside the area of user tinh-son-la") as refused:
        auth.add_user(engine, son_la_admin, "dak-nong", PASSWORD, "operator", "66")
    assert "Đắk Nông (66)" in str(refused.value) and refused.value.code == "area"
    with pytest.raises(Forbidden, match="the whole country"):
        auth.add_user(engine, son_la_admin, "ca-nuoc", PASSWORD, "viewer")
    auth.add_user(engine, "os:root", "dak-nong", PASSWORD, "operator", "66")
    with pytest.raises(Forbidden, match="Đắk Nông"):
        auth.set_role(engine, son_la_admin, "dak-nong", "admin")
    assert [u.name for u in auth.list_users(engine, son_la_admin)] == ["mai-son"]
    with engine.connect() as conn:
        assert conn.scalar(select(db.users.c.role).where(db.users.c.name == "dak-nong")) == "operator"
        assert sorted(conn.scalars(select(db.audit_log.c.object_id).where(db.audit_log.c.object_type == "user"))) \
            == ["dak-nong", "mai-son"]


# -- signing in ----------------------------------------------------------------------

def test_sign_in_gives_the_users_principal_and_refuses_wrong_unknown_and_disabled(
        ready: Path, engine: Engine) -> None:
    auth.add_user(engine, "os:root", "ana", PASSWORD, "approver", "14")
    who = auth.authenticate_password(engine, "Ana", PASSWORD, "10.0.0.1")
    assert (who.actor, who.role, who.area_code, who.area_path) == ("user:ana", "approver", "14", paths(engine)["14"])
    for name, password in (("ana", PASSWORD + "x"), ("khong-co", PASSWORD)):
        with pytest.raises(AuthError) as refused:
            auth.authenticate_password(engine, name, password, "10.0.0.1")
        assert str(refused.value) == "wrong user name or password"
    auth.disable_user(engine, "os:root", "ana")
    with pytest.raises(AuthError, match="disabled"):
        auth.authenticate_password(engine, "ana", PASSWORD, "10.0.0.1")
    with pytest.raises(AuthError, match="disabled"):
        auth.principal_for_user(engine, "ana")
    assert PASSWORD not in everything_stored(engine)


def test_failed_sign_ins_lock_the_name_for_every_process_until_the_window_passes(
        ready: Path, engine: Engine, database_url: str) -> None:
    auth.add_user(engine, "os:root", "ana", PASSWORD, "operator")
    start = db.utcnow()
    with time_machine.travel(start, tick=False) as clock:
        for n in range(auth.MAX_FAILURES_PER_NAME - 1):
            with pytest.raises(AuthError):
                auth.authenticate_password(engine, "ana", f"sai-{n}-0000000", f"10.0.0.{n}")
        auth.authenticate_password(engine, "ana", PASSWORD, "10.0.0.9")     # a success starts the count again
        for n in range(auth.MAX_FAILURES_PER_NAME):
            clock.shift(timedelta(seconds=10))
            with pytest.raises(AuthError) as refused:
                auth.authenticate_password(engine, "ana", f"sai-{n}-1111111", f"10.0.1.{n}")
            assert not isinstance(refused.value, LockedOut)
        first_counted = start + timedelta(seconds=10)
        other = db.make_engine(database_url)     # another process: the lockout is in the database
        try:
            clock.shift(timedelta(minutes=1))
            with pytest.raises(LockedOut) as locked:
                auth.authenticate_password(other, "ANA", PASSWORD, "10.9.9.9")   # even the right password
            unlocks = first_counted + auth.LOCKOUT_WINDOW
            assert f"{unlocks:%H:%M:%S} UTC" in str(locked.value)
            assert locked.value.retry_after == int((unlocks - db.utcnow()).total_seconds()) + 1
            clock.move_to(unlocks - timedelta(seconds=1))
            with pytest.raises(LockedOut):
                auth.authenticate_password(other, "ana", PASSWORD, "10.9.9.9")
            clock.move_to(unlocks)
            assert auth.authenticate_password(other, "ana", PASSWORD, "10.9.9.9").name == "ana"
        finally:
            other.dispose()


def test_guesses_made_at_once_get_no_more_tries_than_the_limit(ready: Path, engine: Engine) -> None:
    """Each attempt counts before its password is checked, under a lock per name: guesses sent
    together, by as many connections, are checked no more often than one after another."""
    from concurrent.futures import ThreadPoolExecutor

    auth.add_user(engine, "os:root", "ana", PASSWORD, "operator")

    def guess(n: int) -> str:
        try:
            auth.authenticate_password(engine, "ana", f"doan-{n:02d}-xxxxxx", f"10.1.0.{n}")
        except LockedOut:
            return "locked"
        except AuthError:
            return "checked"
        return "signed in"

    with ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(guess, range(10)))
    assert sorted(outcomes) == ["checked"] * auth.MAX_FAILURES_PER_NAME + ["locked"] * 5, outcomes


def test_failed_sign_ins_from_one_client_lock_that_client_out_whatever_the_names(
        ready: Path, engine: Engine) -> None:
    auth.add_user(engine, "os:root", "ana", PASSWORD, "operator")
    with time_machine.travel(db.utcnow(), tick=False):
        for n in range(auth.MAX_FAILURES_PER_CLIENT):
            with pytest.raises(AuthError) as refused:
                auth.authenticate_password(engine, f"doan-{n}", PASSWORD, "203.0.113.7")
            assert not isinstance(refused.value, LockedOut)
        with pytest.raises(LockedOut):
            auth.authenticate_password(engine, "ana", PASSWORD, "203.0.113.7")
        assert auth.authenticate_password(engine, "ana", PASSWORD, "198.51.100.2").name == "ana"


# -- roles and areas -----------------------------------------------------------------

ALLOWED = {   # the roles: viewer (reports), operator (import, draft, test, pause),
    # approver (approve, launch, resume, cancel), admin (users, gateways, policy)
    "viewer": {"reports.read", "status.read", "campaigns.read"},
    "operator": {"imports.run", "campaigns.draft", "campaigns.test", "campaigns.pause", "runs.pause"},
    "approver": {"campaigns.approve", "campaigns.launch", "campaigns.resume", "campaigns.cancel", "runs.cancel"},
    "admin": {"users.manage", "keys.manage", "gateways.manage", "policy.manage"},
}


@pytest.mark.parametrize("role", auth.ROLES)
def test_each_role_may_do_what_its_own_and_lower_roles_do_and_nothing_above(role: str) -> None:
    who = Principal("user", "x", role)
    rank = auth.ROLES.index(role)
    for other, actions in ALLOWED.items():
        for action in actions:
            if auth.ROLES.index(other) <= rank:
                auth.require(who, action)
            else:
                with pytest.raises(Forbidden) as refused:
                    auth.require(who, action)
                assert refused.value.code == "role"
                assert f"{action} is not allowed for role {role}: it needs {auth.PERMISSIONS[action].role}" \
                    in str(refused.value)
    with pytest.raises(ValueError, match="no permission is declared"):
        auth.require(who, "campaigns.launhc")


def test_an_area_bound_principal_acts_only_inside_its_subtree(ready: Path, engine: Engine) -> None:
    p = paths(engine)
    with engine.connect() as conn:
        areas = {a.code: a for a in conn.execute(select(db.areas)).all()}
    bound = Principal("key", "ab12cd34", "approver", areas["14"].id, p["14"], "14", "Sơn La")
    auth.require(bound, "campaigns.launch", p["116"])                  # a district of Sơn La
    auth.require(bound, "campaigns.launch", [p["14"], p["125"]])       # a segment inside it
    for outside, said in (([p["116"], p["66"]], "the area at"), (areas["66"], "Đắk Nông (66)"),
                          ([], "the whole country"), (auth.EVERYWHERE, "the whole country")):
        with pytest.raises(Forbidden) as refused:
            auth.require(bound, "campaigns.cancel", outside)
        assert refused.value.code == "area" and said in str(refused.value)
        assert "outside the area of key ab12cd34 (approver bound to Sơn La (14))" in str(refused.value)
    with pytest.raises(Forbidden, match="concerns every area"):
        auth.require(bound, "stop.all")
    auth.require(Principal("user", "quoc-gia", "approver"), "campaigns.cancel", [])   # unbound: everywhere
    # the district Sơn La city is not inside its sibling Mai Sơn
    district = Principal("user", "tp", "viewer", areas["116"].id, p["116"], "116", "Thành phố Sơn La")
    assert not district.can("reports.read", p["125"]) and district.can("reports.read", p["116"])
    with engine.connect() as conn:
        seen = conn.scalars(select(db.areas.c.code).where(auth.scope_clause(bound, db.areas.c.id))).all()
    assert sorted(seen) == ["116", "125", "14"]


# -- API keys ------------------------------------------------------------------------

def test_an_api_key_is_shown_once_kept_as_a_hash_and_refused_once_revoked(
        ready: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOA_ACTOR", "quản-trị")
    made = ok(invoke(ready, "keys", "create", "--role", "operator", "--area", "14", "--name", "bảng tin"))
    key = made.stdout.strip()
    assert key.startswith("loa_") and len(key) == 56 and "shown only this once" in made.stderr
    prefix, secret = key.split("_", 2)[1:]
    listed = ok(invoke(ready, "keys", "list")).stdout
    assert f"loa_{prefix}_…" in listed and secret not in listed
    stored = everything_stored(engine)
    assert secret not in stored and key not in stored
    with engine.connect() as conn:
        assert conn.scalar(select(db.api_keys.c.secret_sha256)) == hashlib.sha256(secret.encode()).hexdigest()

    who = auth.authenticate_key(engine, key)
    assert (who.actor, who.role, who.area_code) == (f"key:{prefix}", "operator", "14")
    for wrong in (key[:-1] + ("A" if key[-1] != "A" else "B"), f"loa_00000000_{secret}", "Bearer nonsense"):
        with pytest.raises(AuthError):
            auth.authenticate_key(engine, wrong)
    with engine.connect() as conn:
        key_id = conn.scalar(select(db.api_keys.c.id))
    said = ok(invoke(ready, "keys", "revoke", str(key_id), "--reason", "lộ"))
    assert said.stdout.strip() == f"API key {key_id} (loa_{prefix}_…) revoked" and secret not in said.output
    with pytest.raises(AuthError, match="revoked"):
        auth.authenticate_key(engine, key)
    one_line_error(invoke(ready, "keys", "revoke", str(key_id)), "revoked already")
    one_line_error(invoke(ready, "keys", "revoke", "999"), "no API key with id 999")

    log = ok(invoke(ready, "audit", "--action", "keys", "--format", "json")).stdout
    assert secret not in log
    assert [(e["action"], e["actor"], e["object_id"]) for e in json.loads(log)] == [
        ("keys.create", "quản-trị", str(key_id)), ("keys.revoke", "quản-trị", str(key_id))]
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT created_by FROM api_keys")) == "quản-trị"
