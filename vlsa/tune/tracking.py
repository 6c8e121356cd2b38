"""MLflow for sweeps: one parent run per sweep, one nested run per trial.

A trial's run is also the parent of its training stages' runs (the training job reopens it by its
run key), so the tree is sweep -> trial -> stage. Trial runs hold the trial's params and the
history of every metric the trial reported to Tune.
"""

from __future__ import annotations

from typing import Any

from vlsa.io import tracking

SWEEP_TAG = "vlsa.sweep"
TRIAL_TAG = "vlsa.trial"
ATTEMPTS_TAG = "vlsa.trial_attempts"


def open_sweep_run(uri: str, experiment: str, sweep_path: str, name: str, params: dict[str, Any]) -> str:
    """The sweep's run, reopened when the sweep at ``sweep_path`` is restored."""
    from mlflow.entities import Param

    mlflow_client = tracking.client(uri)
    exp_id = tracking.experiment_id(mlflow_client, experiment)
    tags = {SWEEP_TAG: sweep_path, "vlsa.kind": "sweep"}
    run_id = tracking._find_run(mlflow_client, exp_id, tags)
    if run_id is None:
        run_id = mlflow_client.create_run(exp_id, run_name=name, tags=tags).info.run_id
    mlflow_client.update_run(run_id, status="RUNNING")
    known = mlflow_client.get_run(run_id).data.params
    new = [Param(k, tracking.redact(k, v)) for k, v in params.items() if k not in known]
    for start in range(0, len(new), 100):  # MLflow takes at most 100 params per batch
        mlflow_client.log_batch(run_id, params=new[start:start + 100])
    return run_id


def open_trial_run(uri: str, sweep_run_id: str, trial_id: str, run_key: str, name: str) -> str:
    """The trial's run nested under the sweep's; its attempt counter goes up on every start."""
    mlflow_client = tracking.client(uri)
    exp_id = mlflow_client.get_run(sweep_run_id).info.experiment_id
    tags = {tracking.PARENT_TAG: sweep_run_id, TRIAL_TAG: trial_id}
    run_id = tracking._find_run(mlflow_client, exp_id, tags)
    if run_id is None:
        # The run key and kind make the training job's open_parent_run reopen this run.
        job_tags = tags | {tracking.RUN_TAG: run_key, "vlsa.kind": "job"}
        run_id = mlflow_client.create_run(exp_id, run_name=name, tags=job_tags).info.run_id
    attempts = int(mlflow_client.get_run(run_id).data.tags.get(ATTEMPTS_TAG, "0")) + 1
    mlflow_client.set_tag(run_id, ATTEMPTS_TAG, str(attempts))
    return run_id


def find_trial_run(uri: str, sweep_run_id: str, trial_id: str) -> str | None:
    """The run of ``trial_id`` in the sweep, if the trial has started."""
    mlflow_client = tracking.client(uri)
    exp_id = mlflow_client.get_run(sweep_run_id).info.experiment_id
    return tracking._find_run(mlflow_client, exp_id, {tracking.PARENT_TAG: sweep_run_id, TRIAL_TAG: trial_id})


def trial_runs(uri: str, sweep_run_id: str) -> list:
    """Every trial run of the sweep (MLflow ``Run`` objects)."""
    mlflow_client = tracking.client(uri)
    exp_id = mlflow_client.get_run(sweep_run_id).info.experiment_id
    query = f"tags.`{tracking.PARENT_TAG}` = '{sweep_run_id}' and tags.`{TRIAL_TAG}` != ''"
    return mlflow_client.search_runs([exp_id], filter_string=query, max_results=10_000)


def numeric_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The numbers of a Tune result worth plotting (Tune's own bookkeeping left out)."""
    skip = {"training_iteration", "timestamp", "time_this_iter_s", "time_total_s", "pid", "time_since_restore",
            "iterations_since_restore", "done"}
    return {k: float(v) for k, v in result.items()
            if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}
