"""A ``DataLoader`` that loads the next batches in a background thread of the same process.

With ``num_workers=0`` a ``DataLoader`` decodes, augments and collates every batch in the training loop's
thread, so the model waits for its data. :class:`PrefetchDataLoader` runs the very same iterator (same
sampler, same dataset, same order of calls) in one background thread, ``prefetch`` batches ahead, while
the loop computes: torch releases the GIL in its kernels, so loading overlaps the model's work.

The batches are bit for bit those of the plain loader: one thread calls the dataset in the sampler's
order, as the loop would, and every random draw of the data path comes from its own seeded
generators (the sampler's ``torch.Generator``, the albumentations ``Compose`` seeded by
:func:`~pandemonium.tasks.augmentations.build_cpu_augmentations`), never from global state the
training loop also draws from. Those generators live on across epochs, so the thread must draw
exactly what the plain loader draws: it starts at the consumer's first ``next`` (an iterator that is
made and dropped draws nothing) and loads at most ``len(loader)`` batches; asking beyond them (the
call that ends the epoch, where a ``RandomSampler`` draws its next permutation) happens in the
consumer's thread, exactly when the plain loader would. Worker processes (``num_workers > 0``) would
change those streams; this loader is used only without them.

>>> import torch
>>> loader = PrefetchDataLoader(list(range(10)), batch_size=4, prefetch=2)
>>> [b.tolist() for b in loader]
[[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

__all__ = ["PrefetchDataLoader"]

_DONE = object()
_POLL_S = 0.1


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class _PrefetchIterator:
    """Pulls the first ``limit`` items of ``source`` in a daemon thread into a queue of ``depth``
    items (started by the first ``next``); the consumer pulls any further item itself."""

    def __init__(self, source: Iterator[Any], depth: int, limit: int) -> None:
        self._source = source
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._limit = int(limit)
        self._taken = 0
        self._thread: threading.Thread | None = None

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._fill, name="pandemonium-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self) -> None:
        try:
            for _ in range(self._limit):
                if not self._put(next(self._source)):
                    return  # the consumer went away (early stop): drop the rest
        except StopIteration:
            self._put(_DONE)
        except BaseException as err:  # handed to the consumer, which raises it in its own thread
            self._put(_Failure(err))

    def __iter__(self) -> _PrefetchIterator:
        return self

    def __next__(self) -> Any:
        if self._finished:
            raise StopIteration
        if self._taken >= self._limit:  # past what the thread loads: the consumer's own call, as in a plain loader
            return next(self._source)
        if self._thread is None:
            self._start()
        item = self._queue.get()
        self._taken += 1
        if item is _DONE:
            self._finished = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._finished = True
            raise item.error
        return item

    def close(self) -> None:
        """Stop the thread (it finishes the batch it is loading, then exits)."""
        self._stop.set()
        self._finished = True

    def __del__(self) -> None:
        self._stop.set()


class PrefetchDataLoader(DataLoader):
    """``DataLoader`` whose iterator runs ``prefetch`` batches ahead in a background thread.

    Only for ``num_workers=0`` (worker processes already load in parallel); ``prefetch=0`` is a plain
    ``DataLoader``. Everything else (``len``, ``sampler``, ``dataset``) is the ``DataLoader``'s.
    """

    def __init__(self, *args: Any, prefetch: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if prefetch < 0:
            raise ValueError(f"PrefetchDataLoader: prefetch must be >= 0, got {prefetch}")
        if prefetch and self.num_workers > 0:
            raise ValueError("PrefetchDataLoader: prefetch needs num_workers=0 (workers already load in parallel)")
        self.prefetch = int(prefetch)

    def __iter__(self) -> Any:
        source = super().__iter__()
        try:
            limit = len(self)
        except TypeError:  # an iterable dataset without a length: nothing tells where the epoch ends
            limit = 0
        if not self.prefetch or limit < 1:
            return source
        return _PrefetchIterator(source, self.prefetch, limit)
