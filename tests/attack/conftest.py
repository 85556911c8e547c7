"""Shared tiny inputs and toy stages for the pipeline tests (8x8 patches, batch 2-3)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

from pandemonium.attack.stages.base import PipelineBase

#: a four-corner placement inside the 32 px scenes of :func:`scene_bank`
QUAD = [[4.0, 4.0], [28.0, 6.0], [26.0, 26.0], [5.0, 24.0]]


@pytest.fixture(scope="session")
def scene_bank(tmp_path_factory) -> str:
    """A ``.pt`` bank of 8 scenes (32 px) with every target an implanter reads: class, mask, boxes and
    labels, quads, and a train / eval split."""
    path = tmp_path_factory.mktemp("scene_bank") / "scenes.pt"
    generator = torch.Generator().manual_seed(0)
    torch.save(
        {
            "images": torch.rand(8, 3, 32, 32, generator=generator) * 0.5,
            "class": torch.arange(8),
            "mask": torch.zeros(8, 32, 32, dtype=torch.long),
            "boxes": [torch.tensor([[2.0, 2.0, 20.0, 24.0], [16.0, 16.0, 30.0, 30.0]]) for _ in range(8)],
            "labels": [torch.tensor([1, 2]) for _ in range(8)],
            "quads": [torch.tensor([QUAD]) for _ in range(8)],
            "split": ["train"] * 6 + ["eval"] * 2,
        },
        path,
    )
    return str(path)


class AddLevel(PipelineBase):
    """Toy stochastic stage: adds a random level and a random 2-D offset per sample."""

    name = "AddLevel"

    def __init__(self, sigma: float = 0.1, keys=None):
        super().__init__(keys=keys)
        self.sigma = sigma
        self.params = {"sigma": sigma, "keys": self.keys}

    def sample_params(self, batch_shape, device, evaluate=False):
        batch = batch_shape[0]
        return {
            "level": self.uniform(0.0, self.sigma, (batch,), device),
            "offset": self.normal((batch, 2), device),
        }

    def apply(self, x, params, control=False, evaluate=False, **kwargs):
        return (
            x
            + params["level"].view(-1, 1, 1, 1).to(x.dtype)
            + 0.01 * params["offset"][:, :1, None, None].to(x.dtype)
        )


class ToyImplant(PipelineBase):
    """Toy implanter: pastes the patch into a bank image at a random corner; control = bank image only."""

    name = "ToyImplant"
    consumes_patch = True

    def __init__(self, image_size: int = 12, keys=None):
        super().__init__(keys=keys)
        generator = torch.Generator().manual_seed(3)
        self.register_buffer("bank", torch.rand(4, 3, image_size, image_size, generator=generator))
        self.image_size = image_size
        self.params = {"image_size": image_size, "keys": self.keys}

    def sample_params(self, batch_shape, device, evaluate=False):
        batch = batch_shape[0]
        return {"image": self.randint(0, 4, (batch,), device), "corner": self.randint(0, 2, (batch,), device)}

    def apply(self, x, params, control=False, evaluate=False, **kwargs):
        images = self.bank[params["image"].to(self.bank.device)].to(x.dtype)
        kwargs = {**kwargs, "targets": {"class": params["image"] % 3}}
        if control:
            return images, kwargs
        h, w = x.shape[-2:]
        out = images.clone()
        top = (params["corner"] * (self.image_size - h)).tolist()
        out_list = [out[i : i + 1] for i in range(out.shape[0])]
        for i, t in enumerate(top):  # tiny toy: a loop is fine here
            out_list[i][:, :, t : t + h, :w] = x[i : i + 1]
        return torch.cat(out_list), kwargs


def tiny_classifier(num_classes: int = 3, channels: int = 3, seed: int = 0) -> nn.Module:
    """A 2-layer conv net whose weights come from an explicit generator (no global RNG)."""
    model = nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model


@pytest.fixture
def toys() -> SimpleNamespace:
    """The toy stage classes and model factory (conftest modules are not importable by name)."""
    return SimpleNamespace(AddLevel=AddLevel, ToyImplant=ToyImplant, tiny_classifier=tiny_classifier)


@pytest.fixture
def patch_batch() -> Tensor:
    return torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def classifier() -> nn.Module:
    return tiny_classifier()
