"""Patch parameterisations: range, init, projection, batching, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pandemonium.attack.patches import LowResPatch, RawPatch, SigmoidPatch, TanhPatch

ALL = [RawPatch, SigmoidPatch, TanhPatch, LowResPatch]


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_shape_range_and_gradient(cls):
    patch = cls((3, 8, 8), init="uniform", seed=1)
    image = patch().detach()
    assert image.shape == (3, 8, 8)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    batch = patch.batch(4)
    assert batch.shape == (4, 3, 8, 8)
    batch.sum().backward()
    grads = [p.grad for p in patch.parameters()]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_uniform_init_is_seeded(cls):
    a, b, c = cls((3, 8, 8), seed=4), cls((3, 8, 8), seed=4), cls((3, 8, 8), seed=5)
    assert torch.equal(a(), b())
    assert not torch.equal(a(), c())


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_grey_init(cls):
    image = cls((1, 4, 4), init="grey")().detach()
    assert torch.allclose(image, torch.full((1, 4, 4), 0.5), atol=1e-6)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_image_file_init(cls, tmp_path):
    array = np.zeros((8, 8, 3), dtype=np.uint8)
    array[:, :4] = (255, 0, 0)
    array[:, 4:] = (0, 0, 255)
    path = tmp_path / "init.png"
    Image.fromarray(array).save(path)
    image = cls((3, 8, 8), init=str(path))().detach()
    tolerance = 0.3 if cls is LowResPatch else 0.01  # low-res blurs the edge
    assert abs(float(image[0, :, 0].mean()) - 1.0) < tolerance
    assert abs(float(image[2, :, 7].mean()) - 1.0) < tolerance
    assert float(image[0, :, 7].mean()) < tolerance


def test_bad_init_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown patch init 'rainbow'"):
        RawPatch((3, 4, 4), init="rainbow")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        RawPatch((3, 4, 4), init=str(tmp_path / "missing.png"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png.*cannot be read"):
        RawPatch((3, 4, 4), init=str(broken))
    with pytest.raises(ValueError, match="shape must be"):
        RawPatch((4, 4))


def test_raw_patch_projection_clamps():
    patch = RawPatch((3, 4, 4), init="grey")
    with torch.no_grad():
        patch.pixels.add_(torch.linspace(-2, 2, 48).view(3, 4, 4))
    patch.project_()
    image = patch().detach()
    assert float(image.min()) == 0.0 and float(image.max()) == 1.0


def test_low_res_patch_has_fewer_parameters():
    low = LowResPatch((3, 16, 16), factor=4)
    assert sum(p.numel() for p in low.parameters()) == 3 * 4 * 4
    assert low.config["factor"] == 4


@pytest.mark.parametrize("cls", [SigmoidPatch, TanhPatch, RawPatch], ids=lambda c: c.__name__)
def test_set_image_round_trips(cls):
    target = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.05
    patch = cls((3, 4, 4))
    patch.set_image_(target)
    assert torch.allclose(patch(), target, atol=1e-5)
