"""The attack of one task as a typed, validated spec (built once from the ``attack`` config group).

:class:`AttackSpec` holds everything an attack needs besides data and model: the pipeline stages, the
loss and its weights, the optimiser, schedule and step budget, the patch (shape, parameterisation,
init), the target class, the success metric and the evaluation settings. It is built once per task by
:meth:`AttackSpec.from_config`, which refuses anything that does not fit the task before any work, and
it builds the parts (:meth:`~AttackSpec.build_pipeline`, :meth:`~AttackSpec.build_loss`,
:meth:`~AttackSpec.build_patch`). :meth:`~AttackSpec.to_dict` is stored with the patch, so what was
fitted can be rebuilt with :meth:`~AttackSpec.from_dict`.

>>> spec = AttackSpec.from_config(cfg.attack, struct)          # doctest: +SKIP
>>> pipeline = spec.build_pipeline(model, cfg.data_dir, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pandemonium.attack.presets import (
    DEFAULTS,
    OVERRIDE_KEYS,
    AttackConfigError,
    patch_shape_for,
    select_preset,
    stage_configs,
    success_metric,
    with_target_class,
)
from pandemonium.attack.splits import REPORT_SPLIT
from pandemonium.build import import_target, instantiate
from pandemonium.plain import to_plain

__all__ = ["METHODS", "AttackSpec", "AttackSpecs", "EvaluationPlan"]

#: how a patch is fitted: PatchTrainer (gradients) or random search under a query budget (attack/blackbox.py)
METHODS = ("gradient", "blackbox")


# ------------------------------------------------------------------------------- typed spec
@dataclass(frozen=True)
class EvaluationPlan:
    """Fixed-condition evaluation: how many held-out samples, in which batches, which sweeps and which
    patch x model pairs the sweeps cover. Sweeps: ``scales`` (patch side / image side, in (0, 1]),
    ``angles`` (viewing angle, degrees), ``brightness`` (factor on the image, > 0), ``blur`` (Gaussian
    sigma in pixels, >= 0) and ``jpeg`` (JPEG quality, 1..100)."""

    num_eval: int = DEFAULTS["num_eval"]
    batch_size: int = DEFAULTS["eval_batch_size"]
    scales: tuple[float, ...] = ()
    angles: tuple[float, ...] = ()
    curve_pairs: str = DEFAULTS["curve_pairs"]
    brightness: tuple[float, ...] = ()
    blur: tuple[float, ...] = ()
    jpeg: tuple[float, ...] = ()

    @classmethod
    def from_mode(cls, mode: Mapping[str, Any] | None, check: bool = True) -> EvaluationPlan:
        """The plan of the ``evaluate`` / ``demo`` mode config (``mode.num_eval``, ``mode.scales``, ...);
        ``check=False`` defers :meth:`check` (a mode checks its input before any work, not when built)."""
        mode = to_plain(mode) or {}

        def get(key: str, default: Any) -> Any:
            return default if mode.get(key) is None else mode[key]

        settings = cls(num_eval=int(get("num_eval", DEFAULTS["num_eval"])),
                       batch_size=int(get("batch_size", DEFAULTS["eval_batch_size"])),
                       scales=tuple(float(s) for s in get("scales", ())),
                       angles=tuple(float(a) for a in get("angles", ())),
                       curve_pairs=str(get("curve_pairs", DEFAULTS["curve_pairs"])),
                       brightness=tuple(float(b) for b in get("brightness", ())),
                       blur=tuple(float(b) for b in get("blur", ())),
                       jpeg=tuple(float(q) for q in get("jpeg", ())))
        if check:
            settings.check("mode")
        return settings

    def check(self, where: str) -> None:
        if self.num_eval <= 0 or self.batch_size <= 0:
            raise AttackConfigError(f"{where}: num_eval and the evaluation batch size must be positive, "
                                    f"got {self.num_eval} and {self.batch_size}")
        if any(not 0 < s <= 1 for s in self.scales):
            raise AttackConfigError(f"{where}.scales must be positive and at most 1 (patch side / image side), "
                                    f"got {list(self.scales)}")
        if any(b <= 0 for b in self.brightness) or any(b < 0 for b in self.blur):
            raise AttackConfigError(f"{where}.brightness must be positive factors and {where}.blur sigmas >= 0, "
                                    f"got {list(self.brightness)} and {list(self.blur)}")
        if any(not 1 <= q <= 100 for q in self.jpeg):
            raise AttackConfigError(f"{where}.jpeg qualities must lie in [1, 100], got {list(self.jpeg)}")
        if any(not 0 <= abs(a) < 90 for a in self.angles):
            raise AttackConfigError(f"{where}.angles must lie in (-90, 90) degrees, got {list(self.angles)}")
        if self.curve_pairs not in ("diagonal", "all"):
            raise AttackConfigError(f"{where}.curve_pairs must be 'diagonal' or 'all', got {self.curve_pairs!r}")


@dataclass(frozen=True)
class AttackSpec:
    """The validated attack of one task. Build it with :meth:`from_config` (or :meth:`from_dict`)."""

    name: str
    task: str
    task_type: str
    stages: tuple[dict[str, Any], ...]
    loss: dict[str, Any]
    weights: dict[str, float]
    steps: int
    patch_shape: tuple[int, int, int]
    success_metric: str
    target_class: int | None = None
    batch_size: int = DEFAULTS["batch_size"]
    eval_every: int = DEFAULTS["eval_every"]
    optimizer: dict[str, Any] = field(default_factory=lambda: dict(DEFAULTS["optimizer"]))
    schedule: dict[str, Any] = field(default_factory=lambda: dict(DEFAULTS["schedule"]))
    patch: dict[str, Any] = field(default_factory=dict)
    evaluation: EvaluationPlan = field(default_factory=EvaluationPlan)
    method: str = "gradient"
    blackbox: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_config(cls, attack_cfg: Mapping[str, Any], struct: Any) -> AttackSpec:
        """The attack of ``struct``'s task from the ``attack`` group, checked against the task."""
        task_type = getattr(struct.task_type, "value", struct.task_type)
        preset = select_preset(attack_cfg, struct.name, str(task_type))
        preset["patch_shape"] = patch_shape_for(preset, struct.image_size, struct.channels, struct.name)
        spec = cls.from_dict({**preset, "task": struct.name, "task_type": str(task_type)})
        target, classes = spec.target_class, int(getattr(struct, "num_classes", 0) or 0)
        if target is not None and classes and not 0 <= target < classes:
            raise AttackConfigError(
                f"attack preset {spec.name!r}: target_class {target} does not exist in task {struct.name!r}, "
                f"which has {classes} classes ({', '.join(struct.class_names)})"
            )
        return spec

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AttackSpec:
        """The spec of :meth:`to_dict` output (or of a preset dict with ``task``, ``task_type``, ``patch_shape``)."""
        data = dict(to_plain(data))
        name, task = str(data.get("name", "<unnamed preset>")), str(data.get("task", "<task>"))
        where = f"attack preset {name!r} (task {task!r})"

        def number(key: str, default: Any = None) -> int:
            value = default if data.get(key) is None else data[key]
            try:
                ok = not isinstance(value, bool) and float(value) == int(value) > 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise AttackConfigError(f"{where}: {key} must be a positive integer, got {value!r}")
            return int(value)

        try:
            weights = {str(k): float(v) for k, v in (data.get("weights") or {}).items()}
        except (TypeError, ValueError):
            raise AttackConfigError(f"{where}: weights must be numbers, got {data.get('weights')!r}") from None
        task_type = str(data.get("task_type", ""))
        patch = dict(data.get("patch") or {})
        patch.setdefault("init", DEFAULTS["patch_init"])
        patch["parameterisation"] = dict(patch.get("parameterisation") or DEFAULTS["parameterisation"])
        shape = data.get("patch_shape")
        if not shape or len(shape) != 3:
            raise AttackConfigError(f"{where}: patch_shape must be [channels, height, width], got {shape!r}")
        known = {f.name for f in dataclasses.fields(cls)} | {"eval_batch_size", "num_eval"}
        method = str(data.get("method") or "gradient")  # the black-box settings are kept only for that method
        spec = cls(
            name=name, task=task, task_type=task_type,
            stages=tuple(dict(s) for s in data.get("stages") or ()), loss=dict(data.get("loss") or {}),
            weights=weights, steps=number("steps"), patch_shape=tuple(int(s) for s in shape),
            success_metric=success_metric(data, task_type),
            target_class=None if data.get("target_class") is None else int(data["target_class"]),
            batch_size=number("batch_size", DEFAULTS["batch_size"]),
            eval_every=number("eval_every", DEFAULTS["eval_every"]),
            optimizer={**DEFAULTS["optimizer"], **(data.get("optimizer") or {})},
            schedule=dict(data.get("schedule") or DEFAULTS["schedule"]), patch=patch,
            evaluation=EvaluationPlan(num_eval=number("num_eval", DEFAULTS["num_eval"]),
                                      batch_size=number("eval_batch_size", DEFAULTS["eval_batch_size"])),
            method=method, blackbox=dict(data.get("blackbox") or {}) if method == "blackbox" else {},
            extra={k: v for k, v in data.items() if k not in known and k not in OVERRIDE_KEYS},
        )
        spec.check_parts()
        return spec

    def check_parts(self) -> None:
        """Every ``_target_`` imports and the loss builds (before any work, with one error format)."""
        from pandemonium.attack.stages.registry import resolve_stage_class

        if not self.stages or not self.loss or not self.weights:
            raise AttackConfigError(f"attack preset {self.name!r} (task {self.task!r}) lacks stages, loss or weights")
        for position, stage in enumerate(self.stages):
            try:
                resolve_stage_class(str(stage.get("_target_")))
            except ValueError as err:
                raise AttackConfigError(f"attack preset {self.name!r} (task {self.task!r}): stage {position}: "
                                        f"{err}") from None
        import_target(str(self.patch["parameterisation"].get("_target_")), what=self._what("patch parameterisation"))
        self.build_loss()
        if self.method not in METHODS:
            raise AttackConfigError(f"{self._what('method')} {self.method!r} is not one of {', '.join(METHODS)}")
        if self.method == "blackbox":
            from pandemonium.attack.blackbox import BlackBoxError, BlackBoxSettings

            try:
                BlackBoxSettings.from_spec(self)
            except BlackBoxError as err:
                raise AttackConfigError(str(err)) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON / YAML / ``torch.save``) that :meth:`from_dict` turns back into this spec."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("evaluation", "extra")}
        out.update(num_eval=self.evaluation.num_eval, eval_batch_size=self.evaluation.batch_size)
        return to_plain({**self.extra, **out})

    # ---------------------------------------------------------------- variants
    def with_target(self, target_class: int | None) -> AttackSpec:
        """The same attack aiming at ``target_class`` (every ``target_class`` of the loss follows)."""
        if target_class is None:
            return dataclasses.replace(self, target_class=None)
        return dataclasses.replace(self, target_class=int(target_class),
                                   loss=with_target_class(self.loss, int(target_class)))

    def for_patch(self, patch_payload: Mapping[str, Any]) -> AttackSpec:
        """This spec judging a stored patch by its own goal: aimed at the class it was fitted for (if both aim)."""
        stored = (patch_payload.get("presets") or {}).get(self.task) or {}
        if stored.get("target_class") is None or self.target_class is None:
            return self
        return self.with_target(int(stored["target_class"]))

    # ---------------------------------------------------------------- parts
    def _what(self, part: str) -> str:
        return f"attack preset {self.name!r} (task {self.task!r}): {part}"

    def implanter_index(self) -> int:
        """Position of the stage that puts the patch into the images: found by its role (``"implant"``,
        as ``Pipeline.find_stage`` does), not assumed to be the first."""
        from pandemonium.attack.stages.contract import role_of
        from pandemonium.attack.stages.registry import resolve_stage_class

        for position, stage in enumerate(self.stages):
            if role_of(resolve_stage_class(str(stage.get("_target_")))) == "implant":
                return position
        raise AttackConfigError(f"{self._what('stages')} no stage puts the patch into the images (role 'implant')")

    def build_pipeline(self, model: Any, struct: Any, data_dir: str, seed: int, fold: int = 0,
                       after_implanter: Sequence[Mapping[str, Any]] = (), eval_split: str = REPORT_SPLIT) -> Any:
        """The stages (bank = the task's images: train to fit, ``eval_split`` to evaluate),
        ``after_implanter`` right after the implanter, then the model."""
        from pandemonium.attack.pipeline import Pipeline
        from pandemonium.attack.stages.base import StageError

        stages = stage_configs({"stages": self.stages}, struct, data_dir, fold, eval_split)
        if after_implanter:
            cut = self.implanter_index() + 1
            stages = [*stages[:cut], *(dict(s) for s in after_implanter), *stages[cut:]]
        config = {"seed": int(seed), "stages": [*stages, {"_target_": "ModelStage", "model": "???"}]}
        try:
            return Pipeline.from_config(config, model=model)
        except (StageError, ValueError) as err:
            raise AttackConfigError(f"{self._what('the pipeline does not build:')} {err}") from None

    def build_loss(self) -> Any:
        """The loss (``_target_`` + kwargs; nested losses built first)."""
        return instantiate(self.loss, what=self._what("loss"))

    def build_patch(self, seed: int) -> Any:
        """The trainable patch parameterisation (``patch.parameterisation``, default raw pixels)."""
        return instantiate(self.patch["parameterisation"], what=self._what("patch parameterisation"),
                           shape=list(self.patch_shape), init=self.patch.get("init", DEFAULTS["patch_init"]),
                           seed=int(seed))

    def named(self, part: str) -> tuple[str, dict[str, Any]]:
        """``(name, kwargs)`` of the ``optimizer`` or ``schedule`` entry."""
        entry = dict(getattr(self, part))
        return str(entry.pop("name", DEFAULTS[part]["name"])), entry


class AttackSpecs:
    """One :class:`AttackSpec` per task, built on first use from the ``attack`` config group."""

    def __init__(self, attack_cfg: Mapping[str, Any] | None) -> None:
        self.attack_cfg = to_plain(attack_cfg) or {}
        self._specs: dict[str, AttackSpec] = {}

    def __call__(self, struct: Any) -> AttackSpec:
        if struct.name not in self._specs:
            self._specs[struct.name] = AttackSpec.from_config(self.attack_cfg, struct)
        return self._specs[struct.name]
