"""The report as one self-contained HTML file: charts, a sortable table, the notes.

Everything is inline (plotly.js from the ``plotly`` package, the data, a few
lines of script to sort the table), so the file opens from a USB stick or an
e-mail attachment with no network.  Text is UTF-8 and the font stack lists
fonts that carry Vietnamese (Noto Sans, DejaVu Sans, Segoe UI, Roboto, Arial).

Charts (plotly):

* install rate per area against the goal's line;
* the funnel: audience, sent, delivered, responded (the goal's event after a message);
* the trend across snapshots (``loa.snapshots``), if any: rate per area and date;
* uplift per area with its 95% interval as error bars (``loa.stats``);
  rows too small to read are drawn hollow and grey.

``#sort=KEY`` (or ``#sort=-KEY``, descending) in the address sorts the table on
load, e.g. ``report.html#sort=-progress``.
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from typing import Any

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.offline import get_plotlyjs
from sqlalchemy.engine import Engine

from loa import report as rep
from loa.report import Report, Row, population_caption
from loa.snapshots import Summary
from loa.stats import MIN_EVENTS, MIN_PEOPLE

FONT = "'Noto Sans', 'DejaVu Sans', 'Segoe UI', Roboto, Arial, sans-serif"
BLUE, GREEN, GREY, RED, ORANGE = "#1f6fb2", "#2e8b57", "#9aa5b1", "#c0392b", "#e67e22"
CHART_HEIGHT = 360


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _num(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _pct(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{100 * value:.{digits}f}%"


# The page is read in Vietnamese: the lines of people at no area of the report's level, or at none.
LEVELS_VI = {"province": "tỉnh/thành phố", "district": "quận/huyện", "commune": "xã/phường/thị trấn",
             "ward": "phường", "region": "vùng"}
NO_AREA_VI = "(chưa rõ khu vực)"


def area_name(report: Report, row: Row) -> str:
    """A row's area as the page names it: "(chưa rõ quận/huyện)" for "(not in a district)"."""
    if row.code == "" and row.area == rep.outside_label(report.level):
        return f"(chưa rõ {LEVELS_VI.get(report.level, report.level)})"
    return NO_AREA_VI if row.code == "" and row.area == rep.NO_AREA else row.area


def _labels(rows: list[Row], report: Report | None = None) -> list[str]:
    """Area names for chart axes: escaped (plotly reads a few HTML tags), made unique with the code."""
    names = [area_name(report, r) if report else r.area for r in rows]
    return [_esc(f"{n} ({r.code})" if names.count(n) > 1 and r.code else n) for n, r in zip(names, rows, strict=True)]


def _layout(title: str, **kw: Any) -> dict[str, Any]:
    """A chart's layout; its title is the card's heading in the page (kept in ``meta``)."""
    return dict(meta={"title": title}, template="plotly_white", font={"family": FONT, "size": 12},
                height=CHART_HEIGHT, margin={"l": 60, "r": 20, "t": 30, "b": 90}, **kw)


# -- charts -----------------------------------------------------------------------------------

def _goal_base(report: Report, row: Row) -> float | None:
    if report.goal is not None and report.goal.of == "audience":
        return row.installed_total / row.audience if row.audience else None
    return row.installed_share


def rates_chart(report: Report, summary: Summary | None = None) -> go.Figure:
    """Per area: the share with the goal's event among the known subscribers; beside it, when a
    snapshot counts the same area and metric, the share as that count has it (everyone, not only
    the subscribers loa knows)."""
    rows = report.rows
    labels = _labels(rows, report)
    of = report.goal.of if report.goal else "population"
    values = [_goal_base(report, r) for r in rows]
    fig = go.Figure(go.Bar(
        x=labels, y=[None if v is None else 100 * v for v in values], name=_esc(f"{report.event}, loa's ledger"),
        marker_color=BLUE, text=[_pct(v, 2) if v is not None else "" for v in values], textposition="outside",
        hovertemplate="%{x}: %{y:.2f}%<extra>ledger</extra>",
    ))
    shown = [100 * v for v in values if v is not None]
    counted = {}
    if summary is not None and summary.metric == report.event and of == "population":
        counted = {s.code: s.latest for s in summary.series if s.latest.rate is not None}
    if any(r.code in counted for r in rows):
        points = [counted.get(r.code) for r in rows]
        dates = sorted({p.as_of.isoformat() for p in points if p is not None})
        fig.add_trace(go.Bar(
            x=labels, y=[None if p is None or p.rate is None else 100 * p.rate for p in points],
            name=_esc(f"{summary.metric}, snapshot of {' to '.join(dict.fromkeys([dates[0], dates[-1]]))}"
                      if summary else ""),
            marker_color=ORANGE, text=[_pct(p.rate, 1) if p is not None else "" for p in points],
            textposition="outside", customdata=[[p.value if p else None, p.as_of.isoformat() if p else ""]
                                                for p in points],
            hovertemplate="%{x}: %{y:.2f}% (%{customdata[0]:,} on %{customdata[1]})<extra>snapshot</extra>",
        ))
        shown += [100 * p.rate for p in points if p is not None and p.rate is not None]
    top = max(shown, default=0.0)
    if report.goal is not None:
        goal = 100 * report.goal.share
        by = f" by {report.goal.by.isoformat()}" if report.goal.by else ""
        fig.add_hline(y=goal, line={"color": RED, "dash": "dash", "width": 2},
                      annotation_text=_esc(f"goal {goal:g}%{by}"), annotation_position="top left")
        top = max(top, goal)
    fig.update_layout(**_layout(f"{report.event.capitalize()} as a share of {of}, per {report.level or 'area'}",
                                yaxis={"title": "%", "range": [0, top * 1.15 or 1], "ticksuffix": "%"},
                                barmode="group", showlegend=len(fig.data) > 1,
                                uniformtext={"minsize": 9, "mode": "hide"},
                                legend={"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom"}))
    return fig


def funnel_chart(report: Report) -> go.Figure:
    t = report.total
    stages = ["audience", "sent", "delivered", f"{report.event} after a message"]
    values = [t.audience, t.sent, t.delivered, t.installed_delivered]
    fig = go.Figure(go.Funnel(
        y=[_esc(s) for s in stages], x=values, texttemplate="%{value:,}<br>%{percentInitial:.1%}",
        marker={"color": [GREY, BLUE, BLUE, GREEN]}, hovertemplate="%{y}: %{x:,}<extra></extra>",
    ))
    fig.update_layout(**_layout("From audience to response (everyone in the report)"))
    fig.update_layout(margin={"l": 170, "r": 20, "t": 30, "b": 40})
    return fig


def uplift_chart(report: Report) -> go.Figure | None:
    rows = [r for r in [*report.rows, report.total] if r.uplift is not None]
    if not rows:
        return None
    fig = go.Figure()
    labels = _labels(rows, report)
    for small in (False, True):
        pick = [i for i, r in enumerate(rows) if bool(r.small) is small]
        if not pick:
            continue
        pts = [rows[i].uplift_points or 0.0 for i in pick]
        symbols = ["diamond" if rows[i] is report.total else "circle" for i in pick]
        fig.add_trace(go.Scatter(
            x=[labels[i] for i in pick], y=pts, mode="markers",
            name="too small to read" if small else "uplift, 95% interval",
            marker={"size": 11, "color": GREY if small else GREEN, "line": {"width": 2},
                        "symbol": [f"{x}-open" if small else x for x in symbols]},
            error_y={"type": "data", "symmetric": False, "color": GREY if small else GREEN, "thickness": 2, "width": 6,
                         "array": [(rows[i].uplift_high or 0.0) - p for i, p in zip(pick, pts, strict=True)],
                         "arrayminus": [p - (rows[i].uplift_low or 0.0) for i, p in zip(pick, pts, strict=True)]},
            customdata=[[rows[i].uplift_low, rows[i].uplift_high, _esc(rows[i].small_reason or "")]
                        for i in pick],
            hovertemplate="%{x}: %{y:+.1f} pt [%{customdata[0]:+.1f}, %{customdata[1]:+.1f}]"
                          "<br>%{customdata[2]}<extra></extra>",
        ))
    fig.add_hline(y=0, line={"color": "#555", "width": 1})
    fig.update_layout(**_layout(f"Uplift: {report.event} targeted − held out (points)",
                                yaxis={"title": "percentage points", "zeroline": False},
                                xaxis={"categoryorder": "array", "categoryarray": labels},
                                legend={"orientation": "h", "y": -0.3}))
    return fig


def trend_chart(summary: Summary, report: Report | None = None) -> go.Figure | None:
    series = [s for s in summary.series if s.points]
    if not series:
        return None
    use_rate = any(p.rate is not None for s in series for p in s.points)
    fig = go.Figure()
    for s in series:
        points = [p for p in s.points if p.rate is not None] if use_rate else s.points
        if not points:
            continue
        top = s.parent_code is None or s.parent_code not in {x.code for x in series}
        fig.add_trace(go.Scatter(
            x=[p.as_of.isoformat() for p in points],
            y=[100 * p.rate if use_rate and p.rate is not None else p.value for p in points],
            mode="lines+markers", name=_esc(s.area),
            line={"width": 4 if top else 2, "color": "#222" if top else None},
            marker={"symbol": ["circle-open" if p.implied else "circle" for p in points], "size": 8},
            customdata=[[p.value, "implied by a stated change" if p.implied else _esc(p.source)] for p in points],
            hovertemplate=f"{_esc(s.area)}<br>%{{x}}: " + ("%{y:.2f}%" if use_rate else "%{y:,}")
                          + " (%{customdata[0]:,})<br>%{customdata[1]}<extra></extra>",
        ))
    goal = summary.goal or (report.goal if report else None)
    if goal is not None and use_rate:
        fig.add_hline(y=100 * goal.share, line={"color": RED, "dash": "dash", "width": 2},
                      annotation_text=_esc(f"goal {100 * goal.share:g}%"), annotation_position="top left")
    fig.update_layout(**_layout(f"Trend across snapshots: {summary.metric}"
                                + (" as a share of population" if use_rate else ""),
                                yaxis={"title": "%" if use_rate else summary.metric,
                                           "ticksuffix": "%" if use_rate else "", "rangemode": "tozero"},
                                xaxis={"type": "date", "tickformat": "%Y-%m-%d"},
                                legend={"font": {"size": 10}}, colorway=qualitative.Plotly + qualitative.Set2))
    fig.update_layout(margin={"l": 60, "r": 20, "t": 30, "b": 50})
    return fig


# -- tables ------------------------------------------------------------------------------------

def _td(text: str, value: Any = None, cls: str = "", title: str = "", lang: str = "") -> str:
    attrs = ""
    if value is not None:
        attrs += f' data-value="{_esc(value)}"'
    if cls:
        attrs += f' class="{cls}"'
    if title:
        attrs += f' title="{_esc(title)}"'
    if lang:
        attrs += f' lang="{lang}"'
    return f"<td{attrs}>{_esc(text)}</td>"


def _uplift_cell(row: Row) -> str:
    u = row.uplift
    if u is None or row.uplift_points is None:
        return _td("—", "")
    text = f"{row.uplift_points:+.1f} [{u.low_points:+.1f}, {u.high_points:+.1f}]"
    return _td(text, f"{row.uplift_points:.6f}", "small" if u.small else "",
               f"too small to read: {u.reason}" if u.small else "95% interval, Newcombe's hybrid score method")


COLUMNS = (  # key, header, numeric
    ("area", "Area", False), ("population", "Population", True), ("audience", "Audience", True),
    ("held_out", "Held out", True), ("suppressed", "Suppressed", True), ("sent", "Sent", True),
    ("delivered", "Delivered", True), ("undelivered", "Undelivered", True), ("failed", "Failed", True),
    ("rate_delivered", "{event} after a message (of delivered)", True),
    ("rate_held_out", "{event}, held out (of held out)", True), ("uplift", "Uplift, points (95% interval)", True),
    ("installed_share", "{event} in the area (of population)", True), ("progress", "to goal", True),
)


def _row_cells(report: Report, row: Row) -> str:
    progress = report.progress(row)

    def opt(v: float | None) -> str:
        return "" if v is None else f"{v}"

    return "".join([
        _td(area_name(report, row), area_name(report, row), title=row.code, lang="vi"),
        _td(_num(row.population), opt(row.population)), _td(_num(row.audience), row.audience),
        _td(_num(row.held_out), row.held_out), _td(_num(row.suppressed), row.suppressed),
        _td(_num(row.sent), row.sent), _td(_num(row.delivered), row.delivered),
        _td(_num(row.undelivered), row.undelivered), _td(_num(row.failed), row.failed),
        _td(f"{_num(row.installed_delivered)} ({_pct(row.rate_delivered)})", opt(row.rate_delivered)),
        _td(f"{_num(row.installed_held_out)} ({_pct(row.rate_held_out)})", opt(row.rate_held_out)),
        _uplift_cell(row),
        _td(f"{_num(row.installed_total)} ({_pct(row.installed_share, 2)})", opt(row.installed_share)),
        _td(_pct(progress, 0), opt(progress)),
    ])


def report_table(report: Report) -> str:
    head = "".join(
        f'<th data-key="{key}" data-type="{"num" if numeric else "text"}" scope="col">'
        f"{_esc(label.format(event=report.event))}</th>"
        for key, label, numeric in COLUMNS
    )
    body = "\n".join(f'<tr data-code="{_esc(r.code)}">{_row_cells(report, r)}</tr>' for r in report.rows)
    foot = f"<tr>{_row_cells(report, report.total)}</tr>"
    return (f'<table id="report-table" class="sortable"><thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n{body}\n</tbody>\n<tfoot>{foot}</tfoot></table>")


def snapshots_table(summary: Summary) -> str:
    cols = (("area", "Area", False), ("as_of", "As of", False), ("value", summary.metric, True),
            ("rate", "of population", True), ("change", "change", True), ("per_day", "per day", True),
            ("projected", "goal at this pace", False), ("flags", "disagreements", False))
    head = "".join(f'<th data-key="{k}" data-type="{"num" if n else "text"}" scope="col">{_esc(h)}</th>'
                   for k, h, n in cols)
    lines = []
    for s in summary.series:
        p = s.latest
        when = rep.pace(s) or "—"
        change = "—" if p.change is None else f"{p.change:+,} in {p.days} d"
        lines.append(
            f'<tr data-code="{_esc(s.code)}">'
            + _td(s.area, s.area, title=s.code, lang="vi") + _td(p.as_of.isoformat(), p.as_of.isoformat())
            + _td(_num(p.value), p.value) + _td(_pct(p.rate, 2), "" if p.rate is None else p.rate)
            + _td(change, "" if p.change is None else p.change)
            + _td("—" if p.per_day is None else f"{p.per_day:,.0f}", "" if p.per_day is None else p.per_day)
            + _td(when, s.projected.isoformat() if s.projected else ("0" if s.reached else "~"),
                  "late" if s.on_track is False else "")
            + _td(rep.flags(summary, s.code))
            + "</tr>")
    return (f'<table id="snapshots-table" class="sortable"><thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n" + "\n".join(lines) + "\n</tbody></table>")


# -- the page ----------------------------------------------------------------------------------

SORT_JS = """
(function () {
  function cellKey(row, i) {
    var c = row.cells[i];
    return c.hasAttribute("data-value") ? c.getAttribute("data-value") : c.textContent;
  }
  function sortTable(table, i, dir) {
    var th = table.tHead.rows[0].cells[i], num = th.getAttribute("data-type") === "num";
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellKey(a, i), y = cellKey(b, i);
      if (x === "" || y === "") { return (x === "") - (y === ""); }          /* blanks last */
      if (num) { return (parseFloat(x) - parseFloat(y)) * dir; }
      return x.localeCompare(y, "vi") * dir;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      th.addEventListener("click", function () {
        var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
        if (th.getAttribute("aria-sort") === null && th.getAttribute("data-type") === "num") { dir = -1; }
        sortTable(table, i, dir);
      });
    });
  });
  var m = /sort=(-?)([a-z_]+)/.exec(window.location.hash);
  var table = document.getElementById("report-table");
  if (m && table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      if (th.getAttribute("data-key") === m[2]) { sortTable(table, i, m[1] === "-" ? -1 : 1); }
    });
  }
})();
"""

CSS = """
body { font-family: __FONT__; margin: 0; color: #1d2733; background: #f5f7fa; }
header { background: #123a5e; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 24px; }
header p { margin: 2px 0; opacity: .9; }
main { padding: 16px 28px 40px; }
.kpis { display: flex; flex-wrap: wrap; gap: 12px; margin: 4px 0 16px; }
.kpi { background: #fff; border-radius: 8px; padding: 10px 16px; box-shadow: 0 1px 3px rgba(0,0,0,.12); }
.kpi b { display: block; font-size: 22px; }
.kpi span { font-size: 12px; color: #5b6b7c; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap: 16px; }
.card { background: #fff; border-radius: 8px; padding: 8px; box-shadow: 0 1px 3px rgba(0,0,0,.12); min-width: 0; }
.card h3 { font-size: 15px; font-weight: 600; margin: 4px 8px 0; }
.scroll { overflow-x: auto; }
h2 { font-size: 18px; margin: 22px 0 8px; }
table { border-collapse: collapse; background: #fff; font-size: 12.5px; width: 100%;
        box-shadow: 0 1px 3px rgba(0,0,0,.12); }
th, td { padding: 4px 6px; border-bottom: 1px solid #e3e8ee; text-align: right; white-space: nowrap; }
th { white-space: normal; vertical-align: bottom; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #eef2f6; cursor: pointer; user-select: none; position: sticky; top: 0; }
thead th[aria-sort=ascending]::after { content: " ▲"; }
thead th[aria-sort=descending]::after { content: " ▼"; }
tfoot td { font-weight: bold; border-top: 2px solid #9aa5b1; }
td.small { color: #8a96a3; font-style: italic; }
td.late { color: __RED__; }
ul.notes li { margin: 4px 0; }
footer { color: #5b6b7c; font-size: 12px; margin-top: 24px; }
""".replace("__FONT__", FONT).replace("__RED__", RED)


def _kpis(report: Report) -> str:
    t = report.total
    items = [(_num(t.audience), "audience"), (_num(t.delivered), "delivered"),
             (f"{_num(t.installed_delivered)} ({_pct(t.rate_delivered)})", f"{report.event} after a message")]
    u = t.uplift
    if u is not None:
        items.append((f"{u.points:+.1f} pt", f"uplift, 95% [{u.low_points:+.1f}, {u.high_points:+.1f}]"
                      + (" — too small to read" if u.small else "")))
    items.append((_pct(t.installed_share, 2), f"{report.event} of population"))
    if report.goal is not None:
        items.append((_pct(report.progress(t), 0), "of the way to the goal"))
    return '<div class="kpis">' + "".join(f'<div class="kpi"><b>{_esc(v)}</b><span>{_esc(k)}</span></div>'
                                          for v, k in items) + "</div>"


def render_html(report: Report, snapshots_summary: Summary | None = None, *,
                generated_at: datetime | None = None) -> str:
    """The whole page as one string (UTF-8 when written)."""
    generated = (generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M %Z").strip()
    goal = report.goal
    goal_line = ""
    if goal is not None:
        by = f" by {goal.by.isoformat()}" if goal.by else ""
        goal_line = f"goal: {goal.share:.0%} of {goal.of} with '{goal.event}'{by}"
    figures: list[tuple[str, go.Figure]] = [("chart-rates", rates_chart(report, snapshots_summary)),
                                            ("chart-funnel", funnel_chart(report))]
    if snapshots_summary is not None and (trend := trend_chart(snapshots_summary, report)) is not None:
        figures.append(("chart-trend", trend))
    if (upl := uplift_chart(report)) is not None:
        figures.append(("chart-uplift", upl))
    divs = "\n".join(f'<section class="card"><h3>{_esc(fig.layout.meta["title"])}</h3>'
                     f'<div id="{fid}" class="chart"></div></section>' for fid, fig in figures)
    specs = json.dumps({fid: json.loads(fig.to_json()) for fid, fig in figures}, ensure_ascii=False)
    specs = specs.replace("<", "\\u003c")    # "<" only occurs in strings: nothing can end the block early
    notes = rep.notes(report, snapshots_summary)
    notes_html = ("<h2>Notes</h2><ul class=\"notes\">" + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>"
                  if notes else "")
    snap_html = ""
    if snapshots_summary is not None and snapshots_summary.series:
        snap_html = (f"<h2>Snapshots: {_esc(snapshots_summary.metric)} as others counted it</h2>"
                     f'<div class="scroll">{snapshots_table(snapshots_summary)}</div>')
    plotly_js = get_plotlyjs().replace("</script", "<\\/script")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="loa">
<title>{_esc(report.campaign)} — loa report</title>
<style>{CSS}</style>
</head>
<body>
<header>
<h1>{_esc(report.campaign)}: per {_esc(report.level or 'area')}</h1>
<p>{_esc(goal_line)}</p>
<p class="population">{_esc(population_caption(report))}</p>
<p>generated {_esc(generated)} from the ledger (every message) and the events</p>
</header>
<main>
{_kpis(report)}
<div class="grid">
{divs}
</div>
<h2>Per {_esc(report.level or 'area')} <small>(click a heading to sort)</small></h2>
<div class="scroll">{report_table(report)}</div>
{snap_html}
{notes_html}
<footer>Uplift intervals: Newcombe's hybrid score method (95%); "too small to read" when either group has
fewer than {MIN_PEOPLE} people or fewer than {MIN_EVENTS} responders or non-responders.
Charts: plotly.js, embedded.</footer>
</main>
<script>{plotly_js}</script>
<script type="application/json" id="loa-figures">{specs}</script>
<script>
(function () {{
  var specs = JSON.parse(document.getElementById("loa-figures").textContent);
  Object.keys(specs).forEach(function (id) {{
    Plotly.newPlot(id, specs[id].data, specs[id].layout,
                   {{displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"]}});
  }});
}})();
{SORT_JS}
</script>
</body>
</html>
"""


def render_report(engine: Engine, report: Report, *, generated_at: datetime | None = None) -> str:
    """The page for ``report``, with the snapshots of its event for its areas (and their parents
    and children) when there are any: what ``loa report --html`` writes."""
    return render_html(report, rep.snapshot_summary(engine, report), generated_at=generated_at)


__all__ = ["funnel_chart", "rates_chart", "render_html", "render_report", "report_table", "snapshots_table",
           "trend_chart", "uplift_chart"]
