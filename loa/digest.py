"""The daily digest: each campaign's report written to a folder every morning.

For the officials who receive the report as files (a shared folder, a mailer
that picks them up) rather than opening ``loa serve``.  ``[digest]`` in the
configuration says where, when and which campaigns; the scheduler runs it
(job ``digest``), so only the elected leader writes.

Files are ``NAME-YYYY-MM-DD.html`` and ``.csv`` (and ``.json`` if asked), the
same report as ``loa report``, dated in the configuration's time zone: the
digest written at 06:30 in Hà Nội on 18 August is dated 18 August although it
is still the 17th in UTC.  Each file appears whole or not at all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from datetime import date, datetime
from pathlib import Path

from apscheduler.triggers.cron import CronTrigger
from sqlalchemy.engine import Engine

from loa import db, report
from loa.config import Config, DigestSpec
from loa.cron import cron_trigger
from loa.errors import ConfigError, LoaError, NotFound

log = logging.getLogger("loa.digest")
# Excel, which most officials open a CSV with, reads UTF-8 without a BOM as the local
# code page and garbles Vietnamese; the content is otherwise exactly `loa report --format csv`.
ENCODING = {"csv": "utf-8-sig"}


def write_digest(engine: Engine, config: Config, now: datetime | None = None) -> list[Path]:
    """Write the report of each digest campaign for the local date of ``now``; return the files written.

    A campaign with no runs is skipped; one that fails is logged and the others are still written.
    """
    spec = config.digest
    if spec is None:
        raise ConfigError(f"{config.label}: no [digest] section, so no folder to write the daily report to")
    now = now or db.utcnow()
    local = now.astimezone(config.timezone)
    _make_folder(spec.folder)
    written: list[Path] = []
    failed: list[str] = []
    for name in spec.campaigns or report.campaigns_with_runs(engine):
        try:
            written += _write_campaign(engine, config, spec, name, local)
        except NotFound as exc:
            log.info("digest: %s skipped: %s", name, exc)
        except Exception as exc:  # noqa: BLE001 - one campaign's failure must not cost the others their report
            log.exception("digest: %s failed", name)
            failed.append(f"{name} ({exc})")
    if failed:
        log.error("digest for %s: %d file(s) written to %s; failed: %s", local.date(), len(written), spec.folder,
                  "; ".join(failed))
    else:
        log.info("digest for %s: %d file(s) written to %s", local.date(), len(written), spec.folder)
    return written


def trigger(config: Config) -> CronTrigger:
    """When the digest is written: ``[digest] at``, in the configuration's time zone."""
    if config.digest is None:
        raise ConfigError(f"{config.label}: no [digest] section")
    return cron_trigger(config.digest.cron, config.timezone)


def file_name(name: str, day: date, fmt: str) -> str:
    return f"{name}-{day.isoformat()}.{fmt}"


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LoaError(f"digest.folder {folder}: cannot create: {exc.strerror}") from None


def _write_campaign(engine: Engine, config: Config, spec: DigestSpec, name: str, local: datetime) -> list[Path]:
    result = report.for_campaign(engine, config.campaigns_dir, name)
    # every format is rendered before any is written: a rendering error leaves no half-set
    texts = {fmt: report.render(engine, result, fmt, generated_at=local, lang=config.language) for fmt in spec.formats}
    paths = []
    for fmt, text in texts.items():
        path = spec.folder / file_name(name, local.date(), fmt)
        write_atomically(path, text, ENCODING.get(fmt, "utf-8"))
        paths.append(path)
    return paths


def write_atomically(path: Path, text: str, encoding: str = "utf-8") -> None:
    """Write ``path`` through a temporary file in its folder, so a reader never sees half of it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding=encoding, newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)   # mkstemp's 0600 would hide the report from the share it is written for
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


__all__ = ["file_name", "trigger", "write_atomically", "write_digest"]
