"""Campaigns as versioned records: ``campaign_versions`` (the TOML text and templates of each
version), the campaign's current, submitted and approved versions, and the version a run
was planned from.  Existing campaigns and runs have none until their next apply or plan.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from loa.db import Json, UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "campaign_versions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("campaign_id", sa.Integer, sa.ForeignKey("campaigns.id", name="fk_campaign_versions_campaign_id"),
                  nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("file", sa.String(255), nullable=False),
        sa.Column("toml", sa.Text, nullable=False),
        sa.Column("templates", Json, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("created_by", sa.String(100), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_campaign_versions"),
        sa.UniqueConstraint("campaign_id", "version", name="uq_campaign_versions_campaign_id_version"),
    )
    for name in ("current_version", "submitted_version", "approved_version"):
        op.add_column("campaigns", sa.Column(name, sa.Integer, nullable=True))
    op.add_column("runs", sa.Column("campaign_version", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("campaign_version")
    with op.batch_alter_table("campaigns") as batch:
        for name in ("approved_version", "submitted_version", "current_version"):
            batch.drop_column(name)
    op.drop_table("campaign_versions")
