"""A process-wide cache of decoded task images, bounded in bytes.

A task's images are decoded many times in one run: every training epoch reads the whole train split,
and every pipeline built for an attack, an evaluation or a robustness curve loads its scene bank from
the same files. Decoding a PNG costs far more than copying the array it gives, so
:class:`~pandemonium.tasks.loaders.ImageLoader` keeps what it decoded here, keyed by the file's path,
size and modification time (a rewritten file is decoded again) and by the decoding settings.

The cache holds read-only arrays and hands out copies, so a caller that edits its array in place
(an augmentation) never changes what the next caller gets. Least recently used entries go first once
the budget (:attr:`DecodedImageCache.max_bytes`, ``PANDEMONIUM_IMAGE_CACHE_MB``, default 512 MiB) is
reached; a budget of 0 turns the cache off.

>>> import numpy as np
>>> cache = DecodedImageCache(max_bytes=1024)
>>> cache.put(("a.png", 0, 0, "RGB"), np.zeros((4, 4, 3), np.float32))
>>> cache.get(("a.png", 0, 0, "RGB")).shape, cache.get(("b.png", 0, 0, "RGB"))
((4, 4, 3), None)
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Hashable
from pathlib import Path

import numpy as np

__all__ = ["IMAGE_CACHE", "DecodedImageCache", "file_key"]

CACHE_ENV = "PANDEMONIUM_IMAGE_CACHE_MB"


class DecodedImageCache:
    """Least-recently-used arrays up to ``max_bytes`` in total; thread-safe."""

    def __init__(self, max_bytes: int = 512 * 2**20) -> None:
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> np.ndarray | None:
        """A copy of the array stored under ``key``, or None."""
        with self._lock:
            array = self._items.get(key)
            if array is None:
                return None
            self._items.move_to_end(key)
        return array.copy()

    def put(self, key: Hashable, array: np.ndarray) -> None:
        """Keep a read-only copy of ``array`` (nothing when it alone exceeds the budget)."""
        if array.nbytes > self.max_bytes:
            return
        stored = np.array(array, copy=True)
        stored.flags.writeable = False
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= old.nbytes
            self._items[key] = stored
            self.nbytes += stored.nbytes
            while self.nbytes > self.max_bytes and self._items:
                _, dropped = self._items.popitem(last=False)
                self.nbytes -= dropped.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0


def file_key(path: str | os.PathLike[str], *settings: Hashable) -> tuple[Hashable, ...] | None:
    """``(absolute path, size, mtime_ns, *settings)``, or None when the file cannot be stat'ed (the
    decoder then raises its own error)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (str(Path(path).absolute()), stat.st_size, stat.st_mtime_ns, *settings)


def _budget() -> int:
    raw = os.environ.get(CACHE_ENV, "").strip()
    try:
        return int(float(raw) * 2**20) if raw else 512 * 2**20
    except ValueError:
        return 512 * 2**20


#: the cache :class:`~pandemonium.tasks.loaders.ImageLoader` uses
IMAGE_CACHE = DecodedImageCache(_budget())
