"""Checks a mode runs before any step: bad input gets one clear error and no work is done.

Each check takes the mode's :class:`~pandemonium.modes.steps.context.ModeContext` and the selected
subroutines; building a task's :class:`~pandemonium.attack.spec.AttackSpec` validates its preset
(type fit, loss fit, patch size, target class, parts that do not build).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pandemonium.attack.presets import AttackConfigError
from pandemonium.modes.steps.context import ModeContext, check_reuse
from pandemonium.runs import warnings as run_warnings

__all__ = ["check_attack_inputs", "check_evaluation_inputs", "check_report_inputs", "warn_zero_success"]


def _need_tasks(ctx: ModeContext, what: str) -> None:
    if not ctx.task_list:
        raise AttackConfigError(f"{what}: task_list is empty")


def check_attack_inputs(ctx: ModeContext, subroutines: Sequence[str]) -> None:
    """Presets fit their tasks, a universal patch has one shape, models and patches exist where needed."""
    _need_tasks(ctx, f"mode {ctx.cfg.mode.id!r}")
    check_reuse(ctx)
    structs = [ctx.get_struct(t) for t in ctx.task_list]
    if "attack" in subroutines or "evaluate" in subroutines or ctx.universal:
        specs = [ctx.spec(s) for s in structs]
    if ctx.universal:
        channels = {s.channels for s in structs}
        if len(channels) != 1:
            raise AttackConfigError(
                f"mode.universal: one patch for all tasks needs one channel count, got "
                f"{ {s.name: s.channels for s in structs} }"
            )
        shapes = {spec.patch_shape for spec in specs}
        if len(shapes) != 1:
            raise AttackConfigError(
                f"mode.universal: the presets of {ctx.task_list} give different patch shapes {sorted(shapes)}; "
                "set attack.patch_fraction (or the presets' patch.size) so they agree"
            )
    if "train" not in subroutines and ("attack" in subroutines or "evaluate" in subroutines):
        for struct in structs:
            if ctx.model_path(struct) is None:
                raise AttackConfigError(
                    f"task {struct.name!r} has no stored model in project {ctx.cfg.proj!r}: enable the "
                    "`train` subroutine, run `pandemonium train` first, or reuse.models=<project>"
                )
    if "attack" in subroutines or "evaluate" in subroutines:
        from pandemonium.models.imported import check_for_attack

        for struct, spec in zip(structs, specs):  # an adopted model meets the batches it will get, before any work
            if ctx.model_path(struct) is not None:
                plan = spec.evaluation
                check_for_attack(ctx.model_path(struct), struct,
                                 [spec.batch_size, plan.batch_size, plan.num_eval % plan.batch_size])
    if "evaluate" in subroutines and "attack" not in subroutines:
        for struct in structs:
            if ctx.patch_path(struct) is None:
                raise AttackConfigError(
                    f"task {struct.name!r} has no stored patch in project {ctx.cfg.proj!r}: run the "
                    "`attack` subroutine or point to an earlier project with reuse.patches=<project>"
                )


def check_evaluation_inputs(ctx: ModeContext, subroutines: Sequence[str]) -> None:
    """Every task has a model (or trains one) and some patch exists (or is fitted in this run)."""
    _need_tasks(ctx, f"mode {ctx.cfg.mode.id!r}")
    check_reuse(ctx)
    missing_models = [t for t in ctx.task_list if ctx.model_path(ctx.get_struct(t)) is None]
    if missing_models and "train" not in subroutines:
        raise AttackConfigError(
            f"no stored model for task(s) {', '.join(missing_models)} in project {ctx.cfg.proj!r}: run "
            "`pandemonium train` / `pandemonium attack` first, or reuse.models=<project>"
        )
    if not ctx.stored_patches() and "attack" not in subroutines:
        raise AttackConfigError(
            f"no stored patch for task(s) {', '.join(ctx.task_list)} in project {ctx.cfg.proj!r}: run "
            "`pandemonium attack` first, or reuse.patches=<project>"
        )
    for task in ctx.task_list:  # the specs the models are evaluated with
        ctx.spec(ctx.get_struct(task))


def check_report_inputs(ctx: ModeContext) -> None:
    """Some task of ``task_list`` has a patch to report."""
    _need_tasks(ctx, "report")
    check_reuse(ctx)
    if not any(ctx.patch_path(ctx.get_struct(t)) for t in ctx.task_list):
        raise AttackConfigError(
            f"report: no patches for {', '.join(ctx.task_list)} in project {ctx.cfg.proj!r}; run "
            "`pandemonium attack` first (or reuse.patches=<project>)"
        )


def warn_zero_success(headline: Mapping[str, float]) -> list[run_warnings.RunWarning]:
    """After evaluation: warn for every ``"<task>/<metric>"`` (or ``"<patch> -> <model>"``) rate of 0."""
    found = []
    for key, rate in headline.items():
        task, _, metric = str(key).rpartition("/") if " -> " not in str(key) else (str(key), "", "success")
        if rate is not None and rate == rate:  # NaN: nothing measured, which is not "no success"
            item = run_warnings.check_attack_success(task or str(key), float(rate), metric or "success")
            if item is not None:
                found.append(item)
    return found
