"""A real sweep on the tiny preset, run once for the module: two variants of Tab. 5, each a full Ray
Train run scored on the held-out demo split.

The sweep is interrupted (SIGINT, as Ctrl+C) when the second variant reports its first step, after
the first variant finished. ``ray_jobs/ablate.py`` then continues it and writes the table;
finally ``ray_jobs/tune.py`` is re-run on the finished sweep. The tests check each contract on what
that left in Tune's state, MLflow and the table files.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.tune.conftest import shrunk
from tune_spaces import build_space
from vlsa.config import load_config
from vlsa.io import tracking as train_tracking
from vlsa.train.step import LOSS_KEYS
from vlsa.tune.sweep import SweepInterrupted, run_sweep
from vlsa.tune.tracking import ATTEMPTS_TAG, trial_runs

REPO = Path(__file__).resolve().parents[2]
ROWS = ["pixels off, indices off", "pixels on, indices off"]
EXPERIMENT = "tune-tests"


@dataclass
class Scenario:
    uri: str
    out: Path
    ablate_argv: list[str]
    interrupted: BaseException | None
    """What the first, interrupted run raised."""
    sweep_run_id: str
    after_interrupt: dict[str, tuple[str, str]]
    """variant -> (trial run status, attempts) right after the interrupt."""
    stages_after_interrupt: dict[str, dict[str, str]]
    """variant -> {stage: run id} right after the interrupt."""
    ablation: dict[str, Any]
    """What the ablation command returned."""
    sweep_tags: dict[str, str]
    """The sweep run's tags after the ablation command."""
    rerun: dict[str, Any]
    """What re-running ``ray_jobs/tune.py`` on the finished sweep returned."""


def tune_job(name: str = "tune"):
    """``ray_jobs/<name>.py`` as a module (the folder holds entry scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"{name}_job", REPO / "ray_jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def by_variant(uri: str, sweep_run_id: str) -> dict:
    return {r.data.params["tune.variant"]: r for r in trial_runs(uri, sweep_run_id)}


def stage_runs(uri: str, trial_run) -> dict[str, str]:
    runs = train_tracking.client(uri).search_runs(
        [trial_run.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{trial_run.info.run_id}'")
    return {r.data.tags["vlsa.stage"]: r.info.run_id for r in runs}


def steps(uri: str, run_id: str, key: str = "loss") -> list[int]:
    return sorted(m.step for m in train_tracking.client(uri).get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, local_ray, mlflow_server, cache_dir) -> Scenario:
    from tests.tune.interrupt import InterruptOnFirstResult  # imports Ray Tune: here, not while collecting

    uri, root = mlflow_server, tmp_path_factory.mktemp("sweep")
    overrides = shrunk(root, uri, cache_dir, "tune.metric=eval_accuracy", "tune.mode=max",
                       "tune.max_concurrent=1", f"run.mlflow.experiment={EXPERIMENT}")
    cfg = load_config("tiny", overrides)
    flag = root / "interrupt"
    flag.touch()
    interrupted = None
    try:  # one trial at a time: the first finishes, the second is interrupted at its first report
        run_sweep(cfg, build_space("tab5", cfg, ROWS), f"{cfg.run.name}-tab5",
                  callbacks=[InterruptOnFirstResult(ROWS[1], flag)])
    except SweepInterrupted as err:
        interrupted = err
    client = train_tracking.client(uri)
    sweep_run_id = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                                      filter_string="tags.`vlsa.kind` = 'sweep'")[0].info.run_id
    runs = by_variant(uri, sweep_run_id)
    after = {v: (r.info.status, r.data.tags[ATTEMPTS_TAG]) for v, r in runs.items()}
    stages = {v: stage_runs(uri, r) for v, r in runs.items()}

    only = [arg for row in ROWS for arg in ("--only", row)]
    argv = ["--grid", "tab5", "--config", "tiny", "--out", str(root / "tables"), *only, *overrides]
    ablation = tune_job("ablate").main(argv)
    tags = client.get_run(sweep_run_id).data.tags
    rerun = tune_job().main(["--space", "tab5", "--config", "tiny", *only, *overrides])
    return Scenario(uri, root / "tables", argv, interrupted, sweep_run_id, after, stages, ablation, tags, rerun)


def test_an_interrupted_sweep_continues_without_rerunning_finished_trials(scenario):
    uri, finished, interrupted = scenario.uri, ROWS[0], ROWS[1]
    assert isinstance(scenario.interrupted, SweepInterrupted)
    assert "1 of 2 trials unfinished" in str(scenario.interrupted)
    assert scenario.after_interrupt == {finished: ("FINISHED", "1"), interrupted: ("RUNNING", "1")}
    runs = by_variant(uri, scenario.sweep_run_id)
    assert {v: (r.info.status, r.data.tags[ATTEMPTS_TAG]) for v, r in runs.items()} == {
        finished: ("FINISHED", "1"), interrupted: ("FINISHED", "2")}
    # The finished trial's stages were logged once, one step each: it was not trained again.
    assert stage_runs(uri, runs[finished]) == scenario.stages_after_interrupt[finished]
    assert [steps(uri, run_id) for run_id in scenario.stages_after_interrupt[finished].values()] == [[1], [1]]
    # The interrupted one went on in the runs it had started.
    resumed = stage_runs(uri, runs[interrupted])
    assert sorted(resumed) == ["stage1", "stage2"]
    assert resumed["stage1"] == scenario.stages_after_interrupt[interrupted]["stage1"]


def test_the_sweep_logs_a_parent_run_nested_trial_runs_and_the_best_point(scenario):
    from ray.tune import ExperimentAnalysis

    client = train_tracking.client(scenario.uri)
    sweep = client.get_run(scenario.sweep_run_id)
    assert sweep.info.status == "FINISHED" and sweep.data.metrics["trials_failed"] == 0
    analysis = ExperimentAnalysis(scenario.rerun["path"])
    assert sorted(t.status for t in analysis.trials) == ["TERMINATED", "TERMINATED"]
    accuracy = {t.config["tune.variant"]: t.last_result["eval_accuracy"] for t in analysis.trials}
    best = sweep.data.tags["best.tune.variant"]
    assert accuracy[best] == max(accuracy.values())
    assert sweep.data.metrics["best/eval_accuracy"] == pytest.approx(accuracy[best])
    p_px = load_config("tiny").train.stages[1].data.ssft.p_px  # "pixels on" keeps the preset's probability
    for variant, run in by_variant(scenario.uri, scenario.sweep_run_id).items():
        assert run.data.tags["mlflow.parentRunId"] == scenario.sweep_run_id
        assert float(run.data.params["train.stages.1.data.ssft.p_px"]) == (p_px if variant == ROWS[1] else 0.0)
        # One report at each (one-step) stage's end, logged at its step over both stages.
        assert sorted({m.step for m in client.get_metric_history(run.info.run_id, "loss")}) == [1, 2]
        assert run.data.metrics["eval_accuracy"] == pytest.approx(accuracy[variant])
        assert 0.0 <= run.data.metrics["eval_blind_accuracy"] <= 1.0


def test_the_sweep_run_has_a_summary_table_in_a_model_training_experiment(scenario):
    client = train_tracking.client(scenario.uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    path = client.download_artifacts(scenario.sweep_run_id, "sweep/summary.json", str(scenario.out.parent))
    table = json.loads(Path(path).read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert sorted(row["variant"] for row in rows) == sorted(ROWS) and {row["status"] for row in rows} == {"OK"}
    for row in rows:
        assert 0.0 <= row["metric/eval_accuracy"] <= 1.0 and row["metric/global_step"] == 2
        assert row["config/tune.variant"] == row["variant"] and "config/train.stages.1.data.ssft.p_px" in row
    params = client.get_run(scenario.sweep_run_id).data.params
    assert (params["sweep.search"], params["sweep.budget"]) == ("grid", "2 trials")


def test_the_ablation_table_has_one_row_per_variant_and_is_logged_with_its_command(scenario):
    out = scenario.out
    assert scenario.ablation["failed"] == [] and scenario.ablation["csv"] == str(out / "tab5.csv")
    table = list(csv.DictReader(io.StringIO((out / "tab5.csv").read_text())))
    assert [row["variant"] for row in table] == ROWS and all(row["status"] == "OK" for row in table)
    columns = list(table[0])
    assert columns[:3] == ["variant", "status", "eval_accuracy"] and "eval_blind_accuracy" in columns
    assert {"loss", "loss_lm", "loss_rec"} <= set(columns) <= {"variant", "status", *LOSS_KEYS,
                                                               "eval_accuracy", "eval_blind_accuracy"}
    for row, run in zip(table, [by_variant(scenario.uri, scenario.sweep_run_id)[v] for v in ROWS]):
        assert float(row["eval_accuracy"]) == pytest.approx(run.data.metrics["eval_accuracy"])
        assert 0.0 < float(row["loss"]) < 20.0
    command = shlex.join([*tune_job("ablate").PROGRAM.split(), *scenario.ablate_argv])
    markdown = (out / "tab5.md").read_text()
    assert f"Command: `{command}`" in markdown
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert lines[0] == "| " + " | ".join(columns) + " |" and [line.split(" | ")[0][2:] for line in lines[1:]] == ROWS
    assert scenario.sweep_tags["vlsa.command"] == command
    client = train_tracking.client(scenario.uri)
    for name in ("tab5.md", "tab5.csv"):
        logged = client.download_artifacts(scenario.sweep_run_id, f"ablation/{name}", str(out.parent))
        assert Path(logged).read_text() == (out / name).read_text()


def test_rerunning_the_finished_sweep_trains_nothing_and_reports_the_same_best(scenario):
    client = train_tracking.client(scenario.uri)
    sweep = client.get_run(scenario.sweep_run_id)
    assert scenario.rerun["mlflow_run_id"] == scenario.sweep_run_id and scenario.rerun["failed"] == 0
    assert scenario.rerun["best"]["tune.variant"] == sweep.data.tags["best.tune.variant"]
    assert sweep.data.tags["vlsa.command"].startswith("python ray_jobs/tune.py --space tab5")
    attempts = {v: r.data.tags[ATTEMPTS_TAG] for v, r in by_variant(scenario.uri, scenario.sweep_run_id).items()}
    assert attempts == {ROWS[0]: "1", ROWS[1]: "2"}
