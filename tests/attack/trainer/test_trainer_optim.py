"""Optimisers and schedules: each optimiser lowers a toy loss; schedule values at known steps."""

from __future__ import annotations

import math

import pytest
import torch

from pandemonium.attack.optimizers import MIFGSM, NIFGSM, OPTIMIZERS, build_optimizer
from pandemonium.attack.schedules import build_schedule, is_plateau


def _quadratic(p: torch.Tensor) -> torch.Tensor:
    target = torch.linspace(0.1, 0.9, p.numel()).reshape(p.shape)
    return ((p - target) ** 2).sum()


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_each_optimizer_reduces_a_toy_loss(name):
    p = torch.nn.Parameter(torch.full((3, 4, 4), 0.5))
    # mu < 1 so the momentum of the sign methods decays instead of overshooting the minimum
    settings = {"adam": {"lr": 0.05}, "sgd": {"lr": 0.1}, "bim": {"lr": 0.02}}.get(name, {"lr": 0.02, "mu": 0.5})
    opt = build_optimizer(name, [p], **settings)
    start = _quadratic(p).item()
    for _ in range(40):
        if hasattr(opt, "train"):
            opt.train()
        opt.zero_grad()
        _quadratic(p).backward()
        opt.step()
    assert _quadratic(p).item() < 0.25 * start


def test_unknown_optimizer_lists_known_names():
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="known optimizers.*adam.*bim.*mifgsm.*nifgsm.*sgd"):
        build_optimizer("lbfgs-ish", [p])
    with pytest.raises(ValueError, match="unknown settings \\['beta'\\].*known settings"):
        build_optimizer("mifgsm", [p], beta=0.9)


def test_mifgsm_step_matches_the_formula():
    p = torch.nn.Parameter(torch.tensor([0.5, 0.5, 0.5]))
    opt = MIFGSM([p], lr=0.1, mu=0.5)
    grads = [torch.tensor([1.0, -2.0, 0.5]), torch.tensor([-3.0, 0.5, 0.1])]
    g = torch.zeros(3)
    expected = p.detach().clone()
    for grad in grads:
        p.grad = grad.clone()
        opt.step()
        g = 0.5 * g + grad / grad.abs().sum()
        expected = expected - 0.1 * g.sign()
    assert torch.allclose(p.detach(), expected)


def test_nifgsm_takes_the_gradient_at_the_lookahead_and_steps_from_the_iterate():
    p = torch.nn.Parameter(torch.tensor([0.5, 0.5]))
    opt = NIFGSM([p], lr=0.1, mu=1.0)
    seen = []
    for _ in range(3):
        opt.train()
        seen.append(p.detach().clone())
        loss = (p * torch.tensor([1.0, -1.0])).sum()  # gradient (1, -1): sign steps are exact
        opt.zero_grad()
        loss.backward()
        opt.step()
    # first look-ahead has zero momentum; afterwards it is lr * mu * g away from the iterate
    assert torch.equal(seen[0], torch.tensor([0.5, 0.5]))
    assert torch.allclose(p.detach(), torch.tensor([0.2, 0.8]))
    g_after_1 = torch.tensor([0.5, -0.5])
    assert torch.allclose(seen[1], torch.tensor([0.4, 0.6]) - 0.1 * g_after_1)


def _lrs(name, steps=10, **kw):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_schedule(name, opt, total_steps=steps, **kw)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedule_values_at_known_steps():
    assert _lrs("none") == [1.0] * 10
    cos = _lrs("cosine", eta_min=0.0)
    assert cos[0] == pytest.approx(1.0) and cos[5] == pytest.approx(0.5)
    assert cos[2] == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 10)))
    exp = _lrs("exponential", gamma=0.5)
    assert exp[3] == pytest.approx(0.125)
    warm = _lrs("warmup", warmup_steps=4, start_factor=0.2, after="exponential", after_kwargs={"gamma": 0.5})
    assert warm[0] == pytest.approx(0.2) and warm[2] == pytest.approx(0.6) and warm[4] == pytest.approx(1.0)
    assert warm[6] == pytest.approx(0.25)


def test_plateau_halves_after_patience():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_schedule("plateau", opt, patience=1, factor=0.5)
    assert is_plateau(sched)
    for value in (1.0, 1.0, 1.0):
        sched.step(value)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)


def test_schedule_errors_name_the_culprit():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="known schedules"):
        build_schedule("triangular", opt)
    with pytest.raises(ValueError, match="'cosine'.*unknown settings \\['gamma'\\]"):
        build_schedule("cosine", opt, total_steps=5, gamma=0.1)


def test_one_build_path_for_short_names_specs_and_import_paths():
    from pandemonium.attack.optimizers import BIM, SignGradientOptimizer

    p = torch.nn.Parameter(torch.zeros(2))
    assert isinstance(build_optimizer({"_target_": "bim", "lr": 0.1}, [p]), BIM)
    assert isinstance(build_optimizer({"name": "MI-FGSM", "lr": 0.1}, [p]), MIFGSM)  # the presets' spelling
    adamw = build_optimizer({"_target_": "torch.optim.AdamW", "lr": 0.3}, [p])
    assert type(adamw) is torch.optim.AdamW and adamw.param_groups[0]["lr"] == 0.3
    assert build_optimizer("adam", [p]).param_groups[0]["lr"] == 1e-2  # the short name's default
    assert all(issubclass(c, SignGradientOptimizer) for c in (BIM, MIFGSM, NIFGSM))
    with pytest.raises(ValueError, match="MIFGSM: momentum mu must be >= 0, got -1"):
        MIFGSM([p], mu=-1)


@pytest.mark.parametrize("name", ["bim", "mifgsm", "nifgsm"])
def test_sign_optimizers_run_the_closure_and_return_its_loss(name):
    p = torch.nn.Parameter(torch.tensor([0.5, 0.5]))
    opt = build_optimizer(name, [p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p * torch.tensor([1.0, -1.0])).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == pytest.approx(0.0)
    assert torch.allclose(p.detach(), torch.tensor([0.4, 0.6]))  # one sign step downhill
