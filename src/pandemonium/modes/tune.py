"""The ``tune`` mode: hyperparameter search of an attack with Optuna.

Plan: ``train_model`` per task (a model is needed before any trial), one ``run_trial`` step per
trial slot (independent steps: ``executor=ray`` runs them in parallel), then ``summarize_study``
(history, parameter importance and parallel-coordinate plots as PNG plus one HTML page, into the
project's ``plots`` folder, and ``tune_best.json``).

A trial applies its sampled values to config keys (``tune.space.<name>.key``, e.g. ``attack.lr``),
fits the patch of every task with the attack mode's own step (:func:`~pandemonium.modes.steps.fit.fit_patch`)
evaluating on the **validation** fold (never the test split), reports the intermediate evaluation
metric to the pruner and returns the mean best value. Each trial is an MLflow child run of the
mode's parent run, with its parameters.

The study lives in ``tune.storage`` (default ``sqlite:///<run_dir>/optuna.db``; any RDB URL lets
several machines share it). ``<project>/studies.json`` remembers where each study is, so running
the same ``tune.study`` again continues it (only the missing trials run) and
``pandemonium tune use_best=<study>`` reruns the attack plan with the study's best parameters.

    pandemonium tune task_list=[digits] tune.study=lr_search tune.n_trials=16 executor=ray

Refused before work: an inverted or empty range, an unknown type or key, a study name reused with
a different search space, ``use_best`` naming a study with no finished trial.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock
from omegaconf import DictConfig, OmegaConf, open_dict

from pandemonium.attack.spec import AttackSpec
from pandemonium.build import instantiate
from pandemonium.errors import ConfigError
from pandemonium.modes.steps.context import (
    ModeContext,
    check_reuse,
    finish_tracking,
    start_tracking,
    step_seed_of,
    tracked,
)
from pandemonium.modes.steps.fit import fit_patch
from pandemonium.modes.steps.models import ModelSource
from pandemonium.modes.steps.routine import queue_per_task
from pandemonium.modes.steps.search_space import (
    PruningCallback,
    TuneError,
    parse_space,
    space_fingerprint,
    validation_spec,
)
from pandemonium.plain import to_plain
from pandemonium.runs.base import AbstractBaseScheduler, active_run_dir, build_scheduler
from pandemonium.tracking.study_plots import save_study_plots, save_trials_table, study_html

log = logging.getLogger(__name__)

__all__ = ["TuneScheduler"]

STUDIES_FILE = "studies.json"
RUN_FILE = "tune.json"
SPACE_ATTR = "pandemonium_space"
SUBROUTINES = ("train", "tune", "plots")


class TuneScheduler(AbstractBaseScheduler):
    """See the module docstring. ``run()`` returns the study summary (with ``use_best``: the attack
    mode's headline)."""

    #: what a Ray worker imports while the driver prepares (``RayExecutor.prepare``): a trial's study
    worker_imports = ("optuna", "optuna.storages", "kornia")

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg=cfg, available_subroutines=SUBROUTINES)
        self.best_from = cfg.get("use_best")
        self.tune = to_plain(cfg.get("tune")) or {}
        self.space = parse_space(self.tune.get("space") or {}, cfg) if not self.best_from else {}
        self.ctx = ModeContext.of(self)
        self.models = ModelSource(self.ctx)
        self.slots = 0
        self.study_summary: dict[str, Any] | None = None

    def run(self) -> Any:
        if self.best_from:
            return self.run_best(str(self.best_from))
        with tracked(self.ctx):
            return super().run()

    # ------------------------------------------------------------------ study
    def _studies_file(self) -> Path:
        return self.proj_path / STUDIES_FILE

    def study_name(self) -> str:
        return str(self.tune.get("study_name") or self.tune.get("study") or f"tune_{'_'.join(self.task_list)}")

    def storage_url(self) -> str:
        if self.tune.get("storage"):
            return str(self.tune["storage"])
        known = self._registry().get(self.study_name())
        if known and _storage_exists(str(known["storage"])):
            return str(known["storage"])
        return f"sqlite:///{self.run_dir / 'optuna.db'}"

    def _registry(self) -> dict[str, Any]:
        path = self._studies_file()
        return json.loads(path.read_text()) if path.is_file() else {}

    def storage(self, url: str | None = None) -> Any:
        """The Optuna storage at ``url`` (default: this study's), opened once per process."""
        checked = bool(self.tune.get("storage_url"))  # the driver opened (and so checked) it already
        return open_storage(url or str(self.tune.get("storage_url") or self.storage_url()), checked=checked)

    def load_study(self, seed: int | None = None) -> Any:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = instantiate(self.tune.get("sampler") or {"_target_": "optuna.samplers.TPESampler"},
                              what="tune.sampler", optional={"seed": seed})
        pruner = instantiate(self.tune.get("pruner") or {"_target_": "optuna.pruners.MedianPruner"},
                             what="tune.pruner")
        return optuna.load_study(study_name=self.study_name(),
                                 storage=self.storage(), sampler=sampler, pruner=pruner)

    def _open_study(self) -> Any:
        """Create or reopen the study (driver only); refuse a reused name with another search space."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        name, url = self.study_name(), self.storage_url()
        study = optuna.create_study(study_name=name, storage=self.storage(url), load_if_exists=True,
                                    direction=str(self.tune.get("direction", "maximize")))
        fingerprint = space_fingerprint(self.space)
        stored = study.user_attrs.get(SPACE_ATTR)
        if stored is not None and stored != fingerprint:
            raise TuneError(f"tune.study={name!r} exists in {url} with another search space "
                            f"(stored: {stored}; now: {fingerprint}); pick a new tune.study name")
        study.set_user_attr(SPACE_ATTR, fingerprint)
        self.proj_path.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self._studies_file()) + ".lock"):
            registry = self._registry()
            registry[name] = {"storage": url, "run_dir": str(self.run_dir)}
            self._studies_file().write_text(json.dumps(registry, indent=1))
        with open_dict(self.cfg):  # workers read the resolved study and storage from the config
            self.cfg.tune.study_name = name
            self.cfg.tune.storage_url = url
        self.tune = to_plain(self.cfg.tune)
        return study

    def best_config(self, name: str) -> DictConfig:
        """The attack mode's config with study ``name``'s best values written to their keys."""
        import optuna

        known = self._registry().get(name)
        url = str(self.tune.get("storage") or (known or {}).get("storage") or "")
        if not url or not _storage_exists(url):
            raise TuneError(f"use_best={name}: no study of that name in project {self.cfg.proj!r} "
                            f"(known: {', '.join(sorted(self._registry())) or 'none'})")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            study = optuna.load_study(study_name=name, storage=self.storage(url))
        except KeyError:
            raise TuneError(f"use_best={name}: no study of that name in {url}") from None
        try:
            best = study.best_trial
        except ValueError:
            raise TuneError(f"use_best={name}: the study has no finished trial yet") from None
        space = json.loads(study.user_attrs.get(SPACE_ATTR, "{}"))
        cfg = self.cfg.copy()
        with open_dict(cfg):
            for param, value in best.params.items():
                OmegaConf.update(cfg, space[param][0], value, force_add=True)
            cfg.use_best = None
            cfg.tune_best = {"study": name, "trial": best.number, "value": best.value, "params": best.params}
            # the attack plan: workers of a remote executor rebuild the attack scheduler from this config
            cfg.mode.id = "attack"
            cfg.mode.scheduler = {"_target_": "pandemonium.modes.attack.AttackScheduler"}
            cfg.mode.subroutines = None
        log.info("use_best=%s: trial %d (value %.4g) with %s", name, best.number, best.value, best.params)
        return cfg

    def run_best(self, name: str) -> Any:
        """Run the attack plan (train, attack, evaluate) in this run folder with the study's best values."""
        cfg = self.best_config(name)
        with active_run_dir(self.run_dir):
            return build_scheduler(cfg).run()

    # ------------------------------------------------------------------ plan
    def after_preparation_hook(self) -> None:
        if not self.task_list:
            raise TuneError("mode tune: task_list is empty")
        check_reuse(self.ctx)
        if "train" not in self.subroutines:
            for task in self.task_list:
                if self.ctx.model_path(self.get_struct(task)) is None:
                    raise TuneError(f"task {task!r} has no stored model in project {self.cfg.proj!r}: "
                                    "enable the `train` subroutine or run `pandemonium train` first")
        for task in self.task_list:  # an attack that does not fit a task is refused here, not per trial
            AttackSpec.from_config(self.cfg.get("attack") or {}, self.get_struct(task))
        study = self._open_study()
        record = self.run_dir / RUN_FILE
        if self.continuing and record.is_file():
            slots = int(json.loads(record.read_text())["slots"])
            self._fail_stale_trials(study)
        else:
            import optuna

            finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE,
                                                               optuna.trial.TrialState.PRUNED)]
            slots = max(0, int(self.tune.get("n_trials", 8)) - len(finished))
            record.write_text(json.dumps({"study": self.study_name(), "storage": self.storage_url(), "slots": slots}))
        self.slots = slots
        start_tracking(self.ctx, self)

    def before_finishing_hook(self) -> None:
        summary = self.study_summary or {}
        finish_tracking(self.ctx, {"best_value": summary["best_value"]} if "best_value" in summary else {})

    def _fail_stale_trials(self, study: Any) -> None:
        """Trials of this run left RUNNING by a kill count as failed (their slot runs again)."""
        import optuna

        storage = self.storage()
        study_id = storage.get_study_id_from_name(study.study_name)
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if trial.user_attrs.get("run_dir") == str(self.run_dir):
                trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
                storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)

    def create_routine(self) -> None:
        queue_per_task(self, "train", self.train_model)
        if "tune" in self.subroutines:
            for slot in range(self.slots):
                self.commands.append(self.run_trial)
                self.params.append([slot])
        if "plots" in self.subroutines:
            self.commands.append(self.summarize_study)
            self.params.append([])

    # ------------------------------------------------------------------ steps (names are journal entries)
    def train_model(self, task_name: str) -> dict[str, Any]:
        """The attack mode's step: train the task's model unless one is stored already."""
        return self.models.ensure(self.get_struct(task_name), self.create_datamodule, step_seed_of(self))

    def run_trial(self, slot: int) -> dict[str, Any]:
        """Ask the study for a trial, fit every task's patch with its values, tell the result."""
        import optuna

        study = self.load_study(seed=self.step_seed)
        trial = study.ask({name: dist for name, (_key, dist) in self.space.items()})
        trial.set_user_attr("run_dir", str(self.run_dir))
        trial.set_user_attr("slot", int(slot))
        cfg = self.cfg.copy()
        with open_dict(cfg):
            for name, (key, _dist) in self.space.items():
                OmegaConf.update(cfg, key, trial.params[name], force_add=True)
        ctx = dataclasses.replace(self.ctx, cfg=cfg)
        values: list[float] = []
        state, error = optuna.trial.TrialState.COMPLETE, None
        try:
            for task in self.task_list:
                struct = self.get_struct(task)
                model, _meta = self.models.load(struct)
                spec = validation_spec(AttackSpec.from_config(cfg.get("attack") or {}, struct), struct,
                                       ctx.data_dir, ctx.fold)
                # intermediate values of one task are comparable across trials; of several, not
                callbacks = [PruningCallback(trial, spec.success_metric)] if len(self.task_list) == 1 else []
                outcome = fit_patch(ctx, [(struct, model, spec)], name=f"{self.study_name()}_t{trial.number}",
                                    seed=step_seed_of(self),
                                    callbacks=callbacks)
                values.append(float(outcome.summary["best_value"]))
        except optuna.TrialPruned as pruned:
            state, error = optuna.trial.TrialState.PRUNED, str(pruned)
        except ConfigError as bad:  # values that make no valid attack: a failed trial, not a failed run
            state, error = optuna.trial.TrialState.FAIL, str(bad)
        except BaseException:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        value = sum(values) / len(values) if values and state == optuna.trial.TrialState.COMPLETE else None
        study.tell(trial, value, state=state)
        self._log_trial(trial.number, trial.params, value, state.name, error)
        if error:
            log.warning("tune: trial %d %s: %s", trial.number, state.name.lower(), error)
        return {"trial": trial.number, "state": state.name.lower(), "value": value, "params": dict(trial.params),
                **({"error": error} if error else {})}

    def _log_trial(self, number: int, params: Mapping[str, Any], value: float | None, state: str,
                   error: str | None) -> None:
        """An MLflow child run of the mode's parent run (read from the run folder: workers too)."""
        from pandemonium.tracking.mode_run import ModeTracking

        record = self.run_dir / ModeTracking.FILE
        if not record.is_file():
            return
        parent = json.loads(record.read_text())
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=parent.get("tracking_uri"))
        experiment = client.get_run(parent["run_id"]).info.experiment_id
        tags = {"mlflow.parentRunId": parent["run_id"], "pandemonium.step": "tune", "study": self.study_name(),
                "trial": str(number), "state": state}
        run = client.create_run(experiment, run_name=f"trial {number}", tags=tags)
        for key, val in params.items():
            client.log_param(run.info.run_id, key, val)
        if value is not None:
            client.log_metric(run.info.run_id, "value", float(value))
        if error:
            client.set_tag(run.info.run_id, "error", error[:500])
        client.set_terminated(run.info.run_id, "FINISHED" if state in ("COMPLETE", "PRUNED") else "FAILED")

    def summarize_study(self) -> dict[str, Any]:
        """Best trial (``tune_best.json``) and the study's plots (PNG + one HTML page) under ``plots``."""
        import optuna

        study = self.load_study()
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        summary: dict[str, Any] = {
            "study": self.study_name(), "storage": self.storage_url(), "n_trials": len(study.trials),
            "n_complete": len(complete),
            "n_pruned": len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))),
        }
        if complete:
            summary.update(best_value=study.best_value, best_params=study.best_params, best_trial=study.best_trial.number)
        owner = self.study_name()

        def path_for(fname: str) -> Path:
            return self.fm.construct_saving_path(obj=None, key="plots", task_name=owner, file_name=fname)

        pngs = save_study_plots(study, path_for) if complete else []
        trials = save_trials_table(study, path_for("tune_trials.csv"))
        html = path_for("tune_study.html")
        html.write_text(study_html(study, summary, pngs))
        summary["plots"] = [str(p) for p in [*pngs, html]]
        summary["trials"] = str(trials)
        # written last: the report reads the newest record and the plots and trials it names
        path_for("tune_best.json").write_text(json.dumps(to_plain(summary), indent=1))
        self.study_summary = summary
        return summary

    def finish(self) -> Any:
        return self.study_summary or self.last_result


_STORAGES: dict[str, tuple[Any, tuple[int, int] | None]] = {}


def open_storage(url: str, checked: bool = False) -> Any:
    """An ``optuna.storages.RDBStorage`` for ``url``, kept for the life of the process.

    Opening one costs about 0.4 s (Optuna's schema check re-executes its alembic migration scripts), and
    every trial, each in its own worker under ``executor=ray``, opened a fresh one; a process now opens a
    URL once. ``checked``: the driver opened the storage before (its tables exist and match), so a worker
    skips the schema check.
    """
    import optuna

    identity = _sqlite_identity(url)
    cached = _STORAGES.get(url)
    if cached is not None and cached[1] == identity:
        return cached[0]
    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs, skip_compatibility_check=checked)
    except Exception as exc:  # noqa: BLE001 - sqlalchemy raises many kinds for a bad URL
        raise TuneError(f"tune.storage={url!r}: cannot open the Optuna storage ({exc})") from None
    _STORAGES[url] = (storage, _sqlite_identity(url))
    return storage


def _sqlite_identity(url: str) -> tuple[int, int] | None:
    """(device, inode) of a SQLite file: a cached storage of a file since removed and made anew must not be
    reused (its pooled connections would write to the removed file)."""
    if not url.startswith("sqlite:///"):
        return None
    try:
        st = Path(url[len("sqlite:///"):]).stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _storage_exists(url: str) -> bool:
    """False for a SQLite file that is gone (its run folder was removed after a call that failed)."""
    if not url.startswith("sqlite:///"):
        return True
    return Path(url[len("sqlite:///"):]).is_file()
