"""Cells the shared CSV reader refuses row by row (every import, both backends), and headers it
refuses whole: the good rows around a bad one always go in."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import write
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from loa import db
from loa.cli import main
from loa.config import Config
from loa.errors import InputError
from loa.importer import (
    AreasHandler,
    DncHandler,
    EventsHandler,
    ImportSummary,
    SnapshotsHandler,
    SubscribersHandler,
    run_import,
)

LIMIT = csv.field_size_limit()


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(table)) or 0


def read_rejects(path: Path | None) -> list[dict[str, str]]:
    assert path is not None, "no rejects file was written"
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def import_subscribers(engine: Engine, path: Path, **kw: Any) -> ImportSummary:
    return run_import(engine, SubscribersHandler(engine, path), path, **kw)


def phones(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.scalars(select(db.subscribers.c.phone)))


def test_cells_beyond_the_header_reject_their_row(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path / "subs.csv", """
        phone,name
        0912000001,An
        0912000002,Bình,Hà Nội
        0912000003,Chi,,
        0912000004,Dũng,, 7
    """)
    seen: list[str] = []
    summary = import_subscribers(engine, path, on_reject=seen.append)
    assert summary.failure is None
    assert (summary.read, summary.imported, summary.rejected) == (4, 2, 2)
    # empty trailing cells (a spreadsheet's trailing commas) are not data
    assert phones(engine) == {"+84912000001", "+84912000003"}
    rows = read_rejects(summary.rejects_path)
    assert [r["line"] for r in rows] == ["3", "5"]
    assert rows[0]["reason"] == "3 cells but the header has 2 columns: cell 3 ('Hà Nội') has no column"
    assert rows[1]["reason"] == "4 cells but the header has 2 columns: cell 4 (' 7') has no column"
    assert seen[0] == f"{path}:3: 3 cells but the header has 2 columns: cell 3 ('Hà Nội') has no column"


def nul_file(tmp_path: Path, header: str, good: str, bad: str, n: int) -> Path:
    """``n`` good rows (``good`` formatted with i), the bad one as line 3, in one 5,000-row batch."""
    path = tmp_path / "nul.csv"
    lines = [header, good.format(i=0), bad, *(good.format(i=i) for i in range(1, n))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", ["areas", "subscribers", "events", "dnc", "snapshots"])
def test_a_nul_character_rejects_its_row_not_the_batch(engine: Engine, config: Config, tmp_path: Path,
                                                       kind: str) -> None:
    """PostgreSQL refuses NUL in text: it rolled back the whole batch and stopped the import."""
    if kind in ("events", "snapshots"):
        areas = write(tmp_path / "areas.csv", "code,name\n" + "".join(f"{i},Xã {i}\n" for i in range(300)))
        assert run_import(engine, AreasHandler(engine, areas), areas).imported == 300
        subs = write(tmp_path / "subs.csv", "phone\n" + "".join(f"0912{i:06d}\n" for i in range(300)))
        assert import_subscribers(engine, subs).imported == 300
    header, good, bad, table, handler = {
        "areas": ("code,name", "{i},Xã {i}", "x1,Xã\x00Một", db.areas, AreasHandler),
        "subscribers": ("phone,name", "0912{i:06d},An", "0987000001,B\x00ình", db.subscribers, SubscribersHandler),
        "events": ("phone,type,time", "0912{i:06d},installed,2020-08-10", "0912000001,installed,2020-08-11\x00",
                   db.events, lambda e, p: EventsHandler(e, p, config.timezone)),
        "dnc": ("phone,source", "0912{i:06d},local", "0987000001,lo\x00cal", db.dnc, DncHandler),
        "snapshots": ("area,value,as_of,source", "{i},5,2020-08-17,x", "1,5,2020-08-18,x\x00",
                      db.snapshots, SnapshotsHandler),
    }[kind]
    path = nul_file(tmp_path, header, good, bad, 300)
    before = count(engine, table)
    summary = run_import(engine, handler(engine, path), path)
    assert summary.failure is None, summary.failure
    assert (summary.read, summary.imported, summary.rejected, summary.batches) == (301, 300, 1, 1)
    assert count(engine, table) - before == 300
    [row] = read_rejects(summary.rejects_path)
    assert row["line"] == "3"
    assert row["column"] == header.split(",")[next(i for i, c in enumerate(bad.split(",")) if "\x00" in c)]
    assert "contains a NUL character (byte 0x00)" in row["reason"]


@pytest.mark.parametrize("quoted", [False, True])
def test_a_cell_over_the_field_limit_rejects_its_row(engine: Engine, tmp_path: Path, quoted: bool) -> None:
    """A 10 MB cell stopped the whole import with "field larger than field limit"."""
    huge = "x" * 10_000_000
    cell = f'"{huge}"' if quoted else huge
    path = tmp_path / "subs.csv"
    path.write_text("phone,name,note\n0912000001,An,ok\n"
                    f"0912000002,Bình,{cell}\n"
                    f"0912000003,Chi,{'y' * LIMIT}\n"          # exactly at the limit: kept
                    "0912000004,Dũng,ok\n", encoding="utf-8")
    seen: list[str] = []
    summary = import_subscribers(engine, path, on_reject=seen.append)
    assert summary.failure is None
    assert (summary.read, summary.imported, summary.rejected) == (4, 3, 1)
    assert phones(engine) == {"+84912000001", "+84912000003", "+84912000004"}
    [row] = read_rejects(summary.rejects_path)
    assert row["line"] == "3"
    assert f"a cell is longer than {LIMIT:,} characters" in row["reason"]
    assert seen == [f"{path}:3: {row['reason']}"]


def test_a_long_cell_inside_quotes_over_several_lines_still_names_its_line(engine: Engine, tmp_path: Path) -> None:
    """Across lines nothing tells a long quoted cell from an unclosed quote: the import stops there."""
    path = tmp_path / "subs.csv"
    path.write_text('phone,name\n0912000001,An\n0912000002,"Bình\n' + ("z" * 1000 + "\n") * 200 + '"\n'
                    "0912000003,Chi\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"subs\.csv:3: malformed CSV: field larger than field limit"):
        import_subscribers(engine, path)
    assert phones(engine) == {"+84912000001"}


def test_a_column_named_twice_is_refused_with_its_name(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path / "subs.csv", "phone,name,age,name\n0912000001,An,31,Bình\n")
    with pytest.raises(InputError) as info:
        import_subscribers(engine, path)
    assert str(info.value) == f"{path}:1: column 'name' is named twice in the header (columns 2 and 4)"
    assert count(engine, db.subscribers) == 0


def test_a_nul_character_in_the_header_is_refused(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "subs.csv"
    path.write_text("phone,ag\x00e\n0912000001,31\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"subs\.csv:1: header column 2 contains a NUL character"):
        import_subscribers(engine, path)
    assert count(engine, db.subscribers) == 0


def test_loa_import_prints_each_refused_row_and_keeps_the_rest(workdir: Path, tmp_path: Path) -> None:
    path = tmp_path / "subs.csv"
    path.write_text("phone,name\n0912000001,An\n0912000002,B\x00ình\n0912000003,Chi,extra\n"
                    f"0912000004,{'x' * (LIMIT + 1)}\n0912000005,Em\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["--config", str(workdir / "config.toml"), "init"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["--config", str(workdir / "config.toml"), "import", "subscribers", str(path)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "5 rows read, 2 imported (2 new, 0 updated), 3 rejected" in result.stdout
    assert "subs.csv:3: name: cell 2 contains a NUL character" in result.stderr
    assert "subs.csv:4: 3 cells but the header has 2 columns" in result.stderr
    assert f"subs.csv:5: a cell is longer than {LIMIT:,} characters" in result.stderr
    assert "Traceback" not in result.output
