"""The schema and the engine: one schema for SQLite (embedded) and PostgreSQL.

Tables are SQLAlchemy Core: every hot path (import, planning, claiming) is a
set-based statement, and the ORM's unit of work would only stand in the way.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from loa.errors import ConfigError, LoaError


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC in Python on every backend; naive input is refused.

    SQLite has no time zone type, so values are stored as naive UTC there and
    made aware again on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: loa stores aware UTC times only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# SQLite only makes INTEGER PRIMARY KEY an alias of the rowid (fast, autoincrementing).
BigId = BigInteger().with_variant(Integer(), "sqlite")
Json = JSON().with_variant(postgresql.JSONB(), "postgresql")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s",
        "pk": "pk_%(table_name)s",
    }
)

meta = Table(
    "loa_meta", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

areas = Table(
    "areas", metadata,
    Column("id", Integer, primary_key=True),
    Column("code", String(32), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("name_key", String(200), nullable=False, index=True),   # folded: case and diacritics
    Column("short_key", String(200), nullable=False, index=True),  # folded, without "Huyện", "Tỉnh"...
    Column("parent_id", Integer, ForeignKey("areas.id"), nullable=True, index=True),
    Column("level", String(32), nullable=False, default=""),
    Column("path", String(1000), nullable=False, default="", index=True),  # "/1/7/": subtree by prefix
    Column("population", BigInteger, nullable=True),
    Column("population_as_of", Date, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
)

# Each area's population by date, as imported: a report takes the figure in force at its
# campaign's time.  areas.population is the latest of these (or an undated figure, for an
# area that has none).
area_populations = Table(
    "area_populations", metadata,
    Column("area_id", Integer, ForeignKey("areas.id"), primary_key=True),
    Column("as_of", Date, primary_key=True),
    Column("population", BigInteger, nullable=False),
    Column("imported_at", UTCDateTime, nullable=False),
)

subscribers = Table(
    "subscribers", metadata,
    Column("id", BigId, primary_key=True),
    Column("phone", String(16), nullable=False, unique=True),
    Column("carrier", String(40), nullable=False, default=""),
    Column("area_id", Integer, ForeignKey("areas.id"), nullable=True, index=True),
    Column("name", String(200), nullable=False, default=""),
    Column("language", String(8), nullable=False, default="vi"),
    Column("attributes", Json, nullable=False, default=dict),
    Column("opted_out_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # personal data (loa.subjects): processing restricted at the person's request (nothing is
    # planned or sent); erased: the phone is the number's keyed hash, everything else cleared
    Column("restricted_at", UTCDateTime, nullable=True),
    Column("erased_at", UTCDateTime, nullable=True),
)

# Consent per subscriber and purpose (loa.consent): "public_interest", "advertising".  A consent is
# current while withdrawn_at is NULL; a new grant adds a row, so the history stays.
consents = Table(
    "consents", metadata,
    Column("id", BigId, primary_key=True),
    Column("subscriber_id", BigInteger, ForeignKey("subscribers.id"), nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("given_at", UTCDateTime, nullable=False),
    Column("source", String(64), nullable=False, default=""),      # "hotel check-in form", "sms:esms"
    Column("evidence", Text, nullable=False, default=""),          # "SMS reply DK to 8xxx at ..."
    Column("withdrawn_at", UTCDateTime, nullable=True),
    Column("withdrawn_source", String(64), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("subscriber_id", "purpose", "given_at"),
    Index("ix_consents_purpose_current", "purpose", "subscriber_id",
          sqlite_where=text("withdrawn_at IS NULL"), postgresql_where=text("withdrawn_at IS NULL")),
)

# Every attribute name any subscriber carries: lets validation say "no subscriber
# can have attr.X" without scanning a million JSON documents.
attribute_keys = Table(
    "attribute_keys", metadata,
    Column("name", String(100), primary_key=True),
)

campaigns = Table(
    "campaigns", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("description", Text, nullable=False, default=""),
    Column("advertising", Boolean, nullable=False, default=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # the lifecycle (loa.lifecycle): draft, pending_approval, approved, active, paused, finished,
    # cancelled; only an active campaign's messages are sent.  Who moved it last, when and why.
    Column("state", String(24), nullable=False, default="active", server_default="active"),
    Column("state_reason", Text, nullable=True),
    Column("state_by", String(100), nullable=True),
    Column("state_at", UTCDateTime, nullable=True),
    # the stored definitions (loa.versions): the newest version, the one submitted for
    # approval and the one approved (pinned: only it is planned when approval is needed)
    Column("current_version", Integer, nullable=True),
    Column("submitted_version", Integer, nullable=True),
    Column("approved_version", Integer, nullable=True),
    # the audience counted when it was approved: [approval] above_recipients is checked again
    # at plan and launch time, and an approval given below the threshold does not cover more
    Column("approved_audience", Integer, nullable=True),
)

# Campaign definitions as immutable versions: the TOML text and the templates it uses
# ({path: text}, relative to the templates folder), numbered 1, 2, ... per campaign.
campaign_versions = Table(
    "campaign_versions", metadata,
    Column("id", Integer, primary_key=True),
    Column("campaign_id", Integer, ForeignKey("campaigns.id"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("file", String(255), nullable=False),           # the file name it came from: NAME.toml
    Column("toml", Text, nullable=False),
    Column("templates", Json, nullable=False),
    Column("digest", String(64), nullable=False),          # SHA-256 of the TOML and the templates
    Column("created_at", UTCDateTime, nullable=False),
    Column("created_by", String(100), nullable=False),
    UniqueConstraint("campaign_id", "version"),
)

runs = Table(
    "runs", metadata,
    Column("id", Integer, primary_key=True),
    Column("campaign_id", Integer, ForeignKey("campaigns.id"), nullable=False),
    Column("scheduled_for", UTCDateTime, nullable=False),
    Column("trigger", String(32), nullable=False, default="manual"),
    Column("status", String(16), nullable=False),        # planning, planned, done, failed, missed
    Column("definition", Json, nullable=False),           # the campaign as it was planned
    Column("created_at", UTCDateTime, nullable=False),
    Column("planned_at", UTCDateTime, nullable=True),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("note", Text, nullable=False, default=""),
    # what people decided (loa.lifecycle): active, paused or cancelled; ``status`` is how far
    # planning and sending got.  Who moved it last, when and why.
    Column("state", String(16), nullable=False, default="active", server_default="active"),
    Column("state_reason", Text, nullable=True),
    Column("state_by", String(100), nullable=True),
    Column("state_at", UTCDateTime, nullable=True),
    Column("campaign_version", Integer, nullable=True),   # the version planned from (loa.versions)
    UniqueConstraint("campaign_id", "scheduled_for"),
)

outbox = Table(
    "outbox", metadata,
    Column("id", BigId, primary_key=True),
    Column("run_id", Integer, ForeignKey("runs.id"), nullable=False),
    Column("subscriber_id", BigInteger, ForeignKey("subscribers.id"), nullable=False),
    Column("area_id", Integer, nullable=True),            # the area at planning time, for reports
    Column("state", String(16), nullable=False),
    Column("reason", String(200), nullable=True),
    Column("channel", String(8), nullable=True),
    Column("gateway", String(64), nullable=True),
    Column("due_at", UTCDateTime, nullable=True),
    Column("expires_at", UTCDateTime, nullable=True),   # not sent by then: expired (campaign validity)
    Column("attempts", Integer, nullable=False, default=0),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("worker", String(64), nullable=True),
    Column("provider_id", String(100), nullable=True),
    Column("encoding", String(8), nullable=True),
    Column("parts", Integer, nullable=True),
    Column("error_code", String(40), nullable=True),
    Column("error_text", String(500), nullable=True),
    Column("updated_at", UTCDateTime, nullable=True),
    Column("sent_at", UTCDateTime, nullable=True),
    Column("delivered_at", UTCDateTime, nullable=True),
    # What the message cost, in VND, at the gateway's price when it was sent (loa.cost): a later
    # change of price leaves it alone.  A message sent again on a fallback channel adds its cost.
    Column("cost_vnd", BigInteger, nullable=True),
    # The price of the message a worker is about to send, held against the campaign's budget
    # while the row is claimed, sending or of unknown outcome (loa.cost.reserve).
    Column("reserved_vnd", BigInteger, nullable=True),
    # The rendered message as it went out (SMS text, or a Zalo template's data as JSON); cleared
    # after [retention] message_texts_days (loa.retention) and by an erasure.
    Column("text", Text, nullable=True),
    UniqueConstraint("run_id", "subscriber_id"),
    # Partial indexes: claiming only ever looks at due rows, receipts only at sent ones,
    # and planning a million rows need not maintain entries nobody will read.
    Index("ix_outbox_due", "due_at", sqlite_where=text("state IN ('planned', 'deferred')"),
          postgresql_where=text("state IN ('planned', 'deferred')")),
    Index("ix_outbox_provider_id", "provider_id", sqlite_where=text("provider_id IS NOT NULL"),
          postgresql_where=text("provider_id IS NOT NULL")),
    Index("ix_outbox_state", "state", "lease_until", sqlite_where=text("state IN ('claimed', 'sending')"),
          postgresql_where=text("state IN ('claimed', 'sending')")),
)

events = Table(
    "events", metadata,
    Column("id", BigId, primary_key=True),
    Column("subscriber_id", BigInteger, ForeignKey("subscribers.id"), nullable=False),
    Column("type", String(32), nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("source", String(64), nullable=False, default=""),
    Column("outbox_id", BigInteger, nullable=True),       # the message that prompted it, if known
    Column("attributes", Json, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("subscriber_id", "type", "occurred_at", "source"),
    Index("ix_events_type_subscriber", "type", "subscriber_id", "occurred_at"),
)


# A subscriber seen arriving in an area (operator registration feed, hotel check-in):
# what "arrival" campaigns greet.
arrivals = Table(
    "arrivals", metadata,
    Column("id", BigId, primary_key=True),
    Column("subscriber_id", BigInteger, ForeignKey("subscribers.id"), nullable=False),
    Column("area_id", Integer, ForeignKey("areas.id"), nullable=False),
    Column("arrived_at", UTCDateTime, nullable=False),
    Column("source", String(64), nullable=False, default=""),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("subscriber_id", "area_id", "arrived_at"),
    Index("ix_arrivals_arrived_at", "arrived_at"),
)


# Aggregate counts per area at a date, as someone else counted them (a ministry's
# registrations per district, a province's letter): kept as the source states them;
# loa.snapshots computes rates, changes and totals and says where the statements disagree.
snapshots = Table(
    "snapshots", metadata,
    Column("id", BigId, primary_key=True),
    Column("area_id", Integer, ForeignKey("areas.id"), nullable=False),
    Column("metric", String(32), nullable=False),             # "installed", ...
    Column("as_of", Date, nullable=False),
    Column("value", BigInteger, nullable=True),               # as stated for the area; NULL: not stated
    Column("unallocated", BigInteger, nullable=True),         # in the area but in none of its children
    Column("stated_change", BigInteger, nullable=True),       # the change the source states ...
    Column("change_since", Date, nullable=True),              # ... since this date
    Column("stated_rate", String(16), nullable=True),         # the rate as printed, in percent: "6.4"
    Column("source", String(200), nullable=False, default=""),
    Column("imported_at", UTCDateTime, nullable=False),
    UniqueConstraint("area_id", "metric", "as_of"),
)


# Test sends (`loa campaigns test`): a campaign's real message, rendered for one subscriber, sent
# to staff numbers.  Kept apart from the outbox, so that no report, status, metric or frequency
# cap can count one.
test_sends = Table(
    "test_sends", metadata,
    Column("id", BigId, primary_key=True),
    Column("campaign_id", Integer, ForeignKey("campaigns.id"), nullable=False, index=True),
    Column("subscriber_id", BigInteger, ForeignKey("subscribers.id"), nullable=True),   # whose message
    Column("phone", String(16), nullable=False),          # the staff number it went to
    Column("actor", String(100), nullable=False),
    Column("channel", String(8), nullable=False),
    Column("gateway", String(64), nullable=False),
    Column("state", String(16), nullable=False),          # sending, sent, delivered, failed, unknown
    Column("provider_id", String(100), nullable=True),
    Column("encoding", String(8), nullable=True),
    Column("parts", Integer, nullable=True),
    Column("cost_vnd", BigInteger, nullable=True),
    Column("error_code", String(40), nullable=True),
    Column("error_text", String(500), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime, nullable=True),
)


# Per-gateway shared state: pause flag, the GCRA's theoretical arrival time, and
# what adapters keep through providers.base.StateStore (e.g. rotating OAuth tokens).
gateways = Table(
    "gateways", metadata,
    Column("name", String(64), primary_key=True),
    Column("paused_reason", Text, nullable=True),
    Column("paused_at", UTCDateTime, nullable=True),
    Column("tat", Float, nullable=False, default=0.0),     # GCRA, seconds since the epoch
    Column("slowed_until", Float, nullable=False, default=0.0),
    Column("updated_at", UTCDateTime, nullable=False),
)

gateway_state = Table(
    "gateway_state", metadata,
    Column("gateway", String(64), primary_key=True),
    Column("key", String(100), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# Do-not-contact: the national DNC list and local refusals, by phone.
dnc = Table(
    "dnc", metadata,
    Column("phone", String(16), primary_key=True),
    Column("source", String(64), nullable=False, default=""),
    Column("added_at", UTCDateTime, nullable=False),
)


# -- users, API keys and the audit log (loa.auth, loa.audit) --------------------

# People who sign in: an argon2id hash of the password (never the password), a role, and
# optionally an area whose subtree is all they see and act on.
users = Table(
    "users", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("password_hash", String(200), nullable=False),
    Column("role", String(16), nullable=False),
    Column("area_id", Integer, ForeignKey("areas.id"), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("disabled_at", UTCDateTime, nullable=True),
    Column("last_login_at", UTCDateTime, nullable=True),
    # the console's language for this user ("vi" or "en"): `loa users language`, or the user's own choice
    Column("language", String(2), nullable=False, default="vi", server_default="vi"),
)

# Keys for programs: "loa_<prefix>_<secret>".  The prefix identifies the key in lists and
# logs; only the SHA-256 of the 256-bit secret is kept (loa.auth says why not argon2).
api_keys = Table(
    "api_keys", metadata,
    Column("id", Integer, primary_key=True),
    Column("prefix", String(16), nullable=False, unique=True),
    Column("secret_sha256", String(64), nullable=False),
    Column("name", String(100), nullable=False, default=""),
    Column("role", String(16), nullable=False),
    Column("area_id", Integer, ForeignKey("areas.id"), nullable=True),
    Column("created_by", String(100), nullable=False, default=""),
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("last_used_at", UTCDateTime, nullable=True),
)

# Sign-in attempts, kept in the database so that the lockout holds across processes
# and machines; pruned after a day.
login_attempts = Table(
    "login_attempts", metadata,
    Column("id", BigId, primary_key=True),
    Column("at", UTCDateTime, nullable=False),
    Column("user_name", String(64), nullable=False),
    Column("client", String(64), nullable=False, default=""),
    Column("success", Boolean, nullable=False),
    Index("ix_login_attempts_user_name_at", "user_name", "at"),
    Index("ix_login_attempts_client_at", "client", "at"),
)

# Console sessions ended by signing out (loa.web.console): a session is a signed cookie,
# and a copy of it (another tab's, a stolen one) must stop working when its user signs out.
# A row lives until the session would have expired anyway; then it is deleted.
console_sessions_ended = Table(
    "console_sessions_ended", metadata,
    Column("nonce", String(32), primary_key=True),
    Column("user_name", String(64), nullable=False),
    Column("ended_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False, index=True),
)

# Who did what, when, to which object, with its state before and after.  Append-only:
# loa has no statement that changes or removes a row, and the database refuses one
# (AUDIT_APPEND_ONLY, installed with the table).
audit_log = Table(
    "audit_log", metadata,
    Column("id", BigId, primary_key=True),
    Column("at", UTCDateTime, nullable=False, index=True),
    Column("actor", String(100), nullable=False, index=True),
    Column("action", String(64), nullable=False, index=True),
    Column("object_type", String(32), nullable=False, default=""),
    Column("object_id", String(200), nullable=False, default=""),
    Column("before", Json, nullable=True),
    Column("after", Json, nullable=True),
    Column("reason", Text, nullable=False, default=""),
    Index("ix_audit_log_object", "object_type", "object_id"),
)

# Imports started over the HTTP API (loa.imports): one row per uploaded file, its progress
# while a thread of the process that took it imports it, and its rejects once done, so
# that any process serving the API can answer for it.
import_jobs = Table(
    "import_jobs", metadata,
    Column("id", Integer, primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("state", String(16), nullable=False),            # running, done, failed
    Column("actor", String(100), nullable=False),
    Column("filename", String(200), nullable=False, default=""),
    Column("bytes_total", BigInteger, nullable=False, default=0),
    Column("bytes_done", BigInteger, nullable=False, default=0),
    Column("rows_total", Integer, nullable=True),           # counted before the import; None if unreadable
    Column("rows_done", Integer, nullable=False, default=0),
    Column("imported", Integer, nullable=False, default=0),
    Column("new", Integer, nullable=False, default=0),
    Column("rejected", Integer, nullable=False, default=0),
    Column("failure", Text, nullable=True),
    Column("rejects", Text, nullable=True),                 # the rejects CSV, once done
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
)

AUDIT_APPEND_ONLY: dict[str, tuple[str, ...]] = {
    "sqlite": (
        ("CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
        "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE refused'); END"),
        ("CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
        "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: DELETE refused'); END"),
    ),
    "postgresql": (
        ("CREATE OR REPLACE FUNCTION loa_audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $fn$ "
        "BEGIN RAISE EXCEPTION USING MESSAGE = 'audit_log is append-only: ' || TG_OP || ' refused', "
        "ERRCODE = 'insufficient_privilege'; END $fn$"),
        ("CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
        "FOR EACH ROW EXECUTE FUNCTION loa_audit_log_append_only()"),
    ),
}


@event.listens_for(audit_log, "after_create")
def _audit_log_append_only(target: Table, conn: Connection, **_: Any) -> None:
    for statement in AUDIT_APPEND_ONLY[conn.dialect.name]:
        conn.exec_driver_sql(statement)


def utcnow() -> datetime:
    """The one clock: tests move it with time-machine."""
    return datetime.now(UTC)


def message_key(run_id: int, subscriber_id: int, fallback: str | None = None) -> str:
    """Our idempotency key for one (run, subscriber): stable across retries and crashes.

    A message that fell back to a later channel gets that channel as a suffix: it is
    a new message, which a gateway deduplicating by key must not take for the first.
    """
    return f"loa-{run_id}-{subscriber_id}" + (f"-{fallback}" if fallback else "")


def key_for(run_id: int, subscriber_id: int, channel: str, definition: dict[str, Any]) -> str:
    channels = list(definition.get("channels") or [channel])
    return message_key(run_id, subscriber_id, None if channel == channels[0] else channel)


def make_engine(url: str, **kw: Any) -> Engine:
    try:
        engine = create_engine(url, **kw)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise ConfigError(f"database URL {redact(url)!r} is not usable: {exc}") from None
    if engine.dialect.name == "sqlite":
        _tune_sqlite(engine)
    elif engine.dialect.name != "postgresql":
        raise ConfigError(f"database {engine.dialect.name!r} is not supported; use SQLite or PostgreSQL")
    return engine


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, issue BEGIN, so that we can make it IMMEDIATE:
        # a deferred transaction that later writes can fail with "database is locked".
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        # what is deleted or overwritten is zeroed, free pages included: an erased person's
        # number leaves no trace in the file (loa.subjects)
        cur.execute("PRAGMA secure_delete=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


# Every schema change is an Alembic migration in loa/migrations/versions; `loa init` (and
# anything else that calls create_schema) brings a database to the newest one.
MIGRATIONS = "loa:migrations"
_MIGRATION_LOCK = 0x6C6F61   # PostgreSQL advisory lock: one migrating process at a time


def _alembic_config(conn: Connection | None = None) -> Any:
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", MIGRATIONS)
    config.attributes["connection"] = conn
    return config


@functools.cache
def _revisions() -> tuple[str, frozenset[str]]:
    """(the head revision, every revision this loa knows)."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(_alembic_config())
    head = scripts.get_current_head()
    assert head is not None, "loa/migrations has no revisions"
    return head, frozenset(s.revision for s in scripts.walk_revisions())


def schema_revision(conn: Connection) -> str | None:
    """The migration a database is at; None before its first (or with no loa schema)."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def revision_of(engine: Engine) -> str | None:
    """:func:`schema_revision` of a database that may not even have tables yet."""
    try:
        with engine.connect() as conn:
            return schema_revision(conn) if inspect(conn).has_table("alembic_version") else None
    except OperationalError:
        return None


def create_schema(engine: Engine, *, replay: bool = False) -> bool:
    """Bring the database to this loa's schema by its migrations; True if it was new.

    A database an older loa made before migrations (no ``alembic_version``) joins the
    history at the first revision, which creates only what it lacks.  Existing data is
    kept: migrations add and reshape, and a downgrade is never run for you.  An empty
    database gets the tables in one ``create_all`` and is stamped with the head, as
    Alembic's cookbook does; ``replay`` runs every migration instead (the test that
    the two agree).
    """
    head, known = _revisions()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":   # two services starting at once migrate one after the other
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        inspector = inspect(conn)
        new = not inspector.has_table("loa_meta")
        current = schema_revision(conn) if inspector.has_table("alembic_version") else None
        if current == head:
            return new
        if current is not None and current not in known:
            raise LoaError(_newer(engine, current))
        if new and current is None and not replay and not set(inspector.get_table_names()) & set(metadata.tables):
            metadata.create_all(conn)
            conn.execute(meta.insert().values(key="schema_version", value="1"))
            version = Table("alembic_version", MetaData(),
                            Column("version_num", String(32), primary_key=True, key="version_num"))
            version.create(conn)
            conn.execute(version.insert().values(version_num=head))
            return True
        from alembic import command

        command.upgrade(_alembic_config(conn), "head")
    return new


def _newer(engine: Engine, revision: str) -> str:
    return (f"database {redact(str(engine.url))} is at schema revision {revision}, which this loa does not know: "
            "a newer loa upgraded it; run that version")


def check_schema(engine: Engine) -> None:
    """Fail with one line if ``loa init`` has not been run, or was run by another loa."""
    try:
        with engine.connect() as conn:
            names = set(inspect(conn).get_table_names())
            current = schema_revision(conn) if "alembic_version" in names else None
    except OperationalError as exc:
        raise LoaError(f"cannot open database {redact(str(engine.url))}: {exc.orig}") from None
    if "loa_meta" not in names:
        raise LoaError(f"database {redact(str(engine.url))} has no loa schema; run `loa init` first")
    head, known = _revisions()
    if current == head:
        return
    if current is not None and current not in known:
        raise LoaError(_newer(engine, current))
    raise LoaError(f"database {redact(str(engine.url))} has the schema of an older loa "
                   f"(revision {current or 'before migrations'}, this loa needs {head}); "
                   "run `loa init` to upgrade it (existing data is kept)")


def insert_for(conn: Connection, table: Table) -> Any:
    """The dialect's INSERT, which has ``on_conflict_do_nothing``/``do_update``."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


# A bulk writer's own SQLite connection (an import, a plan): a larger page cache, so that the
# subscribers' unique phone index, filled in random order, stays in memory between batches;
# and fewer, larger checkpoints of the write-ahead log.  Durability is the connection's as
# usual (journal_mode=WAL, synchronous=NORMAL): each batch's commit is atomic, and a process
# killed mid-import keeps every batch committed before it.
BULK_PRAGMAS: dict[str, int] = {
    "cache_size": -32 * 1024,        # KiB: 32 MB (the default is 2 MB)
    "wal_autocheckpoint": 10_000,    # pages: about 40 MB of log between checkpoints (default 1,000)
}


@contextmanager
def bulk_connection(engine: Engine) -> Iterator[Connection]:
    """One connection for a bulk writer, with ``BULK_PRAGMAS`` on SQLite, restored after.

    The caller begins and commits its transactions on it (``with conn.begin():``).
    """
    with engine.connect() as conn:
        if conn.dialect.name != "sqlite":
            yield conn
            return
        cur = conn.connection.driver_connection.cursor()   # type: ignore[union-attr]
        before = {name: cur.execute(f"PRAGMA {name}").fetchone()[0] for name in BULK_PRAGMAS}
        try:
            for name, value in BULK_PRAGMAS.items():
                cur.execute(f"PRAGMA {name}={int(value)}")
            yield conn
        finally:
            if not conn.invalidated:
                for name, value in before.items():
                    cur.execute(f"PRAGMA {name}={int(value)}")
            cur.close()


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    with engine.begin() as conn:
        yield conn


__all__ = [
    "Float", "area_populations", "areas", "attribute_keys", "campaign_versions", "campaigns", "check_schema", "consents",
    "create_schema", "events",
    "insert_for", "make_engine", "message_key", "metadata", "outbox", "runs", "snapshots", "subscribers",
    "test_sends", "utcnow",
]
