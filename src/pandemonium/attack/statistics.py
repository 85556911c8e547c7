"""Rates, means and paired differences with intervals from a bootstrap over scenes.

The unit that was drawn is the **scene** (one image of the evaluation split): the conditions of one
scene share its content, so its rows are not independent. Every interval here resamples scenes
(``scipy.stats.bootstrap``, percentile method, seeded), not rows. A rate is a ratio estimator
``sum(hits) / sum(trials)`` over the resampled scenes, so per-image fractions (objects, pixels) are
weighted by how many trials they stand for.

Never a zero-width interval for a rate: where the bootstrap cannot spread (a rate of exactly 0 or 1,
a single scene, every scene alike) the Wilson score interval with ``n = number of scenes`` is used
instead (one scene gives the interval of one observation). A paired difference falls back to
Newcombe's hybrid score interval built from the two Wilson intervals.

>>> import numpy as np
>>> iv = rate_interval(hits=[1, 0, 1, 1], trials=[1, 1, 1, 1], scenes=[0, 1, 2, 3])
>>> iv.value, iv.n_scenes
(0.75, 4)
>>> rate_interval([0, 0, 0], [1, 1, 1]).ci_high > 0   # no [0, 0] interval at a rate of 0
True
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from scipy import stats

from pandemonium.errors import PandemoniumError

__all__ = [
    "CONFIDENCE_LEVEL",
    "N_RESAMPLES",
    "Interval",
    "RepeatedScenesWarning",
    "StatisticsError",
    "bootstrap_ci",
    "mean_interval",
    "mean_rate_interval",
    "newcombe_interval",
    "paired_difference",
    "rate_interval",
    "scene_bootstrap",
    "standard_error",
    "summarize",
    "warn_if_repeated_scenes",
    "wilson_interval",
]

log = logging.getLogger(__name__)

CONFIDENCE_LEVEL = 0.95
N_RESAMPLES = 1000


class StatisticsError(PandemoniumError, ValueError):
    """Inputs of a rate / interval do not fit together (lengths, values outside [0, trials])."""


class RepeatedScenesWarning(UserWarning):
    """More evaluation rows than distinct scenes: the rows are not independent draws."""


@dataclass(frozen=True)
class Interval:
    """A point estimate with its interval and the counts behind it.

    ``n_rows``: rows with at least one trial; ``n_scenes``: distinct scenes among them; ``trials``:
    the summed denominator; ``method``: ``"bootstrap"`` (over scenes), ``"wilson"`` or ``"newcombe"``.
    """

    value: float
    ci_low: float
    ci_high: float
    n_rows: int
    n_scenes: int
    trials: float
    method: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def wilson_interval(successes: float, trials: float, confidence: float = CONFIDENCE_LEVEL) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; ``successes`` may be fractional.

    >>> lo, hi = wilson_interval(8, 10)
    >>> round(lo, 3), round(hi, 3)
    (0.49, 0.943)
    """
    if trials <= 0:
        return math.nan, math.nan
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(max(p * (1 - p), 0.0) / trials + z * z / (4 * trials * trials)) / denom
    # the bounds are exactly 0 and 1 at p = 0 and p = 1; floating point leaves ~1e-18 there
    low = 0.0 if successes <= 0 else max(0.0, centre - half)
    high = 1.0 if successes >= trials else min(1.0, centre + half)
    return low, high


def newcombe_interval(p_a: float, n_a: float, p_b: float, n_b: float,
                      confidence: float = CONFIDENCE_LEVEL) -> tuple[float, float]:
    """Newcombe's hybrid score interval of ``p_a - p_b`` from the two Wilson intervals."""
    lo_a, hi_a = wilson_interval(p_a * n_a, n_a, confidence)
    lo_b, hi_b = wilson_interval(p_b * n_b, n_b, confidence)
    d = p_a - p_b
    return (d - math.sqrt((p_a - lo_a) ** 2 + (hi_b - p_b) ** 2),
            d + math.sqrt((hi_a - p_a) ** 2 + (p_b - lo_b) ** 2))


def warn_if_repeated_scenes(n_rows: int, n_scenes: int, where: str = "evaluation") -> bool:
    """Warn (``RepeatedScenesWarning`` and the log) when rows outnumber distinct scenes; True if so."""
    if n_rows > n_scenes > 0:
        message = (f"{where}: {n_rows} rows come from only {n_scenes} distinct scenes; intervals resample "
                   "scenes, so they are wider than the row count suggests (use more held-out scenes)")
        log.warning(message)
        warnings.warn(message, RepeatedScenesWarning, stacklevel=2)
        return True
    return False


# ------------------------------------------------------------------------------------- internals
def _column(values: Any, n: int | None, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if n is not None and arr.size != n:
        raise StatisticsError(f"{name} has {arr.size} rows, expected {n}")
    return arr


def _scene_codes(scenes: Any, n: int) -> np.ndarray:
    """Scene labels -> codes 0..k-1; no labels means every row is its own scene."""
    if scenes is None:
        return np.arange(n)
    labels = np.asarray(scenes).reshape(-1)
    if labels.size != n:
        raise StatisticsError(f"scenes has {labels.size} rows, expected {n} (one scene id per row)")
    _, codes = np.unique(labels.astype(str) if labels.dtype == object else labels, return_inverse=True)
    return codes.reshape(-1)


def _per_scene(codes: np.ndarray, *columns: np.ndarray) -> list[np.ndarray]:
    k = int(codes.max()) + 1 if codes.size else 0
    return [np.bincount(codes, weights=c, minlength=k) for c in columns]


def _bootstrap(statistic: Callable[[np.ndarray], np.ndarray], n_scenes: int, confidence: float,
               n_resamples: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap of ``statistic(scene_index_resamples)`` over ``n_scenes`` scenes."""
    if n_scenes < 2:
        return math.nan, math.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        res = stats.bootstrap(
            (np.arange(n_scenes),), lambda idx, axis=-1: statistic(idx), vectorized=True,
            n_resamples=n_resamples, confidence_level=confidence, method="percentile",
            random_state=np.random.default_rng(seed),
        )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def scene_bootstrap(statistic: Callable[[np.ndarray], np.ndarray], n_scenes: int,
                    confidence: float = CONFIDENCE_LEVEL, n_resamples: int = N_RESAMPLES,
                    seed: int = 0) -> tuple[float, float]:
    """Percentile interval of any statistic of resampled scenes: ``statistic`` maps scene-index
    resamples ``(..., n_scenes)`` to one value each (vectorised); ``(nan, nan)`` below 2 scenes."""
    return _bootstrap(statistic, n_scenes, confidence, n_resamples, seed)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _nan_interval(n_rows: int = 0, n_scenes: int = 0, trials: float = 0.0) -> Interval:
    return Interval(math.nan, math.nan, math.nan, n_rows, n_scenes, trials, "none")


def _spread(lo: float, hi: float) -> bool:
    return math.isfinite(lo) and math.isfinite(hi) and hi > lo


# ------------------------------------------------------------------------------------------- API
def rate_interval(
    hits: Sequence[float] | np.ndarray,
    trials: Sequence[float] | np.ndarray | None = None,
    scenes: Sequence[Any] | np.ndarray | None = None,
    confidence: float = CONFIDENCE_LEVEL,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Rate ``sum(hits) / sum(trials)`` with a bootstrap interval over scenes.

    Args:
        hits: successes per row (0 <= hits <= trials; fractional allowed).
        trials: trials per row (default 1 each); rows with 0 trials, or a NaN, are left out.
        scenes: scene id per row (default: every row its own scene).
        confidence, n_resamples, seed: of the percentile bootstrap (seeded, so reproducible).

    >>> rate_interval([1, 1, 0, 0], scenes=["a", "a", "b", "b"]).n_scenes
    2
    """
    h = _column(hits, None, "hits")
    t = np.ones_like(h) if trials is None else _column(trials, h.size, "trials")
    codes = _scene_codes(scenes, h.size)
    keep = np.isfinite(h) & np.isfinite(t) & (t > 0)
    h, t, codes = h[keep], t[keep], codes[keep]
    if np.any(h < 0) or np.any(h > t + 1e-9):
        raise StatisticsError("hits must lie in [0, trials] for every row")
    if h.size == 0:
        return _nan_interval()
    _, codes = np.unique(codes, return_inverse=True)
    n_scenes = int(codes.max()) + 1
    total = float(t.sum())
    value = float(h.sum() / total)
    scene_h, scene_t = _per_scene(codes, h, t)
    lo = hi = math.nan
    if 0.0 < value < 1.0:
        lo, hi = _bootstrap(lambda i: _ratio(scene_h[i].sum(-1), scene_t[i].sum(-1)), n_scenes, confidence,
                            n_resamples, seed)
    if _spread(lo, hi):
        return Interval(value, lo, hi, int(h.size), n_scenes, total, "bootstrap")
    lo, hi = wilson_interval(value * n_scenes, n_scenes, confidence)
    return Interval(value, lo, hi, int(h.size), n_scenes, total, "wilson")


def paired_difference(
    hits_a: Sequence[float] | np.ndarray,
    trials_a: Sequence[float] | np.ndarray,
    hits_b: Sequence[float] | np.ndarray,
    trials_b: Sequence[float] | np.ndarray,
    scenes: Sequence[Any] | np.ndarray | None = None,
    confidence: float = CONFIDENCE_LEVEL,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Difference of two rates measured on the same rows (e.g. patched - random patch).

    Both rates are recomputed on the same resampled scenes, so what the two arms share (the scene)
    cancels out of the interval.

    >>> d = paired_difference([1, 1, 1, 0], [1, 1, 1, 1], [0, 1, 0, 0], [1, 1, 1, 1])
    >>> d.value
    0.5
    """
    ha = _column(hits_a, None, "hits_a")
    n = ha.size
    ta, hb, tb = _column(trials_a, n, "trials_a"), _column(hits_b, n, "hits_b"), _column(trials_b, n, "trials_b")
    codes = _scene_codes(scenes, n)
    ta = np.where(np.isfinite(ha) & np.isfinite(ta), ta, 0.0)
    tb = np.where(np.isfinite(hb) & np.isfinite(tb), tb, 0.0)
    ha, hb = np.nan_to_num(ha) * (ta > 0), np.nan_to_num(hb) * (tb > 0)
    keep = (ta > 0) | (tb > 0)
    ha, ta, hb, tb, codes = ha[keep], ta[keep], hb[keep], tb[keep], codes[keep]
    if ta.sum() <= 0 or tb.sum() <= 0:
        return _nan_interval(int(keep.sum()))
    _, codes = np.unique(codes, return_inverse=True)
    n_scenes = int(codes.max()) + 1
    p_a, p_b = float(ha.sum() / ta.sum()), float(hb.sum() / tb.sum())
    sa_h, sa_t, sb_h, sb_t = _per_scene(codes, ha, ta, hb, tb)
    lo, hi = _bootstrap(
        lambda i: _ratio(sa_h[i].sum(-1), sa_t[i].sum(-1)) - _ratio(sb_h[i].sum(-1), sb_t[i].sum(-1)),
        n_scenes, confidence, n_resamples, seed,
    )
    trials = float(ta.sum())
    if _spread(lo, hi):
        return Interval(p_a - p_b, lo, hi, int(ha.size), n_scenes, trials, "bootstrap")
    lo, hi = newcombe_interval(p_a, n_scenes, p_b, n_scenes, confidence)
    return Interval(p_a - p_b, lo, hi, int(ha.size), n_scenes, trials, "newcombe")


def mean_interval(
    values: Sequence[float] | np.ndarray,
    scenes: Sequence[Any] | np.ndarray | None = None,
    confidence: float = CONFIDENCE_LEVEL,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Mean of unbounded per-row values (loss terms) with a bootstrap interval over scenes.

    Unlike a rate there is no score interval to fall back to: identical values give zero width,
    which is then the honest answer.
    """
    v = _column(values, None, "values")
    codes = _scene_codes(scenes, v.size)
    keep = np.isfinite(v)
    v, codes = v[keep], codes[keep]
    if v.size == 0:
        return _nan_interval()
    _, codes = np.unique(codes, return_inverse=True)
    n_scenes = int(codes.max()) + 1
    scene_sum, scene_n = _per_scene(codes, v, np.ones_like(v))
    lo, hi = _bootstrap(lambda i: _ratio(scene_sum[i].sum(-1), scene_n[i].sum(-1)), n_scenes, confidence,
                        n_resamples, seed)
    return Interval(float(v.mean()), lo, hi, int(v.size), n_scenes, float(v.size), "bootstrap")


def mean_rate_interval(
    hits: Sequence[Sequence[float] | np.ndarray],
    trials: Sequence[Sequence[float] | np.ndarray],
    scenes: Sequence[Any] | np.ndarray | None = None,
    confidence: float = CONFIDENCE_LEVEL,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Mean over groups of per-group rates (e.g. mIoU: the mean of class IoUs, each intersection /
    union summed over rows), with a bootstrap over scenes; groups without trials are left out.

    >>> round(mean_rate_interval([[1, 1], [0, 2]], [[2, 2], [2, 2]]).value, 3)   # (2/4 + 2/4) / 2
    0.5
    """
    if len(hits) != len(trials) or not hits:
        raise StatisticsError(f"mean_rate_interval: {len(hits)} hit groups for {len(trials)} trial groups")
    h = np.stack([_column(v, None, "hits") for v in hits])
    n = h.shape[1]
    t = np.stack([_column(v, n, "trials") for v in trials])
    ok = np.isfinite(h) & np.isfinite(t) & (t > 0)
    h, t = np.where(ok, h, 0.0), np.where(ok, t, 0.0)
    keep = t.sum(0) > 0
    codes = _scene_codes(scenes, n)[keep]
    h, t = h[:, keep], t[:, keep]
    if h.shape[1] == 0:
        return _nan_interval()
    _, codes = np.unique(codes, return_inverse=True)
    n_scenes = int(codes.max()) + 1
    value = float(np.nanmean(_ratio(h.sum(1), t.sum(1))))
    scene_h = np.stack(_per_scene(codes, *h))  # (groups, scenes)
    scene_t = np.stack(_per_scene(codes, *t))

    def statistic(idx: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():  # a resample may miss every scene of a class: NaN, then left out
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(_ratio(scene_h[:, idx].sum(-1), scene_t[:, idx].sum(-1)), axis=0)

    lo = hi = math.nan
    if 0.0 < value < 1.0:
        lo, hi = _bootstrap(statistic, n_scenes, confidence, n_resamples, seed)
    total = float(t.sum())
    if _spread(lo, hi):
        return Interval(value, lo, hi, int(h.shape[1]), n_scenes, total, "bootstrap")
    lo, hi = wilson_interval(value * n_scenes, n_scenes, confidence)
    return Interval(value, lo, hi, int(h.shape[1]), n_scenes, total, "wilson")


# ----------------------------------------------------------------------- per-column summaries of a table
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
    n_resamples: int = N_RESAMPLES,
    confidence_level: float = CONFIDENCE_LEVEL,
    scenes: Any = None,
) -> tuple[float, float]:
    """Bootstrap interval of the mean of the non-NaN ``values`` (over ``scenes`` when given, else rows);
    :func:`mean_interval` does the work. (NaN, NaN) for fewer than 2.

    >>> lo, hi = bootstrap_ci([0.0, 1.0, 1.0, 0.0, 1.0], seed=0)
    >>> 0.0 <= lo <= 0.6 <= hi <= 1.0
    True
    """
    iv = mean_interval(values, scenes, confidence_level, n_resamples, seed)
    return (iv.ci_low, iv.ci_high)


def summarize(table: Any, columns: list[str], seed: int = 0, scenes: Any = None) -> dict[str, float]:
    """``<col>`` (mean over non-NaN), ``<col>_se``, ``<col>_ci_low``, ``<col>_ci_high``, ``<col>_n``;
    intervals resample ``scenes`` (one id per row) when given."""
    out: dict[str, float] = {}
    for i, col in enumerate(columns):
        values = table[col].to_numpy(dtype=np.float64)
        iv = mean_interval(values, scenes, seed=seed + i)
        out[col] = iv.value
        out[f"{col}_se"] = standard_error(values)
        out[f"{col}_ci_low"] = iv.ci_low
        out[f"{col}_ci_high"] = iv.ci_high
        out[f"{col}_n"] = float(iv.n_rows)
    return out
