"""The patch-fitting step shared by the attack-like modes."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pandemonium.attack.multitask import MultiTaskLoss, MultiTaskPipeline
from pandemonium.attack.presets import (
    AttackConfigError,
    build_loss,
    build_patch,
    build_task_pipeline,
    patch_shape_for,
    success_metric,
)
from pandemonium.modes.steps import UNIVERSAL_TASK
from pandemonium.plain import to_plain
from pandemonium.runs.base import AbstractBaseScheduler

log = logging.getLogger(__name__)


@dataclass
class FitOutcome:
    """What :func:`fit_patch` hands to the scheduler for storing."""

    patch: Any
    summary: dict[str, Any]
    curves: Any
    pipeline_configs: dict[str, Any]
    presets: dict[str, Any]
    checkpoint: Path | None
    run_id: str | None


def _curves_frame(history: list[dict[str, float]], evals: list[dict[str, float]]) -> Any:
    """One wide table: training terms per step, evaluation metrics (``eval_<name>``) at their steps."""
    import pandas as pd

    train = pd.DataFrame(history)
    interesting = ("success", "disappearance", "pixel_flip", "prediction_changed", "total_patch")
    keep = [c for c in (evals[0].keys() if evals else []) if c != "step" and any(w in c for w in interesting)
            and not c.endswith(("_se", "_ci_low", "_ci_high", "_n"))]
    ev = pd.DataFrame([{"step": e["step"], **{f"eval_{k}": e[k] for k in keep}} for e in evals])
    if train.empty:
        return ev
    if ev.empty:
        return train
    return train.merge(ev, on="step", how="outer").sort_values("step").reset_index(drop=True)


def _fit_dir(scheduler: AbstractBaseScheduler, owner: str) -> Path:
    """The trainer's folder for one fit (checkpoints, eval tables, TensorBoard). Recorded in the run
    directory so that ``continue`` resumes an interrupted fit from its last checkpoint."""
    record = scheduler.run_dir / "attack_fits.json"
    fits = json.loads(record.read_text()) if record.exists() else {}
    if owner in fits:
        return Path(fits[owner])
    marker = scheduler.fm.construct_saving_path(obj=None, key="patch_checkpoints", task_name=owner,
                                                file_name="fit.txt")
    marker.write_text(f"patch fit of {owner}, run {scheduler.run_dir}\n")
    folder = marker.with_suffix("")
    fits[owner] = str(folder)
    record.write_text(json.dumps(fits, indent=1))
    return folder


def fit_patch(scheduler: AbstractBaseScheduler, members: list[tuple[Any, Any, dict, dict]], name: str,
              callbacks: Sequence[Any] = ()) -> FitOutcome:
    """Fit one patch against the (struct, model, model meta, preset) members with PatchTrainer
    (``callbacks``: trainer hooks, e.g. the tune mode's pruning)."""
    from pandemonium.attack.trainer import PatchTrainer

    cfg = scheduler.cfg
    seed = int(scheduler.step_seed if scheduler.step_seed is not None else cfg.seed)
    pipelines, losses, weights, presets = {}, {}, {}, {}
    lead = members[0][3]
    for struct, model, _meta, preset in members:
        presets[struct.name] = preset
        pipelines[struct.name] = build_task_pipeline(preset, struct, model, cfg.data_dir, seed, int(cfg.get("fold", 0)))
        losses[struct.name] = build_loss(preset, struct.name)
        weights[struct.name] = {str(k): float(v) for k, v in (preset.get("weights") or {}).items()}
    universal = len(members) > 1 or name == UNIVERSAL_TASK
    shape = patch_shape_for(lead, members[0][0].image_size, members[0][0].channels, members[0][0].name)
    if universal:
        pipeline = MultiTaskPipeline(pipelines)
        loss = MultiTaskLoss(losses)
        all_weights = {f"{t}/{k}": v for t, w in weights.items() for k, v in w.items()}
        metric, mode, target_class = "total_patch", "min", None
    else:
        struct = members[0][0]
        pipeline, loss, all_weights = pipelines[struct.name], losses[struct.name], weights[struct.name]
        metric, mode = success_metric(lead, struct.task_type.value), "max"
        target_class = lead.get("target_class")
    tracking = scheduler._tracking
    out_dir = _fit_dir(scheduler, name)
    resume = out_dir / "checkpoints" / "last.pt"
    optimizer = dict(lead.get("optimizer") or {"name": "adam", "lr": 0.03})
    schedule = dict(lead.get("schedule") or {"name": "none"})
    try:
        trainer = PatchTrainer(
            pipeline, loss, all_weights,
            patch=build_patch(lead, shape, seed),
            batch_size=int(lead.get("batch_size", 16)),
            eval_batch_size=int(lead.get("eval_batch_size", lead.get("batch_size", 16))),
            num_eval=int(lead.get("num_eval", 64)),
            optimizer=str(optimizer.pop("name", "adam")), optimizer_kwargs=optimizer,
            schedule=str(schedule.pop("name", "none")), schedule_kwargs=schedule,
            best_metric=metric, best_mode=mode,
            eval_every=int(lead.get("eval_every", 50)),
            seed=seed, out_dir=out_dir,
            mlflow=tracking.tracking_uri if tracking is not None and tracking.enabled else False,
            mlflow_experiment=tracking.experiment if tracking is not None else None,
            tensorboard=bool(((cfg.get("logging") or {}).get("tensorboard") or {}).get("enabled", True)),
            run_name=f"attack/{name}", device=scheduler.device, target_class=target_class,
            progress=True, callbacks=list(callbacks),
        )
    except (ValueError, TypeError, KeyError) as err:
        raise AttackConfigError(f"attack of {name!r} (preset {lead.get('name')!r}): {err}") from None
    result = trainer.fit(int(lead["steps"]), resume_from=resume if resume.is_file() else None)
    patch = result.best_patch if not universal else result.patch
    last_eval = result.evals[-1] if result.evals else {}
    summary = {
        "steps": result.steps_run, "best_step": result.best_step, "best_metric": metric,
        "best_value": result.best_metric, "seconds": round(result.seconds, 2),
        **{k: v for k, v in last_eval.items() if not k.endswith(("_se", "_n"))},
    }
    configs = {}
    for task, pipe in pipelines.items():
        conf = pipe.to_config()
        conf["stages"][-1]["model"] = {"artifact": str(members[[m[0].name for m in members].index(task)][0].paths.get("models"))}
        configs[task] = conf
    return FitOutcome(patch, to_plain(summary), _curves_frame(result.history, result.evals), configs, presets,
                      result.checkpoint_path, result.run_id)
