"""The embedded default: ``python ray_jobs/train.py`` with no config generates the demo data, labels it,
trains both tiny stages on a local Ray instance, evaluates the held-out split and logs the accuracies."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.default_run import logged_metrics, run_default

# A miniature of the default run: few images and two steps per stage; everything else as shipped.
SMALL = ("demo.train_images=16", "demo.eval_images=8", "train.stages.0.max_steps=2", "train.stages.1.max_steps=2",
         "label.rows_per_shard=8", "demo.tower.images=32", "demo.tower.batch=16", "demo.tower.epochs=1")


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
    towers = list((tmp_path / "demo_data" / "towers").glob("clip-*/config.json"))
    assert len(towers) == 1 and "vision tower pretraining: epoch 1/1" in out  # the stages started from it


@pytest.mark.slow
@pytest.mark.integration
def test_default_run_beats_the_image_blind_policy(tmp_path, cache_dir):
    """The embedded default, as shipped, beats the image-blind policy by a clear margin (measured +0.687;
    the per-type target is checked by tests/train/test_default_run.py)."""
    run_default(tmp_path, cache_dir, timeout=1800)
    metrics = logged_metrics(tmp_path)
    assert metrics["eval_accuracy"] >= metrics["eval_blind_accuracy"] + 0.25, metrics
    assert metrics["eval_accuracy/color"] >= 0.9, metrics
