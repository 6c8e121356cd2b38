"""Training through Ray Train with DeepSpeed on CPU workers (gloo): ZeRO-2 then ZeRO-3, fault recovery
that resumes exactly, and non-finite steps skipped or stopping the run."""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path

import pytest
from train_helpers import history, small_config, stage_run

from vlsa.train import checkpoint as ckpt
from vlsa.train.driver import train
from vlsa.train.loop import Hooks, train_worker

pytestmark = pytest.mark.integration
LOSS_KEYS = ("loss", "loss_lm", "loss_rec")


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('train-mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def reference(local_ray, train_demo, train_labels, cache_dir, tracking_uri, tmp_path_factory):
    """An uninterrupted run with 2 workers: Stage I on ZeRO-2, Stage II on ZeRO-3, 3 steps each."""
    root = tmp_path_factory.mktemp("runs")
    cfg = small_config(train_demo, cache_dir, root, "reference", tracking_uri, workers=2, labels=train_labels)
    outcome = train(cfg)
    losses = {stage: {key: history(tracking_uri, stage_run(tracking_uri, outcome.mlflow_run_id, stage).info.run_id, key)
                      for key in LOSS_KEYS} for stage in ("stage1", "stage2")}
    return cfg, outcome, losses


def test_two_workers_zero2_then_zero3_learn(reference, tracking_uri):
    from mlflow import MlflowClient

    _, outcome, losses = reference
    found = [(c.stage_index, c.step, c.final) for c in ckpt.list_complete(outcome.run)]
    assert found == [(0, 1, False), (0, 2, False), (0, 3, True), (1, 1, False), (1, 2, False), (1, 3, True)]
    assert outcome.final_checkpoint == ckpt.list_complete(outcome.run)[-1].uri
    stage1 = ckpt.read_json(ckpt.list_complete(outcome.run)[2].uri, ckpt.MANIFEST)["files"]
    stage2 = ckpt.read_json(outcome.final_checkpoint, ckpt.MANIFEST)["files"]
    # ZeRO-2: one model file, optimizer state split over both workers; ZeRO-3: the weights are split too.
    assert {"ds/mp_rank_00_model_states.pt", "ds/zero_pp_rank_1_mp_rank_00_optim_states.pt", "model.pt"} <= set(stage1)
    assert {"ds/zero_pp_rank_1_mp_rank_00_model_states.pt", "rng/rank_00001.pt", "model.pt"} <= set(stage2)
    for stage in ("stage1", "stage2"):
        loss_lm = losses[stage]["loss_lm"]
        assert sorted(loss_lm) == [1, 2, 3] and all(math.isfinite(v) for v in losses[stage]["loss"].values())
        assert loss_lm[3] < loss_lm[1], f"{stage}: LM loss did not fall: {loss_lm}"

    client = MlflowClient(tracking_uri)
    parent = client.get_run(outcome.mlflow_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["final_checkpoint"] == outcome.final_checkpoint
    assert parent.data.params["train.stages.1.zero_stage"] == "3"
    run2 = stage_run(tracking_uri, outcome.mlflow_run_id, "stage2")
    expected = {"lr/llm", "lr/vision", "grad_norm", "samples_per_s", "tokens_per_s", "loss_lm_ssft"}
    assert expected <= set(run2.data.metrics)
    assert run2.data.metrics["skipped_steps"] == 0 and run2.data.params["world_size"] == "2"
    for stage in ("stage1", "stage2"):
        run_id = stage_run(tracking_uri, outcome.mlflow_run_id, stage).info.run_id
        artifacts = client.list_artifacts(run_id, "reconstruction")
        assert [a.path for a in artifacts] == [f"reconstruction/{stage}_step00000003.png"]


def _fault_hooks(marker_dir: str, run_dir: str) -> Hooks:
    """Rank 1 raises after Stage I step 2 (leaving a partial checkpoint newer than every complete one);
    rank 0 is killed after Stage II step 2. Each fault fires on the first attempt only."""
    import signal

    def first_time(name: str) -> bool:
        try:
            os.close(os.open(os.path.join(marker_dir, name), os.O_CREAT | os.O_EXCL))
            return True
        except FileExistsError:
            return False

    def after_step(info) -> None:
        if (info.stage, info.step, info.rank) == ("stage1", 2, 1) and first_time("raised"):
            partial = Path(run_dir, ckpt.checkpoint_name(1, "stage2", 0))
            (partial / "ds").mkdir(parents=True)
            (partial / "ds" / "mp_rank_00_model_states.pt").write_bytes(b"not a checkpoint")
            (partial / ckpt.TRAINER_STATE).write_text(json.dumps({"step": 0, "world_size": 2}))
            raise RuntimeError("injected worker failure")
        if (info.stage, info.step, info.rank) == ("stage2", 2, 0) and first_time("killed"):
            os.kill(os.getpid(), signal.SIGKILL)

    return Hooks(after_step=after_step)


def test_failed_and_killed_workers_resume_exactly(reference, train_demo, train_labels, cache_dir, tracking_uri,
                                                   tmp_path):
    _, _, expected = reference
    cfg = small_config(train_demo, cache_dir, tmp_path / "runs", "faulty", tracking_uri, workers=2,
                       labels=train_labels)
    run_dir = ckpt.run_uri(str(tmp_path / "runs"), "faulty")
    markers = tmp_path / "markers"
    markers.mkdir()
    outcome = train(cfg, train_fn=functools.partial(train_worker, hooks=_fault_hooks(str(markers), run_dir)))

    assert sorted(p.name for p in markers.iterdir()) == ["killed", "raised"]  # both faults happened
    partial = Path(run_dir, ckpt.checkpoint_name(1, "stage2", 0))
    assert partial.is_dir() and not (partial / ckpt.MANIFEST).exists()  # never completed, never loaded
    for stage in ("stage1", "stage2"):
        run = stage_run(tracking_uri, outcome.mlflow_run_id, stage)
        assert run.data.tags["vlsa.resumed"] == "True"
        for key in LOSS_KEYS:
            got = history(tracking_uri, run.info.run_id, key)
            assert got == expected[stage][key], f"{stage} {key}: resumed {got} != uninterrupted {expected[stage][key]}"


def _nan_hooks(steps: tuple[int, ...]) -> Hooks:
    def on_batch(batch, info):
        if info.step in steps:
            batch = dict(batch, pixel_lo=batch["pixel_lo"] * float("nan"))
        return batch

    return Hooks(on_batch=on_batch)


def test_nan_step_is_skipped_and_consecutive_nans_stop_the_run(local_ray, train_demo, train_labels, cache_dir,
                                                               tracking_uri, tmp_path):
    import ray.train

    cfg = small_config(train_demo, cache_dir, tmp_path / "runs", "nan", tracking_uri, workers=0, steps=6, labels=train_labels,
                       extra=("train.max_consecutive_skips=2", "train.checkpoint_every=0"))
    hooks = _nan_hooks(steps=(2, 4, 5))  # one isolated NaN, then two in a row
    with pytest.raises((ray.train.TrainingFailedError, RuntimeError)) as failure:
        train(cfg, train_fn=functools.partial(train_worker, hooks=hooks))
    assert "stage stage1 step 5: 2 consecutive optimizer steps had a non-finite loss or gradient" in str(failure.value)

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    (parent,) = client.search_runs([client.get_experiment_by_name("vlsa").experiment_id],
                                   filter_string=f"tags.`vlsa.run` = '{ckpt.run_uri(str(tmp_path / 'runs'), 'nan')}'")
    assert parent.info.status == "FAILED"
    run_id = stage_run(tracking_uri, parent.info.run_id, "stage1").info.run_id
    assert history(tracking_uri, run_id, "step_skipped") == {1: 0.0, 2: 1.0, 3: 0.0, 4: 1.0, 5: 1.0}
    assert history(tracking_uri, run_id, "skipped_steps") == {1: 0.0, 2: 1.0, 3: 1.0, 4: 2.0, 5: 3.0}
    assert sorted(history(tracking_uri, run_id, "loss")) == [1, 3]  # non-finite losses are not logged
