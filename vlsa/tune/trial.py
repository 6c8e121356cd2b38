"""One trial of a sweep: a full Ray Train run of the training job, launched from a Tune function.

This is the pattern Ray recommends for Tune with Train V2: the trial's function builds the
``TorchTrainer`` and calls ``fit()``; a Train callback forwards the workers' reports to Tune. The
workers run the normal training loop with a hook that reports the mean losses of every
``tune.report_every`` steps (``vlsa.tune.report``); when the sweep's
metric is a held-out one, rank 0 then scores the final checkpoint there (the trial's own process
holds a single CPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlsa.config import Config, ConfigError, config_from_dict
from vlsa.data.demo import DemoPaths
from vlsa.eval.demo import evaluate
from vlsa.io import tracking
from vlsa.train import checkpoint as ckpt
from vlsa.train.driver import build_trainer, resolve
from vlsa.train.loop import Hooks, JobInfo, train_worker
from vlsa.tune.data import trial_validations
from vlsa.tune.report import WindowReporter
from vlsa.tune.tracking import open_trial_run


def apply_point(cfg: Config, point: dict[str, Any]) -> Config:
    """``cfg`` with a point's ``{dotted path: value}`` applied and validated (a bad path or value raises)."""
    try:
        return cfg.with_overrides(dict(sorted(point.items())))
    except ConfigError as err:
        raise ConfigError(f"search-space point {point} is not a valid config: {err}") from err


def trial_config(base: dict[str, Any], point: dict[str, Any], *, name: str, storage_path: str) -> Config:
    """The base config with the trial's point applied, run under its own name and folder."""
    trial = apply_point(config_from_dict(base), point)
    return trial.with_overrides({"run.name": name, "run.storage_path": storage_path})


def train_fn(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function of a trial: the normal loop plus a report every
    ``tune.report_every`` steps, then, when the sweep's metric is a held-out one, a last report with
    rank 0's score of the final checkpoint."""
    import ray.train

    cfg = config_from_dict(config["cfg"])
    reporter = WindowReporter(config["job"]["run"], cfg.tune.report_every, ray.train.report)
    train_worker(config, Hooks(after_step=reporter))
    if cfg.tune.final_metric():
        rank = ray.train.get_context().get_world_rank()
        ray.train.report(held_out_metrics(cfg, config["job"]["run"]) if rank == 0 else {})


def forward_callback():
    """Forwards Train reports to Tune, carrying the newest value of every metric forward.

    Checkpoint reports carry only their position; without the carry the sweep's metric would be
    missing from those results.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    class CarryForward(TuneReportCallback):
        def __init__(self) -> None:
            super().__init__()
            self.latest: dict[str, Any] = {}

        def after_report(self, run_context, metrics, checkpoint) -> None:
            self.latest |= metrics[0]
            super().after_report(run_context, [dict(self.latest)] + list(metrics[1:]), checkpoint)

    return CarryForward()


def held_out_metrics(cfg: Config, run: str) -> dict[str, float]:
    """Accuracy of the run's final checkpoint on ``eval.data`` (and of the best image-blind policy).

    The questions carry their answers and categories, as the demo's held-out split does.
    """
    final = ckpt.latest_complete(run)
    if final is None or not final.final or final.stage_index != len(cfg.train.stages) - 1:
        raise RuntimeError(f"run {run} has no checkpoint ending its last stage to evaluate (newest: {final})")
    stages = cfg.train.stages
    paths = DemoPaths(str(Path(cfg.eval.data).parent), cfg.eval.image_root, stages[0].data.train,
                      stages[-1].data.train, cfg.eval.data)
    result = evaluate(cfg, final.uri, paths)
    metrics = {"eval_accuracy": result["model"]["accuracy"], "eval_blind_accuracy": result["blind"]["accuracy"]}
    return metrics | {f"eval_accuracy/{kind}": acc for kind, acc in result["model"]["per_type"].items()}


def run_trial(point: dict[str, Any], *, base: dict[str, Any], sweep: dict[str, str],
              derived: dict[str, Any] | None = None) -> None:
    """Tune's function trainable: train the base config with ``point`` applied (and the paths
    ``derived`` computes from it: those a searcher does not propose)."""
    import ray.tune

    point = {path: fn.sample(config=point) for path, fn in (derived or {}).items()} | dict(point)
    trial_id = ray.tune.get_context().get_trial_id()
    cfg = resolve(trial_config(base, point, name=f"{sweep['name']}-{trial_id}", storage_path=sweep["trials"]))
    validations = trial_validations(cfg, sweep["data"])  # prepared by the sweep's driver for every trial
    uri, run = sweep["tracking_uri"], ckpt.run_uri(cfg.run.storage_path, cfg.run.name)
    run_id = open_trial_run(uri, sweep["run_id"], trial_id, run, cfg.run.name)
    tracking.open_parent_run(uri, cfg.run.mlflow.experiment, cfg.run.name, run, tracking.config_params(cfg.to_dict()))
    job = JobInfo(run=run, tracking_uri=uri, parent_run_id=run_id, validations=validations)
    trainer = build_trainer(cfg, job, train_fn)
    trainer.run_config.callbacks.append(forward_callback())
    trainer.fit()
