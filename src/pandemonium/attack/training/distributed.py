"""Multi-device patch fits: the batch split into shards, one per process, through Lightning Fabric.

With ``PatchTrainer(..., devices=W)`` every optimiser step draws ``batch_size`` samples as ``W``
disjoint shards of ``batch_size / W``. Shard ``k`` draws from its own random streams, seeded from
the run seed and ``k`` (:func:`shard_seed`), so the union of the shards is reproducible whatever runs
them:

* ``strategy="ddp"`` (default when ``devices > 1``): ``W`` processes started by
  :class:`lightning.fabric.Fabric` (``accelerator="cpu"``: gloo, ``"cuda"``: NCCL, one GPU each);
  process ``k`` draws shard ``k``; the patch gradient (the patch is the only trainable parameter) and
  the logged loss terms are averaged over the processes with one all-reduce each per step.
* ``strategy="serial"``: one process draws the ``W`` shards one after the other from the same
  streams and averages their gradients -- the single-process reference of a ``W``-device fit (and a
  way to reproduce a multi-GPU fit on a laptop).

Both give the same patch up to the order of floating-point sums (see :class:`PatchTrainer`'s "Several
devices" section for the stated tolerance). Process 0 alone runs the callbacks that write or log
(:func:`rank_zero_only`: checkpoints, MLflow, TensorBoard, patch files, plots, progress bar); the
others (best patch, early stopping) run everywhere on identical evaluations, so every process stops
at the same step. A checkpoint holds every shard's random streams, so a fit resumes on any number
of processes that has the same number of shards.

>>> shard_seed(0, 0) != shard_seed(0, 1)
True
>>> ShardPlan(2, batch_size=8, strategy="serial").local_shards
[0, 1]
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pandemonium.attack.checkpoint import get_rng_state, set_rng_state
from pandemonium.attack.training.config import TrainerSettingError, derived_seed
from pandemonium.errors import PandemoniumError

if TYPE_CHECKING:
    from pandemonium.attack.training.trainer import PatchTrainer

__all__ = ["STRATEGIES", "DistributedFitError", "ShardPlan", "rank_zero_only", "shard_seed", "shard_plan"]

#: strategies a multi-device fit accepts
STRATEGIES = ("ddp", "serial")
#: callbacks that write files or log: only process 0 runs them (a callback may say otherwise with a
#: ``rank_zero_only`` attribute)
RANK_ZERO_CALLBACKS = ("Checkpoint", "MLflowLogger", "TensorBoardLogger", "PatchFiles", "Plots", "ProgressBar")


class DistributedFitError(PandemoniumError, RuntimeError):
    """A process of a multi-device fit failed; the message holds its rank and traceback."""

    exit_code = 1


def shard_seed(seed: int, shard: int) -> int:
    """The seed of shard ``shard``'s random streams in a run seeded ``seed``."""
    return derived_seed(f"shard:{int(shard)}", seed)


def rank_zero_only(callback: Any) -> bool:
    """Whether only process 0 runs ``callback`` (its ``rank_zero_only`` attribute, else its kind)."""
    flag = getattr(callback, "rank_zero_only", None)
    if flag is not None:
        return bool(flag)
    return any(cls.__name__ in RANK_ZERO_CALLBACKS for cls in type(callback).__mro__)


def shard_plan(devices: int, batch_size: int, accelerator: str = "cpu", strategy: str | None = None) -> ShardPlan | None:
    """The plan of a fit on ``devices`` (``None``: one device, the plain single-process loop)."""
    if int(devices) < 1:
        raise TrainerSettingError(f"PatchTrainer: devices must be >= 1, got {devices}")
    if strategy is not None and strategy not in STRATEGIES:
        raise TrainerSettingError(f"PatchTrainer: strategy {strategy!r} is not one of {list(STRATEGIES)}")
    if int(devices) == 1 and strategy is None:
        return None
    return ShardPlan(int(devices), batch_size=batch_size, accelerator=accelerator, strategy=strategy or "ddp")


class ShardPlan:
    """Which shards this process draws, their random streams, and the collectives of a fit.

    Args:
        shards: number of shards (``devices``); ``batch_size`` must be a multiple of it.
        batch_size: samples per optimiser (micro-)step over all shards.
        accelerator: Fabric's accelerator for ``"ddp"`` (``"cpu"``, ``"cuda"``, ``"gpu"``, ``"auto"``).
        strategy: ``"ddp"`` (one process per shard) or ``"serial"`` (all shards in this process).
    """

    def __init__(self, shards: int, batch_size: int, accelerator: str = "cpu", strategy: str = "ddp") -> None:
        if batch_size % shards:
            raise TrainerSettingError(
                f"PatchTrainer: batch_size ({batch_size}) must be a multiple of devices ({shards}): each "
                "device draws an equal share of the batch"
            )
        self.shards, self.batch = int(shards), batch_size // shards
        self.accelerator, self.strategy = str(accelerator), str(strategy)
        self.fabric: Any = None
        self.rank = 0
        self.streams: dict[int, dict[str, Any]] = {}
        self.saved: dict[int, dict[str, Any]] | None = None
        self.every_rank_returns = False

    # ------------------------------------------------------------------ who draws what
    @property
    def launches(self) -> bool:
        """Whether ``fit`` must start processes (``"ddp"`` and not yet inside one)."""
        return self.strategy == "ddp" and self.fabric is None

    @property
    def is_rank_zero(self) -> bool:
        return self.rank == 0

    @property
    def local_shards(self) -> list[int]:
        return list(range(self.shards)) if self.strategy == "serial" else [self.rank]

    def seed_streams(self, trainer: PatchTrainer) -> None:
        """Fresh streams for this process's shards (the stage generators and the global RNGs)."""
        roots = (trainer.pipeline, trainer.patch)
        for k in self.local_shards:
            seed = shard_seed(trainer.seed, k)
            if hasattr(trainer.pipeline, "stages"):
                trainer.pipeline.set_seed(seed)
            elif hasattr(trainer.pipeline, "set_seed"):
                trainer.pipeline.set_seed(seed, 0)
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            self.streams[k] = get_rng_state(*roots)
        self.saved = None

    @contextlib.contextmanager
    def stream(self, trainer: PatchTrainer, shard: int) -> Iterator[None]:
        """Draw from shard ``shard``'s streams inside the block (serial: swapped in and out)."""
        if len(self.streams) > 1:
            set_rng_state(self.streams[shard], trainer.pipeline, trainer.patch)
        yield
        if len(self.streams) > 1:
            self.streams[shard] = get_rng_state(trainer.pipeline, trainer.patch)

    # ------------------------------------------------------------------ collectives
    def sync_grads(self, trainer: PatchTrainer) -> None:
        """Average the patch gradient over the processes (no-op in one process)."""
        if self.fabric is None:
            return
        for p in trainer.patch.parameters():
            if p.grad is not None:
                p.grad.copy_(self.fabric.all_reduce(p.grad, reduce_op="mean"))

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` averaged over the processes (the logged loss terms of a step)."""
        return values if self.fabric is None else self.fabric.all_reduce(values, reduce_op="mean")

    def on_evaluation(self, trainer: PatchTrainer) -> bool:
        """Collect every shard's streams for the checkpoint (a collective: all processes call it at
        every evaluation); returns whether this process writes files."""
        if self.fabric is None:
            self.saved = {k: v for k, v in self.streams.items()}
            if len(self.streams) == 1:  # one shard here: its live state is the current one
                self.saved = {k: get_rng_state(trainer.pipeline, trainer.patch) for k in self.streams}
        else:
            gathered: list[Any] = [None] * self.fabric.world_size
            torch.distributed.all_gather_object(gathered, get_rng_state(trainer.pipeline, trainer.patch))
            self.saved = dict(enumerate(gathered))
        return self.is_rank_zero

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {"shards": self.shards, "streams": self.saved}

    def load_state_dict(self, trainer: PatchTrainer, state: Mapping[str, Any] | None) -> None:
        if not state or int(state.get("shards", 0)) != self.shards or not state.get("streams"):
            raise TrainerSettingError(
                f"PatchTrainer: the checkpoint was written by a fit with {dict(state or {}).get('shards', 1)} "
                f"shard(s); this trainer has devices={self.shards}: resume with the same number of devices"
            )
        streams = {int(k): v for k, v in state["streams"].items()}
        self.streams = {k: streams[k] for k in self.local_shards}
        self.saved = streams
        set_rng_state(self.streams[self.local_shards[0]], trainer.pipeline, trainer.patch)

    # ------------------------------------------------------------------ processes
    def launch(self, loop: Callable[..., Any], trainer: PatchTrainer, *args: Any) -> tuple[Any, dict[str, Any]]:
        """Run ``loop(*args)`` in ``shards`` processes; returns process 0's result and trainer state."""
        from lightning.fabric import Fabric
        from lightning.fabric.strategies import DDPStrategy

        if "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ:
            start = "popen"  # started by torchrun/SLURM: this process is already one rank
        else:  # fork needs no pickling, but CUDA cannot be re-initialised in a forked child
            start = "spawn" if torch.cuda.is_available() and torch.cuda.is_initialized() else "fork"
        self.every_rank_returns = start == "popen"
        fabric = Fabric(accelerator=self.accelerator, devices=self.shards, strategy=DDPStrategy(start_method=start))
        try:
            path = fabric.launch(run_rank, self, loop, trainer, *args)
        except Exception as err:  # torch's ProcessRaisedException carries the rank's traceback
            raise DistributedFitError(f"PatchTrainer: a process of the {self.shards}-device fit failed: {err}") from err
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        finally:
            os.unlink(path)


def run_rank(fabric: Any, plan: ShardPlan, loop: Callable[..., Any], trainer: PatchTrainer, *args: Any) -> bytes:
    """What one process of a ``"ddp"`` fit runs: move to its device, keep its callbacks, run the loop."""
    plan.fabric, plan.rank = fabric, int(fabric.global_rank)
    trainer.device = fabric.device
    trainer.pipeline.to(fabric.device)
    trainer.patch.to(fabric.device)
    if not plan.is_rank_zero:
        trainer.callbacks = [c for c in trainer.callbacks if not rank_zero_only(c)]
    try:
        result = loop(*args)
    except KeyboardInterrupt as err:  # torch's worker wrapper would swallow it and the launcher wait forever
        raise DistributedFitError(f"rank {plan.rank} was interrupted: {err}") from err
    if not (plan.is_rank_zero or plan.every_rank_returns):
        return None
    # a file, not the return queue: the launcher reads its pipe only after every process has
    # ended, so a large result would block the sender forever
    handle, path = tempfile.mkstemp(prefix="pandemonium-fit-", suffix=".pt")
    os.close(handle)
    torch.save((result, trainer.state_dict()), path)
    return path
