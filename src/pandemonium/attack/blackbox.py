"""Black-box patch attack: random search over patch pixels in the style of Sparse-RS (Croce et al., 2022).

The victim is only queried (its outputs, never its gradients), so it may be an ONNX file run by
onnxruntime, a remote service wrapped by :class:`pandemonium.models.onnx_model.CallableModel`, or a
torch model (then white-box and black-box results can be compared on the same victim).

Each iteration replaces one square of the patch by a random corner of the colour cube and keeps the
change if the loss on the current scenes went down. The square's share of the patch area follows
Sparse-RS's schedule: ``p_init`` halved at 0.1 %, 0.5 %, 2 %, 5 %, 10 %, 20 %, 40 %, 60 %, 80 % of the
iterations. Every query (one image through the victim) is counted against ``query_budget``.

>>> objective = PipelineObjective(pipeline, loss, {"target": 1.0}, batch_size=16)   # doctest: +SKIP
>>> result = SparseRSPatch(objective, (3, 16, 16), query_budget=5000, seed=0).run()  # doctest: +SKIP
>>> result.queries, result.loss                                                       # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from pandemonium.errors import PandemoniumError

#: fractions of the iterations at which the square size halves (Sparse-RS's schedule, scaled to the budget)
HALVING_POINTS = (0.001, 0.005, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8)


class BlackBoxError(PandemoniumError):
    """A black-box attack that cannot run (no budget, a loss that is not per sample, ...)."""


def square_fraction(p_init: float, iteration: int, iterations: int) -> float:
    """Share of the patch area the square of ``iteration`` covers (piecewise-constant halving)."""
    progress = iteration / max(iterations, 1)
    return p_init / 2 ** sum(progress > point for point in HALVING_POINTS)


@dataclass
class BlackBoxResult:
    """What :meth:`SparseRSPatch.run` found: the best patch, its loss, and what it cost."""

    patch: Tensor
    loss: float
    queries: int
    iterations: int
    accepted: int
    history: list[dict[str, float]] = field(default_factory=list)


class PatchObjective:
    """Per-scene loss of a patch on the current scenes; counts its queries. Subclasses define
    :meth:`resample` (draw new scenes) and :meth:`evaluate` (loss per scene, lower is better)."""

    batch_size: int = 1
    queries: int = 0

    def resample(self) -> None:
        """Draw new scenes (conditions) for the following evaluations."""

    def evaluate(self, patch: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, patch: Tensor) -> Tensor:
        with torch.no_grad():
            values = self.evaluate(patch)
        if values.dim() != 1:
            raise BlackBoxError(f"black-box objective: the loss must be one value per scene, got shape {tuple(values.shape)}")
        self.queries += int(values.shape[0])
        return values


class FunctionObjective(PatchObjective):
    """``fn(patch) -> loss per scene`` as an objective (``resample_fn`` draws new scenes, if given)."""

    def __init__(self, fn: Callable[[Tensor], Tensor], resample_fn: Callable[[], None] | None = None) -> None:
        self.fn, self.resample_fn = fn, resample_fn

    def resample(self) -> None:
        if self.resample_fn is not None:
            self.resample_fn()

    def evaluate(self, patch: Tensor) -> Tensor:
        return self.fn(patch)


class PipelineObjective(PatchObjective):
    """A pandemonium :class:`~pandemonium.attack.pipeline.Pipeline` + loss as the objective.

    :meth:`resample` runs the pipeline once to draw the scenes' random conditions
    (``get_last_sample_as_dict``); every evaluation replays exactly those (``params=``), so a candidate
    and the current patch are compared on the same scenes. The loss is ``sum_k w_k * term_k`` per scene.
    """

    def __init__(self, pipeline: Any, loss: Callable[..., Mapping[str, Tensor]], weights: Mapping[str, float],
                 batch_size: int = 16, device: Any = None) -> None:
        if not weights:
            raise BlackBoxError("black-box objective: give at least one weighted loss term")
        self.pipeline, self.loss, self.weights = pipeline, loss, dict(weights)
        self.batch_size = int(batch_size)
        self.device = device
        self.params: Any = None

    def _run(self, patch: Tensor, params: Any) -> Tensor:
        patch = patch if self.device is None else patch.to(self.device)
        batch = patch.unsqueeze(0).expand(self.batch_size, *patch.shape)
        outputs, kwargs = self.pipeline(batch, params=params)
        terms = self.loss(outputs, **kwargs)
        missing = [k for k in self.weights if k not in terms]
        if missing:
            raise BlackBoxError(f"black-box objective: loss terms {missing} not returned (terms: {sorted(terms)})")
        return sum(w * terms[k].reshape(-1) for k, w in self.weights.items())

    def resample(self) -> None:
        self.params = None  # the next evaluation draws, and keeps what it drew

    def evaluate(self, patch: Tensor) -> Tensor:
        values = self._run(patch, self.params)
        if self.params is None:
            self.params = self.pipeline.get_last_sample_as_dict()
        return values


class SparseRSPatch:
    """Random search over the pixels of one patch (Sparse-RS's patch attack, square-shaped updates).

    Args:
        objective: a :class:`PatchObjective` (loss per scene, lower is better; counts queries).
        patch_shape: ``(C, h, w)`` of the patch.
        query_budget: images the victim may see in all (the run stops before exceeding it).
        p_init: initial share of the patch area one update covers.
        resample_every: draw new scenes every this many iterations (0: keep the first scenes).
        seed: seeds the search (its own ``torch.Generator``): same seed, same patch.
    """

    def __init__(self, objective: PatchObjective, patch_shape: tuple[int, int, int], query_budget: int,
                 p_init: float = 0.3, resample_every: int = 0, seed: int = 0) -> None:
        if query_budget <= 0:
            raise BlackBoxError(f"black-box attack: query_budget must be positive, got {query_budget}")
        if not 0 < p_init <= 1:
            raise BlackBoxError(f"black-box attack: p_init must be in (0, 1], got {p_init}")
        self.objective, self.patch_shape = objective, tuple(int(s) for s in patch_shape)
        self.query_budget, self.p_init = int(query_budget), float(p_init)
        self.resample_every, self.seed = int(resample_every), int(seed)

    def _corner_colour(self, gen: torch.Generator, channels: int) -> Tensor:
        return torch.randint(0, 2, (channels,), generator=gen).float()

    def run(self, patch: Tensor | None = None) -> BlackBoxResult:
        """Search from ``patch`` (default: random vertical stripes of corner colours, as Sparse-RS does)."""
        gen = torch.Generator().manual_seed(self.seed)
        c, h, w = self.patch_shape
        if patch is None:
            patch = torch.randint(0, 2, (c, 1, w), generator=gen).float().expand(c, h, w).clone()
        patch = patch.detach().clone().float()
        per_query = max(int(getattr(self.objective, "batch_size", 1)), 1)
        iterations = self.query_budget // per_query - 1  # the first evaluation costs one batch too
        if iterations < 1:
            raise BlackBoxError(
                f"black-box attack: a budget of {self.query_budget} queries does not cover two batches of {per_query}"
            )
        start = self.objective.queries
        self.objective.resample()
        best = float(self.objective(patch).mean())
        history, accepted, done = [], 0, 0
        for it in range(iterations):
            if self.objective.queries - start + per_query > self.query_budget:
                break
            if self.resample_every and it and it % self.resample_every == 0:
                if self.objective.queries - start + 2 * per_query > self.query_budget:
                    break
                self.objective.resample()
                best = float(self.objective(patch).mean())
            side = max(1, min(h, w, round(math.sqrt(square_fraction(self.p_init, it, iterations) * h * w))))
            y = int(torch.randint(0, h - side + 1, (1,), generator=gen))
            x = int(torch.randint(0, w - side + 1, (1,), generator=gen))
            candidate = patch.clone()
            region = candidate[:, y:y + side, x:x + side]
            colour = self._corner_colour(gen, c)
            for _ in range(8):  # a square that would not change is a wasted query
                if not torch.all(region == colour.view(c, 1, 1)):
                    break
                colour = self._corner_colour(gen, c)
            candidate[:, y:y + side, x:x + side] = colour.view(c, 1, 1)
            value = float(self.objective(candidate).mean())
            done = it + 1
            if value < best:
                patch, best, accepted = candidate, value, accepted + 1
            history.append({"iteration": it, "loss": best, "queries": self.objective.queries - start,
                            "square": side})
        return BlackBoxResult(patch=patch, loss=best, queries=self.objective.queries - start, iterations=done,
                              accepted=accepted, history=history)


# ------------------------------------------------------------------------------- from an attack spec
@dataclass(frozen=True)
class BlackBoxSettings:
    """The ``blackbox`` entry of an attack preset with ``method: blackbox``.

    Args:
        queries: images the victim may see while fitting (the query budget).
        square_init: initial share of the patch area one random square covers (Sparse-RS's ``p_init``).
        resample_every: draw new scenes every this many iterations (0: one set of scenes for the whole search).
        init: ``stripes`` (random vertical stripes of corner colours, as Sparse-RS starts) or ``preset``
            (the preset's ``patch.init``).
    """

    queries: int = 2000
    square_init: float = 0.3
    resample_every: int = 20
    init: str = "stripes"

    @classmethod
    def from_spec(cls, spec: Any) -> BlackBoxSettings:
        """The settings of an :class:`~pandemonium.attack.spec.AttackSpec`; errors name the preset and key."""
        where = f"attack preset {spec.name!r} (task {spec.task!r}): blackbox"
        data = dict(spec.blackbox or {})
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise BlackBoxError(f"{where}: unknown keys {unknown} (known: queries, square_init, resample_every, init)")
        settings = cls(**{k: v for k, v in data.items() if v is not None})
        checks = {
            "queries": isinstance(settings.queries, int) and not isinstance(settings.queries, bool)
            and settings.queries > 0,
            "square_init": isinstance(settings.square_init, int | float) and 0 < settings.square_init <= 1,
            "resample_every": isinstance(settings.resample_every, int) and settings.resample_every >= 0,
            "init": settings.init in ("stripes", "preset"),
        }
        for key, ok in checks.items():
            if not ok:
                raise BlackBoxError(f"{where}.{key}: {getattr(settings, key)!r} is not valid (queries: a positive "
                                    "integer; square_init: in (0, 1]; resample_every: >= 0; init: stripes or preset)")
        if settings.queries < 2 * spec.batch_size:
            raise BlackBoxError(f"{where}.queries: a budget of {settings.queries} queries does not cover two batches "
                                f"of {spec.batch_size} (batch_size); raise it or lower attack.batch_size")
        return settings


@dataclass
class BlackBoxFit:
    """A black-box fit as an attack mode stores it: the patch, a summary and a per-iteration history."""

    patch: Tensor
    summary: dict[str, Any]
    history: list[dict[str, float]]


def fit_blackbox(pipeline: Any, loss: Callable[..., Mapping[str, Tensor]], weights: Mapping[str, float],
                 spec: Any, seed: int, device: Any = None) -> BlackBoxFit:
    """Fit ``spec``'s patch with :class:`SparseRSPatch` + :class:`PipelineObjective` under its query budget.

    The summary holds ``method``, ``queries`` (images the victim saw), ``query_budget``, ``iterations``,
    ``accepted`` (improving squares), ``best_loss`` and ``seconds``; the history has one row per iteration
    (``step``, ``loss``, ``queries``, ``square``), the attack mode's curves.
    """
    settings = BlackBoxSettings.from_spec(spec)
    pipeline.eval()
    objective = PipelineObjective(pipeline, loss, weights, batch_size=spec.batch_size, device=device)
    start_patch = None
    if settings.init == "preset":
        with torch.no_grad():
            start_patch = spec.build_patch(seed)().detach().cpu()
    search = SparseRSPatch(objective, spec.patch_shape, query_budget=settings.queries, p_init=settings.square_init,
                           resample_every=settings.resample_every, seed=seed)
    started = time.perf_counter()
    result = search.run(start_patch)
    seconds = time.perf_counter() - started
    summary = {"method": "blackbox", "queries": result.queries, "query_budget": settings.queries,
               "iterations": result.iterations, "steps": result.iterations, "accepted": result.accepted,
               "best_loss": result.loss, "seconds": round(seconds, 2)}
    history = [{"step": row["iteration"], "blackbox_loss": row["loss"], "queries": row["queries"],
                "square": row["square"]} for row in result.history]
    return BlackBoxFit(patch=result.patch.clamp(0, 1), summary=summary, history=history)
