"""Saving and restoring a worker's whole training state through a checkpoint.

Saving is collective: every worker writes its DeepSpeed shard and RNG state into a scratch folder
and uploads it into the checkpoint folder; the file lists are gathered on rank 0, which writes the
manifest only after every file is stored, then the checkpoint is reported to Ray Train. Restoring
loads the model and optimizer shards, the LR scheduler, the data position, the skip counters and,
last, the RNG states, so the next step draws exactly the numbers it would have drawn unbroken.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlsa.io import storage
from vlsa.train import checkpoint as ckpt
from vlsa.train.step import SkipGuard


@dataclass
class Progress:
    """Where a stage is: optimizer steps done and the skip counters."""

    step: int
    skips: SkipGuard
    samples: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Place:
    """Which checkpoint: the run folder, the stage and the step."""

    run: str
    stage_index: int
    stage: str
    step: int

    @property
    def uri(self) -> str:
        return storage.join(self.run, ckpt.checkpoint_name(self.stage_index, self.stage, self.step))


def local_sizes(folder: str | Path) -> dict[str, int]:
    """``{relative path: size}`` of every file below a local folder."""
    root = Path(folder)
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def _gather(sizes: dict[str, int]) -> dict[str, int]:
    """Every worker's file list merged (all workers call this)."""
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return dict(sizes)
    everyone: list[dict[str, int]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(everyone, sizes)
    merged: dict[str, int] = {}
    for part in everyone:
        merged.update(part)
    return merged


def _write_local(engine, folder: str, place: Place, progress: Progress, data_state: dict, rank: int,
                 world_size: int, final: bool) -> None:
    # Frozen parameters are left out: they come from the stage's starting weights on resume.
    engine.save_checkpoint(folder, tag=ckpt.DS_TAG, save_latest=False, exclude_frozen_parameters=True)
    if final:
        ckpt.save_weights(engine, folder, rank)  # full weights, written by rank 0
    ckpt.save_rng(folder, rank)
    if rank == 0:
        state = {"stage_index": place.stage_index, "stage": place.stage, "step": place.step,
                 "samples": progress.samples, "data": data_state, "skips": progress.skips.state_dict(),
                 "world_size": world_size, "final": final, **progress.extra}
        Path(folder, ckpt.TRAINER_STATE).write_text(json.dumps(state, indent=1))


def save(engine, place: Place, progress: Progress, data_state: dict, *, rank: int, world_size: int,
         final: bool, keep: int, metrics: dict[str, float]) -> str:
    """Write a complete checkpoint of the current state (collective); returns its URI."""
    with tempfile.TemporaryDirectory(prefix="vlsa-ckpt-") as folder:
        _write_local(engine, folder, place, progress, data_state, rank, world_size, final)
        sizes = local_sizes(folder)
        storage.upload_dir(folder, place.uri)
    expected = _gather(sizes)  # also a barrier: every worker's files are stored past this point
    if rank == 0:
        meta = {"stage_index": place.stage_index, "stage": place.stage, "step": place.step, "final": final}
        ckpt.write_manifest(place.uri, expected, meta)
        ckpt.prune(place.run, keep)
    _report(place, metrics, rank)
    return place.uri


def _report(place: Place, metrics: dict[str, float], rank: int) -> None:
    """Tell Ray Train about the stored checkpoint (no second upload); local mode has no storage to name."""
    import ray.train
    from ray.train import Checkpoint, CheckpointUploadMode

    name = ckpt.checkpoint_name(place.stage_index, place.stage, place.step)
    context = ray.train.get_context()
    try:
        run_storage = context.get_storage()
    except NotImplementedError:  # ScalingConfig(num_workers=0): in-process, nothing to register
        ray.train.report(metrics)
        return
    checkpoint = None
    if rank == 0:
        checkpoint = Checkpoint(path=run_storage.build_checkpoint_path_from_name(name),
                                filesystem=run_storage.storage_filesystem)
    ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name,
                     checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)


def restore(engine, info: ckpt.CheckpointInfo, *, rank: int, world_size: int) -> dict[str, Any]:
    """Load a checkpoint into ``engine`` and this worker's RNG; returns the trainer state to apply."""
    with tempfile.TemporaryDirectory(prefix="vlsa-resume-") as scratch:
        folder = ckpt.local_folder(info.uri, scratch)
        state = json.loads(Path(folder, ckpt.TRAINER_STATE).read_text())
        if state["world_size"] != world_size:
            raise RuntimeError(f"checkpoint {info.uri} was saved by {state['world_size']} workers; this run has "
                               f"{world_size}: resume with run.num_workers={state['world_size']}")
        path, _ = engine.load_checkpoint(str(folder), tag=ckpt.DS_TAG, load_module_strict=False,
                                         load_optimizer_states=True, load_lr_scheduler_states=True)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {info.uri} (tag {ckpt.DS_TAG})")
        ckpt.load_rng(folder, rank)  # last: nothing after it may draw random numbers before training
    return state
