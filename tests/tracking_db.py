"""MLflow SQLite databases for tests, copied from one made at the first use.

MLflow builds a new SQLite database by running its schema migrations, which takes seconds per file; a
copy of a migrated database is opened at once. Each test still gets its own database file."""

from __future__ import annotations

import shutil
import tempfile
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def _migrated() -> Path:
    """One migrated, empty database per test process (removed with the process's temp folder)."""
    from mlflow import MlflowClient

    path = Path(tempfile.mkdtemp(prefix="mlflow-template-")) / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()  # creates the schema
    return path


def sqlite_tracking_uri(folder: Path) -> str:
    """A tracking URI of a fresh database ``folder/mlflow.db`` (the folder must exist)."""
    path = Path(folder) / "mlflow.db"
    shutil.copyfile(_migrated(), path)
    return f"sqlite:///{path}"
