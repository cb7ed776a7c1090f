"""The schema as it stood when loa adopted migrations (schema_version 1 of ``loa_meta``).

Its tables are frozen here, not read from :mod:`loa.db`: later migrations change the
schema, and this one must keep creating what it created.  On a database that an older
loa made with ``create_all`` (no ``alembic_version`` yet) it creates only what is missing
(tables, and the nullable columns later versions added), so such a database joins the
migration history with its data intact.

Revision ID: 0001
Revises:
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from loa.db import BigId, Json, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def tables() -> MetaData:
    """The baseline schema, as a MetaData of its own."""
    baseline = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s",
            "pk": "pk_%(table_name)s",
        }
    )

    Table(
        "loa_meta", baseline,
        Column("key", String(64), primary_key=True),
        Column("value", Text, nullable=False),
    )

    Table(
        "areas", baseline,
        Column("id", Integer, primary_key=True),
        Column("code", String(32), nullable=False, unique=True),
        Column("name", String(200), nullable=False),
        Column("name_key", String(200), nullable=False, index=True),   # folded: case and diacritics
        Column("short_key", String(200), nullable=False, index=True),  # folded, without "Huyện", "Tỉnh"...
        Column("parent_id", Integer, ForeignKey("areas.id"), nullable=True, index=True),
        Column("level", String(32), nullable=False, default=""),
        Column("path", String(1000), nullable=False, default="", index=True),  # "/1/7/": subtree by prefix
        Column("population", BigInteger, nullable=True),
        Column("population_as_of", Date, nullable=True),
        Column("updated_at", UTCDateTime, nullable=False),
    )

    Table(
        "subscribers", baseline,
        Column("id", BigId, primary_key=True),
        Column("phone", String(16), nullable=False, unique=True),
        Column("carrier", String(40), nullable=False, default=""),
        Column("area_id", Integer, ForeignKey("areas.id"), nullable=True, index=True),
        Column("name", String(200), nullable=False, default=""),
        Column("language", String(8), nullable=False, default="vi"),
        Column("attributes", Json, nullable=False, default=dict),
        Column("opted_out_at", UTCDateTime, nullable=True),
        Column("created_at", UTCDateTime, nullable=False),
        Column("updated_at", UTCDateTime, nullable=False),
    )

    # Every attribute name any subscriber carries: lets validation say "no subscriber
    # can have attr.X" without scanning a million JSON documents.
    Table(
        "attribute_keys", baseline,
        Column("name", String(100), primary_key=True),
    )

    Table(
        "campaigns", baseline,
        Column("id", Integer, primary_key=True),
        Column("name", String(100), nullable=False, unique=True),
        Column("description", Text, nullable=False, default=""),
        Column("advertising", Boolean, nullable=False, default=False),
        Column("created_at", UTCDateTime, nullable=False),
        Column("updated_at", UTCDateTime, nullable=False),
    )

    Table(
        "runs", baseline,
        Column("id", Integer, primary_key=True),
        Column("campaign_id", Integer, ForeignKey("campaigns.id"), nullable=False),
        Column("scheduled_for", UTCDateTime, nullable=False),
        Column("trigger", String(32), nullable=False, default="manual"),
        Column("status", String(16), nullable=False),        # planning, planned, done, failed, missed
        Column("definition", Json, nullable=False),           # the campaign as it was planned
        Column("created_at", UTCDateTime, nullable=False),
        Column("planned_at", UTCDateTime, nullable=True),
        Column("finished_at", UTCDateTime, nullable=True),
        Column("note", Text, nullable=False, default=""),
        UniqueConstraint("campaign_id", "scheduled_for"),
    )

    Table(
        "outbox", baseline,
        Column("id", BigId, primary_key=True),
        Column("run_id", Integer, ForeignKey("runs.id"), nullable=False),
        Column("subscriber_id", BigInteger, ForeignKey("subscribers.id"), nullable=False),
        Column("area_id", Integer, nullable=True),            # the area at planning time, for reports
        Column("state", String(16), nullable=False),
        Column("reason", String(200), nullable=True),
        Column("channel", String(8), nullable=True),
        Column("gateway", String(64), nullable=True),
        Column("due_at", UTCDateTime, nullable=True),
        Column("expires_at", UTCDateTime, nullable=True),   # not sent by then: expired (campaign validity)
        Column("attempts", Integer, nullable=False, default=0),
        Column("lease_until", UTCDateTime, nullable=True),
        Column("worker", String(64), nullable=True),
        Column("provider_id", String(100), nullable=True),
        Column("encoding", String(8), nullable=True),
        Column("parts", Integer, nullable=True),
        Column("error_code", String(40), nullable=True),
        Column("error_text", String(500), nullable=True),
        Column("updated_at", UTCDateTime, nullable=True),
        Column("sent_at", UTCDateTime, nullable=True),
        Column("delivered_at", UTCDateTime, nullable=True),
        UniqueConstraint("run_id", "subscriber_id"),
        # Partial indexes: claiming only ever looks at due rows, receipts only at sent ones,
        # and planning a million rows need not maintain entries nobody will read.
        Index("ix_outbox_due", "due_at", sqlite_where=text("state IN ('planned', 'deferred')"),
              postgresql_where=text("state IN ('planned', 'deferred')")),
        Index("ix_outbox_provider_id", "provider_id", sqlite_where=text("provider_id IS NOT NULL"),
              postgresql_where=text("provider_id IS NOT NULL")),
        Index("ix_outbox_state", "state", "lease_until", sqlite_where=text("state IN ('claimed', 'sending')"),
              postgresql_where=text("state IN ('claimed', 'sending')")),
    )

    Table(
        "events", baseline,
        Column("id", BigId, primary_key=True),
        Column("subscriber_id", BigInteger, ForeignKey("subscribers.id"), nullable=False),
        Column("type", String(32), nullable=False),
        Column("occurred_at", UTCDateTime, nullable=False),
        Column("source", String(64), nullable=False, default=""),
        Column("outbox_id", BigInteger, nullable=True),       # the message that prompted it, if known
        Column("attributes", Json, nullable=True),
        Column("created_at", UTCDateTime, nullable=False),
        UniqueConstraint("subscriber_id", "type", "occurred_at", "source"),
        Index("ix_events_type_subscriber", "type", "subscriber_id", "occurred_at"),
    )


    # A subscriber seen arriving in an area (operator registration feed, hotel check-in):
    # what "arrival" campaigns greet.
    Table(
        "arrivals", baseline,
        Column("id", BigId, primary_key=True),
        Column("subscriber_id", BigInteger, ForeignKey("subscribers.id"), nullable=False),
        Column("area_id", Integer, ForeignKey("areas.id"), nullable=False),
        Column("arrived_at", UTCDateTime, nullable=False),
        Column("source", String(64), nullable=False, default=""),
        Column("created_at", UTCDateTime, nullable=False),
        UniqueConstraint("subscriber_id", "area_id", "arrived_at"),
        Index("ix_arrivals_arrived_at", "arrived_at"),
    )


    # Aggregate counts per area at a date, as someone else counted them (a ministry's
    # registrations per district, a province's letter): kept as the source states them;
    # loa.snapshots computes rates, changes and totals and says where the statements disagree.
    Table(
        "snapshots", baseline,
        Column("id", BigId, primary_key=True),
        Column("area_id", Integer, ForeignKey("areas.id"), nullable=False),
        Column("metric", String(32), nullable=False),             # "installed", ...
        Column("as_of", Date, nullable=False),
        Column("value", BigInteger, nullable=True),               # as stated for the area; NULL: not stated
        Column("unallocated", BigInteger, nullable=True),         # in the area but in none of its children
        Column("stated_change", BigInteger, nullable=True),       # the change the source states ...
        Column("change_since", Date, nullable=True),              # ... since this date
        Column("stated_rate", String(16), nullable=True),         # the rate as printed, in percent: "6.4"
        Column("source", String(200), nullable=False, default=""),
        Column("imported_at", UTCDateTime, nullable=False),
        UniqueConstraint("area_id", "metric", "as_of"),
    )


    # Per-gateway shared state: pause flag, the GCRA's theoretical arrival time, and
    # what adapters keep through providers.base.StateStore (e.g. rotating OAuth tokens).
    Table(
        "gateways", baseline,
        Column("name", String(64), primary_key=True),
        Column("paused_reason", Text, nullable=True),
        Column("paused_at", UTCDateTime, nullable=True),
        Column("tat", Float, nullable=False, default=0.0),     # GCRA, seconds since the epoch
        Column("slowed_until", Float, nullable=False, default=0.0),
        Column("updated_at", UTCDateTime, nullable=False),
    )

    Table(
        "gateway_state", baseline,
        Column("gateway", String(64), primary_key=True),
        Column("key", String(100), primary_key=True),
        Column("value", Text, nullable=False),
        Column("updated_at", UTCDateTime, nullable=False),
    )

    # Do-not-contact: the national DNC list and local refusals, by phone.
    Table(
        "dnc", baseline,
        Column("phone", String(16), primary_key=True),
        Column("source", String(64), nullable=False, default=""),
        Column("added_at", UTCDateTime, nullable=False),
    )
    return baseline


def upgrade() -> None:
    conn = op.get_bind()
    inspector = sa.inspect(conn)
    for table in tables().sorted_tables:
        if not inspector.has_table(table.name):
            table.create(conn)
            continue
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in have and column.nullable:
                op.add_column(table.name, column._copy())
    meta = sa.table("loa_meta", sa.column("key", sa.String), sa.column("value", sa.Text))
    if conn.scalar(sa.select(meta.c.value).where(meta.c.key == "schema_version")) is None:
        conn.execute(meta.insert().values(key="schema_version", value="1"))


def downgrade() -> None:
    raise NotImplementedError("loa's first schema has nothing below it")
