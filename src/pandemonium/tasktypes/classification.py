"""Single-label classification: logits ``(B, C)``; a patch succeeds when the prediction leaves the true
class (untargeted) or reaches the target class (targeted)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pandemonium.attack.success.classification import ClassificationSuccess
from pandemonium.tasktypes.base import TaskTypeSpec, hooks_in, label_name, register_task_type


def logits_fit(output: Any, num_classes: int, image_size: tuple[int, int], batch: int) -> bool:
    """``(B, C)`` logits (classification and multilabel)."""
    import torch

    return isinstance(output, torch.Tensor) and tuple(output.shape) == (batch, num_classes)


def logits_expected(num_classes: int, image_size: tuple[int, int], batch: int) -> str:
    return f"logits of shape (B, num_classes) = ({batch}, {num_classes})"


def _head(in_channels: Sequence[int], num_classes: int, dropout: float = 0.1, **_: Any) -> Any:
    from pandemonium.models.heads import ClassificationHead

    return ClassificationHead(in_channels, num_classes, dropout)


def _metric_inputs(outputs: Any, batch: Mapping[str, Any], score_thr: float = 0.05, nms_iou: float = 0.5) -> tuple[Any, Any]:
    return outputs.detach(), batch["class"].long()


def _scores(outputs: Any) -> Any:
    return outputs.softmax(dim=1)


def _prediction_table(outputs: Mapping[str, Any], class_names: Sequence[str], split: str) -> Any:
    import pandas as pd

    preds = outputs["preds"]
    frame = pd.DataFrame({"target": outputs["target"].numpy(), "pred": preds.argmax(dim=1).numpy()})
    frame["pred_name"] = [class_names[i] for i in frame["pred"]] if class_names else frame["pred"]
    for i, name in enumerate(class_names or range(preds.shape[1])):
        frame[f"prob_{name}"] = outputs["scores"][:, i].numpy()
    return frame


def _report_predictions(outputs: Any, class_names: Sequence[str], threshold: float = 0.5) -> list[dict[str, Any]]:
    score, label = outputs.softmax(1).max(1)
    return [{"label": label_name(class_names, lab), "score": s} for s, lab in zip(score.tolist(), label.tolist())]


def _report_truth(targets: Mapping[str, Any], class_names: Sequence[str], n: int) -> list[str]:
    import torch

    if "class" not in targets:
        return []
    return [label_name(class_names, int(c)) for c in torch.as_tensor(targets["class"])[:n].tolist()]


def _recognises(output: Any) -> bool:
    import torch

    return isinstance(output, torch.Tensor) and output.ndim == 2


def _adapt_output(y: Any, adapter: Any, image_size: tuple[int, int]) -> Any:
    import torch

    y = adapter.tensor(y)
    # log-probabilities: softmax maps them back to the model's probabilities
    return torch.log(y.clamp_min(adapter.eps)) if adapter.kind == "probabilities" else y


# classification and multilabel share the (B, C) logits layout
_output_fits, _expected_output = logits_fit, logits_expected

SPEC = register_task_type(TaskTypeSpec(
    name="classification", target="class", loss="cross_entropy", metrics="classification",
    attack_preset="classification_targeted", attack_losses=("ClassificationTargeted", "ClassificationUntargeted"),
    output_kinds=("logits", "probabilities", "log_probabilities"), success_metric=ClassificationSuccess,
    description="one class per image", **hooks_in(globals()),
))
