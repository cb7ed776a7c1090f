"""Cost: what each message cost at send time and what a worker holds against a budget; and
the ledger of test sends, kept apart from the outbox.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from loa.db import BigId, UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("cost_vnd", sa.BigInteger, nullable=True))
    op.add_column("outbox", sa.Column("reserved_vnd", sa.BigInteger, nullable=True))
    op.create_table(
        "test_sends",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("campaign_id", sa.Integer, sa.ForeignKey("campaigns.id"), nullable=False),
        sa.Column("subscriber_id", sa.BigInteger, sa.ForeignKey("subscribers.id"), nullable=True),
        sa.Column("phone", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("channel", sa.String(8), nullable=False),
        sa.Column("gateway", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("provider_id", sa.String(100), nullable=True),
        sa.Column("encoding", sa.String(8), nullable=True),
        sa.Column("parts", sa.Integer, nullable=True),
        sa.Column("cost_vnd", sa.BigInteger, nullable=True),
        sa.Column("error_code", sa.String(40), nullable=True),
        sa.Column("error_text", sa.String(500), nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("sent_at", UTCDateTime, nullable=True),
    )
    op.create_index("ix_test_sends_campaign_id", "test_sends", ["campaign_id"])


def downgrade() -> None:
    op.drop_index("ix_test_sends_campaign_id", table_name="test_sends")
    op.drop_table("test_sends")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("reserved_vnd")
        batch.drop_column("cost_vnd")
