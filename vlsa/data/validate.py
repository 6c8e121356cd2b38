"""The one-time validation pass of a stage without labels, on Ray Data (the labeling job does it otherwise).

The driver parses the records (structure, ids), then read tasks read and safely decode every image
of a chunk of records in parallel; the result is a validation section (``vlsa.data.validation``)
written to one JSON file that the training workers trust. Ray is imported inside functions only.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

import numpy as np

from vlsa.config import DataConfig, DecodeConfig
from vlsa.data.records import Record, RecordRejected, parse_raw, validate_all
from vlsa.data.validation import SECTION, data_fingerprint, validation_section
from vlsa.io import storage

logger = logging.getLogger(__name__)
RECORDS_PER_TASK = 512


def check_record_images(record_id: str, images: list[str], root: str, decode: DecodeConfig) -> str | None:
    """The reason the first failing image of a record fails, or None when all read and decode."""
    from vlsa.data.assemble import load_image

    try:
        for rel in images:
            load_image(root, rel, decode)
    except RecordRejected as err:
        return err.reason
    return None


def check_batch(batch: dict[str, np.ndarray], *, root: str, decode: DecodeConfig) -> dict[str, np.ndarray]:
    """Ray Data step: rows {records (JSON of [id, images])} -> rows {rejected (JSON of {id: reason})}."""
    out = []
    for chunk in batch["records"]:
        rejected = {}
        for rid, images in json.loads(str(chunk)):
            reason = check_record_images(rid, images, root, decode)
            if reason is not None:
                rejected[rid] = reason
        out.append(json.dumps(rejected))
    return {"rejected": np.array(out, dtype=object)}


def _chunks(records: list[Record]) -> list[dict[str, str]]:
    with_images = [[r.id, r.images] for r in records if r.images]
    return [{"records": json.dumps(with_images[i : i + RECORDS_PER_TASK])}
            for i in range(0, len(with_images), RECORDS_PER_TASK)]


def check_images(records: list[Record], root: str, decode: DecodeConfig) -> dict[str, str]:
    """record id -> reason of every record with an image that does not read or decode (Ray Data tasks)."""
    import ray

    chunks = _chunks(records)
    if not chunks:
        return {}
    ds = ray.data.from_items(chunks, override_num_blocks=len(chunks))
    ds.context.enable_progress_bars = False
    ds = ds.map_batches(check_batch, batch_size=1, num_cpus=1, fn_kwargs={"root": root, "decode": decode})
    rejected: dict[str, str] = {}
    for row in ds.iter_rows():
        rejected.update(json.loads(row["rejected"]))
    return rejected


def run_validation(data: DataConfig, decode: DecodeConfig, output: str,
                   log: Callable[[str], None] = logger.info) -> dict[str, Any]:
    """Validate ``data`` once and write ``{"validation": section}`` to ``output``; returns the section."""
    raw = storage.read_bytes(data.train)
    records, stats = validate_all(parse_raw(raw, data.train), data.allow_duplicate_ids, where=data.train)
    log(f"validating {data.train}: {stats.total} records ({stats.total - stats.accepted} invalid), "
        f"reading their images under {data.image_root}")
    rejected = check_images(records, data.image_root, decode)
    section = validation_section(data_fingerprint(data.train, raw), data.image_root, decode, stats, rejected)
    storage.write_bytes(output, json.dumps({SECTION: section}, indent=1, sort_keys=True).encode())
    log(f"validated {data.train}: {section['accepted']} of {section['records']} records usable; "
        f"rejects {section['rejects_by_reason']}; manifest {output}")
    return section
