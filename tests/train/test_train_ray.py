"""Training through Ray Train with DeepSpeed on CPU workers (gloo): ZeRO-2 then ZeRO-3, fault recovery
that resumes exactly with each rank fetching only its own share of the checkpoint from S3, non-finite
steps skipped or stopping the run, and a run that cannot get its resources stopping with a clear error."""

from __future__ import annotations

import functools
import json
import math
import os
import time
from pathlib import Path

import pytest
from train_helpers import history, small_config, stage_run

from vlsa.io import storage
from vlsa.train import checkpoint as ckpt
from vlsa.train.driver import train
from vlsa.train.loop import Hooks, train_worker
from vlsa.train.restore import rank_files
from tests.tracking_db import sqlite_tracking_uri

pytestmark = pytest.mark.integration
LOSS_KEYS = ("loss", "loss_lm", "loss_rec")


@pytest.fixture(scope="module")
def local_ray(s3_server):
    """Ray started once the S3 fixture set this process's environment: like a cluster node, it holds
    the (test) credentials itself; the driver forwards none."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False)
    try:
        yield ray.cluster_resources()
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    return sqlite_tracking_uri(tmp_path_factory.mktemp('train-mlflow'))


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
    assert {"ds/mp_rank_00_model_states.pt", "ds/zero_pp_rank_1_mp_rank_00_optim_states.pt",
            ckpt.WEIGHTS} <= set(stage1)
    assert {"ds/zero_pp_rank_1_mp_rank_00_model_states.pt", "rng/rank_00001.pt", ckpt.WEIGHTS} <= set(stage2)
    for stage in ("stage1", "stage2"):
        loss_lm = losses[stage]["loss_lm"]
        assert sorted(loss_lm) == [1, 2, 3] and all(math.isfinite(v) for v in losses[stage]["loss"].values())
        assert loss_lm[3] < loss_lm[1], f"{stage}: LM loss did not fall: {loss_lm}"

    client = MlflowClient(tracking_uri)
    parent = client.get_run(outcome.mlflow_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["final_checkpoint"] == outcome.final_checkpoint
    assert parent.data.params["train.stages.1.zero_stage"] == "3"
    run2 = stage_run(tracking_uri, outcome.mlflow_run_id, "stage2")
    expected = {"lr/llm", "lr/vision", "grad_norm", "samples_per_s", "tokens_per_s", "loss_lm_ssft",
                "checkpoint_blocked_s"}
    assert expected <= set(run2.data.metrics)
    coverage = {k: v for k, v in run2.data.metrics.items() if k.startswith("ssft/")}  # App. B.11 targets covered
    assert coverage and set(coverage) <= {"ssft/vq_coverage", "ssft/px_coverage"}
    assert all(0.0 < v <= 1.0 for v in coverage.values()), coverage
    assert not any(k.startswith("ssft/") for k in stage_run(tracking_uri, outcome.mlflow_run_id, "stage1").data.metrics)
    assert run2.data.metrics["skipped_steps"] == 0 and run2.data.params["world_size"] == "2"
    for stage in ("stage1", "stage2"):
        run_id = stage_run(tracking_uri, outcome.mlflow_run_id, stage).info.run_id
        artifacts = client.list_artifacts(run_id, "reconstruction")
        assert [a.path for a in artifacts] == [f"reconstruction/{stage}_step00000003.png"]


def _fault_hooks(marker_dir: str, run_dir: str) -> Hooks:
    """Rank 1 raises after Stage I step 2 (leaving a partial checkpoint newer than every complete one);
    rank 0 is killed after Stage II step 2. Each fault fires on the first attempt only, once the
    step-1 checkpoint (uploaded in the background) is complete. Every restore is recorded with the
    bytes the rank downloaded."""
    import signal

    def first_time(name: str) -> bool:
        try:
            os.close(os.open(os.path.join(marker_dir, name), os.O_CREAT | os.O_EXCL))
            return True
        except FileExistsError:
            return False

    def step1_stored(stage: str) -> None:
        while not any(c.stage == stage and c.step == 1 for c in ckpt.list_complete(run_dir)):
            time.sleep(0.2)

    def after_step(info) -> None:
        if (info.stage, info.step, info.rank) == ("stage1", 2, 1) and first_time("raised"):
            step1_stored("stage1")
            partial = storage.join(run_dir, ckpt.checkpoint_name(1, "stage2", 0))
            storage.write_bytes(storage.join(partial, "ds/mp_rank_00_model_states.pt"), b"not a checkpoint")
            state = json.dumps({"step": 0, "world_size": 2}).encode()
            storage.write_bytes(storage.join(partial, ckpt.TRAINER_STATE), state)
            raise RuntimeError("injected worker failure")
        if (info.stage, info.step, info.rank) == ("stage2", 2, 0) and first_time("killed"):
            step1_stored("stage2")
            os.kill(os.getpid(), signal.SIGKILL)

    def after_restore(info, fetched) -> None:
        record = {"stage": info.stage, "rank": info.rank, "downloaded": fetched.downloaded,
                  "uri": str(fetched.folder), "files": list(fetched.files)}
        Path(marker_dir, f"restore-{info.stage}-{info.rank}.json").write_text(json.dumps(record))

    return Hooks(after_step=after_step, after_restore=after_restore)


def test_failed_and_killed_workers_resume_exactly(reference, s3_server, train_demo, train_labels, cache_dir,
                                                  tracking_uri, tmp_path):
    _, _, expected = reference
    root = storage.join(s3_server.make_bucket("train-faulty"), "runs")
    cfg = small_config(train_demo, cache_dir, root, "faulty", tracking_uri, workers=2, labels=train_labels,
                       extra=(f"run.scratch_dir={tmp_path / 'scratch'}",))
    run_dir = ckpt.run_uri(root, "faulty")
    markers = tmp_path / "markers"
    markers.mkdir()
    outcome = train(cfg, train_fn=functools.partial(train_worker, hooks=_fault_hooks(str(markers), run_dir)))

    restores = sorted(p.name for p in markers.glob("restore-*"))
    assert sorted(p.name for p in markers.iterdir() if p not in markers.glob("restore-*")) == ["killed", "raised"]
    assert restores == ["restore-stage1-0.json", "restore-stage1-1.json", "restore-stage2-0.json",
                        "restore-stage2-1.json"]
    for stage in ("stage1", "stage2"):
        records = [json.loads((markers / f"restore-{stage}-{rank}.json").read_text()) for rank in (0, 1)]
        (uri,) = {r["uri"] for r in records}  # the node's one copy, shared by both workers
        (resumed,) = [c for c in ckpt.list_complete(run_dir) if c.stage == stage and c.step == 1]
        files = ckpt.read_json(resumed.uri, ckpt.MANIFEST)["files"]
        for record in records:
            share = sum(files[n]["size"] for n in rank_files({"files": files}, record["rank"]))
            assert record["files"] == rank_files({"files": files}, record["rank"])
            assert record["downloaded"] <= 1.1 * share, (stage, record["rank"], record["downloaded"], share)
        needed = set(rank_files({"files": files}, 0)) | set(rank_files({"files": files}, 1))
        assert sum(r["downloaded"] for r in records) == sum(files[n]["size"] for n in needed)  # each file once
    partial = storage.join(run_dir, ckpt.checkpoint_name(1, "stage2", 0))
    assert not storage.exists(partial)  # never completed, never loaded, pruned once stage II had a checkpoint
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


def test_a_run_without_its_resources_stops_with_what_is_missing_and_the_resume_command(
        local_ray, train_demo, train_labels, cache_dir, tracking_uri, tmp_path):
    from vlsa.train.driver import ResourcesUnavailableError

    cfg = small_config(train_demo, cache_dir, tmp_path / "runs", "starved", tracking_uri, workers=2, labels=train_labels,
                       extra=("run.cpus_per_worker=3", "run.start_timeout_s=5"))
    with pytest.raises(ResourcesUnavailableError) as failure:
        train(cfg)
    message = str(failure.value)
    assert "not available within run.start_timeout_s=5 s, 3 tries" in message
    assert f"CPU: 2 workers x 3 = 6 needed, {local_ray['CPU']:g} in the cluster" in message
    assert "resume with: python ray_jobs/train.py" in message and "run.name=starved" in message
