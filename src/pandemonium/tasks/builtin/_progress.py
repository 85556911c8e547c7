"""Progress bars for creators (tqdm; silent when stderr is not a terminal, e.g. in CI logs)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

_T = TypeVar("_T")


def progress(iterable: Iterable[_T], description: str, total: int | None = None) -> Iterable[_T]:
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=description, total=total, leave=False, mininterval=1.0, disable=None)
