"""The acceptance target of the embedded default: ``python ray_jobs/train.py`` with no arguments, as shipped
(both tiny stages on Ray Train + DeepSpeed, labels from the Ray Data job), sees the image: held-out
accuracy >= 0.80 overall and >= 0.60 on each question type. One whole default run: several minutes on
2 cores, so slow tier; its wall time is measured in the README, not here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vlsa.data.demo import ANSWERS

REPO = Path(__file__).resolve().parents[2]
OVERALL, PER_TYPE = 0.80, 0.60


def held_out_metrics(cwd: Path) -> dict[str, float]:
    """The metrics of the one job run in the default local store (``./mlruns``)."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
            if "mlflow.parentRunId" not in r.data.tags]
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0].data.metrics


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.xfail(strict=True, reason="not reached yet: shape and position stay at one answer each (README, "
                   "'Shape, count and position'); strict, so a default that reaches the target fails here until "
                   "this mark is removed")
def test_the_default_run_answers_every_question_type_from_the_image(tmp_path, cache_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    done = subprocess.run([sys.executable, str(REPO / "ray_jobs" / "train.py"), f"model.cache_dir={cache_dir}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    printed = re.search(r"held-out accuracy ([\d.]+) \(image-blind baseline ([\d.]+)", done.stdout)
    assert printed, done.stdout[-3000:]

    metrics = held_out_metrics(tmp_path)
    per_type = {kind: metrics[f"eval_accuracy/{kind}"] for kind in ANSWERS}
    assert metrics["eval_accuracy"] >= OVERALL, (metrics["eval_accuracy"], per_type)
    assert all(acc >= PER_TYPE for acc in per_type.values()), per_type
    assert metrics["eval_blind_accuracy"] <= 0.3  # the image-blind policy stays near chance
