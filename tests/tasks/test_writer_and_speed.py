import time

import numpy as np
import pytest

from pandemonium.tasks import (
    TaskCreationError,
    TaskType,
    TaskWriter,
    create_task,
    list_tasks,
    load_task_struct,
)
from pandemonium.tasks.builtin.shapes import SHAPE_NAMES, ShapeSceneGenerator, rasterise_shape


def test_writer_rejects_inconsistent_samples(tmp_path):
    writer = TaskWriter(tmp_path / "t", "t", TaskType.SEMANTIC_SEGMENTATION, class_names=["bg", "fg"])
    writer.add_sample(image=np.zeros((8, 8, 3), np.uint8), mask=np.zeros((8, 8), np.uint8))
    with pytest.raises(TaskCreationError, match="sample 000001: image has 1 channels, task has 3"):
        writer.add_sample(image=np.zeros((8, 8), np.uint8), mask=np.zeros((8, 8), np.uint8))
    with pytest.raises(TaskCreationError, match=r"mask shape \(4, 8\) != image shape \(8, 8\)"):
        writer.add_sample(image=np.zeros((8, 8, 3), np.uint8), mask=np.zeros((4, 8), np.uint8))
    with pytest.raises(TaskCreationError, match="2 boxes but 1 labels"):
        writer.add_sample(image=np.zeros((8, 8, 3), np.uint8), boxes=[[0, 0, 1, 1], [1, 1, 2, 2]], labels=[0])
    with pytest.raises(TaskCreationError, match=r"sample id '../x' must match"):
        writer.add_sample(image=np.zeros((8, 8, 3), np.uint8), mask=np.zeros((8, 8), np.uint8), sample_id="../x")
    empty = TaskWriter(tmp_path / "e", "e", "classification", class_names=["a"])
    with pytest.raises(TaskCreationError, match="task 'e': the creator added no samples"):
        empty.finish(seed=0)


def test_writer_stats_are_train_val_pixel_moments(tmp_path):
    writer = TaskWriter(tmp_path / "s", "s", "classification", class_names=["a", "b"])
    for i in range(10):
        writer.add_sample(image=np.full((4, 4), 255 * (i % 2), np.uint8), cls=i % 2)
    meta = writer.finish(seed=0, num_folds=2, test_fraction=0.2)
    assert meta["stats"]["mean"] == [0.5] and meta["stats"]["std"] == [0.5]  # stratified: 4 dark + 4 bright


def test_rasterised_shapes_have_expected_area():
    size, radius = 200, 60.0
    areas = {k: rasterise_shape(k, 100, 100, radius, 0.3, size).sum() / radius**2 for k in SHAPE_NAMES}
    assert areas["circle"] == pytest.approx(np.pi, rel=0.02)
    assert areas["square"] == pytest.approx(2.0, rel=0.02)  # circumradius r -> side r*sqrt(2)
    assert areas["triangle"] == pytest.approx(3 * np.sqrt(3) / 4, rel=0.03)
    a, w = 1 / np.sqrt(1 + 0.35**2), 0.35 / np.sqrt(1 + 0.35**2)
    assert areas["cross"] == pytest.approx(8 * a * w - 4 * w**2, rel=0.03)  # two arms minus their overlap
    star = 10 * 0.5 * 1.0 * 0.45 * np.sin(np.pi / 5)  # ten triangles between outer and inner vertices
    assert areas["star"] == pytest.approx(star, rel=0.04)


def test_generator_replays_parameters():
    gen = ShapeSceneGenerator(image_size=32, shapes_per_image=(1, 3), radius_range=(0.1, 0.15))
    params = gen.sample_params(np.random.default_rng(3))
    a = gen.render(params, np.random.default_rng(9))
    b = gen.render(params, np.random.default_rng(9))
    assert np.array_equal(a.image, b.image) and a.boxes == b.boxes
    for mask, box in zip(a.masks, a.boxes):
        ys, xs = np.nonzero(mask)
        assert box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


@pytest.mark.slow
def test_all_builtin_tasks_at_default_size_under_a_minute(tmp_path):
    # CPU time of this process, not wall time: other jobs on a shared CI machine must not flake it
    start = time.process_time()
    for name in ("shapes_cls", "shapes_seg", "shapes_det", "digits"):
        create_task(name, tmp_path)
    seconds = time.process_time() - start
    assert list_tasks(tmp_path) == ["digits", "shapes_cls", "shapes_det", "shapes_seg"]
    assert seconds < 60, f"creating the four built-in tasks took {seconds:.1f} s of CPU time"
    sizes = {n: load_task_struct(n, tmp_path).num_samples for n in list_tasks(tmp_path)}
    assert sizes == {"digits": 1797, "shapes_cls": 1200, "shapes_det": 1200, "shapes_seg": 1200}
