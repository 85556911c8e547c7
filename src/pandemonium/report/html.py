"""One self-contained HTML report per run.

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
>>> html = render_html(data)
>>> 'data-key="shapes_cls/attack_success"' in html
True
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "Prediction",
    "ExamplePair",
    "TaskSection",
    "ReportData",
    "render_html",
    "write_report",
    "read_table",
    "image_to_hwc",
    "format_number",
    "extract_numbers",
    "headline_from_mapping",
]


# --------------------------------------------------------------------------- data


@dataclass
class Prediction:
    """What a model said about one image, in a form that can be drawn.

    Classification: ``label`` (+ ``score``). Detection: ``boxes`` (N×4 xyxy pixels) with
    ``box_scores`` / ``box_labels``. Segmentation: ``mask`` (H×W class indices).
    """

    label: str | None = None
    score: float | None = None
    boxes: np.ndarray | None = None
    box_scores: Sequence[float] | None = None
    box_labels: Sequence[str] | None = None
    mask: np.ndarray | None = None


@dataclass
class ExamplePair:
    """One evaluation image without (``before``) and with (``after``) the patch, same conditions."""

    before: np.ndarray
    after: np.ndarray
    pred_before: Prediction
    pred_after: Prediction
    truth: str = ""


@dataclass
class TaskSection:
    """Everything the report shows about one task's attack.

    ``curves``: a wide table with a ``step`` column and one column per logged series (loss terms,
    evaluation metrics). ``tables``: named tables shown verbatim (e.g. the evaluation summary).
    """

    task: str
    task_type: str = ""
    model_id: str = ""
    patch_id: str = ""
    patch: np.ndarray | None = None
    examples: list[ExamplePair] = field(default_factory=list)
    curves: pd.DataFrame | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    notes: str = ""


@dataclass
class ReportData:
    """The whole report. ``transfer`` is the long table of :func:`~pandemonium.report.transfer.transfer_matrix`;
    ``robustness`` maps a swept condition (``scale``, ``angle``) to its
    :func:`~pandemonium.report.transfer.robustness_curve` table."""

    title: str
    command: str = ""
    config_yaml: str = ""
    created: str = ""
    headline: dict[str, float] = field(default_factory=dict)
    sections: list[TaskSection] = field(default_factory=list)
    transfer: pd.DataFrame | None = None
    transfer_metric: str = "attack success / disappearance rate"
    robustness: dict[str, pd.DataFrame] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a stored table (``.csv``, ``.parquet`` or ``.json`` records)."""
    path = Path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".json":
        return pd.read_json(path)
    return pd.read_csv(path)


def image_to_hwc(image: Any) -> np.ndarray:
    """An image as a float H×W×3 array in [0,1].

    Tensors are C×H×W (torch's layout); arrays are H×W×C unless their first axis is 1 or 3 and the
    last is not (then C×H×W); H×W is grey.
    """
    if hasattr(image, "detach"):
        arr = image.detach().cpu().float().numpy()
        if arr.ndim == 3:
            arr = np.moveaxis(arr, 0, -1)
    else:
        arr = np.asarray(image, dtype=np.float32)
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3, 4):
            arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.clip(arr[..., :3].astype(np.float32), 0.0, 1.0)


def format_number(value: Any, digits: int = 3) -> str:
    """How numbers appear in the page (and so how a reader parses them back)."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "nan"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 10 ** (-digits)):
            return f"{v:.{digits}e}"
        return f"{v:.{digits}f}"
    return str(value)


def _figure_to_data_uri(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _image_to_data_uri(image: np.ndarray, scale: int = 1) -> str:
    from PIL import Image

    arr = (image_to_hwc(image) * 255).round().astype(np.uint8)
    pil = Image.fromarray(arr)
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _draw_prediction(ax: Any, image: np.ndarray, pred: Prediction, title: str) -> None:
    img = image_to_hwc(image)
    ax.imshow(img, interpolation="nearest")
    if pred.mask is not None:
        mask = np.asarray(pred.mask)
        overlay = np.ma.masked_where(mask == 0, mask)
        ax.imshow(overlay, cmap="tab10", alpha=0.45, vmin=0, vmax=9, interpolation="nearest")
    if pred.boxes is not None:
        from matplotlib.patches import Rectangle

        boxes = np.asarray(pred.boxes, dtype=float).reshape(-1, 4)
        for k, (x0, y0, x1, y1) in enumerate(boxes):
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="lime", linewidth=1.5))
            parts = []
            if pred.box_labels is not None:
                parts.append(str(pred.box_labels[k]))
            if pred.box_scores is not None:
                parts.append(f"{float(pred.box_scores[k]):.2f}")
            if parts:
                ax.text(x0, y0, " ".join(parts), color="black", fontsize=6, va="bottom",
                        bbox={"facecolor": "lime", "alpha": 0.8, "pad": 0.5, "linewidth": 0})
        if len(boxes) == 0:
            ax.text(1, img.shape[0] - 2, "no detections", color="white", fontsize=7,
                    bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0})
    if pred.label is not None:
        text = pred.label if pred.score is None else f"{pred.label} ({pred.score:.2f})"
        ax.text(1, 1, text, color="white", fontsize=7, va="top",
                bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0})
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def _examples_figure(examples: Sequence[ExamplePair]) -> str:
    plt = _plt()
    n = len(examples)
    fig, axes = plt.subplots(n, 2, figsize=(5.6, 2.8 * n), squeeze=False)
    for i, ex in enumerate(examples):
        truth = f" — truth: {ex.truth}" if ex.truth else ""
        _draw_prediction(axes[i, 0], ex.before, ex.pred_before, f"without patch{truth}")
        _draw_prediction(axes[i, 1], ex.after, ex.pred_after, "with patch")
    fig.tight_layout()
    return _figure_to_data_uri(fig)


def _curves_figure(curves: pd.DataFrame) -> str:
    """Training loss terms per step (left) and fixed-evaluation metrics, ``eval_*`` columns (right)."""
    plt = _plt()
    x = curves["step"] if "step" in curves else pd.Series(np.arange(len(curves)))
    train = [c for c in curves.columns if c not in ("step", "lr") and not str(c).startswith("eval_")]
    evals = [c for c in curves.columns if str(c).startswith("eval_")]
    panels = [(names, title) for names, title in ((train, "training loss terms"),
                                                  (evals, "evaluation (fixed conditions)")) if names]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.2 * max(1, len(panels)), 3.0), squeeze=False)
    for ax, (names, title) in zip(axes[0], panels):
        for name in names:
            y = pd.to_numeric(curves[name], errors="coerce")
            ok = y.notna().to_numpy()
            ax.plot(np.asarray(x)[ok], y[ok], marker="." if ok.sum() < 30 else None,
                    label=str(name).removeprefix("eval_"))
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _figure_to_data_uri(fig)


def _heatmap_figure(table: pd.DataFrame, metric_name: str) -> str:
    plt = _plt()
    patches = sorted(table["patch_id"].astype(str).unique())
    models = sorted(table["model_id"].astype(str).unique())
    grid = np.full((len(patches), len(models)), np.nan)
    text = [["" for _ in models] for _ in patches]
    for _, row in table.iterrows():
        i, j = patches.index(str(row["patch_id"])), models.index(str(row["model_id"]))
        grid[i, j] = row["rate"]
        text[i][j] = f"{format_number(row['rate'], 2)}\n[{format_number(row['ci_low'], 2)}, {format_number(row['ci_high'], 2)}]"
    fig, ax = plt.subplots(figsize=(2.6 + 1.9 * len(models), 1.6 + 1.2 * len(patches)))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="magma")
    for i in range(len(patches)):
        for j in range(len(models)):
            v = grid[i, j]
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=8,
                    color="black" if (not np.isnan(v) and v > 0.6) else "white")
    ax.set_xticks(range(len(models)), models, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(patches)), patches, fontsize=8)
    ax.set_xlabel("model")
    ax.set_ylabel("patch")
    fig.colorbar(im, ax=ax, label=metric_name, shrink=0.8)
    ax.set_title("transfer matrix (95% CI)", fontsize=9)
    fig.tight_layout()
    return _figure_to_data_uri(fig)


def _robustness_figure(curve: pd.DataFrame, condition: str) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    for (patch, model), group in curve.groupby(["patch_id", "model_id"], sort=True):
        group = group.sort_values(condition)
        ax.plot(group[condition], group["rate"], marker="o", label=f"{patch} → {model}")
        ax.fill_between(group[condition].astype(float), group["ci_low"].astype(float),
                        group["ci_high"].astype(float), alpha=0.2)
    ax.set_xlabel(condition)
    ax.set_ylabel("rate")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"robustness over {condition}", fontsize=9)
    fig.tight_layout()
    return _figure_to_data_uri(fig)


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
.fig .v{font-size:1.6em;font-weight:600}.fig .k{font-size:.8em;color:#555}
img{max-width:100%}.patch{image-rendering:pixelated;border:1px solid #999}.note{color:#666;font-size:.8em}
"""


# --------------------------------------------------------------------------- rendering


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
            parts.append(f"<div class='fig'><div class='v' data-key='{esc(key)}'>{esc(format_number(value))}</div>"
                         f"<div class='k'>{esc(key)}</div></div>")
        parts.append("</div>")
    if data.links:
        parts.append("<ul>" + "".join(f"<li>{esc(k)}: <code>{esc(v)}</code></li>" for k, v in data.links.items())
                     + "</ul>")

    for section in data.sections:
        anchor = esc(section.task)
        parts.append(f"<h2 id='task-{anchor}'>Task {anchor}</h2>")
        ids = [("task type", section.task_type), ("model", section.model_id), ("patch", section.patch_id)]
        parts.append("<p>" + " · ".join(f"{k}: <code>{esc(str(v))}</code>" for k, v in ids if v) + "</p>")
        if section.notes:
            parts.append(f"<p>{esc(section.notes)}</p>")
        if section.metrics:
            table = pd.DataFrame({"metric": list(section.metrics), "value": list(section.metrics.values())})
            parts.append(_table_html(f"{section.task}/metrics", table, row_key=["metric"]))
        if section.patch is not None:
            patch = image_to_hwc(section.patch)
            scale = max(1, 128 // max(patch.shape[:2]))
            parts.append(f"<h3>Patch</h3><img class='patch' alt='patch {anchor}' "
                         f"src='{_image_to_data_uri(patch, scale)}'>")
        if section.examples:
            parts.append(f"<h3>Before / after</h3><img alt='examples {anchor}' "
                         f"src='{_examples_figure(section.examples)}'>")
        if section.curves is not None and len(section.curves):
            parts.append(f"<h3>Optimisation curves</h3><img alt='curves {anchor}' "
                         f"src='{_curves_figure(section.curves)}'>")
        for name, table in section.tables.items():
            parts.append(f"<h3>{esc(name)}</h3>" + _table_html(f"{section.task}/{name}", table))

    if data.transfer is not None and len(data.transfer):
        parts.append("<h2 id='transfer'>Transfer matrix</h2>")
        parts.append(f"<p>Rows: patches; columns: models. Cell: {esc(data.transfer_metric)} with a 95% "
                     "confidence interval, patched vs control under the same fixed conditions.</p>")
        parts.append(f"<img alt='transfer matrix' src='{_heatmap_figure(data.transfer, data.transfer_metric)}'>")
        parts.append(_table_html("transfer", data.transfer, row_key=["patch_id", "model_id"]))
    for condition, curve in data.robustness.items():
        if curve is None or not len(curve):
            continue
        parts.append(f"<h2 id='robustness-{esc(condition)}'>Robustness over {esc(condition)}</h2>")
        parts.append(f"<img alt='robustness {esc(condition)}' src='{_robustness_figure(curve, condition)}'>")
        parts.append(_table_html(f"robustness/{condition}", curve,
                                 row_key=["patch_id", "model_id", condition]))
    for name, table in data.tables.items():
        parts.append(f"<h2>{esc(name)}</h2>" + _table_html(name, table))

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


def headline_from_mapping(values: Mapping[str, float]) -> dict[str, float]:
    """Keep the finite numeric entries of ``values`` (e.g. an eval summary) for the headline block."""
    out = {}
    for k, v in values.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out[str(k)] = f
    return out


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
