"""Use a pretrained model as it is: load it, adapt it, check it on a sample batch, store it for a task.

``model.source`` names the model, in one of four forms:

- a factory: ``{_target_: my_pkg.make_net, width: 64}`` (built with only its own kwargs);
- a TorchScript file: ``{torchscript: net.pt}``;
- weights + architecture: ``{state_dict: weights.pt, architecture: {_target_: my_pkg.Net, width: 64}}``;
- an ONNX file (query only, through onnxruntime): ``{onnx: net.onnx}``;

or, as a string, a file path (``.onnx`` -> ONNX, else TorchScript) or a dotted factory name.
``model.input`` / ``model.output`` declare the model's conventions (:mod:`pandemonium.models.adapters`).
:func:`adopt_model` checks the adapted model on a real batch of the task (output shape and range,
a second batch size) before anything is stored, and stores it with
:func:`pandemonium.models.storage.save_model_artifact`; its ``model_config`` names
:func:`imported_model`, so ``test``, ``attack``, ``evaluate`` rebuild it like any stored model.

>>> adopt_model(struct, {"source": "net.onnx", "output": {"kind": "probabilities"}}, fm=fm)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pandemonium.build import BuildError, instantiate
from pandemonium.models.adapters import AdaptedModel, build_adapters
from pandemonium.models.factory import (
    ModelBuildError,
    StructSummary,
    describe_shape,
    expected_output,
    load_torchscript,
    output_fits,
)
from pandemonium.models.onnx_model import OnnxModel, file_sha256
from pandemonium.plain import to_plain

log = logging.getLogger(__name__)

SOURCE_KINDS = ("_target_", "torchscript", "state_dict", "onnx")


def normalise_source(source: Any) -> dict[str, Any]:
    """``model.source`` as a dict with exactly one of :data:`SOURCE_KINDS` (file paths made absolute)."""
    source = to_plain(source)
    if isinstance(source, str):
        path = Path(source).expanduser()
        if path.suffix.lower() == ".onnx":
            source = {"onnx": source}
        elif path.is_file() or path.suffix.lower() in (".pt", ".pth", ".ts", ".jit", ".torchscript"):
            source = {"torchscript": source}
        else:
            source = {"_target_": source}
    if not isinstance(source, dict):
        raise ModelBuildError(f"model.source must be a file path, a factory name or a mapping, got {source!r}")
    kinds = [k for k in SOURCE_KINDS if source.get(k)]
    if len(kinds) != 1:
        raise ModelBuildError(
            f"model.source must name exactly one of _target_, torchscript, state_dict (+ architecture), onnx; "
            f"got keys {sorted(source)}"
        )
    out = dict(source)
    for key in ("torchscript", "state_dict", "onnx"):
        if out.get(key):
            out[key] = str(Path(str(out[key])).expanduser().absolute())
    if kinds[0] == "state_dict" and not isinstance(out.get("architecture"), Mapping):
        raise ModelBuildError("model.source.state_dict needs model.source.architecture: {_target_: ..., kwargs}")
    return out


def load_source(source: Mapping[str, Any], task_name: str = "?", weights: bool = True) -> nn.Module:
    """The user's model as described by a normalised ``source`` (``weights=False`` skips reading a state
    dict file, for rebuilding from an artifact that holds the weights)."""
    what = f"task {task_name!r}: model.source"
    if source.get("onnx"):
        return OnnxModel(source["onnx"], input_name=source.get("input_name"))
    if source.get("torchscript"):
        return load_torchscript(source["torchscript"], task_name)
    spec = dict(source["architecture"]) if source.get("state_dict") else {k: v for k, v in source.items()
                                                                             if k not in SOURCE_KINDS or k == "_target_"}
    try:
        model = instantiate(spec, what=f"{what} factory")
    except BuildError as err:
        raise ModelBuildError(str(err)) from None
    if not isinstance(model, nn.Module):
        raise ModelBuildError(f"{what}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    if source.get("state_dict") and weights:
        path = Path(source["state_dict"])
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
                state = state["state_dict"]  # a checkpoint dict (Lightning and others)
            model.load_state_dict(state)
        except FileNotFoundError:
            raise ModelBuildError(f"{what}: state dict file {str(path)!r} does not exist") from None
        except Exception as err:
            raise ModelBuildError(f"{what}: state dict {str(path)!r} does not fit the architecture: {err}") from None
    return model


def imported_model(struct: Any, source: Any, input: Mapping[str, Any] | None = None,  # noqa: A002
                   output: Mapping[str, Any] | None = None, sha256: str | None = None,
                   weights: bool = False) -> AdaptedModel:
    """The ``_target_`` that stored imported models name: rebuild the adapted user model for ``struct``.

    ``sha256`` (of the ONNX / TorchScript file) is checked, so a changed file is not silently used.
    ``weights=False``: the stored artifact supplies the weights.
    """
    info = StructSummary.from_struct(struct)
    src = normalise_source(source)
    file = src.get("onnx") or src.get("torchscript")
    if file and sha256 and Path(file).is_file() and file_sha256(file) != sha256:
        raise ModelBuildError(f"task {info.name!r}: model file {file!r} changed since it was adopted (sha256 differs)")
    model = load_source(src, info.name, weights=weights)
    input_adapter, output_adapter = build_adapters(info.task_type, info.num_classes, input, output)
    return AdaptedModel(model, input_adapter, output_adapter)


def _check_range(raw: Any, kind: str, task: str) -> None:
    """Declared probabilities must look like probabilities; logits that do are likely mis-declared."""
    if not isinstance(raw, Tensor) or kind not in ("logits", "probabilities", "sigmoid"):
        return
    lo, hi = float(raw.min()), float(raw.max())
    if kind in ("probabilities", "sigmoid") and (lo < -1e-4 or hi > 1 + 1e-4):
        raise ModelBuildError(
            f"{task}: model.output.kind={kind} but the model returned values in [{lo:.3g}, {hi:.3g}], outside [0, 1]; "
            "declare kind=logits (or log_probabilities)"
        )
    if kind == "probabilities" and raw.dim() >= 2:
        sums = raw.sum(1)
        if not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
            raise ModelBuildError(
                f"{task}: model.output.kind=probabilities but the class scores sum to {float(sums.min()):.3g}.."
                f"{float(sums.max()):.3g}, not 1; declare kind=sigmoid or logits"
            )
    if kind == "logits" and raw.dim() == 2 and lo >= 0 and hi <= 1 and raw.shape[1] > 1:
        sums = raw.sum(1)
        if torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
            log.warning("%s: the model's outputs look like probabilities (rows sum to 1) but model.output.kind=logits",
                        task)


def check_adapted(model: AdaptedModel, struct: Any, images: Tensor, output_kind: str = "logits") -> None:
    """Run ``model`` on ``images`` (a real batch of the task, in [0, 1]) and on its first image alone;
    raise :class:`ModelBuildError` naming what does not fit (shape, range, fixed batch size)."""
    info = StructSummary.from_struct(struct)
    task = f"task {info.name!r} ({info.task_type})"
    batch = int(images.shape[0])
    model.eval()
    with torch.no_grad():
        fed = model.input_adapter(images)
        try:
            raw = model.model(fed)
        except ModelBuildError:
            raise
        except Exception as err:
            raise ModelBuildError(
                f"{task}: the model fails on a batch of shape {tuple(fed.shape)} (after the input adapter): "
                f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            ) from None
        _check_range(raw[0] if isinstance(raw, tuple | list) and len(raw) == 1 else raw, output_kind, task)
        output = model.output_adapter(raw, tuple(images.shape[-2:])) if model.output_adapter else raw
        if not output_fits(output, info, batch):
            raise ModelBuildError(
                f"{task}: model returned shape {describe_shape(raw)} for a batch of {batch} (adapted: {describe_shape(output)}); "
                f"expected {expected_output(info, batch)}; check model.output.kind and the number of classes"
            )
        if batch > 1 and not isinstance(model.model, OnnxModel):
            try:
                single = model(images[:1])
            except Exception as err:
                raise ModelBuildError(
                    f"{task}: the model runs on a batch of {batch} but fails on a batch of 1 "
                    f"({type(err).__name__}); a TorchScript model traced with a fixed batch size? "
                    "re-trace it with torch.jit.script or export with a dynamic batch axis"
                ) from None
            if not output_fits(single, info, 1):
                raise ModelBuildError(
                    f"{task}: model returned shape {describe_shape(single)} for a batch of 1; it seems to have a fixed "
                    "batch size (traced?); expected " + expected_output(info, 1)
                )


def sample_images(struct: Any, count: int) -> Tensor:
    """``count`` images of the task's train split (repeated when it has fewer): what the check runs on."""
    from pandemonium.tasks.datamodule import TaskDataset

    dataset = TaskDataset(struct, "train")
    if len(dataset) == 0:
        raise ModelBuildError(f"task {getattr(struct, 'name', '?')!r} has no train images to check the model on")
    return torch.stack([dataset[i % len(dataset)]["image"] for i in range(count)])


def adopt_model(struct: Any, model_cfg: Mapping[str, Any], fm: Any = None, path: Any = None,
                batch_size: int = 8, metrics: Mapping[str, Any] | None = None) -> tuple[Path, AdaptedModel]:
    """Load, adapt, check and store the user's model for ``struct``; returns ``(artifact path, model)``.

    ``model_cfg``: ``source`` (see the module doc), ``input``, ``output``. ``batch_size``: the batch
    the model must take (the attack's): an ONNX graph with a smaller fixed batch fails here.
    """
    cfg = dict(to_plain(model_cfg) or {})
    info = StructSummary.from_struct(struct)
    if not cfg.get("source"):
        raise ModelBuildError(f"task {info.name!r}: adopt needs model.source (a file path, factory or mapping)")
    source = normalise_source(cfg["source"])
    input_cfg, output_cfg = cfg.get("input") or {}, cfg.get("output") or {}
    model = imported_model(info, source, input_cfg, output_cfg, weights=True)
    images = sample_images(struct, batch_size)
    if isinstance(model.model, OnnxModel):
        model.model.check_input((batch_size, *model.input_adapter(images[:1]).shape[1:]))
    check_adapted(model, struct, images, str((output_cfg or {}).get("kind") or "logits"))
    file = source.get("onnx") or source.get("torchscript")
    stored_cfg = {"_target_": f"{__name__}.imported_model", "source": source, "input": to_plain(input_cfg),
                  "output": to_plain(output_cfg), "sha256": file_sha256(file) if file else None}
    from pandemonium.models.storage import save_model_artifact

    saved = save_model_artifact(model, struct, stored_cfg, fm=fm, path=path, metrics=metrics,
                                extra={"imported": {"source": source, "query_only": isinstance(model.model, OnnxModel)}})
    return saved, model


def check_for_attack(path: str | Path, struct: Any, batch_sizes: Sequence[int]) -> None:
    """Check a stored adopted model against the batches an attack will send it (``batch_sizes``: the
    fitting batch, the evaluation batch and its remainder), before any work. Raises
    :class:`ModelBuildError` naming the task, the file and the shape: an ONNX graph with a fixed batch
    size that differs, an output of the wrong shape or range. Models pandemonium trained pass unchecked."""
    from pandemonium.models.storage import load_model_artifact

    model, meta = load_model_artifact(path, task_name=struct.name)
    if not isinstance(model, AdaptedModel):
        return
    sizes = sorted({int(b) for b in batch_sizes if int(b) > 0})
    kind = str(((meta.get("model_config") or {}).get("output") or {}).get("kind") or "logits")
    where = f"attack of task {struct.name!r} with its stored model {str(path)!r}"
    try:
        images = sample_images(struct, max(sizes))
        if isinstance(model.model, OnnxModel):
            shape = tuple(model.input_adapter(images[:1]).shape[1:])
            for size in sizes:
                model.model.check_input((size, *shape))
        check_adapted(model, struct, images, kind)
    except ModelBuildError as err:
        raise ModelBuildError(f"{where} (batches of {', '.join(map(str, sizes))}): {err}") from None
