"""The schema by migrations: ``loa init`` brings any database to the newest schema.

* The migrations and ``loa/db.py`` agree: Alembic's own comparison finds nothing between a
  database migrated to the head and the tables the code uses, so a schema change without a
  migration fails here.
* A database made before migrations existed (by ``create_all``, with or without the nullable
  columns later versions added) is upgraded in place by ``loa init``, its rows intact.
* Every other command refuses a database that is behind, or ahead of, this loa, with one
  line saying what to do.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import write
from sqlalchemy import insert, inspect, select, text
from sqlalchemy.engine import Engine
from test_cli import invoke, ok, one_line_error

from loa import db

baseline = importlib.import_module("loa.migrations.versions.0001_baseline")


def drop_everything(engine: Engine) -> None:
    with engine.begin() as conn:
        for name in reversed(inspect(conn).get_table_names()):
            conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{name}" CASCADE' if conn.dialect.name == "postgresql"
                                 else f'DROP TABLE IF EXISTS "{name}"')


def made_before_migrations(engine: Engine, without: tuple[str, str] | None = None) -> None:
    """A database as loa made it before migrations: ``create_all`` of that day's tables and
    loa_meta's schema_version, and no alembic_version; ``without`` leaves out one nullable
    column, as an even older loa would have."""
    drop_everything(engine)
    tables = baseline.tables()
    if without is not None:
        table = tables.tables[without[0]]
        table._columns.remove(table.c[without[1]])
    with engine.begin() as conn:
        tables.create_all(conn)
        conn.execute(insert(tables.tables["loa_meta"]).values(key="schema_version", value="1"))
        now = db.utcnow()
        conn.execute(insert(tables.tables["subscribers"]).values(
            phone="+84912000001", carrier="Viettel", name="Người cũ", language="vi", attributes={"x": 1},
            created_at=now, updated_at=now))


@pytest.fixture(autouse=True)
def schema_restored(engine: Engine) -> object:
    """These tests take the schema apart: the next test finds it whole again."""
    yield
    drop_everything(engine)
    db.create_schema(engine)


@pytest.fixture
def config_for(workdir: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOA_DATABASE_URL", database_url)
    return workdir


@pytest.mark.parametrize("replay", [True, False], ids=["every-migration", "create-all-and-stamp"])
def test_the_migrations_build_exactly_the_schema_the_code_uses(engine: Engine, replay: bool) -> None:
    drop_everything(engine)
    assert db.create_schema(engine, replay=replay) is True
    with engine.connect() as conn:
        assert db.schema_revision(conn) == db._revisions()[0]
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), db.metadata)
    assert diffs == []
    assert db.create_schema(engine) is False      # once there, nothing more to do


def test_a_database_from_before_migrations_is_upgraded_by_init_with_its_rows(
        engine: Engine, config_for: Path) -> None:
    made_before_migrations(engine, without=("outbox", "delivered_at"))
    # every other command says what to do, and changes nothing
    one_line_error(invoke(config_for, "status"), "schema of an older loa", "before migrations", "loa init")
    with engine.connect() as conn:
        assert "alembic_version" not in inspect(conn).get_table_names()

    said = ok(invoke(config_for, "init")).stdout
    assert (f"upgraded loa schema in {db.redact(str(engine.url))}: revision none (made before migrations) → "
            f"{db._revisions()[0]}; existing data kept") in said
    with engine.connect() as conn:
        assert db.schema_revision(conn) == db._revisions()[0]
        assert conn.execute(select(db.subscribers.c.name, db.subscribers.c.attributes)).one() == ("Người cũ", {"x": 1})
        assert "delivered_at" in {c["name"] for c in inspect(conn).get_columns("outbox")}
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), db.metadata)
        assert conn.scalar(select(db.meta.c.value).where(db.meta.c.key == "schema_version")) == "1"
    assert diffs == []
    ok(invoke(config_for, "status"))


def test_a_database_from_a_newer_loa_is_refused(engine: Engine, config_for: Path) -> None:
    db.create_schema(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff9999'"))
    one_line_error(invoke(config_for, "status"), "revision ffff9999", "newer loa")
    one_line_error(invoke(config_for, "init"), "revision ffff9999", "newer loa")
    with engine.connect() as conn:
        assert db.schema_revision(conn) == "ffff9999"     # init did not touch it


def test_an_empty_database_still_asks_for_init(config_for: Path, engine: Engine) -> None:
    drop_everything(engine)
    one_line_error(invoke(config_for, "status"), "has no loa schema", "loa init")


@pytest.mark.skipif(not os.environ.get("LOA_TEST_DATABASE_URL"), reason="PostgreSQL only")
def test_services_starting_together_migrate_one_at_a_time(engine: Engine) -> None:
    drop_everything(engine)
    errors: list[BaseException] = []

    def init() -> None:
        other = db.make_engine(engine.url.render_as_string(hide_password=False))
        try:
            db.create_schema(other)
        except BaseException as exc:   # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            other.dispose()

    threads = [threading.Thread(target=init) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with engine.connect() as conn:
        assert db.schema_revision(conn) == db._revisions()[0]


def test_the_migration_template_makes_a_revision_that_loads(tmp_path: Path) -> None:
    """`alembic revision` with loa's script folder writes a file that imports."""
    from alembic import command
    from alembic.config import Config

    folder = tmp_path / "migrations"
    folder.mkdir()
    source = Path(db.__file__).parent / "migrations"
    write(folder / "env.py", (source / "env.py").read_text(encoding="utf-8"))
    write(folder / "script.py.mako", (source / "script.py.mako").read_text(encoding="utf-8"))
    (folder / "versions").mkdir()
    config = Config()
    config.set_main_option("script_location", str(folder))
    script = command.revision(config, message="add a thing", rev_id="0002", head="base")
    assert script is not None and Path(script.path).is_file()
    spec = importlib.util.spec_from_file_location("rev0002", script.path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.revision == "0002"


def test_a_users_language_is_added_as_vietnamese_and_taken_away_by_the_downgrade(engine: Engine) -> None:
    """0011: users.language, "vi" for the users already there; the downgrade keeps the users."""
    from alembic import command

    drop_everything(engine)
    with engine.begin() as conn:
        command.upgrade(db._alembic_config(conn), "0010")
        now = db.utcnow()
        conn.execute(text("INSERT INTO users (name, password_hash, role, created_at, updated_at) "
                          "VALUES ('ana', 'x', 'viewer', :now, :now)"), {"now": now})
    with engine.begin() as conn:
        command.upgrade(db._alembic_config(conn), "0011")
    with engine.begin() as conn:
        assert conn.execute(select(db.users.c.name, db.users.c.language)).all() == [("ana", "vi")]
        conn.execute(db.users.update().values(language="en"))
        command.downgrade(db._alembic_config(conn), "0010")
    with engine.begin() as conn:
        assert "language" not in {c["name"] for c in inspect(conn).get_columns("users")}
        assert conn.scalar(text("SELECT name FROM users")) == "ana"
        command.upgrade(db._alembic_config(conn), "head")
    with engine.connect() as conn:
        assert conn.execute(select(db.users.c.name, db.users.c.language)).all() == [("ana", "vi")]
        assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), db.metadata) == []
