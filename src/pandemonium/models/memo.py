"""A frozen model that answers a repeated input from memory, for evaluation-only callers.

The transfer matrix and the robustness curves send many batches that are bit for bit the same input
through the same victim: the no-patch control arm is one image per scene whatever the patch scale,
a brightness of 1 or a blur of 0 leaves the image unchanged, and the transfer matrix already scored
the diagonal pairs under the base conditions. :class:`MemoizedModel` keys each input by its exact
bytes (SHA-256 of the contiguous data, with shape, dtype and device) and hands back a copy of the
output it computed the first time, so the figures are those of a fresh forward pass: the same model
in eval mode on the same input gives the same output. Inputs that need a gradient are never served
from memory.

>>> import torch
>>> memo = MemoizedModel(torch.nn.Linear(3, 2)).eval()
>>> x = torch.ones(4, 3)
>>> with torch.no_grad():
...     torch.equal(memo(x), memo(x.clone()))
True
>>> memo.hits, memo.misses
(1, 1)
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import torch
from torch import nn

__all__ = ["MemoizedModel"]


def _detached_copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _detached_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detached_copy(v) for v in value)
    return value


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.numel()
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


def input_key(x: torch.Tensor) -> Hashable:
    """Shape, dtype, device and the SHA-256 of the bytes of ``x`` (equal keys: equal tensors)."""
    data = x.detach()
    if data.device.type != "cpu":
        data = data.cpu()
    array = data.contiguous().reshape(-1).view(torch.uint8).numpy()
    return (tuple(x.shape), str(x.dtype), str(x.device), hashlib.sha256(memoryview(array)).digest())


class MemoizedModel(nn.Module):
    """``model`` with a memory of its outputs for the last ``max_entries`` distinct inputs, at most
    ``max_bytes`` of them (an output larger than that is not stored).

    Only a single tensor argument is memoised, and only without gradients (``torch.no_grad`` or an
    input that requires none while grad mode is off); anything else is passed through. ``hits`` and
    ``misses`` count what the memory served.
    """

    def __init__(self, model: nn.Module, max_entries: int = 2048, max_bytes: int = 512 * 2**20) -> None:
        super().__init__()
        if max_entries < 1:
            raise ValueError(f"MemoizedModel: max_entries must be >= 1, got {max_entries}")
        if max_bytes < 0:
            raise ValueError(f"MemoizedModel: max_bytes must be >= 0, got {max_bytes}")
        self.model = model
        self.max_entries = int(max_entries)
        # outputs can be large (dense heads of a detector on big images): the memory is bounded in bytes too
        self.max_bytes = int(max_bytes)
        self.stored_bytes = 0
        self.hits = 0
        self.misses = 0
        self._outputs: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()

    def clear(self) -> None:
        """Forget every stored output (e.g. after the wrapped model's weights changed)."""
        self._outputs.clear()
        self.stored_bytes = 0

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs or not isinstance(x, torch.Tensor) or torch.is_grad_enabled() or self.training:
            return self.model(x, *args, **kwargs)
        key = input_key(x)
        stored = self._outputs.get(key)
        if stored is not None:
            self.hits += 1
            self._outputs.move_to_end(key)
            return _detached_copy(stored[0])
        self.misses += 1
        out = self.model(x)
        size = _nbytes(out)
        if size <= self.max_bytes:
            self._outputs[key] = (_detached_copy(out), size)
            self.stored_bytes += size
            while len(self._outputs) > self.max_entries or self.stored_bytes > self.max_bytes:
                self.stored_bytes -= self._outputs.popitem(last=False)[1][1]
        return out
