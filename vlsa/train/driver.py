"""The driver side of a training job: resolve paths, open the MLflow run, build and fit the
``TorchTrainer`` (Ray Train V2), and name the final checkpoint.

Ray must be initialised by the caller (``ray_jobs/train.py`` joins the submitting cluster or starts
a local instance). Checkpoints live under ``<run.storage_path>/<run.name>`` on local disk or
``s3://``; a re-run with the same name and storage continues from the newest complete checkpoint
(after a killed driver too), and logs into the same MLflow run; a re-run of a finished run reports
it complete without starting workers.

Credentials never travel in the workers' ``runtime_env`` (Ray records it in its run state and on
its dashboard, and it would freeze short-lived credentials): each node provides them, from its
environment (set by the cluster files), an instance role or a Kubernetes secret. Only endpoints,
regions and offline flags are forwarded.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vlsa.config import Config, ConfigError, check_batches
from vlsa.io import storage, tracking
from vlsa.io.environ import patched_environ
from vlsa.train import checkpoint as ckpt
from vlsa.train.allocator import allocator_env
from vlsa.train.loop import JobInfo, make_plan, train_worker
from vlsa.train.prepare import prepare_stages

# Where the workers find S3 and MLflow, when the driver knows: endpoints, regions and offline flags.
# No credential (key, secret, session token, password, token, nor the user they belong to): workers
# take those from their node.
FORWARDED_ENV = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION", "MLFLOW_TRACKING_URI",
    "MLFLOW_S3_ENDPOINT_URL", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DS_ACCELERATOR",
)
# Ray Train's controller reads this when it starts a worker group (Ray forwards it from the driver).
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
START_RETRIES = 2  # further worker-group starts after the first one failed or timed out
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of reported checkpoints, in the run folder


class ResourcesUnavailableError(RuntimeError):
    """The workers' resources did not become available within ``run.start_timeout_s``."""


@dataclass(frozen=True)
class TrainOutcome:
    """Where a finished job left its results."""

    run: str
    """Run folder holding every checkpoint."""
    final_checkpoint: str
    """The checkpoint that ends the last stage (full weights in ``model.safetensors``)."""
    tracking_uri: str
    mlflow_run_id: str


def resolve(cfg: Config) -> Config:
    """The config with a local ``run.storage_path`` made absolute (workers run in other folders)."""
    if storage.is_s3(cfg.run.storage_path):
        return cfg
    return cfg.with_overrides({"run.storage_path": str(Path(cfg.run.storage_path).expanduser().resolve())})


def worker_env() -> dict[str, str]:
    """The workers' allocator settings (``vlsa.train.allocator``) and the forwarded variables that are set here."""
    return allocator_env() | {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}


def build_trainer(cfg: Config, job, train_fn: Callable | None = None):
    """The ``TorchTrainer`` of a run; ``train_fn`` defaults to ``vlsa.train.loop.train_worker``."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    filesystem, path = storage.pyarrow_filesystem(cfg.run.storage_path)
    run_config = RunConfig(
        name=cfg.run.name,
        storage_path=path,
        storage_filesystem=filesystem,
        # A worker-group start that times out (or fails as a node goes away) is a controller failure, by
        # default retried forever; a few tries of run.start_timeout_s each bound the wait for a lost node.
        failure_config=FailureConfig(max_failures=cfg.run.max_failures, controller_failure_limit=START_RETRIES),
        # Retention is ours (checkpoint.prune) and no checkpoint is reported to Ray Train, so its run
        # snapshot lists none: nothing for it to keep, delete, or find missing on a re-run.
        checkpoint_config=CheckpointConfig(num_to_keep=None),
        worker_runtime_env={"env_vars": worker_env()},
    )
    return TorchTrainer(
        train_fn or train_worker,
        train_loop_config={"cfg": cfg.to_dict(), "job": dataclasses.asdict(job)},
        scaling_config=ScalingConfig(num_workers=cfg.run.num_workers, use_gpu=cfg.run.use_gpu,
                                     resources_per_worker=worker_resources(cfg),
                                     accelerator_type=cfg.run.accelerator_type or None),
        run_config=run_config,
    )


def worker_resources(cfg: Config) -> dict[str, float]:
    """The logical resources one worker reserves."""
    return {"CPU": cfg.run.cpus_per_worker} | ({"GPU": 1} if cfg.run.use_gpu else {})


def check_resume(cfg: Config, run: str) -> ckpt.CheckpointInfo | None:
    """The newest complete checkpoint; refuses, before any work starts, to continue a stage with a
    number of workers other than the one that saved it (ZeRO shards are per worker)."""
    latest = ckpt.latest_complete(run)
    if latest is None or latest.final:
        return latest  # stage ends hold full weights: any number of workers can start the next stage
    saved = int(ckpt.read_json(latest.uri, ckpt.TRAINER_STATE)["world_size"])
    workers = max(1, cfg.run.num_workers)
    if saved != workers:
        raise ConfigError(
            f"run {run} continues stage {latest.stage!r} from {latest.uri}, saved by {saved} workers, but "
            f"run.num_workers={cfg.run.num_workers}: each worker resumes its own ZeRO shard. Resume with "
            f"run.num_workers={saved}, or start another run.name from the stage-end weights."
        )
    return latest


def forget_ray_checkpoints(run: str) -> bool:
    """Delete Ray Train's run snapshot when it names checkpoints (runs saved by older versions of this
    project reported them) or cannot be read (Ray writes it in place, so a driver killed meanwhile leaves
    it cut short); ours are found from the manifests, and Ray refuses a run directory whose snapshot
    names a pruned folder or is not JSON. Returns whether it was deleted."""
    import json

    path = storage.join(run, RAY_SNAPSHOT)
    if not storage.exists(path):
        return False
    try:
        snapshot = json.loads(storage.read_bytes(path))
    except ValueError:  # cut short: it named no checkpoint of ours anyway
        snapshot = None
    if snapshot is not None and not (snapshot.get("checkpoint_results") or snapshot.get("latest_checkpoint_result")):
        return False
    filesystem, fs_path = storage.pyarrow_filesystem(path)
    if filesystem is None:
        Path(fs_path).unlink()
    else:
        filesystem.delete_file(fs_path)
    return True


def resume_command(cfg: Config) -> str:
    """The command that continues this run (the current one when it is ``ray_jobs/train.py``)."""
    if sys.argv and sys.argv[0].endswith("train.py"):
        return "python " + shlex.join(["ray_jobs/train.py", *sys.argv[1:]])
    return (f"python ray_jobs/train.py --config <the run's config> run.name={shlex.quote(cfg.run.name)} "
            f"run.storage_path={shlex.quote(cfg.run.storage_path)}")


def missing_resources(cfg: Config) -> str:
    """What the cluster lacks for the run's workers, by its current total resources."""
    import ray

    total = ray.cluster_resources()
    workers = max(1, cfg.run.num_workers)
    short = [f"{name}: {workers} workers x {amount:g} = {workers * amount:g} needed, {total.get(name, 0):g} in the "
             f"cluster" for name, amount in worker_resources(cfg).items() if total.get(name, 0) < workers * amount]
    return "; ".join(short) or (f"{workers} workers x {worker_resources(cfg)}: the totals suffice but the free "
                                "resources or a single node's do not")


def _startup_timeout(error: BaseException) -> bool:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if type(error).__name__ == "WorkerGroupStartupTimeoutError":
            return True
        error = getattr(error, "controller_failure", None) or error.__cause__
    return False


def fit(cfg: Config, job, train_fn: Callable | None) -> None:
    """Run the trainer; a start that found no resources in time becomes :class:`ResourcesUnavailableError`."""
    try:
        with patched_environ({START_TIMEOUT_ENV: f"{cfg.run.start_timeout_s:g}"}):  # read when the group starts
            build_trainer(cfg, job, train_fn).fit()
    except Exception as error:
        if not _startup_timeout(error):
            raise
        latest = ckpt.latest_complete(job.run)
        raise ResourcesUnavailableError(
            f"run {cfg.run.name}: the workers' resources were not available within run.start_timeout_s="
            f"{cfg.run.start_timeout_s:g} s, {START_RETRIES + 1} tries (a node lost and not back?). "
            f"Missing: {missing_resources(cfg)}. "
            f"Newest complete checkpoint: {latest.uri if latest else 'none'}. Once the cluster has the resources "
            f"(or with fewer run.num_workers before a stage starts), resume with: {resume_command(cfg)}"
        ) from error


def log_model(cfg: Config, uri: str, run_id: str, checkpoint: str) -> None:
    """The final checkpoint as the run's model (registered under ``run.name``); the training itself
    succeeded, so a tracking server that refuses the model is reported, not raised."""
    from mlflow.exceptions import MlflowException

    try:
        model_id = tracking.log_final_model(uri, run_id, cfg.run.name, checkpoint, cfg.run.mlflow.register_model)
    except MlflowException as err:
        print(f"[vlsa] the final checkpoint {checkpoint} was not logged as a model: {err}", flush=True)
        return
    print(f"[vlsa] model {model_id} of run {run_id}: {checkpoint}", flush=True)


def train(cfg: Config, train_fn: Callable | None = None) -> TrainOutcome:
    """Run every stage of ``cfg`` on the current Ray cluster; returns where the results are."""
    check_batches(cfg)  # on the driver, before the MLflow run opens and any worker is placed
    cfg = resolve(cfg)
    uri = tracking.tracking_uri(cfg.run.mlflow.tracking_uri)
    run = ckpt.run_uri(cfg.run.storage_path, cfg.run.name)
    check_resume(cfg, run)
    done = make_plan(cfg, run).start == len(cfg.train.stages)  # also checks the run's stage names
    validations = prepare_stages(cfg, run)  # data problems stop here, before any worker or MLflow run
    params = tracking.config_params(cfg.to_dict())
    run_id = tracking.open_parent_run(uri, cfg.run.mlflow.experiment, cfg.run.name, run, params)
    job = JobInfo(run=run, tracking_uri=uri, parent_run_id=run_id, validations=tuple(validations))
    link = tracking.experiment_link(uri, tracking.client(uri), run_id)
    if link:
        print(f"[vlsa] MLflow run: {link}", flush=True)
    try:
        if done:
            print(f"[vlsa] every stage of run {run} is already complete", flush=True)
        else:
            forget_ray_checkpoints(run)
            fit(cfg, job, train_fn)
        final = ckpt.latest_complete(run)
        last = len(cfg.train.stages) - 1
        if final is None or not final.final or final.stage_index != last:
            raise RuntimeError(f"training returned but run {run} has no complete checkpoint ending stage {last}")
    except BaseException:
        tracking.close_run(uri, run_id, ok=False)
        raise
    tracking.client(uri).set_tag(run_id, "final_checkpoint", final.uri)
    log_model(cfg, uri, run_id, final.uri)
    tracking.close_run(uri, run_id, ok=True)
    return TrainOutcome(run, final.uri, uri, run_id)
