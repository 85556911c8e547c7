"""pandemonium.models: backbones, one head per task type, a small detector, training and storage.

>>> from pandemonium.models import build_model, load_task_model  # doctest: +SKIP
>>> model = build_model(struct, cfg.model)                         # doctest: +SKIP
>>> model, meta = load_task_model(struct)   # the artifact at struct.paths["models"]  # doctest: +SKIP

Names load lazily so that importing the package does not pull in Lightning.
"""

from __future__ import annotations

from pandemonium._lazy import lazy_exports

_EXPORTS = {
    "SmallCNN": "pandemonium.models.backbones",
    "Normalize": "pandemonium.models.backbones",
    "BACKBONE_PRESETS": "pandemonium.models.backbones",
    "ClassificationHead": "pandemonium.models.heads",
    "MultilabelHead": "pandemonium.models.heads",
    "SegmentationHead": "pandemonium.models.heads",
    "RegressionHead": "pandemonium.models.heads",
    "CenterDetector": "pandemonium.models.detector",
    "decode": "pandemonium.models.detector",
    "nms": "pandemonium.models.detector",
    "TaskModel": "pandemonium.models.factory",
    "task_model": "pandemonium.models.factory",
    "build_model": "pandemonium.models.factory",
    "check_model_output": "pandemonium.models.factory",
    "ModelBuildError": "pandemonium.models.factory",
    "StructSummary": "pandemonium.models.factory",
    "CONFIGS_ROUTES": "pandemonium.models.lightning_module",
    "TaskLightningModule": "pandemonium.models.lightning_module",
    "DetectionMAP": "pandemonium.models.metrics",
    "bootstrap_metrics": "pandemonium.models.metrics",
    "metric_inputs": "pandemonium.models.metrics",
    "save_model_artifact": "pandemonium.models.storage",
    "load_model_artifact": "pandemonium.models.storage",
    "load_task_model": "pandemonium.models.storage",
    "ModelArtifactError": "pandemonium.models.storage",
    "fit": "pandemonium.models.training",
    "run_model": "pandemonium.models.training",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
