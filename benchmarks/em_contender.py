"""electricmayhem as a contender in ``pipeline_step.py``: the same workload built with its own public API.

electricmayhem (MIT licence) is not on the package index and is never a dependency of pandemonium: the
benchmark imports it when it is importable and otherwise prints :data:`INSTALL_HINT` and carries on.
Nothing of it is copied here; this module only calls it.

The workload, as an electricmayhem user writes it (``electricmayhem/whitebox/README.md``):

* ``RectanglePatchImplanter`` over the benchmark's scene bank (written out as PNG files, one box per
  scene covering the whole image, so the patch lands anywhere, as ``RectangleImplanter`` places it),
  ``scale=(0.75, 1.25)``;
* ``KorniaAugmentationPipeline({"ColorJiggle": ..., "RandomAffine": ...})`` with the same arguments as
  the Kornia config of the other paths;
* the victim (the benchmark's shared instance, frozen and in eval mode for every path: electricmayhem
  does not freeze it itself, so a user's unfrozen victim would also cost it the weights' gradients),
  which ``Pipeline`` wraps in a ``ModelWrapper``; ``set_loss`` with the untargeted
  cross-entropy to each scene's class; ``initialize_patch_params`` with the same starting patch;
* one step = what ``Pipeline.train_patch`` does per step minus logging: ``patch_params(batch)``,
  pipeline forward, the loss terms' weighted means, backward, Adam step, ``zero_grad``, clamp to [0, 1].
  The optimiser is plain ``torch.optim.Adam`` (lr 0.01) like the other paths: electricmayhem's default
  cosine learning-rate schedule would only add a scalar update.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NAME = "electricmayhem"

INSTALL_HINT = (
    "electricmayhem contender: not installed, so it is left out. It is not on the package index; to "
    "measure it, build a side environment (never the project's .venv): "
    "`bash benchmarks/install_electricmayhem.sh /path/to/electricmayhem-source /tmp/emvenv`, "
    "then run this script with `/tmp/emvenv/bin/python`."
)


def available() -> tuple[str | None, str]:
    """``(version, "")`` when ``electricmayhem.whitebox`` imports, else ``(None, why)``."""
    try:
        # its import pulls Ax, which logs a storage warning at import; not ours to show
        logging.disable(logging.WARNING)
        try:
            top = importlib.import_module(NAME)
            importlib.import_module(f"{NAME}.whitebox")
        finally:
            logging.disable(logging.NOTSET)
    except Exception as error:  # any import failure (missing module, incompatible Ax) means "not usable"
        return None, f"{type(error).__name__}: {error}"
    return str(getattr(top, "__version__", "unknown")), ""


def _write_scenes(bank_path: str, out: Path) -> tuple[list[dict], torch.Tensor]:
    """The bank's scenes as PNG files and the rows of electricmayhem's box table; their classes."""
    from PIL import Image

    data = torch.load(bank_path)
    images, classes = data["images"], data["class"]
    size = images.shape[-1]
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, image in enumerate(images):
        path = out / f"scene_{i:03d}.png"
        pixels = (image.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(path)
        rows.append({"image": str(path), "xmin": 0, "ymin": 0, "xmax": size, "ymax": size})
    return rows, classes


def build_step(bank_path: str, model: nn.Module, patch: torch.Tensor, batch: int, device: torch.device,
               tmp: Path) -> Callable[[], None]:
    """One electricmayhem optimisation step on the shared ``model``, starting from a copy of ``patch``
    (shape ``(1, 3, s, s)``); the returned function runs one step per call."""
    import pandas as pd

    em = importlib.import_module(f"{NAME}.whitebox")
    rows, classes = _write_scenes(bank_path, tmp / "em_scenes")
    logging.disable(logging.WARNING)  # "no 'split' column": the benchmark never evaluates
    try:
        implanter = em.RectanglePatchImplanter(pd.DataFrame(rows), scale=(0.75, 1.25))
    finally:
        logging.disable(logging.NOTSET)
    augment = em.KorniaAugmentationPipeline({
        "ColorJiggle": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "p": 1.0},
        "RandomAffine": {"degrees": 15, "scale": (0.9, 1.1), "p": 1.0},
    })
    pipeline = em.Pipeline(implanter, augment, model).to(device)
    labels = classes.to(device)

    def untargeted(outputs, **kwargs):
        # the scenes' classes, looked up by the scene indices the implanter drew for this batch
        true = labels[implanter.lastsample["image"].to(device)]
        return {"untargeted": -F.cross_entropy(outputs, true, reduction="none")}

    # set_loss checks the loss on a random CPU batch: only where the pipeline is on the CPU
    pipeline.set_loss(untargeted, test_patch_shape=(2, *patch.shape[1:]) if device.type == "cpu" else None)
    pipeline.initialize_patch_params(patch=patch.detach()[0].clone(), device=device)
    optimiser = torch.optim.Adam(pipeline.patch_params.parameters(), lr=0.01)
    weights = {"untargeted": 1.0}

    def step() -> None:
        outputs, kwargs = pipeline(pipeline.patch_params(batch))
        terms = pipeline.loss(outputs, evaluate=False, control=False, **kwargs)
        sum(weights[k] * torch.mean(terms[k]) for k in weights).backward()
        optimiser.step()
        optimiser.zero_grad()
        pipeline.patch_params.clamp(0, 1)
        pipeline.global_step += 1

    return step
