"""The ``loa`` command line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from loa import __version__, logs
from loa.errors import LoaError

out = Console()
if not out.is_terminal:   # piped or in CI: tables keep their width instead of wrapping at 80
    out = Console(width=240)
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


class App:
    """What every command needs, loaded on first use."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._config: Any = None
        self._engine: Any = None

    @property
    def config(self) -> Any:
        if self._config is None:
            from loa import config

            self._config = config.load(self.config_path)
        return self._config

    def engine(self, *, check: bool = True) -> Any:
        if self._engine is None:
            from loa import db

            self._engine = db.make_engine(self.config.database_url)
            if check:
                db.check_schema(self._engine)
        return self._engine


def fail_cleanly(fn: F) -> F:
    """Every error the user can act on is one line on stderr and a non-zero exit."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LoaError as exc:
            for line in exc.lines():
                err.print(f"[red]error:[/red] {escape(line)}", markup=True, highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        except OperationalError as exc:
            err.print(f"[red]error:[/red] database: {escape(str(exc.orig).splitlines()[0])}", highlight=False, soft_wrap=True)
            sys.exit(1)
        except SQLAlchemyError as exc:
            err.print(f"[red]error:[/red] database: {escape(str(exc).splitlines()[0])}", highlight=False, soft_wrap=True)
            sys.exit(1)
        except OSError as exc:   # a file loa must write or create: a rejects file, a --dir
            where = f"{exc.filename}: " if exc.filename else ""
            err.print(f"[red]error:[/red] {escape(where + (exc.strerror or str(exc)))}", highlight=False,
                      soft_wrap=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Configuration file (default: $LOA_CONFIG, then ./config.toml).")
@click.option("-v", "--verbose", count=True, help="Log more (-vv for debug).")
@click.option("--log-format", type=click.Choice(logs.FORMATS), envvar="LOA_LOG_FORMAT", default="kv",
              show_default=True, help="Log lines as key=value pairs or JSON objects; phone numbers masked "
              "(default: $LOA_LOG_FORMAT, then kv).")
@click.version_option(__version__, prog_name="loa")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, verbose: int, log_format: str) -> None:
    """loa: SMS and Zalo campaigns for Vietnam, measured per area."""
    logs.setup((logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)], log_format)
    ctx.obj = App(config_path)


# -- init ---------------------------------------------------------------------

@main.command()
@click.option("--examples/--no-examples", default=True, show_default=True,
              help="Write the example configuration, campaigns and templates where none exist yet.")
@click.pass_obj
@fail_cleanly
def init(app: App, examples: bool) -> None:
    """Create the database schema (safe to run again), and start from the examples.

    Without a configuration file (--config FILE, $LOA_CONFIG, or ./config.toml), the example
    configuration is written there.  Where the configuration's campaigns and templates folders do
    not exist, the example campaigns and templates are written into them.  Nothing that exists is
    ever overwritten.
    """
    import os

    from loa import db
    from loa import examples as ex

    if examples:
        target = Path(app.config_path or os.environ.get("LOA_CONFIG") or "config.toml")
        if not target.exists():
            out.print(f"wrote {ex.write_config(target)} from {ex.CONFIG}: edit it before sending for real",
                      highlight=False, markup=False, soft_wrap=True)
            app.config_path = str(target)
        for what, folder in ex.write_folders(app.config.campaigns_dir, app.config.templates_dir):
            out.print(f"wrote the example {what} to {folder}", highlight=False, markup=False, soft_wrap=True)
    engine = app.engine(check=False)
    before = db.revision_of(engine)
    new = db.create_schema(engine)
    where = db.redact(app.config.database_url)
    after = db.revision_of(engine)
    if new or before == after:
        out.print(f"{'created' if new else 'checked'} loa schema in {where}", highlight=False, markup=False)
    else:
        out.print(f"upgraded loa schema in {where}: revision {before or 'none (made before migrations)'} → {after}; "
                  "existing data kept", highlight=False, markup=False, soft_wrap=True)


# -- import -------------------------------------------------------------------

@main.command("import")
@click.argument("kind", type=click.Choice(["areas", "subscribers", "events", "dnc", "arrivals", "snapshots",
                                          "consents"]))
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--rejects", type=click.Path(path_type=Path), default=None,
              help="Where to write rejected rows (default: FILE.rejects.csv beside FILE).")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=5000, show_default=True)
@click.option("--show-rejects", type=int, default=10, show_default=True, help="Print this many rejects.")
@click.option("--as-of", "as_of", default=None,
              help="The date (YYYY-MM-DD) of the file's figures, for rows that do not give one: populations "
              "(areas) or counts (snapshots).")
@click.pass_obj
@fail_cleanly
def import_(app: App, kind: str, file: Path, rejects: Path | None, batch_size: int, show_rejects: int,
            as_of: str | None) -> None:
    """Import a CSV of areas, subscribers, events, do-not-contact numbers, arrivals, snapshots or consents
    (UTF-8, with or without BOM).

    consents: phone,purpose,time[,granted,source,evidence]; purpose public_interest or advertising;
    granted no (or "withdrawn") records a withdrawal."""
    from loa import i18n, importer
    from loa.errors import InputError

    if not file.is_file():
        raise LoaError(f"{file}: {'not a file' if file.exists() else 'no such file'}")
    day = None
    if as_of is not None:
        if kind not in ("areas", "snapshots"):
            raise InputError(f"--as-of dates the figures of areas or snapshots, not of {kind}")
        try:
            day = importer.parse_date("--as-of", as_of)
        except importer.RowError as exc:
            raise InputError(f"--as-of: {exc.reason}") from None
    engine = app.engine()
    handler: Any = {
        "areas": lambda: importer.AreasHandler(engine, file, as_of=day),
        "subscribers": lambda: importer.SubscribersHandler(engine, file),
        "events": lambda: importer.EventsHandler(engine, file, app.config.timezone),
        "dnc": lambda: importer.DncHandler(engine, file),
        "arrivals": lambda: _arrivals_handler(engine, file, app.config.timezone),
        "snapshots": lambda: importer.SnapshotsHandler(engine, file, as_of=day),
        "consents": lambda: _consents_handler(engine, file, app.config),
    }[kind]()
    shown: list[str] = []

    def on_reject(line: str) -> None:
        if len(shown) < show_rejects:
            shown.append(line)
            err.print(f"[yellow]rejected[/yellow] {escape(line)}", highlight=False, soft_wrap=True)

    with _progress(f"importing {kind}") as advance:
        summary = importer.run_import(engine, handler, file, rejects_path=rejects, batch_size=batch_size,
                                      progress=advance, on_reject=on_reject,
                                      reason=importer.say_in(i18n.language(app.config.language)))
    _audit_import(engine, kind, file, summary)
    if summary.rejected > len(shown):
        err.print(f"... and {summary.rejected - len(shown)} more rejects", highlight=False)
    out.print(summary.line(), highlight=False, soft_wrap=True, markup=False)
    if kind == "arrivals":   # greet what was kept, even if a later batch failed
        from loa.arrivals import arrival_campaigns, greet

        for name, n in greet(engine, app.config, arrival_campaigns(app.config, engine)).items():
            out.print(f"{name}: {n:,} greeting(s) planned", highlight=False, markup=False)
    if summary.failure:
        raise LoaError(summary.failure)


def _audit_import(engine: Any, kind: str, file: Path, summary: Any) -> None:
    from loa import audit

    audit.record_now(engine, audit.cli_actor(), f"imports.{kind}", "file", str(file.resolve()), after={
        "read": summary.read, "imported": summary.imported, "new": summary.new, "rejected": summary.rejected,
        "failure": summary.failure})


def _consents_handler(engine: Any, file: Path, config: Any) -> Any:
    from loa.consent import ConsentsHandler

    return ConsentsHandler(engine, file, config.timezone, config)


def _arrivals_handler(engine: Any, file: Path, tz: Any) -> Any:
    from loa.arrivals import ArrivalsHandler

    return ArrivalsHandler(engine, file, tz)


def _progress(label: str) -> Any:
    from contextlib import contextmanager

    @contextmanager
    def ctx() -> Any:
        bar = Progress(TextColumn(label), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                       console=err, transient=True, disable=not err.is_terminal)
        with bar:
            task = bar.add_task(label, total=None)
            yield lambda done, total: bar.update(task, completed=done, total=total)

    return ctx()


# -- campaigns ----------------------------------------------------------------

@main.group()
def campaigns() -> None:
    """List, check, preview and run campaigns."""


@campaigns.command("list")
@click.pass_obj
@fail_cleanly
def campaigns_list(app: App) -> None:
    """The campaigns: their stored current versions (the campaigns folder without a database)."""
    from loa.campaign import load_all
    from loa.versions import catalog

    engine = _engine_if_ready(app)
    found, problems = catalog(engine, app.config) if engine is not None else load_all(app.config.campaigns_dir)
    table = Table("name", "channels", "trigger", "advertising", "holdout", "file", "version")
    for c in found.values():
        table.add_row(c.name, ", ".join(s.channel for s in c.channels), c.trigger, "yes" if c.advertising else "no",
                      f"{c.holdout:.0%}", str(c.path.name), str(c.version or "-"))
    out.print(table)
    for p in problems:
        err.print(f"[red]invalid:[/red] {escape(p)}", highlight=False, soft_wrap=True)


@campaigns.command("validate")
@click.option("--files", "folder", is_flag=True, help="Check the campaigns folder's files (what an apply would "
              "load) instead of the stored current versions.")
@click.pass_obj
@fail_cleanly
def campaigns_validate(app: App, folder: bool) -> None:
    """Check every campaign: keys, templates, variables, gateways, segments.

    The stored current versions, once `loa campaigns apply` has run; the folder's files with
    --files, or before the database exists."""
    from loa.checks import areas_imported, validate_all

    engine = _engine_if_ready(app)
    found, problems = validate_all(app.config, engine, folder=folder)
    for p in problems:
        err.print(p, highlight=False, soft_wrap=True, markup=False)
    if problems:
        raise LoaError(f"{len(problems)} problem(s) in {app.config.campaigns_dir}")
    if engine is not None:
        from loa.consent import audience_warnings

        for warning in audience_warnings(engine, app.config, found):
            err.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)
    note = (" (attributes, areas and real subscribers not checked: no database yet)" if engine is None
            else "" if areas_imported(engine) else " (segment areas not checked: no areas imported yet)")
    out.print(f"{len(found)} campaign(s) valid{note}", highlight=False)


@campaigns.command("reload")
@click.option("--force", is_flag=True, help="Reload even if some campaign files have problems (those are skipped).")
@click.pass_obj
@fail_cleanly
def campaigns_reload(app: App, force: bool) -> None:
    """Have the active scheduler, on whichever machine, rebuild its jobs from the stored campaigns.

    Before the first `loa campaigns apply` that is the campaigns folder, applied implicitly;
    afterwards `loa campaigns apply` loads changed files (and requests a reload itself)."""
    import scheduler
    from loa.checks import validate_all

    engine = app.engine()
    _, problems = validate_all(app.config, engine)
    for p in problems:
        err.print(p, highlight=False, soft_wrap=True, markup=False)
    if problems and not force:
        raise LoaError(f"{len(problems)} problem(s) in {app.config.campaigns_dir}: nothing reloaded (--force skips them)")
    scheduler.request_reload(engine)
    _follow_window_edits(app, engine, out.print)
    out.print(f"reload requested: the active scheduler rebuilds its jobs within {scheduler.RELOAD_POLL_SECONDS} s",
              highlight=False)


def _follow_window_edits(app: App, engine: Any, say: Callable[..., Any]) -> None:
    """Open runs take their campaign's current send window (loa.policy.apply_window_edits)."""
    from loa.policy import apply_window_edits
    from loa.versions import catalog

    from loa.cost import apply_budget_edits

    found, _ = catalog(engine, app.config)   # sending needs no campaign files: none is no campaign
    for line in apply_window_edits(engine, found) + apply_budget_edits(engine, found):
        say(line, highlight=False, markup=False, soft_wrap=True)


def _engine_if_ready(app: App) -> Any:
    try:
        return app.engine()
    except LoaError:
        return None


def _load_valid(app: App, name: str, *, render: bool = False) -> Any:
    """The campaign, checked as `loa campaigns validate` checks it; ``render`` also renders its
    templates for members of its segment."""
    from loa.checks import attribute_keys, campaign_problems, render_problems
    from loa.errors import CampaignError
    from loa.versions import load

    campaign = load(app.engine(), app.config, name)   # its stored current version
    problems = campaign_problems(app.config, campaign, attribute_keys(app.engine()))
    if render and not problems:
        problems = render_problems(app.config, campaign, app.engine())
    if problems:
        raise CampaignError(problems)
    return campaign


@campaigns.command("preview")
@click.argument("name")
@click.option("-n", "--count", type=click.IntRange(1, 100), default=3, show_default=True)
@click.pass_obj
@fail_cleanly
def campaigns_preview(app: App, name: str, count: int) -> None:
    """Render a few real recipients and count the audience."""
    from loa.preview import preview

    campaign = _load_valid(app, name)
    result = preview(app.engine(), app.config, campaign, count)
    _audit_preview(app.engine(), campaign.name, result)
    out.print(f"[bold]{campaign.name}[/bold]: {escape(campaign.description)}", highlight=False)
    for sample in result.samples:
        out.print(f"\n[cyan]{escape(sample.who)}[/cyan] ({escape(sample.area)}) · {sample.channel} · {sample.detail}",
                  highlight=False)
        out.print(sample.text, highlight=False, markup=False)
    if result.errors:
        for e in result.errors:
            err.print(f"[red]template error:[/red] {escape(e)}", highlight=False, soft_wrap=True)
    table = Table("audience", "to send", "held out", "suppressed", "estimated parts", title="If run now")
    table.add_row(f"{result.audience:,}", f"{result.planned:,}", f"{result.held_out:,}",
                  ", ".join(f"{n:,} {r}" for r, n in result.reasons.items()) or "0",
                  f"{result.estimated_parts:,}")
    out.print(table)
    if result.estimate is not None:
        _print_estimate(result.estimate)
    if result.errors:
        raise LoaError(f"{len(result.errors)} of {len(result.errors) + len(result.samples)} sample rendering(s) "
                       f"failed: `loa campaigns validate` checks every template of {campaign.name}")


def _print_estimate(estimate: Any) -> None:
    from loa.cost import vnd

    table = Table("channel", "gateway", "carrier", "messages", "parts", "price", "cost",
                  title=f"Estimated cost: {vnd(estimate.cost_vnd) if estimate.cost_vnd is not None else 'unknown'}")
    unit = "VND/part" if estimate.channel == "sms" else "VND/message"
    for line in estimate.lines:
        table.add_row(line.channel, escape(line.gateway), escape(line.carrier or "unknown"), f"{line.messages:,}",
                      f"{round(line.parts):,}", "—" if line.unit_price is None else f"{line.unit_price:,} {unit}",
                      vnd(line.cost_vnd))
    out.print(table)
    if estimate.budget is not None:
        left = estimate.budget - estimate.spent_vnd
        verdict = ("over it: the campaign will be paused when its budget runs out" if estimate.over_budget
                   else "within it")
        out.print(f"budget {vnd(estimate.budget)}, {vnd(estimate.spent_vnd)} spent by earlier runs, {vnd(left)} left: "
                  f"{verdict}", highlight=False, markup=False, soft_wrap=True)
    for note in estimate.notes:
        out.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)


def _audit_preview(engine: Any, name: str, result: Any) -> None:
    from loa.preview import record_preview

    record_preview(engine, _actor(), name, result)


@campaigns.command("run")
@click.argument("name")
@click.option("--at", "at", default=None, help="The run's scheduled time (ISO 8601); the same time is the same run.")
@click.option("--again", is_flag=True, help="Plan a deliberate second round although another run of the campaign "
              "lies within its repeat interval (its schedule's, else validity_hours).")
@click.option("--outside-dates", is_flag=True, help="Plan the run although it falls outside the campaign's [dates].")
@click.pass_obj
@fail_cleanly
def campaigns_run(app: App, name: str, at: str | None, again: bool, outside_dates: bool) -> None:
    """Plan a run: fill its outbox (nothing is sent until `loa send`).

    A campaign is validated first, its templates rendered for members of its segment.  A run
    within the repeat interval of another run of the campaign (its schedule's interval, else
    its validity_hours) is refused unless --again, and one outside its [dates] unless
    --outside-dates; planning the same --at again only completes that run.
    """
    from loa.importer import RowError, parse_time
    from loa.plan import plan_run

    campaign = _load_valid(app, name, render=True)
    when = None
    if at:
        try:
            when = parse_time("--at", at, app.config.timezone)
        except RowError as exc:
            raise LoaError(f"--at: {exc.reason}") from None
    result = plan_run(app.engine(), app.config, campaign, scheduled_for=when, again=again, outside_dates=outside_dates)
    _audit_run(app.engine(), result, again=again, outside_dates=outside_dates)
    verb = "planned" if result.created else "already planned; added"
    reasons = ", ".join(f"{n:,} {r}" for r, n in sorted(result.reasons.items())) or "none"
    out.print(
        f"run {result.run_id} of {campaign.name} {verb} {result.added:,} rows: audience {result.audience:,}, "
        f"to send {result.states['planned']:,}, held out {result.states['held_out']:,}, "
        f"suppressed {result.states['suppressed']:,} ({reasons})", highlight=False, soft_wrap=True, markup=False,
    )


# -- versions: apply, export, versions, diff --------------------------------------

@campaigns.command("apply")
@click.argument("folder", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--templates", "templates", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The templates folder (default: the configured templates_dir).")
@click.option("--reason", default="", help="Why: kept in the audit log with each new version.")
@click.pass_obj
@fail_cleanly
def campaigns_apply(app: App, folder: Path | None, templates: Path | None, reason: str) -> None:
    """Load the campaign files of FOLDER (default: the configured campaigns_dir) into the database.

    Each campaign whose TOML or templates changed gets a new, immutable version; applying the
    same files again adds nothing.  Every file must validate, or nothing is applied.  From the
    first apply on, the database is the only source of campaigns on every machine: an edited
    file changes nothing until it is applied.  A changed campaign that needs approval
    ([approval]) goes back to draft.
    """
    import scheduler
    from loa.versions import apply

    engine = app.engine()
    result = apply(engine, app.config, _actor(), folder=folder, templates=templates, reason=reason.strip())
    for a in result.campaigns:
        if not a.added:
            out.print(f"{a.name}: unchanged (version {a.version})", highlight=False, markup=False)
            continue
        state = f"{a.after}" + (f" (was {a.before})" if a.before and a.before != a.after else "")
        why = f"; needs approval: {a.approval} (`loa campaigns submit {a.name}`)" if a.approval else ""
        out.print(f"{a.name}: version {a.version} applied, {state}{why}", highlight=False, markup=False,
                  soft_wrap=True)
    out.print(f"{len(result.added)} of {len(result.campaigns)} campaign(s) changed", highlight=False)
    if result.added:
        scheduler.request_reload(engine)


@campaigns.command("export")
@click.argument("folder", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--templates", "templates", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the templates go (default: FOLDER/../templates, or the configured templates_dir).")
@click.pass_obj
@fail_cleanly
def campaigns_export(app: App, folder: Path | None, templates: Path | None) -> None:
    """Write every campaign's current version back as files: its TOML into FOLDER (default: the
    configured campaigns_dir) and its templates into the templates folder.  Applying them again
    changes nothing."""
    from loa.versions import export

    folder = folder or app.config.campaigns_dir
    if templates is None:
        templates = app.config.templates_dir if folder == app.config.campaigns_dir else folder.parent / "templates"
    done = export(app.engine(), folder, templates)
    for name, version, paths in done:
        out.print(f"{name}: version {version} → {', '.join(str(p) for p in paths)}", highlight=False, markup=False,
                  soft_wrap=True)
    out.print(f"{len(done)} campaign(s) exported to {folder} (templates in {templates})", highlight=False,
              markup=False, soft_wrap=True)


@campaigns.command("versions")
@click.argument("name")
@click.pass_obj
@fail_cleanly
def campaigns_versions(app: App, name: str) -> None:
    """The stored versions of a campaign, oldest first, and which are current, submitted, approved."""
    from sqlalchemy import func, select

    from loa import db
    from loa.versions import versions_of

    engine = app.engine()
    found = versions_of(engine, name)
    with engine.connect() as conn:
        row = conn.execute(select(db.campaigns.c.current_version, db.campaigns.c.submitted_version,
                                  db.campaigns.c.approved_version, db.campaigns.c.state)
                           .where(db.campaigns.c.name == name)).one()
        runs = dict(conn.execute(select(db.runs.c.campaign_version, func.count())
                                 .join(db.campaigns, db.campaigns.c.id == db.runs.c.campaign_id)
                                 .where(db.campaigns.c.name == name).group_by(db.runs.c.campaign_version)).all())
    table = Table("version", "applied at", "by", "file", "templates", "digest", "runs", "", title=f"{name} ({row.state})")
    for v in found:
        marks = [m for m, n in (("current", row.current_version), ("submitted", row.submitted_version),
                                ("approved", row.approved_version)) if n == v.version]
        table.add_row(str(v.version), v.created_at.astimezone(app.config.timezone).strftime("%Y-%m-%d %H:%M %Z"),
                      escape(v.created_by), escape(v.file), escape(", ".join(sorted(v.templates))), v.digest[:12],
                      f"{runs.get(v.version, 0):,}", ", ".join(marks))
    out.print(table)


@campaigns.command("diff")
@click.argument("name")
@click.argument("a", type=int, required=False)
@click.argument("b", type=int, required=False)
@click.pass_obj
@fail_cleanly
def campaigns_diff(app: App, name: str, a: int | None, b: int | None) -> None:
    """A unified diff of the TOML and templates of versions A and B (default: the current version
    and the one before it; with A only, A and the current version)."""
    from loa.versions import diff

    text = diff(app.engine(), name, a, b)
    click.echo(text if text else f"versions {a or 'previous'} and {b or 'current'} of {name} are the same", nl=not text)


def _actor() -> str:
    from loa import audit

    return audit.cli_actor()


# -- approval: submit, approve, reject, launch -------------------------------------

_AS_OPTION = click.option("--as", "as_user", required=True, metavar="USER",
                          help="The loa user who acts (`loa users add`): approval is by named users, with roles.")


def _decide(app: App, name: str, action: str, as_user: str, reason: str | None, version: int | None = None) -> None:
    from loa import approval
    from loa.auth import principal_for_user

    if reason is not None and not reason.strip():
        raise LoaError(f"--reason is empty: say why the campaign is {action}ed")
    engine = app.engine()
    principal = principal_for_user(engine, as_user.strip().lower())
    decision = approval.decide(engine, app.config, name, action, principal, reason=reason.strip() if reason else None,
                               version=version)
    hint = {"submit": f"; an approver other than {principal.name} runs `loa campaigns approve {name}`",
            "approve": f"; `loa campaigns launch {name}` makes it active",
            "reject": f"; apply a corrected version, then `loa campaigns submit {name}`",
            "launch": "; it is planned and sent from now on"}[action]
    out.print(f"campaign {name} version {decision.version} {decision.after} (was {decision.before}) by "
              f"{decision.actor}" + (f": {reason.strip()}" if reason else "") + hint,
              highlight=False, markup=False, soft_wrap=True)


@campaigns.command("submit")
@click.argument("name")
@_AS_OPTION
@click.option("--reason", default=None, help="Why (optional): kept in the audit log.")
@click.pass_obj
@fail_cleanly
def campaigns_submit(app: App, name: str, as_user: str, reason: str | None) -> None:
    """Submit a draft campaign's current version for approval (operator or above)."""
    _decide(app, name, "submit", as_user, reason)


@campaigns.command("approve")
@click.argument("name")
@_AS_OPTION
@click.option("--reason", default=None, help="Why (optional): kept in the audit log.")
@click.option("-n", "--count", type=click.IntRange(1, 100), default=3, show_default=True,
              help="Sample messages to render before approving.")
@click.option("--yes", is_flag=True, help="Approve without asking (the review is printed all the same).")
@click.pass_obj
@fail_cleanly
def campaigns_approve(app: App, name: str, as_user: str, reason: str | None, count: int, yes: bool) -> None:
    """Approve the submitted version (approver role; not the user who submitted it).

    First prints what is approved: the version, its audience, rendered samples with their
    encoding and parts per message, and the estimated cost (or the SMS parts it is made of);
    only that version is then planned and sent."""
    from loa import approval, audit
    from loa.auth import principal_for_user

    engine = app.engine()
    # who may not approve never sees the review: it shows real subscribers' names and messages
    approval.check_reviewer(engine, app.config, name, principal_for_user(engine, as_user.strip().lower()))
    seen = approval.review(engine, app.config, name, count)
    approval.record_review(engine, audit.cli_actor(), seen)
    _print_review(seen)
    if not yes and not click.confirm(f"approve version {seen.version} of {name}?", default=False, err=True):
        raise LoaError(f"campaign {name}: not approved (nothing changed)")
    _decide(app, name, "approve", as_user, reason, version=seen.version)


def _print_review(seen: Any) -> None:
    submitted = f", submitted by {seen.submitted_by}" if seen.submitted_by else ""
    out.print(f"[bold]{escape(seen.campaign)}[/bold] version {seen.version} ({seen.state}{escape(submitted)})",
              highlight=False)
    out.print(f"approval: {seen.approval or 'not required by [approval]'}", highlight=False, markup=False)
    for sample in seen.samples:
        out.print(f"\n[cyan]{escape(sample.who)}[/cyan] ({escape(sample.area)}) · {sample.channel} · {sample.detail}",
                  highlight=False)
        out.print(sample.text, highlight=False, markup=False)
    for e in seen.errors:
        err.print(f"[red]template error:[/red] {escape(e)}", highlight=False, soft_wrap=True)
    cost = (f"{seen.estimated_cost:,.0f} VND" if seen.estimated_cost is not None
            else f"not priced (gateway prices not configured): {seen.estimated_parts:,} SMS part(s)")
    table = Table("audience", "to send", "held out", "suppressed", "estimated parts", "estimated cost",
                  title=f"version {seen.version} if run now")
    table.add_row(f"{seen.audience:,}", f"{seen.to_send:,}", f"{seen.held_out:,}",
                  ", ".join(f"{n:,} {r}" for r, n in seen.suppressed.items()) or "0", f"{seen.estimated_parts:,}", cost)
    out.print(table)


@campaigns.command("reject")
@click.argument("name")
@_AS_OPTION
@click.option("--reason", required=True, help="Why: kept with the campaign and in the audit log.")
@click.pass_obj
@fail_cleanly
def campaigns_reject(app: App, name: str, as_user: str, reason: str) -> None:
    """Reject the submitted version (approver role): the campaign goes back to draft."""
    _decide(app, name, "reject", as_user, reason)


@campaigns.command("launch")
@click.argument("name")
@_AS_OPTION
@click.option("--reason", default=None, help="Why (optional): kept in the audit log.")
@click.pass_obj
@fail_cleanly
def campaigns_launch(app: App, name: str, as_user: str, reason: str | None) -> None:
    """Make an approved campaign active (approver role): its approved version is planned and sent."""
    _decide(app, name, "launch", as_user, reason)


@campaigns.command("test")
@click.argument("name")
@click.option("--to", "to", multiple=True, required=True, metavar="PHONE",
              help="A staff number to send the test to (repeat for several).")
@click.option("--subscriber", default=None, metavar="PHONE",
              help="Whose message to send (default: the first of the campaign's audience).")
@click.option("--as", "as_user", required=True, metavar="USER",
              help="The loa user who sends it (operator or above, within the campaign's areas).")
@click.pass_obj
@fail_cleanly
def campaigns_test(app: App, name: str, to: tuple[str, ...], subscriber: str | None, as_user: str) -> None:
    """Send the campaign's real message, rendered for one subscriber, to staff numbers.

    It goes through the campaign's gateway within its rate limit, and is kept apart from
    the campaign's messages: no report, status, metric, frequency cap or budget counts it.
    The audit log records who sent it, whose message and to which numbers.
    """
    from loa.auth import principal_for_user
    from loa.cost import vnd
    from loa.testsend import send_test, staff_numbers

    staff_numbers(list(to))   # a bad number is refused before the campaign is even read
    campaign = _load_valid(app, name)
    engine = app.engine()
    principal = principal_for_user(engine, as_user)
    trial = send_test(engine, app.config, campaign, list(to), actor=principal.actor, subscriber=subscriber,
                      principal=principal)
    out.print(f"test of {campaign.name} by {principal.actor}: the message of {trial.subscriber} "
              f"({trial.detail}) through {trial.gateway}", highlight=False, markup=False, soft_wrap=True)
    out.print(trial.text, highlight=False, markup=False)
    for r in trial.results:
        if r.state in ("sent", "delivered"):
            line = f"{r.phone}: {r.state}, provider id {r.provider_id}" + (f", {r.parts} part(s)" if r.parts else "") \
                + (f", {vnd(r.cost_vnd)}" if r.cost_vnd is not None else "")
        else:
            line = f"{r.phone}: {r.state}, gateway error {r.error_code}: {r.error_text}"
        out.print(line, highlight=False, markup=False, soft_wrap=True)
    if any(r.state not in ("sent", "delivered") for r in trial.results):
        sys.exit(1)


# -- lifecycle: pause, resume, cancel -------------------------------------------

def _lifecycle(app: App, name: str, run_id: int | None, action: str, reason: str | None) -> None:
    """Apply ``action`` to a campaign, or to one of its runs, and say what it did."""
    from loa import lifecycle

    if reason is not None and not reason.strip():
        raise LoaError(f"--reason is empty: say why the campaign is {lifecycle.PAST[action]}")
    reason = reason.strip() if reason else None
    who = lifecycle.actor()
    engine = app.engine()
    audited = _audit_change(action, reason)
    if run_id is None:
        change = lifecycle.change_campaign(engine, name, action, who=who, reason=reason, record=audited)
    else:
        change = lifecycle.change_run(engine, name, run_id, action, who=who, reason=reason, record=audited)
    effect = {
        "pause": f"{change.messages:,} message(s) held back, planned, with the pause as their reason; "
                 f"`loa campaigns resume {name}{f' --run {run_id}' if run_id else ''}` sends them",
        "resume": f"{change.messages:,} held message(s) go out with the next send",
        "cancel": f"{change.messages:,} unsent message(s) cancelled; those already sent are unchanged",
    }[action]
    out.print(f"{change.kind} {change.name} {change.after} (was {change.before}) by {who}"
              + (f": {reason}" if reason else "") + f"; {effect}", highlight=False, markup=False, soft_wrap=True)


def _audit_change(action: str, reason: str | None) -> Any:
    """The audit entry of a lifecycle change, written in the change's transaction."""
    from loa import audit

    return audit.lifecycle_entry(audit.cli_actor(), action, reason)


_RUN_OPTION = click.option("--run", "run_id", type=int, default=None, help="Only this run of the campaign.")


@campaigns.command("pause")
@click.argument("name")
@_RUN_OPTION
@click.option("--reason", required=True, help="Why: kept with the campaign (or run) and on its held messages.")
@click.pass_obj
@fail_cleanly
def campaigns_pause(app: App, name: str, run_id: int | None, reason: str) -> None:
    """Pause an active campaign (or one run): no worker sends its messages from now on.

    Messages already handed to a gateway finish; the others stay planned, with the pause
    as their reason, until `loa campaigns resume`.  Actor: $LOA_ACTOR, else the OS user.
    """
    _lifecycle(app, name, run_id, "pause", reason)


@campaigns.command("resume")
@click.argument("name")
@_RUN_OPTION
@click.option("--reason", default=None, help="Why (optional).")
@click.pass_obj
@fail_cleanly
def campaigns_resume(app: App, name: str, run_id: int | None, reason: str | None) -> None:
    """Resume a paused campaign (or run): its messages go out from where they stopped."""
    _lifecycle(app, name, run_id, "resume", reason)


@campaigns.command("cancel")
@click.argument("name")
@_RUN_OPTION
@click.option("--reason", required=True, help="Why: kept with the campaign (or run) and on every cancelled message.")
@click.pass_obj
@fail_cleanly
def campaigns_cancel(app: App, name: str, run_id: int | None, reason: str) -> None:
    """Cancel a campaign (or one run) for good: every message not yet sent is cancelled.

    Messages already sent, or being sent, are unchanged; a cancelled campaign gets no
    new runs.  Actor: $LOA_ACTOR, else the OS user.
    """
    _lifecycle(app, name, run_id, "cancel", reason)


@main.command()
@click.option("--all", "all_", is_flag=True, help="Every active campaign (required: the emergency brake).")
@click.option("--reason", required=True, help="Why: kept with each campaign and on its held messages.")
@click.pass_obj
@fail_cleanly
def stop(app: App, all_: bool, reason: str) -> None:
    """The emergency brake: pause every active campaign at once (`loa stop --all --reason ...`).

    Each is resumed on its own with `loa campaigns resume NAME`.
    """
    from loa import lifecycle

    if not all_:
        raise LoaError("loa stop pauses every active campaign: give --all (one campaign: loa campaigns pause NAME)")
    if not reason.strip():
        raise LoaError("--reason is empty: say why every campaign is stopped")
    who = lifecycle.actor()
    changes = lifecycle.stop_all(app.engine(), who=who, reason=reason.strip(),
                                 record=_audit_change("pause", reason.strip()))
    for change in changes:
        out.print(f"campaign {change.name} paused by {who}: {change.messages:,} message(s) held back",
                  highlight=False, markup=False, soft_wrap=True)
    out.print(f"{len(changes)} campaign(s) paused" if changes else "no active campaign: nothing to stop",
              highlight=False)


def _audit_run(engine: Any, result: Any, **flags: bool) -> None:
    from loa import audit

    audit.record_now(engine, audit.cli_actor(), "campaigns.run", "campaign", result.campaign, after={
        "run": result.run_id, "scheduled_for": result.scheduled_for.isoformat(), "created": result.created,
        "added": result.added, **{state: result.states[state] for state in ("planned", "held_out", "suppressed")},
        **{name: True for name, on in flags.items() if on}})


# -- send ---------------------------------------------------------------------

@main.command()
@click.option("--campaign", default=None, help="Only this campaign's messages.")
@click.option("--until-empty/--no-until-empty", default=True, show_default=True,
              help="Stop when nothing is due.")
@click.option("--threads", type=click.IntRange(1, 256), default=None)
@click.pass_obj
@fail_cleanly
def send(app: App, campaign: str | None, until_empty: bool, threads: int | None) -> None:
    """Send every due message through its gateway, then collect receipts."""
    from loa.dispatch import Dispatcher

    _follow_window_edits(app, app.engine(), out.print)
    dispatcher = Dispatcher(app.engine(), app.config, threads=threads, campaign=campaign)
    try:
        summary = dispatcher.run_until_empty()
    finally:
        dispatcher.pool.close()
    why = {"deferred": lambda: _deferrals(summary.deferred, app.config.timezone),
           "failed": lambda: _failures(summary.failed)}
    outcomes = ", ".join(f"{n:,} {s}" + (why[s]() if s in why else "")
                         for s, n in sorted(summary.outcomes.items())) or "nothing was due"
    out.print(f"sent: {outcomes}; {summary.receipts:,} receipts, {summary.responses:,} responses"
              + (f"; {summary.expired:,} expired" if summary.expired else ""), highlight=False, soft_wrap=True)
    for gateway, reason in summary.paused.items():
        err.print(f"[red]gateway {gateway} paused:[/red] {escape(reason)}; its messages stay planned", highlight=False,
                  soft_wrap=True)
    for name, reason in summary.over_budget.items():
        err.print(f"[red]campaign {escape(name)} paused:[/red] {escape(reason)}; raise its budget and "
                  f"`loa campaigns resume {escape(name)}` to send the rest", highlight=False, soft_wrap=True)
    if summary.paused:
        sys.exit(1)


def _deferrals(deferred: Any, tz: Any) -> str:
    """" to 07:00 (send window)", or per reason its count and its earliest time ("from 07:00")."""
    from datetime import datetime

    today = datetime.now(tz).date()
    times: dict[str, list[datetime]] = {}
    counts: dict[str, int] = {}
    for (why, until), n in deferred.items():
        times.setdefault(why, []).append(until)
        counts[why] = counts.get(why, 0) + n
    groups = []
    for why in sorted(times, key=lambda w: min(times[w])):
        local = min(times[why]).astimezone(tz)
        days = (local.date() - today).days
        at = f"{local:%H:%M}" + ("" if days <= 0 else " tomorrow" if days == 1 else f" on {local:%d/%m}")
        groups.append((why, counts[why], f"to {at}" if len(times[why]) == 1 else f"from {at}"))
    if len(groups) == 1:
        return f" {groups[0][2]} ({groups[0][0]})"
    return " (" + "; ".join(f"{n:,} {at}: {why}" for why, n, at in groups) + ")"


FAILURE_GROUPS = 5    # reasons `loa send` names; the rest are counted


def _failures(failed: Any) -> str:
    """" (template 'sms/r.j2': 'x' is undefined)", or per reason its count, most frequent first."""
    groups = sorted(failed.items(), key=lambda item: (-item[1], item[0]))
    if len(groups) == 1:
        return f" ({groups[0][0]})"
    shown = [f"{n:,}: {why}" for why, n in groups[:FAILURE_GROUPS]]
    if len(groups) > FAILURE_GROUPS:
        rest = groups[FAILURE_GROUPS:]
        shown.append(f"{sum(n for _, n in rest):,}: {len(rest):,} other reasons")
    return " (" + "; ".join(shown) + ")" if shown else ""


@main.command()
@click.option("--campaign", default=None, help="Only this campaign's messages.")
@click.option("--threads", type=click.IntRange(1, 256), default=None)
@click.option("--idle", type=click.FloatRange(0.05, 60), default=1.0, show_default=True,
              help="Seconds to wait when nothing is due.")
@click.pass_obj
@fail_cleanly
def worker(app: App, campaign: str | None, threads: int | None, idle: float) -> None:
    """A long-lived sender: run any number, on one machine or several (PostgreSQL).

    Workers claim due messages under a lease and share each gateway's rate limit
    through the database.  SIGTERM finishes the sends in flight and exits.
    """
    import signal

    from loa.dispatch import Dispatcher

    log = logging.getLogger("loa.worker")
    _follow_window_edits(app, app.engine(), lambda line, **_: log.warning("%s", line))
    dispatcher = Dispatcher(app.engine(), app.config, threads=threads, campaign=campaign)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: dispatcher.stop.set())
    log.warning("worker %s started", dispatcher.worker)
    try:
        summary = dispatcher.run_forever(idle=idle)
    finally:
        dispatcher.pool.close()
    outcomes = ", ".join(f"{n:,} {s}" for s, n in sorted(summary.outcomes.items())) or "nothing"
    log.warning("worker %s stopped: %s", dispatcher.worker, outcomes)


@main.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_obj
@fail_cleanly
def status(app: App, fmt: str) -> None:
    """Messages by state per campaign and run, send rates, ETAs and paused gateways."""
    import json

    from loa.status import collect, tables

    result = collect(app.engine())
    if fmt == "json":
        click.echo(json.dumps(result, ensure_ascii=False, indent=2, default=str))
        return
    for table in tables(result, app.config.timezone):
        out.print(table)


# -- messages -------------------------------------------------------------------

@main.group()
def messages() -> None:
    """Messages in the ledger."""


@messages.command("reconcile")
@click.option("--campaign", default=None, help="Only this campaign's messages.")
@click.option("--settle", type=click.FloatRange(0), default=None,
              help="Ask only about messages unknown for at least this many seconds: a gateway may record "
                   "a message a moment after answering (default: 60).")
@click.pass_obj
@fail_cleanly
def reconcile(app: App, campaign: str | None, settle: float | None) -> None:
    """Ask the gateways what became of messages whose outcome is unknown.

    A message the gateway has is recorded as sent (or delivered); one it never got goes
    back to the queue, for the next `loa send`; any other stays unknown, with the reason.
    """
    from sqlalchemy import select

    from loa import db
    from loa.dispatch import Dispatcher

    engine = app.engine()
    if campaign is not None:
        with engine.connect() as conn:
            if conn.scalar(select(db.campaigns.c.id).where(db.campaigns.c.name == campaign)) is None:
                raise LoaError(f"no campaign named {campaign!r}")
    dispatcher = Dispatcher(engine, app.config, campaign=campaign)
    try:
        done = dispatcher.reconcile_unknown(limit=None, settle_after=settle)
    finally:
        dispatcher.pool.close()
    if not done:
        out.print("no messages with an unknown outcome" + (f" in campaign {campaign}" if campaign else ""),
                  highlight=False, markup=False)
        return
    for (action, detail), n in sorted(done.items()):
        line = {"settled": f"{n:,} {detail}: the gateway has them",
                "requeued": f"{n:,} queued again: the gateway never got them (loa send sends them)",
                "unknown": f"{n:,} left unknown: {detail}"}[action]
        out.print(line, highlight=False, markup=False, soft_wrap=True)


@messages.command("export")
@click.option("--campaign", default=None, help="Only this campaign's messages.")
@click.option("--run", "run_id", type=click.IntRange(1), default=None, help="Only this run's messages.")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@_AS_OPTION
@click.pass_obj
@fail_cleanly
def messages_export(app: App, campaign: str | None, run_id: int | None, fmt: str, as_user: str) -> None:
    """The ledger, one row per message: numbers in full only for roles that may read subscribers
    (operator and above; masked for viewers), and only the messages of the user's area."""
    from loa import ledger
    from loa.auth import principal_for_user

    engine = app.engine()
    who = principal_for_user(engine, as_user.strip().lower())
    click.echo(ledger.render(ledger.rows(engine, who, campaign, run_id), fmt), nl=fmt == "json")


# -- a person's data ------------------------------------------------------------

@main.group()
def subjects() -> None:
    """A person's data, by phone number: show, export, restrict or erase it (each one audited)."""


_REASON = click.option("--reason", required=True, help="Why: the person's request and its reference (audited).")


def _subject_principal(app: App, as_user: str) -> Any:
    from loa.auth import principal_for_user

    return principal_for_user(app.engine(), as_user.strip().lower())


@subjects.command("show")
@click.argument("phone")
@_AS_OPTION
@_REASON
@click.pass_obj
@fail_cleanly
def subjects_show(app: App, phone: str, as_user: str, reason: str) -> None:
    """What loa holds about PHONE, in short (approver or above)."""
    from loa import subjects as subj

    data = subj.export(app.engine(), phone, _subject_principal(app, as_user), reason, action="show")
    s = data["subscriber"]
    area = f"{s['area']['name']} ({s['area']['code']})" if s["area"] else "no area"
    say = lambda text: out.print(text, highlight=False, markup=False, soft_wrap=True)
    say(f"{s['phone']}: {s['name'] or '(no name)'}, {area}, {s['carrier'] or 'carrier unknown'}, "
        f"since {_when(app, s['created_at'])}")
    say(f"attributes: {', '.join(f'{k}={v}' for k, v in s['attributes'].items()) or 'none'}")
    state = []
    if s["opted_out_at"]:
        state.append(f"opted out {_when(app, s['opted_out_at'])}")
    if s["restricted_at"]:
        state.append(f"processing restricted {_when(app, s['restricted_at'])}")
    say(f"state: {', '.join(state) or 'active'}")
    for c in data["consents"]:
        status = "current" if c["current"] else f"withdrawn {_when(app, c['withdrawn_at'])}"
        say(f"consent {c['purpose']}: given {_when(app, c['given_at'])} ({c['source']}; {c['evidence'] or 'no evidence'}), "
            f"{status}")
    if not data["consents"]:
        say("consents: none")
    say(f"{len(data['messages'])} message(s), {len(data['events'])} event(s), {len(data['arrivals'])} arrival(s), "
        f"{len(data['clicks'])} click(s), {len(data['opt_outs'])} opt-out(s); "
        f"`loa subjects export {phone} ...` gives them all")


@subjects.command("export")
@click.argument("phone")
@_AS_OPTION
@_REASON
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the JSON here instead of standard output.")
@click.pass_obj
@fail_cleanly
def subjects_export(app: App, phone: str, as_user: str, reason: str, output: Path | None) -> None:
    """Everything loa holds about PHONE as JSON: subscriber, attributes, consents, messages with
    their texts and states, events, arrivals, opt-outs and clicks (approver or above)."""
    import json

    from loa import subjects as subj

    data = subj.export(app.engine(), phone, _subject_principal(app, as_user), reason)
    text = json.dumps(data, ensure_ascii=False, indent=2, default=lambda v: v.isoformat())
    if output is None:
        click.echo(text)
        return
    try:
        output.write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        raise LoaError(f"{output}: cannot write: {exc.strerror}") from None
    err.print(f"wrote {output}", highlight=False, markup=False)


@subjects.command("restrict")
@click.argument("phone")
@_AS_OPTION
@_REASON
@click.option("--lift", is_flag=True, help="Lift the restriction: PHONE may be processed again.")
@click.pass_obj
@fail_cleanly
def subjects_restrict(app: App, phone: str, as_user: str, reason: str, lift: bool) -> None:
    """Stop all processing of PHONE except storing it: no run plans it, its queued messages are
    cancelled (approver or above)."""
    from loa import subjects as subj

    done = subj.restrict(app.engine(), phone, _subject_principal(app, as_user), reason, lift=lift)
    from loa.phones import mask

    if lift:
        out.print(f"{mask(done['phone'])}: processing allowed again", highlight=False, markup=False)
        return
    out.print(f"{mask(done['phone'])}: processing restricted{' (it was already)' if done['was_restricted'] else ''}; "
              f"{done['cancelled']} queued message(s) cancelled", highlight=False, markup=False, soft_wrap=True)


@subjects.command("erase")
@click.argument("phone")
@_AS_OPTION
@_REASON
@click.option("--yes", is_flag=True, help="Erase without asking.")
@click.pass_obj
@fail_cleanly
def subjects_erase(app: App, phone: str, as_user: str, reason: str, yes: bool) -> None:
    """Erase everything loa holds about PHONE but the keyed hash of the number (admin).

    Past reports keep their totals; the hash keeps an opt-out in force and keeps a later import
    from bringing the number back without a new consent.  Needs $LOA_SUBJECT_KEY."""
    from loa import subjects as subj
    from loa.phones import mask

    who = _subject_principal(app, as_user)
    subj.subject_key()   # before asking: a missing key is said at once
    if not yes and not click.confirm(f"erase everything loa holds about {mask(subj.parse(phone))}?", err=True):
        raise LoaError("nothing erased")
    done = subj.erase(app.engine(), phone, who, reason)
    out.print(f"{mask(subj.parse(phone))}: erased ({done['messages']} message(s) kept for reports without text, "
              f"{done['events']} event(s) cleared, {done['arrivals']} arrival(s) and {done['consents']} consent(s) "
              f"deleted, {done['cancelled']} queued message(s) cancelled)", highlight=False, markup=False,
              soft_wrap=True)


@main.command()
@click.option("--dry-run", is_flag=True, help="Say what would go, and remove nothing.")
@click.pass_obj
@fail_cleanly
def purge(app: App, dry_run: bool) -> None:
    """Remove personal data past its retention ([retention]): arrivals, message texts, and the
    numbers of subscribers inactive that long (replaced by their keyed hash).  The elected
    scheduler runs this daily."""
    from loa import retention
    from loa.subjects import subject_key

    result = retention.purge(app.engine(), app.config, dry_run=dry_run, actor=_actor(),
                             key=subject_key(required=not dry_run))
    keep = app.config.retention
    verb = "would be" if dry_run else "were"
    out.print(f"{result.arrivals:,} arrival(s) older than {keep.arrivals_days} d {verb} deleted; "
              f"{result.message_texts:,} message text(s) older than {keep.message_texts_days} d {verb} cleared; "
              f"{result.numbers:,} number(s) of subscribers inactive for {keep.ledger_numbers_days} d {verb} "
              "replaced by their keyed hash", highlight=False, markup=False, soft_wrap=True)


@main.group("db")
def db_group() -> None:
    """The database's own upkeep."""


@db_group.command("partition")
@click.option("--drop-before", default=None, metavar="YYYY-MM",
              help="Also drop the months of runs before this one (their messages, after retention).")
@click.pass_obj
@fail_cleanly
def db_partition(app: App, drop_before: str | None) -> None:
    """PostgreSQL: partition the outbox by month of runs (once; again it only opens this month's
    and the next), in one transaction.  The scheduler's daily retention opens each next month."""
    from loa import audit, partitions

    engine = app.engine()
    cutoff = partitions.parse_month(drop_before) if drop_before else None
    done = partitions.partition(engine, drop_before=cutoff)
    if done.converted or done.dropped:
        audit.record_now(engine, _actor(), "db.partition", "table", "outbox",
                         after={"converted": done.converted, "dropped": done.dropped, "opened": done.opened})
    if done.converted:
        out.print("the outbox is now partitioned by month of runs; its rows so far are in "
                  f"{partitions.LEGACY}", highlight=False, markup=False)
    for name in done.opened:
        out.print(f"opened {name}", highlight=False, markup=False)
    for name in done.dropped:
        out.print(f"dropped {name}", highlight=False, markup=False)
    out.print("partitions: " + ", ".join(done.partitions), highlight=False, markup=False, soft_wrap=True)


# -- report -------------------------------------------------------------------

@main.command()
@click.argument("campaign", required=False)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--level", default=None, help="Area level to group by (default: the level the audience lives at).")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a self-contained HTML report (charts inline, opens offline).")
@click.pass_obj
@fail_cleanly
def report(app: App, campaign: str | None, fmt: str, level: str | None, html_path: Path | None) -> None:
    """Per-area report of a campaign: reach, installs, uplift, progress to goal."""
    from loa import report as rep

    engine = app.engine()
    result = rep.for_campaign(engine, app.config.campaigns_dir, campaign or rep.latest_campaign(engine), level)
    if html_path is not None:
        try:
            html_path.write_text(rep.render(engine, result, "html", lang=app.config.language), encoding="utf-8")
        except OSError as exc:
            raise LoaError(f"{html_path}: cannot write: {exc.strerror}") from None
        err.print(f"wrote {html_path}", highlight=False, markup=False)
    if fmt in ("csv", "json"):
        click.echo(rep.render(engine, result, fmt, lang=app.config.language), nl=fmt == "json")
    else:
        from loa.reportview import render_table

        render_table(out, result, rep.snapshot_summary(engine, result), lang=app.config.language)


# -- gateways -------------------------------------------------------------------

@main.group()
def gateways() -> None:
    """Configured gateways."""


@gateways.command("list")
@click.pass_obj
@fail_cleanly
def gateways_list(app: App) -> None:
    """Configured gateways and the gateway types loa knows."""
    from loa import gateways as gw
    from providers import registry

    engine = _engine_if_ready(app)
    paused = gw.paused(engine) if engine is not None else {}
    table = Table("name", "type", "rate (parts/s)", "settings", "state")
    for spec in app.config.gateways.values():
        state = f"paused: {paused[spec.name]['reason']}" if spec.name in paused else "active"
        table.add_row(escape(spec.name), spec.type, str(spec.rate or "default"),
                      escape(", ".join(sorted(spec.settings))), escape(state))
    out.print(table)
    out.print(f"known types: {', '.join(registry.known_types())}", highlight=False)


@gateways.command("resume")
@click.argument("name")
@click.option("--reason", "why", default="", help="Why, for the audit log.")
@click.pass_obj
@fail_cleanly
def gateways_resume(app: App, name: str, why: str) -> None:
    """Resume a gateway paused by an authentication, configuration or money error."""
    from loa import audit
    from loa import gateways as gw

    engine = app.engine()
    if name not in gw.paused(engine):
        app.config.gateway(name)   # a typo gets the list of configured gateways
    # a paused gateway can be resumed even after it left the configuration: its rows are not stuck
    reason = gw.resume(engine, name, actor=audit.cli_actor(), why=why)
    out.print(f"gateway {name} resumed (it was paused: {reason}); its messages go out with the next send",
              highlight=False, markup=False)


@gateways.command("check")
@click.argument("name")
@click.pass_obj
@fail_cleanly
def gateways_check(app: App, name: str) -> None:
    """Verify a gateway's settings, secrets and reachability without sending."""
    from loa.gateways import build
    from providers.base import ProviderError

    # A check may rotate credentials (Zalo's single-use refresh token): they go to the
    # database the workers read, or the next worker's refresh fails.
    try:
        engine, no_database = app.engine(), None
    except LoaError as exc:
        engine, no_database = None, exc
    gw = build(app.config, name, engine)   # settings and secrets are reported before the database
    if no_database is not None:
        gw.provider.close()
        raise no_database
    try:
        out.print(f"{name}: {gw.provider.check()}", highlight=False, markup=False)
    except ProviderError as exc:
        raise LoaError(f"gateway {exc}" if exc.gateway == name else f"gateway {name}: {exc}") from None
    finally:
        gw.provider.close()


# -- demo -----------------------------------------------------------------------

@main.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Work here instead of a temporary directory (kept afterwards).")
@click.option("--gateway", type=click.Choice(["simulator", "twilio", "zalo", "esms", "smpp"]), default="simulator",
              show_default=True, help="Send through the simulator, or through a real gateway's adapter against "
              "its loopback fake (providers/fakes/), started in this process on 127.0.0.1.")
@click.option("--subscribers", type=click.IntRange(1000, 2_000_000), default=None,
              help="Synthetic subscribers [default: 60,000 with the simulator; 2,000 through a fake, which "
              "answers each message over the network].")
@click.option("--seed", type=int, default=2020, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@fail_cleanly
def demo(directory: Path | None, gateway: str, subscribers: int | None, seed: int, fmt: str) -> None:
    """A whole campaign on SQLite: Sơn La's Bluezone reminder through the simulator or a gateway's fake."""
    from loa.demo import run_demo

    run_demo(directory, subscribers=subscribers, seed=seed, fmt=fmt, console=out, gateway=gateway)




# -- schedule -------------------------------------------------------------------

@main.group()
def schedule() -> None:
    """Scheduled campaigns: next runs, and the scheduler itself."""


@schedule.command("list")
@click.option("-n", "--count", type=click.IntRange(1, 50), default=3, show_default=True)
@click.pass_obj
@fail_cleanly
def schedule_list(app: App, count: int) -> None:
    """The next runs of every scheduled campaign, in local time."""
    import scheduler

    table = Table("campaign", "next runs")
    for name, times in scheduler.next_runs(app.config, count, engine=_engine_if_ready(app)).items():
        table.add_row(name, ", ".join(t.strftime("%Y-%m-%d %H:%M %Z") for t in times) or "none (dates over)")
    out.print(table)


campaigns.add_command(schedule_list, "schedule")     # `loa campaigns schedule`, the same list


@schedule.command("run")
@click.pass_obj
@fail_cleanly
def schedule_run(app: App) -> None:
    """Run the scheduler in the foreground: plans each scheduled run (SIGHUP reloads campaigns)."""
    import signal
    import threading

    import scheduler

    sched = scheduler.CampaignScheduler(app.engine(), app.config)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: out.print(f"reloaded: {', '.join(sched.reload()) or 'no jobs'}"))
    sched.start()
    out.print(f"scheduling: {', '.join(j.id for j in sched.scheduler.get_jobs()) or 'no scheduled campaigns'}",
              highlight=False)
    for problem in sched.problems:
        err.print(f"[red]not scheduled:[/red] {problem}", highlight=False, soft_wrap=True)
    try:
        stop.wait()
    finally:
        sched.shutdown()


# -- serve ----------------------------------------------------------------------

@main.command()
@click.option("--host", default=None, help="Listen address (default: serve.host, else 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port (default: serve.port, else 8080).")
@click.option("--workers", type=click.IntRange(0, 64), default=None,
              help="Dispatchers in this process (default: serve.workers, else 1; 0 = none).")
@click.option("--scheduler/--no-scheduler", default=True, show_default=True,
              help="Take part in the election of the one active scheduler.")
@click.pass_obj
@fail_cleanly
def serve(app: App, host: str | None, port: int | None, workers: int | None, scheduler: bool) -> None:
    """Everything on one machine: the HTTP endpoints (gateway callbacks, opt-outs, health,
    metrics), the scheduler (one active across machines) and dispatchers.

    SIGTERM finishes the sends in flight and exits; SIGHUP reloads the campaigns.
    """
    import signal
    import threading

    from loa.serve import Service

    settings = app.config.serve
    service = Service(
        app.engine(), app.config,
        host=host or str(settings.get("host", "127.0.0.1")),
        port=int(settings.get("port", 8080)) if port is None else port,
        workers=int(settings.get("workers", 1)) if workers is None else workers,
        scheduler=scheduler,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: service.reload())
    service.start()
    out.print(f"loa serving on http://{service.host}:{service.port} "
              f"({service.workers} dispatcher(s), scheduler {'on' if scheduler else 'off'})",
              highlight=False, markup=False)
    try:
        stop.wait()
    finally:
        service.stop()


# -- users, keys and the audit log ------------------------------------------------

@main.group()
def users() -> None:
    """People who sign in to the API: roles viewer < operator < approver < admin, optionally bound
    to an area.  Every change is in `loa audit`, by $LOA_ACTOR (else the system user)."""


def _when(app: App, moment: Any) -> str:
    return "" if moment is None else moment.astimezone(app.config.timezone).strftime("%Y-%m-%d %H:%M")


def _new_password() -> str:
    """$LOA_NEW_PASSWORD, else asked twice without echo: a password is never an argument."""
    import os

    given = os.environ.get("LOA_NEW_PASSWORD")
    if given is not None:
        return given
    if not sys.stdin.isatty():
        raise LoaError("no password: set $LOA_NEW_PASSWORD, or run in a terminal to be asked for it")
    return str(click.prompt("password", hide_input=True, confirmation_prompt=True, err=True))


@users.command("add")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(["viewer", "operator", "approver", "admin"]))
@click.option("--area", "area_code", default=None, help="Bind the user to this area's subtree (its code).")
@click.pass_obj
@fail_cleanly
def users_add(app: App, name: str, role: str, area_code: str | None) -> None:
    """Add a user; the password comes from $LOA_NEW_PASSWORD or a prompt."""
    from loa import audit, auth

    engine = app.engine()
    name = auth.check_name(name)
    auth.check_new_user(engine, name, area_code)    # before asking for a password
    user = auth.add_user(engine, audit.cli_actor(), name, _new_password(), role, area_code)
    where = f", bound to {user.area_name} ({user.area_code})" if user.area_code else ""
    out.print(f"user {user.name} added: {user.role}{where}", highlight=False, markup=False)


@users.command("list")
@click.pass_obj
@fail_cleanly
def users_list(app: App) -> None:
    """Every user, its role, area, language (vi or en) and last sign-in."""
    from loa import auth

    table = Table("name", "role", "area", "language", "created", "last sign-in", "state")
    for u in auth.list_users(app.engine()):
        table.add_row(escape(u.name), u.role, escape(f"{u.area_name} ({u.area_code})") if u.area_code else "all",
                      u.language,
                      _when(app, u.created_at), _when(app, u.last_login_at),
                      f"disabled {_when(app, u.disabled_at)}" if u.disabled_at else "active")
    out.print(table)


@users.command("disable")
@click.argument("name")
@click.option("--reason", default="", help="Why, for the audit log.")
@click.pass_obj
@fail_cleanly
def users_disable(app: App, name: str, reason: str) -> None:
    """Disable a user: it can no longer sign in."""
    from loa import audit, auth

    user = auth.disable_user(app.engine(), audit.cli_actor(), name, reason)
    out.print(f"user {user.name} disabled", highlight=False, markup=False)


@users.command("role")
@click.argument("name")
@click.argument("role", type=click.Choice(["viewer", "operator", "approver", "admin"]))
@click.option("--reason", default="", help="Why, for the audit log.")
@click.pass_obj
@fail_cleanly
def users_role(app: App, name: str, role: str, reason: str) -> None:
    """Give a user another role."""
    from loa import audit, auth

    before, after = auth.set_role(app.engine(), audit.cli_actor(), name, role, reason)
    out.print(f"user {after.name}: {before.role} → {after.role}", highlight=False, markup=False)


@users.command("language")
@click.argument("name")
@click.argument("language", type=click.Choice(["vi", "en"]))
@click.option("--reason", default="", help="Why, for the audit log.")
@click.pass_obj
@fail_cleanly
def users_language(app: App, name: str, language: str, reason: str) -> None:
    """Set a user's language in the console: vi (the default) or en."""
    from loa import audit, auth

    before, after = auth.set_language(app.engine(), audit.cli_actor(), name, language, reason)
    out.print(f"user {after.name}: language {before.language} → {after.language}", highlight=False, markup=False)


@main.group()
def keys() -> None:
    """API keys for programs: each with a role and optionally an area, shown once."""


@keys.command("create")
@click.option("--role", required=True, type=click.Choice(["viewer", "operator", "approver", "admin"]))
@click.option("--area", "area_code", default=None, help="Bind the key to this area's subtree (its code).")
@click.option("--name", default="", help="What the key is for.")
@click.pass_obj
@fail_cleanly
def keys_create(app: App, role: str, area_code: str | None, name: str) -> None:
    """Create a key and print it, this once: loa keeps only its hash."""
    from loa import audit, auth

    key, full = auth.create_key(app.engine(), audit.cli_actor(), role, area_code, name)
    where = f", area {key.area_code}" if key.area_code else ""
    err.print(f"API key {key.id} ({key.role}{where}) created; it is shown only this once:", highlight=False,
              markup=False)
    click.echo(full)


@keys.command("list")
@click.pass_obj
@fail_cleanly
def keys_list(app: App) -> None:
    """Every key by its id and prefix (never its secret)."""
    from loa import auth

    table = Table("id", "key", "name", "role", "area", "created by", "created", "last used", "state")
    for k in auth.list_keys(app.engine()):
        table.add_row(str(k.id), k.shown, escape(k.name), k.role, escape(k.area_code or "all"), escape(k.created_by),
                      _when(app, k.created_at), _when(app, k.last_used_at),
                      f"revoked {_when(app, k.revoked_at)}" if k.revoked_at else "active")
    out.print(table)


@keys.command("revoke")
@click.argument("key_id", metavar="ID", type=int)
@click.option("--reason", default="", help="Why, for the audit log.")
@click.pass_obj
@fail_cleanly
def keys_revoke(app: App, key_id: int, reason: str) -> None:
    """Revoke a key: it is refused from now on."""
    from loa import audit, auth

    key = auth.revoke_key(app.engine(), audit.cli_actor(), key_id, reason)
    out.print(f"API key {key.id} ({key.shown}) revoked", highlight=False, markup=False)


@main.command("audit")
@click.option("--actor", default=None, help="Only this actor's entries (user:NAME, key:PREFIX, os:USER, ...).")
@click.option("--action", default=None, help="Only this action and its sub-actions (users, users.role, ...).")
@click.option("--since", default=None, help="Only entries since this time (ISO 8601, local time) or age (2h, 7d).")
@click.option("--object", "object_", default=None, help="Only entries about this object: TYPE or TYPE:ID.")
@click.option("--limit", type=click.IntRange(0), default=200, show_default=True,
              help="The newest this many entries (0: all).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_obj
@fail_cleanly
def audit_(app: App, actor: str | None, action: str | None, since: str | None, object_: str | None, limit: int,
           fmt: str) -> None:
    """The audit log, oldest first: who changed what, when, before and after (read-only)."""
    import json

    from loa import audit

    moment = audit.parse_since(since, app.config.timezone) if since else None
    entries = audit.query(app.engine(), actor=actor, action=action, since=moment, object=object_,
                          limit=limit or None)
    if fmt == "json":
        click.echo(json.dumps([e.as_dict() for e in entries], ensure_ascii=False, indent=2, default=str))
        return
    table = Table("id", "at", "actor", "action", "object", "change", "reason")
    for e in entries:
        table.add_row(str(e.id), _when(app, e.at), escape(e.actor), e.action, escape(e.object), escape(e.change()),
                      escape(e.reason))
    out.print(table)
    if limit and len(entries) == limit:
        err.print(f"the newest {limit} entries; --limit 0 shows all", highlight=False, markup=False)
