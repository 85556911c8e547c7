"""One self-contained HTML report per run: the page (its data is :mod:`pandemonium.report.data`, its
figures :mod:`pandemonium.report.figures`).

The report is rendered from a plain data structure (:class:`ReportData`), so anything that can fill
it — the ``report`` mode reading a run folder, a notebook, a test — gets the same page. Images and
plots are PNGs embedded as base64 ``data:`` URIs: the file can be mailed to a colleague and opened
offline. Plots are matplotlib (Agg backend, no display needed).

Every number the page shows in a table carries ``data-table`` / ``data-row`` / ``data-col``
attributes (and headline figures a ``data-key``), so a test — or a colleague's script — can read the
numbers back out of the rendered DOM and compare them with the stored tables.

>>> import numpy as np, pandas as pd
>>> data = ReportData(title="demo", command="pandemonium demo", config_yaml="seed: 0\\n",
...                   headline={"shapes_cls/attack_success": 0.9})
>>> page = render_html(data)
>>> "data-key='shapes_cls/attack_success'" in page
True
"""

from __future__ import annotations

import datetime as _dt
import html
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd

from pandemonium.report.data import HeadlineFigure, ReportData, format_number, image_to_hwc
from pandemonium.report.figures import (
    curves_figure,
    examples_figure,
    heatmap_figure,
    image_to_data_uri,
    robustness_figure,
)
from pandemonium.report.sweep_html import study_parts, sweep_parts

__all__ = ["extract_numbers", "render_html", "write_report"]


def _headline_card(key: str, value: float | HeadlineFigure) -> str:
    esc = html.escape
    if not isinstance(value, HeadlineFigure):
        return (f"<div class='fig'><div class='v' data-key='{esc(key)}'>{esc(format_number(value))}</div>"
                f"<div class='k'>{esc(key)}</div></div>")
    return (f"<div class='fig'><div class='v' data-key='{esc(key)}'>{esc(format_number(value.value))}</div>"
            f"<div class='ci'>95% CI [<span data-key='{esc(key)}/ci_low'>{esc(format_number(value.ci_low))}</span>, "
            f"<span data-key='{esc(key)}/ci_high'>{esc(format_number(value.ci_high))}</span>]</div>"
            f"<div class='k'>{esc(value.label or key)}</div></div>")


def _table_html(name: str, table: pd.DataFrame, row_key: Sequence[str] | None = None, max_rows: int = 200) -> str:
    """An HTML table whose cells carry ``data-table``/``data-row``/``data-col`` for reading back."""
    esc = html.escape
    cols = [str(c) for c in table.columns]
    key_cols = list(row_key) if row_key else []
    out = [f'<table data-table="{esc(name)}"><thead><tr>']
    out += [f"<th>{esc(c)}</th>" for c in cols]
    out.append("</tr></thead><tbody>")
    for idx, (_, row) in enumerate(table.head(max_rows).iterrows()):
        rid = "/".join(str(row[c]) for c in key_cols) if key_cols else str(idx)
        out.append(f'<tr data-row="{esc(rid)}">')
        for c, v in zip(cols, row.tolist()):
            out.append(f'<td data-col="{esc(c)}">{esc(format_number(v))}</td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    if len(table) > max_rows:
        out.append(f"<p class='note'>showing {max_rows} of {len(table)} rows</p>")
    return "".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{margin-top:1.4em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:right}th{background:#f3f3f3}
pre{background:#f6f6f6;padding:.8em;overflow:auto;font-size:.8em;max-height:420px}
.headline{display:flex;flex-wrap:wrap;gap:1em}.fig{border:1px solid #ddd;padding:.8em 1.2em;border-radius:6px}
.fig .v{font-size:1.6em;font-weight:600}.fig .k{font-size:.8em;color:#555}.fig .ci{font-size:.85em}
img{max-width:100%}.patch{image-rendering:pixelated;border:1px solid #999}.note{color:#666;font-size:.8em}.warning{color:#a40;font-weight:bold}
"""




def render_html(data: ReportData) -> str:
    """The report as one HTML string (no external resources)."""
    esc = html.escape
    created = data.created or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    parts: list[str] = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{esc(data.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(data.title)}</h1><p class='note'>generated {esc(created)} by pandemonium</p>",
    ]
    if data.headline:
        parts.append("<h2 id='headline'>Headline figures</h2><div class='headline'>")
        for key, value in data.headline.items():
            parts.append(_headline_card(key, value))
        parts.append("</div>")
    if data.links:
        parts.append("<ul>" + "".join(f"<li>{esc(k)}: <code>{esc(v)}</code></li>" for k, v in data.links.items())
                     + "</ul>")

    for section in data.sections:
        anchor = esc(section.task)
        parts.append(f"<h2 id='task-{anchor}'>Task {anchor}</h2>")
        ids = [("task type", section.task_type), ("model", section.model_id), ("patch", section.patch_id)]
        parts.append("<p>" + " · ".join(f"{k}: <code>{esc(str(v))}</code>" for k, v in ids if v) + "</p>")
        for warning in section.warnings:
            parts.append(f"<p class='warning'>warning: {esc(warning)}</p>")
        if section.notes:
            parts.append(f"<p>{esc(section.notes)}</p>")
        if section.metrics:
            table = pd.DataFrame({"metric": list(section.metrics), "value": list(section.metrics.values())})
            parts.append(_table_html(f"{section.task}/metrics", table, row_key=["metric"]))
        if section.patch is not None:
            patch = image_to_hwc(section.patch)
            scale = max(1, 128 // max(patch.shape[:2]))
            parts.append(f"<h3>Patch</h3><img class='patch' alt='patch {anchor}' "
                         f"src='{image_to_data_uri(patch, scale)}'>")
        if section.examples:
            parts.append(f"<h3>Before / after</h3><img alt='examples {anchor}' "
                         f"src='{examples_figure(section.examples)}'>")
        if section.curves is not None and len(section.curves):
            parts.append(f"<h3>Optimisation curves</h3><img alt='curves {anchor}' "
                         f"src='{curves_figure(section.curves)}'>")
        for name, table in section.tables.items():
            parts.append(f"<h3>{esc(name)}</h3>" + _table_html(f"{section.task}/{name}", table))

    if data.transfer is not None and len(data.transfer):
        parts.append("<h2 id='transfer'>Transfer matrix</h2>")
        parts.append(f"<p>Rows: patches; columns: models. Cell: {esc(data.transfer_metric)} with a 95% "
                     "confidence interval (bootstrap over scenes); the table sets it beside the rate with no "
                     "patch (control) and with a random patch, and the paired difference patched - random, "
                     "all under the same fixed conditions.</p>")
        parts.append(f"<img alt='transfer matrix' src='{heatmap_figure(data.transfer, data.transfer_metric)}'>")
        parts.append(_table_html("transfer", data.transfer, row_key=["patch_id", "model_id"]))
    for condition, curve in data.robustness.items():
        if curve is None or not len(curve):
            continue
        parts.append(f"<h2 id='robustness-{esc(condition)}'>Robustness over {esc(condition)}</h2>")
        parts.append(f"<img alt='robustness {esc(condition)}' src='{robustness_figure(curve, condition)}'>")
        parts.append(_table_html(f"robustness/{condition}", curve,
                                 row_key=["patch_id", "model_id", condition]))
    for name, table in data.tables.items():
        parts.append(f"<h2>{esc(name)}</h2>" + _table_html(name, table))
    parts += sweep_parts(data.sweep, data.sweep_dir, _table_html)
    parts += study_parts(data.studies, _table_html)

    parts.append("<h2 id='reproduce'>Reproduce</h2><p>Command:</p>")
    parts.append(f"<pre id='command'>{esc(data.command)}</pre><p>Composed configuration:</p>")
    parts.append(f"<pre id='config'>{esc(data.config_yaml)}</pre>")
    parts.append("</body></html>")
    return "".join(parts)


def write_report(data: ReportData, path: str | Path) -> Path:
    """Render ``data`` and write it to ``path`` (parents created). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(data), encoding="utf-8")
    return path


class _NumberReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, dict[str, dict[str, str]]] = {}
        self.headline: dict[str, str] = {}
        self._table: str | None = None
        self._row: str | None = None
        self._target: tuple[str, ...] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table" and a.get("data-table") is not None:
            self._table = a["data-table"]
            self.tables.setdefault(self._table, {})
        elif tag == "tr" and self._table is not None and a.get("data-row") is not None:
            self._row = a["data-row"]
        elif tag == "td" and self._row is not None and a.get("data-col") is not None:
            self._target, self._text = ("cell", a["data-col"]), []
        elif a.get("data-key") is not None:
            self._target, self._text = ("key", a["data-key"]), []

    def handle_data(self, data: str) -> None:
        if self._target is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if self._target is not None and tag in ("td", "div", "span"):
            kind, name = self._target
            text = "".join(self._text).strip()
            if kind == "cell":
                self.tables[self._table].setdefault(self._row, {})[name] = text
            else:
                self.headline[name] = text
            self._target = None
        elif tag == "table":
            self._table = self._row = None


def extract_numbers(page: str) -> tuple[dict[str, dict[str, dict[str, str]]], dict[str, str]]:
    """Read the marked numbers back out of a rendered page (or a browser's DOM dump).

    Returns ``(tables, headline)``: ``tables[table][row][col]`` and ``headline[key]`` as the text shown.
    """
    reader = _NumberReader()
    reader.feed(page)
    return reader.tables, reader.headline
