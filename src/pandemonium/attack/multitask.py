"""One patch against several task pipelines at once (the universal attack)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

log = logging.getLogger(__name__)


class MultiTaskPipeline(torch.nn.Module):
    """Several task pipelines fed the same patch batch (the universal attack).

    Looks like one pipeline to :class:`~pandemonium.attack.training.PatchTrainer`: outputs and
    kwargs are dicts by task, sampled params carry a ``<task>/`` prefix and replay per task.
    """

    def __init__(self, pipelines: Mapping[str, Any]) -> None:
        super().__init__()
        self.pipes = torch.nn.ModuleDict(dict(pipelines))

    def forward(self, x: Any, control: bool = False, evaluate: bool = False,
                params: Mapping[str, Any] | None = None, **kwargs: Any) -> tuple[dict, dict]:
        outputs, per_task = {}, {}
        for name, pipe in self.pipes.items():
            sub = None
            if params is not None:
                prefix = f"{name}/"
                sub = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
            outputs[name], per_task[name] = pipe(x, control=control, evaluate=evaluate, params=sub)
        # `targets` by task, so success metrics of each task's output find that task's ground truth
        targets = {name: kw["targets"] for name, kw in per_task.items() if "targets" in kw}
        return outputs, {"per_task": per_task, "targets": targets}

    def get_description(self) -> str:
        parts = [f"**{name}**:\n{pipe.get_description()}" for name, pipe in self.pipes.items()]
        return "Universal patch, one pipeline per task:\n\n" + "\n\n".join(parts)

    def to_config(self) -> dict[str, Any]:
        return {name: pipe.to_config() for name, pipe in self.pipes.items()}

    def get_last_sample_as_dict(self) -> dict[str, Any]:
        merged = {}
        for name, pipe in self.pipes.items():
            merged.update({f"{name}/{k}": v for k, v in pipe.get_last_sample_as_dict().items()})
        return merged


class MultiTaskLoss:
    """Per-task losses of the universal attack; terms are named ``<task>/<term>``."""

    def __init__(self, losses: Mapping[str, Any]) -> None:
        self.losses = dict(losses)

    def __call__(self, outputs: Mapping[str, Any], per_task: Mapping[str, Any] | None = None, **_: Any) -> dict:
        terms = {}
        for name, loss in self.losses.items():
            for key, value in loss(outputs[name], **(per_task or {}).get(name, {})).items():
                terms[f"{name}/{key}"] = value
        return terms
