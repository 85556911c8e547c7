"""A new MLflow SQLite database seeded from the schema template is the database MLflow would build."""

from __future__ import annotations

import sqlite3

import mlflow
import pytest
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from pandemonium.tracking.mlflow_schema import schema_template, seed_sqlite
from pandemonium.tracking.mlflow_utils import check_tracking_uri


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PANDEMONIUM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _schema(path):
    """Every table and index with its definition, and the Alembic revision. A definition's lines are
    compared as a set: MLflow's migrations write a table's CHECK constraints in varying order."""
    con = sqlite3.connect(path)
    try:
        rows = con.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetchall()
        revision = con.execute("SELECT version_num FROM alembic_version").fetchall()
    finally:
        con.close()
    return [(kind, name, sorted(line.strip().rstrip(",") for line in (sql or "").splitlines()))
            for kind, name, sql in rows], revision


def test_a_seeded_database_is_the_one_mlflow_builds(cache, tmp_path):
    seeded = tmp_path / "seeded" / "mlflow.db"
    assert seed_sqlite(seeded)
    built = tmp_path / "built" / "mlflow.db"
    SqlAlchemyStore(f"sqlite:///{built}", str(tmp_path / "built" / "artifacts")).engine.dispose()
    assert _schema(seeded) == _schema(built)
    assert len(_schema(seeded)[0]) > 20 and _schema(seeded)[1]  # tables, and the Alembic head

    client = mlflow.MlflowClient(f"sqlite:///{seeded}")
    default = client.get_experiment("0")  # made when MLflow first opens the copy, for this folder
    assert str(cache) not in default.artifact_location
    run = client.create_run(client.create_experiment("attack"))
    client.log_metric(run.info.run_id, "targeted_success", 0.75)
    assert client.get_run(run.info.run_id).data.metrics == {"targeted_success": 0.75}


def test_the_template_is_built_once_and_an_existing_file_is_left_alone(cache, tmp_path):
    assert seed_sqlite(tmp_path / "a" / "mlflow.db")
    template = schema_template()
    assert template.is_relative_to(cache)
    built_at = template.stat().st_mtime_ns
    assert seed_sqlite(tmp_path / "b" / "mlflow.db")
    assert template.stat().st_mtime_ns == built_at

    existing = tmp_path / "c" / "mlflow.db"
    existing.parent.mkdir()
    existing.write_bytes(b"somebody's runs")
    assert not seed_sqlite(existing)
    assert existing.read_bytes() == b"somebody's runs"
    assert sorted(p.name for p in existing.parent.iterdir()) == ["mlflow.db"]  # no temporary left behind


def test_an_unusable_cache_leaves_the_schema_to_mlflow(tmp_path, monkeypatch):
    blocked = tmp_path / "not_a_folder"
    blocked.write_text("")
    monkeypatch.setenv("PANDEMONIUM_CACHE_DIR", str(blocked))
    path = tmp_path / "results" / "mlflow.db"
    assert not seed_sqlite(path) and not path.exists()
    uri = check_tracking_uri(f"sqlite:///{path}")
    client = mlflow.MlflowClient(uri)  # MLflow runs its migrations, as without the template
    assert client.get_experiment("0").name == "Default"
    assert _schema(path)[1]
