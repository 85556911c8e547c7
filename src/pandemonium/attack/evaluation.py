"""Fixed evaluation: the same conditions at every evaluation, scored patched and against baselines.

``FixedEvaluation`` draws the evaluation conditions (scenes, positions, augmentations) **once** from
its seed, by running the pipeline with ``evaluate=True`` and recording
``pipeline.get_last_sample_as_dict()`` per batch. Scenes are drawn **without replacement** where the
held-out split has enough of them (otherwise every scene appears about equally often and a
:class:`~pandemonium.attack.statistics.RepeatedScenesWarning` says so). Every evaluation replays those
params for four arms (:data:`pandemonium.attack.success.summary.ARMS`): the patch, no patch
(control), a uniform-noise patch and a grey patch of the same size. The baselines do not depend on
the patch, so they are computed once and reused.

Results are a per-row table (``scene_id``; loss terms ``<k>_patch``, ``<k>_control``, ``<k>_delta``;
success counts ``<rate>_hits`` / ``<rate>_trials`` per arm from the task type's success metric, see
:mod:`pandemonium.attack.success`; the sampled params as ``param:<key>`` columns) and a summary:
rates of every arm with intervals, paired differences patched - baseline, counts, all from a
bootstrap over scenes (:mod:`pandemonium.attack.statistics`).

Any row of the saved table can be re-rendered exactly with :func:`pandemonium.attack.rows.render_row`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pandemonium.attack.checkpoint import isolated_rng
from pandemonium.attack.rows import (
    PARAM_PREFIX,
    expand_patch,
    final_stage_input,
    params_to_rows,
    pipeline_stages,
)
from pandemonium.attack.stages.model import ModelStage
from pandemonium.attack.statistics import summarize, warn_if_repeated_scenes
from pandemonium.attack.success.columns import task_metrics
from pandemonium.attack.success.summary import BASELINE_ARMS, arm_column, summarize_success

__all__ = [
    "EvalResult",
    "FixedEvaluation",
    "load_table",
    "save_table",
]

log = logging.getLogger(__name__)

SCENE_KEY = "image_index"


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


# ------------------------------------------------------------------------------------- evaluation
@dataclass
class EvalResult:
    """One evaluation: the per-row table and its summary (rates, baselines, intervals over scenes).

    ``split``: the name of the scenes' split (``"val"`` for selection, ``"test"`` for the report).
    """

    step: int
    table: pd.DataFrame
    summary: dict[str, float]
    seconds: float = 0.0
    images: dict[str, Any] = field(default_factory=dict)
    split: str = "eval"


def _weighted_per_sample(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    total = None
    for k, w in weights.items():
        t = terms[k].float() * float(w)
        total = t if total is None else total + t
    return total


def _baseline_patch(patch: Any, arm: str, generator: torch.Generator) -> Any:
    """A patch of the same shape as ``patch`` (a tensor or a dict of them): uniform noise or grey."""
    if isinstance(patch, torch.nn.Module):
        patch = patch()
    if isinstance(patch, Mapping):
        return {k: _baseline_patch(v, arm, generator) for k, v in patch.items()}
    patch = patch.detach()
    if arm == "grey":
        return torch.full_like(patch, 0.5)
    return torch.rand(patch.shape, generator=generator).to(device=patch.device, dtype=patch.dtype)


def _scene_pool(stage: Any, keys: list[str]) -> torch.Tensor | None:
    """The bank indices an implanter draws evaluation scenes from: its ``scene_pool(evaluate=True)``
    when it has one, else its bank's eval split restricted to the targets its params select from."""
    if callable(getattr(stage, "scene_pool", None)):
        return torch.as_tensor(stage.scene_pool(evaluate=True)).cpu()
    bank = getattr(stage, "bank", None)
    if bank is None or not callable(getattr(bank, "pool", None)):
        return None
    require = ("boxes" if any(k.endswith("box_choice") for k in keys)
               else "quads" if any(k.endswith("quad_choice") for k in keys) else None)
    return torch.as_tensor(bank.pool(True, require)).cpu()


def _numpy(value: torch.Tensor) -> np.ndarray:
    return value.detach().float().reshape(-1).cpu().numpy()


class FixedEvaluation:
    """Evaluation conditions drawn once from ``seed`` and replayed at every evaluation.

    Args:
        pipeline: the patch pipeline (``forward(x, control, evaluate, params, **kw) -> (y, kw)``).
        loss: ``loss(outputs, **kwargs) -> dict[str, Tensor(B)]``.
        weights: the optimised terms' weights (their weighted sum is logged as ``total``).
        num_eval: number of evaluation rows.
        batch_size: evaluation batch size.
        seed: seed of the evaluation conditions (independent of the training streams).
        target_class: target class for the targeted success rates.
        conf_threshold, iou_threshold: detection score threshold and matching IoU.
        baselines: also score the random-noise and grey patches (the control is always scored).
        split: name of the split the pipeline's evaluation scenes come from (recorded in results).
        task_type: the task type whose success metric scores the rows (default: from the output layout).
        baseline_arms: the patch-like baselines scored when ``baselines`` is on (``"random"``, ``"grey"``);
            each is drawn the same way whichever others are scored.
        rates: summarise only these success rates (with their baselines and paired differences) and no
            loss means: for callers that read one figure per evaluation (transfer matrix, robustness
            curves); each rate keeps the interval it has in a full summary. Default: everything.

    Example:
        >>> ev = FixedEvaluation(pipeline, loss, {"ce": 1.0}, num_eval=32, batch_size=16)  # doctest: +SKIP
        >>> result = ev.run(patch_module, step=0)                                          # doctest: +SKIP
        >>> result.summary["untargeted_success"], result.summary["untargeted_success_diff_vs_random"]  # doctest: +SKIP
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
        baselines: bool = True,
        split: str = "eval",
        task_type: str | None = None,
        baseline_arms: Sequence[str] = ("random", "grey"),
        rates: Sequence[str] | None = None,
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
        self.baselines = bool(baselines)
        self.split = str(split)
        self.task_type = task_type
        unknown = [arm for arm in baseline_arms if arm not in ("random", "grey")]
        if unknown:
            raise ValueError(f"FixedEvaluation: unknown baseline arms {unknown}; use 'random' and/or 'grey'")
        self.baseline_arms = tuple(baseline_arms)
        self.rates = None if rates is None else tuple(rates)
        self.conditions: list[dict[str, Any]] | None = None
        self.param_spec: dict[str, Any] = {}
        self._cache: list[dict[str, Any]] = []  # per batch: control outputs and baseline-arm columns
        self._warned = False

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
        stages = pipeline_stages(self.pipeline)
        # a final ModelStage draws nothing and is most of the cost: the pipeline stops before it
        skip_model = bool(stages) and type(stages[-1]) is ModelStage
        with isolated_rng(self.pipeline, seed=self.seed):
            for b in self.batch_sizes:
                x = expand_patch(patch, b)
                if skip_model:
                    final_stage_input(self.pipeline, x, evaluate=True)
                else:
                    self.pipeline(x, evaluate=True)
                conditions.append(dict(self.pipeline.get_last_sample_as_dict()))
        self.conditions = self._spread_scenes(conditions)
        self._cache = []
        return self.conditions

    def _spread_scenes(self, conditions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Redraw each implanter's scene indices without replacement from its held-out pool (cycling
        through a fresh permutation when there are more rows than scenes). Placement params are drawn
        independently of the scene, so the other params stay valid."""
        for position, stage in enumerate(pipeline_stages(self.pipeline)):
            prefix = self._prefix_of(position)
            key = f"{prefix}/{SCENE_KEY}" if prefix else SCENE_KEY
            if not conditions or key not in conditions[0]:
                continue
            pool = _scene_pool(stage, [k for k in conditions[0] if k.startswith(f"{prefix}/")])
            if pool is None or pool.numel() == 0:
                continue
            generator = torch.Generator().manual_seed(self.seed + 7919 * (position + 1))
            reps = -(-self.num_eval // max(1, pool.numel()))
            order = torch.cat([pool[torch.randperm(pool.numel(), generator=generator)] for _ in range(reps)])
            offset = 0
            for params in conditions:
                old = torch.as_tensor(params[key])
                params[key] = order[offset: offset + old.shape[0]].to(device=old.device, dtype=old.dtype)
                offset += old.shape[0]
        return conditions

    def _prefix_of(self, position: int) -> str | None:
        prefixes = getattr(self.pipeline, "prefixes", None)
        return prefixes[position] if prefixes is not None and position < len(prefixes) else None

    def _score(self, y: Any, y_control: Any, kwargs: Mapping[str, Any], arm: str) -> dict[str, np.ndarray]:
        metrics = task_metrics(y, y_control, kwargs.get("targets"), self.target_class, self.conf_threshold,
                               self.iou_threshold, task_type=self.task_type)
        cols: dict[str, np.ndarray] = {}
        for k, v in metrics.items():
            arr = _numpy(torch.as_tensor(v))
            for part in ("_hits", "_trials"):
                if k.endswith(part):
                    stem = k[: -len(part)]
                    cols[f"{arm_column(stem, arm)}{part}"] = arr
                    break
            else:
                cols[arm_column(k, arm)] = arr
        if arm == "patch":  # the per-row fraction of each rate, for plots and quick looks
            for k in [c for c in cols if c.endswith("_hits")]:
                hits, trials = cols[k], cols[f"{k[:-5]}_trials"]
                with np.errstate(invalid="ignore", divide="ignore"):
                    cols[k[:-5]] = np.where(trials > 0, hits / np.where(trials > 0, trials, 1.0), np.nan)
        return cols

    def _baseline_batch(self, b_idx: int, patch: Any, b: int, params: Mapping[str, Any]) -> dict[str, Any]:
        """Control outputs/terms and the random / grey arms' columns of one batch (cached: they do not
        depend on the patch)."""
        if b_idx < len(self._cache):
            return self._cache[b_idx]
        x = expand_patch(patch, b)
        y_c, kw_c = self.pipeline(x, evaluate=True, control=True, params=params)
        entry: dict[str, Any] = {"y_control": y_c, "kw_control": kw_c, "terms_control": self.loss(y_c, **kw_c)}
        cols = self._score(y_c, y_c, kw_c, "control")
        if self.baselines:
            generator = torch.Generator().manual_seed(self.seed + 104729)
            for arm in self.baseline_arms:
                base = expand_patch(_baseline_patch(patch, arm, generator), b)
                y_a, kw_a = self.pipeline(base, evaluate=True, params=params)
                cols.update(self._score(y_a, y_c, kw_a, arm))
        entry["columns"] = cols
        self._cache.append(entry)
        return entry

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
            x = expand_patch(patch, b)
            base = self._baseline_batch(b_idx, patch, b, params)
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
                else:
                    y_p, kw_p = self.pipeline(x, evaluate=True, params=params)
                    if keep_images and b_idx == 0:  # the control image for the kept examples
                        self.pipeline(x, evaluate=True, control=True, params=params)
            finally:
                if handle is not None:
                    handle.remove()
            if len(captured) >= 2 and isinstance(captured[0], torch.Tensor):
                images = {"patched": captured[0][:keep_images].detach().cpu(),
                          "control": captured[1][:keep_images].detach().cpu()}
            terms_p = self.loss(y_p, **kw_p)
            terms_c = base["terms_control"]
            targets = kw_p.get("targets") or {}
            scene = targets.get(SCENE_KEY) if isinstance(targets, Mapping) else None
            cols: dict[str, Any] = {
                "eval_index": np.arange(offset, offset + b),
                "eval_batch": np.full(b, b_idx),
                "row_in_batch": np.arange(b),
                "scene_id": _numpy(torch.as_tensor(scene)).astype(np.int64) if scene is not None
                else np.arange(offset, offset + b),
            }
            for k in terms_p:
                tp, tc = _numpy(terms_p[k]), _numpy(terms_c[k])
                cols[f"{k}_patch"], cols[f"{k}_control"], cols[f"{k}_delta"] = tp, tc, tp - tc
            if self.weights:
                tot_p = _numpy(_weighted_per_sample(terms_p, self.weights))
                tot_c = _numpy(_weighted_per_sample(terms_c, self.weights))
                cols["total_patch"], cols["total_control"], cols["total_delta"] = tot_p, tot_c, tot_p - tot_c
            cols.update(self._score(y_p, base["y_control"], kw_p, "patch"))
            cols.update(base["columns"])
            pcols, spec = params_to_rows(params, b)
            self.param_spec.update(spec)
            cols.update(pcols)
            frames.append(pd.DataFrame(cols))
            offset += b
        table = pd.concat(frames, ignore_index=True)
        table.insert(0, "step", step)
        table.attrs["param_spec"] = dict(self.param_spec)
        table.attrs["split"] = self.split
        summary = self.summarize(table)
        return EvalResult(step=step, table=table, summary=summary,
                          seconds=time.perf_counter() - start, images=images, split=self.split)

    def summarize(self, table: pd.DataFrame) -> dict[str, float]:
        """Means of loss columns and rates of every arm, all with intervals over ``scene_id``."""
        scenes = table["scene_id"].to_numpy() if "scene_id" in table else None
        n_scenes = int(pd.unique(scenes).size) if scenes is not None else len(table)
        if not self._warned:
            self._warned = warn_if_repeated_scenes(len(table), n_scenes, f"evaluation on the {self.split} split")
        summary = {} if self.rates is not None else summarize(table, self.value_columns(table), seed=self.seed,
                                                               scenes=scenes)
        summary.update(summarize_success(table, scenes, seed=self.seed, only=self.rates))
        summary["n_rows"], summary["n_scenes"] = float(len(table)), float(n_scenes)
        return summary

    @staticmethod
    def value_columns(table: pd.DataFrame) -> list[str]:
        """Columns summarised as means: loss terms and other per-row values (not ids, params, or the
        success counts, which :func:`summarize_success` turns into rates)."""
        skip = {"step", "eval_index", "eval_batch", "row_in_batch", "scene_id"}
        counted = {str(c)[:-5] for c in table.columns if str(c).endswith("_hits")}
        return [c for c in table.columns
                if c not in skip and not str(c).startswith(PARAM_PREFIX)
                and not str(c).endswith(("_hits", "_trials")) and str(c) not in counted
                and not any(str(c) == f"{n}_{arm}" for n in counted for arm in BASELINE_ARMS)
                and pd.api.types.is_numeric_dtype(table[c])]
