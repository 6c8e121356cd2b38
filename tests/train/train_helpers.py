"""Small training configs, job drivers and MLflow readers shared by the training tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import vlsa
from vlsa.config import Config


def small_overrides(demo, cache_dir: str, *, workers: int, labels: str, steps: int = 3,
                    stage2_only: bool = False) -> list[str]:
    """Both tiny stages on the four-image demo set: ``steps`` steps each, a checkpoint after every step;
    ``labels``: the labeling job's output for the instruction file (Stage II inserts SSFT turns).
    ``stage2_only``: the tiny preset's Stage II as the run's only stage (from the tiny models, no Stage I)."""
    overrides = [f"model.cache_dir={cache_dir}", f"run.num_workers={workers}", "run.max_failures=2",
                 "train.checkpoint_every=1", "train.keep_checkpoints=5", "train.loader_workers=0"]
    if stage2_only:
        stage2 = vlsa.load_config("tiny").to_dict()["train"]["stages"][1]
        overrides.insert(0, "train.stages=" + json.dumps([stage2]))  # first: the overrides below index into it
    data = {0: demo.instruct} if stage2_only else {0: demo.pretrain, 1: demo.instruct}
    for i, train in data.items():
        overrides += [f"train.stages.{i}.data.image_root={demo.image_root}", f"train.stages.{i}.max_steps={steps}",
                      f"train.stages.{i}.global_batch=4", f"train.stages.{i}.micro_batch=2",
                      f"train.stages.{i}.data.train={train}"]
    instruct = max(data)
    overrides += [f"train.stages.{instruct}.data.labels={labels}"] if labels else []
    # SSFT turns in most samples (the preset's 0.1 may draw none in a dozen samples), with room for their
    # targets and the sequences around them (with the preset's 16 target tokens and 384-token sequences no
    # pixel turn of these samples fitted): their targets and coverage metrics are then part of every run
    overrides += [f"train.stages.{instruct}.data.ssft.p_vq=0.5", f"train.stages.{instruct}.data.ssft.p_px=0.5",
                  f"train.stages.{instruct}.data.ssft.max_target_tokens=64", "model.llm.max_length=512"]
    if not stage2_only:
        overrides += ["train.stages.0.lr={projector: 1.0e-2, epigone: 1.0e-2, denoiser: 1.0e-2}"]
    return overrides


def small_config(demo, cache_dir: str, root: Path, name: str, tracking_uri: str, *, workers: int, labels: str,
                 steps: int = 3, extra: tuple[str, ...] = ()) -> Config:
    overrides = small_overrides(demo, cache_dir, workers=workers, labels=labels, steps=steps)
    overrides += [f"run.storage_path={root}", f"run.name={name}", f"run.mlflow.tracking_uri={tracking_uri}", *extra]
    return vlsa.load_config("tiny", overrides)


REPO = Path(__file__).resolve().parents[2]


def launch_driver(head, overrides: list[str], log: Path) -> subprocess.Popen:
    """``python ray_jobs/train.py --config tiny <overrides>`` as a driver of the Ray cluster of ``head``
    (a :class:`cluster.local.RayHead`), its output appended to ``log``."""
    env = {**head.client_env(), "RAY_ADDRESS": head.address, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "ray_jobs/train.py", "--config", "tiny", *overrides], cwd=REPO,
                                env=env, stdout=out, stderr=subprocess.STDOUT)


def driver_summary(process: subprocess.Popen, log: Path, timeout: float = 900) -> dict:
    """The summary line a driver prints last, once it exits with 0 (else the log tail in the failure)."""
    assert process.wait(timeout=timeout) == 0, log.read_text()[-4000:]
    return json.loads(next(line for line in reversed(log.read_text().splitlines()) if line.startswith('{"final')))


def stage_run(tracking_uri: str, parent_run_id: str, stage: str):
    """The nested MLflow run of ``stage`` under the job's run."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    parent = client.get_run(parent_run_id)
    query = f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`vlsa.stage` = '{stage}'"
    (run,) = client.search_runs([parent.info.experiment_id], filter_string=query)
    return run


def history(tracking_uri: str, run_id: str, key: str) -> dict[int, float]:
    """``step -> value``; a step logged twice (before a failure and after the resume) keeps the later value."""
    from mlflow import MlflowClient

    points = sorted(MlflowClient(tracking_uri).get_metric_history(run_id, key), key=lambda m: m.timestamp)
    return {m.step: m.value for m in points}
