"""The embedded default as a user runs it: ``python ray_jobs/train.py`` in an empty folder, and the
metrics of the one job run it logs to the default local store (``./mlruns``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_default(cwd: Path, cache_dir: str, *overrides: str, timeout: int) -> str:
    """``python ray_jobs/train.py`` with ``overrides`` in ``cwd``, outside any cluster; its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    done = subprocess.run([sys.executable, str(REPO / "ray_jobs" / "train.py"), f"model.cache_dir={cache_dir}",
                           *overrides], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    return done.stdout


def logged_metrics(cwd: Path) -> dict[str, float]:
    """The metrics of the one job run in the default local store (``./mlruns``)."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
            if "mlflow.parentRunId" not in r.data.tags]
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0].data.metrics
