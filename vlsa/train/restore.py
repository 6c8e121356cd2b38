"""Per-rank restore: a worker fetches only the checkpoint files it loads, checked against the manifest.

A worker needs the shared trainer state, the model states (one shared file under ZeRO-1/2, its own
file under ZeRO-3), its own ZeRO optimizer shard and its own RNG state; never the other ranks'
shards nor the stage-end weights. From ``s3://`` the files land in a scratch folder (local NVMe on
a cluster) that the workers of one node share: a lock per file makes the first worker download it
and the others use that copy. Files download in parallel through one S3 client per process.

Every file a worker loads is checked against the size and SHA-256 that the manifest recorded at
save time, local folders included; a mismatch stops the resume with
:class:`CheckpointIntegrityError`. The check catches corruption and swapped files, not a writer
who rewrites the manifest too: what keeps such a writer from running code is that the files are
read with ``weights_only=True`` (:mod:`vlsa.train.safe_load`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from vlsa.io import storage
from vlsa.train import checkpoint as ckpt

PARALLEL_FILES = 8
"""Files downloaded at once by one worker (each in parallel parts as well)."""
STALE_COPY_S = 24 * 3600.0
"""A node's copy of another checkpoint untouched this long is deleted at the next restore."""
_SHARED = re.compile(r"^ds/mp_rank_\d+_model_states\.pt$")


class CheckpointIntegrityError(RuntimeError):
    """A checkpoint file differs from what its manifest recorded at save time."""


@dataclass(frozen=True)
class Fetched:
    """A rank's checkpoint files on local disk."""

    folder: Path
    """Local folder with the checkpoint layout (only this rank's files need be in it)."""
    files: tuple[str, ...]
    """The files this rank loads (relative paths)."""
    downloaded: int
    """Bytes this process downloaded (0 for a local checkpoint or files another worker fetched)."""


def rank_files(manifest: dict[str, Any], rank: int) -> list[str]:
    """The files of ``manifest`` that worker ``rank`` loads on resume."""
    own = re.compile(rf"^(ds/(bf16_)?zero_pp_rank_{rank}_mp_rank_\d+_(model|optim)_states\.pt"
                     rf"|{re.escape(ckpt.rng_file(rank))})$")
    return sorted(p for p in manifest["files"] if p == ckpt.TRAINER_STATE or _SHARED.match(p) or own.match(p))


def fetch(uri: str, manifest: dict[str, Any], rank: int, scratch: str | Path) -> Fetched:
    """This rank's files of checkpoint ``uri``, checked against ``manifest``."""
    names = rank_files(manifest, rank)
    if not storage.is_s3(uri):
        folder = Path(uri).expanduser()
        for name in names:
            check_file(folder / name, manifest["files"][name], name, uri)
        return Fetched(folder, tuple(names), 0)
    # The save time is part of the folder name: a re-saved checkpoint of the same name is another copy.
    key = hashlib.sha256(f"{uri}@{manifest.get('created')}".encode()).hexdigest()[:16]
    node = Path(scratch).expanduser() / "restore" / key
    node.mkdir(parents=True, exist_ok=True, mode=0o700)
    clear_stale(node.parent, keep=key)
    with ThreadPoolExecutor(max_workers=max(1, min(PARALLEL_FILES, len(names)))) as pool:
        sizes = list(pool.map(lambda n: _fetch_one(uri, n, manifest["files"][n], node), names))
    return Fetched(node, tuple(names), sum(sizes))


def release(fetched: Fetched, rank: int) -> None:
    """Delete the downloaded files only this rank uses (its shards); shared files stay for the node."""
    if fetched.folder.parent.name != "restore":  # a local checkpoint, read in place: never delete it
        return
    for name in fetched.files:
        if name != ckpt.TRAINER_STATE and not _SHARED.match(name):
            (fetched.folder / name).unlink(missing_ok=True)


def clear_stale(root: Path, keep: str, older_than_s: float = STALE_COPY_S) -> None:
    """Delete the node copies of other checkpoints that nobody touched for ``older_than_s`` seconds
    (the shared files a restore leaves for the node's other workers)."""
    cutoff = time.time() - older_than_s
    for folder in root.iterdir():
        if folder.name != keep and folder.is_dir() and folder.stat().st_mtime < cutoff:
            shutil.rmtree(folder, ignore_errors=True)


def _fetch_one(uri: str, name: str, expected: dict[str, Any], node: Path) -> int:
    """Download one file into the node's copy unless a worker of this node already did; bytes fetched."""
    from boto3.s3.transfer import TransferConfig

    target = node / name
    with _file_lock(node / ".locks" / f"{name.replace('/', '__')}.lock"):
        if target.is_file():  # placed by another worker of this node, after its check
            return 0
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.part")
        bucket, key = storage.split_s3(storage.join(uri, name))
        storage.s3_client().download_file(bucket, key, str(partial), Config=TransferConfig(max_concurrency=4))
        try:
            check_file(partial, expected, name, uri)
        except CheckpointIntegrityError:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, target)
    return int(expected["size"])


def check_file(path: Path, expected: dict[str, Any], name: str, uri: str) -> None:
    """Raise :class:`CheckpointIntegrityError` unless ``path`` has the manifest's size and SHA-256."""
    size = path.stat().st_size if path.is_file() else None
    digest = ckpt.sha256_file(path) if size == expected["size"] else None
    if size != expected["size"] or digest != expected["sha256"]:
        raise CheckpointIntegrityError(
            f"checkpoint {uri}: {name} is {size} bytes with SHA-256 {digest}, but its manifest recorded "
            f"{expected['size']} bytes with SHA-256 {expected['sha256']}; the file changed after it was saved. "
            "Refusing to resume from it: restore the file, or delete this checkpoint folder to resume from "
            "an older one."
        )


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
