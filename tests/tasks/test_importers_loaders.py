import json

import numpy as np
import pytest
import torch
from PIL import Image

from pandemonium.tasks import (
    Modality,
    TaskCreationError,
    TaskDataModule,
    TaskDataset,
    TaskFileError,
    build_loaders,
    create_task,
    load_task_struct,
    save_sample_grid,
)
from pandemonium.tasks.loaders import ImageLoader, MaskLoader


def _png(path, value, size=(12, 10), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[0], size[1], 3) if mode == "RGB" else size
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)


def test_import_folder(tmp_path):
    src = tmp_path / "src"
    for cls, value in (("cat", 30), ("dog", 200)):
        for i in range(5):
            _png(src / cls / f"{i}.png", value + i)
    (src / "notes.txt").write_text("ignored")
    struct = load_task_struct("pets", create_task("pets", tmp_path / "d", creator="import_folder", root=src,
                                                   image_size=8).parents[1])
    assert struct.class_names == ["cat", "dog"] and struct.num_samples == 10 and struct.image_size == (8, 8)
    dataset = TaskDataset(struct, "all")
    by_class = {int(item["class"]): float(item["image"].mean()) for item in dataset}
    assert by_class[0] < 0.2 < 0.7 < by_class[1]


def test_import_folder_errors(tmp_path):
    with pytest.raises(TaskCreationError, match="root .*nowhere is not a folder"):
        create_task("x", tmp_path, creator="import_folder", root=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TaskCreationError, match="has no class subfolders"):
        create_task("x", tmp_path, creator="import_folder", root=tmp_path / "empty")
    bad = tmp_path / "bad"
    _png(bad / "a" / "ok.png", 1)
    (bad / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(TaskFileError, match=r"cannot decode image .*broken\.png"):
        create_task("x", tmp_path, creator="import_folder", root=bad)
    with pytest.raises(TaskCreationError, match="unknown creator 'import_nothing'"):
        create_task("x", tmp_path, creator="import_nothing")
    assert not (tmp_path / "tasks" / "x").exists()


def test_import_csv(tmp_path):
    rows = ["file,diagnosis"]
    for i in range(8):
        _png(tmp_path / "img" / f"{i}.png", 20 * i, mode="L")
        rows.append(f"img/{i}.png,{'sick' if i % 2 else 'healthy'}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    path = create_task("scans", tmp_path / "d", creator="import_csv", csv_path=tmp_path / "labels.csv",
                       image_column="file", label_column="diagnosis", channels=1)
    struct = load_task_struct("scans", tmp_path / "d")
    assert struct.class_names == ["healthy", "sick"] and struct.channels == 1
    meta = json.loads((path / "task.json").read_text())
    assert [s["class"] for s in meta["samples"]] == [0, 1] * 4
    assert TaskDataset(struct, "all")[1]["image"].shape == (1, 12, 10)
    with pytest.raises(TaskCreationError, match=r"no column 'path' \(columns: \['file', 'diagnosis'\]\)"):
        create_task("scans2", tmp_path / "d", creator="import_csv", csv_path=tmp_path / "labels.csv")


def test_import_coco(tmp_path):
    images, annotations = [], []
    for i in range(6):
        _png(tmp_path / "imgs" / f"{i}.png", 90, size=(20, 40))
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 40, "height": 20})
        annotations.append({"id": 10 + i, "image_id": i + 1, "category_id": 7 if i % 2 else 3,
                            "bbox": [2, 3, 10, 5], "iscrowd": 0})
    annotations.append({"id": 99, "image_id": 1, "category_id": 3, "bbox": [35, 15, 20, 20], "iscrowd": 0})
    annotations.append({"id": 98, "image_id": 2, "category_id": 3, "bbox": [1, 1, 2, 2], "iscrowd": 1})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": 7, "name": "truck"}, {"id": 3, "name": "car"}]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    create_task("cars", tmp_path / "d", creator="import_coco", annotation_file=tmp_path / "ann.json",
                image_root=tmp_path / "imgs", image_size=(10, 20))
    struct = load_task_struct("cars", tmp_path / "d", verify="deep")
    assert struct.task_type.value == "detection" and struct.class_names == ["car", "truck"]
    first = TaskDataset(struct, "all")[0]
    # image halved: bbox (2,3,10,5) -> xyxy (1, 1.5, 6, 4); the box sticking out is clipped to the image
    assert torch.allclose(first["boxes"], torch.tensor([[1.0, 1.5, 6.0, 4.0], [17.5, 7.5, 20.0, 10.0]]))
    assert first["labels"].tolist() == [0, 0]
    second = TaskDataset(struct, "all")[1]
    assert second["labels"].tolist() == [1]  # the crowd box is skipped
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(TaskCreationError, match=r"bad\.json is not valid JSON"):
        create_task("cars2", tmp_path / "d", creator="import_coco", annotation_file=tmp_path / "bad.json")


def test_corrupt_image_in_dataset_names_file(tiny_data_dir, tmp_path):
    import shutil

    shutil.copytree(tiny_data_dir / "tasks" / "shapes_cls", tmp_path / "tasks" / "shapes_cls")
    struct = load_task_struct("shapes_cls", tmp_path)
    dataset = TaskDataset(struct, "all")
    target = tmp_path / "tasks" / "shapes_cls" / dataset.samples[2]["image"]
    target.write_bytes(target.read_bytes()[:40])  # truncated PNG
    with pytest.raises(TaskFileError, match=r"task 'shapes_cls': cannot decode image .*000002\.png"):
        dataset[2]


def test_loaders_from_config():
    loaders = build_loaders({"image": {"_target_": "pandemonium.tasks.loaders.ImageLoader", "mode": "L"}})
    assert isinstance(loaders[Modality.IMAGE], ImageLoader) and loaders[Modality.IMAGE].mode == "L"
    assert isinstance(loaders[Modality.MASK], MaskLoader)  # defaults fill the rest
    with pytest.raises(ValueError, match="unknown modality 'depth'"):
        build_loaders({"depth": {"_target_": "pandemonium.tasks.loaders.ImageLoader"}})
    with pytest.raises(ValueError, match="cannot build loader for 'image'"):
        build_loaders({"image": {"_target_": "pandemonium.tasks.loaders.NoSuchLoader"}})
    with pytest.raises(TypeError, match="built dict, not a ModalityLoader"):
        build_loaders({"image": {"_target_": "builtins.dict"}})


def test_forced_grey_loader_changes_channels(tiny_structs):
    struct = tiny_structs["shapes_cls"]
    loaders = build_loaders({"image": {"_target_": "pandemonium.tasks.loaders.ImageLoader", "mode": "L"}})
    batch = next(iter(TaskDataModule(struct, batch_size=2, loaders=loaders).val_dataloader()))
    assert batch["image"].shape[1] == 1


@pytest.mark.parametrize("name", ["shapes_cls", "shapes_seg", "shapes_det", "digits"])
def test_sample_grid_png(name, tiny_structs, tmp_path):
    path = save_sample_grid(tiny_structs[name], tmp_path / "grid" / f"{name}.png", n=6)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100


def test_imported_task_is_kept_and_recreated_from_its_record(tmp_path):
    src = tmp_path / "src"
    for cls in ("a", "b"):
        for i in range(3):
            _png(src / cls / f"{i}.png", 50 + 100 * (cls == "b"))
    data = tmp_path / "d"
    path = create_task("mine", data, creator="import_folder", root=src, image_size=8)
    # later runs name only the task: it is kept, or rebuilt with the recorded creator and kwargs
    assert create_task("mine", data) == path
    _png(src / "c" / "0.png", 250)
    create_task("mine", data, force=True, seed=3)
    struct = load_task_struct("mine", data)
    assert struct.class_names == ["a", "b", "c"] and struct.image_size == (8, 8) and struct.seed == 3
