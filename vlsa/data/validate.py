"""The one-time validation pass of a stage without labels, on Ray Data (the labeling job does it otherwise).

The driver parses the records (structure, ids), then read tasks read and safely decode every image
of a chunk of records in parallel; the result is a validation section (``vlsa.io.validation``)
written to one JSON file that the training workers trust. Ray is imported inside functions only.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

import numpy as np

from vlsa.config import DataConfig, DecodeConfig
from vlsa.io.records import Record, RecordRejected, parse_raw, validate_all
from vlsa.io.validation import SECTION, data_fingerprint, validation_section
from vlsa.io import storage
from vlsa.data.assemble import load_image

logger = logging.getLogger(__name__)
PATHS_PER_TASK = 512


def check_paths(paths: list[str], root: str, decode: DecodeConfig) -> dict[str, str]:
    """path -> reason of every image of ``paths`` that does not read or decode."""
    rejected = {}
    for rel in paths:
        try:
            load_image(root, rel, decode)
        except RecordRejected as err:
            rejected[rel] = err.reason
    return rejected


def check_batch(batch: dict[str, np.ndarray], *, root: str, decode: DecodeConfig) -> dict[str, np.ndarray]:
    """Ray Data step: rows {paths (JSON list)} -> rows {rejected (JSON of {path: reason})}."""
    out = [json.dumps(check_paths(json.loads(str(chunk)), root, decode)) for chunk in batch["paths"]]
    return {"rejected": np.array(out, dtype=object)}


def check_images(records: list[Record], root: str, decode: DecodeConfig, use_ray: bool = True) -> dict[str, str]:
    """record id -> reason of every record with an image that does not read or decode.

    Each distinct path is read once (LLaVA-665K refers to many images from several records), by
    Ray Data tasks of ``PATHS_PER_TASK`` paths (``use_ray`` False: in this process, for small sets).
    """
    paths = sorted({rel for record in records for rel in record.images})
    if not paths:
        return {}
    if not use_ray:
        return _record_reasons(records, check_paths(paths, root, decode))
    import ray

    chunks = [{"paths": json.dumps(paths[i : i + PATHS_PER_TASK])} for i in range(0, len(paths), PATHS_PER_TASK)]
    ds = ray.data.from_items(chunks, override_num_blocks=len(chunks))
    ds.context.enable_progress_bars = False  # the validation logs its own start and result
    ds.context.print_on_execution_start = False
    ds = ds.map_batches(check_batch, batch_size=1, num_cpus=1, fn_kwargs={"root": root, "decode": decode})
    bad: dict[str, str] = {}
    for row in ds.iter_rows():
        bad.update(json.loads(row["rejected"]))
    return _record_reasons(records, bad)


def _record_reasons(records: list[Record], bad: dict[str, str]) -> dict[str, str]:
    """record id -> reason of its first failing image."""
    out = {}
    for record in records:
        reason = next((bad[rel] for rel in record.images if rel in bad), None)
        if reason is not None:
            out[record.id] = reason
    return out


def run_validation(data: DataConfig, decode: DecodeConfig, output: str,
                   log: Callable[[str], None] = logger.info, use_ray: bool = True) -> dict[str, Any]:
    """Validate ``data`` once and write ``{"validation": section}`` to ``output``; returns the section."""
    raw = storage.read_bytes(data.train)
    records, stats = validate_all(parse_raw(raw, data.train), data.allow_duplicate_ids, where=data.train)
    log(f"validating {data.train}: {stats.total} records ({stats.total - stats.accepted} invalid), "
        f"reading their images under {data.image_root}")
    rejected = check_images(records, data.image_root, decode, use_ray)
    section = validation_section(data_fingerprint(data.train, raw), data.image_root, decode, stats, rejected)
    storage.write_bytes(output, json.dumps({SECTION: section}, indent=1, sort_keys=True).encode())
    log(f"validated {data.train}: {section['accepted']} of {section['records']} records usable; "
        f"rejects {section['rejects_by_reason']}; manifest {output}")
    return section
