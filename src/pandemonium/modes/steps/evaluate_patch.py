"""Fixed-condition evaluation of a stored patch on one task, with examples for the report."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pandemonium.attack.presets import (
    AttackConfigError,
    build_loss,
    build_task_pipeline,
    success_metric,
    with_patch_target,
)
from pandemonium.plain import to_plain
from pandemonium.runs.base import AbstractBaseScheduler
from pandemonium.runs.provenance import artifact_id

log = logging.getLogger(__name__)


class StoredEvaluation:
    """Evaluation of one stored patch on one task: the table, summary, headline rate and examples."""

    def __init__(self, table: Any, summary: dict[str, Any], metric: str, rate: float, ci: tuple[float, float],
                 examples: dict[str, Any], patch_area_fraction: float) -> None:
        self.table = table
        self.summary = summary
        self.metric = metric
        self.rate = rate
        self.ci = ci
        self.examples = examples
        self.patch_area_fraction = patch_area_fraction


def load_patch(path: str | Path) -> dict[str, Any]:
    """A stored patch file (``patches_*.pt``); errors name the file."""

    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise AttackConfigError(f"patch file {str(path)!r} does not load: {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != "pandemonium-patch":
        raise AttackConfigError(f"{str(path)!r} is not a pandemonium patch file")
    return payload


def predictions_for_report(outputs: Any, task_type: str, class_names: Sequence[str],
                           threshold: float = 0.5) -> list[dict[str, Any]]:
    """Per-image predictions in a drawable form (see :class:`pandemonium.report.html.Prediction`)."""

    preds = []
    if task_type == "classification":
        probs = outputs.softmax(1)
        score, label = probs.max(1)
        for s, lab in zip(score.tolist(), label.tolist()):
            preds.append({"label": class_names[lab] if lab < len(class_names) else str(lab), "score": s})
    elif task_type == "detection":
        try:
            from pandemonium.models.detector import decode

            decoded = decode(outputs, score_threshold=threshold)
        except Exception:  # noqa: BLE001 - any detector without decode: threshold the dense layout
            decoded = None
        for i in range(outputs["objectness"].shape[0]):
            if decoded is not None and isinstance(decoded, list):
                d = decoded[i]
                boxes, scores, labels = d["boxes"], d["scores"], d["labels"]
            else:
                keep = outputs["objectness"][i] >= threshold
                boxes = outputs["boxes"][i][keep]
                scores = outputs["objectness"][i][keep]
                labels = outputs["class_scores"][i][keep].argmax(-1)
            preds.append({"boxes": boxes.detach().cpu().numpy(), "box_scores": scores.detach().cpu().tolist(),
                          "box_labels": [class_names[int(c)] if int(c) < len(class_names) else str(int(c))
                                         for c in torch.as_tensor(labels).tolist()]})
    elif task_type == "semantic_segmentation":
        for mask in outputs.argmax(1):
            preds.append({"mask": mask.detach().cpu().numpy()})
    else:
        preds = [{} for _ in range(len(outputs))]
    return preds


def evaluate_stored_patch(scheduler: AbstractBaseScheduler, struct: Any, model: Any, preset: Mapping[str, Any],
                          patch_path: Path) -> StoredEvaluation:
    """Fixed-condition evaluation (conditions drawn once from the run seed) of a stored patch."""

    from pandemonium.attack.evaluation import FixedEvaluation
    from pandemonium.report.transfer import success_from_eval_table, summarise_rate

    cfg = scheduler.cfg
    payload = load_patch(patch_path)
    preset = with_patch_target(preset, payload, struct.name)
    patch = payload["patch"].float()
    if patch.shape[0] != struct.channels:
        raise AttackConfigError(
            f"patch {artifact_id(patch_path)} has {patch.shape[0]} channels but task {struct.name!r} images have "
            f"{struct.channels}"
        )
    seed = int(cfg.seed)
    pipeline = build_task_pipeline(preset, struct, model, cfg.data_dir, seed, int(cfg.get("fold", 0)))
    pipeline.to(scheduler.device)
    loss = build_loss(preset, struct.name)
    weights = {str(k): float(v) for k, v in (preset.get("weights") or {}).items()}
    metric = success_metric(preset, struct.task_type.value)
    evaluation = FixedEvaluation(pipeline, loss, weights, num_eval=int(preset.get("num_eval", 64)),
                                 batch_size=int(preset.get("eval_batch_size", 64)), seed=seed,
                                 target_class=preset.get("target_class"))
    patch = patch.to(scheduler.device)
    result = evaluation.run(patch, step=0)
    success, weight = success_from_eval_table(result.table, metric)
    rate = summarise_rate(success, weight, seed=seed)
    examples = collect_examples(pipeline, patch, evaluation.conditions[0], struct, scheduler.num_examples)
    coverage = examples.pop("patch_coverage", None)
    area = float(coverage) if coverage is not None else float("nan")
    return StoredEvaluation(result.table, to_plain(result.summary), metric, rate.rate, (rate.ci_low, rate.ci_high),
                            examples, area)


def collect_examples(pipeline: Any, patch: Any, params: Mapping[str, Any], struct: Any, n: int) -> dict[str, Any]:
    """Images the model saw with and without the patch (same conditions), its predictions, the truth."""

    from pandemonium.attack.evaluation import _expand_patch, pipeline_stages

    batch = len(next(iter(params.values()))) if params else 1
    n = max(1, min(int(n), batch))
    captured: list[Any] = []
    last = pipeline_stages(pipeline)[-1]

    def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured.append(args[0] if args else kwargs.get("x"))

    handle = last.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            x = _expand_patch(patch, batch)
            y_p, kw_p = pipeline(x, evaluate=True, params=params)
            y_c, _ = pipeline(x, evaluate=True, control=True, params=params)
    finally:
        handle.remove()
    task_type = struct.task_type.value

    def head(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: v[:n] for k, v in value.items()}
        return value[:n]

    targets = kw_p.get("targets") or {}
    truth: list[str] = []
    if task_type == "detection" and "boxes" in targets:
        truth = [f"{len(b)} object(s)" for b in list(targets["boxes"])[:n]]
    elif task_type == "classification" and "class" in targets:
        truth = [struct.class_names[int(c)] if int(c) < len(struct.class_names) else str(int(c))
                 for c in torch.as_tensor(targets["class"])[:n].tolist()]
    # the share of the image the patch covers, from the implanter's coverage mask (exact under rotation
    # and perspective, unlike the bounding box)
    patch_mask = targets.get("patch_mask")
    coverage = float(patch_mask.float().mean()) if isinstance(patch_mask, torch.Tensor) else None
    return {
        "task": struct.name, "task_type": task_type,
        "before": captured[1][:n].detach().cpu(), "after": captured[0][:n].detach().cpu(),
        "pred_before": predictions_for_report(head(y_c), task_type, struct.class_names),
        "pred_after": predictions_for_report(head(y_p), task_type, struct.class_names),
        "truth": truth,
        "patch_coverage": coverage,
    }
