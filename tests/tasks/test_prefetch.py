"""PrefetchDataLoader: the same batches as the plain loader, errors raised where they are consumed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from pandemonium.tasks import TaskDataModule
from pandemonium.tasks.prefetch import PrefetchDataLoader

CONFIGS = Path(__file__).resolve().parents[2] / "src" / "pandemonium" / "configs"


def _epochs(dm: TaskDataModule, n: int) -> list[dict]:
    loader = dm.train_dataloader()  # one loader for every epoch, as Lightning keeps it
    return [batch for _ in range(n) for batch in loader]


@pytest.mark.parametrize("task", ["shapes_cls", "shapes_det"])
def test_augmented_epochs_equal_the_plain_loader_bit_for_bit(tiny_structs, task):
    struct = tiny_structs[task]
    aug = OmegaConf.load(CONFIGS / "augmentations" / "default.yaml")
    plain = TaskDataModule(struct, batch_size=4, seed=3, cpu_augmentations=aug, prefetch=0)
    ahead = TaskDataModule(struct, batch_size=4, seed=3, cpu_augmentations=aug, prefetch=2)
    assert type(plain.train_dataloader().__iter__()).__name__ != "_PrefetchIterator"
    a, b = _epochs(plain, 2), _epochs(ahead, 2)
    assert len(a) == len(b) > 2
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and x["sample_id"] == y["sample_id"]
        assert torch.equal(x["image"], y["image"])
        for key in ("class", "boxes", "labels"):
            if key in x:
                xs, ys = (x[key], y[key]) if isinstance(x[key], list) else ([x[key]], [y[key]])
                assert all(torch.equal(u, v) for u, v in zip(xs, ys))
    val_a, val_b = list(plain.val_dataloader()), list(ahead.val_dataloader())
    assert all(torch.equal(u["image"], v["image"]) for u, v in zip(val_a, val_b)) and len(val_a) == len(val_b)


def _lightning_like_epochs(dm: TaskDataModule, n: int) -> list[dict]:
    """What Lightning does: a new iterator per epoch, exactly len(loader) batches taken (the call that
    would end the epoch, where the sampler draws its next permutation, never made), and an iterator
    made and dropped unused."""
    loader = dm.train_dataloader()
    out = []
    for _ in range(n):
        iter(loader)  # made and dropped: draws nothing
        it = iter(loader)
        out += [next(it) for _ in range(len(loader))]
    return out


def test_epochs_taken_by_length_equal_the_plain_loader(tiny_structs):
    struct = tiny_structs["shapes_cls"]
    aug = OmegaConf.load(CONFIGS / "augmentations" / "default.yaml")
    plain, ahead = (TaskDataModule(struct, batch_size=4, seed=5, cpu_augmentations=aug, prefetch=p) for p in (0, 3))
    a, b = _lightning_like_epochs(plain, 3), _lightning_like_epochs(ahead, 3)
    assert [x["sample_id"] for x in a] == [y["sample_id"] for y in b]
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))


def test_a_cut_epoch_loads_nothing_ahead(tiny_structs):
    dm = TaskDataModule(tiny_structs["shapes_cls"], batch_size=4, prefetch=2)
    assert dm.train_dataloader().prefetch == 2 and dm.val_dataloader().prefetch == 2

    class Cut:
        limit_train_batches = 0.5

    dm.trainer = Cut()
    assert dm.train_dataloader().prefetch == 0


class Exploding(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> int:
        if index == 4:
            raise KeyError(f"sample {index} is broken")
        return index


def test_a_failing_sample_raises_in_the_consumer():
    batches = []
    with pytest.raises(KeyError, match="sample 4 is broken"):
        for batch in PrefetchDataLoader(Exploding(), batch_size=2, prefetch=1):
            batches.append(batch.tolist())
    assert batches == [[0, 1], [2, 3]]


def test_an_abandoned_iterator_stops_its_thread():
    it = iter(PrefetchDataLoader(list(range(100)), batch_size=1, prefetch=1))
    assert next(it).tolist() == [0]
    thread = it._thread
    it.close()
    thread.join(timeout=5)
    assert not thread.is_alive()
    with pytest.raises(StopIteration):
        next(it)


def test_prefetch_needs_a_single_process_and_a_depth():
    with pytest.raises(ValueError, match="num_workers=0"):
        PrefetchDataLoader(list(range(4)), batch_size=2, num_workers=1, prefetch=2)
    with pytest.raises(ValueError, match=">= 0"):
        PrefetchDataLoader(list(range(4)), prefetch=-1)
