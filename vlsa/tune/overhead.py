"""``sweep-overhead``: per-step time of a training run as one sweep trial vs the same config as a job.

    python -m vlsa.bench sweep-overhead --preset tiny --device cpu [--set bench.repeats=2]

Each pair runs the config once through ``vlsa.train.driver.train`` (what ``ray_jobs/train.py`` runs)
and once as the only trial of a sweep (``run_sweep``, as ``ray_jobs/tune.py``), alternating which goes
first, on one local Ray instance, with the same generated data. The step time is read from what both
log anyway: the timestamps of the stage runs' per-step metrics, from the first step to the last of
each stage, so the time a trial spends reporting to Tune between steps is in it (start-up, model
builds and the stage-end reports and checkpoints are not). Lives here, not in ``vlsa.bench``, because
it runs sweeps; ``python -m vlsa.bench`` loads it by name.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch

from vlsa.bench.device import describe
from vlsa.bench.report import Report, fmt_seconds, table
from vlsa.config import Config
from vlsa.io import tracking
from vlsa.ray_session import default_num_cpus, ray_session
from vlsa.train.driver import train
from vlsa.tune.sweep import run_sweep, with_demo_data
from vlsa.tune.tracking import trial_runs


@dataclass(frozen=True)
class StepTimes:
    """Seconds per step over the stage runs of one training run."""

    wall: float
    """From one step's logged metrics to the next."""
    compute: float
    """Inside the training step (forward, backward, optimizer), from the logged ``samples_per_s``."""

    @property
    def outside(self) -> float:
        """Between training steps: data, logging, hooks (a trial's reports to Tune)."""
        return self.wall - self.compute


def stage_steps(uri: str, parent_run_id: str, batches: dict[str, int]) -> StepTimes:
    """Step times of every stage run under the run, from the first logged step to the last
    (``batches``: samples per step of each stage, by name)."""
    client = tracking.client(uri)
    exp_id = client.get_run(parent_run_id).info.experiment_id
    query = f"tags.`{tracking.PARENT_TAG}` = '{parent_run_id}' and tags.`{tracking.STAGE_TAG}` != ''"
    wall = compute = 0.0
    steps = 0
    for run in client.search_runs([exp_id], filter_string=query):
        stamps = {m.step: m.timestamp for m in client.get_metric_history(run.info.run_id, "loss")}
        if len(stamps) < 2:
            raise RuntimeError(f"stage run {run.info.run_id} logged {len(stamps)} step(s); give each stage 2 or more")
        rates = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "samples_per_s")}
        batch = batches[run.data.tags[tracking.STAGE_TAG]]
        wall += (stamps[max(stamps)] - stamps[min(stamps)]) / 1000
        compute += sum(batch / rates[step] for step in stamps if step != min(stamps))
        steps += max(stamps) - min(stamps)
    return StepTimes(wall / steps, compute / steps)


def stage_batches(cfg: Config) -> dict[str, int]:
    return {stage.name: stage.global_batch for stage in cfg.train.stages}


def as_job(cfg: Config, name: str) -> StepTimes:
    """Step times of ``cfg`` run as a training job."""
    outcome = train(cfg.with_overrides({"run.name": name}))
    return stage_steps(outcome.tracking_uri, outcome.mlflow_run_id, stage_batches(cfg))


def as_trial(cfg: Config, name: str) -> StepTimes:
    """Step times of ``cfg`` run as the one trial of a sweep."""
    outcome = run_sweep(cfg, {}, name)
    uri = tracking.tracking_uri(cfg.run.mlflow.tracking_uri)
    (trial,) = trial_runs(uri, outcome.run_id)
    return stage_steps(uri, trial.info.run_id, stage_batches(cfg))


def figures(pairs: list[dict[str, StepTimes]]) -> dict[str, Any]:
    """The ratio of step times per pair, and the same with the trial's compute replaced by the job's:
    on a loaded machine the compute of two runs minutes apart differs far more than what a trial adds
    between steps, so the second isolates the trial's own cost."""
    med = statistics.median
    ratios = [p["trial"].wall / p["job"].wall for p in pairs]
    adjusted = [(p["job"].wall + p["trial"].outside - p["job"].outside) / p["job"].wall for p in pairs]
    return {"ratio": med(ratios), "ratios": ratios, "outside_ratio_adjusted": med(adjusted),
            "adjusted_ratios": adjusted,
            "compute_ratio": med(p["trial"].compute / p["job"].compute for p in pairs),
            "job_step_s": med(p["job"].wall for p in pairs), "trial_step_s": med(p["trial"].wall for p in pairs),
            "job_outside_s": med(p["job"].outside for p in pairs),
            "trial_outside_s": med(p["trial"].outside for p in pairs)}


def run(cfg: Config, device: torch.device, out_dir: str) -> Report:
    """``bench.repeats`` interleaved pairs (job, trial); the median of the per-pair ratios."""
    if device.type != "cpu":
        raise ValueError("sweep-overhead runs the CPU training path; use --device cpu")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = tempfile.mkdtemp(prefix="vlsa-sweep-overhead-")
    cfg = cfg.with_overrides({"run.storage_path": f"{root}/runs",
                              "run.mlflow.tracking_uri": f"sqlite:///{root}/mlflow.db",
                              "run.mlflow.register_model": False})
    pairs, started = [], time.perf_counter()
    with ray_session(default_num_cpus()):
        # labeled once by the sweep's own preparation, so both sides of a pair read the same labels
        cfg = with_demo_data(cfg, f"{root}/demo", space={})
        for i in range(cfg.bench.repeats):
            order = [("job", as_job), ("trial", as_trial)][::1 if i % 2 == 0 else -1]
            pairs.append({kind: fn(cfg, f"overhead-{kind}-{i}") for kind, fn in order})
    metrics = figures(pairs) | {"wall_s": time.perf_counter() - started}
    settings = {"preset": cfg.preset, "pairs": cfg.bench.repeats, "report_every": cfg.tune.report_every,
                "stage_steps": [s.max_steps for s in cfg.train.stages], "workers": cfg.run.num_workers,
                "load_average": os.getloadavg()}
    rows = [[i, fmt_seconds(p["job"].wall), fmt_seconds(p["trial"].wall), fmt_seconds(p["job"].outside),
             fmt_seconds(p["trial"].outside), f"{r:.3f}", f"{a:.3f}"]
            for i, (p, r, a) in enumerate(zip(pairs, metrics["ratios"], metrics["adjusted_ratios"]))]
    lines = [f"trial step / job step: {metrics['ratio']:.3f} (median of {len(pairs)} interleaved pairs); "
             f"with the job's compute time: {metrics['outside_ratio_adjusted']:.3f}",
             *table(["pair", "job step", "trial step", "job between steps", "trial between steps", "ratio",
                     "ratio, job's compute"], rows),
             f"compute inside the step, trial / job: {metrics['compute_ratio']:.3f} (machine load drift)",
             f"tune.report_every={cfg.tune.report_every}; load average {os.getloadavg()[0]:.1f}"]
    return Report("sweep-overhead", metrics, settings, describe(device), lines)
