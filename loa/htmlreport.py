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
from loa.errors import say
from loa.i18n import Language, language
from loa.report import Report, Row
from loa.snapshots import Summary
from loa.stats import MIN_EVENTS, MIN_PEOPLE

FONT = "'Noto Sans', 'DejaVu Sans', 'Segoe UI', Roboto, Arial, sans-serif"
BLUE, GREEN, GREY, RED, ORANGE = "#1f6fb2", "#2e8b57", "#9aa5b1", "#c0392b", "#e67e22"
CHART_HEIGHT = 360


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def N_(message: str) -> str:
    """Marks a string for the catalog; it is translated where it is shown."""
    return message


# Area levels as the page names them ("per district", "(not in a district)").
LEVELS = {"province": N_("province"), "district": N_("district"), "commune": N_("commune"), "ward": N_("ward"),
          "region": N_("region"), "": N_("area")}
# The events loa knows by name; any other is shown as it is called.
EVENTS = {"installed": N_("installed"), "clicked": N_("clicked"), "replied": N_("replied"),
          "opted_out": N_("opted out")}


def level_name(t: Language, level: str | None) -> str:
    return t.gettext(LEVELS[level or ""]) if (level or "") in LEVELS else str(level)


def event_name(t: Language, event: str) -> str:
    return t.gettext(EVENTS[event]) if event in EVENTS else event


def area_name(report: Report, row: Row, t: Language | None = None) -> str:
    """A row's area as the page names it: "(chưa rõ quận/huyện)" for "(not in a district)"."""
    t = t or language()
    if row.code == "" and row.area == rep.outside_label(report.level):
        return t.gettext("(not in a {level})").format(level=level_name(t, report.level))
    return t.gettext("(no area)") if row.code == "" and row.area == rep.NO_AREA else row.area


def _labels(rows: list[Row], report: Report, t: Language) -> list[str]:
    """Area names for chart axes: escaped (plotly reads a few HTML tags), made unique with the code."""
    names = [area_name(report, r, t) for r in rows]
    return [_esc(f"{n} ({r.code})" if names.count(n) > 1 and r.code else n) for n, r in zip(names, rows, strict=True)]


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _layout(t: Language, title: str, **kw: Any) -> dict[str, Any]:
    """A chart's layout; its title is the card's heading in the page (kept in ``meta``)."""
    return dict(meta={"title": title}, template="plotly_white", font={"family": FONT, "size": 12},
                separators=t.separators, height=CHART_HEIGHT, margin={"l": 60, "r": 20, "t": 30, "b": 90}, **kw)


# -- charts -----------------------------------------------------------------------------------

def _goal_base(report: Report, row: Row) -> float | None:
    if report.goal is not None and report.goal.of == "audience":
        return row.installed_total / row.audience if row.audience else None
    return row.installed_share


def rates_chart(report: Report, summary: Summary | None = None, t: Language | None = None) -> go.Figure:
    """Per area: the share with the goal's event among the known subscribers; beside it, when a
    snapshot counts the same area and metric, the share as that count has it (everyone, not only
    the subscribers loa knows)."""
    t = t or language()
    _ = t.gettext
    rows = report.rows
    labels = _labels(rows, report, t)
    of = report.goal.of if report.goal else "population"
    event = event_name(t, report.event)
    values = [_goal_base(report, r) for r in rows]
    fig = go.Figure(go.Bar(
        x=labels, y=[None if v is None else 100 * v for v in values],
        name=_esc(_("{event}, loa's ledger").format(event=event)),
        marker_color=BLUE, text=[t.percent(v, 2) if v is not None else "" for v in values], textposition="outside",
        hovertemplate="%{x}: %{y:.2f}%<extra>" + _esc(_("ledger")) + "</extra>",
    ))
    shown = [100 * v for v in values if v is not None]
    counted = {}
    if summary is not None and summary.metric == report.event and of == "population":
        counted = {s.code: s.latest for s in summary.series if s.latest.rate is not None}
    if any(r.code in counted for r in rows):
        points = [counted.get(r.code) for r in rows]
        dates = sorted({p.as_of for p in points if p is not None})
        fig.add_trace(go.Bar(
            x=labels, y=[None if p is None or p.rate is None else 100 * p.rate for p in points],
            name=_esc(_("{metric}, snapshot of {dates}").format(
                metric=event_name(t, summary.metric), dates=" – ".join(dict.fromkeys([t.date(dates[0]),
                                                                                      t.date(dates[-1])])))
                      if summary else ""),
            marker_color=ORANGE, text=[t.percent(p.rate, 1) if p is not None else "" for p in points],
            textposition="outside", customdata=[[p.value if p else None, t.date(p.as_of) if p else ""]
                                                for p in points],
            hovertemplate="%{x}: %{y:.2f}% (%{customdata[0]:,} " + _esc(_("on")) + " %{customdata[1]})<extra>"
                          + _esc(_("snapshot")) + "</extra>",
        ))
        shown += [100 * p.rate for p in points if p is not None and p.rate is not None]
    top = max(shown, default=0.0)
    if report.goal is not None:
        goal = 100 * report.goal.share
        label = (_("goal {share} by {date}").format(share=t.percent(report.goal.share, 0), date=t.date(report.goal.by))
                 if report.goal.by else _("goal {share}").format(share=t.percent(report.goal.share, 0)))
        fig.add_hline(y=goal, line={"color": RED, "dash": "dash", "width": 2},
                      annotation_text=_esc(label), annotation_position="top left")
        top = max(top, goal)
    title = (_("{event} as a share of the audience, per {level}") if of == "audience"
             else _("{event} as a share of the population, per {level}"))
    fig.update_layout(**_layout(t, _capital(title.format(event=event, level=level_name(t, report.level))),
                                yaxis={"title": "%", "range": [0, top * 1.15 or 1], "ticksuffix": "%"},
                                barmode="group", showlegend=len(fig.data) > 1,
                                uniformtext={"minsize": 9, "mode": "hide"},
                                legend={"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom"}))
    return fig


def funnel_chart(report: Report, t: Language | None = None) -> go.Figure:
    t = t or language()
    _ = t.gettext
    total = report.total
    stages = [_("audience"), _("sent"), _("delivered"),
              _("{event} after a message").format(event=event_name(t, report.event))]
    values = [total.audience, total.sent, total.delivered, total.installed_delivered]
    fig = go.Figure(go.Funnel(
        y=[_esc(s) for s in stages], x=values, texttemplate="%{value:,}<br>%{percentInitial:.1%}",
        marker={"color": [GREY, BLUE, BLUE, GREEN]}, hovertemplate="%{y}: %{x:,}<extra></extra>",
    ))
    fig.update_layout(**_layout(t, _("From audience to response (everyone in the report)")))
    fig.update_layout(margin={"l": 170, "r": 20, "t": 30, "b": 40})
    return fig


def uplift_chart(report: Report, t: Language | None = None) -> go.Figure | None:
    t = t or language()
    _ = t.gettext
    rows = [r for r in [*report.rows, report.total] if r.uplift is not None]
    if not rows:
        return None
    fig = go.Figure()
    labels = _labels(rows, report, t)
    for small in (False, True):
        pick = [i for i, r in enumerate(rows) if bool(r.small) is small]
        if not pick:
            continue
        pts = [rows[i].uplift_points or 0.0 for i in pick]
        symbols = ["diamond" if rows[i] is report.total else "circle" for i in pick]
        fig.add_trace(go.Scatter(
            x=[labels[i] for i in pick], y=pts, mode="markers",
            name=_("too small to read") if small else _("uplift, 95% interval"),
            marker={"size": 11, "color": GREY if small else GREEN, "line": {"width": 2},
                        "symbol": [f"{x}-open" if small else x for x in symbols]},
            error_y={"type": "data", "symmetric": False, "color": GREY if small else GREEN, "thickness": 2, "width": 6,
                         "array": [(rows[i].uplift_high or 0.0) - p for i, p in zip(pick, pts, strict=True)],
                         "arrayminus": [p - (rows[i].uplift_low or 0.0) for i, p in zip(pick, pts, strict=True)]},
            customdata=[[rows[i].uplift_low, rows[i].uplift_high, _esc(rows[i].small_reason or "")]
                        for i in pick],
            hovertemplate="%{x}: %{y:+.1f} " + _esc(_("pt")) + " [%{customdata[0]:+.1f}" + t.list_separator
                          + "%{customdata[1]:+.1f}]"
                          "<br>%{customdata[2]}<extra></extra>",
        ))
    fig.add_hline(y=0, line={"color": "#555", "width": 1})
    fig.update_layout(**_layout(t, _("Uplift: {event}, targeted − held out (points)").format(
                                    event=event_name(t, report.event)),
                                yaxis={"title": _("percentage points"), "zeroline": False},
                                xaxis={"categoryorder": "array", "categoryarray": labels},
                                legend={"orientation": "h", "y": -0.3}))
    return fig


def trend_chart(summary: Summary, report: Report | None = None, t: Language | None = None) -> go.Figure | None:
    t = t or language()
    _ = t.gettext
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
            customdata=[[p.value, _("implied by a stated change") if p.implied else _esc(p.source)] for p in points],
            hovertemplate=f"{_esc(s.area)}<br>%{{x|{t.d3_date}}}: " + ("%{y:.2f}%" if use_rate else "%{y:,}")
                          + " (%{customdata[0]:,})<br>%{customdata[1]}<extra></extra>",
        ))
    goal = summary.goal or (report.goal if report else None)
    if goal is not None and use_rate:
        fig.add_hline(y=100 * goal.share, line={"color": RED, "dash": "dash", "width": 2},
                      annotation_text=_esc(_("goal {share}").format(share=t.percent(goal.share, 0))),
                      annotation_position="top left")
    metric = event_name(t, summary.metric)
    title = (_("Trend across snapshots: {metric} as a share of the population") if use_rate
             else _("Trend across snapshots: {metric}")).format(metric=metric)
    fig.update_layout(**_layout(t, title,
                                yaxis={"title": "%" if use_rate else metric,
                                           "ticksuffix": "%" if use_rate else "", "rangemode": "tozero"},
                                xaxis={"type": "date", "tickformat": t.d3_date},
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


def _uplift_cell(row: Row, t: Language) -> str:
    u = row.uplift
    if u is None or row.uplift_points is None:
        return _td("—", "")
    text = f"{t.signed(row.uplift_points)} [{t.signed(u.low_points)}{t.list_separator}{t.signed(u.high_points)}]"
    return _td(text, f"{row.uplift_points:.6f}", "small" if u.small else "",
               t.gettext("too small to read: {reason}").format(reason=u.reason) if u.small
               else t.gettext("95% interval, Newcombe's hybrid score method"))


COLUMNS = (  # key, header, numeric
    ("area", N_("Area"), False), ("population", N_("Population"), True), ("audience", N_("Audience"), True),
    ("held_out", N_("Held out"), True), ("suppressed", N_("Suppressed"), True), ("sent", N_("Sent"), True),
    ("delivered", N_("Delivered"), True), ("undelivered", N_("Undelivered"), True), ("failed", N_("Failed"), True),
    ("rate_delivered", N_("{event} after a message (of delivered)"), True),
    ("rate_held_out", N_("{event}, held out (of held out)"), True),
    ("uplift", N_("Uplift, points (95% interval)"), True),
    ("installed_share", N_("{event} in the area (of population)"), True), ("progress", N_("to goal"), True),
    ("spent_vnd", N_("Spent"), True),
)


def _row_cells(report: Report, row: Row, t: Language) -> str:
    progress = report.progress(row)

    def opt(v: float | None) -> str:
        return "" if v is None else f"{v}"

    def share(n: int, rate: float | None, digits: int = 1) -> str:
        return f"{t.number(n)} ({t.percent(rate, digits)})"

    return "".join([
        _td(area_name(report, row, t), area_name(report, row, t), title=row.code, lang="vi"),
        _td(t.number(row.population), opt(row.population)), _td(t.number(row.audience), row.audience),
        _td(t.number(row.held_out), row.held_out), _td(t.number(row.suppressed), row.suppressed),
        _td(t.number(row.sent), row.sent), _td(t.number(row.delivered), row.delivered),
        _td(t.number(row.undelivered), row.undelivered), _td(t.number(row.failed), row.failed),
        _td(share(row.installed_delivered, row.rate_delivered), opt(row.rate_delivered)),
        _td(share(row.installed_held_out, row.rate_held_out), opt(row.rate_held_out)),
        _uplift_cell(row, t),
        _td(share(row.installed_total, row.installed_share, 2), opt(row.installed_share)),
        _td(t.percent(progress, 0), opt(progress)),
        _td(t.money(row.spent_vnd), row.spent_vnd),
    ])


def report_table(report: Report, t: Language | None = None) -> str:
    t = t or language()
    event = event_name(t, report.event)
    head = "".join(
        f'<th data-key="{key}" data-type="{"num" if numeric else "text"}" scope="col">'
        f"{_esc(t.gettext(label).format(event=event))}</th>"
        for key, label, numeric in COLUMNS
    )
    body = "\n".join(f'<tr data-code="{_esc(r.code)}">{_row_cells(report, r, t)}</tr>' for r in report.rows)
    foot = f"<tr>{_row_cells(report, report.total, t)}</tr>"
    return (f'<table id="report-table" class="sortable"><thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n{body}\n</tbody>\n<tfoot>{foot}</tfoot></table>")


def _pace(series: Any, t: Language) -> str:
    """When the goal is reached at the pace of the last two snapshots: "30/09/2020 (chậm)"."""
    _ = t.gettext
    if series.reached:
        return _("reached")
    if series.projected is not None:
        return t.date(series.projected) + ("" if series.on_track is None else
                                           " (" + (_("on track") if series.on_track else _("late")) + ")")
    return _("not growing") if len(series.points) >= 2 else ""


def snapshots_table(summary: Summary, t: Language | None = None) -> str:
    t = t or language()
    _ = t.gettext
    cols = (("area", _("Area"), False), ("as_of", _("As of"), False), ("value", event_name(t, summary.metric), True),
            ("rate", _("of population"), True), ("change", _("change"), True), ("per_day", _("per day"), True),
            ("projected", _("goal at this pace"), False), ("flags", _("disagreements"), False))
    head = "".join(f'<th data-key="{k}" data-type="{"num" if n else "text"}" scope="col">{_esc(h)}</th>'
                   for k, h, n in cols)
    lines = []
    for s in summary.series:
        p = s.latest
        when = _pace(s, t) or "—"
        change = "—" if p.change is None else _("{change} in {days} d").format(change=t.signed(p.change, 0),
                                                                                days=p.days)
        lines.append(
            f'<tr data-code="{_esc(s.code)}">'
            + _td(s.area, s.area, title=s.code, lang="vi") + _td(t.date(p.as_of), p.as_of.isoformat())
            + _td(t.number(p.value), p.value) + _td(t.percent(p.rate, 2), "" if p.rate is None else p.rate)
            + _td(change, "" if p.change is None else p.change)
            + _td(t.number(p.per_day), "" if p.per_day is None else p.per_day)
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


def _kpis(report: Report, t: Language) -> str:
    _ = t.gettext
    total = report.total
    event = event_name(t, report.event)
    items = [(t.number(total.audience), _("audience")), (t.number(total.delivered), _("delivered")),
             (f"{t.number(total.installed_delivered)} ({t.percent(total.rate_delivered)})",
              _("{event} after a message").format(event=event))]
    u = total.uplift
    if u is not None:
        items.append((f"{t.signed(u.points)} " + _("pt"),
                      _("uplift, 95% interval") + f" [{t.signed(u.low_points)}{t.list_separator}{t.signed(u.high_points)}]"
                      + (" — " + _("too small to read") if u.small else "")))
    items.append((t.percent(total.installed_share, 2), _("{event} of population").format(event=event)))
    if report.goal is not None:
        items.append((t.percent(report.progress(total), 0), _("of the way to the goal")))
    items.append((t.money(total.spent_vnd), _("spent on messages")))
    return '<div class="kpis">' + "".join(f'<div class="kpi"><b>{_esc(v)}</b><span>{_esc(k)}</span></div>'
                                          for v, k in items) + "</div>"


def _goal_line(report: Report, t: Language) -> str:
    goal = report.goal
    if goal is None:
        return ""
    _ = t.gettext
    whom = _("of the audience") if goal.of == "audience" else _("of the population")
    line = _("goal: {share} {whom} with “{event}”").format(share=t.percent(goal.share, 0), whom=whom,
                                                          event=event_name(t, goal.event))
    return line + (" " + _("by {date}").format(date=t.date(goal.by)) if goal.by else "")


def _population_caption(report: Report, t: Language) -> str:
    """Which populations the shares use (as :func:`loa.report.population_caption` says it)."""
    _ = t.gettext
    dates = sorted({r.population_as_of for r in report.rows if r.population_as_of})
    if not dates:
        return ""
    when = t.date(dates[0]) if len(dates) == 1 else _("{first} to {last}, by area").format(
        first=t.date(dates[0]), last=t.date(dates[-1]))
    undated = sum(1 for r in report.rows if r.population is not None and r.population_as_of is None)
    caption = _("population as of {when}").format(when=when)
    if undated:
        caption += " " + t.ngettext("({n} undated)", "({n} undated)", undated).format(n=undated)
    return caption + ": " + _("the figures in force on {day}, the campaign's first run").format(
        day=t.date(report.population_on))


def render_html(report: Report, snapshots_summary: Summary | None = None, *,
                generated_at: datetime | None = None, lang: str | None = None) -> str:
    """The whole page as one string (UTF-8 when written), in ``lang`` (Vietnamese by default)."""
    t = language(lang)
    _ = t.gettext
    when = generated_at or datetime.now(UTC)
    generated = f"{t.date(when.date())} {when:%H:%M %Z}".strip()
    level = level_name(t, report.level)
    figures: list[tuple[str, go.Figure]] = [("chart-rates", rates_chart(report, snapshots_summary, t)),
                                            ("chart-funnel", funnel_chart(report, t))]
    if snapshots_summary is not None and (trend := trend_chart(snapshots_summary, report, t)) is not None:
        figures.append(("chart-trend", trend))
    if (upl := uplift_chart(report, t)) is not None:
        figures.append(("chart-uplift", upl))
    divs = "\n".join(f'<section class="card"><h3>{_esc(fig.layout.meta["title"])}</h3>'
                     f'<div id="{fid}" class="chart"></div></section>' for fid, fig in figures)
    specs = json.dumps({fid: json.loads(fig.to_json()) for fid, fig in figures}, ensure_ascii=False)
    specs = specs.replace("<", "\\u003c")    # "<" only occurs in strings: nothing can end the block early
    notes = [say(n, t) for n in rep.notes(report, snapshots_summary)]   # in the page's language
    notes_heading = _("Notes")
    notes_html = (f"<h2>{_esc(notes_heading)}</h2><ul class=\"notes\">" + "".join(f"<li>{_esc(n)}</li>" for n in notes)
                  + "</ul>" if notes else "")
    snap_html = ""
    if snapshots_summary is not None and snapshots_summary.series:
        heading = _("Snapshots: {metric} as others counted it").format(
            metric=event_name(t, snapshots_summary.metric))
        snap_html = (f"<h2>{_esc(heading)}</h2>"
                     f'<div class="scroll">{snapshots_table(snapshots_summary, t)}</div>')
    footer = _("Uplift intervals: Newcombe's hybrid score method (95%); “too small to read” when either group has "
               "fewer than {people} people or fewer than {events} responders or non-responders. "
               "Charts: plotly.js, embedded.").format(people=MIN_PEOPLE, events=MIN_EVENTS)
    title = _("loa report")
    heading = _("{campaign}: per {level}").format(campaign=report.campaign, level=level)
    provenance = _("generated {when} from the ledger (every message) and the events").format(when=generated)
    table_heading, sort_hint = _("Per {level}").format(level=level), _("click a heading to sort")
    plotly_js = get_plotlyjs().replace("</script", "<\\/script")
    return f"""<!DOCTYPE html>
<html lang="{t.code}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="loa">
<title>{_esc(report.campaign)} — {_esc(title)}</title>
<style>{CSS}</style>
</head>
<body>
<header>
<h1>{_esc(heading)}</h1>
<p>{_esc(_goal_line(report, t))}</p>
<p class="population">{_esc(_population_caption(report, t))}</p>
<p>{_esc(provenance)}</p>
</header>
<main>
{_kpis(report, t)}
<div class="grid">
{divs}
</div>
<h2>{_esc(table_heading)} <small>({_esc(sort_hint)})</small></h2>
<div class="scroll">{report_table(report, t)}</div>
{snap_html}
{notes_html}
<footer>{_esc(footer)}</footer>
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


def render_report(engine: Engine, report: Report, *, generated_at: datetime | None = None,
                  lang: str | None = None) -> str:
    """The page for ``report``, with the snapshots of its event for its areas (and their parents
    and children) when there are any: what ``loa report --html`` writes."""
    return render_html(report, rep.snapshot_summary(engine, report), generated_at=generated_at, lang=lang)


__all__ = ["funnel_chart", "rates_chart", "render_html", "render_report", "report_table", "snapshots_table",
           "trend_chart", "uplift_chart"]
