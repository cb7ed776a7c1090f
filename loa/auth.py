"""Users, roles and API keys: who may do what, and where.

* **Roles** rank ``viewer < operator < approver < admin``.  :data:`PERMISSIONS` declares,
  for every action, the least role that may take it and its scope; :func:`require` is the one
  check, raising :class:`Forbidden` with the reason (the role, or an area outside the subtree).
* **Areas.**  A user or key may be bound to an area: it then sees and acts only on what lies in
  that area's subtree (``areas.path`` is ``/1/7/``, so the subtree is a prefix).  Objects that
  cover the whole country (a segment without areas, a user without an area) are
  :data:`EVERYWHERE`, which no bound principal reaches.  :func:`scope_clause` filters queries.
* **Passwords** are argon2id hashes (argon2-cffi's defaults, RFC 9106's second recommended
  profile).  Sign-ins are rate-limited per user name and per client, in the database, so that
  the limit holds across processes and machines: :data:`MAX_FAILURES_PER_NAME` failures within
  :data:`LOCKOUT_WINDOW` lock the name until the oldest of them is that old.
* **API keys** are ``loa_<prefix>_<secret>``, printed once.  The prefix identifies a key in
  lists and the audit log.  Only the SHA-256 of the secret is kept, and compared in constant
  time.  A slow hash (argon2) protects secrets people choose, which an attacker can guess; a
  key's secret is 256 random bits, which no hash speed makes guessable, and argon2 would spend
  tens of milliseconds and 64 MiB on every API request instead.
* Every change to a user or a key writes an audit entry in the same transaction.  Password
  hashes and key secrets never reach an entry, a log line or an error.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, true, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import ColumnElement

from loa import audit, db
from loa.errors import LoaError, NotFound, Text

ROLES = ("viewer", "operator", "approver", "admin")
RANK = {role: n for n, role in enumerate(ROLES)}
ROLE_WORDS = {"viewer": Text("viewer"), "operator": Text("operator"), "approver": Text("approver"),
              "admin": Text("admin")}

EVERYWHERE = ""        # the area path of what covers the whole country: only unbound principals reach it


@dataclass(frozen=True, slots=True)
class Permission:
    role: str
    # "area": the action is on something that lies in areas, checked against the principal's subtree;
    # "any": nothing area-bound is involved; "global": the whole deployment, for unbound principals only.
    scope: str


PERMISSIONS: dict[str, Permission] = {
    # viewer: reports
    "reports.read": Permission("viewer", "area"),
    "status.read": Permission("viewer", "area"),
    "campaigns.read": Permission("viewer", "area"),
    "runs.read": Permission("viewer", "area"),
    "gateways.read": Permission("viewer", "any"),
    # operator: import, draft, test, pause
    "imports.run": Permission("operator", "global"),        # an import is not confined to an area
    "subscribers.read": Permission("operator", "area"),     # personal data
    "campaigns.draft": Permission("operator", "area"),
    "campaigns.preview": Permission("operator", "area"),    # renders real subscribers' messages
    "campaigns.test": Permission("operator", "area"),
    "campaigns.pause": Permission("operator", "area"),
    "runs.pause": Permission("operator", "area"),
    "stop.all": Permission("operator", "global"),
    # approver: approve, launch, resume, cancel
    "campaigns.approve": Permission("approver", "area"),
    "campaigns.launch": Permission("approver", "area"),
    "campaigns.resume": Permission("approver", "area"),
    "campaigns.cancel": Permission("approver", "area"),
    "runs.resume": Permission("approver", "area"),
    "runs.cancel": Permission("approver", "area"),
    "audit.read": Permission("approver", "global"),
    # a person's data (loa.subjects): see it whole, restrict or erase it; record their consent
    "consents.record": Permission("operator", "area"),
    "subjects.read": Permission("approver", "area"),
    "subjects.restrict": Permission("approver", "area"),
    "subjects.erase": Permission("admin", "area"),
    # admin: users, gateways, policy
    "users.manage": Permission("admin", "area"),            # users and keys within the admin's subtree
    "keys.manage": Permission("admin", "area"),
    "gateways.manage": Permission("admin", "global"),
    "policy.manage": Permission("admin", "global"),
}

MIN_PASSWORD = 10
LANGUAGES = ("vi", "en")            # a user's console language (loa.i18n.LANGUAGES)
LOCKOUT_WINDOW = timedelta(minutes=15)
MAX_FAILURES_PER_NAME = 5
MAX_FAILURES_PER_CLIENT = 20       # a client may be a whole office behind one address
KEEP_ATTEMPTS = timedelta(days=1)
KEY_USE_RESOLUTION = timedelta(minutes=1)   # last_used_at is written at most this often

_NAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
_KEY = re.compile(r"^loa_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")


class AuthError(LoaError):
    """Authentication failed (HTTP 401): the message never says which of name and password was wrong."""

    http_status = 401


class LockedOut(AuthError):
    """Too many failed sign-ins (HTTP 429); ``retry_after`` in seconds."""

    http_status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Forbidden(LoaError):
    """Authenticated but not allowed (HTTP 403); ``code`` is ``role`` or ``area``."""

    http_status = 403

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Principal:
    """Who acts: a signed-in user or an API key, with its role and area."""

    kind: str                     # "user" or "key"
    name: str                     # the user's name, or the key's prefix
    role: str
    area_id: int | None = None
    area_path: str | None = None  # "/1/7/"
    area_code: str | None = None
    area_name: str | None = None

    @property
    def actor(self) -> str:
        return f"{self.kind}:{self.name}"

    def describe(self) -> str:
        kind = {"user": Text("user"), "key": Text("key")}.get(self.kind, self.kind)
        role = ROLE_WORDS.get(self.role, self.role)
        if self.area_path:
            return Text("{kind} {name} ({role} bound to {area} ({code}))", kind=kind, name=self.name, role=role,
                        area=self.area_name, code=self.area_code)
        return Text("{kind} {name} ({role})", kind=kind, name=self.name, role=role)

    def can(self, action: str, area: Any = None) -> bool:
        try:
            require(self, action, area)
        except Forbidden:
            return False
        return True


def require(principal: Principal, action: str, area: Any = None) -> None:
    """Allow ``action`` or raise :class:`Forbidden` saying why.

    ``area`` is where the object lies: an area (its path, or anything with ``path``, ``code``
    and ``name``, such as ``loa.areas.Area``), several (a segment's areas: each must be inside;
    none is the whole country), or :data:`EVERYWHERE`; None when no area is involved.  An area-scoped action
    without an ``area`` is allowed: the caller then filters what it shows by
    :func:`scope_clause`.
    """
    try:
        needed = PERMISSIONS[action]
    except KeyError:
        raise ValueError(f"no permission is declared for action {action!r}") from None
    if RANK[principal.role] < RANK[needed.role]:
        raise Forbidden(Text("{action} is not allowed for role {role}: it needs {needed} or above ({who})",
                             action=action, role=ROLE_WORDS[principal.role], needed=ROLE_WORDS[needed.role],
                             who=principal.describe()), "role")
    if principal.area_path is None or needed.scope == "any":
        return
    if needed.scope == "global":
        raise Forbidden(Text("{action} concerns every area, and {who} is limited to its area", action=action,
                             who=principal.describe()), "area")
    if area is None:
        return
    places = [area] if isinstance(area, str) or hasattr(area, "path") else list(area)
    outside = [_label(p) for p in places or [EVERYWHERE]
               if not (p if isinstance(p, str) else p.path).startswith(principal.area_path)]
    if outside:
        raise Forbidden(Text("{action} on {places} is outside the area of {who}", action=action,
                             places=", ".join(outside), who=principal.describe()), "area")


def within(principal: Principal, path: str) -> bool:
    """Whether an area (its path) lies in the principal's subtree."""
    return principal.area_path is None or path.startswith(principal.area_path)


def scope_clause(principal: Principal, area_id: Any) -> ColumnElement[bool]:
    """A WHERE clause keeping rows whose ``area_id`` column lies in the principal's subtree."""
    if principal.area_path is None:
        return true()
    subtree = select(db.areas.c.id).where(db.areas.c.path.startswith(principal.area_path, autoescape=True))
    return area_id.in_(subtree)


def area_paths(conn: Connection, area_ids: Iterable[int]) -> list[str]:
    """The paths of areas by id (a campaign segment's areas), for :func:`require`."""
    ids = list(area_ids)
    if not ids:
        return []
    return list(conn.scalars(select(db.areas.c.path).where(db.areas.c.id.in_(ids))))


def _label(place: Any) -> str:
    if isinstance(place, str):
        return "the whole country" if place == EVERYWHERE else f"the area at {place}"
    return f"{place.name} ({place.code})"


# -- passwords -------------------------------------------------------------------

@cache
def _hasher() -> Any:
    from argon2 import PasswordHasher

    return PasswordHasher()


@cache
def _dummy_hash() -> str:
    """Verified against for unknown names, so that they take as long as known ones."""
    return str(_hasher().hash(secrets.token_urlsafe(16)))


def hash_password(password: str) -> str:
    return str(_hasher().hash(password))


def _verify(stored: str, password: str) -> bool:
    from argon2.exceptions import (
        InvalidHashError,
        VerificationError,
        VerifyMismatchError,
    )

    try:
        return bool(_hasher().verify(stored, password))
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise LoaError(Text("password too short: at least {n} characters", n=MIN_PASSWORD))
    if password.strip() != password or not password.isprintable():
        raise LoaError(Text("password must not start or end with spaces, nor contain control characters"))


def check_name(name: str) -> str:
    folded = name.strip().lower()
    if not _NAME.match(folded):
        raise LoaError(Text("user name {name!r} is not usable: 1 to 64 of a-z 0-9 . _ @ -, starting with a letter "
                            "or digit", name=name))
    return folded


def check_role(role: str) -> str:
    if role not in RANK:
        raise LoaError(Text("no role {role!r}: roles are {roles}", role=role, roles=", ".join(ROLES)))
    return role


# -- areas --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Area:
    id: int
    code: str
    name: str
    path: str


def _area_by_code(conn: Connection, code: str) -> _Area:
    A = db.areas
    row = conn.execute(select(A.c.id, A.c.code, A.c.name, A.c.path).where(A.c.code == code)).one_or_none()
    if row is None:
        raise NotFound(Text("no area with code {code!r} (areas come from `loa import areas`)", code=code))
    return _Area(*row)


def _area_by_id(conn: Connection, area_id: int | None) -> _Area | None:
    if area_id is None:
        return None
    A = db.areas
    row = conn.execute(select(A.c.id, A.c.code, A.c.name, A.c.path).where(A.c.id == area_id)).one()
    return _Area(*row)


def _principal(kind: str, name: str, role: str, area: _Area | None) -> Principal:
    if area is None:
        return Principal(kind, name, role)
    return Principal(kind, name, role, area.id, area.path, area.code, area.name)


def _check_by(by: Principal | str, action: str, area: _Area | str) -> str:
    """The actor of a management action; a principal must be allowed it on ``area``."""
    if isinstance(by, Principal):
        require(by, action, area)
        return by.actor
    return by


# -- users ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str
    area_code: str | None
    area_name: str | None
    created_at: datetime
    disabled_at: datetime | None
    last_login_at: datetime | None
    language: str = "vi"

    def state(self) -> dict[str, Any]:
        """What an audit entry keeps of a user: never the password hash."""
        return {"role": self.role, "area": self.area_code,
                "disabled_at": self.disabled_at.isoformat() if self.disabled_at else None}


def _users_query() -> Any:
    U, A = db.users, db.areas
    return (select(U.c.name, U.c.role, A.c.code, A.c.name.label("area_name"), U.c.created_at, U.c.disabled_at,
                   U.c.last_login_at, U.c.language, A.c.path)
            .select_from(U.outerjoin(A, A.c.id == U.c.area_id)))


def _user(conn: Connection, name: str) -> tuple[User, _Area | str]:
    """The user and its area (for :func:`require`)."""
    row = conn.execute(_users_query().where(db.users.c.name == name)).one_or_none()
    if row is None:
        raise NotFound(Text("no user named {name!r}", name=name))
    return User(*row[:8]), _Area(0, row.code, row.area_name, row.path) if row.path else EVERYWHERE


def list_users(engine: Engine, by: Principal | None = None) -> list[User]:
    """Every user (within ``by``'s subtree, for a bound principal), by name."""
    stmt = _users_query().order_by(db.users.c.name)
    if by is not None:
        require(by, "users.manage")
        stmt = stmt.where(scope_clause(by, db.users.c.area_id))
    with engine.connect() as conn:
        return [User(*row[:8]) for row in conn.execute(stmt)]


def check_new_user(engine: Engine, name: str, area_code: str | None = None) -> None:
    """Refuse a name that is taken or an area that does not exist, before a password is asked."""
    name = check_name(name)
    with engine.connect() as conn:
        if area_code:
            _area_by_code(conn, area_code)
        if conn.scalar(select(db.users.c.id).where(db.users.c.name == name)) is not None:
            raise LoaError(Text("a user named {name!r} exists already", name=name))


def add_user(engine: Engine, by: Principal | str, name: str, password: str, role: str,
             area_code: str | None = None) -> User:
    name, role = check_name(name), check_role(role)
    check_password(password)
    password_hash = hash_password(password)
    with engine.begin() as conn:
        area = _area_by_code(conn, area_code) if area_code else None
        actor = _check_by(by, "users.manage", area or EVERYWHERE)
        now = db.utcnow()
        if conn.scalar(select(db.users.c.id).where(db.users.c.name == name)) is not None:
            raise LoaError(Text("a user named {name!r} exists already", name=name))
        conn.execute(insert(db.users).values(name=name, password_hash=password_hash, role=role,
                                             area_id=area.id if area else None, created_at=now, updated_at=now))
        user, _ = _user(conn, name)
        audit.record(conn, actor, "users.add", "user", name, after=user.state())
    return user


def _change_user(engine: Engine, by: Principal | str, name: str, action: str, reason: str,
                 **values: Any) -> tuple[User, User]:
    name = name.strip().lower()
    with engine.begin() as conn:
        before, where = _user(conn, name)
        actor = _check_by(by, "users.manage", where)
        conn.execute(update(db.users).where(db.users.c.name == name).values(updated_at=db.utcnow(), **values))
        after, _ = _user(conn, name)
        audit.record(conn, actor, action, "user", name, before=before.state(), after=after.state(), reason=reason)
    return before, after


def set_role(engine: Engine, by: Principal | str, name: str, role: str, reason: str = "") -> tuple[User, User]:
    """(before, after) of the user whose role is set."""
    return _change_user(engine, by, name, "users.role", reason, role=check_role(role))


def disable_user(engine: Engine, by: Principal | str, name: str, reason: str = "") -> User:
    """Disable a user: no sign-in from now on (``principal_for_user`` refuses it too)."""
    with engine.connect() as conn:
        user, _ = _user(conn, name.strip().lower())
    if user.disabled_at is not None:
        raise LoaError(Text("user {name!r} is disabled already (since {since} UTC)", name=user.name,
                            since=user.disabled_at.strftime("%Y-%m-%d %H:%M")))
    return _change_user(engine, by, name, "users.disable", reason, disabled_at=db.utcnow())[1]


def set_password(engine: Engine, by: Principal | str, name: str, password: str, reason: str = "") -> None:
    check_password(password)
    _change_user(engine, by, name, "users.password", reason, password_hash=hash_password(password))


def set_language(engine: Engine, by: Principal | str, name: str, language: str, reason: str = "") -> tuple[User, User]:
    """(before, after) of the user whose console language is set: by the user itself, or by
    whoever manages users where the user lies; audited as ``users.language``."""
    if language not in LANGUAGES:
        raise LoaError(Text("unknown language {language!r} (known: {known})", language=language,
                            known=", ".join(LANGUAGES)))
    name = name.strip().lower()
    with engine.begin() as conn:
        before, where = _user(conn, name)
        if isinstance(by, Principal) and by.kind == "user" and by.name == name:
            actor = by.actor                  # everyone chooses their own language
        else:
            actor = _check_by(by, "users.manage", where)
        conn.execute(update(db.users).where(db.users.c.name == name).values(language=language))
        after, _ = _user(conn, name)
        audit.record(conn, actor, "users.language", "user", name, before={"language": before.language},
                     after={"language": after.language}, reason=reason)
    return before, after


def principal_and_language(engine: Engine, name: str) -> tuple[Principal, str]:
    """The principal of a signed-in user as it is now (a session re-reads it on each request),
    and the user's language: a disabled or removed user is refused."""
    U = db.users
    with engine.connect() as conn:
        row = conn.execute(select(U.c.role, U.c.area_id, U.c.disabled_at, U.c.language)
                           .where(U.c.name == name)).one_or_none()
        if row is None or row.disabled_at is not None:
            raise AuthError(Text("user {name!r} is disabled", name=name) if row is not None
                            else Text("user {name!r} is unknown", name=name))
        return _principal("user", name, row.role, _area_by_id(conn, row.area_id)), row.language


def principal_for_user(engine: Engine, name: str) -> Principal:
    """The principal of a signed-in user as it is now: a disabled or removed user is refused."""
    return principal_and_language(engine, name)[0]


# -- signing in -----------------------------------------------------------------

def _pg_lock(conn: Connection, name: str) -> None:
    """Serialise the attempts on one name across PostgreSQL sessions (SQLite's writer is one)."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(0x6C6F6131, func.hashtext(name))))


def _locked_until(conn: Connection, column: Any, value: str, since: datetime, limit: int,
                  after_id: int = 0) -> datetime | None:
    """When the lockout of this name (or client) ends, or None if it is not locked out now:
    failures since ``since`` and after the attempt ``after_id`` count."""
    L = db.login_attempts
    failures = list(conn.scalars(
        select(L.c.at).where(column == value, L.c.success.is_(False), L.c.at > since, L.c.id > after_id)
        .order_by(L.c.at.desc()).limit(limit)))
    return failures[-1] + LOCKOUT_WINDOW if len(failures) >= limit else None


def authenticate_password(engine: Engine, name: str, password: str, client: str = "") -> Principal:
    """The principal of a user signing in, or :class:`AuthError` / :class:`LockedOut`.

    ``client`` identifies where the attempt comes from (the remote address).  The attempt is
    counted as a failure before the password is checked, so concurrent guesses cannot
    overtake the limit; a success turns it into one and starts the count again.
    """
    L, U = db.login_attempts, db.users
    name, client = name.strip().lower()[:64], client[:64]
    now = db.utcnow()
    window = now - LOCKOUT_WINDOW
    with engine.begin() as conn:
        _pg_lock(conn, name)
        last_success = conn.scalar(select(func.max(L.c.id)).where(L.c.user_name == name, L.c.success.is_(True)))
        ends = [until for until in (
            _locked_until(conn, L.c.user_name, name, window, MAX_FAILURES_PER_NAME, last_success or 0),
            _locked_until(conn, L.c.client, client, window, MAX_FAILURES_PER_CLIENT) if client else None,
        ) if until is not None]
        if ends:
            until = max(ends)
            raise LockedOut(Text("too many failed sign-ins: try again after {until} UTC", until=until.strftime("%H:%M:%S")),
                            max(1, int((until - now).total_seconds()) + 1))
        attempt = conn.execute(insert(L).values(at=now, user_name=name, client=client, success=False)
                               .returning(L.c.id)).scalar_one()
        conn.execute(delete(L).where(L.c.user_name == name, L.c.at < now - KEEP_ATTEMPTS))
        row = conn.execute(select(U.c.id, U.c.password_hash, U.c.role, U.c.area_id, U.c.disabled_at)
                           .where(U.c.name == name)).one_or_none()
    if not _verify(row.password_hash if row is not None else _dummy_hash(), password) or row is None:
        raise AuthError(Text("wrong user name or password"))
    if row.disabled_at is not None:
        raise AuthError(Text("user {name!r} is disabled", name=name))
    with engine.begin() as conn:
        conn.execute(update(L).where(L.c.id == attempt).values(success=True))
        values: dict[str, Any] = {"last_login_at": now}
        if _hasher().check_needs_rehash(row.password_hash):
            values["password_hash"] = hash_password(password)
        conn.execute(update(U).where(U.c.id == row.id).values(**values))
        return _principal("user", name, row.role, _area_by_id(conn, row.area_id))


# -- API keys ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Key:
    id: int
    prefix: str
    name: str
    role: str
    area_code: str | None
    created_by: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

    @property
    def shown(self) -> str:
        """How a key is named once created: its prefix, never its secret."""
        return f"loa_{self.prefix}_…"

    def state(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "name": self.name, "role": self.role, "area": self.area_code,
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None}


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _keys_query() -> Any:
    K, A = db.api_keys, db.areas
    return (select(K.c.id, K.c.prefix, K.c.name, K.c.role, A.c.code, K.c.created_by, K.c.created_at, K.c.revoked_at,
                   K.c.last_used_at, A.c.path, A.c.name.label("area_name"))
            .select_from(K.outerjoin(A, A.c.id == K.c.area_id)))


def _key(conn: Connection, key_id: int) -> tuple[Key, _Area | str]:
    row = conn.execute(_keys_query().where(db.api_keys.c.id == key_id)).one_or_none()
    if row is None:
        raise NotFound(Text("no API key with id {id}", id=key_id))
    return Key(*row[:9]), _Area(0, row.code, row.area_name, row.path) if row.path else EVERYWHERE


def list_keys(engine: Engine, by: Principal | None = None) -> list[Key]:
    stmt = _keys_query().order_by(db.api_keys.c.id)
    if by is not None:
        require(by, "keys.manage")
        stmt = stmt.where(scope_clause(by, db.api_keys.c.area_id))
    with engine.connect() as conn:
        return [Key(*row[:9]) for row in conn.execute(stmt)]


def create_key(engine: Engine, by: Principal | str, role: str, area_code: str | None = None,
               name: str = "") -> tuple[Key, str]:
    """A new key and its full text, which is shown this once and kept nowhere."""
    role = check_role(role)
    if len(name) > 100:
        raise LoaError(Text("key name too long: {n} characters, at most 100", n=len(name)))
    for _ in range(5):       # a prefix is 32 random bits: a clash is rare, and retried
        prefix, secret = secrets.token_hex(4), secrets.token_urlsafe(32)
        try:
            with engine.begin() as conn:
                area = _area_by_code(conn, area_code) if area_code else None
                actor = _check_by(by, "keys.manage", area or EVERYWHERE)
                key_id = conn.execute(insert(db.api_keys).values(
                    prefix=prefix, secret_sha256=_sha256(secret), name=name, role=role,
                    area_id=area.id if area else None, created_by=actor, created_at=db.utcnow(),
                ).returning(db.api_keys.c.id)).scalar_one()
                key, _ = _key(conn, key_id)
                audit.record(conn, actor, "keys.create", "key", key_id, after=key.state())
            return key, f"loa_{prefix}_{secret}"
        except IntegrityError:
            continue
    raise LoaError("could not find a free key prefix; try again")


def revoke_key(engine: Engine, by: Principal | str, key_id: int, reason: str = "") -> Key:
    with engine.begin() as conn:
        before, where = _key(conn, key_id)
        actor = _check_by(by, "keys.manage", where)
        if before.revoked_at is not None:
            raise LoaError(Text("API key {id} ({shown}) is revoked already", id=key_id, shown=before.shown))
        conn.execute(update(db.api_keys).where(db.api_keys.c.id == key_id).values(revoked_at=db.utcnow()))
        after, _ = _key(conn, key_id)
        audit.record(conn, actor, "keys.revoke", "key", key_id, before=before.state(), after=after.state(),
                     reason=reason)
    return after


def authenticate_key(engine: Engine, key: str) -> Principal:
    """The principal of an API key, or :class:`AuthError` (a wrong, unknown or revoked key)."""
    K = db.api_keys
    found = _KEY.match(key.strip())
    if found is None:
        raise AuthError(Text("not an API key of loa (loa_XXXXXXXX_...)"))
    prefix, secret = found[1], found[2]
    with engine.connect() as conn:
        row = conn.execute(select(K.c.id, K.c.secret_sha256, K.c.role, K.c.area_id, K.c.revoked_at, K.c.last_used_at)
                           .where(K.c.prefix == prefix)).one_or_none()
        stored = row.secret_sha256 if row is not None else "0" * 64
        if not hmac.compare_digest(_sha256(secret), stored) or row is None:
            raise AuthError(Text("unknown or wrong API key"))
        if row.revoked_at is not None:
            raise AuthError(Text("API key loa_{prefix}_… is revoked", prefix=prefix))
        principal = _principal("key", prefix, row.role, _area_by_id(conn, row.area_id))
    now = db.utcnow()
    if row.last_used_at is None or now - row.last_used_at >= KEY_USE_RESOLUTION:
        with engine.begin() as conn:
            conn.execute(update(K).where(and_(K.c.id == row.id)).values(last_used_at=now))
    return principal
