"""Create tasks in a forked child process while the caller does other work (imports, set-up).

Creating the built-in tasks is single-threaded Python and NumPy; on a machine with a second core a
child process does it while the caller's own start-up (importing Lightning and MLflow, which takes
seconds) goes on. The child is a fork of the caller, so it starts without importing anything, and it
calls :func:`~pandemonium.tasks.creators.create_task` exactly as the caller would (same names, data
dir, seed and keyword arguments, in the same order): the files are the same. Its log lines go
through the caller's handlers. Where ``fork`` is not available (Windows, macOS' default) or the
caller has no second core, :meth:`BackgroundTaskCreation.start` returns ``None`` and the caller
creates the tasks itself.

>>> job = BackgroundTaskCreation.start(["shapes_cls"], "/tmp/data", seed=0, kwargs={})  # doctest: +SKIP
>>> ...                                                      # the caller's own start-up  # doctest: +SKIP
>>> job.wait()                                              # {"shapes_cls": seconds}   # doctest: +SKIP
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

from pandemonium.tasks.errors import TaskCreationError

__all__ = ["BackgroundTaskCreation"]


def _create(conn: Connection, names: Sequence[str], data_dir: str, seed: int, kwargs: Mapping[str, Any]) -> None:
    import torch

    from pandemonium.tasks.creators import create_task

    # GNU OpenMP's thread pool does not survive a fork: a parallel region in the child could hang if
    # the parent had already started the pool, so the child keeps torch on its own thread
    torch.set_num_threads(1)

    seconds = {}
    try:
        for name in names:
            start = time.perf_counter()
            create_task(name, data_dir, seed=seed, **kwargs)
            seconds[name] = time.perf_counter() - start
    finally:  # the tasks finished so far; the parent creates the others and names the culprit
        conn.send(seconds)
        conn.close()


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class BackgroundTaskCreation:
    """A child process creating ``names`` one after the other; :meth:`wait` returns their seconds."""

    def __init__(self, process: Any, conn: Connection, names: Sequence[str]) -> None:
        self.process = process
        self.conn = conn
        self.names = list(names)

    @classmethod
    def start(cls, names: Sequence[str], data_dir: str | os.PathLike[str], seed: int,
              kwargs: Mapping[str, Any]) -> BackgroundTaskCreation | None:
        """Fork the child, or ``None`` where a fork is unavailable or would share one core."""
        if not sys.platform.startswith("linux") or "fork" not in multiprocessing.get_all_start_methods():
            return None
        if _usable_cores() < 2:
            return None
        context = multiprocessing.get_context("fork")
        receive, send = context.Pipe(duplex=False)
        process = context.Process(target=_create, args=(send, list(names), os.fspath(data_dir), int(seed), dict(kwargs)),
                                  name="pandemonium-create-tasks", daemon=True)
        process.start()
        send.close()
        return cls(process, receive, names)

    def wait(self) -> dict[str, float]:
        """Wait for the child; ``{task: seconds}`` of the tasks it created. A child that failed or
        created only some raises :class:`TaskCreationError` (the caller creates the rest itself,
        which names the culprit)."""
        try:
            seconds = self.conn.recv()
        except EOFError:
            seconds = {}
        finally:
            self.conn.close()
        self.process.join()
        missing = [n for n in self.names if n not in seconds]
        if missing or self.process.exitcode != 0:
            raise TaskCreationError(f"creating tasks {', '.join(missing or self.names)} in a child process failed "
                                    f"(exit code {self.process.exitcode})")
        return {str(k): float(v) for k, v in seconds.items()}
