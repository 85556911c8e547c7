"""The report's figures (matplotlib, Agg backend), each returned as a PNG ``data:`` URI to embed.

>>> import numpy as np
>>> image_to_data_uri(np.zeros((4, 4))).startswith("data:image/png;base64,")
True
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from pandemonium.report.data import ExamplePair, Prediction, format_number, image_to_hwc
from pandemonium.report.plots import pyplot

__all__ = ["CONDITION_UNITS", "curves_figure", "draw_prediction", "examples_figure", "figure_to_data_uri",
           "heatmap_figure", "image_to_data_uri", "robustness_figure"]


def figure_to_data_uri(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_to_data_uri(image: np.ndarray, scale: int = 1) -> str:
    from PIL import Image

    arr = (image_to_hwc(image) * 255).round().astype(np.uint8)
    pil = Image.fromarray(arr)
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def draw_prediction(ax: Any, image: np.ndarray, pred: Prediction, title: str) -> None:
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


def examples_figure(examples: Sequence[ExamplePair]) -> str:
    plt = pyplot()
    n = len(examples)
    fig, axes = plt.subplots(n, 2, figsize=(5.6, 2.8 * n), squeeze=False)
    for i, ex in enumerate(examples):
        truth = f" — truth: {ex.truth}" if ex.truth else ""
        draw_prediction(axes[i, 0], ex.before, ex.pred_before, f"without patch{truth}")
        draw_prediction(axes[i, 1], ex.after, ex.pred_after, "with patch")
    fig.tight_layout()
    return figure_to_data_uri(fig)


def curves_figure(curves: pd.DataFrame) -> str:
    """Training loss terms per step (left) and fixed-evaluation metrics, ``eval_*`` columns (right)."""
    plt = pyplot()
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
    return figure_to_data_uri(fig)


def heatmap_figure(table: pd.DataFrame, metric_name: str) -> str:
    plt = pyplot()
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
    return figure_to_data_uri(fig)


#: the axis label of each swept condition of the robustness curves
CONDITION_UNITS = {"scale": "patch side / image side", "angle": "viewing angle (degrees)",
                   "brightness": "brightness factor", "blur": "Gaussian blur sigma (pixels)", "jpeg": "JPEG quality"}


def robustness_figure(curve: pd.DataFrame, condition: str) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    for (patch, model), group in curve.groupby(["patch_id", "model_id"], sort=True):
        group = group.sort_values(condition)
        x = group[condition].astype(float)
        line, = ax.plot(x, group["rate"], marker="o", label=f"{patch} → {model}")
        ax.fill_between(x, group["ci_low"].astype(float), group["ci_high"].astype(float), alpha=0.2,
                        color=line.get_color())
        # the baselines under the same conditions, beside the patch's curve
        for arm, style in (("control", "--"), ("random", ":")):
            if arm in group:
                ax.plot(x, group[arm].astype(float), linestyle=style, color=line.get_color(),
                        label=f"{patch} → {model}: {'no patch' if arm == 'control' else 'random patch'}")
    ax.set_xlabel(CONDITION_UNITS.get(condition, condition))
    ax.set_ylabel("rate")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"robustness over {condition}", fontsize=9)
    fig.tight_layout()
    return figure_to_data_uri(fig)
