"""Optimisers for patch training: Adam and SGD from torch plus the sign-gradient attacks.

The sign-gradient attacks (BIM, MI-FGSM, NI-FGSM) are written as ``torch.optim.Optimizer``
subclasses so the trainer, the LR schedules and checkpointing treat them exactly like Adam. torch
ships none of them, hence our own code. All of them *minimise* the loss: the trainer's attack losses
are defined so that a lower value is a stronger attack.

>>> import torch
>>> p = torch.nn.Parameter(torch.full((3, 4, 4), 0.5))
>>> opt = build_optimizer("mifgsm", [p], lr=1 / 255, mu=1.0)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

__all__ = [
    "BIM",
    "MIFGSM",
    "NIFGSM",
    "OPTIMIZERS",
    "OPTIMIZER_DEFAULTS",
    "build_optimizer",
]


def _l1_normalised(grad: torch.Tensor) -> torch.Tensor:
    # MI-FGSM divides the whole gradient tensor (the patch is one sample) by its L1 norm; the clamp
    # keeps an all-zero gradient from producing NaN.
    return grad / grad.abs().sum().clamp_min(1e-30)


class BIM(Optimizer):
    """Basic iterative method: ``p <- p - lr * sign(grad)`` (Kurakin et al., 2016).

    Args:
        params: parameters (or parameter groups) to optimise.
        lr: the step size (alpha), in patch units; 1/255 is one grey level.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1 / 255) -> None:
        if lr <= 0:
            raise ValueError(f"BIM: step size lr must be > 0, got {lr}")
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad.sign(), alpha=-group["lr"])
        return loss


class MIFGSM(Optimizer):
    """Momentum iterative FGSM (Dong et al., 2018).

    ``g <- mu * g + grad / ||grad||_1``; ``p <- p - lr * sign(g)``.

    Args:
        params: parameters (or parameter groups) to optimise.
        lr: the step size (alpha).
        mu: the momentum decay factor (1.0 in the paper).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1 / 255, mu: float = 1.0) -> None:
        if lr <= 0:
            raise ValueError(f"MIFGSM: step size lr must be > 0, got {lr}")
        if mu < 0:
            raise ValueError(f"MIFGSM: momentum mu must be >= 0, got {mu}")
        super().__init__(params, {"lr": lr, "mu": mu})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros_like(p)
                g = state["momentum"]
                g.mul_(group["mu"]).add_(_l1_normalised(p.grad))
                p.add_(g.sign(), alpha=-group["lr"])
        return loss


class NIFGSM(Optimizer):
    """Nesterov iterative FGSM (Lin et al., 2020): the gradient is taken at a look-ahead point.

    The look-ahead needs the parameters to sit at ``x_nes = x - lr * mu * g`` while the gradient is
    computed, so, like schedule-free optimisers, this class has two modes:

    - ``train()``: move the parameters to the look-ahead point (the iterate is kept in the state);
      call it before the forward/backward pass of each step.
    - ``step()``: uses the gradient at the look-ahead point, updates the iterate
      ``x <- x - lr * sign(mu * g + grad / ||grad||_1)`` and leaves the parameters **at the iterate**,
      so projection, evaluation and checkpoints always see the real patch.
    - ``eval()``: go back to the iterate without stepping (e.g. an aborted step).

    Args:
        params: parameters (or parameter groups) to optimise.
        lr: the step size (alpha).
        mu: the momentum decay factor.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1 / 255, mu: float = 1.0) -> None:
        if lr <= 0:
            raise ValueError(f"NIFGSM: step size lr must be > 0, got {lr}")
        if mu < 0:
            raise ValueError(f"NIFGSM: momentum mu must be >= 0, got {mu}")
        super().__init__(params, {"lr": lr, "mu": mu})

    def _params(self) -> Iterable[tuple[dict[str, Any], torch.Tensor]]:
        for group in self.param_groups:
            for p in group["params"]:
                yield group, p

    @torch.no_grad()
    def train(self) -> None:
        """Move the parameters to the Nesterov look-ahead point (idempotent)."""
        for group, p in self._params():
            state = self.state[p]
            if state.get("at_lookahead", False):
                continue
            if "momentum" not in state:
                state["momentum"] = torch.zeros_like(p)
            state["iterate"] = p.detach().clone()
            p.add_(state["momentum"], alpha=-group["lr"] * group["mu"])
            state["at_lookahead"] = True

    @torch.no_grad()
    def eval(self) -> None:
        """Put the parameters back at the iterate (idempotent)."""
        for _, p in self._params():
            state = self.state[p]
            if state.get("at_lookahead", False):
                p.copy_(state["iterate"])
                state["at_lookahead"] = False

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, p in self._params():
            state = self.state[p]
            if "momentum" not in state:
                state["momentum"] = torch.zeros_like(p)
            iterate = state["iterate"] if state.get("at_lookahead", False) else p.detach().clone()
            if p.grad is not None:
                g = state["momentum"]
                g.mul_(group["mu"]).add_(_l1_normalised(p.grad))
                iterate = iterate - group["lr"] * g.sign()
            p.copy_(iterate)
            state["at_lookahead"] = False
            state.pop("iterate", None)
        return loss


OPTIMIZERS: dict[str, type[Optimizer]] = {
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
    "bim": BIM,
    "mifgsm": MIFGSM,
    "nifgsm": NIFGSM,
}

#: Defaults applied when a setting is not given; every key can be overridden by name.
OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {
    "adam": {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
    "sgd": {"lr": 1e-1, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
    "bim": {"lr": 1 / 255},
    "mifgsm": {"lr": 1 / 255, "mu": 1.0},
    "nifgsm": {"lr": 1 / 255, "mu": 1.0},
}

_ALIASES = {"mi-fgsm": "mifgsm", "ni-fgsm": "nifgsm", "mi_fgsm": "mifgsm", "ni_fgsm": "nifgsm"}


def build_optimizer(name: str, params: Iterable[Any], **settings: Any) -> Optimizer:
    """Build an optimiser by name (``adam``, ``sgd``, ``bim``, ``mifgsm``, ``nifgsm``).

    Settings override :data:`OPTIMIZER_DEFAULTS`; an unknown name or setting is one error that
    lists what is known.
    """
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known optimizers: {sorted(OPTIMIZERS)}")
    kwargs = {**OPTIMIZER_DEFAULTS[key], **settings}
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])  # YAML gives lists
    allowed = set(OPTIMIZER_DEFAULTS[key]) | (
        {"amsgrad", "maximize", "foreach", "capturable", "differentiable", "fused", "dampening"}
        if key in ("adam", "sgd")
        else set()
    )
    unknown = set(settings) - allowed
    if unknown:
        raise ValueError(
            f"optimizer {key!r} got unknown settings {sorted(unknown)}; known settings: {sorted(allowed)}"
        )
    return OPTIMIZERS[key](params, **kwargs)
