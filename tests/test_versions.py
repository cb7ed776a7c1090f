"""Campaigns as versioned records: ``loa campaigns apply``/``export``/``versions``/``diff``.

Once applied, the database is the only source of a campaign: what is planned and sent is the
stored version's TOML and templates, whatever the files say, on every machine; each run
records the version it was planned from.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import AREAS_CSV, write
from sqlalchemy import func, select
from test_cli import invoke, ok, subscribers_csv

from loa import audit, db

CAMPAIGN = """
name = "remind"
description = "Nhắc cài Bluezone"
channels = ["sms"]
holdout = 0
[segment]
areas = ["Sơn La"]
[sms]
template = "sms/remind.j2"
gateway = "jsonl"
[window]                          # open all day: the send window is tested in test_policy
start = "00:00"
end = "24:00"
"""
FIRST = "Chào {{ subscriber.name }}, hãy cài Bluezone.\n"
SECOND = "Xin chào {{ subscriber.name }}: cài Bluezone hôm nay.\n"


@pytest.fixture
def town(workdir: Path, tmp_path: Path) -> Path:
    config = workdir / "config.toml"   # the file gateway writes into this test's folder
    config.write_text(config.read_text(encoding="utf-8").replace('path = "sent.jsonl"',
                                                                 f'path = "{(workdir / "sent.jsonl").as_posix()}"'),
                      encoding="utf-8")
    ok(invoke(workdir, "init", "--no-examples"))
    ok(invoke(workdir, "import", "areas", str(write(tmp_path / "areas.csv", AREAS_CSV))))
    ok(invoke(workdir, "import", "subscribers", str(subscribers_csv(tmp_path, 4))))
    write(workdir / "templates" / "sms" / "remind.j2", FIRST)
    write(workdir / "campaigns" / "remind.toml", CAMPAIGN)
    return workdir


def engine_of() -> Any:
    import os

    return db.make_engine(os.environ["LOA_DATABASE_URL"])


def versions(engine: Any, name: str = "remind") -> list[tuple[int, str, dict[str, str]]]:
    V, C = db.campaign_versions, db.campaigns
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(V.c.version, V.c.toml, V.c.templates)
                                               .join(C, C.c.id == V.c.campaign_id).where(C.c.name == name)
                                               .order_by(V.c.version))]


def run_versions(engine: Any) -> list[tuple[int, int | None]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(db.runs.c.id, db.runs.c.campaign_version).order_by(db.runs.c.id))]


def sent_texts(workdir: Path) -> list[str]:
    path = workdir / "sent.jsonl"
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def test_apply_adds_a_version_only_where_the_digest_changed(town: Path) -> None:
    first = ok(invoke(town, "campaigns", "apply"))
    assert "remind: version 1 applied, active" in first.stdout and "1 of 1 campaign(s) changed" in first.stdout
    again = ok(invoke(town, "campaigns", "apply"))
    assert "remind: unchanged (version 1)" in again.stdout and "0 of 1 campaign(s) changed" in again.stdout
    engine = engine_of()
    [(number, toml, templates)] = versions(engine)
    assert (number, toml, templates) == (1, textwrap.dedent(CAMPAIGN).lstrip("\n"), {"sms/remind.j2": FIRST})
    write(town / "templates" / "sms" / "remind.j2", SECOND)     # a template is part of the version
    assert "remind: version 2 applied" in ok(invoke(town, "campaigns", "apply", "--reason", "new text")).stdout
    assert [v[2] for v in versions(engine)] == [{"sms/remind.j2": FIRST}, {"sms/remind.j2": SECOND}]
    entries = audit.query(engine, action="campaigns.apply")
    assert [(e.after["version"], e.reason) for e in entries] == [(1, ""), (2, "new text")]   # type: ignore[index]
    engine.dispose()


def test_a_file_that_does_not_validate_refuses_the_whole_apply(town: Path) -> None:
    ok(invoke(town, "campaigns", "apply"))
    write(town / "templates" / "sms" / "remind.j2", SECOND)      # a good change ...
    write(town / "campaigns" / "other.toml", CAMPAIGN.replace('"remind"', '"other"').replace("template =", "tempalte ="))
    r = invoke(town, "campaigns", "apply")                         # ... and a bad file
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "other.toml: sms.tempalte: unknown key" in r.stderr, r.stderr
    engine = engine_of()
    assert [v[0] for v in versions(engine)] == [1] and versions(engine, "other") == []   # nothing applied
    assert len(audit.query(engine, action="campaigns.apply")) == 1
    (town / "campaigns" / "other.toml").unlink()
    missing = write(town / "campaigns" / "other.toml", CAMPAIGN.replace('"remind"', '"other"')
                    .replace("sms/remind.j2", "sms/gone.j2"))
    r = invoke(town, "campaigns", "apply")
    assert r.exit_code != 0 and f"{missing}: sms.template" in r.stderr and "gone.j2" in r.stderr, r.stderr
    assert [v[0] for v in versions(engine)] == [1]
    engine.dispose()


def test_export_then_apply_round_trips_to_no_change(town: Path, tmp_path: Path) -> None:
    write(town / "templates" / "sms" / "part.j2", "Bluezone bảo vệ {{ area.name }}.")
    write(town / "templates" / "sms" / "remind.j2", "{% include 'sms/part.j2' %} Chào {{ subscriber.name }}\n")
    ok(invoke(town, "campaigns", "apply"))
    out = tmp_path / "exported" / "campaigns"
    r = ok(invoke(town, "campaigns", "export", str(out)))
    assert "1 campaign(s) exported" in r.stdout
    templates = tmp_path / "exported" / "templates"
    assert (out / "remind.toml").read_text(encoding="utf-8") == (town / "campaigns" / "remind.toml").read_text(
        encoding="utf-8")
    assert sorted(p.relative_to(templates).as_posix() for p in templates.rglob("*.j2")) == [
        "sms/part.j2", "sms/remind.j2"]                 # an included template travels with the campaign
    back = ok(invoke(town, "campaigns", "apply", str(out), "--templates", str(templates)))
    assert "0 of 1 campaign(s) changed" in back.stdout
    engine = engine_of()
    assert len(versions(engine)) == 1
    engine.dispose()


def test_a_run_records_its_version_and_the_report_and_status_say_which(town: Path) -> None:
    ok(invoke(town, "campaigns", "apply"))
    ok(invoke(town, "campaigns", "run", "remind"))
    write(town / "templates" / "sms" / "remind.j2", SECOND)
    ok(invoke(town, "campaigns", "apply"))
    ok(invoke(town, "campaigns", "run", "remind", "--again"))
    engine = engine_of()
    assert run_versions(engine) == [(1, 1), (2, 2)]
    ok(invoke(town, "send"))
    report = json.loads(ok(invoke(town, "report", "remind", "--format", "json")).stdout)
    assert report["versions"] == {"1": [1], "2": [2]}
    assert "đã gửi từ phiên bản chiến dịch 1 (lần chạy 1); 2 (lần chạy 2)" in ok(invoke(town, "report", "remind")).stdout
    status = json.loads(ok(invoke(town, "status", "--format", "json")).stdout)
    assert {r["run"]: r["version"] for r in status["runs"]} == {1: 1, 2: 2}
    # each run's messages were rendered from its own version's template
    texts = sent_texts(town)
    assert sum(t.startswith("Chào ") for t in texts) == 4 and sum(t.startswith("Xin chào ") for t in texts) == 4
    engine.dispose()


def test_the_stored_definition_wins_over_an_edited_file_until_it_is_applied(town: Path, tmp_path: Path) -> None:
    ok(invoke(town, "campaigns", "apply"))
    write(town / "templates" / "sms" / "remind.j2", SECOND)
    write(town / "campaigns" / "remind.toml", CAMPAIGN.replace('areas = ["Sơn La"]', 'areas = ["Đắk Nông"]'))
    assert "1 campaign(s) valid" in ok(invoke(town, "campaigns", "validate")).stdout   # the stored version
    r = ok(invoke(town, "campaigns", "run", "remind"))
    assert "to send 4" in r.stdout, r.stdout               # Sơn La's 4 subscribers, not Đắk Nông's none
    ok(invoke(town, "send"))
    assert len(sent_texts(town)) == 4 and all(t.startswith("Chào ") for t in sent_texts(town))
    # another machine, whose folders hold something else entirely, sees the same campaign
    other = tmp_path / "elsewhere"
    (other / "campaigns").mkdir(parents=True)
    write(other / "config.toml", (town / "config.toml").read_text(encoding="utf-8"))
    listed = ok(invoke(other, "campaigns", "list"))
    assert "remind.toml" in listed.stdout, listed.stdout
    engine = engine_of()
    assert len(versions(engine)) == 1
    ok(invoke(town, "campaigns", "apply"))                   # applied: the file's definition from now on
    assert "to send 0" in ok(invoke(town, "campaigns", "run", "remind", "--again")).stdout
    assert run_versions(engine) == [(1, 1), (2, 2)]
    engine.dispose()


def test_a_deployment_that_never_applied_follows_its_folder_and_still_records_versions(town: Path) -> None:
    ok(invoke(town, "campaigns", "run", "remind"))
    write(town / "templates" / "sms" / "remind.j2", SECOND)
    ok(invoke(town, "campaigns", "run", "remind", "--again"))
    engine = engine_of()
    assert run_versions(engine) == [(1, 1), (2, 2)]
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(db.meta).where(db.meta.c.key == "campaigns_source")) == 0
    engine.dispose()


def test_versions_lists_and_diff_compares_toml_and_templates(town: Path) -> None:
    ok(invoke(town, "campaigns", "apply"))
    write(town / "templates" / "sms" / "remind.j2", SECOND)
    write(town / "campaigns" / "remind.toml", CAMPAIGN.replace("holdout = 0", "holdout = 0.1"))
    ok(invoke(town, "campaigns", "apply"))
    listed = ok(invoke(town, "campaigns", "versions", "remind")).stdout
    assert "remind.toml" in listed and "current" in listed and listed.count("sms/remind.j2") == 2
    d = ok(invoke(town, "campaigns", "diff", "remind")).stdout
    assert "--- v1/remind.toml\n+++ v2/remind.toml" in d and "-holdout = 0\n+holdout = 0.1" in d
    assert "--- v1/templates/sms/remind.j2" in d and f"-{FIRST}" in d and f"+{SECOND}" in d
    assert ok(invoke(town, "campaigns", "diff", "remind", "2", "2")).stdout.startswith("versions 2 and 2")
    r = invoke(town, "campaigns", "diff", "remind", "1", "7")
    assert r.exit_code != 0 and "campaign remind has no version 7" in r.stderr
