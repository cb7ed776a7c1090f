"""Console sessions ended by signing out, so that a copy of the cookie stops working too.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import Column, Index, MetaData, String, Table

from loa.db import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def tables() -> MetaData:
    new = MetaData(naming_convention={"pk": "pk_%(table_name)s"})
    Table(
        "console_sessions_ended", new,
        Column("nonce", String(32), primary_key=True),
        Column("user_name", String(64), nullable=False),
        Column("ended_at", UTCDateTime, nullable=False),
        Column("expires_at", UTCDateTime, nullable=False),
        Index("ix_console_sessions_ended_expires_at", "expires_at"),
    )
    return new


def upgrade() -> None:
    tables().tables["console_sessions_ended"].create(op.get_bind())


def downgrade() -> None:
    op.drop_table("console_sessions_ended")
