import json

import numpy as np
import pytest
import torch
from PIL import Image

from pandemonium.attack.stages.bank_sources import BankError, normalise_bank_spec
from pandemonium.attack.stages.banks import ImageBank


def _write_bank(path, n=6, size=32, boxes=True, quads=True, **extra):
    data = {"images": torch.rand(n, 3, size, size), "class": torch.arange(n) % 3}
    if boxes:
        data["boxes"] = [torch.tensor([[2.0, 2.0, 20.0, 20.0]] * (1 + i % 2)) for i in range(n)]
        data["labels"] = [torch.full((1 + i % 2,), i % 2) for i in range(n)]
    if quads:
        data["quads"] = [torch.tensor([[[4.0, 4.0], [28.0, 6.0], [26.0, 26.0], [5.0, 24.0]]]) for _ in range(n)]
    data.update(extra)
    torch.save(data, path)
    return data


def test_pt_bank_buffers_split_and_targets(tmp_path):
    data = _write_bank(tmp_path / "bank.pt", mask=torch.zeros(6, 32, 32, dtype=torch.long))
    bank = ImageBank.from_spec(str(tmp_path / "bank.pt"))
    assert len(bank) == 6 and bank.image_size == (32, 32)
    assert "images" in dict(bank.named_buffers()) and not list(bank.parameters())
    assert set(bank.train_index.tolist()).isdisjoint(bank.eval_index.tolist())
    assert sorted(bank.train_index.tolist() + bank.eval_index.tolist()) == list(range(6))
    index = torch.tensor([1, 4, 1])
    t = bank.targets(index)
    assert t["class"].tolist() == data["class"][index].tolist()
    assert [len(b) for b in t["boxes"]] == [2, 1, 2]
    assert [lab.tolist() for lab in t["labels"]] == [[1, 1], [0], [1, 1]]
    assert t["mask"].shape == (3, 32, 32)
    assert len(t["quads"]) == 3


def test_draw_is_seeded_and_respects_split(tmp_path):
    _write_bank(tmp_path / "bank.pt", n=12)
    bank = ImageBank.from_spec({"pt": str(tmp_path / "bank.pt"), "eval_fraction": 0.5})
    a = bank.draw_indices(64, torch.Generator().manual_seed(3), evaluate=False)
    b = bank.draw_indices(64, torch.Generator().manual_seed(3), evaluate=False)
    assert torch.equal(a, b)
    assert set(a.tolist()) <= set(bank.train_index.tolist())
    e = bank.draw_indices(64, torch.Generator().manual_seed(3), evaluate=True)
    assert set(e.tolist()) <= set(bank.eval_index.tolist())


def test_explicit_split_and_required_targets(tmp_path):
    data = _write_bank(tmp_path / "b.pt", n=4, split=["train", "train", "eval", "eval"])
    data["boxes"][0] = torch.zeros(0, 4)
    data["labels"][0] = torch.zeros(0, dtype=torch.long)
    torch.save(data, tmp_path / "b.pt")
    bank = ImageBank.from_spec(tmp_path / "b.pt")
    assert bank.eval_index.tolist() == [2, 3]
    assert bank.pool(False, require="boxes").tolist() == [1]
    chosen = bank.select("boxes", torch.tensor([1, 1]), torch.tensor([0.0, 0.99]))
    assert chosen.shape == (2, 4)


def test_folder_bank_with_class_subfolders(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            arr = (np.random.rand(20, 24, 3) * 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / cls / f"{i}.png")
    bank = ImageBank.from_spec({"folder": str(tmp_path), "image_size": [16, 16]})
    assert bank.images.shape == (4, 3, 16, 16)
    assert bank.classes.tolist() == [0, 0, 1, 1]
    assert json.dumps(normalise_bank_spec({"folder": str(tmp_path), "image_size": (16, 16)}))


def test_bank_moves_with_to():
    bank = ImageBank(torch.rand(3, 3, 8, 8))
    bank.to(torch.float64)  # buffers follow the module; float images follow dtype conversions
    assert bank.images.dtype == torch.float64
    assert bank.train_index.dtype == torch.long


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"boxes": [torch.tensor([[0.0, 0.0, 40.0, 10.0]])]}, "outside the 32x32 image"),
        ({"boxes": [torch.tensor([[10.0, 0.0, 5.0, 10.0]])]}, "inverted box"),
        ({"quads": [torch.tensor([[[0.0, 0.0], [50.0, 0.0], [50.0, 5.0], [0.0, 5.0]]])]}, "quad of image 0"),
        ({"mask": torch.zeros(1, 16, 16)}, "'mask' has shape"),
        ({"class": torch.tensor([1, 2])}, "'class' has 2 entries"),
        ({"split": ["test"]}, "unknown split"),
        ({"colour": 1}, "unknown key"),
    ],
)
def test_bad_banks_name_source_and_value(tmp_path, bad, message):
    data = {"images": torch.rand(1, 3, 32, 32), **bad}
    torch.save(data, tmp_path / "bad.pt")
    with pytest.raises(BankError, match=message) as err:
        ImageBank.from_spec({"pt": str(tmp_path / "bad.pt")})
    assert "bad.pt" in str(err.value)


def test_bad_specs():
    with pytest.raises(BankError, match="exactly one"):
        normalise_bank_spec({"pt": "a.pt", "folder": "b"})
    with pytest.raises(BankError, match="file not found"):
        ImageBank.from_spec({"pt": "/nonexistent/x.pt"})
    with pytest.raises(BankError, match=r"\[0, 1\]"):
        ImageBank(torch.full((1, 3, 4, 4), 2.0))


def test_corrupt_folder_image_is_named(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(BankError, match="broken.png"):
        ImageBank.from_spec({"folder": str(tmp_path)})


def test_task_bank_feeds_scale_to_box_implanter(tmp_path):
    from pandemonium.attack.stages.implant import ScaleToBoxImplanter
    from pandemonium.tasks.creators import create_task

    create_task("shapes_det", tmp_path, num_samples=12, image_size=32)
    spec = {"task": "shapes_det", "data_dir": str(tmp_path)}
    bank = ImageBank.from_spec(spec)
    assert bank.has_boxes and bank.images.shape[1:] == (3, 32, 32)
    assert bank.train_index.numel() > 0 and bank.eval_index.numel() > 0
    stage = ScaleToBoxImplanter(spec, scale=[0.5, 1.0])
    stage.set_seed(0, 0)
    y, kwargs = stage(torch.rand(4, 3, 8, 8), evaluate=True)
    assert set(kwargs["targets"]["image_index"].tolist()) <= set(bank.eval_index.tolist())
    assert all(b.shape[-1] == 4 for b in kwargs["targets"]["boxes"])
    assert json.dumps(stage.params)


def test_unknown_task_is_named(tmp_path):
    with pytest.raises(BankError, match="image bank task=.no_such_task.*no_such_task"):
        ImageBank.from_spec({"task": "no_such_task", "data_dir": str(tmp_path)})


def test_uint8_storage_is_smaller_and_gathers_the_same_values(tmp_path):
    pixels = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    torch.save({"images": pixels}, tmp_path / "u8.pt")
    small = ImageBank.from_spec({"pt": str(tmp_path / "u8.pt"), "storage": "uint8"})
    full = ImageBank.from_spec({"pt": str(tmp_path / "u8.pt")})
    assert small.images.dtype == torch.uint8 and full.images.dtype == torch.float32
    like = torch.zeros(1)
    index = torch.tensor([3, 0])
    assert torch.allclose(small.gather(index, like), full.gather(index, like), atol=1e-7)
    assert small.gather(index, like.double()).dtype == torch.float64
    with pytest.raises(BankError, match="storage='half'"):
        ImageBank.from_spec({"pt": str(tmp_path / "u8.pt"), "storage": "half"})
