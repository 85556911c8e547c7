"""pytest fixtures for pandemonium and its plugins (registered via the pytest11 entry point).

``pandemonium_roots``  temporary data/results roots; ``PANDEMONIUM_DATA`` / ``PANDEMONIUM_RESULTS``
                       point at them for the test and are restored afterwards.
``fake_task``          a tiny classification task (``fake_cls``, 12 samples of 8x8 px) on disk.
``run_mode``           ``run_mode("info", "task_list=[fake_cls]")`` runs the CLI in a subprocess with
                       those roots and returns a :class:`ModeResult`.

Example (in a plugin's tests, nothing to import)::

    def test_my_mode(fake_task, run_mode):
        result = run_mode("my_mode", f"task_list=[{fake_task.name}]")
        assert result.returncode == 0, result.stderr
        assert (result.run_dir / "steps.jsonl").exists()
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

FAKE_TASK_NAME = "fake_cls"


@dataclass(frozen=True)
class Roots:
    """The temporary roots of one test."""

    data_dir: Path
    out_dir: Path

    def runs(self, proj: str = "default") -> list[Path]:
        """Run directories of ``proj``, oldest first."""
        root = self.out_dir / proj / "runs"
        return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


@dataclass
class ModeResult:
    """Outcome of :func:`run_mode`: exit code, captured output and the newest run directory."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    run_dir: Path | None

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture
def pandemonium_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Roots]:
    """Fresh ``data``/``results`` folders, exported as ``PANDEMONIUM_DATA``/``PANDEMONIUM_RESULTS``."""
    roots = Roots(data_dir=tmp_path / "data", out_dir=tmp_path / "results")
    roots.data_dir.mkdir()
    roots.out_dir.mkdir()
    monkeypatch.setenv("PANDEMONIUM_DATA", str(roots.data_dir))
    monkeypatch.setenv("PANDEMONIUM_RESULTS", str(roots.out_dir))
    yield roots


def write_fake_task(data_dir: Path, name: str = FAKE_TASK_NAME, num_samples: int = 12, size: int = 8,
                    seed: int = 0) -> Any:
    """Write a tiny two-class task (bright vs dark images) and return its ``TaskStruct``."""
    import numpy as np

    from pandemonium.tasks.creators import load_task_struct
    from pandemonium.tasks.format import TaskWriter, task_path

    rng = np.random.default_rng(seed)
    writer = TaskWriter(task_path(data_dir, name), name, "classification", class_names=["dark", "bright"],
                        description="tiny fake task for tests", license="CC0")
    for index in range(num_samples):
        label = index % 2
        base = 180 if label else 40
        image = np.clip(base + rng.integers(-30, 30, (size, size, 3)), 0, 255).astype(np.uint8)
        writer.add_sample(image=image, cls=label)
    writer.finish(seed, num_folds=2, test_fraction=0.25)
    return load_task_struct(name, data_dir)


@pytest.fixture
def fake_task(pandemonium_roots: Roots) -> Any:
    """A created tiny classification task ``fake_cls`` in the test's data root (its ``TaskStruct``)."""
    return write_fake_task(pandemonium_roots.data_dir)


@pytest.fixture
def run_mode(pandemonium_roots: Roots) -> Callable[..., ModeResult]:
    """Run ``pandemonium <mode> <overrides...>`` in a subprocess with the test's roots.

    Keyword arguments: ``env`` (extra environment variables), ``timeout`` (seconds, default 300),
    ``proj`` (project whose newest run directory is reported, default ``default``), ``cwd``.
    """

    def run(mode: str, *overrides: str, env: dict[str, str] | None = None, timeout: float = 300,
            proj: str = "default", cwd: str | os.PathLike | None = None) -> ModeResult:
        args = [sys.executable, "-m", "pandemonium.cli.main", mode, *overrides]
        full_env = {**os.environ, **(env or {})}
        full_env.setdefault("PYTHONHASHSEED", "0")
        proc = subprocess.run(args, capture_output=True, text=True, env=full_env, timeout=timeout,
                              cwd=cwd or pandemonium_roots.out_dir.parent)
        runs = pandemonium_roots.runs(proj)
        return ModeResult(args=args, returncode=proc.returncode, stdout=proc.stdout, stderr=proc.stderr,
                          run_dir=runs[-1] if runs else None)

    return run
