"""The audience a campaign's approval was given for (``campaigns.approved_audience``): the
``[approval] above_recipients`` rule is checked again when a run is planned or the campaign
launched, and an approval given below the threshold does not cover an audience that grew
above it.  Campaigns approved before have none, and are approved again if the rule applies.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("campaigns", sa.Column("approved_audience", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("approved_audience")
