"""Procedural shapes on textured backgrounds: ``shapes_cls``, ``shapes_seg``, ``shapes_det``.

Every image gets a background drawn from one of four textures (smooth noise, stripes, a linear
gradient, a crop of the photographs scikit-learn ships) squeezed into a dark or a bright band, and
shapes coloured from the opposite band, so a shape always contrasts with what lies under it.
Shapes are 20-48 % of the image side (classification/segmentation) so a tiny CNN learns them in
minutes. All randomness comes from the creator's ``numpy.random.Generator``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.path import Path as MplPath
from PIL import Image

from pandemonium.tasks.attributes import TaskType
from pandemonium.tasks.builtin._progress import progress
from pandemonium.tasks.creators import register_taskcreator
from pandemonium.tasks.format import TaskWriter

SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
BACKGROUNDS: tuple[str, ...] = ("noise", "stripes", "gradient", "photo")
LICENSE = (
    "CC0 (generated). Photo backgrounds: crops of scikit-learn's sample images (china.jpg, flower.jpg), "
    "CC BY 2.0 per sklearn.datasets.load_sample_images."
)


def _unit_polygon(kind: str) -> np.ndarray | None:
    """Vertices (K, 2) of a shape with circumradius 1 centred at 0; ``None`` for the circle."""
    if kind == "circle":
        return None
    if kind == "square":
        angles = np.pi / 4 + np.arange(4) * np.pi / 2
        return np.stack([np.cos(angles), np.sin(angles)], 1)
    if kind == "triangle":
        angles = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        return np.stack([np.cos(angles), np.sin(angles)], 1)
    if kind == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)
    if kind == "cross":
        a, w = 1.0 / np.sqrt(1 + 0.35**2), 0.35 / np.sqrt(1 + 0.35**2)  # arm tips on the unit circle
        return np.array(
            [[w, a], [w, w], [a, w], [a, -w], [w, -w], [w, -a],
             [-w, -a], [-w, -w], [-a, -w], [-a, w], [-w, w], [-w, a]]
        )
    raise ValueError(f"unknown shape {kind!r}; known: {SHAPE_NAMES}")


_UNIT_POLYGONS = {kind: _unit_polygon(kind) for kind in SHAPE_NAMES}


def rasterise_shape(kind: str, cx: float, cy: float, radius: float, angle: float, size: int,
                    grid: np.ndarray | None = None) -> np.ndarray:
    """Boolean ``size``x``size`` mask of one shape (pixel centres tested against the outline)."""
    if grid is None:
        grid = _pixel_centres(size)
    unit = _UNIT_POLYGONS[kind]
    if unit is None:
        inside = (grid[:, 0] - cx) ** 2 + (grid[:, 1] - cy) ** 2 <= radius**2
    else:
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        vertices = unit @ rot.T * radius + np.array([cx, cy])
        # matplotlib's vectorised point-in-polygon (C code) rather than our own ray casting
        inside = MplPath(vertices).contains_points(grid)
    return inside.reshape(size, size)


def _pixel_centres(size: int) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size]
    return np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], 1).astype(np.float64)


@dataclass
class _Photos:
    """The sklearn sample photos, loaded once per creator call (no module-level cache)."""

    images: list[np.ndarray]

    @classmethod
    def load(cls) -> _Photos:
        from sklearn.datasets import load_sample_images

        return cls([np.asarray(img) for img in load_sample_images().images])


def _resize(array: np.ndarray, size: int) -> np.ndarray:
    image = Image.fromarray(np.clip(array * 255.0, 0, 255).astype(np.uint8))
    return np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0


def draw_background(kind: str, rng: np.random.Generator, size: int, photos: _Photos | None) -> np.ndarray:
    """One texture, float32 ``size``x``size``x3 in [0,1] (before squeezing into a band)."""
    if kind == "noise":
        cells = int(rng.integers(3, 9))
        bg = _resize(rng.random((cells, cells, 3)), size)
        return np.clip(bg + rng.normal(0, 0.06, bg.shape), 0, 1).astype(np.float32)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    theta = rng.uniform(0, np.pi)
    proj = xs * np.cos(theta) + ys * np.sin(theta)
    c1, c2 = rng.random(3).astype(np.float32), rng.random(3).astype(np.float32)
    if kind == "stripes":
        t = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 8) * proj + rng.uniform(0, 2 * np.pi))
        if rng.random() < 0.5:
            t = (t > 0.5).astype(np.float32)
    elif kind == "gradient":
        t = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-6)
    elif kind == "photo":
        assert photos is not None
        photo = photos.images[int(rng.integers(len(photos.images)))]
        h, w = photo.shape[:2]
        crop = int(rng.integers(size, min(h, w) // 2 + 1))
        y0, x0 = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
        return _resize(photo[y0:y0 + crop, x0:x0 + crop] / 255.0, size)
    else:
        raise ValueError(f"unknown background {kind!r}; known: {BACKGROUNDS}")
    return (c1 * (1 - t[..., None]) + c2 * t[..., None]).astype(np.float32)


@dataclass
class ShapeScene:
    """One rendered image with its per-shape masks, kinds and boxes."""

    image: np.ndarray  # uint8 HxWx3
    kinds: list[int]
    masks: list[np.ndarray]  # bool HxW per shape (visible part)
    boxes: list[list[float]]  # xyxy pixel edges

    def class_mask(self) -> np.ndarray:
        """HxW uint8: 0 background, ``kind + 1`` where a shape is."""
        mask = np.zeros(self.image.shape[:2], np.uint8)
        for kind, m in zip(self.kinds, self.masks):
            mask[m] = kind + 1
        return mask


class ShapeSceneGenerator:
    """Draws :class:`ShapeScene` s; parameters first (``sample_params``), then rendering (``render``)."""

    def __init__(
        self,
        image_size: int = 64,
        shapes_per_image: tuple[int, int] = (1, 1),
        radius_range: tuple[float, float] = (0.14, 0.24),
        backgrounds: tuple[str, ...] = BACKGROUNDS,
        noise_std: float = 0.02,
    ) -> None:
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        self.size = int(image_size)
        self.shapes_per_image = (int(shapes_per_image[0]), int(shapes_per_image[1]))
        self.radius_range = radius_range
        self.backgrounds = tuple(backgrounds)
        self.noise_std = noise_std
        self.grid = _pixel_centres(self.size)
        self.photos = _Photos.load() if "photo" in self.backgrounds else None

    def sample_params(self, rng: np.random.Generator, kind: int | None = None) -> dict[str, Any]:
        """Random scene description: background, band, shapes (kind, centre, radius, angle, colour)."""
        size = self.size
        n_shapes = int(rng.integers(self.shapes_per_image[0], self.shapes_per_image[1] + 1))
        shapes: list[dict[str, Any]] = []
        for k in range(n_shapes):
            for _attempt in range(50):
                r = rng.uniform(*self.radius_range) * size
                cx, cy = rng.uniform(r + 1, size - r - 1, size=2)
                if all(np.hypot(cx - s["cx"], cy - s["cy"]) > 1.1 * (r + s["r"]) for s in shapes):
                    break
            else:
                continue  # no room left for another shape: fewer shapes in this image
            shape_kind = kind if (kind is not None and k == 0) else int(rng.integers(len(SHAPE_NAMES)))
            shapes.append({"kind": shape_kind, "cx": cx, "cy": cy, "r": r,
                           "angle": rng.uniform(0, 2 * np.pi), "colour": rng.random(3)})
        return {
            "background": self.backgrounds[int(rng.integers(len(self.backgrounds)))],
            "dark": bool(rng.random() < 0.5),
            "shapes": shapes,
        }

    def render(self, params: dict[str, Any], rng: np.random.Generator) -> ShapeScene:
        size = self.size
        bg = draw_background(params["background"], rng, size, self.photos)
        # squeeze the texture into a dark [0.05, 0.45] or bright [0.55, 0.95] band; shapes take the other
        low = 0.05 if params["dark"] else 0.55
        image = low + 0.4 * bg
        kinds, masks, boxes = [], [], []
        occupied = np.zeros((size, size), bool)
        for shape in params["shapes"]:
            mask = rasterise_shape(SHAPE_NAMES[shape["kind"]], shape["cx"], shape["cy"], shape["r"],
                                   shape["angle"], size, self.grid)
            colour = (0.6 + 0.4 * shape["colour"]) if params["dark"] else (0.4 * shape["colour"])
            image[mask] = colour
            ys, xs = np.nonzero(mask)
            kinds.append(shape["kind"])
            masks.append(mask & ~occupied)
            boxes.append([float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)])
            occupied |= mask
        image = image + rng.normal(0.0, self.noise_std, image.shape)
        image_u8 = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
        return ShapeScene(image=image_u8, kinds=kinds, masks=masks, boxes=boxes)

    def __call__(self, rng: np.random.Generator, kind: int | None = None) -> ShapeScene:
        return self.render(self.sample_params(rng, kind), rng)


_DESCRIPTION = (
    "Procedurally generated {what}: {kinds} on textured backgrounds (noise, stripes, gradients, "
    "photo crops), each shape contrasting with its background."
)


@register_taskcreator(
    "shapes_cls", task_type=TaskType.CLASSIFICATION, class_names=SHAPE_NAMES,
    description=_DESCRIPTION.format(what="shape classification, one shape per image", kinds=", ".join(SHAPE_NAMES)),
    license=LICENSE, keywords=("shapes", "synthetic", "classification"),
)
def create_shapes_cls(writer: TaskWriter, rng: np.random.Generator, num_samples: int = 1200,
                      image_size: int = 64) -> None:
    """Balanced classes: sample ``i`` shows shape ``i % 5``."""
    generator = ShapeSceneGenerator(image_size=image_size)
    for i in progress(range(int(num_samples)), "shapes_cls"):
        scene = generator(rng, kind=i % len(SHAPE_NAMES))
        writer.add_sample(image=scene.image, cls=scene.kinds[0])


@register_taskcreator(
    "shapes_seg", task_type=TaskType.SEMANTIC_SEGMENTATION, class_names=("background", *SHAPE_NAMES),
    description=_DESCRIPTION.format(what="semantic segmentation (0 = background, one class per shape kind)",
                                    kinds=", ".join(SHAPE_NAMES)),
    license=LICENSE, keywords=("shapes", "synthetic", "segmentation"),
)
def create_shapes_seg(writer: TaskWriter, rng: np.random.Generator, num_samples: int = 1200,
                      image_size: int = 64, max_shapes: int = 1) -> None:
    generator = ShapeSceneGenerator(image_size=image_size, shapes_per_image=(1, max_shapes))
    for i in progress(range(int(num_samples)), "shapes_seg"):
        scene = generator(rng, kind=i % len(SHAPE_NAMES))
        writer.add_sample(image=scene.image, mask=scene.class_mask())


@register_taskcreator(
    "shapes_det", task_type=TaskType.DETECTION, class_names=SHAPE_NAMES,
    description=_DESCRIPTION.format(what="object detection, 1-3 shapes per image with xyxy boxes",
                                    kinds=", ".join(SHAPE_NAMES)),
    license=LICENSE, keywords=("shapes", "synthetic", "detection"),
)
def create_shapes_det(writer: TaskWriter, rng: np.random.Generator, num_samples: int = 1200,
                      image_size: int = 64, max_shapes: int = 3) -> None:
    generator = ShapeSceneGenerator(image_size=image_size, shapes_per_image=(1, max_shapes),
                                    radius_range=(0.11, 0.19))
    for _ in progress(range(int(num_samples)), "shapes_det"):
        scene = generator(rng)
        writer.add_sample(image=scene.image, boxes=scene.boxes, labels=scene.kinds)
