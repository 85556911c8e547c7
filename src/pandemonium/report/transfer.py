"""Attack-success statistics: per-sample success, transfer matrices and robustness curves.

Everything here is a pure function of arrays / DataFrames, so the `evaluate` mode, the report and
the tests share one definition of "success" and one way of computing its confidence interval.

Per-sample records are rows ``(patch_id, model_id, success, weight, <condition columns>)``:

- ``success`` in [0, 1]: for classification 0/1; for detection the fraction of the objects the
  model found without the patch that it no longer finds with it; for segmentation the fraction of
  flipped pixels.
- ``weight``: how many trials the row stands for (1 for classification, number of objects /
  pixels otherwise). Rows with weight 0 (nothing to attack, e.g. the control was already wrong)
  are dropped from rates.

Rates are ``sum(success * weight) / sum(weight)``. Confidence intervals: the Wilson score interval
when every row is a single 0/1 trial (exact-ish at small n and at rates of 0 or 1, where a
bootstrap collapses), otherwise a percentile bootstrap that resamples *rows* (images), because
objects / pixels of one image are not independent.

>>> import pandas as pd
>>> rec = pd.DataFrame({"patch_id": ["p"] * 4, "model_id": ["m"] * 4, "success": [1, 1, 1, 0]})
>>> float(transfer_matrix(rec)["rate"].iloc[0])
0.75
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from pandemonium.boxes import box_iou

__all__ = [
    "RateSummary",
    "summarise_rate",
    "wilson_interval",
    "classification_success",
    "detection_disappearance",
    "segmentation_flip",
    "transfer_matrix",
    "matrix_pivot",
    "robustness_curve",
    "success_from_eval_table",
]


@dataclass(frozen=True)
class RateSummary:
    """A rate with its confidence interval and the number of trials / rows behind it."""

    rate: float
    ci_low: float
    ci_high: float
    n: int
    trials: float

    def as_dict(self) -> dict[str, float]:
        return {"rate": self.rate, "ci_low": self.ci_low, "ci_high": self.ci_high, "n": self.n,
                "trials": self.trials}


def wilson_interval(successes: float, trials: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (``trials`` > 0).

    >>> lo, hi = wilson_interval(8, 10)
    >>> round(lo, 3), round(hi, 3)
    (0.49, 0.943)
    """
    if trials <= 0:
        return float("nan"), float("nan")
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def summarise_rate(
    success: Sequence[float] | np.ndarray,
    weight: Sequence[float] | np.ndarray | None = None,
    confidence: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> RateSummary:
    """Weighted success rate with a confidence interval (see the module docstring).

    The bootstrap draws from ``numpy.random.default_rng(seed)``, so a summary is reproducible.
    """
    s = np.asarray(success, dtype=float).reshape(-1)
    w = np.ones_like(s) if weight is None else np.asarray(weight, dtype=float).reshape(-1)
    if s.shape != w.shape:
        raise ValueError(f"success has {s.size} rows but weight has {w.size}")
    keep = (w > 0) & np.isfinite(s) & np.isfinite(w)
    s, w = s[keep], w[keep]
    if s.size == 0:
        nan = float("nan")
        return RateSummary(nan, nan, nan, 0, 0.0)
    if np.any((s < 0) | (s > 1)):
        raise ValueError("success values must lie in [0, 1]")
    trials = float(w.sum())
    rate = float((s * w).sum() / trials)
    binary = np.all(w == 1) and np.all((s == 0) | (s == 1))
    if binary:
        lo, hi = wilson_interval(float(s.sum()), trials, confidence)
    else:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, s.size, size=(n_boot, s.size))
        ws = w[idx]
        rates = (s[idx] * ws).sum(1) / np.maximum(ws.sum(1), 1e-12)
        alpha = (1 - confidence) / 2
        lo, hi = (float(v) for v in np.quantile(rates, [alpha, 1 - alpha]))
    return RateSummary(rate, lo, hi, int(s.size), trials)


# --------------------------------------------------------------------------- per-sample success


def _argmax_labels(pred: torch.Tensor) -> torch.Tensor:
    return pred.argmax(dim=1) if pred.dim() > 1 else pred.long()


def classification_success(
    pred_patch: torch.Tensor,
    pred_control: torch.Tensor,
    labels: torch.Tensor,
    target_class: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample attack success for classifiers; logits ``(B, C)`` or predicted labels ``(B,)``.

    Untargeted: a trial is a sample the model gets right without the patch; success when the
    patched prediction is wrong. Targeted: a trial is a sample whose true class is not the target;
    success when the patched prediction is the target class.
    Returns ``(success, weight)`` as float arrays of length B.

    >>> import torch
    >>> s, w = classification_success(torch.tensor([2, 2, 0]), torch.tensor([0, 1, 0]),
    ...                               torch.tensor([0, 1, 2]), target_class=2)
    >>> s.tolist(), w.tolist()
    ([1.0, 1.0, 0.0], [1.0, 1.0, 0.0])
    """
    yp = _argmax_labels(pred_patch).cpu()
    yc = _argmax_labels(pred_control).cpu()
    y = labels.long().reshape(-1).cpu()
    if target_class is None:
        weight = (yc == y).float()
        success = (yp != y).float()
    else:
        weight = (y != int(target_class)).float()
        success = (yp == int(target_class)).float()
    return (success * weight).numpy(), weight.numpy()


def _found(pred_boxes: torch.Tensor, scores: torch.Tensor, gt: torch.Tensor, score_thr: float,
           iou_thr: float) -> torch.Tensor:
    """Which ground-truth boxes have a prediction above ``score_thr`` overlapping them by ``iou_thr``."""
    if gt.numel() == 0:
        return torch.zeros(0, dtype=torch.bool)
    keep = scores >= score_thr
    if not bool(keep.any()):
        return torch.zeros(gt.shape[0], dtype=torch.bool)
    return (box_iou(gt.float(), pred_boxes[keep].float()) >= iou_thr).any(dim=1)


def detection_disappearance(
    out_patch: dict[str, torch.Tensor],
    out_control: dict[str, torch.Tensor],
    gt_boxes: Sequence[torch.Tensor] | None = None,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image disappearance for detectors in the shared layout (``boxes``, ``objectness``).

    With ground-truth boxes: the trials of an image are the objects found without the patch;
    success is the fraction of those not found with it. Without boxes: one trial per image that has
    any detection without the patch, success when the patched image has none.
    """
    scores_p, scores_c = out_patch["objectness"].detach().cpu(), out_control["objectness"].detach().cpu()
    if gt_boxes is None:
        weight = (scores_c.amax(dim=1) >= score_threshold).float()
        success = (scores_p.amax(dim=1) < score_threshold).float()
        return (success * weight).numpy(), weight.numpy()
    boxes_p, boxes_c = out_patch["boxes"].detach().cpu(), out_control["boxes"].detach().cpu()
    success = np.zeros(scores_p.shape[0])
    weight = np.zeros(scores_p.shape[0])
    for i, gt in enumerate(gt_boxes):
        gt = gt.detach().cpu().reshape(-1, 4)
        found_c = _found(boxes_c[i], scores_c[i], gt, score_threshold, iou_threshold)
        n = int(found_c.sum())
        if n == 0:
            continue
        found_p = _found(boxes_p[i], scores_p[i], gt, score_threshold, iou_threshold)
        weight[i] = n
        success[i] = float((found_c & ~found_p).sum()) / n
    return success, weight


def segmentation_flip(
    logits_patch: torch.Tensor,
    logits_control: torch.Tensor,
    mask: torch.Tensor,
    ignore: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image pixel flip rate: of the pixels right without the patch (outside ``ignore``, e.g. the
    patch itself), the fraction that are wrong with it. Weight = number of such pixels."""
    yp = logits_patch.argmax(1).cpu()
    yc = logits_control.argmax(1).cpu()
    m = mask.long().cpu()
    valid = yc == m
    if ignore is not None:
        valid &= ~ignore.bool().cpu().reshape(valid.shape)
    flipped = valid & (yp != m)
    weight = valid.flatten(1).sum(1).float()
    success = flipped.flatten(1).sum(1).float() / weight.clamp(min=1)
    return success.numpy(), weight.numpy()


# --------------------------------------------------------------------------- aggregation


def _check_columns(records: pd.DataFrame, needed: Sequence[str]) -> None:
    missing = [c for c in needed if c not in records.columns]
    if missing:
        raise KeyError(f"records lack column(s) {missing}; have {list(records.columns)}")


def _grouped_rates(records: pd.DataFrame, by: list[str], confidence: float, n_boot: int,
                   seed: int) -> pd.DataFrame:
    rows = []
    for key, group in records.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        weight = group["weight"] if "weight" in group else None
        summary = summarise_rate(group["success"], weight, confidence, n_boot, seed)
        rows.append({**dict(zip(by, key)), **summary.as_dict()})
    return pd.DataFrame(rows, columns=[*by, "rate", "ci_low", "ci_high", "n", "trials"])


def transfer_matrix(
    records: pd.DataFrame,
    confidence: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Long table ``(patch_id, model_id, rate, ci_low, ci_high, n, trials)`` from per-sample records.

    Extra identifying columns (``patch_task``, ``model_task``) are carried along when present.
    """
    _check_columns(records, ["patch_id", "model_id", "success"])
    by = ["patch_id", "model_id"] + [c for c in ("patch_task", "model_task") if c in records]
    return _grouped_rates(records, by, confidence, n_boot, seed)


def matrix_pivot(table: pd.DataFrame, value: str = "rate") -> pd.DataFrame:
    """Patches as rows, models as columns, ``value`` in the cells (NaN where a pair was not run)."""
    _check_columns(table, ["patch_id", "model_id", value])
    return table.pivot(index="patch_id", columns="model_id", values=value)


def robustness_curve(
    records: pd.DataFrame,
    condition: str,
    confidence: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Rate per value of a swept ``condition`` (e.g. ``scale`` or ``angle``) for each patch × model.

    Returns ``(patch_id, model_id, <condition>, rate, ci_low, ci_high, n, trials)`` sorted by the
    condition, ready to plot as one line per patch × model.
    """
    _check_columns(records, ["patch_id", "model_id", "success", condition])
    return _grouped_rates(records, ["patch_id", "model_id", condition], confidence, n_boot, seed)


def success_from_eval_table(table: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """``(success, weight)`` per row of a fixed-evaluation table (``pandemonium.attack.evaluation``).

    NaN marks a sample with nothing to attack (e.g. the control was already wrong): weight 0.
    ``disappearance`` is a per-image fraction of the control's detections, so its weight is the
    number of those detections (the rate is then the object-level disappearance rate).
    """
    if metric not in table.columns:
        raise KeyError(f"evaluation table has no column {metric!r}; columns: {list(table.columns)}")
    values = table[metric].to_numpy(dtype=float)
    finite = np.isfinite(values)
    success = np.where(finite, values, 0.0)
    if metric == "disappearance" and "detections_control" in table.columns:
        weight = np.where(finite, table["detections_control"].to_numpy(dtype=float), 0.0)
    else:
        weight = finite.astype(float)
    return np.clip(success, 0.0, 1.0), weight
