"""The embedded default: ``python ray_jobs/train.py`` with no config generates the demo data, labels it,
trains both tiny stages on a local Ray instance, evaluates the held-out split and logs the accuracies."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# A miniature of the default run: few images and two steps per stage; everything else as shipped.
SMALL = ("demo.train_images=16", "demo.eval_images=8", "train.stages.0.max_steps=2", "train.stages.1.max_steps=2",
         "label.rows_per_shard=8")


def run_default(cwd: Path, cache_dir: str, *overrides: str, timeout: int) -> str:
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


@pytest.mark.integration
def test_default_run_generates_labels_trains_and_logs_held_out_accuracy(tmp_path, cache_dir):
    out = run_default(tmp_path, cache_dir, *SMALL, timeout=900)

    printed = re.search(r"held-out accuracy ([\d.]+) \(image-blind baseline ([\d.]+), margin", out)
    assert printed, out[-3000:]
    metrics = logged_metrics(tmp_path)
    assert metrics["eval_accuracy"] == pytest.approx(float(printed[1]), abs=5e-4)
    assert metrics["eval_blind_accuracy"] == pytest.approx(float(printed[2]), abs=5e-4)
    assert {"eval_accuracy/color", "eval_accuracy/shape", "seconds/total"} <= set(metrics)
    checkpoint = re.search(r"final checkpoint: (\S+)", out)[1]
    assert Path(checkpoint, "manifest.json").is_file() and checkpoint.startswith(str(tmp_path / "runs"))
    assert "mlflow ui --backend-store-uri sqlite:///" in out
    labels = list((tmp_path / "demo_data" / "labels").glob("instruct-*/manifest.json"))
    assert len(labels) == 1  # Stage II's SSFT turns were labeled; Stage I (no SSFT) needs none


@pytest.mark.slow
@pytest.mark.integration
def test_default_run_beats_the_image_blind_policy(tmp_path, cache_dir):
    """The embedded default, as shipped, beats the image-blind policy by a clear margin (measured +0.30;
    the per-type target is checked by tests/train/test_default_run.py)."""
    run_default(tmp_path, cache_dir, timeout=1800)
    metrics = logged_metrics(tmp_path)
    assert metrics["eval_accuracy"] >= metrics["eval_blind_accuracy"] + 0.25, metrics
    assert metrics["eval_accuracy/color"] >= 0.9, metrics
