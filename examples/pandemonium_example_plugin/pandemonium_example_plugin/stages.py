"""A pipeline stage from the plugin: desaturation (a colour-constancy nuisance), registered as
``_target_: ExampleDesaturate`` and used by the plugin's attack preset."""

from __future__ import annotations

from typing import Any

import torch

from pandemonium.attack.stages.base import PipelineBase


class ExampleDesaturate(PipelineBase):
    """Blend each image towards its grey version by a random amount in ``[0, max_amount]`` per sample.

    Kornia style: :meth:`sample_params` draws the amounts from the stage's own generator, :meth:`apply`
    uses them, so ``forward(x, params=stage.get_last_sample_as_dict())`` replays a batch exactly.
    """

    name = "ExampleDesaturate"

    def __init__(self, max_amount: float = 0.5) -> None:
        super().__init__()
        self.params = {"max_amount": float(max_amount)}

    def sample_params(self, batch_shape: torch.Size, device: torch.device, evaluate: bool = False) -> dict[str, torch.Tensor]:
        return {"amount": self.uniform(0.0, self.params["max_amount"], (batch_shape[0],), device)}

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor], control: bool = False, evaluate: bool = False,
              **kwargs: Any) -> torch.Tensor:
        amount = params["amount"].to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)
        return (1 - amount) * x + amount * x.mean(dim=1, keepdim=True).expand_as(x)
