"""Models pandemonium can only query: an ONNX file run by onnxruntime, or any Python callable.

Both are ``nn.Module`` s taking a float batch and returning tensors, so evaluation, transfer and the
black-box attack (:mod:`pandemonium.attack.blackbox`) use them like any model; gradients do not flow
through them (white-box attacks need a torch model). Each counts the images it was asked about
(``queries``), which the black-box attack reports.

>>> model = OnnxModel("classifier.onnx")              # doctest: +SKIP
>>> model(torch.rand(4, 3, 32, 32)).shape, model.queries  # doctest: +SKIP
(torch.Size([4, 10]), 4)
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pandemonium.models.factory import ModelBuildError


def file_sha256(path: str | os.PathLike) -> str:
    """Hex digest of a file (recorded with imported models to notice a changed file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class OnnxModel(nn.Module):
    """An ONNX graph run by onnxruntime on the CPU (one image input; all outputs returned).

    Args:
        path: the ``.onnx`` file.
        input_name: the graph input to feed (default: the first).
        threads: intra-op threads of the session (``None``: onnxruntime's default).
    """

    def __init__(self, path: str | os.PathLike, input_name: str | None = None, threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise ModelBuildError(f"ONNX file {str(self.path)!r} does not exist")
        try:
            import onnxruntime as ort
        except ImportError as err:  # pragma: no cover - a declared dependency
            raise ModelBuildError(f"ONNX file {str(self.path)!r}: onnxruntime is not installed ({err})") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for broken graphs
            raise ModelBuildError(f"ONNX file {str(self.path)!r} does not load: {err}") from None
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.input_name = input_name or next(iter(inputs))
        if self.input_name not in inputs:
            raise ModelBuildError(f"ONNX file {str(self.path)!r} has no input {self.input_name!r} (inputs: {list(inputs)})")
        self.input_shape = list(inputs[self.input_name].shape)  # ints for fixed axes, names for dynamic ones
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.queries = 0

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the graph was exported with, when that axis is not dynamic."""
        first = self.input_shape[0] if self.input_shape else None
        return first if isinstance(first, int) and first > 0 else None

    def check_input(self, shape: tuple[int, ...]) -> None:
        """Raise :class:`ModelBuildError` naming the file when the graph cannot take a batch of ``shape``."""
        fixed = self.fixed_batch
        if fixed is not None and shape[0] != fixed:
            raise ModelBuildError(
                f"ONNX file {str(self.path)!r} has a fixed batch size of {fixed} but was given a batch of "
                f"{shape[0]}: export it with a dynamic batch axis (torch.onnx.export(..., dynamic_axes="
                "{'input': {0: 'batch'}}) or dynamic_shapes), or use batches of that size"
            )
        for axis, (want, got) in enumerate(zip(self.input_shape[1:], shape[1:]), start=1):
            if isinstance(want, int) and want > 0 and want != got:
                raise ModelBuildError(
                    f"ONNX file {str(self.path)!r} wants inputs of shape {self.input_shape} but got {list(shape)} "
                    f"(axis {axis}); set model.input.size to the size it was exported with"
                )

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        self.check_input(tuple(x.shape))
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        outputs = self.session.run(None, {self.input_name: array})
        self.queries += int(x.shape[0])
        tensors = tuple(torch.from_numpy(np.ascontiguousarray(o)).to(x.device) for o in outputs)
        return tensors[0] if len(tensors) == 1 else tensors


class CallableModel(nn.Module):
    """Any Python callable as a model: ``fn(batch) -> output``, fed numpy (``numpy=True``, float32
    NCHW) or torch tensors; e.g. a client of a prediction service. Outputs become tensors."""

    def __init__(self, fn: Callable[[Any], Any], numpy: bool = True) -> None:
        super().__init__()
        if not callable(fn):
            raise ModelBuildError(f"CallableModel: {fn!r} is not callable")
        self.fn = fn
        self.numpy = bool(numpy)
        self.queries = 0

    def forward(self, x: Tensor) -> Any:
        batch = x.detach().cpu().float().numpy() if self.numpy else x.detach()
        out = self.fn(batch)
        self.queries += int(x.shape[0])
        return _to_tensor(out, x.device)


def _to_tensor(value: Any, device: torch.device) -> Any:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value)).to(device)
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_tensor(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_tensor(v, device) for v in value)
    return value
