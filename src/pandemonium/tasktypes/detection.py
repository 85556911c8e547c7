"""Object detection: the dense layout ``{"boxes", "objectness", "class_scores"}`` of
:class:`pandemonium.models.detector.CenterDetector`; a patch succeeds when detected objects disappear."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pandemonium.attack.success.detection import DetectionSuccess
from pandemonium.tasktypes.base import TaskTypeSpec, hooks_in, label_name, register_task_type

#: keys of the dense detection layout (same order as ``pandemonium.models.detector.DETECTION_KEYS``)
LAYOUT_KEYS = ("boxes", "objectness", "class_scores")


def _model(num_classes: int, **kwargs: Any) -> Any:
    from pandemonium.models.detector import CenterDetector

    return CenterDetector(num_classes=num_classes, **kwargs)


def _output_fits(output: Any, num_classes: int, image_size: tuple[int, int], batch: int) -> bool:
    import torch

    if not isinstance(output, Mapping) or any(k not in output for k in LAYOUT_KEYS):
        return False
    boxes, obj, cls = (output[k] for k in LAYOUT_KEYS)
    if not all(isinstance(v, torch.Tensor) for v in (boxes, obj, cls)):
        return False
    n = boxes.shape[1] if boxes.dim() == 3 else -1
    return (tuple(boxes.shape) == (batch, n, 4) and tuple(obj.shape) == (batch, n)
            and tuple(cls.shape) == (batch, n, num_classes))


def _expected_output(num_classes: int, image_size: tuple[int, int], batch: int) -> str:
    return f'a dict {{"boxes": (B, N, 4), "objectness": (B, N), "class_scores": (B, N, {num_classes})}} with B = {batch}'


def _metric_inputs(outputs: Any, batch: Mapping[str, Any], score_thr: float = 0.05, nms_iou: float = 0.5) -> tuple[Any, Any]:
    from pandemonium.models.detector import decode

    preds = decode(outputs, score_thr=score_thr, nms_iou=nms_iou, image_size=tuple(batch["image"].shape[-2:]))
    target = [{"boxes": b, "labels": lab} for b, lab in zip(batch["boxes"], batch["labels"])]
    return preds, target


def _prediction_table(outputs: Mapping[str, Any], class_names: Sequence[str], split: str) -> list[dict[str, Any]]:
    names = list(class_names)
    return [{"boxes": p["boxes"].tolist(), "scores": p["scores"].tolist(), "labels": p["labels"].tolist(),
             "label_names": [names[i] for i in p["labels"].tolist()] if names else []}
            for p in outputs["preds"]]


def _report_predictions(outputs: Any, class_names: Sequence[str], threshold: float = 0.5) -> list[dict[str, Any]]:
    import torch

    try:
        from pandemonium.models.detector import decode

        decoded = decode(outputs, score_threshold=threshold)
    except Exception:  # noqa: BLE001 - any detector without decode: threshold the dense layout
        decoded = None
    preds = []
    for i in range(outputs["objectness"].shape[0]):
        if decoded is not None and isinstance(decoded, list):
            boxes, scores, labels = decoded[i]["boxes"], decoded[i]["scores"], decoded[i]["labels"]
        else:
            keep = outputs["objectness"][i] >= threshold
            boxes = outputs["boxes"][i][keep]
            scores = outputs["objectness"][i][keep]
            labels = outputs["class_scores"][i][keep].argmax(-1)
        preds.append({"boxes": boxes.detach().cpu().numpy(), "box_scores": scores.detach().cpu().tolist(),
                      "box_labels": [label_name(class_names, int(c)) for c in torch.as_tensor(labels).tolist()]})
    return preds


def _report_truth(targets: Mapping[str, Any], class_names: Sequence[str], n: int) -> list[str]:
    if "boxes" not in targets:
        return []
    return [f"{len(b)} object(s)" for b in list(targets["boxes"])[:n]]


def _recognises(output: Any) -> bool:
    return isinstance(output, Mapping) and "objectness" in output and "boxes" in output


def _adapt_output(y: Any, adapter: Any, image_size: tuple[int, int]) -> dict[str, Any]:
    """``dense`` (already this layout), ``yolo`` (``[B, N, 5 + C]``: box, objectness, class probabilities;
    ``adapter.box_format`` ``cxcywh`` or ``xyxy``) or ``torchvision`` (a list of dicts ``boxes`` /
    ``scores`` / ``labels``); boxes scaled from the model's input size to the image's."""
    import torch

    from pandemonium.models.factory import ModelBuildError

    if adapter.kind == "dense":
        if not isinstance(y, Mapping):
            raise ModelBuildError(f"output adapter: kind 'dense' expects a dict, the model returned {type(y).__name__}")
        return {"boxes": adapter.scale_boxes(y["boxes"], image_size), "objectness": y["objectness"],
                "class_scores": y["class_scores"]}
    if adapter.kind == "yolo":
        y = adapter.tensor(y)
        if y.dim() != 3 or y.shape[-1] != 5 + adapter.num_classes:
            raise ModelBuildError(
                f"output adapter: a YOLO-style output must have shape (B, N, 5 + num_classes) = "
                f"(B, N, {5 + adapter.num_classes}), the model returned {tuple(y.shape)}"
            )
        boxes = y[..., :4]
        if adapter.box_format == "cxcywh":
            centre, half = boxes[..., :2], boxes[..., 2:] / 2
            boxes = torch.cat([centre - half, centre + half], -1)
        return {"boxes": adapter.scale_boxes(boxes, image_size), "objectness": y[..., 4], "class_scores": y[..., 5:]}
    return _from_torchvision(y, adapter, image_size)


def _from_torchvision(y: Any, adapter: Any, image_size: tuple[int, int]) -> dict[str, Any]:
    """Lists of ``boxes`` / ``scores`` / ``labels`` padded to ``adapter.max_detections`` rows per image."""
    import torch

    from pandemonium.models.factory import ModelBuildError

    if not isinstance(y, list | tuple) or not all(isinstance(d, Mapping) for d in y):
        raise ModelBuildError(
            f"output adapter: kind 'torchvision' expects a list of dicts (boxes, scores, labels), the "
            f"model returned {type(y).__name__}"
        )
    n, offset, num_classes = adapter.max_detections, adapter.label_offset, adapter.num_classes
    device = y[0]["boxes"].device if y else torch.device("cpu")
    boxes = torch.zeros(len(y), n, 4, device=device)
    objectness = torch.zeros(len(y), n, device=device)
    scores = torch.zeros(len(y), n, num_classes, device=device)
    for b, det in enumerate(y):
        keep = det["scores"].argsort(descending=True)[:n]
        k = keep.numel()
        labels = det["labels"][keep].long() - offset
        if k and (labels.min() < 0 or labels.max() >= num_classes):
            raise ModelBuildError(
                f"output adapter: image {b}: labels {sorted(set((labels + offset).tolist()))} "
                f"outside 0..{num_classes - 1} after label_offset={offset}"
            )
        boxes[b, :k] = det["boxes"][keep].float()
        objectness[b, :k] = det["scores"][keep].float()
        scores[b, torch.arange(k, device=device), labels] = 1.0
    return {"boxes": adapter.scale_boxes(boxes, image_size), "objectness": objectness, "class_scores": scores}


SPEC = register_task_type(TaskTypeSpec(
    name="detection", target="boxes", loss="centernet", metrics="detection",
    attack_preset="detection_disappearance", attack_losses=("DetectionDisappearance", "DetectionClassFlip"),
    output_kinds=("dense", "yolo", "torchvision"), success_metric=DetectionSuccess, description="boxes with classes", **hooks_in(globals()),
))
