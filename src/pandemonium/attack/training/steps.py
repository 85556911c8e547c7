"""One optimiser step of :class:`~pandemonium.attack.training.trainer.PatchTrainer`: forward, loss,
backward (with gradient accumulation and sharpness-aware minimisation), finite checks, step,
projection and schedule.

>>> issubclass(NonFiniteLossError, RuntimeError)
True
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from pandemonium.attack.losses import weighted_total
from pandemonium.attack.rows import expand_patch
from pandemonium.attack.schedules import is_plateau
from pandemonium.attack.training.patch_module import patch_value, project_patch_
from pandemonium.errors import PandemoniumError

if TYPE_CHECKING:
    from pandemonium.attack.training.trainer import PatchTrainer

__all__ = ["NonFiniteLossError", "StepRunner"]


class NonFiniteLossError(PandemoniumError, RuntimeError):
    """A loss term (or the patch gradient) became NaN or infinite; the message names term and step."""

    exit_code = 1  # a failure during work, not bad input


class StepRunner:
    """Runs the optimiser steps of one fit of ``trainer`` (its patch, pipeline, loss and optimiser)."""

    def __init__(self, trainer: PatchTrainer) -> None:
        self.t = trainer
        plan = trainer.sharding
        # several devices: this process draws its shards' share of the batch from their own streams
        self.shards: list[int | None] = plan.local_shards if plan is not None else [None]
        self.batch = plan.batch if plan is not None else trainer.batch_size
        self.micro_steps = trainer.grad_accumulation * len(self.shards)

    def terms_or_raise(self, terms: Mapping[str, Tensor], step: int) -> Tensor:
        """Per-term batch means; raises naming the first non-finite term (one device sync)."""
        finite = torch.stack([torch.isfinite(t.detach()).all() for t in terms.values()])
        if not bool(finite.all()):
            bad = [k for k, ok in zip(terms, finite.tolist()) if not ok]
            kind = "NaN" if bool(torch.isnan(terms[bad[0]].detach()).any()) else "infinite"
            raise NonFiniteLossError(
                f"loss term {bad[0]!r} became {kind} at step {step} (non-finite terms: {bad}); the fit stopped. "
                f"Last good checkpoint: {self.t.last_checkpoint}"
            )
        return torch.stack([t.detach().float().mean() for t in terms.values()])

    def forward_loss(self, params: Mapping[str, Any] | None = None) -> tuple[Tensor, Mapping[str, Tensor]]:
        t = self.t
        x = expand_patch(patch_value(t.patch), self.batch)
        y, kwargs = t.pipeline(x, params=params)
        terms = t.loss(y, **kwargs)
        return weighted_total(terms, t.weights) / self.micro_steps, terms

    def stream(self, shard: int | None) -> Any:
        plan = self.t.sharding
        return contextlib.nullcontext() if plan is None or shard is None else plan.stream(self.t, shard)

    def sync_grads(self) -> None:
        if self.t.sharding is not None:
            self.t.sharding.sync_grads(self.t)

    def step(self, step: int) -> dict[str, float]:
        """One optimiser step; ``step`` (1-based, as logged) only names the step in errors."""
        t = self.t
        opt = t.optimizer
        assert opt is not None
        if hasattr(opt, "train"):  # NI-FGSM: move to the Nesterov look-ahead point
            opt.train()
        opt.zero_grad(set_to_none=True)
        samples: list[Mapping[str, Any]] = []
        means = None
        try:
            for _ in range(t.grad_accumulation):
                for shard in self.shards:
                    with self.stream(shard):
                        total, terms = self.forward_loss()
                    term_means = self.terms_or_raise(terms, step)
                    means = term_means if means is None else means + term_means
                    total.backward()
                    if t.sharpness_aware:
                        samples.append(t.pipeline.get_last_sample_as_dict())
            self.sync_grads()
            if t.sharpness_aware:
                self.sharpness_aware_grad(samples, step)
            self.check_grads(step)
        except BaseException:
            if hasattr(opt, "eval"):  # leave the patch at its iterate, not the look-ahead point
                opt.eval()
            raise
        opt.step()
        if hasattr(opt, "eval"):
            opt.eval()
        project_patch_(t.patch)
        if not is_plateau(t.scheduler):
            t.scheduler.step()
        means = means / self.micro_steps
        logs = dict(zip(terms, (t.sharding.mean(means) if t.sharding is not None else means).tolist()))
        logs["total"] = float(sum(t.weights[k] * logs[k] for k in t.weights))
        logs["lr"] = float(opt.param_groups[0]["lr"])
        return logs

    def sharpness_aware_grad(self, samples: list[Mapping[str, Any]], step: int) -> None:
        """SAM: move the patch by rho along its gradient, take the gradient there on the *same*
        sampled conditions (params replay), move back exactly, keep that gradient for the step."""
        t = self.t
        params = [p for p in t.patch.parameters() if p.grad is not None]
        if not params:
            return
        with torch.no_grad():
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
            scale = float(t.sharpness_aware) / (norm + 1e-12)
            saved = [p.detach().clone() for p in params]
            for p in params:
                p.add_(p.grad * scale)
        t.optimizer.zero_grad(set_to_none=True)
        try:
            for sample in samples:
                total, terms = self.forward_loss(params=sample)
                self.terms_or_raise(terms, step)
                total.backward()
            self.sync_grads()
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)  # copy, not subtract: restores the exact bits

    def check_grads(self, step: int) -> None:
        for name, p in self.t.patch.named_parameters():
            if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                raise NonFiniteLossError(
                    f"the gradient of patch parameter {name!r} became non-finite at step {step}; the fit "
                    f"stopped. Last good checkpoint: {self.t.last_checkpoint}"
                )
