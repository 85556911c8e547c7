"""Aten op counting for ``pipeline_step.py``: ops per step, and where each path's ops come from."""

from __future__ import annotations

import traceback
from collections import Counter
from pathlib import Path

from torch.utils._python_dispatch import TorchDispatchMode

#: source files whose functions name an op's origin (the innermost such frame wins)
PACKAGES = ("/pandemonium/", "/electricmayhem/")


class OpCounter(TorchDispatchMode):
    """Counts the aten ops issued while active (forward, backward and optimiser alike)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


class OpSources(TorchDispatchMode):
    """Counts the aten ops issued while active by the innermost pandemonium or electricmayhem function
    that issued them (``file:function``); ops issued elsewhere (autograd's backward, the optimiser,
    Kornia called from outside both) are ``(outside)``."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        where = "(outside)"
        for frame in reversed(traceback.extract_stack(limit=40)):
            if any(package in frame.filename for package in PACKAGES):
                where = f"{Path(frame.filename).name}:{frame.name}"
                break
        self.ops[where] += 1
        return func(*args, **(kwargs or {}))
