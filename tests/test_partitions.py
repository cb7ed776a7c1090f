"""`loa db partition`: the outbox partitioned by month of runs on PostgreSQL, its rows kept,
idempotent, all or nothing; old months dropped only when none of their messages is pending;
refused on SQLite."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import PG_URL, write
from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine, make_url
from test_plan import TOWN, campaign

from loa import db, partitions, retention
from loa.cli import main
from loa.config import Config
from loa.errors import LoaError
from loa.importer import AreasHandler, SubscribersHandler, run_import
from loa.plan import plan_run

pg_only = pytest.mark.skipif(not PG_URL, reason="the outbox is partitioned on PostgreSQL only; "
                             "set LOA_TEST_DATABASE_URL to run these")
O, R = db.outbox, db.runs


@pytest.fixture
def fresh_pg() -> Iterator[str]:
    """A database of its own, never partitioned before (whatever LOA_TEST_PARTITIONED says)."""
    admin = db.make_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"loa_part_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def town_pg(fresh_pg: str, tmp_path: Path, areas_csv: Path) -> Iterator[Engine]:
    engine = db.make_engine(fresh_pg)
    db.create_schema(engine)
    run_import(engine, AreasHandler(engine, areas_csv), areas_csv)
    subs = write(tmp_path / "town.csv", TOWN)
    run_import(engine, SubscribersHandler(engine, subs), subs)
    yield engine
    engine.dispose()


def rows(engine: Engine, table: str = "outbox") -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            f"SELECT id, run_id, subscriber_id, state FROM {table} ORDER BY id")).all()]


def this_month(engine: Engine) -> date:
    with engine.connect() as conn:
        return partitions._this_month(conn)


@pg_only
def test_partition_keeps_every_row_and_new_runs_go_to_this_month(town_pg: Engine, config: Config) -> None:
    first = plan_run(town_pg, config, campaign(config, "before"))
    before = rows(town_pg)
    assert len(before) == 5

    done = partitions.partition(town_pg)

    month = this_month(town_pg)
    nxt = partitions.next_month(month)
    assert done.converted
    assert done.partitions == sorted([partitions.LEGACY, partitions.name_of(month), partitions.name_of(nxt)])
    assert rows(town_pg) == before == rows(town_pg, partitions.LEGACY)
    with town_pg.connect() as conn:
        assert partitions.is_partitioned(conn)
        names = set(conn.execute(text("SELECT conname FROM pg_constraint WHERE conrelid = 'outbox'::regclass")).scalars())
        indexes = set(conn.execute(text("SELECT indexrelid::regclass::text FROM pg_index "
                                        "WHERE indrelid = 'outbox'::regclass")).scalars())
    # the outbox's keys and indexes keep the names the schema gives them
    assert {"pk_outbox", "uq_outbox_run_id_subscriber_id", "fk_outbox_run_id", "fk_outbox_subscriber_id"} <= names
    assert {"ix_outbox_due", "ix_outbox_provider_id", "ix_outbox_state"} <= indexes

    second = plan_run(town_pg, config, campaign(config, "after"))
    assert partitions.block(month) <= second.run_id < partitions.block(nxt)
    assert len(rows(town_pg, partitions.name_of(month))) == 5
    again = plan_run(town_pg, config, campaign(config, "after"), scheduled_for=second.scheduled_for)
    assert again.added == 0   # the unique key still holds
    with town_pg.connect() as conn:   # and the new messages take ids after the old ones
        assert conn.scalar(select(func.min(O.c.id)).where(O.c.run_id == second.run_id)) > before[-1][0]
    assert first.run_id < partitions.block(month)


@pg_only
def test_partition_again_changes_nothing(town_pg: Engine, config: Config) -> None:
    plan_run(town_pg, config, campaign(config))
    first = partitions.partition(town_pg)
    kept = rows(town_pg)

    again = partitions.partition(town_pg)

    assert not again.converted and again.opened == [] and again.dropped == []
    assert again.partitions == first.partitions
    assert rows(town_pg) == kept


@pg_only
def test_a_failed_partition_changes_nothing(town_pg: Engine, config: Config) -> None:
    plan_run(town_pg, config, campaign(config))
    kept = rows(town_pg)
    with town_pg.begin() as conn:   # a run whose id is already past this month's block
        conn.execute(text("INSERT INTO runs (id, campaign_id, scheduled_for, trigger, status, definition, created_at, "
                          "note) SELECT :v, campaign_id, scheduled_for + interval '1 day', trigger, status, definition, "
                          "created_at, note FROM runs"), {"v": partitions.block(this_month(town_pg)) + 5})

    with pytest.raises(LoaError, match="nothing was changed"):
        partitions.partition(town_pg)

    with town_pg.connect() as conn:
        assert not partitions.is_partitioned(conn)
        assert conn.execute(text("SELECT to_regclass('outbox_legacy')")).scalar() is None
    assert [r[0] for r in rows(town_pg)] == [r[0] for r in kept]


@pg_only
def test_drop_before_drops_old_months_only_once_nothing_is_pending(town_pg: Engine, config: Config) -> None:
    old = plan_run(town_pg, config, campaign(config, "old"))
    with town_pg.begin() as conn:   # a run of last year, still in the legacy partition
        conn.execute(R.update().where(R.c.id == old.run_id).values(created_at=db.utcnow().replace(year=2020)))
    partitions.partition(town_pg)
    new = plan_run(town_pg, config, campaign(config, "new"))
    month = this_month(town_pg)

    with pytest.raises(LoaError, match=r"outbox_legacy still has 3 message\(s\) queued"):
        partitions.partition(town_pg, drop_before=month)
    assert partitions.LEGACY in partitions.partition(town_pg).partitions   # nothing was dropped

    with town_pg.begin() as conn:
        conn.execute(O.update().where(O.c.run_id == old.run_id).values(state="delivered"))
    done = partitions.partition(town_pg, drop_before=month)

    assert done.dropped == [partitions.LEGACY]
    assert partitions.name_of(month) in done.partitions
    assert {r[1] for r in rows(town_pg)} == {new.run_id}   # this month's messages are all there
    assert len(rows(town_pg)) == 5
    with town_pg.connect() as conn:   # the run itself is kept: the audit and the runs' list still name it
        assert conn.scalar(select(func.count()).select_from(R).where(R.c.id == old.run_id)) == 1


@pg_only
def test_drop_before_keeps_a_partition_holding_a_later_run(town_pg: Engine, config: Config) -> None:
    plan_run(town_pg, config, campaign(config))   # created this month, in the legacy partition
    partitions.partition(town_pg)
    with town_pg.begin() as conn:
        conn.execute(O.update().values(state="delivered"))

    done = partitions.partition(town_pg, drop_before=this_month(town_pg))

    assert done.dropped == []
    assert len(rows(town_pg)) == 5


@pg_only
def test_daily_retention_opens_the_next_month(town_pg: Engine, config: Config) -> None:
    partitions.partition(town_pg)
    nxt = partitions.name_of(partitions.next_month(this_month(town_pg)))
    with town_pg.begin() as conn:
        conn.execute(text(f"DROP TABLE {nxt}"))

    retention.daily(town_pg, config)

    with town_pg.connect() as conn:
        assert nxt in partitions.partitions(conn)


@pg_only
def test_cli_partitions_and_says_so(fresh_pg: str, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOA_DATABASE_URL", fresh_pg)
    engine = db.make_engine(fresh_pg)
    db.create_schema(engine)
    engine.dispose()
    runner = CliRunner()

    result = runner.invoke(main, ["--config", str(workdir / "config.toml"), "db", "partition"])

    assert result.exit_code == 0, result.output
    assert "partitioned by month of runs" in result.output
    again = runner.invoke(main, ["--config", str(workdir / "config.toml"), "db", "partition"])
    assert again.exit_code == 0 and "partitioned by month" not in again.output
    bad = runner.invoke(main, ["--config", str(workdir / "config.toml"), "db", "partition", "--drop-before", "2026-13"])
    assert bad.exit_code != 0 and "--drop-before: '2026-13' is not a month written YYYY-MM" in bad.output


@pytest.mark.skipif(bool(PG_URL), reason="the refusal is SQLite's; on PostgreSQL the command partitions")
def test_refused_on_sqlite_with_a_clear_error(workdir: Path, engine: Engine) -> None:
    result = CliRunner().invoke(main, ["--config", str(workdir / "config.toml"), "db", "partition"])

    assert result.exit_code != 0
    assert "partitioned on PostgreSQL only" in result.output and "sqlite" in result.output
    assert retention_open_ahead_is_a_no_op(engine)


def retention_open_ahead_is_a_no_op(engine: Engine) -> bool:
    return partitions.open_ahead(engine) == []


@pg_only
def test_drop_before_a_later_month_is_refused(town_pg: Engine) -> None:
    partitions.partition(town_pg)
    later = partitions.next_month(this_month(town_pg))

    with pytest.raises(LoaError, match="after this month"):
        partitions.partition(town_pg, drop_before=later)

    assert len(partitions.partition(town_pg).partitions) == 3


@pg_only
def test_a_report_reads_its_own_months_partition_only(town_pg: Engine, config: Config) -> None:
    from loa import report

    plan_run(town_pg, config, campaign(config, "old"))   # in the legacy partition
    partitions.partition(town_pg)
    plan_run(town_pg, config, campaign(config, "new"))   # in this month's
    with town_pg.connect() as conn:
        campaign_id = conn.scalar(select(db.campaigns.c.id).where(db.campaigns.c.name == "new"))
        clocks = report._run_clocks(conn, campaign_id)
        people = select(report._people(conn, campaign_id, "installed", clocks))
        sql = str(people.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
        plan = "\n".join(conn.execute(text("EXPLAIN " + sql)).scalars())
        assert report.build(town_pg, "new", None).total.audience == 5

    assert partitions.name_of(this_month(town_pg)) in plan
    assert partitions.LEGACY not in plan   # pruned when planned: the campaign's runs are named by id
