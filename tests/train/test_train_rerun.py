"""Re-running a job with the same command: after its driver was SIGKILLed right after a checkpoint
(older checkpoints already pruned) it continues; after it finished it reports the run complete. The
drivers are real ``python ray_jobs/train.py`` processes on a ``ray start --head`` cluster."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from train_helpers import driver_summary, launch_driver, small_overrides, stage_run

from vlsa.train import checkpoint as ckpt
from tests.tracking_db import sqlite_tracking_uri

pytestmark = pytest.mark.integration


def _steps(run: Path) -> list[tuple[int, int, bool]]:
    return [(c.stage_index, c.step, c.final) for c in ckpt.list_complete(str(run))]


def test_rerun_continues_after_a_killed_driver_and_reports_a_finished_run(ray_head, train_demo, train_labels, cache_dir,
                                                                         tmp_path):
    from mlflow import MlflowClient

    tracking = sqlite_tracking_uri(tmp_path)
    overrides = small_overrides(train_demo, cache_dir, workers=1, steps=3, labels=train_labels)
    overrides += [f"run.storage_path={tmp_path / 'runs'}", "run.name=rerun", f"run.mlflow.tracking_uri={tracking}",
                  "train.keep_checkpoints=1", "train.stages.1.max_steps=3"]
    run = tmp_path / "runs" / "rerun"
    log = tmp_path / "driver.log"

    first = launch_driver(ray_head, overrides, log)
    deadline = time.monotonic() + 900
    while (0, 2, False) not in _steps(run) or (run / ckpt.checkpoint_name(0, "stage1", 1)).exists():
        assert first.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)  # right after a checkpoint that pruned one Ray Train had been told about
    first.wait()
    assert _steps(run)[-1] < (1, 3, True), "the first driver finished before it was killed"

    summary = driver_summary(launch_driver(ray_head, overrides, log), log)
    text = log.read_text()
    assert "CheckpointManagerInitializationError" not in text and "resumed at step" in text
    # keep_checkpoints=1 per stage: this driver pruned Stage II's step 1, which it had saved itself
    assert _steps(run) == [(0, 2, False), (0, 3, True), (1, 2, False), (1, 3, True)]
    assert summary["final_checkpoint"] == str(run / ckpt.checkpoint_name(1, "stage2", 3))
    client = MlflowClient(tracking)
    parent = client.get_run(summary["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["final_checkpoint"] == summary["final_checkpoint"]

    log.write_text("")
    again = driver_summary(launch_driver(ray_head, overrides, log), log)
    assert f"every stage of run {run} is already complete" in log.read_text()
    assert again == summary and client.get_run(summary["mlflow_run_id"]).info.status == "FINISHED"
    assert stage_run(tracking, summary["mlflow_run_id"], "stage2").info.status == "FINISHED"
