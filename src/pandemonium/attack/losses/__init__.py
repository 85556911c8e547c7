"""Patch losses (a package: the contract in ``base``, task losses in ``task``, patch regularisers in
``regularisers``): each returns a dict of **unreduced, per-sample** terms ``{name: Tensor(B)}``.

Every term is something to *minimise*. The trainer optimises ``sum_k w_k * terms[k].mean()`` over the
terms that have a weight (:func:`weighted_total`) and logs the others as metrics.

Where a loss finds its inputs (all passed as keyword arguments by the pipeline / trainer):

* ``outputs`` -- the model stage's output (logits ``(B, C)``, segmentation logits ``(B, C, H, W)`` or
  the detector dict ``{"boxes", "objectness", "class_scores"}`` of DEVELOPERS.md);
* ``kwargs["targets"]`` -- targets of the drawn images, put there by the implanter
  (``"class"``: ``(B,)``, ``"mask"``: ``(B, H, W)``, ...);
* ``kwargs["patch"]`` -- the patch image(s) for regularisers: ``(C, h, w)``, ``(B, C, h, w)`` or a
  dict of those (several patches: the terms are summed). An unbatched patch gives the same value for
  every sample (broadcast to B, so every term still has shape ``(B,)``).

>>> loss = CompositeLoss([ClassificationUntargeted(), TotalVariation()])    # doctest: +SKIP
>>> terms = loss(logits, targets={"class": labels}, patch=patch)  # doctest: +SKIP
>>> total = weighted_total(terms, {"untargeted": 1.0, "tv": 2.5})  # doctest: +SKIP
"""

from pandemonium.attack.losses.base import (
    CompositeLoss,
    LossError,
    PatchLoss,
    assert_finite,
    check_terms,
    find_nonfinite,
    required_target,
    weighted_total,
)
from pandemonium.attack.losses.regularisers import (
    DEFAULT_PRINTABLE_COLORS,
    NonPrintabilityScore,
    PatchRegulariser,
    Saliency,
    TotalVariation,
)
from pandemonium.attack.losses.task import (
    ClassificationTargeted,
    ClassificationUntargeted,
    DetectionClassFlip,
    DetectionDisappearance,
    SegmentationPixelFlip,
)

__all__ = [
    "DEFAULT_PRINTABLE_COLORS",
    "ClassificationTargeted",
    "ClassificationUntargeted",
    "CompositeLoss",
    "DetectionClassFlip",
    "DetectionDisappearance",
    "LossError",
    "NonPrintabilityScore",
    "PatchLoss",
    "PatchRegulariser",
    "Saliency",
    "SegmentationPixelFlip",
    "TotalVariation",
    "assert_finite",
    "check_terms",
    "find_nonfinite",
    "required_target",
    "weighted_total",
]
