"""Personal data: consent per subscriber and purpose, restriction and erasure of a subscriber,
and the rendered text of each message (cleared after its retention period).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from loa.db import BigId, UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("subscribers", sa.Column("restricted_at", UTCDateTime, nullable=True))
    op.add_column("subscribers", sa.Column("erased_at", UTCDateTime, nullable=True))
    op.add_column("outbox", sa.Column("text", sa.Text, nullable=True))
    op.create_table(
        "consents",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("subscriber_id", sa.BigInteger, sa.ForeignKey("subscribers.id"), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("given_at", UTCDateTime, nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("evidence", sa.Text, nullable=False),
        sa.Column("withdrawn_at", UTCDateTime, nullable=True),
        sa.Column("withdrawn_source", sa.String(64), nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("subscriber_id", "purpose", "given_at",
                            name="uq_consents_subscriber_id_purpose_given_at"),
    )
    op.create_index("ix_consents_purpose_current", "consents", ["purpose", "subscriber_id"],
                    sqlite_where=sa.text("withdrawn_at IS NULL"), postgresql_where=sa.text("withdrawn_at IS NULL"))


def downgrade() -> None:
    op.drop_index("ix_consents_purpose_current", table_name="consents")
    op.drop_table("consents")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("text")
    with op.batch_alter_table("subscribers") as batch:
        batch.drop_column("erased_at")
        batch.drop_column("restricted_at")
