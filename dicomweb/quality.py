"""The quality report (archive.guideline.quality), for quality-control admins.

- ``GET /api/quality``: as JSON.
- ``GET /quality``: as an HTML page with a weekly pass-rate chart per hospital
  and per exam item, and a small form of the same filters.

Both take ``hospital`` (id), ``item`` (code), ``rule_set``, ``weeks`` (trend
length, 1 to 104, default 12) and ``since`` / ``until`` (study dates as
YYYYMMDD, inclusive); an empty value means "all", as the page's form sends it.
The page is self-contained, with no scripts, stylesheets or fonts fetched from
elsewhere: hospital networks are often closed.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import asdict, replace
from html import escape
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from archive.config import Config
from archive.guideline.quality import (
    MAX_WEEKS,
    Filters,
    HospitalQuality,
    ItemQuality,
    Reason,
    Report,
    Week,
    quality,
)
from dicomweb.errors import DicomWebError
from dicomweb.resources import caller

PARAMETERS = ("hospital", "item", "rule_set", "weeks", "since", "until")
HOSPITAL_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # as archive.config.Hospital.id
CODE = re.compile(r"\S{1,64}")  # item codes and rule set ids: the index keeps 64 characters
WEEKS = re.compile(r"[0-9]{1,3}")
DATE = re.compile(r"[0-9]{8}")


async def report(request: Request) -> Response:
    """``GET /api/quality``: the quality report as JSON; 400 names a bad parameter."""
    filters, result = await _report(request)
    return JSONResponse({"filters": _filters_json(filters), **asdict(result)})


async def page(request: Request) -> Response:
    """``GET /quality``: the quality report as an HTML page; 400 (JSON) names a bad parameter."""
    filters, result = await _report(request)
    return HTMLResponse(_page(request.app.state.config, filters, result))


def parse_filters(params: QueryParams) -> Filters:
    """The report's filters from query parameters.

    Raises
    ------
    DicomWebError
        400 naming the parameter that is unknown, repeated or malformed.
    """
    for name in params:
        if name not in PARAMETERS:
            raise DicomWebError(400, "unknown parameter; expected " + ", ".join(PARAMETERS), name)
        if len(params.getlist(name)) > 1:
            raise DicomWebError(400, "given more than once", name)
    given = {name: params[name].strip() for name in params if params[name].strip()}
    for name, pattern, what in (("hospital", HOSPITAL_ID, "a hospital id"),
                                ("item", CODE, "an exam item code"), ("rule_set", CODE, "a rule set id")):
        if name in given and not pattern.fullmatch(given[name]):
            raise DicomWebError(400, f"must be {what} of 1 to 64 characters without spaces", name)
    weeks = given.get("weeks", "12")
    if not WEEKS.fullmatch(weeks) or not 1 <= int(weeks) <= MAX_WEEKS:
        raise DicomWebError(400, f"must be a whole number of weeks from 1 to {MAX_WEEKS}", "weeks")
    since, until = _date(given, "since"), _date(given, "until")
    if since and until and since > until:
        raise DicomWebError(400, "must not be after until", "since")
    return Filters(hospital=given.get("hospital"), item=given.get("item"), rule_set=given.get("rule_set"),
                   since=since, until=until, weeks=int(weeks))


async def _report(request: Request) -> tuple[Filters, Report]:
    state = request.app.state
    filters = parse_filters(request.query_params)
    who = caller(request)
    if not who.sees_everything:
        # A hospital sees its own figures; quality-control centres use admin tokens.
        if filters.hospital not in (None, who.hospital_id):
            raise DicomWebError(400, "a hospital sees its own figures; only admins may name another",
                                "hospital")
        filters = replace(filters, hospital=who.hospital_id)
    today = datetime.date.today()

    def count() -> Report:
        with state.db.reading() as conn:
            return quality(conn, state.config, filters, today)

    return filters, await run_in_threadpool(count)


def _date(given: dict[str, str], name: str) -> datetime.date | None:
    if name not in given:
        return None
    try:
        if DATE.fullmatch(given[name]):
            return datetime.datetime.strptime(given[name], "%Y%m%d").date()
    except ValueError:
        pass  # eight digits, but no such day
    raise DicomWebError(400, "must be a date as YYYYMMDD (a DICOM DA value)", name)


def _filters_json(filters: Filters) -> dict[str, object]:
    return {
        "hospital": filters.hospital, "item": filters.item, "rule_set": filters.rule_set,
        "since": _dicom_date(filters.since), "until": _dicom_date(filters.until), "weeks": filters.weeks,
    }


def _dicom_date(day: datetime.date | None) -> str | None:
    return day.strftime("%Y%m%d") if day else None


# The page. Every value that comes from the index, the configuration or the
# request goes through escape(), attributes included.

STYLE = """
body{margin:0;background:#f4f6f8;color:#1d2733;
 font:14px/1.45 system-ui,-apple-system,"Segoe UI","PingFang SC","Microsoft YaHei",
  "Noto Sans CJK SC",sans-serif}
header{background:#1e3a5c;color:#fff;padding:14px 28px}
header h1{margin:0;font-size:20px;font-weight:600}
header p{margin:2px 0 0;color:#c5d3e3;font-size:13px}
header a{color:#c5d3e3;text-decoration:underline}
main{max-width:1180px;margin:0 auto;padding:8px 28px 40px}
form{display:flex;flex-wrap:wrap;gap:10px 18px;align-items:flex-end;background:#fff;
 border:1px solid #dbe1e8;border-radius:6px;padding:12px 16px;margin:16px 0}
label{display:flex;flex-direction:column;font-size:12px;color:#52606d;gap:3px}
input,select{font:inherit;padding:4px 6px;border:1px solid #b9c4cf;border-radius:4px;background:#fff}
input.date{width:7.5em}input.weeks{width:4em}
button{font:inherit;padding:5px 16px;border:0;border-radius:4px;background:#1e5fa8;color:#fff;cursor:pointer}
.summary{display:flex;flex-wrap:wrap;gap:12px;margin:8px 0 4px}
.figure{background:#fff;border:1px solid #dbe1e8;border-radius:6px;padding:8px 16px;min-width:120px}
.figure b{display:block;font-size:22px;font-weight:600}
.figure span{font-size:12px;color:#52606d}
section{background:#fff;border:1px solid #dbe1e8;border-radius:6px;padding:14px 20px;margin:18px 0}
section h2{margin:0;font-size:17px}
section h2 small{font-weight:normal;color:#52606d;font-size:13px;margin-left:8px}
.totals{color:#52606d;margin:2px 0 8px}
table{border-collapse:collapse;width:100%;margin-top:8px}
th{font-size:12px;font-weight:600;color:#52606d;text-align:left;border-bottom:2px solid #dbe1e8;
 padding:6px 8px}
td{border-bottom:1px solid #edf0f3;padding:7px 8px;vertical-align:top}
table.glance td{vertical-align:middle}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;color:#52606d}
.en{color:#52606d;font-size:12px}
.rate{display:inline-block;min-width:4.2em;text-align:right;padding:1px 6px;border-radius:3px;font-weight:600}
.good{background:#e1f3e7;color:#136c3a}.fair{background:#fcf1d6;color:#855600}
.poor{background:#fbe2df;color:#a1271c}
.none{color:#8795a1}
ol{margin:0;padding-left:18px}ol li{margin-bottom:2px}
a{color:#1e5fa8;text-decoration:none}a:hover{text-decoration:underline}
.share{color:#52606d;font-size:12px;white-space:nowrap}
.empty{background:#fff;border:1px dashed #b9c4cf;border-radius:6px;padding:24px;text-align:center;
 color:#52606d}
svg text{font-family:inherit}
"""

# Colour bands for reading the page at a glance; they are not guideline thresholds.
BANDS = ((0.9, "good", "#2e9d5b"), (0.7, "fair", "#d99a15"), (0.0, "poor", "#d2473a"))


def _page(config: Config, filters: Filters, result: Report) -> str:
    window = f"{result.weeks[0]} – {result.weeks[-1]}" if len(result.weeks) > 1 else result.weeks[0]
    # Relative, so that it also works behind a reverse proxy that serves Huren below a path.
    json_link = "api/quality?" + urlencode(_filters_query(filters))
    parts = [
        '<!DOCTYPE html><html lang="zh-CN"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        "<title>影像质量 · Image quality</title><style>", STYLE, "</style></head><body>",
        "<header><h1>影像资料共享质量 · Image sharing quality</h1>",
        (f"<p>按检查日期统计 · by study date · 趋势 trend {escape(window)} · "
         f'<a href="{escape(json_link)}">JSON</a></p></header><main>'),
        _form(config, filters),
        _summary(result),
    ]
    if len(result.hospitals) > 1:
        parts.append(_overview(result.hospitals))
    parts += [_hospital(hospital) for hospital in result.hospitals]
    if not result.hospitals:
        parts.append('<p class="empty">没有符合条件的判定结果 · No judged studies match these filters.</p>')
    parts.append("</main></body></html>")
    return "".join(parts)


def _filters_query(filters: Filters) -> dict[str, str]:
    values = {**_filters_json(filters), "weeks": str(filters.weeks)}
    return {name: value for name, value in values.items() if value is not None}


def _form(config: Config, filters: Filters) -> str:
    hospitals = [(h.id, h.name) for h in config.hospitals]
    rule_sets = [(rs.id, rs.id) for rs in config.rule_sets]
    items = [(item.code, f"{item.name.zh} · {item.code}") for rs in config.rule_sets for item in rs.items]
    return "".join([
        '<form method="get" action="">',
        _choice("hospital", "医院 Hospital", filters.hospital, hospitals),
        _choice("rule_set", "规则集 Rule set", filters.rule_set, rule_sets),
        _choice("item", "检查项目 Exam item", filters.item, items),
        _text("since", "起 Since", _dicom_date(filters.since), 'class="date" placeholder="YYYYMMDD" '
              'pattern="[0-9]{8}"'),
        _text("until", "止 Until", _dicom_date(filters.until), 'class="date" placeholder="YYYYMMDD" '
              'pattern="[0-9]{8}"'),
        _text("weeks", "周数 Weeks", str(filters.weeks),
              f'class="weeks" type="number" min="1" max="{MAX_WEEKS}"'),
        "<button>筛选 Apply</button></form>",
    ])


def _choice(name: str, label: str, current: str | None, options: list[tuple[str, str]]) -> str:
    """A select of the configured values, or a text field when none are configured."""
    if not options:
        return _text(name, label, current, "")
    if current is not None and current not in (value for value, _ in options):
        options = [*options, (current, current)]  # e.g. a hospital no longer configured
    rendered = ['<option value="">全部 All</option>']
    rendered += [f'<option value="{escape(value)}"{" selected" if value == current else ""}>'
                 f"{escape(text)}</option>" for value, text in options]
    return f'<label>{escape(label)}<select name="{escape(name)}">{"".join(rendered)}</select></label>'


def _text(name: str, label: str, value: str | None, attributes: str) -> str:
    return (f'<label>{escape(label)}<input name="{escape(name)}" value="{escape(value or "")}" '
            f"{attributes}></label>")


def _summary(result: Report) -> str:
    totals = result.totals
    figures = [
        (f"{len(result.hospitals):,}", "医院 hospitals"),
        (f"{totals.judged:,}", "判定 judged"),
        (_percent(totals.pass_rate), "通过率 pass rate"),
        (f"{totals.failed:,}", "未通过 failed"),
        (f"{totals.marked:,}", "互认标识 marked"),
    ]
    return '<div class="summary">' + "".join(
        f'<div class="figure"><b>{escape(value)}</b><span>{escape(label)}</span></div>'
        for value, label in figures
    ) + "</div>"


def _overview(hospitals: list[HospitalQuality]) -> str:
    """One row per hospital, linking to its section: where a QC centre starts reading."""
    rows = "".join(
        f'<tr><td><a href="#{escape(_anchor(h))}">{escape(_title(h))}</a></td>'
        f'<td class="n">{h.judged:,}</td><td class="n">{_rate(h.pass_rate)}</td>'
        f'<td class="n">{h.marked:,}</td><td>{_chart(h.trend, 240, 34, axis=False)}</td></tr>'
        for h in hospitals
    )
    return (
        "<section><h2>各医院概览<small>Hospitals at a glance</small></h2>"
        '<table class="glance"><thead><tr><th>医院 Hospital</th><th class="n">判定 Judged</th>'
        '<th class="n">通过率 Pass rate</th><th class="n">标识 Marked</th><th>每周通过率 Weekly</th>'
        f"</tr></thead><tbody>{rows}</tbody></table></section>"
    )


def _title(hospital: HospitalQuality) -> str:
    return hospital.hospital.name or hospital.hospital.id or "未知医院 · no known hospital"


def _anchor(hospital: HospitalQuality) -> str:
    return f"hospital-{hospital.hospital.id}" if hospital.hospital.id else "hospital-unknown"


def _hospital(hospital: HospitalQuality) -> str:
    who = hospital.hospital
    known = (who.id if who.name else None, who.region, who.level)
    details = " · ".join(escape(part) for part in known if part)
    rows = "".join(_item_row(item) for item in hospital.items)
    return (
        f'<section id="{escape(_anchor(hospital))}">'
        f"<h2>{escape(_title(hospital))}<small>{details}</small></h2>"
        f'<p class="totals">判定 {hospital.judged:,} judged · 通过 {hospital.passed:,} passed · '
        f"通过率 pass rate {_rate(hospital.pass_rate)} · 互认标识 {hospital.marked:,} marked</p>"
        f"{_chart(hospital.trend, 1100, 170, axis=True)}"
        '<table><thead><tr><th>检查项目 Exam item</th><th class="n">判定 Judged</th>'
        '<th class="n">通过 Passed</th><th class="n">通过率 Pass rate</th><th class="n">标识 Marked</th>'
        "<th>主要不合格原因 Top failure reasons</th><th>每周通过率 Weekly</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></section>"
    )


def _item_row(item: ItemQuality) -> str:
    if item.item.name:
        name = (f"{escape(item.item.name['zh'])}<br><span class=\"en\">{escape(item.item.name['en'])}</span>"
                f'<br><span class="code">{escape(item.item.code)}</span>')
    else:
        name = f'<span class="code">{escape(item.item.code)}</span>'
    reasons = (f"<ol>{''.join(_reason(reason) for reason in item.reasons)}</ol>" if item.reasons
               else '<span class="none">–</span>')
    return (
        f'<tr><td>{name}</td><td class="n">{item.judged:,}</td><td class="n">{item.passed:,}</td>'
        f'<td class="n">{_rate(item.pass_rate)}</td><td class="n">{item.marked:,}</td>'
        f"<td>{reasons}</td><td>{_chart(item.trend, 150, 34, axis=False)}</td></tr>"
    )


def _reason(reason: Reason) -> str:
    """One line: the message (or, without one, the rule id), the English and the rule id on hover."""
    share = f'<span class="share">{reason.count:,} · {_percent(reason.share)}</span>'
    if reason.message is None:
        return f'<li><span class="code">{escape(reason.rule)}</span> {share}</li>'
    hover = f"{reason.message['en']} ({reason.rule})"
    return f'<li title="{escape(hover)}">{escape(reason.message["zh"])} {share}</li>'


def _chart(trend: list[Week], width: int, height: int, axis: bool) -> str:
    """Weekly pass rate as an inline SVG bar chart; a week without studies shows a grey dash.

    With `axis`, the chart has percentage gridlines, week labels and each
    week's number of judged items above its bar; without, it is a sparkline.
    """
    left, right, top, bottom = (40, 6, 16, 20) if axis else (1, 1, 2, 2)
    plot_w, plot_h = width - left - right, height - top - bottom
    slot = plot_w / len(trend)
    bar = max(slot * 0.72, 1.0)
    base = top + plot_h
    shapes = []
    if axis:
        for fraction in (0.0, 0.5, 1.0):
            y = base - fraction * plot_h
            shapes.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" '
                          f'stroke="{"#b9c4cf" if fraction == 0 else "#e6eaee"}"/>'
                          f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
                          f'fill="#52606d">{fraction:.0%}</text>')
    else:
        shapes.append(f'<line x1="0" y1="{base}" x2="{width}" y2="{base}" stroke="#d5dbe1"/>')
    every = max(1, round(len(trend) / 13))  # at most about 13 week labels
    for n, week in enumerate(trend):
        x = left + n * slot + (slot - bar) / 2
        middle = x + bar / 2
        if week.pass_rate is None:
            tip = f"{week.week}: 无判定 · no studies"
            shapes.append(f'<g><title>{escape(tip)}</title><rect x="{x:.1f}" y="{base - 2:.1f}" '
                          f'width="{bar:.1f}" height="2" fill="#ccd3da"/></g>')
        else:
            h = max(week.pass_rate * plot_h, 1.0)
            colour = next(c for floor, _, c in BANDS if week.pass_rate >= floor)
            tip = f"{week.week}: {week.passed}/{week.judged} 通过 passed ({_percent(week.pass_rate)})"
            shapes.append(f'<g><title>{escape(tip)}</title><rect x="{x:.1f}" y="{base - h:.1f}" '
                          f'width="{bar:.1f}" height="{h:.1f}" rx="1.5" fill="{colour}"/></g>')
            if axis and len(trend) <= 26:
                shapes.append(f'<text x="{middle:.1f}" y="{base - h - 4:.1f}" text-anchor="middle" '
                              f'font-size="10" fill="#52606d">{week.judged}</text>')
        if axis and n % every == 0:
            shapes.append(f'<text x="{middle:.1f}" y="{height - 5}" text-anchor="middle" font-size="10" '
                          f'fill="#52606d">{escape(week.week.split("-")[1])}</text>')
    label = "每周通过率 weekly pass rate"
    # The large chart shrinks with a narrow window; a sparkline keeps its size.
    fit = ' style="max-width:100%;height:auto"' if axis else ""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"{fit} '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{label}">{"".join(shapes)}</svg>')


def _rate(rate: float | None) -> str:
    """A pass rate in a coloured badge."""
    if rate is None:
        return '<span class="rate none">–</span>'
    band = next(name for floor, name, _ in BANDS if rate >= floor)
    return f'<span class="rate {band}">{_percent(rate)}</span>'


def _percent(rate: float | None) -> str:
    return "–" if rate is None else f"{rate:.1%}"
