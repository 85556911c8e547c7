"""Tiny stand-in stages, model and loss for the trainer tests (16 px images, 3 classes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pandemonium.attack.pipeline import Pipeline
from pandemonium.attack.stages.base import PipelineBase

IMAGE = 16
PATCH = 6
CLASSES = 3


class ToyImplant(PipelineBase):
    """Pastes the patch at a random integer offset into one of a bank of images (batched, no loop)."""

    name = "ToyImplant"
    consumes_patch = True

    def __init__(self, num_images: int = 12, bank_seed: int = 0) -> None:
        super().__init__()
        self.params = {"num_images": num_images, "bank_seed": bank_seed}
        g = torch.Generator().manual_seed(bank_seed)
        self.register_buffer("bank", torch.rand(num_images, 3, IMAGE, IMAGE, generator=g) * 0.6)
        self.register_buffer("labels", torch.arange(num_images) % CLASSES)

    def sample_params(self, batch_shape, device, evaluate=False):
        b = batch_shape[0]
        half = self.bank.shape[0] // 2
        low, high = (half, self.bank.shape[0]) if evaluate else (0, half)
        return {
            "image": self.randint(low, high, (b,), device),
            "offset": self.randint(0, IMAGE - PATCH + 1, (b, 2), device),
        }

    def apply(self, x, params, control=False, evaluate=False, **kwargs):
        idx = params["image"].long()
        images = self.bank[idx]
        eye = torch.eye(IMAGE, device=x.device)
        rows = eye[params["offset"][:, 0].long()[:, None] + torch.arange(PATCH, device=x.device)]  # (B,P,H)
        cols = eye[params["offset"][:, 1].long()[:, None] + torch.arange(PATCH, device=x.device)]  # (B,P,W)
        placed = torch.einsum("bih,bcij,bjw->bchw", rows, x, cols)
        mask = torch.einsum("bih,bij,bjw->bhw", rows, torch.ones_like(x[:, 0]), cols)[:, None]
        out = images if control else images * (1 - mask) + placed * mask
        targets = {"class": self.labels[idx]}
        return out, {"targets": targets}


class ToyBrightness(PipelineBase):
    """Per-sample brightness shift (a stochastic augmentation)."""

    name = "ToyBrightness"

    def __init__(self, amount: float = 0.1) -> None:
        super().__init__()
        self.params = {"amount": amount}
        self.amount = amount

    def sample_params(self, batch_shape, device, evaluate=False):
        return {"shift": self.uniform(-self.amount, self.amount, (batch_shape[0],), device)}

    def apply(self, x, params, control=False, evaluate=False, **kwargs):
        return (x + params["shift"].view(-1, 1, 1, 1)).clamp(0, 1)

    def log_vizualizations(self, x, x_control, writer, step, logging_to_mlflow=False):
        writer.add_images("ToyBrightness/input_vs_control", torch.cat([x[:2], x_control[:2]]), global_step=step)


def toy_model(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG state
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, CLASSES)
        )
    return model.eval()


def toy_pipeline(seed: int = 0, model_seed: int = 0) -> Pipeline:
    return Pipeline(ToyImplant(), ToyBrightness(), toy_model(model_seed), seed=seed)


class ToyLoss:
    """Per-sample terms: ``target`` (cross-entropy to class 0), ``untargeted`` (minus CE to the true
    class) and ``tv`` (total variation of the image; logged only unless weighted)."""

    target_class = 0

    def __call__(self, logits, targets=None, **kwargs):
        true = targets["class"]
        tgt = torch.zeros_like(true)
        return {
            "target": F.cross_entropy(logits, tgt, reduction="none"),
            "untargeted": -F.cross_entropy(logits, true, reduction="none"),
            "logit0": -logits[:, 0],
        }


class NaNAfter:
    """Wraps a loss; from the ``after``-th call on, term ``target`` becomes NaN."""

    def __init__(self, loss, after: int) -> None:
        self.loss, self.after, self.calls = loss, after, 0

    def __call__(self, logits, **kwargs):
        self.calls += 1
        terms = dict(self.loss(logits, **kwargs))
        if self.calls > self.after:
            terms["target"] = terms["target"] * float("nan")
        return terms


class ToyMerge(PipelineBase):
    """Deterministic: averages a dict of patches into one (to run the trainer with several patches)."""

    name = "ToyMerge"
    handles_dicts = True

    def __init__(self) -> None:
        super().__init__()
        self.params = {}

    def apply(self, x, params, control=False, evaluate=False, **kwargs):
        return torch.stack([x[k] for k in sorted(x)]).mean(0)
