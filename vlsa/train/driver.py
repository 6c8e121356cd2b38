"""The driver side of a training job: resolve paths, open the MLflow run, build and fit the
``TorchTrainer`` (Ray Train V2), and name the final checkpoint.

Ray must be initialised by the caller (``ray_jobs/train.py`` joins the submitting cluster or starts
a local instance). Checkpoints live under ``<run.storage_path>/<run.name>`` on local disk or
``s3://``; a re-run with the same name and storage continues from the newest complete checkpoint,
and logs into the same MLflow run.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vlsa.config import Config, config_from_dict
from vlsa.io import storage
from vlsa.train import checkpoint as ckpt
from vlsa.train import tracking

# Settings the workers need to reach S3 and MLflow when the driver has them; credentials included,
# since a local Ray instance or a job's runtime environment may not pass them on otherwise.
FORWARDED_ENV = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL",
    "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE", "DS_ACCELERATOR",
)


@dataclass(frozen=True)
class TrainOutcome:
    """Where a finished job left its results."""

    run: str
    """Run folder holding every checkpoint."""
    final_checkpoint: str
    """The checkpoint that ends the last stage (full weights in ``model.pt``)."""
    tracking_uri: str
    mlflow_run_id: str


def resolve(cfg: Config) -> Config:
    """The config with a local ``run.storage_path`` made absolute (workers run in other folders)."""
    if storage.is_s3(cfg.run.storage_path):
        return cfg
    data = cfg.to_dict()
    data["run"]["storage_path"] = str(Path(cfg.run.storage_path).expanduser().resolve())
    return config_from_dict(data)


def worker_env() -> dict[str, str]:
    """The forwarded environment variables that are set here."""
    return {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}


def build_trainer(cfg: Config, job, train_fn: Callable | None = None):
    """The ``TorchTrainer`` of a run; ``train_fn`` defaults to ``vlsa.train.loop.train_worker``."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from vlsa.train.loop import train_worker

    resources = {"CPU": cfg.run.cpus_per_worker} | ({"GPU": 1} if cfg.run.use_gpu else {})
    filesystem, path = storage.pyarrow_filesystem(cfg.run.storage_path)
    run_config = RunConfig(
        name=cfg.run.name,
        storage_path=path,
        storage_filesystem=filesystem,
        failure_config=FailureConfig(max_failures=cfg.run.max_failures),
        # Retention is ours (checkpoint.prune): stage ends must outlive newer mid-stage checkpoints.
        checkpoint_config=CheckpointConfig(num_to_keep=None),
        worker_runtime_env={"env_vars": worker_env()},
    )
    return TorchTrainer(
        train_fn or train_worker,
        train_loop_config={"cfg": cfg.to_dict(), "job": dataclasses.asdict(job)},
        scaling_config=ScalingConfig(num_workers=cfg.run.num_workers, use_gpu=cfg.run.use_gpu,
                                     resources_per_worker=resources),
        run_config=run_config,
    )


def train(cfg: Config, train_fn: Callable | None = None) -> TrainOutcome:
    """Run every stage of ``cfg`` on the current Ray cluster; returns where the results are."""
    from vlsa.train.loop import JobInfo
    from vlsa.train.prepare import prepare_stages

    cfg = resolve(cfg)
    uri = tracking.tracking_uri(cfg.run.mlflow.tracking_uri)
    run = ckpt.run_uri(cfg.run.storage_path, cfg.run.name)
    validations = prepare_stages(cfg, run)  # data problems stop here, before any worker or MLflow run
    params = tracking.config_params(cfg.to_dict())
    run_id = tracking.open_parent_run(uri, cfg.run.mlflow.experiment, cfg.run.name, run, params)
    job = JobInfo(run=run, tracking_uri=uri, parent_run_id=run_id, validations=tuple(validations))
    try:
        build_trainer(cfg, job, train_fn).fit()
        final = ckpt.latest_complete(run)
        last = len(cfg.train.stages) - 1
        if final is None or not final.final or final.stage_index != last:
            raise RuntimeError(f"training returned but run {run} has no complete checkpoint ending stage {last}")
    except BaseException:
        tracking.close_run(uri, run_id, ok=False)
        raise
    tracking.client(uri).set_tag(run_id, "final_checkpoint", final.uri)
    tracking.close_run(uri, run_id, ok=True)
    return TrainOutcome(run, final.uri, uri, run_id)
