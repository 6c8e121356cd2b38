"""What trials report to Tune and when, the concurrency a cluster fits, and how a sweep searches."""

from __future__ import annotations

import json
import math

import pytest

from vlsa.config import ConfigError, load_config
from vlsa.train.loop import StepInfo
from vlsa.train.step import StepResult
from vlsa.tune.report import GLOBAL_STEP, WindowReporter, steps_before
from vlsa.tune.resources import max_concurrent


def result(loss: float, lm: float) -> StepResult:
    return StepResult(losses={"loss": loss, "loss_lm": lm}, grad_norm=1.0, applied=True, samples=2, tokens=10)


def run_stages(reporter: WindowReporter, stages: list[list[tuple[float, float]]], first: int = 0) -> None:
    for offset, losses in enumerate(stages):
        for step, (loss, lm) in enumerate(losses, start=1):
            reporter(StepInfo(first + offset, f"stage{first + offset}", step, 0, result(loss, lm), len(losses)))


def test_reports_come_every_n_steps_and_at_each_stage_end_with_window_means_and_a_global_step():
    reports = []
    sizes = {0: 5}
    reporter = WindowReporter("run", 2, reports.append, offset=lambda run, i: sum(sizes[j] for j in range(i)))
    run_stages(reporter, [[(1, 10), (3, 30), (5, 50), (7, 70), (9, 90)], [(2, 20), (4, 40), (6, 60)]])
    assert [(r[GLOBAL_STEP], r["stage_index"], r["step"]) for r in reports] == [
        (2, 0, 2), (4, 0, 4), (5, 0, 5), (7, 1, 2), (8, 1, 3)]
    assert [r["loss"] for r in reports] == [2.0, 6.0, 9.0, 3.0, 6.0]
    assert [r["loss_lm"] for r in reports] == [20.0, 60.0, 90.0, 30.0, 60.0]


def test_a_non_finite_loss_is_left_out_of_the_window_mean():
    reports = []
    reporter = WindowReporter("run", 3, reports.append, offset=lambda run, i: 0)
    run_stages(reporter, [[(1, 1), (math.nan, 2), (3, 3)]])
    assert reports[0]["loss"] == 2.0 and reports[0]["loss_lm"] == 2.0


def test_a_resumed_later_stage_counts_the_steps_of_the_stages_before_it(tmp_path):
    from vlsa.train import checkpoint as ckpt

    run = tmp_path / "run"
    for index, (stage, step) in enumerate([("stage1", 7), ("stage2", 3)]):
        folder = run / ckpt.checkpoint_name(index, stage, step)
        folder.mkdir(parents=True)
        manifest = {"format": ckpt.FORMAT_VERSION, "stage_index": index, "stage": stage, "step": step,
                    "final": True, "files": {}}
        (folder / ckpt.MANIFEST).write_text(json.dumps(manifest))
    assert steps_before(str(run), 0) == 0 and steps_before(str(run), 2) == 10
    reports = []
    run_stages(WindowReporter(str(run), 10, reports.append), [[(1, 1), (1, 1)]], first=2)
    assert reports[-1][GLOBAL_STEP] == 12
    with pytest.raises(RuntimeError, match="without a checkpoint ending stage 2"):
        steps_before(str(run), 3)


def test_max_concurrent_counts_a_driver_and_the_workers_of_each_trial():
    cfg = load_config("tiny", ["run.num_workers=2", "run.cpus_per_worker=2"])
    assert max_concurrent(cfg, {"CPU": 16}) == 3  # 1 + 2 x 2 CPUs a trial
    assert max_concurrent(load_config("tiny", ["run.num_workers=2", "run.cpus_per_worker=2",
                                               "tune.max_concurrent=2"]), {"CPU": 16}) == 2
    with pytest.raises(RuntimeError, match="one trial needs 5 CPUs"):
        max_concurrent(cfg, {"CPU": 0})  # workers scaled to zero: only what the autoscaler publishes counts


def test_search_and_report_settings_are_checked():
    with pytest.raises(ConfigError, match="tune.search"):
        load_config("tiny", ["tune.search=random"])
    with pytest.raises(ConfigError, match="report_every"):
        load_config("tiny", ["tune.report_every=0"])


def test_the_overhead_figure_takes_the_trials_time_between_steps_over_the_jobs_step():
    from vlsa.tune.overhead import StepTimes, figures

    pairs = [{"job": StepTimes(1.0, 0.9), "trial": StepTimes(2.2, 2.0)},   # trial ran on a busier machine
             {"job": StepTimes(2.0, 1.8), "trial": StepTimes(1.5, 1.2)}]
    found = figures(pairs)
    assert found["ratios"] == pytest.approx([2.2, 0.75])
    # The trial spent 0.2 and 0.3 s between steps, the job 0.1 and 0.2 s: 1.1 and 1.05 of the job's step.
    assert found["adjusted_ratios"] == pytest.approx([1.1, 1.05])
    assert found["outside_ratio_adjusted"] == pytest.approx(1.075)
