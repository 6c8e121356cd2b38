"""Sweeps: a ``ray.tune.Tuner`` whose trials are full training runs, tracked in MLflow, restorable.

The sweep lives under ``<run.storage_path>/<sweep name>``: Tune's experiment state there, and the
trials' training runs under ``trials/``. Running the same sweep again restores it when Tune can:
finished trials are kept, unfinished and failed ones run (again, continuing from their checkpoints).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from vlsa.config import Config, ConfigError, check_batches, flatten
from vlsa.data.demo import generate_demo
from vlsa.io import storage, tracking
from vlsa.io.tracking import tracking_uri
from vlsa.tune.data import data_root, prepare_sweep, with_demo_labels
from vlsa.tune.points import VARIANT_KEY, sample_points
from vlsa.tune.report import GLOBAL_STEP
from vlsa.tune.resources import DRIVER_CPUS, cluster_capacity, max_concurrent
from vlsa.tune.tracking import numeric_metrics, open_sweep_run
from vlsa.tune.trial import apply_point, run_trial


@dataclass(frozen=True)
class SweepOutcome:
    """What a finished sweep found."""

    path: str
    """Tune experiment folder (restore from here)."""
    run_id: str
    """The sweep's MLflow run."""
    best_point: dict[str, Any]
    """The best trial's dotted overrides."""
    best_metrics: dict[str, Any]
    """The best trial's last result."""
    results: Any
    """Tune's ``ResultGrid``."""


class SweepInterrupted(RuntimeError):
    """The sweep stopped (e.g. Ctrl+C) before every trial ended; its state is saved for a restore."""


def sweep_path(cfg: Config, name: str) -> str:
    """Folder of sweep ``name`` (local paths made absolute: trials run in other folders)."""
    root = cfg.run.storage_path
    if not storage.is_s3(root):
        root = str(Path(root).expanduser().resolve())
    return f"{root.rstrip('/')}/{name}"


def with_demo_data(cfg: Config, folder: str, space: dict[str, Any]) -> Config:
    """``cfg`` with stages that name no data pointed at the generated demo set (made once under ``folder``,
    and labeled where a point of ``space`` inserts SSFT turns), and, when it names no held-out questions,
    the demo's held-out split as ``eval.data``."""
    if all(s.data.train for s in cfg.train.stages):
        return cfg
    demo = generate_demo(cfg.demo, folder, seed=cfg.train.seed)
    overrides = {}
    for i, stage in enumerate(cfg.train.stages):
        if not stage.data.train:  # captions for the first stage, conversations after it
            overrides[f"train.stages.{i}.data.train"] = demo.pretrain if i == 0 else demo.instruct
            overrides[f"train.stages.{i}.data.image_root"] = demo.image_root
    if not cfg.eval.data:
        overrides |= {"eval.data": demo.eval, "eval.image_root": demo.image_root}
    stages = [i for i, stage in enumerate(cfg.train.stages) if not stage.data.train]
    return with_demo_labels(cfg.with_overrides(overrides), space, stages, folder)


LOSS_WEIGHTS = (".w_lm", ".w_rec", "model.vdep.alpha")
"""Config paths (suffixes) that weigh the parts of the total ``loss``."""


def metric_problem(cfg: Config, space: dict[str, Any]) -> str:
    """Why ``tune.metric`` cannot rank the trials of ``space`` (empty when it can): the weighted total
    ``loss`` moves with the weights themselves, so a space over them must compare a part or a score."""
    weights = sorted(key for key in space if key.endswith(LOSS_WEIGHTS))
    if cfg.tune.metric != "loss" or not weights:
        return ""
    return (f"tune.metric='loss' is the weighted sum of the loss parts, and this space changes their weights "
            f"({', '.join(weights)}): trials would be ranked by their weights; sweep on tune.metric=loss_lm, "
            f"or a held-out score (tune.metric=eval_accuracy tune.mode=max)")


def check_space(cfg: Config, space: dict[str, Any], samples: int = 2) -> None:
    """Fail before any trial starts when a point of ``space`` is not a valid config over ``cfg``, its
    batches cannot be split over its workers, or the sweep's metric cannot compare its points."""
    problem = metric_problem(cfg, space)
    if problem:
        raise ConfigError(problem)
    for point in sample_points(space, samples):
        trial_cfg = apply_point(cfg, point)
        try:
            check_batches(trial_cfg)
        except ConfigError as err:
            raise ConfigError(f"search-space point {point}: {err}") from err


def scheduler(cfg: Config):
    """ASHA early stopping over the trials' reports, or None (every trial runs to its end).

    Its time axis is ``global_step`` (optimizer steps over all stages; ``tune.grace_period`` of them
    before a trial may be stopped); it compares ``tune.metric`` as reported, the mean over the last
    ``tune.report_every`` steps, a smoothed training loss. Trials end by themselves, so the rungs go
    on without a last one that would stop every trial.
    """
    if cfg.tune.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr=GLOBAL_STEP, max_t=2**31, grace_period=cfg.tune.grace_period,
                         reduction_factor=cfg.tune.reduction_factor)


def trainable(cfg: Config, sweep: dict[str, str], derived: dict[str, Any] | None = None):
    """The trial function with the base config (and the paths it derives from a searcher's point)
    bound and a driver CPU reserved."""
    from ray import tune

    fn = tune.with_parameters(run_trial, base=cfg.to_dict(), sweep=sweep, derived=derived or {})
    return tune.with_resources(fn, {"cpu": DRIVER_CPUS})


def search_plan(cfg: Config, space: dict[str, Any]) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(Tune's search algorithm or None, the space Tune sees, the paths each trial derives)."""
    from vlsa.tune.search import optuna_search, split_space, uses_optuna

    if not uses_optuna(cfg, space):
        return None, space, {}
    searched, derived = split_space(space)
    return optuna_search(cfg), searched, derived


def describe_search(cfg: Config, space: dict[str, Any]) -> dict[str, str]:
    """The sweep's search and its stated budget, as params of its run."""
    from vlsa.tune.search import uses_optuna

    if uses_optuna(cfg, space):
        return {"sweep.search": "optuna (TPE)", "sweep.budget": f"{cfg.tune.num_samples} trials"}
    points = len(sample_points(space))
    return {"sweep.search": "grid", "sweep.budget": f"{points * cfg.tune.num_samples} trials"}


STRICT_METRIC_ENV = "TUNE_DISABLE_STRICT_METRIC_CHECKING"


@contextlib.contextmanager
def held_out_search(cfg: Config):
    """While a searcher is told a held-out metric: Tune requires a searcher's metric in every result,
    and a held-out score exists only in a trial's last one (Tune's documented switch turns that off;
    the searcher itself skips results without it)."""
    if not cfg.tune.final_metric():
        yield
        return
    saved = os.environ.get(STRICT_METRIC_ENV)
    os.environ[STRICT_METRIC_ENV] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(STRICT_METRIC_ENV, None)
        else:
            os.environ[STRICT_METRIC_ENV] = saved


def tune_config(cfg: Config, search_alg=None):
    """Tune's settings: metric, samples, scheduler and the concurrency the cluster fits.

    A held-out metric exists only in a trial's last result, so Tune is not told the metric then
    (it would insist on it in every result); the best trial is picked from the last results. A
    finished trial's process starts the next one (its imports done) unless a scheduler may stop
    trials: only ending the process of a stopped trial ends the training run it launched.
    """
    from ray import tune

    metric = None if cfg.tune.final_metric() else cfg.tune.metric
    return tune.TuneConfig(metric=metric, mode=cfg.tune.mode if metric else None, num_samples=cfg.tune.num_samples,
                           search_alg=search_alg, scheduler=scheduler(cfg),
                           max_concurrent_trials=max_concurrent(cfg, cluster_capacity()),
                           reuse_actors=cfg.tune.scheduler == "fifo")


def build_tuner(cfg: Config, space: dict[str, Any], name: str, run_id: str, callbacks: Sequence = ()):
    """A new Tuner, or the restored one when the sweep's folder holds a sweep Tune can restore (which
    keeps the settings and callbacks it started with, and runs the trials with the new base config)."""
    from ray import tune

    from vlsa.tune.callback import MLflowTrials

    path = sweep_path(cfg, name)
    uri = tracking_uri(cfg.run.mlflow.tracking_uri)
    info = {"name": name, "trials": f"{path}/trials", "data": data_root(path), "tracking_uri": uri, "run_id": run_id}
    search_alg, searched, derived = search_plan(cfg, space)
    fn = trainable(cfg, info, derived)
    filesystem, _ = storage.pyarrow_filesystem(path)
    if tune.Tuner.can_restore(path, storage_filesystem=filesystem):
        return tune.Tuner.restore(path, fn, param_space=searched, resume_errored=True, storage_filesystem=filesystem)
    root, _ = path.rsplit("/", 1)
    fs, root_path = storage.pyarrow_filesystem(root)
    return tune.Tuner(
        fn, param_space=searched, tune_config=tune_config(cfg, search_alg),
        run_config=tune.RunConfig(name=name, storage_path=root_path, storage_filesystem=fs,
                                  failure_config=tune.FailureConfig(max_failures=cfg.tune.max_failures),
                                  callbacks=[MLflowTrials(uri, run_id), *callbacks]),
    )


def run_sweep(cfg: Config, space: dict[str, Any], name: str, *, command: str = "",
              callbacks: Sequence = ()) -> SweepOutcome:
    """Run (or continue) sweep ``name`` of ``space`` over base config ``cfg`` on the current Ray cluster.

    Trials that fail leave the sweep's MLflow run FAILED, an interrupt (Ctrl+C) leaves it KILLED and
    raises :class:`SweepInterrupted`; running the sweep again reruns only the trials that did not
    finish. ``callbacks``: extra Tune callbacks (a restored sweep keeps those it started with).
    """
    uri = tracking.tracking_uri(cfg.run.mlflow.tracking_uri)
    path = sweep_path(cfg, name)
    if not storage.is_s3(path):
        cfg = with_demo_data(cfg, f"{path}/demo", space)
    if cfg.tune.final_metric() and not cfg.eval.data:
        raise ConfigError(f"tune.metric={cfg.tune.metric!r} scores held-out questions, but eval.data is empty "
                          f"(set it to a question file with answers and categories, as the demo's eval.jsonl)")
    check_space(cfg, space)
    prepare_sweep(cfg, space, path)  # data validated once for every trial; missing labels stop here
    search = describe_search(cfg, space)
    print(f"[vlsa] sweep {name}: search {search['sweep.search']}, budget {search['sweep.budget']}", flush=True)
    params = {"sweep.keys": ",".join(sorted(space)), **search, **tracking.config_params(cfg.to_dict())}
    run_id = open_sweep_run(uri, cfg.run.mlflow.experiment, path, name, params)
    if command:
        tracking.client(uri).set_tag(run_id, "vlsa.command", command)
    link = tracking.experiment_link(uri, tracking.client(uri), run_id)
    if link:
        print(f"[vlsa] MLflow sweep run: {link}", flush=True)
    try:
        with held_out_search(cfg):
            results = build_tuner(cfg, space, name, run_id, callbacks).fit()
        outcome = summarize(results, cfg, path, run_id)
    except SweepInterrupted:
        tracking.client(uri).set_terminated(run_id, status="KILLED")
        raise
    except BaseException:
        tracking.close_run(uri, run_id, ok=False)
        raise
    log_best(uri, outcome)
    log_summary(uri, outcome)
    tracking.close_run(uri, run_id, ok=not outcome.results.errors)
    return outcome


def summarize(results, cfg: Config, path: str, run_id: str) -> SweepOutcome:
    """The best trial of a finished sweep; raises when it was interrupted or every trial failed."""
    unfinished = unfinished_trials(path)
    if unfinished:
        raise SweepInterrupted(f"sweep {path} was interrupted with {unfinished} of {len(results)} trials unfinished; "
                               f"run the same sweep again to continue it (finished trials are kept)")
    errors = [r.error for r in results if r.error is not None]
    if errors and len(errors) == len(results):
        raise RuntimeError(f"every trial of sweep {path} failed; first error: {errors[0]!r}")
    best = results.get_best_result(metric=cfg.tune.metric, mode=cfg.tune.mode, scope="last")
    return SweepOutcome(path, run_id, dict(best.config), dict(best.metrics), results)


def unfinished_trials(path: str) -> int:
    """Trials the saved state of sweep ``path`` would continue on a restore.

    After an interrupt Tune stops the running trials and reports them as terminated; only the state
    it saved before stopping them tells that they did not finish.
    """
    from ray.tune import ExperimentAnalysis

    filesystem, fs_path = storage.pyarrow_filesystem(path)
    saved = ExperimentAnalysis(fs_path, storage_filesystem=filesystem)
    return sum(trial.status not in ("TERMINATED", "ERROR") for trial in saved.trials)


def log_best(uri: str, outcome: SweepOutcome) -> None:
    """The best point and its metrics on the sweep's run, with the count of failed trials."""
    from mlflow.entities import Metric, RunTag

    tags = [RunTag(f"best.{k}", tracking.redact(k, v)) for k, v in flatten(outcome.best_point).items()]
    metrics = {f"best/{k}": v for k, v in numeric_metrics(outcome.best_metrics).items()}
    metrics["trials_failed"] = float(len(outcome.results.errors))
    now = int(time.time() * 1000)
    tracking.client(uri).log_batch(outcome.run_id, metrics=[Metric(k, v, now, 0) for k, v in sorted(metrics.items())],
                                   tags=tags)


SUMMARY_FILE = "sweep/summary.json"
"""The sweep run's table artifact: one row per trial."""


def summary_table(outcome: SweepOutcome) -> dict[str, list]:
    """Columns of the sweep summary: trial, variant, status, every metric of its last result, its point."""
    rows = []
    for result in outcome.results:
        config = dict(result.config or {})
        metrics = numeric_metrics(result.metrics or {})
        variant = config.get(VARIANT_KEY) or (result.metrics or {}).get("trial_id", "")
        rows.append({"trial": (result.metrics or {}).get("trial_id", ""), "variant": variant,
                     "status": "ERROR" if result.error else "OK"}
                    | {f"metric/{k}": v for k, v in metrics.items()} | {f"config/{k}": v for k, v in config.items()})
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return {column: [row.get(column) for row in rows] for column in columns}


def log_summary(uri: str, outcome: SweepOutcome) -> None:
    """The summary as a table artifact of the sweep's run, in the file format and with the run tag of
    ``MlflowClient.log_table`` (MLflow shows it as a table), replaced by each run of the sweep (``log_table``
    would append the restored sweep's trials again)."""
    from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

    table = summary_table(outcome)
    text = json.dumps({"columns": list(table), "data": [list(row) for row in zip(*table.values())]}, default=str)
    mlflow_client = tracking.client(uri)
    mlflow_client.log_text(outcome.run_id, text, SUMMARY_FILE)
    mlflow_client.set_tag(outcome.run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps([{"path": SUMMARY_FILE, "type": "table"}]))

