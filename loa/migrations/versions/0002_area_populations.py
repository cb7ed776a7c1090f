"""Each area's population by date (area_populations), its history started from the
dated population every area already carries.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from loa.db import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    populations = op.create_table(
        "area_populations",
        sa.Column("area_id", sa.Integer, sa.ForeignKey("areas.id", name="fk_area_populations_area_id"),
                  primary_key=True),
        sa.Column("as_of", sa.Date, primary_key=True),
        sa.Column("population", sa.BigInteger, nullable=False),
        sa.Column("imported_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("area_id", "as_of", name="pk_area_populations"),
    )
    areas = sa.table("areas", sa.column("id", sa.Integer), sa.column("population", sa.BigInteger),
                     sa.column("population_as_of", sa.Date), sa.column("updated_at", UTCDateTime))
    op.execute(populations.insert().from_select(
        ["area_id", "as_of", "population", "imported_at"],
        sa.select(areas.c.id, areas.c.population_as_of, areas.c.population, areas.c.updated_at)
        .where(areas.c.population.is_not(None), areas.c.population_as_of.is_not(None)),
    ))


def downgrade() -> None:
    op.drop_table("area_populations")
