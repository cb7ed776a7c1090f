"""Import jobs: a CSV uploaded over the HTTP API, imported by a thread of the process that took it.

The job is a row of ``import_jobs``, so that every process serving the API answers for
it: its progress (bytes and rows done of the file's total, written every few hundred
rows), its counts, its failure, and once done its rejects CSV (line, column, reason,
then the row as it was, as ``loa import`` writes it beside the file).  The import itself
is :func:`loa.importer.run_import`, the path of ``loa import``: batches of one
transaction each, a bad row rejected with its line and reason, a failed batch rolled
back and the import stopped with what was kept said.

A file whose header is wrong is refused when it is uploaded (:func:`check`), before any
job exists.  The upload and the outcome are each an audit entry of the principal who
sent the file.  A process that stops mid-import leaves its job ``running`` with an old
``updated_at``: :func:`get` calls such a job ``interrupted``.

What a job says to its reader, its failure and its rejected rows' reasons, is stored as the
sentence's English template and parameters (JSON, :func:`stored`), so that the console says it
in each user's language (:func:`rejects` with a language, :func:`said`); a text stored before
is shown as it is.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine

from loa import audit, db, importer
from loa.config import Config
from loa.errors import InputError, LoaError, NotFound, Text, say

log = logging.getLogger("loa.imports")

KINDS = ("areas", "subscribers", "events", "dnc", "arrivals", "snapshots", "consents")
DATED = ("areas", "snapshots")        # kinds whose figures an ``as_of`` date dates
STALE = timedelta(minutes=10)         # a running job not heard of for this long died with its process
PROGRESS_EVERY = timedelta(seconds=1)
J = db.import_jobs


def handler(kind: str, engine: Engine, config: Config, path: Path, as_of: date | None = None) -> importer.Handler:
    """The importer of ``kind`` for the file at ``path``, as ``loa import`` makes it."""
    if as_of is not None and kind not in DATED:
        raise InputError(Text("as_of dates the figures of areas or snapshots, not of {kind}", kind=kind))
    if kind == "arrivals":
        from loa.arrivals import ArrivalsHandler

        return ArrivalsHandler(engine, path, config.timezone)
    made: dict[str, Callable[[], Any]] = {
        "areas": lambda: importer.AreasHandler(engine, path, as_of=as_of),
        "subscribers": lambda: importer.SubscribersHandler(engine, path),
        "events": lambda: importer.EventsHandler(engine, path, config.timezone),
        "dnc": lambda: importer.DncHandler(engine, path),
        "snapshots": lambda: importer.SnapshotsHandler(engine, path, as_of=as_of),
        "consents": lambda: _consents(engine, path, config),
    }
    if kind not in made:
        raise InputError(Text("no import of {kind!r}: one of {kinds}", kind=kind, kinds=", ".join(KINDS)))
    return made[kind]()  # type: ignore[no-any-return]


def _consents(engine: Engine, path: Path, config: Config) -> importer.Handler:
    from loa.consent import ConsentsHandler

    return ConsentsHandler(engine, path, config.timezone, config)


def check(path: Path, handle: importer.Handler) -> int | None:
    """Refuse a file that cannot be imported at all (empty, not UTF-8, a wrong header), as
    :class:`InputError`; else the number of its rows (None if it cannot be told before reading)."""
    header, _rows, close = importer._records(path, None)
    try:
        handle.check_header(header)
    finally:
        close()
    try:
        with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
            return max(0, sum(1 for values in csv.reader(f) if any(v.strip() for v in values)) - 1)
    except csv.Error:
        return None


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    kind: str
    state: str
    actor: str
    filename: str
    bytes_total: int
    bytes_done: int
    rows_total: int | None
    rows_done: int
    imported: int
    new: int
    rejected: int
    failure: str | None       # a Text where it was stored as one: str() English, said() in a language
    has_rejects: bool
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "state": self.state, "actor": self.actor, "filename": self.filename,
            "progress": {"bytes_done": self.bytes_done, "bytes_total": self.bytes_total,
                         "rows_done": self.rows_done, "rows_total": self.rows_total},
            "counts": {"imported": self.imported, "new": self.new, "rejected": self.rejected},
            "failure": str(self.failure) if self.failure is not None else None, "rejects": self.has_rejects,
            "created_at": self.created_at.isoformat(), "updated_at": self.updated_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }


def _columns() -> list[Any]:
    return [J.c.id, J.c.kind, J.c.state, J.c.actor, J.c.filename, J.c.bytes_total, J.c.bytes_done, J.c.rows_total,
            J.c.rows_done, J.c.imported, J.c.new, J.c.rejected, J.c.failure, J.c.rejects.is_not(None),
            J.c.created_at, J.c.updated_at, J.c.finished_at]


def get(engine: Engine, job_id: int) -> Job:
    with engine.connect() as conn:
        row = conn.execute(select(*_columns()).where(J.c.id == job_id)).one_or_none()
    if row is None:
        raise NotFound(Text("no import job {id}", id=job_id))
    job = Job(*row)
    if job.failure is not None:
        job = dataclasses.replace(job, failure=loaded(job.failure))
    if job.state == "running" and db.utcnow() - job.updated_at > STALE:
        return dataclasses.replace(job, state="interrupted")
    return job


def rejects(engine: Engine, job_id: int, language: Any = None, limit: int | None = None) -> str | None:
    """The rejects CSV of a finished job, its reasons in ``language`` (a :class:`loa.i18n.Language`;
    English for None); None when it rejected nothing (or is not done).  ``limit``: its first rows only."""
    with engine.connect() as conn:
        row = conn.execute(select(J.c.rejects).where(J.c.id == job_id)).one_or_none()
    if row is None:
        raise NotFound(Text("no import job {id}", id=job_id))
    if row.rejects is None:
        return None
    out = io.StringIO()
    writer = csv.writer(out)
    for n, cells in enumerate(csv.reader(io.StringIO(row.rejects, newline=""))):
        if limit is not None and n > limit:
            break
        if n and len(cells) > 2:   # line, column, reason, the row: the header says "reason"
            cells[2] = say(loaded(cells[2]), language)
        writer.writerow(cells)
    return out.getvalue()


def rejected_rows(engine: Engine, job_id: int, language: Any = None, limit: int = 10) -> list[tuple[str, str, str]]:
    """The first ``limit`` rejected rows of a job as (line, column, reason in ``language``)."""
    text = rejects(engine, job_id, language, limit)
    if text is None:
        return []
    return [(c[0], c[1], c[2]) for c in list(csv.reader(io.StringIO(text, newline="")))[1:] if len(c) > 2]


def stored(message: str) -> str:
    """``message`` as the database keeps it: a :class:`Text` as JSON of its template and parameters
    (said in any language later, :func:`loaded`), a plain string as it is."""
    return json.dumps(_plain(message), ensure_ascii=False) if isinstance(message, Text) else str(message)


def _plain(value: Any) -> Any:
    if isinstance(value, Text):
        return {"template": value.template, "params": {k: _plain(v) for k, v in value.params.items()}}
    return value if isinstance(value, int | float | str | bool) or value is None else str(value)


def loaded(text: str) -> str:
    """What :func:`stored` kept: a :class:`Text` again; any other text as it is."""
    if not text.startswith('{"template": '):
        return text
    try:
        return _text(json.loads(text))
    except (ValueError, TypeError, KeyError, IndexError):
        return text


def _text(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"template", "params"}:
        return Text(value["template"], **{k: _text(v) for k, v in value["params"].items()})
    return value


def said(message: str | None, language: Any) -> str:
    """A job's failure (or a stored reason) in ``language``."""
    return "" if message is None else say(message, language)


def start(engine: Engine, config: Config, actor: str, kind: str, upload: Path, filename: str,
          as_of: date | None = None) -> Job:
    """Check the uploaded file, record the job and its audit entry, and import it in a thread.

    The thread owns ``upload`` (a temporary file) and removes it, with its folder, when done."""
    try:
        handle = handler(kind, engine, config, upload, as_of)
        rows_total = check(upload, handle)
    except InputError as exc:   # said of "the file", in the reader's language, not of a temporary path
        raise InputError(_without(exc.args[0], str(upload))) from None
    now = db.utcnow()
    size = upload.stat().st_size
    with engine.begin() as conn:
        job_id = conn.execute(insert(J).values(
            kind=kind, state="running", actor=actor[:100], filename=filename[:200], bytes_total=size, bytes_done=0,
            rows_total=rows_total, rows_done=0, imported=0, new=0, rejected=0, created_at=now, updated_at=now,
        ).returning(J.c.id)).scalar_one()
        audit.record(conn, actor, "imports.upload", "import", job_id,
                     after={"kind": kind, "filename": filename[:200], "bytes": size, "rows": rows_total,
                            "as_of": as_of.isoformat() if as_of else None})
    threading.Thread(target=_run, args=(engine, config, actor, job_id, kind, handle, upload),
                     name=f"loa-import-{job_id}", daemon=True).start()
    return get(engine, job_id)


class _Progress:
    """What the import has done so far, written to the job at most every :data:`PROGRESS_EVERY`."""

    def __init__(self, engine: Engine, job_id: int, handle: importer.Handler) -> None:
        self.engine, self.job_id, self.handle = engine, job_id, handle
        self.bytes_done = self.imported = self.rejected = 0
        self.written_at = datetime.min.replace(tzinfo=db.utcnow().tzinfo)

    def on_bytes(self, done: int, total: int) -> None:
        self.bytes_done = done
        self.flush()

    def on_reject(self, line: str) -> None:
        self.rejected += 1

    def write(self, conn: Any, records: list[dict[str, Any]]) -> tuple[int, list[Any]]:
        written, late = self.handle.write(conn, records)
        self.imported += written
        return written, late

    def flush(self, force: bool = False) -> None:
        now = db.utcnow()
        if not force and now - self.written_at < PROGRESS_EVERY:
            return
        self.written_at = now
        with self.engine.begin() as conn:
            conn.execute(update(J).where(J.c.id == self.job_id, J.c.state == "running").values(
                bytes_done=self.bytes_done, rows_done=self.imported + self.rejected, imported=self.imported,
                rejected=self.rejected, updated_at=now))


class _Counted:
    """The handler, with the rows it writes counted for the job's progress."""

    def __init__(self, handle: importer.Handler, progress: _Progress) -> None:
        self._handle, self._progress = handle, progress
        self.kind, self.required = handle.kind, handle.required

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def write(self, conn: Any, records: list[dict[str, Any]]) -> tuple[int, list[Any]]:
        return self._progress.write(conn, records)


def _run(engine: Engine, config: Config, actor: str, job_id: int, kind: str, handle: importer.Handler,
         upload: Path) -> None:
    progress = _Progress(engine, job_id, handle)
    rejects_path = upload.with_name("rejects.csv")
    summary: importer.ImportSummary | None = None
    failure: str | None = None
    try:
        summary = importer.run_import(engine, _Counted(handle, progress), upload, rejects_path=rejects_path,  # type: ignore[arg-type]
                                      progress=progress.on_bytes, on_reject=progress.on_reject, reason=stored)
        failure = _without(summary.failure, str(upload)) if summary.failure else None
        if kind == "arrivals":   # greet what was kept, as `loa import arrivals` does
            from loa.arrivals import arrival_campaigns, greet

            greet(engine, config, arrival_campaigns(config))
    except LoaError as exc:
        failure = _without(exc.args[0] if exc.args else str(exc), str(upload))
    except Exception as exc:   # the job must end, whatever happened
        log.exception("import job %s failed", job_id)
        failure = Text("internal error: {name}", name=type(exc).__name__)
    try:
        text = rejects_path.read_text(encoding="utf-8") if rejects_path.exists() else None
        read = summary.read if summary else progress.imported + progress.rejected
        counts = {"imported": summary.imported if summary else progress.imported,
                  "new": summary.new if summary else 0,
                  "rejected": summary.rejected if summary else progress.rejected}
        now = db.utcnow()
        with engine.begin() as conn:
            conn.execute(update(J).where(J.c.id == job_id).values(
                state="failed" if failure else "done", failure=stored(failure) if failure else None, rejects=text,
                rows_done=read,
                bytes_done=J.c.bytes_total if summary else progress.bytes_done, updated_at=now, finished_at=now,
                **counts))
            audit.record(conn, actor, f"imports.{kind}", "import", job_id,
                         after={"read": read, **counts, "failure": str(failure) if failure else None})
    finally:
        shutil.rmtree(upload.parent, ignore_errors=True)


def _without(message: Any, path: str) -> Any:
    """``message`` with the upload's temporary path said as "the file" (in the reader's language)."""
    if isinstance(message, Text):
        params = {k: _without(v, path) for k, v in message.params.items()}
        return Text(message.template, **params)
    if message == path:
        return Text("the file")
    return message.replace(path, "the file") if isinstance(message, str) else message


def upload_dir() -> Path:
    """A private folder for one uploaded file (the job's thread removes it)."""
    return Path(tempfile.mkdtemp(prefix="loa-import-"))


__all__ = ["KINDS", "Job", "check", "get", "handler", "loaded", "rejected_rows", "rejects", "said", "start", "stored",
           "upload_dir"]
