"""Checkpoints on local disk or ``s3://``: layout, manifest, discovery, pruning, RNG state.

A checkpoint is one folder ``<storage_path>/<run name>/<NN>_<stage>_step<SSSSSSSS>/`` holding

- ``ds/``: the DeepSpeed checkpoint (model, ZeRO optimizer shards of every rank, LR scheduler);
- ``rng/rank_RRRRR.pt``: each worker's Python, NumPy and torch RNG states;
- ``trainer_state.json``: stage, step, data position, skip counters (written by rank 0);
- ``model.safetensors``: full model weights, only in the checkpoint that ends a stage (read whole, or
  under ZeRO-3 slice by slice, each rank its own; checkpoints written before held ``model.pt``);
- ``parts/rank_RRRRR.json``: the files one worker stored, written by it once they are all stored;
- ``manifest.json``: every file of every worker with its size and SHA-256, written last by rank 0.

Only folders with a manifest whose files are all present at their sizes count: a checkpoint cut
short by a crash is never loaded, whatever else is in it. Before a file is loaded its SHA-256 is
checked against the manifest (see :mod:`vlsa.train.restore`).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from vlsa.io import storage
from vlsa.model import weights

MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.json"
WEIGHTS = "model.safetensors"
LEGACY_WEIGHTS = "model.pt"  # stage-end weights of older runs: read (weights only), never written
PARTS = "parts"
DS_TAG = "ds"
FORMAT_VERSION = 2
_NAME = re.compile(r"^(\d{2})_(.+)_step(\d{8})$")


@dataclass(frozen=True)
class CheckpointInfo:
    """A complete checkpoint found in storage."""

    uri: str
    stage_index: int
    stage: str
    step: int
    final: bool

    @property
    def order(self) -> tuple[int, int]:
        return self.stage_index, self.step


def checkpoint_name(stage_index: int, stage: str, step: int) -> str:
    """Folder name of a checkpoint; names sort in training order."""
    return f"{stage_index:02d}_{stage}_step{step:08d}"


def run_uri(storage_path: str, run_name: str) -> str:
    """Folder (or ``s3://`` prefix) of a run: Ray Train's experiment folder."""
    return storage.join(storage_path, run_name)


# ------------------------------------------------------------------------------------------ listing


def _filesystem(uri: str):
    """(pyarrow filesystem, path) for a local folder or an ``s3://`` prefix."""
    from pyarrow import fs

    filesystem, path = storage.pyarrow_filesystem(uri)
    return (filesystem or fs.LocalFileSystem()), path


def file_sizes(uri: str) -> dict[str, int]:
    """Every file below ``uri`` as ``{relative path: size}`` (empty when ``uri`` does not exist)."""
    from pyarrow import fs

    filesystem, root = _filesystem(uri)
    infos = filesystem.get_file_info(fs.FileSelector(root, recursive=True, allow_not_found=True))
    prefix = root.rstrip("/") + "/"
    return {i.path[len(prefix):]: i.size for i in infos if i.type == fs.FileType.File and i.path.startswith(prefix)}


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a local file, read in 4 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def describe_files(folder: str | Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size", "sha256"}}`` of every file below a local folder but a manifest."""
    root = Path(folder)
    return {p.relative_to(root).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).as_posix() != MANIFEST}


def write_manifest(uri: str, expected: dict[str, dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """Check that every ``expected`` file is stored at its size, then write the manifest (last).

    ``expected`` maps relative paths to ``{"size", "sha256"}`` (the files every worker wrote);
    ``meta`` holds ``stage_index``, ``stage``, ``step`` and ``final``.
    """
    stored = file_sizes(uri)
    wrong = {p: (f["size"], stored.get(p)) for p, f in expected.items() if stored.get(p) != f["size"]}
    if wrong:
        sample = dict(list(wrong.items())[:5])
        raise RuntimeError(
            f"checkpoint {uri}: {len(wrong)} files missing or of another size (expected, stored): {sample}"
        )
    manifest = {"format": FORMAT_VERSION, **meta, "files": dict(sorted(expected.items())), "created": time.time()}
    storage.write_bytes(storage.join(uri, MANIFEST), json.dumps(manifest, indent=1).encode())
    return manifest


def _complete(folder: str, files: dict[str, int], manifest: dict[str, Any]) -> bool:
    return manifest.get("format") == FORMAT_VERSION and all(
        files.get(f"{folder}/{path}") == f["size"] for path, f in manifest.get("files", {}).items()
    )


def list_complete(run: str) -> list[CheckpointInfo]:
    """Complete checkpoints of a run, oldest first; folders without a valid manifest are ignored."""
    files = file_sizes(run)
    found = []
    for rel in files:
        folder, _, name = rel.partition("/")
        if name != MANIFEST or not _NAME.match(folder):
            continue
        try:
            manifest = json.loads(storage.read_bytes(storage.join(run, rel)))
        except (ValueError, OSError):
            continue  # unreadable manifest: treat as partial
        if _complete(folder, files, manifest):
            found.append(CheckpointInfo(storage.join(run, folder), int(manifest["stage_index"]), manifest["stage"],
                                        int(manifest["step"]), bool(manifest["final"])))
    return sorted(found, key=lambda c: c.order)


def latest_complete(run: str) -> CheckpointInfo | None:
    """The newest complete checkpoint of a run (by stage, then step), or None."""
    complete = list_complete(run)
    return complete[-1] if complete else None


def stage_final(run: str, stage_index: int) -> CheckpointInfo | None:
    """The complete checkpoint that ended stage ``stage_index``, or None."""
    return next((c for c in list_complete(run) if c.stage_index == stage_index and c.final), None)


def prune(run: str, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` mid-stage checkpoints of each stage; stage ends are kept.

    Folders without a manifest that are older than the newest complete checkpoint are deleted too:
    they were cut short (a killed worker or driver) and can never complete. The manifest goes first,
    so a deletion cut short leaves a folder that is never loaded. This is the only retention of a
    run: Ray Train is told about no checkpoint, so its run snapshot never names a deleted one.
    """
    complete = list_complete(run)
    doomed = [c.uri for c in _superseded([c for c in complete if not c.final], keep)]
    if complete:
        newest = complete[-1].order
        known = {c.uri for c in complete}
        for folder in {rel.partition("/")[0] for rel in file_sizes(run)}:
            match = _NAME.match(folder)
            uri = storage.join(run, folder)
            if match and uri not in known and (int(match[1]), int(match[3])) < newest:
                doomed.append(uri)
    for uri in doomed:
        filesystem, path = _filesystem(uri)
        if filesystem.get_file_info(f"{path}/{MANIFEST}").type != 0:  # 0: FileType.NotFound
            filesystem.delete_file(f"{path}/{MANIFEST}")
        filesystem.delete_dir(path)
    return sorted(doomed)


def _superseded(mid_stage: list[CheckpointInfo], keep: int) -> list[CheckpointInfo]:
    doomed: list[CheckpointInfo] = []
    for stage_index in {c.stage_index for c in mid_stage}:
        mine = [c for c in mid_stage if c.stage_index == stage_index]
        doomed += mine[: max(0, len(mine) - keep)]
    return doomed


# ------------------------------------------------------------------------------------------ reading


def read_json(uri: str, name: str) -> dict[str, Any]:
    """A JSON file of a checkpoint (``trainer_state.json``, ``manifest.json``)."""
    return json.loads(storage.read_bytes(storage.join(uri, name)))


def weights_file(uri: str) -> str | None:
    """The stage-end weights file of a checkpoint (safetensors, or an older run's ``model.pt``), or None."""
    for name in (WEIGHTS, LEGACY_WEIGHTS):
        if storage.exists(storage.join(uri, name)):
            return storage.join(uri, name)
    return None


def _weights_uri(uri: str) -> str:
    path = weights_file(uri)
    if path is None:
        raise FileNotFoundError(
            f"checkpoint {uri} holds no {WEIGHTS}: only checkpoints that end a stage have full weights"
        )
    return path


def has_weights(uri: str) -> bool:
    """Whether a checkpoint ends a stage (holds full model weights)."""
    return weights_file(uri) is not None


def load_weights(uri: str) -> dict[str, Any]:
    """The full model state dict saved at the end of a stage (``model.safetensors`` of the checkpoint).

    Neither format runs code on load: safetensors holds tensors only, and an older run's
    ``model.pt`` is read with ``weights_only=True``.
    """
    import io

    import torch

    path = _weights_uri(uri)
    if path.endswith(LEGACY_WEIGHTS):
        return torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu", weights_only=True)
    with local_weights(uri, tempfile.gettempdir()) as local:
        return weights.read(local)


@contextmanager
def local_weights(uri: str, scratch: str | Path) -> Iterator[Path]:
    """A local path of the checkpoint's ``model.safetensors`` (an ``s3://`` one is downloaded to
    ``scratch`` for the block's duration), for reading by slices."""
    path = _weights_uri(uri)
    if path.endswith(LEGACY_WEIGHTS):
        raise ValueError(f"checkpoint {uri} holds {LEGACY_WEIGHTS}, which cannot be read by slices; "
                         f"a ZeRO-3 stage starts from {WEIGHTS}")
    if not storage.is_s3(path):
        yield Path(path).expanduser()
        return
    Path(scratch).expanduser().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=Path(scratch).expanduser(), prefix="vlsa-weights-") as folder:
        bucket, key = storage.split_s3(path)
        local = Path(folder) / WEIGHTS
        storage.s3_client().download_file(bucket, key, str(local))
        yield local


def save_weights(engine, folder: str | Path, rank: int) -> None:
    """Write the engine's full model weights to ``folder/model.safetensors`` (collective under ZeRO-3:
    the partitions are gathered to rank 0 one layer at a time; rank 0 writes the file)."""
    if engine.zero_optimization_partition_weights():
        state = engine._zero3_consolidated_16bit_state_dict()  # what save_16bit_model writes, as a dict
    else:
        state = engine.module.state_dict()
    if rank == 0:
        weights.save(state, Path(folder) / WEIGHTS)


# ------------------------------------------------------------------------------------------ RNG


def rng_file(rank: int) -> str:
    return f"rng/rank_{rank:05d}.pt"


def capture_rng() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and every CUDA device) RNG states, as tensors and plain values
    only, so that the file loads with ``torch.load(..., weights_only=True)``."""
    import numpy as np
    import torch

    version, mt_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, torch.tensor(mt_state, dtype=torch.int64), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng`."""
    import numpy as np
    import torch

    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rng(folder: str | Path, rank: int) -> None:
    import torch

    path = Path(folder) / rng_file(rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(capture_rng(), path)


def load_rng(folder: str | Path, rank: int) -> None:
    import torch

    path = Path(folder) / rng_file(rank)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {folder} has no RNG state for rank {rank} ({rng_file(rank)}); "
                                "resume with the same number of workers it was saved with")
    restore_rng(torch.load(path, weights_only=True))
