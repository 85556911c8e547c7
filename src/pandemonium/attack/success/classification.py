"""Classification attack success, as in the patch literature (Brown et al. 2017 and followers).

- ``untargeted_success``: among images the **control** classifies correctly, the share the scored
  arm misclassifies (scored on the control itself this is 0 by definition).
- ``targeted_success`` (with a target class): among images whose **true** class is not the target,
  the share the scored arm predicts as the target (on the control: how often the model already
  says "target" without a patch, the baseline a targeted rate must beat).

>>> import torch
>>> from pandemonium.attack.success.base import SuccessInputs
>>> control = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [3.0, 0, 0]])   # predicts 0, 1, 0
>>> patched = torch.tensor([[0, 0, 3.0], [0, 3.0, 0], [0, 0, 3.0]])   # predicts 2, 1, 2
>>> out = ClassificationSuccess()(SuccessInputs(patched, control, {"class": torch.tensor([0, 1, 2])}, target_class=2))
>>> out["untargeted_success"].hits.tolist(), out["untargeted_success"].trials.tolist()
([1.0, 0.0, 0.0], [1.0, 1.0, 0.0])
>>> out["targeted_success"].rate
0.5
"""

from __future__ import annotations

import torch

from pandemonium.attack.success.base import RowCounts, SuccessInputs, SuccessMetric, SuccessMetricError

__all__ = ["ClassificationSuccess"]


def _labels(logits: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or logits.ndim not in (1, 2):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise SuccessMetricError(f"ClassificationSuccess: {what} must be logits (B, C) or labels (B,), got {shape}")
    return logits.argmax(dim=1) if logits.ndim == 2 else logits.long()


class ClassificationSuccess(SuccessMetric):
    """Untargeted and targeted success rates of a classifier (see the module docstring)."""

    names = ("untargeted_success", "targeted_success")

    def __call__(self, inputs: SuccessInputs) -> dict[str, RowCounts]:
        pred = _labels(inputs.outputs, "outputs")
        pred_control = _labels(inputs.control, "control outputs").to(pred.device)
        truth = inputs.targets.get("class")
        if truth is None:
            raise SuccessMetricError("ClassificationSuccess: targets have no 'class' (the true class of each image)")
        truth = torch.as_tensor(truth, device=pred.device).long().reshape(-1)
        if truth.shape != pred.shape:
            raise SuccessMetricError(f"ClassificationSuccess: {truth.numel()} true classes for {pred.numel()} outputs")
        eligible = pred_control == truth
        out = {"untargeted_success": RowCounts.of(eligible & (pred != truth), eligible)}
        if inputs.target_class is not None:
            target = int(inputs.target_class)
            eligible_t = truth != target
            out["targeted_success"] = RowCounts.of(eligible_t & (pred == target), eligible_t)
        return out

    def headline(self, target_class: int | None = None) -> str:
        return "untargeted_success" if target_class is None else "targeted_success"
