"""MLflow helpers: a default SQLite tracking URI, a start-up reachability check, nested runs, and
parameter logging that never drops anything silently.

>>> resolve_tracking_uri(None, "/tmp/results")
'sqlite:////tmp/results/mlflow.db'
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sqlite3
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from pandemonium.errors import PandemoniumError
from pandemonium.plain import to_plain
from pandemonium.tracking.mlflow_schema import seed_sqlite

__all__ = [
    "MlflowUnreachableError",
    "MetricBuffer",
    "check_tracking_uri",
    "ensure_experiment",
    "flatten_config",
    "log_flat_params",
    "resolve_tracking_uri",
    "start_run",
    "use_tracking_uri",
]

log = logging.getLogger(__name__)

#: MLflow's own limits (mlflow.utils.validation): longer values are truncated or rejected.
MAX_PARAM_VALUE_LENGTH = 6000
MAX_KEY_LENGTH = 250
PARAMS_PER_BATCH = 100
CONNECT_TIMEOUT_S = 3.0


class MlflowUnreachableError(PandemoniumError, RuntimeError):
    """The MLflow tracking URI cannot be used; raised before any training starts."""


def resolve_tracking_uri(uri: str | None, out_dir: str | os.PathLike[str]) -> str:
    """``uri`` if given, else a SQLite file in the results folder: ``sqlite:///<out_dir>/mlflow.db``."""
    if uri:
        return str(uri)
    return f"sqlite:///{Path(out_dir).absolute() / 'mlflow.db'}"


def check_tracking_uri(uri: str, timeout: float = CONNECT_TIMEOUT_S) -> str:
    """Fail fast with one clear error if ``uri`` cannot be used; returns ``uri``.

    - ``sqlite:///path``: the folder is created if needed and the file must open as SQLite; a new file
      is a copy of MLflow's empty schema (:mod:`pandemonium.tracking.mlflow_schema`);
    - ``http(s)://host:port``: a TCP connection must open within ``timeout`` seconds;
    - ``file:`` / plain paths: the folder must be creatable and writable;
    - other schemes (``databricks``, …) are passed through with a log line (cannot be probed here).
    """
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme == "sqlite":
        raw = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else parsed.path
        if not raw or raw == ":memory:":
            raise MlflowUnreachableError(f"MLflow tracking URI {uri!r}: in-memory SQLite cannot hold runs")
        # sqlite:////abs/path -> "/abs/path"; sqlite:///rel/path -> "rel/path"
        path = Path(raw)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            seed_sqlite(path)  # a new file starts with MLflow's schema (instead of ~1.4 s of migrations)
            con = sqlite3.connect(str(path), timeout=timeout)
            try:
                con.execute("PRAGMA schema_version").fetchone()
            finally:
                con.close()
        except (OSError, sqlite3.Error) as err:
            raise MlflowUnreachableError(
                f"MLflow tracking URI {uri!r}: cannot open SQLite file {str(path)!r}: {err}"
            ) from err
        return uri
    if scheme in ("http", "https"):
        host = parsed.hostname
        if not host:
            raise MlflowUnreachableError(f"MLflow tracking URI {uri!r} has no host")
        port = parsed.port or (443 if scheme == "https" else 80)
        try:
            with socket.create_connection((host, port), timeout=timeout):
                pass
        except OSError as err:
            raise MlflowUnreachableError(
                f"MLflow tracking server {uri!r} is unreachable ({host}:{port}: {err}); start the server, "
                "fix mlflow.tracking_uri, or leave it empty to track to a SQLite file in the results folder"
            ) from err
        return uri
    if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
        path = Path(parsed.path if scheme == "file" else uri)
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path):
                pass
        except OSError as err:
            raise MlflowUnreachableError(f"MLflow tracking folder {str(path)!r} is not writable: {err}") from err
        return uri
    log.info("MLflow tracking URI %r has scheme %r, which cannot be probed before the run", uri, scheme)
    return uri


def flatten_config(cfg: Any, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Flatten nested dicts/lists (and OmegaConf containers) into ``{"a.b.0.c": value}``."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(cfg, (DictConfig, ListConfig)):
            cfg = OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # omegaconf is a dependency; this only keeps the helper usable without it
        pass
    out: dict[str, Any] = {}
    if isinstance(cfg, Mapping):
        if not cfg and prefix:
            out[prefix] = {}
        for k, v in cfg.items():
            out.update(flatten_config(v, f"{prefix}{sep}{k}" if prefix else str(k), sep))
    elif isinstance(cfg, (list, tuple)):
        if not cfg and prefix:
            out[prefix] = []
        for i, v in enumerate(cfg):
            out.update(flatten_config(v, f"{prefix}{sep}{i}" if prefix else str(i), sep))
    else:
        out[prefix] = cfg
    return out


def _param_problem(key: str, value: str) -> str | None:
    from mlflow.utils.validation import path_not_unique, validate_param_and_metric_name

    if len(value) > MAX_PARAM_VALUE_LENGTH:
        return f"value has {len(value)} characters (MLflow keeps {MAX_PARAM_VALUE_LENGTH})"
    if not key or len(key) > MAX_KEY_LENGTH:
        return f"key has {len(key)} characters (MLflow allows 1..{MAX_KEY_LENGTH})"
    if not validate_param_and_metric_name(key) or path_not_unique(key):
        return "key has characters MLflow rejects"
    return None


def log_flat_params(
    cfg: Any, prefix: str = "", artifact_file: str = "params_not_logged.yaml", run_id: str | None = None
) -> dict[str, str]:
    """Log a (nested) config as flat MLflow params; whatever MLflow would truncate or reject goes to
    a YAML artifact ``artifact_file`` (with the reason), so nothing is dropped silently.

    Returns the params that did not fit (``{key: reason}``).
    """
    import mlflow
    from mlflow.entities import Param

    flat = flatten_config(cfg, prefix)
    good: dict[str, str] = {}
    rejected: dict[str, Any] = {}
    reasons: dict[str, str] = {}
    for key, value in flat.items():
        text = str(value)
        problem = _param_problem(key, text)
        if problem:
            rejected[key] = value
            reasons[key] = problem
        else:
            good[key] = text
    run_id = run_id or mlflow.active_run().info.run_id
    client = mlflow.MlflowClient()
    items = list(good.items())
    for i in range(0, len(items), PARAMS_PER_BATCH):
        client.log_batch(run_id, params=[Param(k, v) for k, v in items[i : i + PARAMS_PER_BATCH]])
    if rejected:
        payload = {"params": rejected, "reasons": reasons}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / artifact_file
            path.write_text(yaml.safe_dump(to_plain(payload), sort_keys=False))
            client.log_artifact(run_id, str(path))
        log.info("%d params too long or invalid for MLflow went to artifact %s", len(rejected), artifact_file)
    return reasons




@contextlib.contextmanager
def start_run(
    name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    nested: bool | None = None,
    parent_run_id: str | None = None,
    run_id: str | None = None,
    description: str | None = None,
    artifact_location: str | os.PathLike[str] | None = None,
) -> Iterator[Any]:
    """Start (or resume, with ``run_id``) an MLflow run; a child run when a run is already active
    (``nested=None`` decides that automatically) or when ``parent_run_id`` is given.

    The run ends FINISHED on normal exit and FAILED when the block raises. A new experiment is
    created with ``artifact_location`` (e.g. a folder beside the SQLite file), so artifacts never
    land in ``./mlruns`` of whatever the current directory happens to be.
    """
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    active = mlflow.active_run()
    if nested is None:
        nested = active is not None
    if parent_run_id is None and nested and active is not None:
        parent_run_id = active.info.run_id
    kwargs: dict[str, Any] = {"run_id": run_id} if run_id else {"run_name": name}
    if run_id is None:
        if active is not None and nested:
            kwargs["experiment_id"] = active.info.experiment_id
        elif experiment or artifact_location:
            kwargs["experiment_id"] = ensure_experiment(experiment or "pandemonium", artifact_location)
    run = mlflow.start_run(
        nested=bool(nested or parent_run_id),
        parent_run_id=parent_run_id if not run_id else None,
        tags={k: str(v) for k, v in (tags or {}).items()} or None,
        description=description,
        **kwargs,
    )
    try:
        yield run
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")


def ensure_experiment(name: str, artifact_location: str | os.PathLike[str] | None = None) -> str:
    """Id of experiment ``name``, created (with ``artifact_location``) when it does not exist."""
    import mlflow

    client = mlflow.MlflowClient()
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    location = None
    if artifact_location is not None:
        location = str(artifact_location)
        if "://" not in location:
            location = Path(location).absolute().as_uri()
    return client.create_experiment(name, artifact_location=location)


class MetricBuffer:
    """Collects metrics and writes them in ``log_batch`` calls: one SQLite transaction per flush
    instead of one per value, which keeps per-step logging off the training loop's critical path."""

    def __init__(self, run_id: str, flush_every: int = 500) -> None:
        self.run_id = run_id
        self.flush_every = flush_every
        self._pending: list[Any] = []

    def add(self, metrics: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending.extend(Metric(k, float(v), now, int(step)) for k, v in metrics.items())
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        import mlflow

        if not self._pending:
            return
        client = mlflow.MlflowClient()
        pending, self._pending = self._pending, []
        for i in range(0, len(pending), 1000):
            client.log_batch(self.run_id, metrics=pending[i : i + 1000])


@contextlib.contextmanager
def use_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at ``uri`` inside the block and restore the previous setting (and
    the ``MLFLOW_TRACKING_URI`` variable MLflow sets) afterwards, so no global state leaks out."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    previous = getattr(tracking_utils, "_tracking_uri", None)
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env
