"""What a report shows, as plain data (:class:`ReportData` and its parts), and how numbers are formatted.

>>> format_number(0.12345), format_number(3), format_number(float("nan"))
('0.123', '3', 'nan')
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["ExamplePair", "HeadlineFigure", "Prediction", "ReportData", "StudyReport", "TaskSection", "format_number",
           "headline_from_mapping", "image_to_hwc", "read_table"]


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
    #: findings that make the figures mean little (a model at chance level, no success, a tiny patch)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class HeadlineFigure:
    """A headline card: a value with its interval (shown as ``[low, high]``) and a label. Its numbers
    carry ``data-key="<key>"``, ``"<key>/ci_low"`` and ``"<key>/ci_high"``."""

    value: float
    ci_low: float
    ci_high: float
    label: str = ""


@dataclass
class StudyReport:
    """A tune study: its stored summary (best value and parameters), its plots as PNG bytes by name
    (``tune_history``, ``tune_importance``, ``tune_parallel``) and its trials table."""

    name: str
    summary: dict[str, Any] = field(default_factory=dict)
    plots: dict[str, bytes] = field(default_factory=dict)
    trials: pd.DataFrame | None = None


@dataclass
class ReportData:
    """The whole report. ``transfer`` is the stored transfer table (one row per patch x model) and
    ``robustness`` maps a swept condition (``scale``, ``angle``, ...) to its stored curve table, both as
    ``pandemonium.modes.steps.transfer`` writes them from the evaluations' summaries."""

    title: str
    command: str = ""
    config_yaml: str = ""
    created: str = ""
    headline: dict[str, float | HeadlineFigure] = field(default_factory=dict)
    sections: list[TaskSection] = field(default_factory=list)
    transfer: pd.DataFrame | None = None
    transfer_metric: str = "attack success / disappearance rate"
    robustness: dict[str, pd.DataFrame] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    #: the jobs of a sweep side by side (``pandemonium.modes.steps.sweep.sweep_table``) and its folder
    sweep: pd.DataFrame | None = None
    sweep_dir: str = ""
    studies: list[StudyReport] = field(default_factory=list)


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
