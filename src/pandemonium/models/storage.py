"""Model artifacts: one file per trained model that rebuilds it without the run that made it.

An artifact is a ``torch.save``-d dict::

    {"format": "pandemonium-model", "version": 1,
     "state_dict": ..., "model_config": {...  _target_ + kwargs, or torchscript ...},
     "torchscript": bytes | None,      # the original TorchScript program when the model is one
     "struct": {...StructSummary...},  # name, task type, classes, channels, image size, mean/std
     "task_name": str, "fold": int, "metrics": {name: float}, "extra": {...}}

Schedulers store it through the FileManager and attach the path to ``struct.paths["models"]``, so
``continue``, ``reuse.models=<project>`` and later modes (test, predict, attack, evaluate) find it::

    path = save_model_artifact(model, struct, model_cfg, fm=self.fm, metrics={"test/accuracy": 0.97})
    struct.paths["models"] = path
    model, meta = load_task_model(struct)
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pandemonium.errors import PandemoniumError
from pandemonium.models.factory import (
    ModelBuildError,
    StructSummary,
    build_model,
    load_torchscript,
    model_config_from,
)
from pandemonium.plain import to_plain

ARTIFACT_FORMAT = "pandemonium-model"
ARTIFACT_VERSION = 1
MODELS_KEY = "models"


class ModelArtifactError(PandemoniumError):
    """A model artifact is missing, unreadable, or does not rebuild; the message names task and path."""




def artifact_dict(
    model: nn.Module,
    struct: Any,
    model_cfg: Any = None,
    fold: int = 0,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The dict that :func:`save_model_artifact` writes."""
    info = StructSummary.from_struct(struct)
    cfg = model_config_from(model_cfg)
    scripted = None
    if isinstance(model, torch.jit.ScriptModule):
        buffer = io.BytesIO()
        torch.jit.save(model, buffer)
        scripted = buffer.getvalue()
        cfg = {"torchscript": "<stored in artifact>"}
    return {
        "format": ARTIFACT_FORMAT,
        "version": ARTIFACT_VERSION,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_config": to_plain(cfg),
        "torchscript": scripted,
        "struct": info.to_dict(),
        "task_name": info.name,
        "fold": int(fold),
        "metrics": to_plain(dict(metrics or {})),
        "extra": to_plain(dict(extra or {})),
    }


def save_model_artifact(
    model: nn.Module,
    struct: Any,
    model_cfg: Any = None,
    fm: Any = None,
    path: str | os.PathLike | None = None,
    fold: int = 0,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write the artifact of ``model`` (to ``path``, or a fresh FileManager path under key ``models``).

    The file is written next to its destination and renamed into place, so an interrupted save never
    leaves a half-written artifact behind. Returns the path.
    """
    payload = artifact_dict(model, struct, model_cfg, fold=fold, metrics=metrics, extra=extra)
    if path is None:
        if fm is None:
            raise ValueError("save_model_artifact: give either fm (a FileManager) or path")
        path = fm.construct_saving_path(obj=model, key=MODELS_KEY, task_name=payload["task_name"])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read_artifact(path: str | os.PathLike, task_name: str | None = None) -> dict[str, Any]:
    """The raw artifact dict; :class:`ModelArtifactError` names task and path when it cannot be read."""
    path = Path(path)
    who = f"task {task_name!r}: " if task_name else ""
    if not path.is_file():
        raise ModelArtifactError(f"{who}model artifact {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise ModelArtifactError(f"{who}model artifact {str(path)!r} is empty (the save was interrupted?)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelArtifactError(
            f"{who}model artifact {str(path)!r} is corrupt or not a model artifact ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != ARTIFACT_FORMAT:
        raise ModelArtifactError(f"{who}{str(path)!r} is not a pandemonium model artifact")
    if task_name is not None and payload.get("task_name") != task_name:
        raise ModelArtifactError(
            f"task {task_name!r}: model artifact {str(path)!r} belongs to task {payload.get('task_name')!r}"
        )
    return payload


def load_model_artifact(
    path: str | os.PathLike, task_name: str | None = None, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored at ``path``; returns ``(model in eval mode, metadata)``.

    ``metadata`` holds everything in the artifact except the weights (``model_config``, ``struct``,
    ``task_name``, ``fold``, ``metrics``, ``extra``, ``path``).
    """
    payload = read_artifact(path, task_name)
    name = payload.get("task_name", task_name)
    info = StructSummary.from_struct(payload["struct"])
    try:
        if payload.get("torchscript"):
            model: nn.Module = load_torchscript(payload["torchscript"], name)
        else:
            model = build_model(info, payload["model_config"], check_output=False)
        model.load_state_dict(payload["state_dict"])
    except (ModelBuildError, RuntimeError, KeyError) as err:
        raise ModelArtifactError(f"task {name!r}: model artifact {str(path)!r} does not rebuild: {err}") from None
    model.to(map_location).eval()
    meta = {k: v for k, v in payload.items() if k not in ("state_dict", "torchscript")}
    meta["path"] = str(path)
    return model, meta


def load_task_model(struct: Any, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model attached to ``struct.paths["models"]`` (what train / ``reuse.models`` put there)."""
    name = getattr(struct, "name", "?")
    path = (getattr(struct, "paths", None) or {}).get(MODELS_KEY)
    if not path:
        raise ModelArtifactError(
            f"task {name!r} has no stored model (struct.paths['models'] is not set): run `pandemonium train` "
            "for it first, or point to an earlier project with reuse.models=<project>"
        )
    return load_model_artifact(path, task_name=name, map_location=map_location)


def attach_stored_model(struct: Any, fm: Any) -> Path:
    """Make sure ``struct.paths["models"]`` is set: keep what train / ``reuse.models`` / ``continue`` put
    there, else take the newest model artifact of the task in the current project. Returns the path."""
    name = getattr(struct, "name", "?")
    current = struct.paths.get(MODELS_KEY)
    if current:
        return Path(current)
    found = fm.list_artifacts(MODELS_KEY, name) if fm is not None else []
    if not found:
        raise ModelArtifactError(
            f"task {name!r} has no stored model in project {str(getattr(fm, 'proj_path', '?'))!r}: run "
            "`pandemonium train` for it first, or point to an earlier project with reuse.models=<project>"
        )
    struct.paths[MODELS_KEY] = found[-1]
    return found[-1]
