"""``pandemonium <mode> key=value ...``: a Hydra app where the first word selects ``mode=<mode>``.

Config search path, first match wins: ``$PANDEMONIUM_CONFIGS_PATH`` (folders separated by ``:``,
e.g. one made by ``pandemonium-copy-conf``), the built-in tree, then folders added by plugins.
Everything after the mode is Hydra's: ``--cfg job``, ``-m``/``--multirun``, ``hydra.*`` overrides.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pandemonium import __version__

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
CONFIGS_PATH_ENV = "PANDEMONIUM_CONFIGS_PATH"
PROG = "pandemonium"


def user_config_dirs() -> list[Path]:
    """Folders named by ``$PANDEMONIUM_CONFIGS_PATH`` (in order)."""
    raw = os.environ.get(CONFIGS_PATH_ENV, "")
    return [Path(p).expanduser().absolute() for p in raw.split(os.pathsep) if p.strip()]


def config_dirs(plugin_dirs: Sequence[Path] = ()) -> list[Path]:
    """The whole search path of config folders, highest priority first."""
    return [*user_config_dirs(), CONFIG_DIR, *plugin_dirs]


def discover_modes(dirs: Sequence[Path]) -> dict[str, tuple[str, Path]]:
    """mode name -> (one-line description, file); the first folder defining a mode wins."""
    from pandemonium.cli.checks import mode_description

    modes: dict[str, tuple[str, Path]] = {}
    for folder in dirs:
        mode_dir = folder / "mode"
        if not mode_dir.is_dir():
            continue
        for path in sorted(mode_dir.glob("*.yaml")):
            if path.stem not in modes:
                modes[path.stem] = (mode_description(path), path)
    return modes


def install_search_path(extra_first: Sequence[Path], extra_last: Sequence[Path]) -> None:
    """Register a Hydra SearchPathPlugin that puts user folders first and plugin folders last."""
    from hydra.core.config_search_path import ConfigSearchPath
    from hydra.core.plugins import Plugins
    from hydra.plugins.search_path_plugin import SearchPathPlugin

    first = [f"file://{p}" for p in extra_first]
    last = [f"file://{p}" for p in extra_last]

    class PandemoniumSearchPath(SearchPathPlugin):
        def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
            for path in reversed(first):
                search_path.prepend(provider="pandemonium-user", path=path)
            for path in last:
                search_path.append(provider="pandemonium-plugin", path=path)

    remove_search_path()  # one instance at a time (main() may run several times in one process)
    Plugins.instance().register(PandemoniumSearchPath)


def remove_search_path() -> None:
    """Unregister the search path plugin of :func:`install_search_path` (tests; idempotent)."""
    from hydra.core.plugins import Plugins
    from hydra.plugins.search_path_plugin import SearchPathPlugin

    registered = Plugins.instance().plugin_type_to_subclass_list.get(SearchPathPlugin, [])
    for cls in list(registered):
        if cls.__name__ == "PandemoniumSearchPath":
            registered.remove(cls)


def compose_config(overrides: Sequence[str] = (), user_dirs: Sequence[str | os.PathLike] | None = None,
                   return_hydra_config: bool = False) -> Any:
    """Compose the config as ``pandemonium`` would (same search path, plugins included), without running.

    ``user_dirs`` replaces ``$PANDEMONIUM_CONFIGS_PATH`` when given.

    >>> cfg = compose_config(["mode=create", "task_list=[digits]"])  # doctest: +SKIP
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pandemonium.cli.resolvers import register_resolvers
    from pandemonium.plugins import load_plugins

    register_resolvers()
    first = user_config_dirs() if user_dirs is None else [Path(p).absolute() for p in user_dirs]
    install_search_path(first, load_plugins().config_paths)
    try:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)
    finally:
        remove_search_path()


def format_help(modes: dict[str, tuple[str, Path]], plugin_lines: Sequence[str]) -> str:
    width = max((len(m) for m in modes), default=4) + 2
    lines = [
        f"usage: {PROG} <mode> [key=value ...] [--cfg job] [-m|--multirun] [--help] [--version]",
        "",
        "Physical adversarial patch research across vision tasks. Modes:",
    ]
    lines += [f"  {name:<{width}}{desc}" for name, (desc, _) in sorted(modes.items())]
    lines += [
        "",
        "Common overrides: task_list=[shapes_cls,digits] proj=NAME seed=N data_dir=DIR out_dir=DIR",
        "                  continue=latest executor=local reuse.models=OTHER_PROJ device=cpu",
        f"Config folders (first wins): ${CONFIGS_PATH_ENV}, the built-in tree, plugin folders;",
        f"  `{PROG}-copy-conf DIR` copies the built-in tree for editing.",
        f"`{PROG} <mode> --help` shows the composed config of a mode (Hydra's help).",
    ]
    if plugin_lines:
        lines += ["", "Plugins:", *[f"  {line}" for line in plugin_lines]]
    return "\n".join(lines)


def _error(message: str, code: int = 2) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Console script entry point. Returns (and exits with) the exit code."""
    # OpenMP threads that spin while waiting slow a shared or oversubscribed CPU down several-fold
    # (data workers, other jobs); passive waiting costs little on an idle machine. libgomp reads this
    # when torch is first imported, which happens later (lazily), so setting it here takes effect.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        code = _main(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:  # `pandemonium --help | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    if argv is None:
        sys.exit(code)
    return code


def _main(args: list[str]) -> int:
    from pandemonium.cli.checks import check_yaml_files
    from pandemonium.cli.resolvers import forget_run_dirs, register_resolvers
    from pandemonium.plugins import load_plugins

    register_resolvers()
    forget_run_dirs()
    registry = load_plugins()
    for name, reason in registry.failed.items():
        print(f"{PROG}: warning: plugin {name!r} failed to load and is skipped: {reason}", file=sys.stderr)
    dirs = config_dirs(registry.config_paths)
    for folder in user_config_dirs():
        if not folder.is_dir():
            return _error(f"{CONFIGS_PATH_ENV}={folder}: no such folder")

    if not args or args[0] in ("-h", "--help"):
        print(format_help(discover_modes(dirs), registry.describe()))
        return 0
    if args[0] == "-V" or "--version" in args:
        print(f"{PROG} {__version__}")
        print("plugins:" + (" none" if not registry.loaded and not registry.failed else ""))
        for line in registry.describe():
            print(f"  {line}")
        return 0

    options, overrides = split_hydra_args(args)
    words = [a for a in overrides if "=" not in a and not a.startswith(("~", "+"))]
    if len(words) > 1:
        return _error(f"give one mode, got {', '.join(map(repr, words))} (overrides are key=value)")
    mode = words[0] if words else next((a.split("=", 1)[1] for a in overrides if a.startswith("mode=")), None)
    overrides = [a for a in overrides if a not in words and not a.startswith("mode=")]
    modes = discover_modes(dirs)
    if mode is not None and mode not in modes:
        return _error(f"unknown mode {mode!r}; known modes: {', '.join(sorted(modes))}")

    problem = check_yaml_files(dirs)
    if problem is not None:
        return _error(problem)

    install_search_path(user_config_dirs(), registry.config_paths)
    if mode is not None:
        overrides.insert(0, f"mode={mode}")
    if any(opt in _NO_RUN_OPTIONS for opt in options):  # Hydra only shows something; nothing runs
        if {"-sc", "--shell-completion"} & set(options) and "COMP_LINE" in os.environ:
            os.environ["COMP_LINE"] = completion_line(os.environ["COMP_LINE"], modes)
        return _run_hydra([*options, *overrides])
    from pandemonium.cli.preflight import preflight
    from pandemonium.errors import PandemoniumError
    from pandemonium.runs.journal import record_continue_changes

    try:
        checked = preflight(overrides, dirs, mode, multirun=bool({"-m", "--multirun"} & set(options)))
    except PandemoniumError as exc:
        return _error(str(exc), getattr(exc, "exit_code", 2))
    finally:
        install_search_path(user_config_dirs(), registry.config_paths)  # compose_config removed it
    if checked.changes and checked.run_dir is not None:
        record_continue_changes(checked.run_dir, checked.changes)
    created = _missing_folders(checked.cfg)
    code = _run_hydra([*options, *checked.overrides])
    if code not in (0, 130):
        for folder in created:  # a failed call leaves no empty project or results folder behind
            prune_empty(folder)
    return code


def completion_line(line: str, modes: Any) -> str:
    """The shell's command line as Hydra's completion understands it: the positional mode of
    ``pandemonium attack ...`` becomes ``mode=attack`` (Hydra would read the bare word as a bad override
    and offer nothing). A word still being typed is left alone.

    >>> completion_line("pandemonium attack proj=x at", ["attack"])
    'pandemonium mode=attack proj=x at'
    """
    words = line.split(" ")
    for i, word in enumerate(words[1:-1], start=1):  # the last word is the one being completed
        if word and "=" not in word and not word.startswith(("-", "~", "+")):
            if word in modes:
                words[i] = f"mode={word}"
            break
    return " ".join(words)


# options after which Hydra prints something and runs no job (no checks, nothing written)
_NO_RUN_OPTIONS = {"--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help", "--shell-completion", "-sc",
                   "--resolve"}


def _missing_folders(cfg: Any) -> list[Path]:
    """The project folder and the results folder if they do not exist yet (innermost first)."""
    if not isinstance(cfg, dict) or not cfg.get("out_dir"):
        return []
    out_dir = Path(str(cfg["out_dir"])).expanduser().absolute()
    return [p for p in (out_dir / str(cfg.get("proj", "")), out_dir) if not p.exists()]


def prune_empty(folder: Path) -> None:
    """Remove ``folder`` and the folders below it when they hold no file at all."""
    if not folder.is_dir():
        return
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        folder.rmdir()


# Hydra options that take a value (``--info`` takes an optional one)
_VALUE_OPTIONS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                  "--config-dir", "-cd", "--experimental-rerun"}
_INFO_CHOICES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def split_hydra_args(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate Hydra's options from overrides so options may come anywhere on the command line
    (argparse stops collecting overrides after the first option: ``info -m seed=1,2`` would fail)."""
    options: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-"):
            options.append(arg)
            takes_value = arg in _VALUE_OPTIONS or (arg in ("--info", "-i") and i + 1 < len(args)
                                                     and args[i + 1] in _INFO_CHOICES)
            if takes_value and i + 1 < len(args):
                options.append(args[i + 1])
                i += 1
            elif arg in ("--info", "-i"):  # explicit value: argparse would take the next override as one
                options.append("all")
        else:
            overrides.append(arg)
        i += 1
    return options, overrides


def _run_hydra(hydra_args: list[str]) -> int:
    import hydra
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()  # main() may run more than once per process
    old_argv = sys.argv
    sys.argv = [PROG, *hydra_args]
    try:
        hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="config")(_run_mode)()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old_argv
    return 0


def _run_mode(cfg: Any) -> Any:
    """The Hydra task function: build the mode's scheduler and run it in Hydra's run directory."""
    import logging
    import reprlib
    import warnings

    from hydra.core.hydra_config import HydraConfig

    from pandemonium.allocator import tune_allocator
    from pandemonium.attack.statistics import RepeatedScenesWarning
    from pandemonium.cli.checks import user_error_types
    from pandemonium.plugins import load_plugins
    from pandemonium.runs.base import active_run_dir, build_scheduler
    from pandemonium.runs.warnings import OnceFilter

    log = logging.getLogger(PROG)
    tune_allocator()  # patch fits reallocate the same large buffers every step: keep them mapped
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    mode = str(cfg.mode.get("id"))
    logging.getLogger("pandemonium.attack.pipeline").addFilter(OnceFilter())
    scheduler = None
    plugins = load_plugins()
    # a mode run in-process (tests, notebooks) leaves the registries as it found them
    activated_here = not plugins.activated
    try:
        plugins.activate()
        with active_run_dir(run_dir), warnings.catch_warnings():
            # the log already carries this finding (once per evaluation); Python's warning would repeat it
            warnings.simplefilter("ignore", RepeatedScenesWarning)
            scheduler = build_scheduler(cfg)
            result = scheduler.run()
    except user_error_types() as exc:
        log.error("%s", exc)
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        code = getattr(exc, "exit_code", 2)
        if code == 2:  # bad input: the run never started; a failure during work keeps its log
            _forget_unstarted_run(cfg, run_dir)
        sys.exit(code)
    except KeyboardInterrupt:
        _close_tracking("KILLED")
        resume = _resume_command(cfg, scheduler.run_dir if scheduler is not None else run_dir)
        log.warning("interrupted; resume with: %s", resume)
        print(f"\n{PROG}: interrupted. Resume with:\n  {resume}", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:  # disk full, permissions changed under a running mode: a failure, not a bug
        log.exception("mode %s failed", mode)
        _close_tracking("FAILED")
        print(f"{PROG}: error: {exc} (details in {run_dir / 'pandemonium.log'})", file=sys.stderr)
        sys.exit(1)
    finally:
        if activated_here:
            plugins.deactivate()
    log.info("mode %s finished in %s; result: %s", mode, scheduler.run_dir, reprlib.repr(result))
    for line in scheduler.summary_lines():
        print(line)
    return result


def _resume_command(cfg: Any, run_dir: Path) -> str:
    """The command that continues ``run_dir`` (the run's own overrides are replayed by ``continue``)."""
    import shlex

    return f"{PROG} {cfg.mode.get('id')} proj={cfg.proj} out_dir={shlex.quote(str(cfg.out_dir))} continue={shlex.quote(str(run_dir))}"


def _forget_unstarted_run(cfg: Any, run_dir: Path) -> None:
    """Delete the run folder of a new run that failed before any step finished (it holds no result)."""
    import shutil

    from pandemonium.runs.journal import STEPS_FILE

    if cfg.get("continue") in (None, "", False) and run_dir.is_dir() and not (run_dir / STEPS_FILE).exists():
        shutil.rmtree(run_dir, ignore_errors=True)


def _close_tracking(status: str) -> None:
    """End MLflow runs left open by an interrupted or failed mode with ``status``."""
    if "mlflow" not in sys.modules:
        return
    import mlflow

    with contextlib.suppress(Exception):
        while mlflow.active_run() is not None:
            mlflow.end_run(status=status)


if __name__ == "__main__":  # pragma: no cover
    main()
