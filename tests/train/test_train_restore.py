"""Per-rank restore and checked loading: which files a rank fetches, digests against the manifest,
one download per node, and DeepSpeed files read with ``weights_only=True``."""

from __future__ import annotations

import os
import pickle
import threading
import time
from pathlib import Path

import pytest
import torch

from vlsa.train import checkpoint as ckpt
from vlsa.train import restore, safe_load

META = {"stage_index": 0, "stage": "stage1", "step": 1, "final": False}


def _engine(zero_stage: int):
    """A two-layer model in a DeepSpeed engine after one optimizer step (the test process is rank 0)."""
    from vlsa.train.loop import import_deepspeed

    deepspeed = import_deepspeed()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    config = {"train_batch_size": 2, "train_micro_batch_size_per_gpu": 2, "steps_per_print": 10**9,
              "zero_optimization": {"stage": zero_stage}}
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    engine.backward(engine(torch.randn(2, 4)).sum())
    engine.step()
    return engine


def _saved(engine, folder: Path) -> dict:
    engine.save_checkpoint(str(folder), tag=ckpt.DS_TAG, save_latest=False)
    ckpt.save_rng(folder, 0)
    (folder / ckpt.TRAINER_STATE).write_text('{"step": 1}')
    return ckpt.write_manifest(str(folder), ckpt.describe_files(folder), META)


def test_a_rank_loads_the_shared_files_and_only_its_own_shards():
    names = ["trainer_state.json", "zero_to_fp32.py", "model.safetensors", "rng/rank_00000.pt", "rng/rank_00001.pt",
             "ds/mp_rank_00_model_states.pt", "ds/zero_pp_rank_0_mp_rank_00_optim_states.pt",
             "ds/zero_pp_rank_1_mp_rank_00_optim_states.pt", "ds/bf16_zero_pp_rank_11_mp_rank_00_optim_states.pt",
             "ds/zero_pp_rank_1_mp_rank_00_model_states.pt", "ds/zero_pp_rank_10_mp_rank_00_model_states.pt"]
    manifest = {"files": {n: {"size": 1, "sha256": ""} for n in names}}
    assert restore.rank_files(manifest, 1) == [
        "ds/mp_rank_00_model_states.pt", "ds/zero_pp_rank_1_mp_rank_00_model_states.pt",
        "ds/zero_pp_rank_1_mp_rank_00_optim_states.pt", "rng/rank_00001.pt", "trainer_state.json"]
    assert restore.rank_files(manifest, 11) == [
        "ds/bf16_zero_pp_rank_11_mp_rank_00_optim_states.pt", "ds/mp_rank_00_model_states.pt", "trainer_state.json"]


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_deepspeed_checkpoints_load_weights_only(process_group, tmp_path, zero_stage):
    engine = _engine(zero_stage)
    manifest = _saved(engine, tmp_path)
    before = [p.detach().clone() for p in engine.module.parameters()]
    with torch.no_grad():
        for p in engine.module.parameters():
            p.ds_tensor.zero_() if hasattr(p, "ds_tensor") else p.zero_()
    fetched = restore.fetch(str(tmp_path), manifest, 0, tmp_path / "scratch")
    assert fetched.folder == tmp_path and fetched.downloaded == 0
    safe_load.load_checkpoint(engine, fetched.folder, ckpt.DS_TAG)
    if zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
            after = [p.detach().clone() for p in engine.module.parameters()]
    else:
        after = [p.detach().clone() for p in engine.module.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(after, before))


def test_a_changed_file_is_refused_before_loading(process_group, tmp_path):
    manifest = _saved(_engine(2), tmp_path)
    target = tmp_path / "ds/mp_rank_00_model_states.pt"
    data = bytearray(target.read_bytes())
    data[-30] ^= 0xFF  # same size, other content
    target.write_bytes(bytes(data))
    with pytest.raises(restore.CheckpointIntegrityError, match=r"ds/mp_rank_00_model_states.pt is \d+ bytes with "
                                                                r"SHA-256 \w+, but its manifest recorded"):
        restore.fetch(str(tmp_path), manifest, 0, tmp_path / "scratch")
    (tmp_path / "rng/rank_00000.pt").unlink()
    target.write_bytes(b"")
    with pytest.raises(restore.CheckpointIntegrityError):
        restore.fetch(str(tmp_path), manifest, 0, tmp_path / "scratch")


class _RunsCode:
    """What an attacker would put into a checkpoint file: unpickling it runs a command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_file_that_would_run_code_is_refused(process_group, tmp_path):
    engine = _engine(2)
    _saved(engine, tmp_path)
    marker = tmp_path / "pwned"
    with torch.serialization.safe_globals(safe_load.safe_globals()):
        state = torch.load(tmp_path / "ds/mp_rank_00_model_states.pt", weights_only=True)
    state["payload"] = _RunsCode(marker)
    torch.save(state, tmp_path / "ds/mp_rank_00_model_states.pt")
    # A writer of the bucket can rewrite the manifest as well: the digests then match, and only the
    # weights-only reader stands between the file and the training nodes.
    manifest = ckpt.write_manifest(str(tmp_path), ckpt.describe_files(tmp_path), META)
    fetched = restore.fetch(str(tmp_path), manifest, 0, tmp_path / "scratch")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        safe_load.load_checkpoint(engine, fetched.folder, ckpt.DS_TAG)
    assert not marker.exists()
    assert type(engine.checkpoint_engine).__name__ == "TorchCheckpointEngine"  # saving is left as it was


@pytest.mark.integration
def test_workers_of_a_node_download_each_file_once(s3_server, process_group, tmp_path):
    from vlsa.io import storage

    local = tmp_path / "local"
    manifest = _saved(_engine(2), local)
    uri = storage.join(s3_server.make_bucket("restore-once"), "run/00_stage1_step00000001")
    storage.upload_dir(local, uri)
    results: list[restore.Fetched] = []
    scratch = tmp_path / "scratch"
    threads = [threading.Thread(target=lambda: results.append(restore.fetch(uri, manifest, 0, scratch)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    share = sum(manifest["files"][n]["size"] for n in restore.rank_files(manifest, 0))
    assert sum(r.downloaded for r in results) == share  # each file fetched by one of them, reused by the others
    assert results[0].folder.parent == scratch / "restore"
    assert all(ckpt.sha256_file(results[0].folder / n) == manifest["files"][n]["sha256"] for n in results[0].files)
    assert not (results[0].folder / "zero_to_fp32.py").exists()  # not loaded on resume: not fetched
    # A tampered object in the bucket is refused and leaves no copy behind.
    bucket, key = storage.split_s3(storage.join(uri, ckpt.rng_file(0)))
    storage.s3_client().put_object(Bucket=bucket, Key=key, Body=b"x" * manifest["files"][ckpt.rng_file(0)]["size"])
    with pytest.raises(restore.CheckpointIntegrityError, match="rng/rank_00000.pt"):
        restore.fetch(uri, manifest, 0, tmp_path / "scratch2")
    assert not list((tmp_path / "scratch2").rglob("rank_00000.pt*"))


def test_a_save_returns_before_its_upload_and_counts_only_once_complete(process_group, tmp_path, monkeypatch):
    from vlsa.train import state
    from vlsa.train.step import SkipGuard

    real_upload, gate, uploading = state.storage.upload_dir, threading.Event(), threading.Event()

    def gated_upload(folder, uri, *args, **kwargs):  # the real upload, held until the test lets it go
        uploading.set()
        assert gate.wait(timeout=600)
        real_upload(folder, uri, *args, **kwargs)

    monkeypatch.setattr(state.storage, "upload_dir", gated_upload)
    reported: list[dict] = []
    monkeypatch.setattr(state, "_report", reported.append)
    engine = _engine(2)
    saver = state.Saver(tmp_path / "scratch", rank=0, world_size=1)
    run = tmp_path / "run"
    place = state.Place(str(run), 0, "stage1", 1)
    uri = saver.save(engine, place, state.Progress(1, SkipGuard(3)), {"epoch": 0}, final=False, keep=2,
                     metrics={"step": 1.0})
    assert uploading.wait(timeout=600) and reported == [{"step": 1.0}]  # training goes on during the upload
    assert ckpt.list_complete(str(run)) == []  # nothing counts before the manifest
    gate.set()
    saver.wait()
    (info,) = ckpt.list_complete(str(run))
    manifest = ckpt.read_json(uri, ckpt.MANIFEST)
    assert info.uri == uri and manifest["world_size"] == 1 and "rng/rank_00000.pt" in manifest["files"]
    assert all(ckpt.sha256_file(Path(uri, n)) == f["sha256"] for n, f in manifest["files"].items())
    assert not list((tmp_path / "scratch" / "save").iterdir())  # the local copy is gone once uploaded


def test_node_copies_of_other_checkpoints_are_cleared_once_stale(tmp_path):
    for name, age in (("current", 10 * 86400), ("recent", 60), ("stale", 2 * 86400)):
        (tmp_path / name / "ds").mkdir(parents=True)
        (tmp_path / name / "ds" / "mp_rank_00_model_states.pt").write_bytes(b"x")
        os.utime(tmp_path / name, (time.time() - age, time.time() - age))
    restore.clear_stale(tmp_path, keep="current")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "recent"]
