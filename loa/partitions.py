"""The outbox partitioned by month of runs, on PostgreSQL (``loa db partition``).

A national operator's ledger grows by one row per subscriber per run: 100 million a run.
Partitioned, each month of runs is a table of its own: reports and claims read the months they
need, a month past its retention goes with one ``DROP TABLE`` (no delete of 100 million rows, no
vacuum, no bloat), and every month's indexes stay as deep as one month's.

The partition key is the run id, in ranges.  A month owns the block of run ids
``[block(month), block(next month))``, ``block`` being ``BLOCK`` ids per month counted from
2000-01 (room for a million runs a month until 2178, within the runs' 32-bit ids); the runs' id
sequence is moved to the current month's block when that partition opens, so a month's runs
land in that month's partition.  The rows that were there before partitioning stay in
``outbox_legacy``, which covers every id below the first month's block.

- ``partition()`` turns the outbox into a partitioned table (once; again it only opens the
  current and next month), in one transaction under an exclusive lock of the outbox: either all
  of it happens or none.
- ``open_ahead()`` opens the next month's partition ahead of time: the elected scheduler's daily
  retention (loa.retention.daily) calls it, so the first run of a month never waits on DDL.
- ``drop_before()`` drops the partitions whose runs were all created before a month, refusing
  (and dropping nothing) while any of their messages is still queued or in flight.

SQLite keeps one outbox table: partitioning is PostgreSQL's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from loa import db
from loa.errors import InputError, LoaError

BLOCK = 1_000_000          # run ids per month
EPOCH = 2000               # block(2000-01) = 0
LEGACY = "outbox_legacy"
PENDING = ("planned", "deferred", "claimed", "sending", "unknown")
_NAME = re.compile(r"^outbox_y(\d{4})m(\d{2})$")
_LOCK = 0x6C6F6170   # the advisory lock that orders two partitioners


@dataclass
class Outcome:
    converted: bool = False                       # the outbox became partitioned by this call
    opened: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    partitions: list[str] = field(default_factory=list)


def block(month: date) -> int:
    """The first run id of ``month``'s partition."""
    return ((month.year - EPOCH) * 12 + month.month - 1) * BLOCK


def next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def name_of(month: date) -> str:
    return f"outbox_y{month.year:04d}m{month.month:02d}"


def parse_month(value: str) -> date:
    """``YYYY-MM`` (``--drop-before``), or a clear error naming the option."""
    m = re.fullmatch(r"(\d{4})-(\d{2})", value.strip())
    if not m or not 1 <= int(m.group(2)) <= 12 or int(m.group(1)) < EPOCH:
        raise InputError(f"--drop-before: {value!r} is not a month written YYYY-MM (from {EPOCH}-01)")
    return date(int(m.group(1)), int(m.group(2)), 1)


def _require_postgresql(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        raise LoaError(f"loa db partition: the outbox is partitioned on PostgreSQL only; this database is "
                       f"{engine.dialect.name} ({db.redact(str(engine.url))}), whose outbox stays one table")


def is_partitioned(conn: Connection) -> bool:
    return bool(conn.execute(text(
        "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
        "WHERE c.oid = to_regclass('outbox'))")).scalar())


def partitions(conn: Connection) -> list[str]:
    return list(conn.execute(text(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass('outbox') ORDER BY c.relname")).scalars())


def _this_month(conn: Connection) -> date:
    """The database server's month, in UTC (the runs' ``created_at``)."""
    today = conn.execute(text("SELECT (now() AT TIME ZONE 'UTC')::date")).scalar_one()
    return date(today.year, today.month, 1)


def _open(conn: Connection, month: date) -> str | None:
    """``month``'s partition, created if missing; its name if it was created."""
    name = name_of(month)
    if conn.execute(text("SELECT to_regclass(:n)"), {"n": name}).scalar() is not None:
        return None
    conn.execute(text(f"CREATE TABLE {name} PARTITION OF outbox "
                      f"FOR VALUES FROM ({block(month)}) TO ({block(next_month(month))})"))
    return name


def _move_runs_to(conn: Connection, month: date) -> None:
    """New runs take ids from ``month``'s block (never backwards: a sequence only moves on)."""
    sequence = conn.execute(text("SELECT pg_get_serial_sequence('runs', 'id')")).scalar_one()
    if sequence and conn.execute(text(f"SELECT last_value FROM {sequence}")).scalar_one() < block(month):
        conn.execute(text("SELECT setval(:s, :v, false)"), {"s": sequence, "v": block(month)})


def _convert(conn: Connection, month: date) -> None:
    """The outbox as it is becomes ``outbox_legacy``, the first partition of a new outbox with
    the same columns, defaults, constraints and indexes (by their names), covering every run id
    below ``month``'s block."""
    top = conn.execute(text("SELECT coalesce(max(id), 0) FROM runs")).scalar_one()
    if top >= block(month):
        raise LoaError(f"loa db partition: run id {top:,} is not below {block(month):,}, where {month:%Y-%m}'s "
                       "partition starts; nothing was changed")
    constraints = conn.execute(text(
        "SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = 'outbox'::regclass AND contype IN ('p', 'u', 'f') ORDER BY contype, conname")).all()
    indexes = conn.execute(text(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = 'outbox'::regclass "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) ORDER BY c.relname")).all()
    sequence = conn.execute(text("SELECT pg_get_serial_sequence('outbox', 'id')")).scalar_one()
    conn.execute(text(f"ALTER TABLE outbox RENAME TO {LEGACY}"))
    # the old table's names go with it, so that the new outbox takes the originals (renaming
    # the index of a key renames the key)
    for (index,) in conn.execute(text(
            f"SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            f"WHERE i.indrelid = '{LEGACY}'::regclass")).all():
        conn.execute(text(f'ALTER INDEX "{index}" RENAME TO "{_legacy_name(index)}"'))
    for name, kind, _ in constraints:
        if kind == "f":
            conn.execute(text(f'ALTER TABLE {LEGACY} RENAME CONSTRAINT "{name}" TO "{_legacy_name(name)}"'))
    # a partitioned table's keys include the partition key: (id, run_id); ids stay unique by their sequence
    for name, kind, _ in constraints:
        if kind == "p":
            conn.execute(text(f'ALTER TABLE {LEGACY} DROP CONSTRAINT "{_legacy_name(name)}"'))
            conn.execute(text(f'ALTER TABLE {LEGACY} ADD CONSTRAINT "{_legacy_name(name)}" PRIMARY KEY (id, run_id)'))
    conn.execute(text(f"CREATE TABLE outbox (LIKE {LEGACY} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
                      "INCLUDING STORAGE) PARTITION BY RANGE (run_id)"))
    if sequence:   # the ids' sequence belongs to the outbox, not to a partition that may be dropped one day
        conn.execute(text(f"ALTER SEQUENCE {sequence} OWNED BY outbox.id"))
    for name, kind, definition in constraints:
        conn.execute(text(f'ALTER TABLE outbox ADD CONSTRAINT "{name}" '
                          + ("PRIMARY KEY (id, run_id)" if kind == "p" else definition)))
    for _, definition in indexes:   # the partial indexes, by the definitions they had
        conn.execute(text(definition))
    # the partition's bound, proved once by a check, so that attaching does not scan it again
    conn.execute(text(f"ALTER TABLE {LEGACY} ADD CONSTRAINT outbox_legacy_bound CHECK (run_id < {block(month)})"))
    conn.execute(text(f"ALTER TABLE outbox ATTACH PARTITION {LEGACY} FOR VALUES FROM (MINVALUE) TO ({block(month)})"))
    conn.execute(text(f"ALTER TABLE {LEGACY} DROP CONSTRAINT outbox_legacy_bound"))


def _legacy_name(name: str) -> str:
    return f"{name}_legacy"[-63:] if len(name) > 56 else f"{name}_legacy"


def partition(engine: Engine, *, drop_before: date | None = None) -> Outcome:
    """Partition the outbox (once), open this month's and the next month's partitions, and
    drop the months before ``drop_before``: all in one transaction."""
    _require_postgresql(engine)
    outcome = Outcome()
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK})
        conn.execute(text("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE"))
        month = _this_month(conn)
        if not is_partitioned(conn):
            _convert(conn, month)
            outcome.converted = True
        outcome.opened = [n for n in (_open(conn, month), _open(conn, next_month(month))) if n]
        _move_runs_to(conn, month)
        if drop_before is not None and drop_before > month:
            raise LoaError(f"loa db partition --drop-before {drop_before:%Y-%m}: that is after this month "
                           f"({month:%Y-%m}), whose runs are still going out; nothing was changed")
        if drop_before is not None:
            outcome.dropped = _drop_before(conn, drop_before)
        outcome.partitions = partitions(conn)
    return outcome


def open_ahead(engine: Engine) -> list[str]:
    """This month's and the next month's partitions, if the outbox is partitioned; the ones
    created.  Nothing on SQLite or on an outbox that was never partitioned."""
    if engine.dialect.name != "postgresql":
        return []
    with engine.begin() as conn:
        if not is_partitioned(conn):
            return []
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK})
        month = _this_month(conn)
        opened = [n for n in (_open(conn, month), _open(conn, next_month(month))) if n]
        _move_runs_to(conn, month)
    return opened


def _drop_before(conn: Connection, cutoff: date) -> list[str]:
    """Drop every partition all of whose runs were created before ``cutoff``; refuse the whole
    command if one of them still has a message queued or in flight."""
    doomed: list[tuple[str, int | None, int]] = []
    for name in partitions(conn):
        if name == LEGACY:
            low, high = None, min((block(_month_of(n)) for n in partitions(conn) if _NAME.match(n)), default=0)
        elif m := _NAME.match(name):
            month = date(int(m.group(1)), int(m.group(2)), 1)
            if block(month) >= block(cutoff):
                continue
            low, high = block(month), block(next_month(month))
        else:
            continue
        within = "id < :high" if low is None else "id >= :low AND id < :high"
        newest = conn.execute(text(f"SELECT max(created_at) FROM runs WHERE {within}"),
                              {"low": low, "high": high}).scalar()
        if newest is not None and (newest.year, newest.month) >= (cutoff.year, cutoff.month):
            continue    # a run of the kept months lives there (the legacy partition, or a late run)
        doomed.append((name, low, high))
    for name, _, _ in doomed:
        pending = conn.execute(text(f"SELECT count(*) FROM {name} WHERE state IN :states").bindparams(
            _expanding()), {"states": list(PENDING)}).scalar_one()
        if pending:
            raise LoaError(f"loa db partition --drop-before {cutoff:%Y-%m}: {name} still has {pending:,} message(s) "
                           f"queued or in flight ({', '.join(PENDING)}); nothing was dropped")
    for name, _, _ in doomed:
        conn.execute(text(f"ALTER TABLE outbox DETACH PARTITION {name}"))
        conn.execute(text(f"DROP TABLE {name}"))
    return [name for name, _, _ in doomed]


def _month_of(name: str) -> date:
    m = _NAME.match(name)
    assert m is not None
    return date(int(m.group(1)), int(m.group(2)), 1)


def _expanding() -> object:
    from sqlalchemy import bindparam

    return bindparam("states", expanding=True)


__all__ = ["BLOCK", "LEGACY", "Outcome", "block", "is_partitioned", "open_ahead", "parse_month", "partition",
           "partitions"]
