"""The work of one shard, as the labeling job's Ray tasks and actors run it (plain Python, no Ray).

A read task turns a shard's items into a ``DecodedShard``: each image is read and decoded with the
shared safe decoder and reduced to fixed-size uint8 arrays, and every failure is caught per image
into the shard's rejects, so one bad file costs only its own row. The decoded shard travels to a
labeling actor as one packed row (``pack``), so a shard is never split between actors and its
output file names stay deterministic. The actor runs the models and has the shard's files written
off the models' path (``vlsa.labels.writer``).
"""

from __future__ import annotations

import io
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlsa.config import DecodeConfig, config_from_dict
from vlsa.io import storage
from vlsa.io.image import ImageRejected, decode_image
from vlsa.io.records import RecordRejected, read_image_bytes, safe_relative_path
from vlsa.labels.compute import LabelComputer, LabelGeometry, PreparedImage, prepare
from vlsa.labels.shards import Item
from vlsa.labels.writer import ShardWriter

SUMMARY_KEYS = ("shard", "rows", "rejects", "reasons", "seconds", "model_seconds", "write_seconds", "decode_seconds",
                "device")


@dataclass
class DecodedShard:
    """A shard after decoding: the images ready for the models and the rejected items."""

    shard: int
    items: list[Item] = field(default_factory=list)
    prepared: list[PreparedImage] = field(default_factory=list)
    rejects: list[tuple[Item, str, str]] = field(default_factory=list)
    """(item, reason, detail) per image that could not be used."""
    decode_seconds: float = 0.0


class ImageReader:
    """Reads image bytes below a local folder or an ``s3://`` prefix (one S3 client per reader)."""

    def __init__(self, root: str, max_bytes: int | None = None) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.fs, self.base = storage.pyarrow_filesystem(root) if storage.is_s3(root) else (None, "")

    def read(self, rel: str) -> bytes:
        """The bytes of image ``rel``; ``RecordRejected`` for a bad path, a missing/unreadable file, or one
        over ``max_bytes`` (checked from the object's size before it is read)."""
        if self.fs is None:
            return read_image_bytes(self.root, rel, self.max_bytes)  # also refuses symlinks that leave the root
        path = f"{self.base}/{safe_relative_path(rel)}"
        try:
            with self.fs.open_input_file(path) as handle:  # opening asks S3 for the size; no byte is read yet
                if self.max_bytes is None:
                    return handle.read()
                storage.check_size(f"s3://{path}", handle.size(), self.max_bytes)
                return handle.read(self.max_bytes + 1)
        except storage.ReadRefused as err:
            raise RecordRejected(f"image_{err.reason}", err.detail) from None
        except Exception as err:  # noqa: BLE001 - any storage failure is one rejected image
            raise RecordRejected("image_missing", f"image s3://{path}: {type(err).__name__}: {err}") from None


def decode_shard(
    shard: int, items: list[Item], reader: ImageReader, decode: DecodeConfig, geometry: LabelGeometry
) -> DecodedShard:
    """Read, decode and prepare every item of a shard, catching failures per image."""
    started = time.perf_counter()
    out = DecodedShard(shard)
    for item in items:
        try:
            image = decode_image(reader.read(item.image), decode)
            out.prepared.append(prepare(image, geometry))
            out.items.append(item)
        except (ImageRejected, RecordRejected) as err:
            out.rejects.append((item, err.reason, err.detail))
        except Exception as err:  # noqa: BLE001 - an unexpected failure still costs only this image
            out.rejects.append((item, "prepare_failed", f"{type(err).__name__}: {err}"))
    out.decode_seconds = time.perf_counter() - started
    return out


def pack(decoded: DecodedShard, geometry: LabelGeometry) -> bytes:
    """A decoded shard as one ``.npz`` blob (plain arrays only, no pickle)."""
    prep = decoded.prepared

    def stack(name: str, side: int) -> np.ndarray:
        return np.stack([getattr(p, name) for p in prep]) if prep else np.zeros((0, side, side, 3), np.uint8)

    buffer = io.BytesIO()
    np.savez(
        buffer,
        meta=np.array(json.dumps({
            "shard": decoded.shard,
            "items": [[i.id, i.image] for i in decoded.items],
            "sizes": [[p.width, p.height] for p in prep],
            "rejects": [[i.id, i.image, reason, detail] for i, reason, detail in decoded.rejects],
            "decode_seconds": decoded.decode_seconds,
        })),
        vq_rgb=stack("vq_rgb", geometry.vq_image_size),  # (N, S_vq, S_vq, 3)
        vae_rgb=stack("vae_rgb", geometry.recon_image_size),  # (N, S_rec, S_rec, 3)
    )
    return buffer.getvalue()


def unpack(blob: bytes) -> DecodedShard:
    """The inverse of ``pack``."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        vq, vae = data["vq_rgb"], data["vae_rgb"]
    prepared = [PreparedImage(w, h, vq[i], vae[i]) for i, (w, h) in enumerate(meta["sizes"])]
    return DecodedShard(
        shard=meta["shard"],
        items=[Item(*pair) for pair in meta["items"]],
        prepared=prepared,
        rejects=[(Item(rid, image), reason, detail) for rid, image, reason, detail in meta["rejects"]],
        decode_seconds=meta["decode_seconds"],
    )


def decode_batch(batch: dict[str, np.ndarray], *, root: str, decode: DecodeConfig, geometry: LabelGeometry) -> dict:
    """Ray Data read step: rows {shard, items (JSON)} -> rows {shard, payload (packed shard)}."""
    reader = ImageReader(root, decode.max_bytes)
    payloads = []
    for shard, items_json in zip(batch["shard"], batch["items"]):
        items = [Item(*pair) for pair in json.loads(str(items_json))]
        payloads.append(pack(decode_shard(int(shard), items, reader, decode, geometry), geometry))
    return {"shard": np.asarray(batch["shard"]), "payload": np.array(payloads, dtype=object)}


class ShardLabeler:
    """Ray Data actor: holds the VQ-VAE and VAE, labels packed shards and has their files written.

    Calls may run concurrently (the pipeline allows ``1 + label.write_ahead`` per actor): the models
    serve one call at a time, and while one call waits for its shard's upload (``ShardWriter``) the
    next labels its shard, so the accelerator does not idle during uploads. A call returns, and so
    reports its shard done, only after that shard's files are written.
    """

    def __init__(self, cfg: dict[str, Any], output: str, device: str = "cpu", threads: int = 1) -> None:
        import torch

        torch.set_num_threads(max(1, threads))  # stay within the CPUs the actor reserved
        config = config_from_dict(cfg)
        self.computer = LabelComputer(config, device=device)
        self.output = output
        self.writer = ShardWriter(output, max_pending=config.label.write_ahead)
        self._models = threading.Lock()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Rows {shard, payload} -> one summary row per shard (see ``SUMMARY_KEYS``)."""
        summaries = [self.label_shard(unpack(bytes(blob))) for blob in batch["payload"]]
        return {key: np.array([s[key] for s in summaries]) for key in SUMMARY_KEYS}

    def label_shard(self, decoded: DecodedShard) -> dict[str, Any]:
        """Label one decoded shard, queue its files (rejects, then labels: the completion mark), wait for them."""
        started = time.perf_counter()
        with self._models:  # one model call at a time: the device's memory holds one batch
            model_before = self.computer.model_seconds
            rows = self.computer.compute(decoded.prepared)
            model_seconds = self.computer.model_seconds - model_before
        for row, item in zip(rows, decoded.items):
            row.update(id=item.id, image=item.image)
        rejects = [
            {"id": i.id, "image": i.image, "reason": reason, "detail": detail} for i, reason, detail in decoded.rejects
        ]
        write_seconds = self.writer.submit(decoded.shard, rows, rejects).result()  # drained before the report
        reasons: dict[str, int] = {}
        for _, reason, _ in decoded.rejects:
            reasons[reason] = reasons.get(reason, 0) + 1
        return {
            "shard": decoded.shard,
            "rows": len(rows),
            "rejects": len(rejects),
            "reasons": json.dumps(reasons, sort_keys=True),
            "seconds": time.perf_counter() - started,
            "model_seconds": model_seconds,
            "write_seconds": write_seconds,
            "decode_seconds": decoded.decode_seconds,
            "device": self.computer.device.type,
        }
