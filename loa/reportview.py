"""The report as a Rich table, with a bar per area towards the goal; then the snapshots, if any.

In the configured language (``language`` in config.toml, Vietnamese by default): the headings,
and the numbers, percentages and dates written its way (``84.126``, ``6,74 %``, ``17/08/2020``).
The notes under the table stay English (:func:`loa.report.notes`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from loa import report as rep
from loa.htmlreport import (
    _goal_line,
    _pace,
    _population_caption,
    area_name,
    event_name,
    level_name,
)
from loa.i18n import Language, language
from loa.report import Report, Row, population_caption
from loa.snapshots import Summary

BAR = 12


def N_(message: str) -> str:
    """Marks a heading for the catalog; translated where the table is drawn."""
    return message


def _bar(t: Language, progress: float | None) -> str:
    if progress is None:
        return ""
    filled = min(BAR, round(BAR * progress))
    return "█" * filled + "·" * (BAR - filled) + " " + t.percent(progress, 0)


def _captions(report: Report, t: Language) -> str | None:
    """The goal, then which populations the shares use."""
    goal = report.goal
    if t.code == "en":      # the CLI's own wording, which scripts and the demo's text quote
        caption = None
        if goal:
            by = f" by {goal.by.isoformat()}" if goal.by else ""
            caption = f"goal: {goal.share:.0%} of {goal.of} with '{goal.event}'{by}"
        population = population_caption(report)
    else:
        caption, population = _goal_line(report, t) or None, _population_caption(report, t)
    if population:
        return f"{caption}\n{population}" if caption else population
    return caption


def _columns(report: Report, t: Language) -> list[tuple[str, Callable[[Row], str], str]]:
    num, pct = t.number, t.percent

    def uplift(r: Row) -> str:
        return "—" if r.uplift_points is None else f"{t.signed(r.uplift_points, 1)} {t.gettext('pt')}"

    def area(r: Row) -> str:
        return escape(t.gettext("Total") if r is report.total else area_name(report, r, t))   # names are data

    columns: list[tuple[str, Callable[[Row], str], str]] = [
        (N_("area"), area, "left"),
        (N_("population"), lambda r: num(r.population), "right"),
        (N_("audience"), lambda r: num(r.audience), "right"),
        (N_("held out"), lambda r: num(r.held_out), "right"),
        (N_("suppr."), lambda r: num(r.suppressed), "right"),
        (N_("sent"), lambda r: num(r.sent), "right"),
        (N_("deliv."), lambda r: num(r.delivered), "right"),
        (N_("undeliv."), lambda r: num(r.undelivered), "right"),
        (N_("failed"), lambda r: num(r.failed), "right"),
        (N_("spent (VND)"), lambda r: num(r.spent_vnd), "right"),
        (N_("after msg"), lambda r: f"{num(r.installed_delivered)} {pct(r.rate_delivered)}", "right"),
        (N_("held out"), lambda r: f"{num(r.installed_held_out)} {pct(r.rate_held_out)}", "right"),
        (N_("uplift"), uplift, "right"),
        (N_("of pop."), lambda r: pct(r.installed_share, 2), "right"),
    ]
    if report.goal:
        columns.append((N_("to goal"), lambda r: _bar(t, report.progress(r)), "left"))
    return columns


def render_table(console: Console, report: Report, summary: Summary | None = None, lang: str | None = None) -> None:
    """Print the report, in ``lang`` (Vietnamese by default)."""
    t = language(lang)
    _ = t.gettext
    title = _("{campaign}: per {level}").format(campaign=report.campaign, level=level_name(t, report.level))
    table = Table(title=title, caption=_captions(report, t), show_footer=True, header_style="bold")
    # Two header rows: who was reached, then who did what the campaign asks.
    event = report.event if t.code == "en" else event_name(t, report.event)
    columns = _columns(report, t)
    first_response = next(i for i, (name, _f, _j) in enumerate(columns) if name == "after msg")
    for i, (name, fn, justify) in enumerate(columns):
        header = f"{event}\n{_(name)}" if i >= first_response and name != "to goal" else _(name)
        table.add_column(header, footer=fn(report.total), justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for row in report.rows:
        table.add_row(*(fn(row) for _n, fn, _j in columns))
    console.print(table)
    if summary is not None:
        console.print(snapshots_table(summary, lang))
    if report.versions:
        said = "; ".join(t.ngettext("{version} (run {runs})", "{version} (runs {runs})", len(runs)).format(
            version=v, runs=", ".join(map(str, runs))) for v, runs in sorted(report.versions.items()))
        console.print(_("sent from campaign version {versions}: `loa campaigns versions {campaign}` lists them")
                      .format(versions=said, campaign=report.campaign), highlight=False, markup=False, soft_wrap=True)
    lead = escape(_("note:"))
    for note in rep.notes(report, summary):
        console.print(f"[yellow]{lead}[/yellow] {escape(note)}", highlight=False, soft_wrap=True)


def snapshots_table(summary: Summary, lang: str | None = None) -> Table:
    """Each area's latest snapshot: its rate, the change since the one before, the pace to the goal,
    and which of its statements disagree with the counts (the notes say how)."""
    t = language(lang)
    _ = t.gettext
    metric = summary.metric if t.code == "en" else event_name(t, summary.metric)
    table = Table(_("area"), _("as of"), metric, _("of pop."), _("change"), _("per day"), _("goal at this pace"),
                  _("disagrees"), title=_("snapshots: {metric} as others counted it").format(metric=metric),
                  header_style="bold")
    for column in table.columns[2:6]:
        column.justify = "right"
    for s in summary.series:
        p = s.latest
        change: Any = "—" if p.change is None else _("{change} in {days} d").format(
            change=t.signed(p.change, 0), days=p.days)
        as_of = p.as_of.isoformat() if t.code == "en" else t.date(p.as_of)
        table.add_row(escape(s.area), as_of, t.number(p.value), t.percent(p.rate, 2), change,
                      t.number(p.per_day), (rep.pace(s) if t.code == "en" else _pace(s, t)) or "—",
                      escape(rep.flags(summary, s.code)))
    return table


__all__ = ["render_table", "snapshots_table"]
