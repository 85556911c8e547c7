from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from pandemonium.tasks import TaskDataModule, TaskDataset, collate_samples

CONFIGS = Path(__file__).resolve().parents[2] / "src" / "pandemonium" / "configs"


def run_cfg(augmentations="default", sampling="default", **extra):
    return OmegaConf.create({
        "seed": 0,
        "sampling": OmegaConf.load(CONFIGS / "sampling" / f"{sampling}.yaml"),
        "augmentations": OmegaConf.load(CONFIGS / "augmentations" / f"{augmentations}.yaml"),
        "loaders": OmegaConf.load(CONFIGS / "loaders" / "default.yaml"),
        **extra,
    })


@pytest.mark.parametrize("augmentations", ["default", "none"])
@pytest.mark.parametrize("name", ["shapes_cls", "shapes_seg", "shapes_det", "digits"])
def test_batches_have_contract_shapes(name, augmentations, tiny_structs):
    struct = tiny_structs[name]
    dm = TaskDataModule.from_config(struct, run_cfg(augmentations), batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    h, w = struct.image_size
    image = batch["image"]
    assert image.shape == (4, struct.channels, h, w) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0  # default does not normalise
    assert isinstance(batch["sample_id"], list) and all(isinstance(s, str) for s in batch["sample_id"])
    if struct.task_type.value == "classification":
        assert batch["class"].shape == (4,) and batch["class"].dtype == torch.long
        assert 0 <= batch["class"].min() and batch["class"].max() < struct.num_classes
    elif struct.task_type.value == "semantic_segmentation":
        assert batch["mask"].shape == (4, h, w) and batch["mask"].dtype == torch.long
        assert batch["mask"].max() < struct.num_classes
    else:
        assert len(batch["boxes"]) == len(batch["labels"]) == 4
        for boxes, labels in zip(batch["boxes"], batch["labels"]):
            assert boxes.dtype == torch.float32 and boxes.shape[1] == 4 and labels.dtype == torch.long
            assert boxes.shape[0] == labels.shape[0]
            assert (boxes[:, 0] < boxes[:, 2]).all() and (boxes[:, 1] < boxes[:, 3]).all()
            assert boxes.min() >= 0 and boxes[:, [0, 2]].max() <= w and boxes[:, [1, 3]].max() <= h


def test_splits_follow_folds(tiny_structs):
    struct = tiny_structs["shapes_cls"]
    dm = TaskDataModule(struct, fold=2, batch_size=8)
    dm.setup()
    train, val, test = (set(dm.dataset(s).sample_ids) for s in ("train", "val", "test"))
    assert len(train) == 32 - len(val) and not train & val and not (train | val) & test
    other = TaskDataModule(struct, fold=3)
    assert set(other.dataset("val").sample_ids) != val
    with pytest.raises(ValueError, match="fold 7 out of range"):
        TaskDataModule(struct, fold=7)


def _order(dm):
    return [i for b in dm.train_dataloader() for i in b["sample_id"]]


def test_shuffling_is_seeded(tiny_structs):
    struct = tiny_structs["shapes_cls"]
    a, b, c = (TaskDataModule(struct, batch_size=5, seed=s) for s in (1, 1, 2))
    assert _order(a) == _order(b) != _order(c)
    assert sorted(_order(a)) == sorted(a.dataset("train").sample_ids)
    # augmented pixels are seeded too
    aug = run_cfg("default").augmentations
    x = TaskDataModule(struct, batch_size=32, seed=1, cpu_augmentations=aug)
    y = TaskDataModule(struct, batch_size=32, seed=1, cpu_augmentations=aug)
    assert torch.equal(next(iter(x.train_dataloader()))["image"], next(iter(y.train_dataloader()))["image"])


def test_sample_num_caps_epoch(tiny_structs):
    struct = tiny_structs["shapes_cls"]
    cfg = run_cfg("none", "extraction_default")
    cfg.sampling.sample_num = 10
    dm = TaskDataModule.from_config(struct, cfg)
    ids = _order(dm)
    assert len(ids) == 10 and len(set(ids)) == 10
    assert dm.batch_size == 64 and dm.cpu_augmentations is None
    assert len([i for b in dm.val_dataloader() for i in b["sample_id"]]) == len(dm.dataset("val"))


def test_fold_from_config(tiny_structs):
    dm = TaskDataModule.from_config(tiny_structs["shapes_cls"], run_cfg(mode={"fold": 4}))
    assert dm.fold == 4


def test_normalisation_uses_task_stats(tiny_structs):
    struct = tiny_structs["digits"]
    plain = TaskDataset(struct, "val")
    normed = TaskDataset(struct, "val", normalize=True)
    mean, std = torch.tensor(struct.mean).view(-1, 1, 1), torch.tensor(struct.std).view(-1, 1, 1)
    assert torch.allclose(normed[0]["image"], (plain[0]["image"] - mean) / std)
    dm = TaskDataModule.from_config(struct, run_cfg("normalize"))
    assert dm.normalize is True


def test_segmentation_augmentation_moves_mask_with_image(tiny_structs):
    struct = tiny_structs["shapes_seg"]
    flip = {"cpu": [{"_target_": "albumentations.HorizontalFlip", "p": 1.0}]}
    plain, flipped = TaskDataset(struct, "val"), TaskDataModule(struct, cpu_augmentations=flip)
    flipped_ds = TaskDataset(struct, "val", transform=flipped.cpu_augmentations)
    assert torch.equal(flipped_ds[0]["mask"], plain[0]["mask"].flip(-1))
    assert torch.allclose(flipped_ds[0]["image"], plain[0]["image"].flip(-1))


def test_detection_augmentation_moves_boxes(tiny_structs):
    struct = tiny_structs["shapes_det"]
    flip = {"cpu": [{"_target_": "albumentations.HorizontalFlip", "p": 1.0}]}
    transform = TaskDataModule(struct, cpu_augmentations=flip).cpu_augmentations
    plain, flipped = TaskDataset(struct, "val")[0], TaskDataset(struct, "val", transform=transform)[0]
    w = struct.image_size[1]
    expected = plain["boxes"].clone()
    expected[:, [0, 2]] = w - plain["boxes"][:, [2, 0]]
    assert torch.allclose(flipped["boxes"], expected, atol=1e-4)
    assert torch.equal(flipped["labels"], plain["labels"])


def test_bad_augmentation_entry_is_named(tiny_structs):
    with pytest.raises(ValueError, match=r"augmentations.cpu\[0\] \(albumentations.NoSuchThing\)"):
        TaskDataModule(tiny_structs["shapes_cls"], cpu_augmentations={"cpu": [{"_target_": "albumentations.NoSuchThing"}]})


def test_collate_samples_keeps_ragged_as_lists():
    items = [
        {"image": torch.zeros(3, 4, 4), "boxes": torch.zeros(n, 4), "labels": torch.zeros(n, dtype=torch.long),
         "class": torch.tensor(1), "sample_id": str(n), "ragged": torch.zeros(n + 1)}
        for n in (1, 3)
    ]
    batch = collate_samples(items)
    assert batch["image"].shape == (2, 3, 4, 4) and batch["class"].tolist() == [1, 1]
    assert [b.shape[0] for b in batch["boxes"]] == [1, 3] and isinstance(batch["labels"], list)
    assert batch["sample_id"] == ["1", "3"] and isinstance(batch["ragged"], list)


def test_workers_load_same_data(tiny_structs):
    struct = tiny_structs["shapes_cls"]
    single = TaskDataModule(struct, batch_size=8, seed=3)
    multi = TaskDataModule(struct, batch_size=8, seed=3, num_workers=1)
    a = next(iter(single.val_dataloader()))
    b = next(iter(multi.val_dataloader()))
    assert a["sample_id"] == b["sample_id"] and torch.equal(a["image"], b["image"])


def test_lightning_trainer_consumes_datamodule(tiny_structs, tmp_path):
    import lightning as L

    class Tiny(L.LightningModule):
        def __init__(self, channels, classes):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(classes))
            self.seen = {"train": 0, "val": 0, "test": 0}

        def _step(self, batch, split):
            self.seen[split] += len(batch["sample_id"])
            return torch.nn.functional.cross_entropy(self.net(batch["image"]), batch["class"])

        def training_step(self, batch, batch_idx):
            return self._step(batch, "train")

        def validation_step(self, batch, batch_idx):
            self._step(batch, "val")

        def test_step(self, batch, batch_idx):
            self._step(batch, "test")

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    struct = tiny_structs["shapes_cls"]
    dm = TaskDataModule(struct, batch_size=8, sample_num=16)
    model = Tiny(struct.channels, struct.num_classes)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    assert model.seen == {"train": 16, "val": len(dm.dataset("val")), "test": struct.num_test}


@pytest.fixture
def multilabel_and_regression(tmp_path):
    from pandemonium.tasks import TASK_CREATORS, create_task, load_task_struct, register_taskcreator

    @register_taskcreator("toy_multilabel", task_type="multilabel_classification", class_names=["r", "g", "b"])
    def multilabel(writer, rng, num_samples=12):
        for _ in range(num_samples):
            hot = (rng.random(3) < 0.5).astype(int)
            writer.add_sample(image=(rng.random((8, 8, 3)) * hot).astype("float32"), classes=hot.tolist())

    @register_taskcreator("toy_regression", task_type="regression")
    def regression(writer, rng, num_samples=12):
        for _ in range(num_samples):
            level = float(rng.random())
            writer.add_sample(image=rng.random((8, 8)) * 0 + level, value=level)

    try:
        yield {n: load_task_struct(n, create_task(n, tmp_path).parents[1]) for n in ("toy_multilabel", "toy_regression")}
    finally:
        TASK_CREATORS.pop("toy_multilabel")
        TASK_CREATORS.pop("toy_regression")


def test_multilabel_and_regression_batches(multilabel_and_regression):
    ml = next(iter(TaskDataModule(multilabel_and_regression["toy_multilabel"], batch_size=4).val_dataloader()))
    assert ml["classes"].dtype == torch.long and ml["classes"].shape[1] == 3
    assert set(ml["classes"].unique().tolist()) <= {0, 1}
    struct = multilabel_and_regression["toy_regression"]
    assert struct.num_classes == 0 and struct.target.value == "value"
    reg = next(iter(TaskDataModule(struct, batch_size=4).val_dataloader()))
    assert reg["value"].dtype == torch.float32 and reg["value"].shape == (len(reg["sample_id"]),)
    # the image holds the level it was drawn from (up to PNG quantisation)
    assert torch.allclose(reg["image"].mean((1, 2, 3)), reg["value"], atol=1 / 255)
