"""Users, API keys, sign-in attempts and the append-only audit log.

The audit log gets triggers that refuse UPDATE and DELETE of its rows, on SQLite and
PostgreSQL alike.  The tables and the triggers are frozen here, as this revision made them.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import (
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

from loa.db import BigId, Json, UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

APPEND_ONLY = {
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


def tables() -> MetaData:
    new = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    Table("areas", new, Column("id", Integer, primary_key=True))   # referenced only, not created
    Table(
        "users", new,
        Column("id", Integer, primary_key=True),
        Column("name", String(64), nullable=False, unique=True),
        Column("password_hash", String(200), nullable=False),
        Column("role", String(16), nullable=False),
        Column("area_id", Integer, ForeignKey("areas.id"), nullable=True),
        Column("created_at", UTCDateTime, nullable=False),
        Column("updated_at", UTCDateTime, nullable=False),
        Column("disabled_at", UTCDateTime, nullable=True),
        Column("last_login_at", UTCDateTime, nullable=True),
    )
    Table(
        "api_keys", new,
        Column("id", Integer, primary_key=True),
        Column("prefix", String(16), nullable=False, unique=True),
        Column("secret_sha256", String(64), nullable=False),
        Column("name", String(100), nullable=False),
        Column("role", String(16), nullable=False),
        Column("area_id", Integer, ForeignKey("areas.id"), nullable=True),
        Column("created_by", String(100), nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        Column("revoked_at", UTCDateTime, nullable=True),
        Column("last_used_at", UTCDateTime, nullable=True),
    )
    Table(
        "login_attempts", new,
        Column("id", BigId, primary_key=True),
        Column("at", UTCDateTime, nullable=False),
        Column("user_name", String(64), nullable=False),
        Column("client", String(64), nullable=False),
        Column("success", Boolean, nullable=False),
        Index("ix_login_attempts_user_name_at", "user_name", "at"),
        Index("ix_login_attempts_client_at", "client", "at"),
    )
    Table(
        "audit_log", new,
        Column("id", BigId, primary_key=True),
        Column("at", UTCDateTime, nullable=False, index=True),
        Column("actor", String(100), nullable=False, index=True),
        Column("action", String(64), nullable=False, index=True),
        Column("object_type", String(32), nullable=False),
        Column("object_id", String(200), nullable=False),
        Column("before", Json, nullable=True),
        Column("after", Json, nullable=True),
        Column("reason", Text, nullable=False),
        Index("ix_audit_log_object", "object_type", "object_id"),
    )
    return new


NEW = ("users", "api_keys", "login_attempts", "audit_log")


def upgrade() -> None:
    conn = op.get_bind()
    new = tables()
    for name in NEW:
        new.tables[name].create(conn)
    for statement in APPEND_ONLY[conn.dialect.name]:
        conn.exec_driver_sql(statement)


def downgrade() -> None:
    for name in reversed(NEW):
        op.drop_table(name)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS loa_audit_log_append_only()")
