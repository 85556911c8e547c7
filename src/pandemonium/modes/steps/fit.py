"""The patch-fitting step shared by the attack-like modes: fit a patch with PatchTrainer and store it.

:func:`fit_patch` fits one patch against one or more ``(struct, model, AttackSpec)`` members;
:class:`PatchFit` is the ``attack`` step that loads the task's model, fits and stores the patch, its
checkpoint, the pipeline YAML, the curves and a PNG.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from omegaconf import OmegaConf

from pandemonium.attack.multitask import MultiTaskLoss, MultiTaskPipeline
from pandemonium.attack.presets import AttackConfigError
from pandemonium.attack.spec import AttackSpec
from pandemonium.attack.splits import SELECT_SPLIT
from pandemonium.modes.steps import CURVES_KEY, UNIVERSAL_TASK
from pandemonium.modes.steps.context import ModeContext, resume_mlflow_run
from pandemonium.modes.steps.models import ModelSource
from pandemonium.plain import to_plain
from pandemonium.runs.journal import read_continue_changes
from pandemonium.runs.provenance import artifact_id, command_line

log = logging.getLogger(__name__)


@dataclass
class FitOutcome:
    """What :func:`fit_patch` hands to the scheduler for storing."""

    patch: Any
    summary: dict[str, Any]
    curves: Any
    pipeline_configs: dict[str, Any]
    specs: dict[str, AttackSpec]
    checkpoint: Path | None
    run_id: str | None


def curves_frame(history: list[dict[str, float]], evals: list[dict[str, float]],
                  metrics: Sequence[str] = ()) -> Any:
    """One wide table: training terms per step and, at the evaluation steps, each success metric with its
    no-patch and random-patch baselines (``eval_<name>``) and the total patch loss."""
    import pandas as pd

    train = pd.DataFrame(history)
    wanted = {f"{m}{arm}" for m in metrics for arm in ("", "_control", "_random")}
    keep = [c for c in (evals[0].keys() if evals else [])
            if c.rsplit("/", 1)[-1] in wanted or c.rsplit("/", 1)[-1] == "total_patch"]
    ev = pd.DataFrame([{"step": e["step"], **{f"eval_{k}": e[k] for k in keep}} for e in evals])
    if train.empty:
        return ev
    if ev.empty:
        return train
    return train.merge(ev, on="step", how="outer").sort_values("step").reset_index(drop=True)


def fit_dir(ctx: ModeContext, owner: str) -> Path:
    """The trainer's folder for one fit (checkpoints, eval tables, TensorBoard). Recorded in the run
    directory so that ``continue`` resumes an interrupted fit from its last checkpoint."""
    record = ctx.run_dir / "attack_fits.json"
    # fits running in parallel (executor=ray) update the record one at a time and replace it whole,
    # so none loses another's entry
    with FileLock(str(record) + ".lock"):
        fits = json.loads(record.read_text()) if record.exists() else {}
        if owner in fits:
            return Path(fits[owner])
        marker = ctx.fm.construct_saving_path(obj=None, key="patch_checkpoints", task_name=owner, file_name="fit.txt")
        marker.write_text(f"patch fit of {owner}, run {ctx.run_dir}\n")
        folder = marker.with_suffix("")
        fits[owner] = str(folder)
        partial = record.with_name(record.name + ".partial")
        partial.write_text(json.dumps(fits, indent=1))
        os.replace(partial, record)
    return folder


def fit_patch(ctx: ModeContext, members: Sequence[tuple[Any, Any, AttackSpec]], name: str, seed: int,
              callbacks: Sequence[Any] = ()) -> FitOutcome:
    """Fit one patch against the ``(struct, model, spec)`` members with PatchTrainer; several members
    share one patch (the universal attack: losses summed). ``callbacks``: trainer hooks, e.g. the tune
    mode's pruning."""
    from pandemonium.attack.training import EvaluationSettings, PatchTrainer, default_callbacks

    cfg = ctx.cfg
    pipelines, losses, weights, specs = {}, {}, {}, {}
    lead = members[0][2]
    for struct, model, spec in members:
        specs[struct.name] = spec
        # evaluations while fitting (best patch, early stopping) use the validation split; reported
        # figures come from the test split only (pandemonium.attack.splits)
        pipelines[struct.name] = spec.build_pipeline(model, struct, ctx.data_dir, seed, ctx.fold,
                                                     eval_split=SELECT_SPLIT)
        losses[struct.name] = spec.build_loss()
        weights[struct.name] = dict(spec.weights)
    universal = len(members) > 1 or name == UNIVERSAL_TASK
    if universal:
        pipeline = MultiTaskPipeline(pipelines)
        loss = MultiTaskLoss(losses)
        all_weights = {f"{t}/{k}": v for t, w in weights.items() for k, v in w.items()}
        metric, mode, target_class = "total_patch", "min", None
    else:
        struct = members[0][0]
        pipeline, loss, all_weights = pipelines[struct.name], losses[struct.name], weights[struct.name]
        metric, mode, target_class = lead.success_metric, "max", lead.target_class
    if lead.method == "blackbox":  # query-only random search instead of PatchTrainer (attack/blackbox.py)
        return fit_blackbox_patch(ctx, members, pipelines, (pipeline, loss, all_weights), name, seed)
    tracking = ctx.tracking
    out_dir = fit_dir(ctx, name)
    resume = out_dir / "checkpoints" / "last.pt"
    optimizer_name, optimizer = lead.named("optimizer")
    schedule_name, schedule = lead.named("schedule")
    try:
        trainer = PatchTrainer(
            pipeline, loss, all_weights, patch=lead.build_patch(seed), batch_size=lead.batch_size,
            evaluation=EvaluationSettings(num_eval=lead.evaluation.num_eval, batch_size=lead.evaluation.batch_size,
                                          every=lead.eval_every, target_class=target_class,
                                          split=SELECT_SPLIT),
            optimizer={"_target_": optimizer_name, **optimizer}, schedule={"name": schedule_name, **schedule},
            seed=seed, out_dir=out_dir, run_name=f"attack/{name}", device=ctx.device,
            **fit_devices(cfg.get("attack")),
            callbacks=[*default_callbacks(
                best_metric=metric, best_mode=mode,
                mlflow=tracking.tracking_uri if tracking is not None and tracking.enabled else False,
                mlflow_experiment=tracking.experiment if tracking is not None else None,
                tensorboard=bool(((cfg.get("logging") or {}).get("tensorboard") or {}).get("enabled", True)),
            ), *callbacks],
        )
    except (ValueError, TypeError, KeyError) as err:
        raise AttackConfigError(f"attack of {name!r} (preset {lead.name!r}): {err}") from None
    resume_mlflow_run(trainer, tracking, f"attack/{name}")
    result = trainer.fit(lead.steps, resume_from=resume if resume.is_file() else None)
    patch = result.best_patch if not universal else result.patch
    last_eval = result.evals[-1] if result.evals else {}
    summary = {
        "steps": result.steps_run, "best_step": result.best_step, "best_metric": metric,
        "best_value": result.best_metric, "seconds": round(result.seconds, 2), "selection_split": SELECT_SPLIT,
        **{k: v for k, v in last_eval.items() if not k.endswith(("_se", "_n"))},
    }
    configs = pipeline_configs(members, pipelines)
    # a fit killed after its last checkpoint resumes at its end and writes none: that one is the fit's
    checkpoint = result.checkpoint_path or (resume if resume.is_file() else None)
    success_metrics = sorted({spec.success_metric for spec in specs.values()})
    return FitOutcome(patch, to_plain(summary), curves_frame(result.history, result.evals, success_metrics),
                      configs, specs,
                      checkpoint, result.run_id)


def fit_devices(attack_cfg: Any) -> dict[str, Any]:
    """``devices``/``accelerator``/``strategy`` of the attack config (absent: one device)."""
    attack = attack_cfg if attack_cfg is not None else {}
    return {"devices": int(attack.get("devices") or 1), "accelerator": str(attack.get("accelerator") or "cpu"),
            "strategy": attack.get("strategy")}


def pipeline_configs(members: Sequence[tuple[Any, Any, AttackSpec]], pipelines: dict[str, Any]) -> dict[str, Any]:
    """The pipeline YAML of each member, its model stage naming the stored model artifact."""
    configs = {}
    for struct, _model, _spec in members:
        conf = pipelines[struct.name].to_config()
        conf["stages"][-1]["model"] = {"artifact": str(struct.paths.get("models"))}
        configs[struct.name] = conf
    return configs


def fit_blackbox_patch(ctx: ModeContext, members: Sequence[tuple[Any, Any, AttackSpec]], pipelines: dict[str, Any],
                       objective: tuple[Any, Any, dict[str, float]], name: str, seed: int) -> FitOutcome:
    """Fit the patch of a ``method: blackbox`` spec by random search under its query budget (the victim is
    only queried: ONNX, a service or a torch model); the summary records the queries used."""
    from pandemonium.attack.blackbox import BlackBoxError, fit_blackbox

    lead = members[0][2]
    if len(members) > 1 or name == UNIVERSAL_TASK:
        raise AttackConfigError(f"attack preset {lead.name!r}: the black-box attack fits one task's patch; "
                                "set mode.universal=false")
    pipeline, loss, weights = objective
    try:
        found = fit_blackbox(pipeline, loss, weights, lead, seed, device=ctx.device)
    except BlackBoxError as err:
        raise AttackConfigError(f"attack of {name!r}: {err}") from None
    log.info("task %s: black-box patch after %d queries (budget %d), loss %.4g", name, found.summary["queries"],
             found.summary["query_budget"], found.summary["best_loss"])
    return FitOutcome(found.patch, to_plain(found.summary), curves_frame(found.history, []),
                      pipeline_configs(members, pipelines), {m[0].name: m[2] for m in members}, None, None)


class PatchFit:
    """The ``attack`` step: fit the patch of a task (or one universal patch for all) and store it."""

    def __init__(self, ctx: ModeContext, models: ModelSource) -> None:
        self.ctx = ctx
        self.models = models

    def attack_task(self, task_name: str, seed: int, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
        """Fit the patch of one task and store patch, checkpoint, pipeline YAML and curves."""
        struct = self.ctx.get_struct(task_name)
        model, _meta = self.models.load(struct)
        result = fit_patch(self.ctx, [(struct, model, self.ctx.spec(struct))], task_name, seed, callbacks)
        self.store(result, [struct], task_name)
        return {"patch": str(struct.paths["patches"]), "summary": result.summary}

    def attack_universal(self, seed: int, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
        """Fit ONE patch against every task of ``task_list`` (losses summed) and attach it to all."""
        members = []
        for task_name in self.ctx.task_list:
            struct = self.ctx.get_struct(task_name)
            model, _meta = self.models.load(struct)
            members.append((struct, model, self.ctx.spec(struct)))
        result = fit_patch(self.ctx, members, UNIVERSAL_TASK, seed, callbacks)
        structs = [m[0] for m in members]
        self.store(result, structs, UNIVERSAL_TASK)
        return {"patch": str(structs[0].paths["patches"]), "summary": result.summary}

    def store(self, result: FitOutcome, structs: list[Any], owner: str) -> Path:
        """Patch file (with the specs it was fitted with), PNG, pipeline YAML and curves; attached to the structs."""
        from PIL import Image

        from pandemonium.report.data import image_to_hwc

        ctx = self.ctx
        patch = result.patch.detach().cpu()
        payload = {
            "format": "pandemonium-patch",
            "patch": patch,
            "tasks": [s.name for s in structs],
            "models": {s.name: str(s.paths.get("models")) for s in structs},
            # the full spec per task: an evaluation can rebuild exactly what was fitted (AttackSpec.from_dict)
            "presets": {s.name: result.specs[s.name].to_dict() for s in structs},
            "pipelines": result.pipeline_configs,
            "seed": ctx.seed,
            "summary": result.summary,
            "universal": owner == UNIVERSAL_TASK,
            "run_dir": str(ctx.run_dir),
            "command": command_line(),
            "continue_changes": read_continue_changes(ctx.run_dir),  # overrides changed by `continue allow_changes=true`
        }
        patch_path = ctx.fm.construct_saving_path(obj=payload, key="patches", task_name=owner, file_name="patch.pt")
        torch.save(payload, patch_path)
        # the PNG goes under `plots`, not beside the patch: `reuse.patches` takes the newest file there
        png = ctx.fm.construct_saving_path(obj=None, key="plots", task_name=owner, file_name=f"{patch_path.stem}.png")
        Image.fromarray((image_to_hwc(patch) * 255).round().astype("uint8")).save(png)
        pipe_path = ctx.fm.construct_saving_path(obj=None, key="pipelines", task_name=owner, file_name="pipeline.yaml")
        pipe_path.write_text(OmegaConf.to_yaml(OmegaConf.create(result.pipeline_configs)))
        curves_path = ctx.fm.construct_saving_path(obj=None, key=CURVES_KEY, task_name=owner, file_name="curves.csv")
        result.curves.to_csv(curves_path, index=False)
        for struct in structs:
            struct.paths["patches"] = patch_path
            struct.paths["pipelines"] = pipe_path
            struct.paths[CURVES_KEY] = curves_path
            struct.paths["plots"] = png
            if result.checkpoint is not None:
                struct.paths["patch_checkpoints"] = Path(result.checkpoint)
        if ctx.tracking is not None:
            ctx.tracking.tag_child(result.run_id, tasks=[s.name for s in structs],
                                   models=[artifact_id(s.paths.get("models")) for s in structs],
                                   patch=artifact_id(patch_path),
                                   presets={s.name: result.specs[s.name].to_dict() for s in structs})
        ctx.results.setdefault("fits", {})[owner] = result.summary
        return patch_path
