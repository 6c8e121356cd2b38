"""Saving and restoring a worker's whole training state through a checkpoint.

Saving blocks training only for the local write: every worker writes its DeepSpeed shard and RNG
state into its scratch folder (collective), then a background thread uploads the files into the
checkpoint folder and writes ``parts/rank_RRRRR.json`` listing them with sizes and SHA-256. Rank 0's
thread waits for every worker's part, checks that every file is stored, writes the manifest (last:
only then does the checkpoint count) and prunes old checkpoints. At most one upload is in flight: the
next save, and the end of a stage, wait for it. Ray Train is told about no checkpoint (metrics only),
so retention has one owner (:func:`vlsa.train.checkpoint.prune`) and Ray's run snapshot never names
a deleted folder.

Restoring fetches only this worker's files (:mod:`vlsa.train.restore`), checks them against the
manifest, and loads the model and optimizer shards, the LR scheduler, the data position, the skip
counters and, last, the RNG states, so the next step draws exactly the numbers it would have drawn
unbroken. DeepSpeed files are read with ``weights_only=True`` (:mod:`vlsa.train.safe_load`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlsa.io import storage
from vlsa.train import checkpoint as ckpt
from vlsa.train import restore as fetching
from vlsa.train import safe_load
from vlsa.train.step import SkipGuard

PARTS_WAIT_S = 6 * 3600.0
"""How long rank 0 waits for the other workers' uploads of one checkpoint."""


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


SCRATCH_ENV = "VLSA_SCRATCH_DIR"
"""A node's own scratch folder, when the cluster files set it (``run.scratch_dir`` takes precedence)."""


def scratch_root(scratch_dir: str) -> Path:
    """This machine's scratch folder (``run.scratch_dir``, else ``$VLSA_SCRATCH_DIR``, else the system temp
    folder), private to the user."""
    chosen = scratch_dir or os.environ.get(SCRATCH_ENV, "")
    root = Path(chosen).expanduser() if chosen else Path(tempfile.gettempdir()) / "vlsa-scratch"
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return root


def _attempt_token() -> str:
    """A token shared by all workers for one save, so that rank 0 ignores parts an earlier attempt left."""
    import torch.distributed as dist

    token = [uuid.uuid4().hex]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(token, src=0)
    return token[0]


def _write_local(engine, folder: Path, place: Place, progress: Progress, data_state: dict, rank: int,
                 world_size: int, final: bool) -> None:
    # Frozen parameters are left out: they come from the stage's starting weights on resume.
    engine.save_checkpoint(str(folder), tag=ckpt.DS_TAG, save_latest=False, exclude_frozen_parameters=True)
    if final:
        ckpt.save_weights(engine, folder, rank)  # full weights, written by rank 0
    ckpt.save_rng(folder, rank)
    if rank == 0:
        state = {"stage_index": place.stage_index, "stage": place.stage, "step": place.step,
                 "samples": progress.samples, "data": data_state, "skips": progress.skips.state_dict(),
                 "world_size": world_size, "final": final, **progress.extra}
        Path(folder, ckpt.TRAINER_STATE).write_text(json.dumps(state, indent=1))


class Saver:
    """One worker's checkpoint writer: the local write blocks training, the upload runs behind it."""

    def __init__(self, scratch: Path, rank: int, world_size: int) -> None:
        self.scratch, self.rank, self.world_size = scratch, rank, world_size
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, engine, place: Place, progress: Progress, data_state: dict, *, final: bool, keep: int,
             metrics: dict[str, float]) -> str:
        """Write a checkpoint of the current state (collective) and start its upload; returns its URI.

        A stage end waits for its upload: the next stage starts from its weights.
        """
        self.wait()
        token = _attempt_token()
        folder = self.scratch / "save" / f"{Path(place.uri).name}.rank{self.rank}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, mode=0o700)
        _write_local(engine, folder, place, progress, data_state, self.rank, self.world_size, final)
        self._thread = threading.Thread(target=self._upload, args=(folder, place, final, keep, token),
                                        name=f"vlsa-upload-{place.step}", daemon=True)
        self._thread.start()
        if final:
            self.wait()
            _barrier()  # rank 0's wait ends with the manifest: past this, every worker may read the weights
        _report(metrics)
        return place.uri

    def wait(self) -> None:
        """Block until the upload in flight is done; raise if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"uploading a checkpoint failed on rank {self.rank}: {error}") from error

    def _upload(self, folder: Path, place: Place, final: bool, keep: int, token: str) -> None:
        try:
            files = ckpt.describe_files(folder)
            storage.upload_dir(folder, place.uri)
            part = {"rank": self.rank, "token": token, "files": files}
            storage.write_bytes(storage.join(place.uri, _part_name(self.rank)), json.dumps(part).encode())
            shutil.rmtree(folder, ignore_errors=True)
            if self.rank == 0:
                expected = _wait_for_parts(place.uri, self.world_size, token)
                meta = {"stage_index": place.stage_index, "stage": place.stage, "step": place.step, "final": final,
                        "world_size": self.world_size}
                ckpt.write_manifest(place.uri, expected, meta)
                ckpt.prune(place.run, keep)
        except BaseException as error:  # surfaced by wait() in the training thread
            self._error = error


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _part_name(rank: int) -> str:
    return f"{ckpt.PARTS}/rank_{rank:05d}.json"


def _wait_for_parts(uri: str, world_size: int, token: str) -> dict[str, dict[str, Any]]:
    """Every worker's file list once all of this save's parts are stored."""
    deadline = time.monotonic() + PARTS_WAIT_S
    merged: dict[str, dict[str, Any]] = {}
    waiting = set(range(world_size))
    while waiting:
        for rank in sorted(waiting):
            try:
                part = json.loads(storage.read_bytes(storage.join(uri, _part_name(rank))))
            except (OSError, ValueError, KeyError) + _missing_errors():
                continue
            if part.get("token") == token:
                merged.update(part["files"])
                waiting.discard(rank)
        if waiting and time.monotonic() > deadline:
            raise TimeoutError(f"checkpoint {uri}: ranks {sorted(waiting)} did not store their files within "
                               f"{PARTS_WAIT_S:.0f} s")
        if waiting:
            time.sleep(0.5)
    return merged


def _missing_errors() -> tuple[type[BaseException], ...]:
    try:
        from botocore.exceptions import ClientError
    except ImportError:
        return ()
    return (ClientError,)


def _report(metrics: dict[str, float]) -> None:
    """Report the checkpoint's metrics to Ray Train (and Tune); the checkpoint itself stays ours."""
    import ray.train

    ray.train.report(metrics)


def restore(engine, info: ckpt.CheckpointInfo, *, rank: int, world_size: int,
            scratch: Path) -> tuple[dict[str, Any], fetching.Fetched]:
    """Load a checkpoint into ``engine`` and this worker's RNG; returns the trainer state to apply and
    what was fetched."""
    manifest = ckpt.read_json(info.uri, ckpt.MANIFEST)
    saved = int(manifest.get("world_size", world_size))
    if saved != world_size:
        raise RuntimeError(f"checkpoint {info.uri} was saved by {saved} workers; this run has "
                           f"{world_size}: resume with run.num_workers={saved}")
    fetched = fetching.fetch(info.uri, manifest, rank, scratch)
    state = json.loads((fetched.folder / ckpt.TRAINER_STATE).read_text())
    safe_load.load_checkpoint(engine, fetched.folder, ckpt.DS_TAG)
    ckpt.load_rng(fetched.folder, rank)  # last: nothing after it may draw random numbers before training
    fetching.release(fetched, rank)
    return state, fetched
