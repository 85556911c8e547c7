"""pandemonium's Adam (the trainer's "adam") steps exactly as torch.optim.Adam, state included."""

from __future__ import annotations

import importlib

import pytest
import torch

from pandemonium.attack.optimizers import Adam, build_optimizer


def _run(cls, steps: int, split: int | None = None, **settings):
    """``steps`` steps on random gradients with a cosine schedule (a second tensor only every third step);
    at ``split`` the optimiser and schedule are rebuilt from their state dicts (a resumed fit)."""
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.rand(3, 7, 5, generator=generator)),
              torch.nn.Parameter(torch.rand(4, generator=generator))]
    opt = cls(params, lr=0.05, **settings)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for step in range(steps):
        if step == split:
            state, sched_state = opt.state_dict(), sched.state_dict()
            opt = cls(params, lr=0.05, **settings)
            opt.load_state_dict(state)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
            sched.load_state_dict(sched_state)
        opt.zero_grad(set_to_none=True)
        params[0].grad = torch.randn(3, 7, 5, generator=generator) * 10 ** float(step % 5 - 2)
        if step % 3 == 0:
            params[1].grad = torch.randn(4, generator=generator)
        opt.step()
        sched.step()
    return params, opt.state_dict()


@pytest.mark.parametrize("split", [None, 7])
@pytest.mark.parametrize("settings", [{}, {"betas": (0.5, 0.9), "eps": 1e-6}, {"amsgrad": True}, {"weight_decay": 0.1}],
                         ids=["defaults", "betas_eps", "amsgrad_torch_path", "weight_decay_torch_path"])
def test_adam_is_bit_identical_to_torch(settings, split):
    ours, our_state = _run(Adam, 20, split, **settings)
    theirs, their_state = _run(torch.optim.Adam, 20, split, **settings)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    assert our_state["param_groups"] == their_state["param_groups"]
    for key, state in their_state["state"].items():
        assert state.keys() == our_state["state"][key].keys()
        for name, value in state.items():
            assert value.dtype == our_state["state"][key][name].dtype
            assert torch.equal(value, our_state["state"][key][name])


def test_adam_runs_step_hooks_and_closures_like_torch():
    p = torch.nn.Parameter(torch.ones(2))
    opt = build_optimizer("adam", [p], lr=0.1)
    assert isinstance(opt, Adam) and isinstance(opt, torch.optim.Adam)
    seen = []
    handle = opt.register_step_post_hook(lambda *args: seen.append("post"))

    def closure():
        loss = (p**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 2.0  # a hook registered: torch's own step runs, hooks and all
    handle.remove()
    p.grad = None
    assert opt.step(closure).item() == pytest.approx(float(((1 - 0.1) ** 2) * 2), rel=1e-5)
    assert seen == ["post"]


def test_default_settings_take_the_short_step_and_others_torch_s(monkeypatch):
    calls = []
    functional = importlib.import_module("torch.optim.adam")  # torch.optim does not re-export the module
    original = functional.adam
    monkeypatch.setattr(functional, "adam", lambda *a, **k: (calls.append(1), original(*a, **k))[1])
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.ones(2)
    Adam([p], lr=0.1).step()
    assert calls == []  # the short step: torch's functional adam is not called
    Adam([p], lr=0.1, amsgrad=True).step()
    assert calls == [1]
