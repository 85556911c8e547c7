"""A new MLflow SQLite database starts as a copy of an empty one that already has MLflow's schema.

MLflow gives a new SQLite file its schema by running every Alembic migration since its first release:
about 1.4 s on a laptop core, paid by every new results folder (the demo's first run, each ``fit`` in a
fresh folder, every test that makes one). The schema depends only on the MLflow version, so it is built
once per version into the user's cache and copied from there (a few milliseconds). The copy holds no
experiment: MLflow creates its default experiment, with this folder's artifact location, the first time
it opens the file, exactly as it does for a file it built itself.

The cache is ``$PANDEMONIUM_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/pandemonium`` (``~/.cache``).
Anything that goes wrong here (no writable cache, no hard links) leaves the file to MLflow as before.

>>> seed_sqlite(Path("/tmp/results/mlflow.db"))  # doctest: +SKIP
True
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

__all__ = ["cache_dir", "schema_template", "seed_sqlite"]

log = logging.getLogger(__name__)

#: bump when the way the template is made changes, so older templates are not reused
TEMPLATE_FORMAT = 1


def cache_dir() -> Path:
    """Where pandemonium keeps files it can rebuild (the schema templates)."""
    given = os.environ.get("PANDEMONIUM_CACHE_DIR")
    if given:
        return Path(given)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pandemonium"


def schema_template() -> Path:
    """The empty database of the installed MLflow version, built on first use (atomically: processes
    racing to build it each write their own file and the last rename wins, all equal)."""
    # the installed version from its metadata: importing mlflow takes seconds, copying the template does not
    version = importlib.metadata.version("mlflow")
    template = cache_dir() / "mlflow-schema" / f"mlflow-{version}-v{TEMPLATE_FORMAT}.db"
    if template.is_file():
        return template
    template.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=template.parent) as tmp:
        built = Path(tmp) / "schema.db"
        _build(built, Path(tmp) / "artifacts")
        os.replace(built, template)
    log.info("built the MLflow %s schema template %s", version, template)
    return template


def _build(path: Path, artifacts: Path) -> None:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(f"sqlite:///{path}", str(artifacts))
    store.engine.dispose()
    # the store made its default experiment with this temporary artifact location: drop it, so each
    # copy gets its own when MLflow first opens it
    con = sqlite3.connect(path)
    try:
        with con:
            con.execute("DELETE FROM experiment_tags WHERE experiment_id = 0")
            con.execute("DELETE FROM experiments WHERE experiment_id = 0")
        con.execute("VACUUM")
    finally:
        con.close()


def seed_sqlite(path: str | os.PathLike[str]) -> bool:
    """Create the SQLite file ``path`` as a copy of :func:`schema_template` if it does not exist yet.

    Returns True when ``path`` was created here; False when it already existed or the template could
    not be used (MLflow then builds the schema itself, as without this function). An existing file is
    never touched: the copy is written next to it and hard-linked into place, which fails if another
    process created the file meanwhile.
    """
    path = Path(path)
    if path.exists():
        return False
    try:
        template = schema_template()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            shutil.copyfile(template, tmp)
            os.link(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    except FileExistsError:
        return False
    except Exception as err:  # a cache or file system that does not allow it: MLflow builds the schema
        log.debug("MLflow schema template not used for %s: %s", path, err)
        return False
    return True
