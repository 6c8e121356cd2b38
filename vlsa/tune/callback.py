"""A Tune callback (runs in the sweep's driver) that keeps the trial runs' metric history."""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

from vlsa.io import tracking
from vlsa.tune.report import GLOBAL_STEP
from vlsa.tune.tracking import find_trial_run, numeric_metrics


class MLflowTrials(Callback):
    """Logs every result of a trial to its MLflow run; closes the run when the trial ends."""

    def __init__(self, tracking_uri: str, sweep_run_id: str) -> None:
        self.uri, self.sweep_run_id = tracking_uri, sweep_run_id
        self._runs: dict[str, str] = {}

    def _run(self, trial) -> str | None:
        if trial.trial_id not in self._runs:
            run_id = find_trial_run(self.uri, self.sweep_run_id, trial.trial_id)
            if run_id is None:
                return None
            self._runs[trial.trial_id] = run_id
        return self._runs[trial.trial_id]

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict[str, Any], **info) -> None:
        from mlflow.entities import Metric

        run_id = self._run(trial)
        if run_id is None:
            return
        # Curves of trials line up by optimizer step over all stages (Tune's result count is not comparable).
        step = int(result.get(GLOBAL_STEP, result.get("training_iteration", 0)))
        now = int(result.get("timestamp", 0) * 1000)
        metrics = [Metric(k, v, now, step) for k, v in sorted(numeric_metrics(result).items())]
        tracking.client(self.uri).log_batch(run_id, metrics=metrics)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._close(trial, ok=True)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._close(trial, ok=False)

    def _close(self, trial, ok: bool) -> None:
        run_id = self._run(trial)
        if run_id is not None:
            tracking.close_run(self.uri, run_id, ok=ok)
