"""Every modality follows geometric augmentations by its Geometry, on the CPU and the GPU path.

A plugin-style dense modality (a depth-like map registered here with ``Geometry.DENSE``) must stay
aligned with its image under every built-in augmentation config (albumentations) and under Kornia's
geometric augmentations (the Lightning module's device path).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from pandemonium.tasks import KORNIA_VALID_MODALITIES, Modality, build_cpu_augmentations
from pandemonium.tasks.attributes import Geometry, modality_geometry, register_modality, unregister_modality
from pandemonium.tasks.geometry import GeometryError, apply_albumentations, apply_kornia

AUG_DIR = Path(__file__).resolve().parents[2] / "src" / "pandemonium" / "configs" / "augmentations"
SIZE = 48


@pytest.fixture
def depth():
    modality = register_modality("GEOMETRY_TEST_DEPTH", "geometry_test_depth", geometry=Geometry.DENSE)
    yield modality
    unregister_modality(modality)


def scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image, mask and depth map with one object square in the same place (off centre)."""
    y, x = (int(v) for v in rng.integers(4, SIZE - 14, 2))
    image = np.zeros((SIZE, SIZE, 3), np.float32)
    image[y:y + 8, x:x + 8] = rng.uniform(0.6, 1.0, 3)
    mask = np.zeros((SIZE, SIZE), np.int64)
    mask[y:y + 8, x:x + 8] = 1
    depth = np.zeros((SIZE, SIZE), np.float32)
    depth[y:y + 8, x:x + 8] = 0.8
    return image, mask, depth


def centroid(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, np.float64)
    on = values > 0.5 * (values.max() + values.min())
    ys, xs = np.nonzero(on)
    return np.array([ys.mean(), xs.mean()])


def test_geometry_is_declared_and_drives_kornia_keys(depth):
    assert modality_geometry(Modality.MASK) is Geometry.LABEL_MAP
    assert modality_geometry(depth) is Geometry.DENSE
    assert KORNIA_VALID_MODALITIES[depth] == "mask"
    assert modality_geometry(Modality.CLASS) is Geometry.NONE and Modality.CLASS not in KORNIA_VALID_MODALITIES


@pytest.mark.parametrize("config", sorted(p.stem for p in AUG_DIR.glob("*.yaml")))
def test_dense_modality_stays_aligned_on_the_cpu_path(depth, config):
    cfg = OmegaConf.to_container(OmegaConf.load(AUG_DIR / f"{config}.yaml"))
    modalities = [Modality.IMAGE, Modality.MASK, depth]
    transform = build_cpu_augmentations(cfg, seed=3, modalities=modalities)
    if transform is None:  # a config without CPU transforms moves nothing
        assert not cfg.get("cpu")
        return
    rng = np.random.default_rng(0)
    moved = 0
    for _ in range(24):
        image, mask, dmap = scene(rng)
        out = apply_albumentations(transform, {Modality.IMAGE: image, Modality.MASK: mask, depth: dmap})
        c_image = centroid(out[Modality.IMAGE].mean(axis=2))
        assert np.abs(centroid(out[depth]) - c_image).max() < 1.0, config
        assert np.abs(centroid(out[Modality.MASK]) - c_image).max() < 1.0, config
        assert out[depth].dtype == np.float32 and set(np.unique(out[Modality.MASK])) <= {0, 1}
        moved += np.abs(c_image - centroid(image.mean(axis=2))).max() > 1.0
    assert moved > 0, f"{config}: the augmentation never moved the image, so alignment was not tested"


def kornia_augmentations():
    import kornia.augmentation as K

    return {
        "hflip": K.RandomHorizontalFlip(p=1.0),
        "vflip": K.RandomVerticalFlip(p=1.0),
        "affine": K.RandomAffine(degrees=20, translate=(0.1, 0.1), scale=(0.8, 1.2), p=1.0),
        "perspective": K.RandomPerspective(0.3, p=1.0),
        "crop": K.RandomResizedCrop((SIZE, SIZE), scale=(0.6, 1.0), p=1.0),
        "photometric+flip": K.AugmentationSequential(K.ColorJitter(0.2, 0.2, p=1.0), K.RandomHorizontalFlip(p=1.0)),
    }


@pytest.mark.parametrize("name", list(kornia_augmentations()))
def test_dense_modality_stays_aligned_on_the_gpu_path(depth, name):
    import kornia.augmentation as K

    aug = K.AugmentationSequential(kornia_augmentations()[name], data_keys=None)
    rng = np.random.default_rng(1)
    scenes = [scene(rng) for _ in range(8)]
    batch = {
        "image": torch.from_numpy(np.stack([s[0] for s in scenes])).permute(0, 3, 1, 2).contiguous(),
        "mask": torch.from_numpy(np.stack([s[1] for s in scenes])),
        depth.value: torch.from_numpy(np.stack([s[2] for s in scenes])),
        "class": torch.zeros(8, dtype=torch.long),
    }
    torch.manual_seed(0)
    out = apply_kornia(aug, batch)
    assert out[depth.value].shape == (8, SIZE, SIZE) and out[depth.value].dtype == torch.float32
    assert out["mask"].dtype == torch.long and torch.equal(out["class"], batch["class"])
    moved = 0
    for i in range(8):
        c_image = centroid(out["image"][i].mean(0).numpy())
        assert np.abs(centroid(out[depth.value][i].numpy()) - c_image).max() < 1.0, name
        assert np.abs(centroid(out["mask"][i].numpy()) - c_image).max() < 1.0, name
        moved += np.abs(c_image - centroid(batch["image"][i].mean(0).numpy())).max() > 1.0
    assert moved > 0


def test_two_box_modalities_in_one_sample_are_refused():
    boxes2 = register_modality("GEOMETRY_TEST_BOXES", "geometry_test_boxes", geometry=Geometry.BOXES)
    try:
        with pytest.raises(GeometryError, match="boxes geometry"):
            build_cpu_augmentations({"cpu": [{"_target_": "albumentations.HorizontalFlip"}]},
                                    modalities=[Modality.IMAGE, Modality.BOXES, boxes2])
    finally:
        unregister_modality(boxes2)


def test_a_moving_modality_the_transform_does_not_know_is_refused(depth):
    transform = build_cpu_augmentations({"cpu": [{"_target_": "albumentations.HorizontalFlip"}]},
                                        modalities=[Modality.IMAGE])
    image, _, dmap = scene(np.random.default_rng(0))
    with pytest.raises(GeometryError, match="geometry_test_depth"):
        apply_albumentations(transform, {Modality.IMAGE: image, depth: dmap})


# -- points: a known point maps to a known place on both paths ------------------------------------------
POINT_SIZE = 32


@pytest.fixture
def points():
    modality = register_modality("GEOMETRY_TEST_POINTS", "geometry_test_points", geometry=Geometry.POINTS)
    yield modality
    unregister_modality(modality)


def dot_image() -> np.ndarray:
    """One bright pixel at x=10, y=20 (the place of the first point)."""
    image = np.zeros((POINT_SIZE, POINT_SIZE, 3), np.float32)
    image[20, 10] = 1.0
    return image


def bright_pixel(image: np.ndarray) -> np.ndarray:
    """(x, y) centroid of the pixels that are still bright after the transform."""
    ys, xs = np.nonzero(np.asarray(image).max(axis=-1) > 0.3)
    return np.array([xs.mean(), ys.mean()])


POINTS_XY = np.array([[10.0, 20.0], [0.0, 0.0]], np.float32)


@pytest.mark.parametrize(("transform", "expected"), [
    ({"_target_": "albumentations.HorizontalFlip", "p": 1.0}, [[21.0, 20.0], [31.0, 0.0]]),   # x -> W - 1 - x
    ({"_target_": "albumentations.Affine", "translate_px": {"x": 5, "y": -3}, "p": 1.0}, [[15.0, 17.0], [5.0, -3.0]]),
    ({"_target_": "albumentations.Affine", "rotate": 90, "p": 1.0}, None),
])
def test_points_follow_the_cpu_path(points, transform, expected):
    compose = build_cpu_augmentations({"cpu": [transform]}, modalities=[Modality.IMAGE, points])
    out = apply_albumentations(compose, {Modality.IMAGE: dot_image(), points: POINTS_XY})
    moved = out[points]
    assert moved.shape == (2, 2)
    if expected is not None:
        np.testing.assert_allclose(moved, expected, atol=1e-4)
    np.testing.assert_allclose(moved[0], bright_pixel(out[Modality.IMAGE]), atol=0.5)
    assert np.abs(moved[0] - POINTS_XY[0]).max() > 1.0


@pytest.mark.parametrize("name", ["flip", "rotate90", "shift"])
def test_points_follow_the_gpu_path(points, name):
    import kornia.augmentation as K

    transform = {"flip": K.RandomHorizontalFlip(p=1.0), "rotate90": K.RandomAffine(degrees=(90.0, 90.0), p=1.0),
                 "shift": K.RandomAffine(degrees=0.0, translate=(0.2, 0.2), p=1.0)}[name]
    aug = K.AugmentationSequential(transform, data_keys=None)
    image = torch.from_numpy(dot_image()).permute(2, 0, 1)[None].contiguous()
    batch = {"image": image, points.value: [torch.from_numpy(POINTS_XY)], "class": torch.zeros(1, dtype=torch.long)}
    torch.manual_seed(0)
    out = apply_kornia(aug, batch)
    moved = out[points.value][0].numpy()
    # the known place: the drawn transform applied to the known point
    matrix = aug.transform_matrix[0].numpy()
    expected = (matrix[:2, :2] @ POINTS_XY.T).T + matrix[:2, 2]
    np.testing.assert_allclose(moved, expected, atol=1e-4)
    if name == "flip":
        np.testing.assert_allclose(moved, [[21.0, 20.0], [31.0, 0.0]], atol=1e-4)
    np.testing.assert_allclose(moved[0], bright_pixel(out["image"][0].permute(1, 2, 0).numpy()), atol=1.0)
    assert np.abs(moved[0] - POINTS_XY[0]).max() > 1.0
