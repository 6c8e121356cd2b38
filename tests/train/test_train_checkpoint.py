"""Checkpoint manifests: only complete checkpoints are found, partial ones never; pruning; RNG state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vlsa.model import weights
from vlsa.train import checkpoint as ckpt


def _fake_checkpoint(run: Path, stage_index: int, stage: str, step: int, *, final: bool, manifest: bool = True) -> str:
    """A checkpoint folder with a few files of known sizes (and a manifest unless told not to)."""
    folder = run / ckpt.checkpoint_name(stage_index, stage, step)
    files = {"ds/mp_rank_00_model_states.pt": b"m" * (10 + step), "rng/rank_00000.pt": b"r" * 7,
             ckpt.TRAINER_STATE: json.dumps({"step": step}).encode()}
    if final:
        files[ckpt.WEIGHTS] = b"w" * 5
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    if manifest:
        ckpt.write_manifest(str(folder), ckpt.describe_files(folder),
                            {"stage_index": stage_index, "stage": stage, "step": step, "final": final})
    return str(folder)


def test_names_sort_in_training_order():
    names = [ckpt.checkpoint_name(1, "stage2", 3), ckpt.checkpoint_name(0, "stage1", 12),
             ckpt.checkpoint_name(0, "stage1", 9)]
    assert sorted(names) == ["00_stage1_step00000009", "00_stage1_step00000012", "01_stage2_step00000003"]


def test_latest_complete_ignores_partial_checkpoints(tmp_path):
    assert ckpt.latest_complete(str(tmp_path / "missing")) is None
    _fake_checkpoint(tmp_path, 0, "stage1", 4, final=True)
    good = _fake_checkpoint(tmp_path, 1, "stage2", 2, final=False)
    _fake_checkpoint(tmp_path, 1, "stage2", 4, final=False, manifest=False)  # cut short before the manifest
    latest = ckpt.latest_complete(str(tmp_path))
    assert latest == ckpt.CheckpointInfo(good, 1, "stage2", 2, False)
    assert ckpt.stage_final(str(tmp_path), 0).step == 4 and ckpt.stage_final(str(tmp_path), 1) is None


def test_a_missing_or_truncated_file_makes_a_checkpoint_partial(tmp_path):
    older = _fake_checkpoint(tmp_path, 0, "stage1", 1, final=False)
    newer = _fake_checkpoint(tmp_path, 0, "stage1", 2, final=False)
    (Path(newer) / "rng/rank_00000.pt").write_bytes(b"r")  # truncated
    assert ckpt.latest_complete(str(tmp_path)).uri == older
    (Path(older) / "ds/mp_rank_00_model_states.pt").unlink()
    assert ckpt.latest_complete(str(tmp_path)) is None
    (Path(newer) / ckpt.MANIFEST).write_text("{not json")
    assert ckpt.list_complete(str(tmp_path)) == []


def test_manifest_is_refused_until_every_file_is_stored(tmp_path):
    folder = tmp_path / "00_stage1_step00000001"
    (folder / "ds").mkdir(parents=True)
    (folder / "ds/a.pt").write_bytes(b"12345")
    with pytest.raises(RuntimeError, match=r"1 files missing or of another size.*'ds/b.pt': \(3, None\)"):
        meta = {"stage_index": 0, "stage": "stage1", "step": 1, "final": False}
        ckpt.write_manifest(str(folder), {"ds/a.pt": {"size": 5, "sha256": ""}, "ds/b.pt": {"size": 3, "sha256": ""}},
                            meta)
    assert not (folder / ckpt.MANIFEST).exists()


def test_prune_keeps_stage_ends_and_the_newest_mid_stage_checkpoints(tmp_path):
    for step in (1, 2, 3):
        _fake_checkpoint(tmp_path, 0, "stage1", step, final=False)
    _fake_checkpoint(tmp_path, 0, "stage1", 4, final=True)
    for step in (1, 2):
        _fake_checkpoint(tmp_path, 1, "stage2", step, final=False)
    deleted = ckpt.prune(str(tmp_path), keep=1)
    assert sorted(Path(d).name for d in deleted) == ["00_stage1_step00000001", "00_stage1_step00000002",
                                                     "01_stage2_step00000001"]
    left = [(c.stage_index, c.step, c.final) for c in ckpt.list_complete(str(tmp_path))]
    assert left == [(0, 3, False), (0, 4, True), (1, 2, False)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00_stage1_step00000003", "00_stage1_step00000004",
                                                          "01_stage2_step00000002"]


def test_rng_roundtrip_reproduces_the_next_draws(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(3)
    ckpt.save_rng(tmp_path, rank=1)
    expected = (torch.rand(3), np.random.rand(2), random.random())
    torch.rand(5)
    ckpt.load_rng(tmp_path, rank=1)
    got = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
    with pytest.raises(FileNotFoundError, match="no RNG state for rank 0"):
        ckpt.load_rng(tmp_path, rank=0)


def test_weights_exist_only_at_stage_ends(tmp_path):
    mid = _fake_checkpoint(tmp_path, 0, "stage1", 1, final=False)
    with pytest.raises(FileNotFoundError, match="only checkpoints that end a stage have full weights"):
        ckpt.load_weights(mid)
    end = tmp_path / "end"
    end.mkdir()
    shared = torch.arange(6.0).view(2, 3)
    weights.save({"embed": shared, "head": shared, "w": torch.arange(3.0)}, end / ckpt.WEIGHTS)
    loaded = ckpt.load_weights(str(end))
    assert torch.equal(loaded["w"], torch.arange(3.0)) and torch.equal(loaded["head"], shared)
    assert loaded["head"].data_ptr() == loaded["embed"].data_ptr()  # tied weights stay tied
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    torch.save({"w": torch.arange(3.0)}, legacy / ckpt.LEGACY_WEIGHTS)  # written before safetensors
    assert ckpt.has_weights(str(legacy)) and torch.equal(ckpt.load_weights(str(legacy))["w"], torch.arange(3.0))


@pytest.mark.integration
def test_discovery_and_pruning_on_s3(s3_server, tmp_path):
    from vlsa.io import storage

    bucket = s3_server.make_bucket("train-checkpoint-unit")
    run = f"{bucket}/runs/r1"
    for step, manifest in ((1, True), (2, True), (3, False)):
        local = Path(_fake_checkpoint(tmp_path, 0, "stage1", step, final=False, manifest=manifest))
        storage.upload_dir(local, storage.join(run, local.name))
    latest = ckpt.latest_complete(run)
    assert latest.uri == f"{run}/00_stage1_step00000002" and latest.step == 2  # step 3 has no manifest
    assert ckpt.prune(run, keep=1) == [f"{run}/00_stage1_step00000001"]
    assert not any("step00000001" in f for f in storage.list_files(run))
    assert [c.step for c in ckpt.list_complete(run)] == [2]


def test_plan_continues_from_the_newest_complete_checkpoint(tmp_path):
    import vlsa
    from vlsa.config import ConfigError
    from vlsa.train.loop import Plan, make_plan

    cfg = vlsa.load_config("tiny", ["train.init_from=/pretrained/stage0"])
    run = str(tmp_path)
    assert make_plan(cfg, run) == Plan(0, None, "/pretrained/stage0")  # fresh run
    mid1 = _fake_checkpoint(tmp_path, 0, "stage1", 2, final=False)
    assert make_plan(cfg, run) == Plan(0, ckpt.CheckpointInfo(mid1, 0, "stage1", 2, False), "/pretrained/stage0")
    end1 = _fake_checkpoint(tmp_path, 0, "stage1", 4, final=True)
    assert make_plan(cfg, run) == Plan(1, None, end1)  # Stage II starts from Stage I's weights
    mid2 = _fake_checkpoint(tmp_path, 1, "stage2", 3, final=False)
    _fake_checkpoint(tmp_path, 1, "stage2", 5, final=True, manifest=False)  # partial: ignored
    assert make_plan(cfg, run) == Plan(1, ckpt.CheckpointInfo(mid2, 1, "stage2", 3, False), end1)
    end2 = _fake_checkpoint(tmp_path, 1, "stage2", 6, final=True)
    assert make_plan(cfg, run) == Plan(2, None, end2)  # nothing left to do
    renamed = vlsa.load_config("tiny", ["train.stages.1.name=finetune"])
    expected = r"checkpoint of stage 1 'stage2', but the config's stages are \['stage1', 'finetune'\]"
    with pytest.raises(ConfigError, match=expected):
        make_plan(renamed, run)


def test_prune_deletes_partial_folders_older_than_the_newest_complete_checkpoint(tmp_path):
    _fake_checkpoint(tmp_path, 0, "stage1", 1, final=False, manifest=False)  # a killed save, never completed
    _fake_checkpoint(tmp_path, 0, "stage1", 2, final=False)
    _fake_checkpoint(tmp_path, 0, "stage1", 3, final=False, manifest=False)  # newer: may still be uploading
    assert [Path(d).name for d in ckpt.prune(str(tmp_path), keep=2)] == ["00_stage1_step00000001"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00_stage1_step00000002", "00_stage1_step00000003"]


def test_resuming_a_stage_with_another_number_of_workers_is_refused_before_any_work(tmp_path):
    import vlsa
    from vlsa.config import ConfigError
    from vlsa.train.driver import check_resume, train

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"  # never created: the run is refused before MLflow
    cfg = vlsa.load_config("tiny", [f"run.storage_path={tmp_path}", "run.name=r", "run.num_workers=1",
                                    f"run.mlflow.tracking_uri={tracking}"])
    run = tmp_path / "r"
    end = _fake_checkpoint(run, 0, "stage1", 4, final=True)
    assert check_resume(cfg, str(run)).uri == end  # a stage end: any number of workers starts the next stage
    folder = run / ckpt.checkpoint_name(1, "stage2", 2)
    _fake_checkpoint(run, 1, "stage2", 2, final=False)
    (folder / ckpt.TRAINER_STATE).write_text(json.dumps({"step": 2, "world_size": 2}))
    ckpt.write_manifest(str(folder), ckpt.describe_files(folder),
                        {"stage_index": 1, "stage": "stage2", "step": 2, "final": False})
    expected = r"saved by 2 workers, but run.num_workers=1.*Resume with run.num_workers=2"
    with pytest.raises(ConfigError, match=expected):
        train(cfg)
    assert not (tmp_path / "mlflow.db").exists()  # refused before the MLflow run was opened


def test_a_ray_snapshot_naming_checkpoints_from_an_older_version_is_dropped(tmp_path):
    from vlsa.train.driver import RAY_SNAPSHOT, forget_ray_checkpoints

    assert not forget_ray_checkpoints(str(tmp_path))
    (tmp_path / RAY_SNAPSHOT).write_text(json.dumps({"checkpoint_results": [], "latest_checkpoint_result": None,
                                                     "current_report_index": 7}))
    assert not forget_ray_checkpoints(str(tmp_path)) and (tmp_path / RAY_SNAPSHOT).exists()  # names none: kept
    old = {"checkpoint_results": [{"checkpoint_dir_name": "00_stage1_step00000001"}], "current_report_index": 2}
    (tmp_path / RAY_SNAPSHOT).write_text(json.dumps(old))
    assert forget_ray_checkpoints(str(tmp_path)) and not (tmp_path / RAY_SNAPSHOT).exists()
    (tmp_path / RAY_SNAPSHOT).write_text(json.dumps(old)[:17])  # a driver killed while Ray wrote it
    assert forget_ray_checkpoints(str(tmp_path)) and not (tmp_path / RAY_SNAPSHOT).exists()
