"""MultiTaskPipeline / MultiTaskLoss: one patch against several task pipelines (the universal attack)."""

from __future__ import annotations

import torch

from pandemonium.attack.evaluation import task_metrics
from pandemonium.attack.multitask import MultiTaskLoss, MultiTaskPipeline
from pandemonium.attack.spec import AttackSpec
from pandemonium.testing.fixtures import write_fake_task


def _spec(struct):
    preset = {"name": "p", "task_types": ["classification"], "patch": {"size": [2, 2]},
              "stages": [{"_target_": "FusedImplantAugment", "bank": None, "scale": [1.0, 1.0], "degrees": 10}],
              "loss": {"_target_": "pandemonium.attack.losses.ClassificationUntargeted"},
              "weights": {"untargeted": 1.0}, "steps": 1}
    return AttackSpec.from_config(preset, struct)


def test_each_task_gets_its_own_targets_and_metrics_and_replays(pandemonium_roots):
    data_dir = pandemonium_roots.data_dir
    structs = [write_fake_task(data_dir, name=name, seed=i) for i, name in enumerate(("task_a", "task_b"))]
    torch.manual_seed(0)
    pipes, losses = {}, {}
    for struct in structs:
        spec = _spec(struct)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
        pipes[struct.name] = spec.build_pipeline(model, struct, str(data_dir), seed=0)
        losses[struct.name] = spec.build_loss()
    pipeline = MultiTaskPipeline(pipes)
    x = torch.rand(4, 3, 2, 2)
    y, kwargs = pipeline(x, evaluate=True)
    assert set(y) == set(kwargs["targets"]) == {"task_a", "task_b"}
    for name in y:
        assert kwargs["targets"][name] is kwargs["per_task"][name]["targets"]
    params = pipeline.get_last_sample_as_dict()
    assert params and all(k.split("/", 1)[0] in y for k in params)
    y_control, _ = pipeline(x, evaluate=True, control=True, params=params)
    metrics = task_metrics(y, y_control, kwargs["targets"])
    assert {k.split(".", 1)[0] for k in metrics} == {"task_a", "task_b"}
    replayed, _ = pipeline(x, evaluate=True, params=params)
    for name in y:
        assert torch.equal(replayed[name], y[name])
    terms = MultiTaskLoss(losses)(y, **kwargs)
    assert set(terms) == {"task_a/untargeted", "task_b/untargeted"}
    assert all(t.shape == (4,) for t in terms.values())
