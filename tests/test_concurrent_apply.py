"""Applies of one campaign at the same time, from threads and from ``loa campaigns apply``
processes, on SQLite and PostgreSQL: one new version per distinct content, version numbers
1, 2, 3... each once, and no apply's version lost or overwritten by another's.

``loa.versions.apply`` serialises applies (SQLite's one writer, taken at BEGIN IMMEDIATE;
PostgreSQL's advisory transaction locks, one per campaign it changes and one for applies, and
the campaign's row lock), and compares each content with the campaign's current version inside
those locks.  A plan holds its campaign's locks, not the applies' one: on PostgreSQL an apply
waits for a plan only to change the campaign being planned.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import pytest
from conftest import write
from sqlalchemy import event, select, text
from sqlalchemy.engine import Engine

from loa import audit, db, versions
from loa.config import Config

CAMPAIGN = """
name = "remind"
channels = ["sms"]
[sms]
template = "sms/remind.j2"
"""


def folder(root: Path, text: str) -> tuple[Path, Path]:
    """A campaigns folder and a templates folder holding ``remind`` with the SMS text ``text``."""
    (root / "templates" / "sms").mkdir(parents=True)
    (root / "campaigns").mkdir()
    write(root / "campaigns" / "remind.toml", CAMPAIGN)
    write(root / "templates" / "sms" / "remind.j2", text + "\n")
    return root / "campaigns", root / "templates"


def stored(engine: Engine) -> list[tuple[int, str]]:
    """(version, template text) of every version of remind, by version."""
    V, C = db.campaign_versions, db.campaigns
    with engine.connect() as conn:
        return [(v, t["sms/remind.j2"].strip()) for v, t in conn.execute(
            select(V.c.version, V.c.templates).join(C, C.c.id == V.c.campaign_id).order_by(V.c.version))]


def current(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(db.campaigns.c.current_version)) or 0)


def at_once(engine: Engine, config: Config, contents: list[tuple[Path, Path]]) -> list[Any]:
    """Apply each folder from its own thread, all released together; what each apply returned."""
    start = threading.Barrier(len(contents))
    results: list[Any] = [None] * len(contents)

    def apply(n: int) -> None:
        start.wait()
        try:
            results[n] = versions.apply(engine, config, f"os:t{n}", folder=contents[n][0],
                                        templates=contents[n][1]).campaigns[0]
        except Exception as exc:     # noqa: BLE001 - shown by the assertion below
            results[n] = exc

    threads = [threading.Thread(target=apply, args=(n,)) for n in range(len(contents))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert not [r for r in results if isinstance(r, Exception)], results
    return results


def test_applies_at_once_from_threads_add_one_version_per_content_and_lose_none(
        engine: Engine, config: Config, tmp_path: Path) -> None:
    # a new campaign three times at once: one campaign, one version 1
    first = at_once(engine, config, [folder(tmp_path / f"v{n}", "v1") for n in range(3)])
    assert sorted((r.added, r.version, r.before) for r in first) == [(False, 1, "active")] * 2 + [(True, 1, None)]
    # the same content four times at once: one new version, the others see it unchanged
    same = at_once(engine, config, [folder(tmp_path / f"a{n}", "A") for n in range(4)])
    assert sorted((r.added, r.version) for r in same) == [(False, 2)] * 3 + [(True, 2)]
    assert stored(engine) == [(1, "v1"), (2, "A")]

    # two contents, three applies each, at once
    mixed = at_once(engine, config, [folder(tmp_path / f"m{n}", "BC"[n % 2]) for n in range(6)])
    versions_now = stored(engine)
    numbers = [v for v, _ in versions_now]
    assert numbers == list(range(1, len(numbers) + 1))                  # each number once, none skipped
    assert 2 <= len(numbers) - 2 <= 6
    texts = [t for _, t in versions_now]
    assert all(a != b for a, b in itertools.pairwise(texts))  # a new version only for a change
    added = {r.version: "BC"[n % 2] for n, r in enumerate(mixed) if r.added}
    assert added == {v: t for v, t in versions_now[2:]}                 # every version added is kept, as sent
    assert current(engine) == numbers[-1]
    assert len(audit.query(engine, action="campaigns.apply")) == len(numbers)


def test_applies_at_once_from_processes_add_one_version(engine: Engine, workdir: Path, config: Config,
                                                        tmp_path: Path) -> None:
    versions.apply(engine, config, "os:t", folder=folder(tmp_path / "v1", "v1")[0], templates=tmp_path / "v1/templates")
    campaigns, templates = folder(tmp_path / "p", "P")
    procs = [subprocess.Popen([sys.executable, "-m", "loa", "campaigns", "apply", str(campaigns),
                               "--templates", str(templates)], cwd=workdir, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    said = sorted(out.splitlines()[0] for out, _ in outputs)
    assert said == ["remind: unchanged (version 2)"] * 2 + ["remind: version 2 applied, active"], said
    assert stored(engine) == [(1, "v1"), (2, "P")] and current(engine) == 2



class HeldPlan:
    """Runs calls in threads, and holds the one named ``held`` inside its transaction right
    after its ``INSERT INTO outbox`` (a long plan's insert), until the ``with`` block ends."""

    def __init__(self, engine: Engine, held: str) -> None:
        self.engine, self.held = engine, held
        self.inside, self.release = threading.Event(), threading.Event()
        self.results: dict[str, Any] = {}
        self.threads: list[threading.Thread] = []

    def _hold(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if threading.current_thread().name == self.held and statement.lstrip().upper().startswith("INSERT INTO OUTBOX"):
            self.inside.set()
            self.release.wait(120)

    def __enter__(self) -> Self:
        event.listen(self.engine, "after_cursor_execute", self._hold)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        for thread in self.threads:
            thread.join(120)
        event.remove(self.engine, "after_cursor_execute", self._hold)

    def call(self, key: str, fn: Any, *args: Any, **kw: Any) -> threading.Thread:
        def run() -> None:
            try:
                self.results[key] = fn(*args, **kw)
            except Exception as exc:     # noqa: BLE001 - shown by the caller's assertions
                self.results[key] = exc
        thread = threading.Thread(target=run, name=key)
        self.threads.append(thread)
        thread.start()
        if key == self.held:
            assert self.inside.wait(60), f"{key} never reached its insert: {self.results}"
        return thread

    def completes(self, key: str, fn: Any, *args: Any, why: str) -> Any:
        """``fn(*args)``, which must complete while the held plan waits (bounded: 60 s)."""
        thread = self.call(key, fn, *args)
        thread.join(60)
        assert not thread.is_alive(), why
        return self.results[key]

    def waits(self, key: str, fn: Any, *args: Any, why: str, **kw: Any) -> None:
        """Start ``fn(*args)``, which must wait for a lock the held plan holds (bounded: 60 s)."""
        self.call(key, fn, *args, **kw)
        for _ in range(600):
            if key in self.results or self.waiting_on_locks():
                break
            threading.Event().wait(0.1)
        assert key not in self.results, f"{why}: {self.results.get(key)}"
        assert self.waiting_on_locks(), f"{why}: nothing waits for a lock"

    def waiting_on_locks(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                        "AND wait_event_type = 'Lock'")) or 0)

    def outcome(self) -> dict[str, Any]:
        assert not [r for r in self.results.values() if isinstance(r, Exception)], self.results
        return self.results


def test_an_apply_waits_for_a_plan_only_to_change_its_campaign(engine: Engine, config: Config,
                                                               tmp_path: Path) -> None:
    """PostgreSQL: while remind's stored version is being planned (its insert done, not
    committed), applying it unchanged and applying another campaign complete; applying a change
    to remind waits for the plan, then adds version 2, and the run keeps version 1."""
    from loa.plan import plan_run

    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer: every apply waits for the plan being written")
    v1 = folder(tmp_path / "v1", "v1")
    versions.apply(engine, config, "os:t", folder=v1[0], templates=v1[1])
    remind = versions.load(engine, config, "remind")
    other = folder(tmp_path / "other", "v1")
    (other[0] / "remind.toml").rename(other[0] / "other.toml")
    write(other[0] / "other.toml", CAMPAIGN.replace('"remind"', '"other"'))
    v2 = folder(tmp_path / "v2", "v2")

    def apply(contents: tuple[Path, Path]) -> versions.Applied:
        return versions.apply(engine, config, "os:t", folder=contents[0], templates=contents[1]).campaigns[0]

    with HeldPlan(engine, "plan") as held:
        held.call("plan", plan_run, engine, config, remind, scheduled_for=datetime(2020, 8, 18, tzinfo=UTC))
        unchanged, added = held.completes("meanwhile", lambda: (apply(v1), apply(other)),
                                          why="applying remind unchanged, or another campaign, waited for remind's plan")
        held.waits("change", apply, v2, why="applying a change to remind did not wait for its plan")
    results = held.outcome()
    assert (unchanged.name, unchanged.version, unchanged.added) == ("remind", 1, False)
    assert (added.name, added.version, added.added) == ("other", 1, True)
    assert (results["change"].version, results["change"].added) == (2, True)
    assert stored(engine) == [(1, "v1"), (1, "v1"), (2, "v2")]
    with engine.connect() as conn:
        assert conn.scalar(select(db.runs.c.campaign_version)) == 1
