"""loa's schema migrations (Alembic): ``loa init`` upgrades any database to the head.

Every schema change is a new file in ``versions/``; ``tests/test_migrations.py`` fails when
``loa/db.py`` and the migrations disagree.  See :func:`loa.db.create_schema`.
"""
