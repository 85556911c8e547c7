"""Optimisers for patch training: Adam and SGD from torch plus the sign-gradient attacks.

The sign-gradient attacks (BIM, MI-FGSM, NI-FGSM) are written as ``torch.optim.Optimizer``
subclasses so the trainer, the LR schedules and checkpointing treat them exactly like Adam. torch
ships none of them, hence our own code. All of them *minimise* the loss: the trainer's attack losses
are defined so that a lower value is a stronger attack.

>>> import torch
>>> p = torch.nn.Parameter(torch.full((3, 4, 4), 0.5))
>>> opt = build_optimizer({"_target_": "mifgsm", "lr": 1 / 255, "mu": 1.0}, [p])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch.optim import Optimizer

from pandemonium.build import instantiate
from pandemonium.errors import ConfigError
from pandemonium.plain import to_plain

__all__ = [
    "BIM",
    "MIFGSM",
    "NIFGSM",
    "OPTIMIZERS",
    "OPTIMIZER_DEFAULTS",
    "OptimizerError",
    "SignGradientOptimizer",
    "build_optimizer",
    "optimizer_spec",
]


def _l1_normalised(grad: torch.Tensor) -> torch.Tensor:
    # MI-FGSM divides the whole gradient tensor (the patch is one sample) by its L1 norm; the clamp
    # keeps an all-zero gradient from producing NaN.
    return grad / grad.abs().sum().clamp_min(1e-30)


class SignGradientOptimizer(Optimizer):
    """Base of the sign-gradient attacks: checks ``lr`` (and ``mu``), runs the closure and calls
    :meth:`update` once per parameter inside ``torch.no_grad()``.

    A subclass writes only :meth:`update`; ``step(closure)`` behaves like every ``torch.optim``
    optimiser (the closure runs with gradients enabled and its loss is returned).

    >>> class Descend(SignGradientOptimizer):
    ...     def update(self, p, group, state):
    ...         if p.grad is not None:
    ...             p.sub_(group["lr"] * p.grad.sign())
    >>> p = torch.nn.Parameter(torch.ones(2)); p.grad = torch.tensor([1.0, -1.0])
    >>> _ = Descend([p], lr=0.5).step(); p.tolist()
    [0.5, 1.5]
    """

    def __init__(self, params: Iterable[Any], lr: float = 1 / 255, **hyper: float) -> None:
        name = type(self).__name__
        if lr <= 0:
            raise OptimizerError(f"{name}: step size lr must be > 0, got {lr}")
        if hyper.get("mu", 0.0) < 0:
            raise OptimizerError(f"{name}: momentum mu must be >= 0, got {hyper['mu']}")
        super().__init__(params, {"lr": lr, **hyper})

    def update(self, p: torch.Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        """Update one parameter in place (called under ``torch.no_grad()``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement update(p, group, state)")

    @staticmethod
    def momentum(p: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        """The parameter's momentum buffer (zeros on first use)."""
        if "momentum" not in state:
            state["momentum"] = torch.zeros_like(p)
        return state["momentum"]

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                self.update(p, group, self.state[p])
        return loss


class BIM(SignGradientOptimizer):
    """Basic iterative method: ``p <- p - lr * sign(grad)`` (Kurakin et al., 2016).

    Args:
        params: parameters (or parameter groups) to optimise.
        lr: the step size (alpha), in patch units; 1/255 is one grey level.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1 / 255) -> None:
        super().__init__(params, lr)

    def update(self, p: torch.Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        if p.grad is not None:
            p.add_(p.grad.sign(), alpha=-group["lr"])


class MIFGSM(SignGradientOptimizer):
    """Momentum iterative FGSM (Dong et al., 2018).

    ``g <- mu * g + grad / ||grad||_1``; ``p <- p - lr * sign(g)``.

    Args:
        params: parameters (or parameter groups) to optimise.
        lr: the step size (alpha).
        mu: the momentum decay factor (1.0 in the paper).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1 / 255, mu: float = 1.0) -> None:
        super().__init__(params, lr, mu=mu)

    def update(self, p: torch.Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        if p.grad is None:
            return
        g = self.momentum(p, state)
        g.mul_(group["mu"]).add_(_l1_normalised(p.grad))
        p.add_(g.sign(), alpha=-group["lr"])


class NIFGSM(SignGradientOptimizer):
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
        super().__init__(params, lr, mu=mu)

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
            g = self.momentum(p, state)
            state["iterate"] = p.detach().clone()
            p.add_(g, alpha=-group["lr"] * group["mu"])
            state["at_lookahead"] = True

    @torch.no_grad()
    def eval(self) -> None:
        """Put the parameters back at the iterate (idempotent)."""
        for _, p in self._params():
            state = self.state[p]
            if state.get("at_lookahead", False):
                p.copy_(state["iterate"])
                state["at_lookahead"] = False

    def update(self, p: torch.Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        g = self.momentum(p, state)
        iterate = state["iterate"] if state.get("at_lookahead", False) else p.detach().clone()
        if p.grad is not None:
            g.mul_(group["mu"]).add_(_l1_normalised(p.grad))
            iterate = iterate - group["lr"] * g.sign()
        p.copy_(iterate)
        state["at_lookahead"] = False
        state.pop("iterate", None)


#: Short ``_target_`` names; any dotted import path (``torch.optim.AdamW``) works as well.
OPTIMIZERS: dict[str, type[Optimizer]] = {
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
    "bim": BIM,
    "mifgsm": MIFGSM,
    "nifgsm": NIFGSM,
}

#: Defaults of the short names, applied when a setting is not given; every key can be overridden.
OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {
    "adam": {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
    "sgd": {"lr": 1e-1, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
    "bim": {"lr": 1 / 255},
    "mifgsm": {"lr": 1 / 255, "mu": 1.0},
    "nifgsm": {"lr": 1 / 255, "mu": 1.0},
}

_ALIASES = {"mi-fgsm": "mifgsm", "ni-fgsm": "nifgsm", "mi_fgsm": "mifgsm", "ni_fgsm": "nifgsm"}
_TORCH_EXTRAS = {"amsgrad", "maximize", "foreach", "capturable", "differentiable", "fused", "dampening"}


class OptimizerError(ConfigError, ValueError):
    """An unknown optimiser, or a setting the optimiser does not take; the message lists what is known."""


def optimizer_spec(spec: str | Mapping[str, Any], **settings: Any) -> dict[str, Any]:
    """Normalise an optimiser spec to ``{"_target_": ..., **settings}``.

    ``spec`` is a short name or import path (``"mifgsm"``, ``"torch.optim.AdamW"``) or a mapping
    with ``_target_``; ``name`` is read as ``_target_`` for the attack presets' ``{name: adam, lr: ..}``.
    """
    if isinstance(spec, str):
        out: dict[str, Any] = {"_target_": spec}
    else:
        out = dict(to_plain(spec))
        if "name" in out:
            if "_target_" in out:
                raise OptimizerError(f"optimizer {out!r}: give either _target_ or name, not both")
            out["_target_"] = out.pop("name")
        if "_target_" not in out:
            raise OptimizerError(f"optimizer {out!r} has no _target_; known short names: {sorted(OPTIMIZERS)}")
    out.update(settings)
    target = str(out["_target_"])
    out["_target_"] = _ALIASES.get(target.lower(), target.lower()) if "." not in target else target
    return out


def build_optimizer(spec: str | Mapping[str, Any], params: Iterable[Any], **settings: Any) -> Optimizer:
    """Build an optimiser from a spec through :func:`pandemonium.build.instantiate`.

    Short names (``adam``, ``sgd``, ``bim``, ``mifgsm``, ``nifgsm``) get :data:`OPTIMIZER_DEFAULTS`
    and a check of their settings; a dotted ``_target_`` is built as given. An unknown name or
    setting is one error that lists what is known.

    >>> p = torch.nn.Parameter(torch.zeros(2))
    >>> type(build_optimizer({"_target_": "mifgsm", "lr": 0.1}, [p])).__name__
    'MIFGSM'
    >>> type(build_optimizer("torch.optim.AdamW", [p], lr=0.1)).__name__
    'AdamW'
    """
    cfg = optimizer_spec(spec, **settings)
    key = cfg["_target_"]
    if "." not in key:
        if key not in OPTIMIZERS:
            raise OptimizerError(f"unknown optimizer {key!r}; known optimizers: {sorted(OPTIMIZERS)}")
        given = {k: v for k, v in cfg.items() if k != "_target_"}
        allowed = set(OPTIMIZER_DEFAULTS[key]) | (_TORCH_EXTRAS if key in ("adam", "sgd") else set())
        unknown = set(given) - allowed
        if unknown:
            raise OptimizerError(
                f"optimizer {key!r} got unknown settings {sorted(unknown)}; known settings: {sorted(allowed)}"
            )
        cfg = {"_target_": key, **OPTIMIZER_DEFAULTS[key], **given}
    if "betas" in cfg:
        cfg["betas"] = tuple(cfg["betas"])  # YAML gives lists
    return instantiate(cfg, what=f"optimizer {key!r}", registry=OPTIMIZERS, params=params)
