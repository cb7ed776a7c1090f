"""Alembic's environment for loa: migrations run on the connection that
:func:`loa.db.create_schema` hands over, inside its transaction."""

from __future__ import annotations

from alembic import context

from loa import db

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=db.metadata,
    render_as_batch=connection.dialect.name == "sqlite",   # SQLite alters a table by copying it
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
