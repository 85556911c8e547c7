"""The seed's ``MyPipelineStage`` example (seeds/000_*.txt, "Tutorial 08: Extending"), filled in.

Placeholders were filled with the simplest working code: ``<stuff here>`` -> nothing,
``f`` -> an affine map built from ``foo`` and ``bar``, ``dict(<some stuff>)`` -> ``dict()`` (the stage
draws nothing), and the image logged is the first patch next to its control. The seed's
``writer.add_image("stacked_patch", <some stuff>, global_step=step, logging_to_mlflow)`` passes a
positional argument after a keyword argument, which is a SyntaxError in Python, and
``logging_to_mlflow`` is not a parameter of that method; the call below drops that argument, which
is the only change to the seed's code. Only the import line differs otherwise.
"""

from __future__ import annotations

import numpy as np
import torch

from pandemonium import Pipeline, PipelineBase
from pandemonium.attack import RandomScroll, Resize
from pandemonium.testing import check_stage


def f(x, foo, bar):
    return x * foo + bar


class MyPipelineStage(PipelineBase):
    name = "MyPipelineStage"

    def __init__(self, foo, bar):
        super().__init__()
        self.params = {"foo": foo, "bar": bar}

    def forward(self, x, control=False, evaluate=False, params=None, **kwargs):
        y = f(x, self.params["foo"], self.params["bar"])
        return y, kwargs

    def get_last_sample_as_dict(self):
        return dict()

    def log_vizualizations(self, x, x_control, writer, step):
        """ """
        writer.add_image("stacked_patch", torch.cat([x[0], x_control[0]], dim=-1), global_step=step)

    def get_description(self):
        return "**MyPipelineStage** and some details that would be helpful in mlflow"


class MyRandomStage(PipelineBase):
    """A stochastic stage written the seed's way: own forward, own params handling, own generator use."""

    name = "MyRandomStage"

    def __init__(self, scale=0.5):
        super().__init__()
        self.params = {"scale": scale}
        self.last_gain = None  # numpy, so it is plain data rather than a tensor left on one device

    def forward(self, x, control=False, evaluate=False, params=None, **kwargs):
        if params is not None:
            gain = np.asarray(params["gain"], dtype=np.float32)
        elif control:
            gain = self.last_gain
        else:
            gain = (1 + self.params["scale"] * torch.rand(x.shape[0], generator=self.generator)).numpy()
        self.last_gain = gain
        return x * torch.as_tensor(gain, device=x.device).to(x.dtype).view(-1, 1, 1, 1), kwargs

    def get_last_sample_as_dict(self):
        return {"gain": self.last_gain}


class RecordingWriter:
    def __init__(self):
        self.images = []

    def add_image(self, tag, image, global_step=None):
        self.images.append((tag, tuple(image.shape), global_step))

    def add_images(self, tag, images, global_step=None):
        self.images.append((tag, tuple(images.shape), global_step))


def test_seed_stage_passes_the_contract(patch_batch):
    check_stage(MyPipelineStage(foo=0.5, bar=0.25), patch_batch)
    check_stage(MyRandomStage(scale=0.5), patch_batch)


def test_seed_stage_in_a_pipeline(patch_batch, classifier):
    stage = MyPipelineStage(foo=0.5, bar=0.25)
    pipe = Resize(6) + stage + MyRandomStage() + RandomScroll() + classifier
    assert pipe.prefixes[1] == "1_MyPipelineStage"
    y, kwargs = pipe(patch_batch, extra="kept")
    assert y.shape == (3, 3) and kwargs == {"extra": "kept"}
    sample = pipe.get_last_sample_as_dict()
    assert "2_MyRandomStage/gain" in sample
    assert torch.equal(pipe(patch_batch, params=sample)[0], y)

    writer = RecordingWriter()
    result = pipe.evaluate(patch_batch, writer=writer, step=9, logging_to_mlflow=True)
    # the seed's 4-argument log_vizualizations was called without logging_to_mlflow
    assert ("stacked_patch", (3, 6, 12), 9) in writer.images
    assert result["output"].shape == (3, 3)
    assert "**MyPipelineStage** and some details" in pipe.get_description()
    assert pipe.validate(patch_batch)


def test_seed_stage_config_round_trip(patch_batch):
    pipe = Pipeline(MyPipelineStage(foo=2.0, bar=-0.5), Resize(4))
    cfg = pipe.to_config()
    assert cfg["stages"][0] == {"_target_": f"{__name__}.MyPipelineStage", "foo": 2.0, "bar": -0.5}
    rebuilt = type(pipe[0])(**pipe[0].params)
    assert torch.equal(rebuilt(patch_batch)[0], pipe[0](patch_batch)[0])
