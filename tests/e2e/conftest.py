"""Helpers for the end-to-end tests: config composition in-process and the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

CONFIG_DIR = Path(__file__).resolve().parents[2] / "src" / "pandemonium" / "configs"

# a reduced demo: tiny tasks and models, a few optimisation steps; every stage of the job still runs
TINY_TASKS = ("mode.creator_kwargs.num_samples=64", "mode.creator_kwargs.image_size=32")
TINY_TRAIN = ("model=tiny", "trainer.lightning.max_epochs=1", "trainer.task_type_overrides.detection.lightning.max_epochs=1",
              "trainer.lightning.max_time=00:00:01:00")
TINY_ATTACK = ("attack.steps=4", "attack.num_eval=16", "attack.batch_size=8")
TINY_EVAL = ("mode.num_eval=16", "mode.batch_size=16", "mode.scales=[0.3,0.4]", "mode.angles=[0,30]",
             "mode.brightness=[0.5,1.0]", "mode.blur=[1.0]", "mode.jpeg=[50]", "mode.num_examples=2")


def compose(mode: str, roots: Any, *overrides: str) -> Any:
    """The composed config of ``pandemonium <mode> overrides`` (Hydra's compose API, no run)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from pandemonium.cli.resolvers import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return hydra_compose(
            "config",
            overrides=[f"mode={mode}", f"data_dir={roots.data_dir}", f"out_dir={roots.out_dir}",
                       "logging.mlflow.enabled=false", "logging.tensorboard.enabled=false", *overrides],
        )


class Cli:
    """``pandemonium`` in a subprocess against fixed data / results roots (usable at module scope)."""

    def __init__(self, data_dir: Path, out_dir: Path) -> None:
        self.data_dir, self.out_dir = data_dir, out_dir

    def command(self, mode: str, *overrides: str) -> list[str]:
        return [sys.executable, "-m", "pandemonium.cli.main", mode, f"data_dir={self.data_dir}",
                f"out_dir={self.out_dir}", *overrides]

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONHASHSEED": "0", "PANDEMONIUM_DATA": str(self.data_dir),
                "PANDEMONIUM_RESULTS": str(self.out_dir)}

    def __call__(self, mode: str, *overrides: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(mode, *overrides), capture_output=True, text=True, env=self.env(),
                              timeout=timeout, cwd=self.out_dir.parent)

    def popen(self, mode: str, *overrides: str, log: Path) -> subprocess.Popen:
        handle = open(log, "w")  # noqa: SIM115 - closed by the caller's process lifetime
        return subprocess.Popen(self.command(mode, *overrides), stdout=handle, stderr=subprocess.STDOUT,
                                env=self.env(), cwd=self.out_dir.parent)

    def runs(self, proj: str) -> list[Path]:
        root = self.out_dir / proj / "runs"
        return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    root = tmp_path_factory.mktemp("e2e")
    (root / "data").mkdir()
    (root / "results").mkdir()
    return Cli(root / "data", root / "results")


def check(proc: subprocess.CompletedProcess, what: str) -> None:
    assert proc.returncode == 0, f"{what} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def overrides(*groups: Sequence[str]) -> list[str]:
    return [item for group in groups for item in group]
