"""The loss contract (per-sample terms), its checks, the :class:`PatchLoss` base and :class:`CompositeLoss`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from pandemonium.errors import PandemoniumError

__all__ = ["CompositeLoss", "LossError", "PatchLoss", "assert_finite", "check_terms", "find_nonfinite",
           "required_target", "weighted_total"]


class LossError(PandemoniumError, ValueError):
    """A loss broke its contract or got unusable input; the message names the loss and the term."""


# ----------------------------------------------------------------------------- contract helpers
def check_terms(loss_name: str, terms: Any, batch_size: int | None = None) -> None:
    """Raise :class:`LossError` unless ``terms`` is ``{str: Tensor(B)}`` with one common B."""
    if not isinstance(terms, Mapping) or not terms:
        raise LossError(
            f"loss {loss_name!r} must return a non-empty dict of per-sample tensors, got {type(terms).__name__}"
        )
    for term, value in terms.items():
        if not isinstance(value, Tensor):
            raise LossError(f"loss {loss_name!r}: term {term!r} is a {type(value).__name__}, not a tensor")
        if value.dim() != 1:
            hint = (
                " (a scalar: do not reduce over the batch -- return one value per sample)"
                if value.dim() == 0
                else ""
            )
            raise LossError(
                f"loss {loss_name!r}: term {term!r} has shape {tuple(value.shape)}; expected per-sample shape "
                f"(B,){hint}"
            )
        if batch_size is not None and value.shape[0] != batch_size:
            raise LossError(
                f"loss {loss_name!r}: term {term!r} has {value.shape[0]} values; expected batch size {batch_size}"
            )
        batch_size = value.shape[0]


def find_nonfinite(terms: Mapping[str, Tensor]) -> dict[str, list[int]]:
    """``{term: [sample indices]}`` of NaN / inf values (empty when all are finite)."""
    found: dict[str, list[int]] = {}
    for term, value in terms.items():
        bad = ~torch.isfinite(value.detach())
        if bool(bad.any()):
            found[term] = torch.nonzero(bad.flatten()).flatten().tolist()
    return found


def assert_finite(terms: Mapping[str, Tensor], where: str = "loss") -> None:
    """Raise :class:`LossError` naming the terms and samples that are NaN / inf."""
    found = find_nonfinite(terms)
    if found:
        details = "; ".join(f"{term}: samples {idx[:10]}" for term, idx in found.items())
        raise LossError(f"{where}: non-finite values (NaN/inf) in {details}")


def weighted_total(terms: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    """``sum_k w_k * terms[k].mean()``; unknown weight names raise an error listing the terms."""
    unknown = [name for name in weights if name not in terms]
    if unknown:
        raise LossError(f"weights name unknown loss terms {unknown}; available terms: {sorted(terms)}")
    if not weights:
        raise LossError(f"no loss term has a weight; available terms: {sorted(terms)}")
    total = None
    for name, weight in weights.items():
        contribution = float(weight) * terms[name].mean()
        total = contribution if total is None else total + contribution
    return total


# ----------------------------------------------------------------------------- base
class PatchLoss(nn.Module):
    """Base class: ``loss(outputs, **kwargs) -> {term: Tensor(B)}``; :attr:`terms` lists the names.

    Subclasses set ``term_names`` (or override :attr:`terms`) and implement :meth:`forward`. Losses are
    ``nn.Module``s so tables (e.g. printable colours) move with ``.to(device)``.
    """

    name: str = "PatchLoss"
    term_names: tuple[str, ...] = ()

    @property
    def terms(self) -> list[str]:
        return list(self.term_names)

    def forward(self, outputs: Any, **kwargs: Any) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"terms={self.terms}"


def required_target(loss: PatchLoss, kwargs: Mapping[str, Any], key: str) -> Tensor:
    targets = kwargs.get("targets")
    if not isinstance(targets, Mapping) or key not in targets:
        available = sorted(targets) if isinstance(targets, Mapping) else "no kwargs['targets']"
        raise LossError(
            f"loss {loss.name!r} needs kwargs['targets'][{key!r}] (put there by the implanter); available: {available}"
        )
    return targets[key]



# ----------------------------------------------------------------------------- composition
class CompositeLoss(PatchLoss):
    """Several losses at once; their term dicts are merged (term names must be unique)."""

    name = "CompositeLoss"

    def __init__(self, losses: Sequence[PatchLoss] | Mapping[str, PatchLoss]) -> None:
        super().__init__()
        items = list(losses.values()) if isinstance(losses, Mapping) else list(losses)
        if not items:
            raise LossError("CompositeLoss needs at least one loss")
        owner: dict[str, str] = {}
        for loss in items:
            if not callable(loss):
                raise LossError(f"CompositeLoss: {loss!r} is not callable")
            for term in getattr(loss, "terms", []):
                if term in owner:
                    raise LossError(
                        f"CompositeLoss: term {term!r} is produced by both {owner[term]!r} and "
                        f"{getattr(loss, 'name', type(loss).__name__)!r}; give one of them another term= name"
                    )
                owner[term] = getattr(loss, "name", type(loss).__name__)
        self.losses = nn.ModuleList([loss for loss in items if isinstance(loss, nn.Module)])
        self._callables = items

    @property
    def terms(self) -> list[str]:
        return [t for loss in self._callables for t in getattr(loss, "terms", [])]

    def forward(self, outputs: Any, **kwargs: Any) -> dict[str, Tensor]:
        merged: dict[str, Tensor] = {}
        for loss in self._callables:
            name = getattr(loss, "name", type(loss).__name__)
            terms = loss(outputs, **kwargs)
            check_terms(name, terms)
            for term, value in terms.items():
                if term in merged:
                    raise LossError(f"CompositeLoss: term {term!r} returned twice (second time by {name!r})")
                merged[term] = value
        return merged
