"""Fixed evaluation: the same conditions at every evaluation, each sample run patched and as control.

``FixedEvaluation`` draws the evaluation conditions (images, positions, augmentations) **once**
from its seed, by running the pipeline with ``evaluate=True`` and recording
``pipeline.get_last_sample_as_dict()`` per evaluation batch. Every later evaluation replays those
recorded params twice per batch: patched, and as control (``control=True``, same params). Results
are a per-sample table (loss terms ``<k>_patch``, ``<k>_control``, ``<k>_delta``, task metrics and
the sampled params as ``param:<key>`` columns) and a summary of means with standard errors and
seeded percentile-bootstrap confidence intervals.

Task metrics (model output layouts as in DEVELOPERS.md):

- classification (logits ``(B, C)``): ``prediction_changed``; ``untargeted_success`` = the patched
  prediction differs from the true class, defined **only for samples the control classifies
  correctly** (NaN otherwise, so its mean is the success rate over that denominator);
  ``targeted_success`` = patched prediction equals the target class, defined only for samples whose
  true class is not the target.
- detection (dict ``boxes``/``objectness``/``class_scores``): ``disappearance`` = the fraction of
  the control's detections (objectness >= threshold) with no patched detection of IoU >= threshold
  (NaN when the control detects nothing); the summary also has the object-level rate
  ``disappearance_objects`` = all disappeared / all control detections.
- segmentation (logits ``(B, C, H, W)``): ``pixel_flip`` = fraction of pixels whose patched
  prediction differs from the control prediction.

Any row of the saved table can be re-rendered exactly with :func:`render_row`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pandemonium.attack.checkpoint import isolated_rng
from pandemonium.boxes import box_iou

__all__ = [
    "EvalResult",
    "FixedEvaluation",
    "bootstrap_ci",
    "classification_metrics",
    "detection_metrics",
    "final_stage_input",
    "load_table",
    "render_row",
    "save_table",
    "segmentation_metrics",
    "standard_error",
    "summarize",
    "task_metrics",
]

log = logging.getLogger(__name__)

PARAM_PREFIX = "param:"
BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE_LEVEL = 0.95


# --------------------------------------------------------------------------------------- statistics
def _finite(values: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    return arr[~np.isnan(arr)]


def standard_error(values: Any) -> float:
    """Standard error of the mean, ``std(ddof=1) / sqrt(n)``, over the non-NaN values (NaN if n < 2)."""
    arr = _finite(values)
    if arr.size < 2:
        return math.nan
    return float(arr.std(ddof=1) / math.sqrt(arr.size))


def bootstrap_ci(
    values: Any,
    seed: int = 0,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    confidence_level: float = CONFIDENCE_LEVEL,
    statistic: Callable[..., Any] = np.mean,
) -> tuple[float, float]:
    """Seeded percentile-bootstrap confidence interval of ``statistic`` over the non-NaN values.

    ``statistic`` must accept ``axis=`` (``np.mean``, ``np.median``, …). (NaN, NaN) for fewer than 2
    values. Written with numpy rather than ``scipy.stats.bootstrap`` because scipy's version costs
    ~60 ms per column and an evaluation summarises dozens of columns at every evaluation; the
    percentile method is the same (``np.quantile`` of the resampled statistics).

    >>> lo, hi = bootstrap_ci([0.0, 1.0, 1.0, 0.0, 1.0], seed=0)
    >>> 0.0 <= lo <= 0.6 <= hi <= 1.0
    True
    """
    arr = _finite(values)
    if arr.size < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    resampled = arr[rng.integers(0, arr.size, size=(n_resamples, arr.size))]
    stats = np.asarray(statistic(resampled, axis=1), dtype=np.float64)
    alpha = (1.0 - confidence_level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def summarize(table: pd.DataFrame, columns: list[str], seed: int = 0) -> dict[str, float]:
    """``<col>`` (mean over non-NaN), ``<col>_se``, ``<col>_ci_low``, ``<col>_ci_high``, ``<col>_n``."""
    out: dict[str, float] = {}
    for i, col in enumerate(columns):
        arr = _finite(table[col].to_numpy(dtype=np.float64))
        lo, hi = bootstrap_ci(arr, seed=seed + i)
        out[col] = float(arr.mean()) if arr.size else math.nan
        out[f"{col}_se"] = standard_error(arr)
        out[f"{col}_ci_low"] = lo
        out[f"{col}_ci_high"] = hi
        out[f"{col}_n"] = float(arr.size)
    return out


# ------------------------------------------------------------------------------------------ metrics
def classification_metrics(
    logits_patch: torch.Tensor,
    logits_control: torch.Tensor,
    true_class: torch.Tensor | None = None,
    target_class: int | torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-sample classification attack metrics (float tensors of shape (B,), NaN = undefined)."""
    pred_p = logits_patch.argmax(dim=1)
    pred_c = logits_control.argmax(dim=1)
    nan = torch.full(pred_p.shape, math.nan, device=pred_p.device)
    out = {
        "pred_patch": pred_p.float(),
        "pred_control": pred_c.float(),
        "prediction_changed": (pred_p != pred_c).float(),
    }
    if true_class is not None:
        true_class = torch.as_tensor(true_class, device=pred_p.device).long().reshape(-1)
        control_correct = pred_c == true_class
        out["control_correct"] = control_correct.float()
        out["untargeted_success"] = torch.where(control_correct, (pred_p != true_class).float(), nan)
    if target_class is not None:
        target = torch.as_tensor(target_class, device=pred_p.device).long().expand_as(pred_p)
        hit = (pred_p == target).float()
        out["targeted_success"] = hit if true_class is None else torch.where(true_class != target, hit, nan)
    return out


def detection_metrics(
    out_patch: Mapping[str, torch.Tensor],
    out_control: Mapping[str, torch.Tensor],
    conf_threshold: float = 0.5,
    iou_threshold: float = 0.5,
) -> dict[str, torch.Tensor]:
    """Per-sample disappearance: control detections with no patched detection overlapping them."""
    det_c = out_control["objectness"] >= conf_threshold
    det_p = out_patch["objectness"] >= conf_threshold
    iou = box_iou(out_control["boxes"].float(), out_patch["boxes"].float())
    matched = ((iou >= iou_threshold) & det_p[:, None, :]).any(dim=2)
    disappeared = (det_c & ~matched).sum(1).float()
    n_control = det_c.sum(1).float()
    fraction = torch.where(n_control > 0, disappeared / n_control.clamp_min(1), torch.full_like(n_control, math.nan))
    return {
        "detections_control": n_control,
        "detections_patch": det_p.sum(1).float(),
        "disappeared": disappeared,
        "disappearance": fraction,
    }


def segmentation_metrics(
    logits_patch: torch.Tensor, logits_control: torch.Tensor, mask: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Per-sample pixel flip rate (patched vs control prediction) and, with a mask, control accuracy."""
    pred_p = logits_patch.argmax(dim=1)
    pred_c = logits_control.argmax(dim=1)
    out = {"pixel_flip": (pred_p != pred_c).flatten(1).float().mean(1)}
    if mask is not None and torch.as_tensor(mask).shape == pred_c.shape:
        mask = torch.as_tensor(mask, device=pred_c.device)
        out["pixel_accuracy_control"] = (pred_c == mask).flatten(1).float().mean(1)
        out["pixel_accuracy_patch"] = (pred_p == mask).flatten(1).float().mean(1)
    return out


def task_metrics(
    y_patch: Any,
    y_control: Any,
    targets: Mapping[str, Any] | None,
    target_class: int | None = None,
    conf_threshold: float = 0.5,
    iou_threshold: float = 0.5,
) -> dict[str, torch.Tensor]:
    """Choose the metric family from the output layout (see DEVELOPERS.md)."""
    targets = targets or {}
    if isinstance(y_patch, Mapping) and "objectness" in y_patch and "boxes" in y_patch:
        return detection_metrics(y_patch, y_control, conf_threshold, iou_threshold)
    if isinstance(y_patch, torch.Tensor) and y_patch.ndim == 2:
        return classification_metrics(y_patch, y_control, targets.get("class"), target_class)
    if isinstance(y_patch, torch.Tensor) and y_patch.ndim == 4:
        return segmentation_metrics(y_patch, y_control, targets.get("mask"))
    if isinstance(y_patch, Mapping) and isinstance(y_control, Mapping):
        # an ensemble returning {model_name: output}: metrics per model, prefixed with its name
        out: dict[str, torch.Tensor] = {}
        for name, value in y_patch.items():
            if name in y_control:
                sub = task_metrics(value, y_control[name], targets, target_class, conf_threshold, iou_threshold)
                out.update({f"{name}.{k}": v for k, v in sub.items()})
        return out
    return {}


# ---------------------------------------------------------------------------------- params <-> rows
def _param_kind(value: Any) -> dict[str, Any]:
    if isinstance(value, torch.Tensor):
        return {"kind": "tensor", "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, np.ndarray):
        return {"kind": "ndarray", "dtype": str(value.dtype)}
    return {"kind": "list"}


def _per_sample(value: Any, batch: int, key: str) -> list[Any]:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.ndim == 0 or value.shape[0] != batch:
            raise ValueError(f"sampled param {key!r} has shape {value.shape}, expected length {batch} first")
        return list(value) if value.ndim == 1 else [v for v in value]
    value = list(value)
    if len(value) != batch:
        raise ValueError(f"sampled param {key!r} has {len(value)} values, expected {batch} (the batch size)")
    return value


def _rebuild_param(values: list[Any], spec: Mapping[str, Any], device: torch.device | None) -> Any:
    kind = spec.get("kind", "list")
    if kind == "list":
        return [v.tolist() if isinstance(v, np.ndarray) else (v.item() if isinstance(v, np.generic) else v)
                for v in values]
    arr = np.stack([np.asarray(v) for v in values]).astype(_numpy_dtype(spec["dtype"]), copy=False)
    if kind == "ndarray":
        return arr
    return torch.as_tensor(arr, device=device)


def _numpy_dtype(name: str) -> np.dtype:
    # torch dtype names and numpy dtype names coincide for the numeric types params use
    return np.dtype("bool" if name == "bool" else name)


def params_to_rows(params: Mapping[str, Any], batch: int) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """Split a ``get_last_sample_as_dict()`` batch into per-sample column values and a type spec."""
    cols: dict[str, list[Any]] = {}
    spec: dict[str, Any] = {}
    for key, value in params.items():
        cols[PARAM_PREFIX + key] = _per_sample(value, batch, key)
        spec[key] = _param_kind(value)
    return cols, spec


def rows_to_params(rows: pd.DataFrame | pd.Series, spec: Mapping[str, Any] | None = None,
                   device: torch.device | None = None) -> dict[str, Any]:
    """Rebuild a ``params=`` dict (batch of ``len(rows)``) from table rows, restoring each key's type."""
    if isinstance(rows, pd.Series):
        rows = rows.to_frame().T
    spec = dict(spec or rows.attrs.get("param_spec") or {})
    out: dict[str, Any] = {}
    for col in rows.columns:
        if not str(col).startswith(PARAM_PREFIX):
            continue
        key = str(col)[len(PARAM_PREFIX):]
        values = list(rows[col])
        if values and isinstance(values[0], str):  # CSV fallback stores per-sample lists as JSON
            values = [_maybe_json(v) for v in values]
        out[key] = _rebuild_param(values, spec.get(key, {"kind": "list"}), device)
    return out


def _maybe_json(v: str) -> Any:
    if v.startswith(("[", "{")):
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    return v


# ------------------------------------------------------------------------------------------ tables
def save_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Save as Parquet (param types in a ``.params.json`` beside it); CSV if Parquet is unavailable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = table.attrs.get("param_spec", {})
    plain = table.copy()
    plain.attrs = {}
    try:
        plain.to_parquet(path.with_suffix(".parquet"), index=False)
        out = path.with_suffix(".parquet")
    except (ImportError, ValueError, TypeError) as err:  # pyarrow missing or a column it cannot store
        log.warning("saving eval table as CSV (%s)", err)
        for col in plain.columns:
            if plain[col].map(lambda v: isinstance(v, (list, np.ndarray))).any():
                plain[col] = plain[col].map(lambda v: json.dumps(np.asarray(v).tolist()))
        out = path.with_suffix(".csv")
        plain.to_csv(out, index=False)
    out.with_suffix(".params.json").write_text(json.dumps(spec, indent=1))
    return out


def load_table(path: str | Path) -> pd.DataFrame:
    """Load a table written by :func:`save_table`, with ``attrs["param_spec"]`` restored."""
    path = Path(path)
    table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    spec_path = path.with_suffix(".params.json")
    table.attrs["param_spec"] = json.loads(spec_path.read_text()) if spec_path.exists() else {}
    return table


# --------------------------------------------------------------------------------------- rendering
def pipeline_stages(pipeline: torch.nn.Module) -> list[torch.nn.Module]:
    """The ordered stages of a Pipeline (``.stages``) or, failing that, its child modules."""
    stages = getattr(pipeline, "stages", None)
    if stages is not None:
        return list(stages.values()) if isinstance(stages, Mapping) else list(stages)
    return list(pipeline.children())


class _StopForward(Exception):
    def __init__(self, value: Any) -> None:
        super().__init__("stopped before the final stage")
        self.value = value


def final_stage_input(pipeline: torch.nn.Module, x: Any, **forward_kwargs: Any) -> Any:
    """Run ``pipeline(x, **forward_kwargs)`` up to its last stage (the model) and return that stage's
    input: the images the model sees. The model itself is not run."""
    stages = pipeline_stages(pipeline)
    if not stages:
        raise ValueError("pipeline has no stages to stop before")

    def hook(_module: torch.nn.Module, args: tuple[Any, ...], _kwargs: dict[str, Any]) -> None:
        raise _StopForward(args[0] if args else _kwargs.get("x"))

    handle = stages[-1].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        pipeline(x, **forward_kwargs)
    except _StopForward as stop:
        return stop.value
    finally:
        handle.remove()
    raise RuntimeError("the pipeline's last stage was never called")


def _expand_patch(patch: Any, batch: int) -> Any:
    if isinstance(patch, torch.nn.Module):
        patch = patch()
    if isinstance(patch, Mapping):
        return {k: _expand_patch(v, batch) for k, v in patch.items()}
    if patch.ndim == 3:
        patch = patch.unsqueeze(0)
    return patch.expand(batch, *patch.shape[1:])


@torch.no_grad()
def render_row(
    pipeline: torch.nn.Module, patch: Any, table_row: pd.Series | Mapping[str, Any], control: bool = False
) -> torch.Tensor:
    """Re-render one evaluation sample exactly from its saved params: the image the model saw.

    Args:
        pipeline: the pipeline that produced the table.
        patch: the patch (a ``(C, h, w)`` tensor, a patch module, or a dict of them).
        table_row: one row of an evaluation table (e.g. ``load_table(path).iloc[i]``).
        control: render the control image (no patch) instead of the patched one.

    Returns:
        the ``(1, C, H, W)`` input of the pipeline's last stage.
    """
    if not isinstance(table_row, pd.Series):
        table_row = pd.Series(dict(table_row))
    frame = table_row.to_frame().T
    frame.attrs = dict(table_row.attrs)
    device = next((p.device for p in pipeline.parameters()), None)
    if device is None:
        device = next((b.device for b in pipeline.buffers()), torch.device("cpu"))
    params = rows_to_params(frame, device=device)
    x = _expand_patch(patch, 1)
    return final_stage_input(pipeline, x, evaluate=True, control=control, params=params)


# ------------------------------------------------------------------------------------- evaluation
@dataclass
class EvalResult:
    """One evaluation: the per-sample table and its summary (means, SE, bootstrap CIs)."""

    step: int
    table: pd.DataFrame
    summary: dict[str, float]
    seconds: float = 0.0
    images: dict[str, Any] = field(default_factory=dict)


def _weighted_per_sample(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    total = None
    for k, w in weights.items():
        t = terms[k].float() * float(w)
        total = t if total is None else total + t
    return total


class FixedEvaluation:
    """Evaluation conditions drawn once from ``seed`` and replayed at every evaluation.

    Args:
        pipeline: the patch pipeline (``forward(x, control, evaluate, params, **kw) -> (y, kw)``).
        loss: ``loss(outputs, **kwargs) -> dict[str, Tensor(B)]``.
        weights: the optimised terms' weights (their weighted sum is logged as ``total``).
        num_eval: number of evaluation samples.
        batch_size: evaluation batch size.
        seed: seed of the evaluation conditions (independent of the training streams).
        target_class: target class for the targeted classification success rate.
        conf_threshold, iou_threshold: detection thresholds for the disappearance rate.

    Example:
        >>> ev = FixedEvaluation(pipeline, loss, {"ce": 1.0}, num_eval=32, batch_size=16)  # doctest: +SKIP
        >>> result = ev.run(patch_module, step=0)                                          # doctest: +SKIP
        >>> result.summary["ce_delta"], result.summary["ce_delta_ci_low"]                   # doctest: +SKIP
    """

    def __init__(
        self,
        pipeline: torch.nn.Module,
        loss: Callable[..., Mapping[str, torch.Tensor]],
        weights: Mapping[str, float],
        num_eval: int = 64,
        batch_size: int = 32,
        seed: int = 0,
        target_class: int | None = None,
        conf_threshold: float = 0.5,
        iou_threshold: float = 0.5,
    ) -> None:
        if num_eval < 1 or batch_size < 1:
            raise ValueError(f"FixedEvaluation: num_eval ({num_eval}) and batch_size ({batch_size}) must be >= 1")
        self.pipeline = pipeline
        self.loss = loss
        self.weights = dict(weights)
        self.num_eval = int(num_eval)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.target_class = target_class
        self.conf_threshold = conf_threshold
        self.iou_threshold = iou_threshold
        self.conditions: list[dict[str, Any]] | None = None
        self.param_spec: dict[str, Any] = {}

    @property
    def batch_sizes(self) -> list[int]:
        full, rest = divmod(self.num_eval, self.batch_size)
        return [self.batch_size] * full + ([rest] if rest else [])

    @torch.no_grad()
    def draw(self, patch: Any) -> list[dict[str, Any]]:
        """Draw the evaluation conditions once (idempotent); training RNG streams are untouched."""
        if self.conditions is not None:
            return self.conditions
        conditions = []
        with isolated_rng(self.pipeline, seed=self.seed):
            for b in self.batch_sizes:
                self.pipeline(_expand_patch(patch, b), evaluate=True)
                conditions.append(dict(self.pipeline.get_last_sample_as_dict()))
        self.conditions = conditions
        return conditions

    @torch.no_grad()
    def run(self, patch: Any, step: int = 0, keep_images: int = 0, writer: Any = None,
            logging_to_mlflow: bool = False) -> EvalResult:
        """Evaluate ``patch`` under the fixed conditions.

        ``keep_images`` keeps that many images of the first batch (patched and control inputs of the
        last stage) in ``EvalResult.images``; with a TensorBoard ``writer`` the first batch runs
        through ``pipeline.evaluate(..., writer=...)`` so each stage logs its visualisations.
        """
        start = time.perf_counter()
        conditions = self.draw(patch)
        frames = []
        images: dict[str, Any] = {}
        offset = 0
        for b_idx, (b, params) in enumerate(zip(self.batch_sizes, conditions)):
            x = _expand_patch(patch, b)
            captured: list[Any] = []
            handle = None
            if keep_images and b_idx == 0:
                stages = pipeline_stages(self.pipeline)
                if stages:
                    def hook(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                             sink: list[Any] = captured) -> None:
                        sink.append(args[0] if args else kwargs.get("x"))
                    handle = stages[-1].register_forward_pre_hook(hook, with_kwargs=True)
            try:
                if writer is not None and b_idx == 0 and hasattr(self.pipeline, "evaluate"):
                    res = self.pipeline.evaluate(x, writer=writer, step=step, params=params,
                                                 logging_to_mlflow=logging_to_mlflow)
                    y_p, kw_p = res["output"], res["kwargs"]
                    y_c, kw_c = res["control_output"], res["control_kwargs"]
                else:
                    y_p, kw_p = self.pipeline(x, evaluate=True, params=params)
                    y_c, kw_c = self.pipeline(x, evaluate=True, control=True, params=params)
            finally:
                if handle is not None:
                    handle.remove()
            if len(captured) == 2 and isinstance(captured[0], torch.Tensor):
                images = {"patched": captured[0][:keep_images].detach().cpu(),
                          "control": captured[1][:keep_images].detach().cpu()}
            terms_p = self.loss(y_p, **kw_p)
            terms_c = self.loss(y_c, **kw_c)
            cols: dict[str, Any] = {
                "eval_index": np.arange(offset, offset + b),
                "eval_batch": np.full(b, b_idx),
                "row_in_batch": np.arange(b),
            }
            for k in terms_p:
                tp = terms_p[k].detach().float().reshape(-1).cpu().numpy()
                tc = terms_c[k].detach().float().reshape(-1).cpu().numpy()
                cols[f"{k}_patch"], cols[f"{k}_control"], cols[f"{k}_delta"] = tp, tc, tp - tc
            if self.weights:
                tot_p = _weighted_per_sample(terms_p, self.weights).cpu().numpy()
                tot_c = _weighted_per_sample(terms_c, self.weights).cpu().numpy()
                cols["total_patch"], cols["total_control"], cols["total_delta"] = tot_p, tot_c, tot_p - tot_c
            metrics = task_metrics(
                y_p, y_c, kw_p.get("targets"), self.target_class, self.conf_threshold, self.iou_threshold
            )
            for k, v in metrics.items():
                cols[k] = v.detach().float().reshape(-1).cpu().numpy()
            pcols, spec = params_to_rows(params, b)
            self.param_spec.update(spec)
            cols.update(pcols)
            frames.append(pd.DataFrame(cols))
            offset += b
        table = pd.concat(frames, ignore_index=True)
        table.insert(0, "step", step)
        table.attrs["param_spec"] = dict(self.param_spec)
        value_cols = self.value_columns(table)
        summary = summarize(table, value_cols, seed=self.seed)
        if "disappeared" in table:
            n = table["detections_control"].sum()
            summary["disappearance_objects"] = float(table["disappeared"].sum() / n) if n else math.nan
        return EvalResult(step=step, table=table, summary=summary,
                          seconds=time.perf_counter() - start, images=images)

    @staticmethod
    def value_columns(table: pd.DataFrame) -> list[str]:
        """The columns that get means and CIs: loss terms and task metrics (not ids, preds or params)."""
        skip = {"step", "eval_index", "eval_batch", "row_in_batch"}
        return [c for c in table.columns
                if c not in skip and not str(c).startswith(PARAM_PREFIX)
                and not str(c).endswith(("pred_patch", "pred_control"))  # class ids, also "<model>.pred_*"
                and pd.api.types.is_numeric_dtype(table[c])]
