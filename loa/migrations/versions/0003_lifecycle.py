"""The lifecycle of campaigns and runs: a state (active, paused, cancelled, ...) with who
set it, when and why.  Campaigns and runs already in the database are active.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from loa.db import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _columns(width: int) -> list[sa.Column]:   # type: ignore[type-arg]
    return [
        sa.Column("state", sa.String(width), nullable=False, server_default="active"),
        sa.Column("state_reason", sa.Text, nullable=True),
        sa.Column("state_by", sa.String(100), nullable=True),
        sa.Column("state_at", UTCDateTime, nullable=True),
    ]


def upgrade() -> None:
    for column in _columns(24):
        op.add_column("campaigns", column)
    for column in _columns(16):
        op.add_column("runs", column)


def downgrade() -> None:
    for table in ("runs", "campaigns"):
        with op.batch_alter_table(table) as batch:
            for name in ("state_at", "state_by", "state_reason", "state"):
                batch.drop_column(name)
