"""The report as a Rich table, with a bar per area towards the goal; then the snapshots, if any."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from loa import report as rep
from loa.report import Report, population_caption
from loa.snapshots import Summary

BAR = 12


def _pct(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{100 * value:.{digits}f}%"


def _num(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _bar(progress: float | None) -> str:
    if progress is None:
        return ""
    filled = min(BAR, round(BAR * progress))
    return "█" * filled + "·" * (BAR - filled) + f" {100 * progress:.0f}%"


def render_table(console: Console, report: Report, summary: Summary | None = None) -> None:
    goal = report.goal
    title = f"{report.campaign}: per {report.level or 'area'}"
    caption = None
    if goal:
        by = f" by {goal.by.isoformat()}" if goal.by else ""
        caption = f"goal: {goal.share:.0%} of {goal.of} with '{goal.event}'{by}"
    if population := population_caption(report):
        caption = f"{caption}\n{population}" if caption else population
    table = Table(title=title, caption=caption, show_footer=True, header_style="bold")
    # Two header rows: who was reached, then who did what the campaign asks.
    event = report.event
    columns = [
        ("area", lambda r: escape(r.area), "left"),   # names are data, not markup
        ("population", lambda r: _num(r.population), "right"),
        ("audience", lambda r: _num(r.audience), "right"),
        ("held out", lambda r: _num(r.held_out), "right"),
        ("suppr.", lambda r: _num(r.suppressed), "right"),
        ("sent", lambda r: _num(r.sent), "right"),
        ("deliv.", lambda r: _num(r.delivered), "right"),
        ("undeliv.", lambda r: _num(r.undelivered), "right"),
        ("failed", lambda r: _num(r.failed), "right"),
        ("spent (VND)", lambda r: _num(r.spent_vnd), "right"),
        ("after msg", lambda r: f"{_num(r.installed_delivered)} {_pct(r.rate_delivered)}", "right"),
        ("held out", lambda r: f"{_num(r.installed_held_out)} {_pct(r.rate_held_out)}", "right"),
        ("uplift", lambda r: "—" if r.uplift_points is None else f"{r.uplift_points:+.1f} pt", "right"),
        ("of pop.", lambda r: _pct(r.installed_share, 2), "right"),
    ]
    if goal:
        columns.append(("to goal", lambda r: _bar(report.progress(r)), "left"))
    first_response = next(i for i, (name, _, _) in enumerate(columns) if name == "after msg")
    for i, (name, fn, justify) in enumerate(columns):
        header = f"{event}\n{name}" if i >= first_response and name != "to goal" else name
        table.add_column(header, footer=fn(report.total), justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for row in report.rows:
        table.add_row(*(fn(row) for _, fn, _ in columns))
    console.print(table)
    if summary is not None:
        console.print(snapshots_table(summary))
    if report.versions:
        console.print("sent from campaign version " + "; ".join(
            f"{v} (run{'s' if len(runs) > 1 else ''} {', '.join(map(str, runs))})"
            for v, runs in sorted(report.versions.items()))
            + f": `loa campaigns versions {report.campaign}` lists them", highlight=False, markup=False, soft_wrap=True)
    for note in rep.notes(report, summary):
        console.print(f"[yellow]note:[/yellow] {escape(note)}", highlight=False, soft_wrap=True)


def snapshots_table(summary: Summary) -> Table:
    """Each area's latest snapshot: its rate, the change since the one before, the pace to the goal,
    and which of its statements disagree with the counts (the notes say how)."""
    table = Table("area", "as of", summary.metric, "of pop.", "change", "per day", "goal at this pace",
                  "disagrees", title=f"snapshots: {summary.metric} as others counted it", header_style="bold")
    for column in table.columns[2:6]:
        column.justify = "right"
    for s in summary.series:
        p = s.latest
        table.add_row(escape(s.area), p.as_of.isoformat(), _num(p.value), _pct(p.rate, 2),
                      "—" if p.change is None else f"{p.change:+,} in {p.days} d",
                      "—" if p.per_day is None else f"{p.per_day:,.0f}", rep.pace(s) or "—",
                      escape(rep.flags(summary, s.code)))
    return table


__all__ = ["render_table", "snapshots_table"]
