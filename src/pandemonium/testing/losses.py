"""The loss contract checker for plugin authors: ``check_loss(loss, outputs, kwargs)``.

::

    from pandemonium.testing import check_loss

    def test_my_loss():
        terms = check_loss(MyLoss(), model_outputs, {"targets": targets}, batch_size=4)

A loss returns a dict of per-sample ``(B,)`` terms, named as its ``terms`` attribute lists, all finite.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from pandemonium.attack.losses import LossError, assert_finite, check_terms

__all__ = ["check_loss"]


def check_loss(
    loss: Any, outputs: Any, kwargs: Mapping[str, Any] | None = None, batch_size: int | None = None
) -> dict[str, Tensor]:
    """Run ``loss(outputs, **kwargs)`` and check the loss contract; return the terms.

    Raises :class:`~pandemonium.attack.losses.LossError` (naming the loss and the term) when a term
    is not a per-sample ``(B,)`` tensor (e.g. a scalar), when the returned names differ from
    ``loss.terms``, or when a value is NaN / inf.
    """
    name = getattr(loss, "name", type(loss).__name__)
    try:
        terms = loss(outputs, **dict(kwargs or {}))
    except LossError:
        raise
    except Exception as err:
        raise LossError(f"loss {name!r} raised {type(err).__name__}: {err}") from err
    check_terms(name, terms, batch_size)
    declared = getattr(loss, "terms", None)
    if declared is not None and sorted(declared) != sorted(terms):
        raise LossError(f"loss {name!r}: returned terms {sorted(terms)} but .terms lists {sorted(declared)}")
    assert_finite(terms, where=f"loss {name!r}")
    return terms
