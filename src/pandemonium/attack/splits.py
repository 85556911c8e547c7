"""Which images of a task an attack uses for what: fit on train, select on validation, report on test.

An attack never reports a figure measured on images that chose it:

- the patch is **fitted** on the task's ``train`` split (:data:`FIT_SPLIT`);
- the trainer's fixed evaluation, hence the **best patch and early stopping**, uses the ``val``
  split (:data:`SELECT_SPLIT`, the task's fold ``fold``);
- the stored evaluation, the transfer matrix, the robustness curves and the report use the held-out
  ``test`` split only (:data:`REPORT_SPLIT`).

A task with fewer than two folds has no validation split of its own (its one fold is everything
that is not test). Then train and validation are **derived** from that fold: its ids are shuffled
with ``numpy.random.default_rng([DERIVED_SEED, fold])`` and the last
``max(1, round(DERIVED_VAL_FRACTION * n))`` of them are the validation split, the rest train. The
derivation depends on the task only (not on the run seed), so every run of a task agrees on it.

>>> meta = {"name": "t", "folds": [["a", "b", "c", "d", "e"]], "test": ["z"]}
>>> train, val = attack_split_ids(meta, "train"), attack_split_ids(meta, "val")
>>> len(train), len(val), sorted(train + val)
(4, 1, ['a', 'b', 'c', 'd', 'e'])
>>> attack_split_ids({"name": "t", "folds": [["a"], ["b"]], "test": []}, "val") is None  # a real fold
True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pandemonium.errors import PandemoniumError

__all__ = ["DERIVED_SEED", "DERIVED_VAL_FRACTION", "FIT_SPLIT", "REPORT_SPLIT", "SELECT_SPLIT", "SplitError",
           "attack_split_ids", "has_own_validation"]

FIT_SPLIT = "train"
SELECT_SPLIT = "val"
REPORT_SPLIT = "test"

#: share of a one-fold task's ids held out as its derived validation split
DERIVED_VAL_FRACTION = 0.2
#: seed of that derivation (with the fold): a property of the task, not of the run
DERIVED_SEED = 0x5E1EC7


class SplitError(PandemoniumError, ValueError):
    """A task cannot give the split an attack asks for (too few samples to derive a validation split)."""


def has_own_validation(meta: Mapping[str, Any]) -> bool:
    """Whether the task's folds give separate train and validation splits (two folds or more)."""
    return len(meta.get("folds") or []) >= 2


def attack_split_ids(meta: Mapping[str, Any], split: str, fold: int = 0) -> list[str] | None:
    """The sample ids of ``split`` for an attack, or ``None`` where the task's own split applies.

    Only ``train`` / ``val`` of a task with fewer than two folds are derived (module docstring).
    """
    if split not in (FIT_SPLIT, SELECT_SPLIT) or has_own_validation(meta):
        return None
    folds = list(meta.get("folds") or [])
    ids = [str(i) for i in (folds[0] if folds else [])]
    if len(ids) < 2:
        raise SplitError(f"task {meta.get('name')!r} has {len(ids)} non-test sample(s) in {len(folds)} fold(s); "
                         "an attack needs at least 2 to derive train and validation splits")
    order = np.random.default_rng([DERIVED_SEED, int(fold)]).permutation(len(ids))
    n_val = min(len(ids) - 1, max(1, round(DERIVED_VAL_FRACTION * len(ids))))
    chosen = order[len(ids) - n_val:] if split == SELECT_SPLIT else order[: len(ids) - n_val]
    return [ids[i] for i in sorted(chosen)]
