"""Import jobs of the HTTP API: progress, counts and rejects of an uploaded file.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, Text

from loa.db import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def tables() -> MetaData:
    new = MetaData(naming_convention={"pk": "pk_%(table_name)s"})
    Table(
        "import_jobs", new,
        Column("id", Integer, primary_key=True),
        Column("kind", String(16), nullable=False),
        Column("state", String(16), nullable=False),
        Column("actor", String(100), nullable=False),
        Column("filename", String(200), nullable=False),
        Column("bytes_total", BigInteger, nullable=False),
        Column("bytes_done", BigInteger, nullable=False),
        Column("rows_total", Integer, nullable=True),
        Column("rows_done", Integer, nullable=False),
        Column("imported", Integer, nullable=False),
        Column("new", Integer, nullable=False),
        Column("rejected", Integer, nullable=False),
        Column("failure", Text, nullable=True),
        Column("rejects", Text, nullable=True),
        Column("created_at", UTCDateTime, nullable=False),
        Column("updated_at", UTCDateTime, nullable=False),
        Column("finished_at", UTCDateTime, nullable=True),
    )
    return new


def upgrade() -> None:
    tables().tables["import_jobs"].create(op.get_bind())


def downgrade() -> None:
    op.drop_table("import_jobs")
