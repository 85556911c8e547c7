"""A module with its own random stream: :class:`SeededModule`, the random half of the stage contract.

A stage draws only from its own ``torch.Generator``, seeded from the run seed and its position in the
pipeline, never from global RNG state: two stages (or two runs) never share a stream by accident, and a
stage's draws do not shift when another stage draws more. ``nn.Module`` moves tensors, not generators,
so this class re-creates the generator where the module's tensors go.

Example:
    >>> m = SeededModule()
    >>> m.set_seed(0, position=2)
    >>> a = m.uniform(0.0, 1.0, (3,))
    >>> m.set_seed(0, position=2)
    >>> bool((m.uniform(0.0, 1.0, (3,)) == a).all())
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from pandemonium.attack.stages.contract import derive_seed

__all__ = ["SeededModule"]


class SeededModule(nn.Module):
    """``nn.Module`` with a lazily created, device-following ``torch.Generator`` and draws from it."""

    def __init__(self) -> None:
        super().__init__()
        self.seed: int = 0
        self.position: int = 0
        self._generator: torch.Generator | None = None
        self._generator_device: torch.device = torch.device("cpu")

    def set_seed(self, seed: int, position: int = 0) -> None:
        """Seed this stage's generator from the run seed and its position in the pipeline."""
        self.seed, self.position = int(seed), int(position)
        self._generator = None  # created lazily on the stage's device

    @property
    def generator(self) -> torch.Generator:
        """The stage's own generator (never global RNG state), seeded by :meth:`set_seed`."""
        if self._generator is None:
            device = self._generator_device
            if device.type == "meta":
                device = torch.device("cpu")
            generator = torch.Generator(device=device)
            generator.manual_seed(derive_seed(self.seed, self.position))
            self._generator = generator
        return self._generator

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        # Generators are not tensors, so nn.Module would leave them behind: find where ``fn`` sends
        # tensors and re-create ours there. The stream restarts from the seed after a device change
        # (CPU and CUDA streams differ anyway); dtype moves keep it.
        result = super()._apply(fn, recurse)
        source = self._generator_device if self._generator_device.type != "meta" else torch.device("cpu")
        try:
            probe = fn(torch.empty(0, device=source))
        except (RuntimeError, NotImplementedError):  # fn cannot take an empty probe: keep the generator
            return result
        moved = isinstance(probe, Tensor) and probe.device != self._generator_device
        if moved:
            self._generator_device = probe.device
            self._generator = None
        self._after_move(fn, probe, moved)
        return result

    def _after_move(self, fn: Callable[[Tensor], Any], probe: Any, new_device: bool) -> None:
        """Hook after ``.to()``/``.cuda()``/``.double()``: ``probe`` is where ``fn`` sent an empty tensor;
        ``new_device`` is true when the generator moved. Subclasses move their plain tensor attributes."""

    def _draw_device(self) -> torch.device:
        return self.generator.device

    def uniform(self, low: float | Tensor, high: float | Tensor, shape: Sequence[int], device=None) -> Tensor:
        """``U(low, high)`` of ``shape`` from the stage's generator, returned on ``device``."""
        u = torch.rand(tuple(shape), generator=self.generator, device=self._draw_device())
        u = u.to(device) if device is not None else u
        if isinstance(low, (int, float)) and isinstance(high, (int, float)) and low == 0 and high == 1:
            return u  # U(0, 1) as drawn: the same values as 0 + 1 * u, two ops fewer
        return low + (high - low) * u

    def normal(self, shape: Sequence[int], device=None, mean: float = 0.0, std: float = 1.0) -> Tensor:
        z = torch.randn(tuple(shape), generator=self.generator, device=self._draw_device())
        z = z.to(device) if device is not None else z
        return mean + std * z

    def randint(self, low: int, high: int, shape: Sequence[int], device=None) -> Tensor:
        """Integers in ``[low, high)``."""
        r = torch.randint(low, high, tuple(shape), generator=self.generator, device=self._draw_device())
        return r.to(device) if device is not None else r

    def bernoulli(self, p: float, shape: Sequence[int], device=None) -> Tensor:
        """Boolean tensor, ``True`` with probability ``p``."""
        return self.uniform(0.0, 1.0, shape, device) < p
