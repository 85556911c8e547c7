"""Task registry: creators that materialise tasks on disk, and loading tasks back as structs.

A creator is ``fn(writer: TaskWriter, rng: numpy.random.Generator, **kwargs) -> None``; it sets up
the writer (``writer.task_type``/``class_names`` are given at registration) and calls
``writer.add_sample`` per sample. ``create_task`` does the rest: seeded splits, stats, verification,
and an atomic publish (built in a hidden temp folder, renamed into place), so a crash never leaves
half a task under ``<data_dir>/tasks/<name>``.

>>> @register_taskcreator("tiny_cls", task_type="classification", class_names=["a", "b"])
... def create_tiny(writer, rng, num_samples=10):
...     for i in range(num_samples):
...         writer.add_sample(image=rng.random((8, 8, 3)), cls=i % 2)
>>> create_task("tiny_cls", data_dir)                                     # doctest: +SKIP

Task creators (``TASK_CREATORS``) make one named task; dset creators (``DSET_CREATORS``) import
users' data and need a source, e.g.
``create_task("flowers", data_dir, creator="import_folder", root="/data/flowers")``.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from pandemonium.tasks.attributes import TaskType
from pandemonium.tasks.errors import TaskCreationError, TaskError, TaskNotFoundError
from pandemonium.tasks.format import (
    TASK_FILE,
    TMP_PREFIX,
    TaskWriter,
    read_task_json,
    struct_from_meta,
    task_path,
    tasks_root,
    validate_task_name,
)
from pandemonium.tasks.struct import TaskStruct
from pandemonium.tasks.verifiers import verify_meta, verify_task

log = logging.getLogger(__name__)

CreatorFn = Callable[..., None]


@dataclass(frozen=True)
class CreatorSpec:
    """A registered creator with the task metadata it fills in."""

    name: str
    fn: CreatorFn
    task_type: TaskType | None = None
    class_names: tuple[str, ...] = ()
    description: str = ""
    license: str = ""
    keywords: tuple[str, ...] = ()
    num_folds: int = 5
    test_fraction: float = 0.2

    def defaults(self) -> dict[str, Any]:
        """The keyword defaults of the creator function (recorded in ``task.json``)."""
        params = inspect.signature(self.fn).parameters.values()
        return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


#: name -> spec of creators that build one specific task.
TASK_CREATORS: dict[str, CreatorSpec] = {}
#: name -> spec of creators that import a user's data set (need a source argument).
DSET_CREATORS: dict[str, CreatorSpec] = {}


def _register(registry: dict[str, CreatorSpec], kind: str, name: str, **meta: Any) -> Callable[[CreatorFn], CreatorFn]:
    validate_task_name(name)

    def decorator(fn: CreatorFn) -> CreatorFn:
        old = registry.get(name)
        if old is not None and old.fn is not fn and getattr(old.fn, "__qualname__", None) != fn.__qualname__:
            raise ValueError(f"{kind} {name!r} is already registered by {old.fn.__module__}.{old.fn.__qualname__}")
        rest = dict(meta)
        task_type = rest.pop("task_type", None)
        registry[name] = CreatorSpec(
            name=name,
            fn=fn,
            task_type=None if task_type is None else TaskType(task_type),
            class_names=tuple(rest.pop("class_names", ())),
            keywords=tuple(rest.pop("keywords", ())),
            **rest,
        )
        return fn

    return decorator


def register_taskcreator(
    name: str,
    task_type: TaskType | str | None = None,
    class_names: Sequence[str] = (),
    description: str = "",
    license: str = "",
    keywords: Sequence[str] = (),
    num_folds: int = 5,
    test_fraction: float = 0.2,
) -> Callable[[CreatorFn], CreatorFn]:
    """Register ``fn(writer, rng, **kwargs)`` as the creator of task ``name``.

    ``task_type``/``class_names`` may be left out when the creator sets ``writer.task_type`` /
    ``writer.class_names`` itself.
    """
    return _register(
        TASK_CREATORS, "task creator", name, task_type=task_type, class_names=class_names,
        description=description, license=license, keywords=keywords, num_folds=num_folds,
        test_fraction=test_fraction,
    )


def register_dsetcreator(
    name: str,
    task_type: TaskType | str | None = None,
    description: str = "",
    license: str = "",
    keywords: Sequence[str] = (),
    num_folds: int = 5,
    test_fraction: float = 0.2,
) -> Callable[[CreatorFn], CreatorFn]:
    """Register an importer ``fn(writer, rng, **kwargs)`` of users' data (see :mod:`.builtin.importers`)."""
    return _register(
        DSET_CREATORS, "dset creator", name, task_type=task_type, description=description,
        license=license, keywords=keywords, num_folds=num_folds, test_fraction=test_fraction,
    )


def _ensure_builtins() -> None:
    import pandemonium.tasks.builtin  # noqa: F401  (registers the built-in creators)


def list_creatable() -> list[str]:
    """Names ``create_task`` can build without a ``creator=`` argument."""
    _ensure_builtins()
    return sorted(TASK_CREATORS)


def list_tasks(data_dir: str | os.PathLike | None) -> list[str]:
    """Names of the tasks on disk below ``data_dir`` (folders holding a ``task.json``)."""
    root = tasks_root(data_dir)
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / TASK_FILE).is_file()
    )


def _resolve_creator(name: str, creator: str | None) -> CreatorSpec:
    _ensure_builtins()
    key = creator or name
    spec = TASK_CREATORS.get(key) or DSET_CREATORS.get(key)
    if spec is None:
        if creator is not None:
            known = ", ".join(sorted({*TASK_CREATORS, *DSET_CREATORS}))
            raise TaskCreationError(f"task {name!r}: unknown creator {creator!r} (known: {known})")
        raise TaskNotFoundError(name, creatable=TASK_CREATORS)
    return spec


def create_task(
    name: str,
    data_dir: str | os.PathLike | None,
    seed: int = 0,
    force: bool = False,
    creator: str | None = None,
    num_folds: int | None = None,
    test_fraction: float | None = None,
    **kwargs: Any,
) -> Path:
    """Materialise task ``name`` under ``<data_dir>/tasks/<name>`` and return that folder.

    An existing task is kept (and returned) unless ``force=True``, in which case it is replaced only
    after the new one was fully built and verified. ``kwargs`` go to the creator
    (e.g. ``num_samples=200, image_size=32``). A per-task file lock serialises concurrent creators.
    """
    validate_task_name(name)
    target = task_path(data_dir, name)
    if (target / TASK_FILE).is_file() and not force:
        log.info("task %s exists at %s; skipping (force=True recreates it)", name, target)
        return target
    if creator is None and name not in TASK_CREATORS and (target / TASK_FILE).is_file():
        # a task imported earlier (e.g. by import_folder): rebuild it the way task.json records
        recorded = (read_task_json(target).get("creation") or {})
        creator = recorded.get("creator")
        kwargs = {**(recorded.get("kwargs") or {}), **kwargs}
    spec = _resolve_creator(name, creator)
    root = tasks_root(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / f".{name}.lock"))
    try:
        lock.acquire(timeout=600)
    except Timeout:
        raise TaskCreationError(f"task {name!r}: another process holds {lock.lock_file} for >600 s") from None
    try:
        if (target / TASK_FILE).is_file() and not force:
            log.info("task %s exists at %s; skipping (force=True recreates it)", name, target)
            return target
        tmp = root / f"{TMP_PREFIX}{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            _build(spec, name, tmp, seed, num_folds, test_fraction, kwargs)
            verify_task(tmp, deep=True)
            old = None
            if target.exists():
                old = root / f"{TMP_PREFIX}old-{name}-{uuid.uuid4().hex[:8]}"
                os.replace(target, old)
            os.replace(tmp, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        lock.release()
    log.info("created task %s at %s", name, target)
    return target


def _build(
    spec: CreatorSpec,
    name: str,
    tmp: Path,
    seed: int,
    num_folds: int | None,
    test_fraction: float | None,
    kwargs: dict[str, Any],
) -> None:
    writer = TaskWriter(
        tmp,
        name,
        spec.task_type or TaskType.CLASSIFICATION,
        class_names=spec.class_names,
        description=spec.description,
        license=spec.license,
        keywords=spec.keywords,
    )
    rng = np.random.default_rng(seed)
    try:
        inspect.signature(spec.fn).bind(writer, rng, **kwargs)
    except TypeError as err:
        accepted = ", ".join(spec.defaults()) or "none"
        raise TaskCreationError(
            f"task {name!r}: creator {spec.name!r} rejected its arguments: {err} (keyword arguments: {accepted})"
        ) from None
    try:
        spec.fn(writer, rng, **kwargs)
    except TaskError:
        raise
    except Exception as err:
        raise TaskCreationError(f"task {name!r}: creator {spec.name!r} failed: {err!r}") from err
    recorded = {**spec.defaults(), **kwargs}
    writer.finish(
        seed,
        num_folds=spec.num_folds if num_folds is None else num_folds,
        test_fraction=spec.test_fraction if test_fraction is None else test_fraction,
        creator=spec.name,
        creator_kwargs={k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in recorded.items()},
    )


def load_task_struct(name: str, data_dir: str | os.PathLike | None = None, verify: bool | str = True) -> TaskStruct:
    """Read task ``name`` from disk as a :class:`TaskStruct`.

    ``verify=True`` runs the quick checks (schema, splits, files exist, labels and boxes in range);
    ``"deep"`` also decodes every image and mask; ``False`` only parses ``task.json``.
    Unknown names raise :class:`TaskNotFoundError` listing the tasks on disk and the creatable ones.
    ``data_dir=None`` (here and in :func:`create_task`/:func:`list_tasks`) means ``$PANDEMONIUM_DATA``
    or ``./data``.
    """
    validate_task_name(name)
    folder = task_path(data_dir, name)
    if not (folder / TASK_FILE).is_file() and not folder.is_dir():
        _ensure_builtins()
        raise TaskNotFoundError(name, known=list_tasks(data_dir), creatable=TASK_CREATORS)
    meta = read_task_json(folder)
    struct = struct_from_meta(meta, folder)
    if verify:
        verify_meta(meta, struct, deep=verify == "deep")
    return struct
