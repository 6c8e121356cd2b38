"""The output folder of a labeling run: shard plan, atomic Parquet writes, completion, spec, manifest.

A shard is complete when its ``labels/`` file exists. Files are written whole (a local temp file
renamed into place, or one S3 put), and a shard's rejects file is written before its labels file,
so a run killed at any point leaves only complete shards, and a later run redoes exactly the rest.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vlsa.io import storage
from vlsa.io.records import Record
from vlsa.labels.schema import (
    LABEL_SCHEMA,
    LABELS_DIR,
    MANIFEST,
    REJECTS_DIR,
    ROW_GROUP_ROWS,
    SCHEMA_VERSION,
    SPEC,
    LabelsMismatch,
    identity_differences,
    shard_name,
)

_SHARD_FILE = re.compile(r"^shard-(\d{5,})\.parquet$")


@dataclass(frozen=True)
class Item:
    """One image to label: its label id and its path relative to the image root."""

    id: str
    image: str


def label_key(record_id: str, index: int, count: int) -> str:
    """The label id of image ``index`` of a record with ``count`` images: the record id, or ``id#k``."""
    return record_id if count == 1 else f"{record_id}#{index}"


def items_of(records: list[Record]) -> list[Item]:
    """The images of ``records`` in record order; text-only records have none."""
    return [
        Item(label_key(record.id, k, len(record.images)), image)
        for record in records
        for k, image in enumerate(record.images)
    ]


def plan_shards(items: list[Item], rows_per_shard: int) -> list[list[Item]]:
    """Fixed consecutive slices of ``items``: shard k holds items [k*n, (k+1)*n)."""
    if rows_per_shard < 1:
        raise ValueError(f"label.rows_per_shard must be >= 1, got {rows_per_shard}")
    return [items[start : start + rows_per_shard] for start in range(0, len(items), rows_per_shard)]


def fingerprint(items: list[Item]) -> str:
    """A hash of the item order, ids and paths: a resumed run must label the same list."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(f"{item.id}\x00{item.image}\n".encode())
    return digest.hexdigest()


def labels_uri(output: str, shard: int) -> str:
    return storage.join(output, LABELS_DIR, shard_name(shard))


def rejects_uri(output: str, shard: int) -> str:
    return storage.join(output, REJECTS_DIR, shard_name(shard))


def write_table(table: pa.Table, uri: str) -> None:
    """Write ``table`` as one Parquet file, atomically (readers never see part of it)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=ROW_GROUP_ROWS)
    storage.write_bytes(uri, buffer.getvalue())


def open_parquet(uri: str) -> pq.ParquetFile:
    """A Parquet file (local or ``s3://``) opened for reading row groups and metadata."""
    fs, path = storage.pyarrow_filesystem(uri)
    return pq.ParquetFile(fs.open_input_file(path) if fs is not None else path)


def completed_shards(output: str) -> set[int]:
    """Indices of the shards whose labels file exists."""
    done = set()
    for uri in storage.list_files(storage.join(output, LABELS_DIR)):
        match = _SHARD_FILE.match(uri.rsplit("/", 1)[-1])
        if match:
            done.add(int(match.group(1)))
    return done


def ensure_spec(output: str, spec: dict[str, Any]) -> None:
    """Write ``spec.json``, or check that an existing one (from an earlier run) is the same."""
    uri = storage.join(output, SPEC)
    if storage.exists(uri):
        found = json.loads(storage.read_bytes(uri))
        problems = identity_differences(found, spec)
        if problems:
            raise LabelsMismatch(
                f"output {output} holds labels of another run (choose a new output or delete it): "
                + "; ".join(problems)
            )
        return
    storage.write_bytes(uri, json.dumps(spec, indent=2, sort_keys=True).encode())


def _shard_entry(output: str, shard: int, expected: int) -> dict[str, Any]:
    labels = open_parquet(labels_uri(output, shard))
    reasons = Counter(open_parquet(rejects_uri(output, shard)).read(columns=["reason"]).column("reason").to_pylist())
    rows, rejected = labels.metadata.num_rows, sum(reasons.values())
    if rows + rejected != expected:
        raise RuntimeError(
            f"shard {shard} of {output}: {rows} labels + {rejected} rejects != {expected} items planned; "
            f"delete {labels_uri(output, shard)} and run again"
        )
    return {"shard": shard_name(shard), "rows": rows, "rejects": rejected, "reasons": dict(reasons)}


def _geometry(output: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """vq_side and latent_shape, from the first stored row."""
    for index, entry in enumerate(entries):
        if entry["rows"]:
            first = open_parquet(labels_uri(output, index)).read_row_group(
                0, columns=["vq_side", "latent_shape"]
            )
            return {key: first.column(key)[0].as_py() for key in ("vq_side", "latent_shape")}
    return {}


def build_manifest(output: str, shards: list[list[Item]], spec: dict[str, Any], source: dict[str, Any]) -> dict:
    """The manifest of a finished output, with counts read back from the shard files."""
    with ThreadPoolExecutor(max_workers=8) as pool:  # many small reads on S3: overlap their latency
        entries = list(pool.map(lambda k: _shard_entry(output, k, len(shards[k])), range(len(shards))))
    reasons: Counter = Counter()
    for entry in entries:
        reasons.update(entry["reasons"])
    return {
        "schema_version": SCHEMA_VERSION,
        "identity": spec["identity"],
        "geometry": _geometry(output, entries),
        "source": source,
        "rows_per_shard": spec["rows_per_shard"],
        "precision": spec.get("precision", {"vae": "fp32", "vq": "fp32"}),
        "shards": entries,
        "rows": sum(e["rows"] for e in entries),
        "rejects": sum(e["rejects"] for e in entries),
        "rejects_by_reason": dict(sorted(reasons.items())),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def rejected_ids(output: str, shards: int) -> dict[str, str]:
    """label id -> reason of every image the run rejected, read back from the rejects files."""
    def read(shard: int) -> dict[str, str]:
        table = open_parquet(rejects_uri(output, shard)).read(columns=["id", "reason"])
        return dict(zip(table.column("id").to_pylist(), table.column("reason").to_pylist()))

    out: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=8) as pool:
        for part in pool.map(read, range(shards)):
            out.update(part)
    return out


def write_manifest(output: str, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` (last: its presence means the output is complete)."""
    storage.write_bytes(storage.join(output, MANIFEST), json.dumps(manifest, indent=2, sort_keys=True).encode())


def label_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Label rows (with ``id`` and ``image``) as a table of the stored schema."""
    return pa.Table.from_pylist(rows, schema=LABEL_SCHEMA)
