"""`pandemonium import` and the importers: verified, seeded, atomic imports of users' own data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pandemonium.errors import ConfigError, PandemoniumError
from pandemonium.tasks.creators import create_task, load_task_struct
from pandemonium.tasks.datamodule import TaskDataset

from .conftest import leftovers, run_mode, write_png


def test_import_mode_folder_is_seeded(tmp_path, photo_folder):
    out = tmp_path / "results"
    result = run_mode(tmp_path / "d1", out, "import", "task=my_photos", "from=folder", f"root={photo_folder}")
    assert result["task"] == "my_photos" and result["samples"] == 12 and result["classes"] == ["cat", "dog"]
    run_mode(tmp_path / "d2", out, "import", "task=my_photos", f"root={photo_folder}", "seed=42")
    run_mode(tmp_path / "d3", out, "import", "task=my_photos", f"root={photo_folder}", "seed=7")
    splits = [json.loads((tmp_path / d / "tasks/my_photos/task.json").read_text()) for d in ("d1", "d2", "d3")]
    assert splits[0]["folds"] == splits[1]["folds"] and splits[0]["test"] == splits[1]["test"]
    assert (splits[0]["folds"], splits[0]["test"]) != (splits[2]["folds"], splits[2]["test"])
    struct = load_task_struct("my_photos", tmp_path / "d1", verify="deep")
    assert TaskDataset(struct, "all")[0]["image"].shape == (3, 24, 32)


def test_import_mode_refuses_existing_task_and_bad_source(tmp_path, photo_folder):
    out = tmp_path / "results"
    run_mode(tmp_path / "d", out, "import", "task=p", f"root={photo_folder}")
    with pytest.raises(ConfigError, match="task 'p' already exists"):
        run_mode(tmp_path / "d", out, "import", "task=p", f"root={photo_folder}")
    with pytest.raises(ConfigError, match="from='zip' is not an importer"):
        run_mode(tmp_path / "d", out, "import", "task=q", "from=zip", f"root={photo_folder}")
    with pytest.raises(ConfigError, match="task's name"):
        run_mode(tmp_path / "d", out, "import", f"root={photo_folder}")


def test_create_accepts_importers_under_any_name(tmp_path, photo_folder):
    result = run_mode(tmp_path / "d", tmp_path / "r", "create", "task_list=[my_photos]", "mode.creator=import_folder",
                      f"+mode.creator_kwargs.root={photo_folder}", "+mode.creator_kwargs.image_size=16")
    assert result["my_photos"]["status"] == "created"
    assert load_task_struct("my_photos", tmp_path / "d").image_size == (16, 16)


def _detection_table(tmp_path, rows):
    for i in range(6):
        write_png(tmp_path / "img" / f"{i}.png", 30 * i, size=(20, 40))
    header = "path,label,x1,y1,x2,y2,qx1,qy1,qx2,qy2,qx3,qy3,qx4,qy4"
    (tmp_path / "boxes.csv").write_text("\n".join([header, *rows]) + "\n")
    return tmp_path / "boxes.csv"


def test_csv_boxes_and_quads(tmp_path):
    quad = "1,1,9,1,9,9,1,9"
    rows = [f"img/{i}.png,{'sign' if i % 2 else 'car'},2,3,12,8,{quad}" for i in range(6)]
    rows.append("img/0.png,sign,20,10,30,20,,,,,,,,")  # a second box of image 0, no quad
    table = _detection_table(tmp_path, rows)
    path = create_task("signs", tmp_path / "d", creator="import_csv", csv_path=table, image_size=(10, 20))
    struct = load_task_struct("signs", tmp_path / "d", verify="deep")
    assert struct.task_type.value == "detection" and struct.class_names == ["car", "sign"]
    first = json.loads((path / "task.json").read_text())["samples"][0]
    # halved image: box (2,3,12,8) -> (1,1.5,6,4); quad corners halved too
    assert first["boxes"] == {"xyxy": [[1.0, 1.5, 6.0, 4.0], [10.0, 5.0, 15.0, 10.0]], "labels": [0, 1]}
    assert first["quads"] == [[[0.5, 0.5], [4.5, 0.5], [4.5, 4.5], [0.5, 4.5]]]


def test_csv_box_outside_image_names_row_and_leaves_nothing(tmp_path):
    rows = [f"img/{i}.png,car,2,3,12,8,,,,,,,," for i in range(6)]
    rows[3] = "img/3.png,car,30,5,45,9,,,,,,,,"  # x2 = 45 > width 40
    table = _detection_table(tmp_path, rows)
    with pytest.raises(PandemoniumError, match=r"boxes\.csv row 5: box .* outside image 'img/3\.png' of size 40x20"):
        create_task("signs", tmp_path / "d", creator="import_csv", csv_path=table)
    assert leftovers(tmp_path / "d") == []


def test_csv_missing_columns_and_unknown_label(tmp_path):
    write_png(tmp_path / "a.png", 10)
    (tmp_path / "t.csv").write_text("file,label,x1,y1\na.png,car,1,1\n")
    with pytest.raises(PandemoniumError, match=r"no column 'path' \(columns: \['file', 'label', 'x1', 'y1'\]\)"):
        create_task("t", tmp_path / "d", creator="import_csv", csv_path=tmp_path / "t.csv")
    with pytest.raises(PandemoniumError, match=r"no column 'x2'.*needed for boxes"):
        create_task("t", tmp_path / "d", creator="import_csv", csv_path=tmp_path / "t.csv", image_column="file",
                    task_type="detection")
    (tmp_path / "u.csv").write_text("path,label\na.png,car\na.png,bus\n")
    with pytest.raises(PandemoniumError, match=r"row 3: label 'bus' not in \['car'\]"):
        create_task("t", tmp_path / "d", creator="import_csv", csv_path=tmp_path / "u.csv", class_names=["car"])
    assert leftovers(tmp_path / "d") == []


def test_truncated_image_is_named_and_nothing_is_left(tmp_path, photo_folder):
    broken = photo_folder / "dog" / "3.png"
    broken.write_bytes(broken.read_bytes()[:60])
    with pytest.raises(PandemoniumError, match=r"cannot decode image .*dog/3\.png"):
        run_mode(tmp_path / "d", tmp_path / "r", "import", "task=p", f"root={photo_folder}", "mode.workers=2")
    assert leftovers(tmp_path / "d") == []


def test_coco_unknown_category_id_is_named(tmp_path):
    write_png(tmp_path / "0.png", 50, size=(20, 40))
    coco = {"images": [{"id": 1, "file_name": "0.png"}], "categories": [{"id": 3, "name": "car"}],
            "annotations": [{"id": 17, "image_id": 1, "category_id": 9, "bbox": [1, 1, 5, 5]}]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    with pytest.raises(PandemoniumError, match="annotation 17 has unknown category_id 9"):
        run_mode(tmp_path / "d", tmp_path / "r", "import", "task=c", "from=coco", f"root={tmp_path / 'ann.json'}")
    coco["annotations"][0].update(category_id=3, bbox=[50, 1, 5, 5])
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    with pytest.raises(PandemoniumError, match="annotation 17 box .* outside image '0.png' of size 40x20"):
        create_task("c", tmp_path / "d", creator="import_coco", annotation_file=tmp_path / "ann.json")
    assert leftovers(tmp_path / "d") == []


def test_image_and_mask_folders(tmp_path):
    root = tmp_path / "roads"
    (root / "masks").mkdir(parents=True)
    for i in range(6):
        write_png(root / "images" / f"{i}.jpg", 40 * i, size=(16, 16))
        mask = np.zeros((16, 16), np.uint8)
        mask[4:12, 4:12] = 1 + i % 2
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    result = run_mode(tmp_path / "d", tmp_path / "r", "import", "task=roads", "from=masks", f"root={root}",
                      "options.class_names=[ground,road,car]", "image_size=8")
    assert result["task_type"] == "semantic_segmentation" and result["classes"] == ["ground", "road", "car"]
    sample = TaskDataset(load_task_struct("roads", tmp_path / "d", verify="deep"), "all")[1]
    assert sample["mask"].shape == (8, 8) and set(sample["mask"].unique().tolist()) == {0, 2}
    Image.fromarray(np.zeros((10, 16), np.uint8)).save(root / "masks" / "2.png")
    with pytest.raises(PandemoniumError, match=r"mask .*masks/2\.png has size 16x10 but image .*2\.jpg has 16x16"):
        create_task("roads2", tmp_path / "d", creator="import_masks", root=root)
    (root / "masks" / "2.png").unlink()
    with pytest.raises(PandemoniumError, match=r"image .*2\.jpg has no mask"):
        create_task("roads2", tmp_path / "d", creator="import_masks", root=root)
    assert leftovers(tmp_path / "d") == ["roads"]
