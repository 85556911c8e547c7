"""The seed's BuzzScheduler (004_*.txt), verbatim except for: the import line, the placeholder
functions ``heavy_work`` / ``store`` / ``load_my_artifact`` defined below, and ``task`` for the
undefined ``task_name`` in ``step_b``."""

import json
from pathlib import Path

from omegaconf import DictConfig

from pandemonium import AbstractBaseScheduler


# -- placeholders of the seed -------------------------------------------------------------------------
class _Artifact:
    def __init__(self, data):
        self.data = data

    def store(self, path):
        Path(path).write_text(json.dumps(self.data))


def heavy_work(inputs):
    if isinstance(inputs, dict):  # step_b: the loaded artifacts of every task
        return _Artifact({"total": sum(a["train_samples"] for a in inputs.values()), "tasks": sorted(inputs)})
    datamodule = inputs
    datamodule.setup("fit")
    return _Artifact({"train_samples": len(datamodule.train_dataloader().dataset)})


def load_my_artifact(path):
    return json.loads(Path(path).read_text())


# -- the seed, as written -----------------------------------------------------------------------------
class BuzzScheduler(AbstractBaseScheduler):
    def __init__(self, cfg: DictConfig):
        # initialize
        super(BuzzScheduler, self).__init__(cfg=cfg, available_subroutines=["a", "b"])  # noqa: UP008 (seed text)

    def create_routine(self):
        # -- add step_a commands
        if "a" in self.subroutines:
            # subroutines may be called independently
            for task in self.cfg.task_list:
                self.commands.append(self.step_a)
                self.params.append([task])
        # -- add step_b command
        if "b" in self.subroutines:
            # run only once, nor args
            self.commands.append(self.step_b)
            self.params.append([])

    def step_a(self, task_name):
        struct = self.get_struct(task_name)
        # do calculations
        datamodule = self.create_datamodule(struct)
        artifact = heavy_work(datamodule)
        # store
        path = self.fm.construct_saving_path(obj=artifact, key='foo', task_name=task_name)
        artifact.store(path)
        # attach path to struct (this will make it persistent across atomic steps)
        struct.paths['foo'] = path

    def step_b(self):
        # load artifacts
        artifacts = {}
        for task in self.cfg.task_list:
            struct = self.get_struct(task)
            artifacts[task] = load_my_artifact(path=struct.paths['foo'])
        # do some work
        end_result = heavy_work(artifacts)
        # store
        path = self.fm.construct_saving_path(obj=end_result, key='baz')
        end_result.store(path)
