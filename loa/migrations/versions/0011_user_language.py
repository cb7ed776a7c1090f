"""Each user's language in the console (``users.language``, "vi" or "en"), kept in the
database so that it follows the user from browser to browser; Vietnamese for every user
until they or ``loa users language`` choose otherwise.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("language", sa.String(2), nullable=False, server_default="vi"))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("language")
