"""MemoizedModel: a repeated input is answered with exactly the output of a fresh pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pandemonium.models.memo import MemoizedModel, input_key


class Counting(nn.Module):
    """A small conv net that counts its forward passes and returns a detector-like dict."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        y = self.conv(x)
        return {"boxes": y.flatten(2), "objectness": y.mean(dim=(2, 3)).sigmoid()}


def test_repeated_input_is_served_bit_for_bit():
    torch.manual_seed(0)
    inner = Counting().eval()
    memo = MemoizedModel(inner).eval()
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        fresh = inner(x)
        first = memo(x)
        again = memo(x.clone())
    assert inner.calls == 2  # the direct call and the memo's first pass
    assert (memo.hits, memo.misses) == (1, 1)
    for key in fresh:
        assert torch.equal(fresh[key], first[key]) and torch.equal(fresh[key], again[key])


def test_a_changed_input_runs_the_model():
    memo = MemoizedModel(Counting()).eval()
    x = torch.rand(2, 3, 8, 8)
    y = x.clone()
    y[1, 2, 7, 7] = torch.nextafter(y[1, 2, 7, 7], torch.tensor(2.0))  # one ulp in one pixel
    with torch.no_grad():
        memo(x)
        memo(y)
        memo(x[:1])  # same values, another shape
    assert memo.misses == 3 and memo.hits == 0


def test_callers_cannot_change_what_is_stored():
    memo = MemoizedModel(Counting()).eval()
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        out = memo(x)
        expected = out["objectness"].clone()
        out["objectness"].zero_()
        assert torch.equal(memo(x)["objectness"], expected)


def test_gradients_and_training_bypass_the_memory():
    inner = Counting()
    memo = MemoizedModel(inner)
    x = torch.rand(1, 3, 8, 8, requires_grad=True)
    memo.eval()
    memo(x)["objectness"].sum().backward()  # grad mode on: no memory
    memo.train()
    with torch.no_grad():
        memo(x)
        memo(x)
    assert inner.calls == 3 and memo.hits == memo.misses == 0
    assert x.grad is not None


def test_memory_is_bounded_least_recent_first():
    memo = MemoizedModel(Counting(), max_entries=2).eval()
    a, b, c = (torch.full((1, 3, 4, 4), v) for v in (0.1, 0.2, 0.3))
    with torch.no_grad():
        for x in (a, b, a, c, a, b):  # c evicts b (a was used more recently); b is computed again
            memo(x)
    assert (memo.hits, memo.misses) == (2, 4)
    with pytest.raises(ValueError, match="max_entries"):
        MemoizedModel(Counting(), max_entries=0)


def test_memory_is_bounded_in_bytes():
    probe = Counting().eval()
    with torch.no_grad():
        one = sum(t.element_size() * t.numel() for t in _tensors(probe(torch.zeros(1, 3, 4, 4))))
    memo = MemoizedModel(Counting(), max_bytes=2 * one).eval()
    a, b, c = (torch.full((1, 3, 4, 4), v) for v in (0.1, 0.2, 0.3))
    with torch.no_grad():
        for x in (a, b, c, a):  # room for two outputs: c evicts a, so a is computed again
            memo(x)
    assert (memo.hits, memo.misses) == (0, 4) and memo.stored_bytes == 2 * one
    small = MemoizedModel(Counting(), max_bytes=one - 1).eval()
    with torch.no_grad():
        small(a)
        small(a)
    assert small.misses == 2 and small.stored_bytes == 0  # larger than the budget: never stored
    with pytest.raises(ValueError, match="max_bytes"):
        MemoizedModel(Counting(), max_bytes=-1)


def _tensors(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return [t for v in value for t in _tensors(v)]


def test_input_key_tells_dtype_and_shape_apart():
    x = torch.zeros(2, 3)
    assert input_key(x) == input_key(torch.zeros(2, 3))
    assert input_key(x) != input_key(x.reshape(3, 2))
    assert input_key(x) != input_key(x.double())
