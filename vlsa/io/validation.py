"""The validation manifest: what a one-time pass over a dataset checked, so training can trust it.

A dataset is validated once: by the labeling job (its ``manifest.json`` carries a ``validation``
section) or, for a stage without labels, by the Ray Data pass the training driver runs
(``vlsa.data.validate``). The section fingerprints what was checked: the data file (SHA-256 and
size), the image root, the decoding limits, the record count, the rejects by reason and the ids of
the records whose images failed. Training workers whose data file and image root match parse the
records (structure only) and leave out the rejected ids, so their start does not read any image.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from typing import Any

from vlsa.config import DecodeConfig
from vlsa.io.records import Record, RejectStats, parse_raw, validate_all
from vlsa.io import storage

SECTION = "validation"


class DataChanged(ValueError):
    """The data file, image root or decoding limits differ from those a validation manifest checked."""


def data_fingerprint(uri: str, data: bytes) -> dict[str, Any]:
    """What identifies a data file's content: SHA-256 and size (the URI is kept for messages)."""
    return {"uri": uri, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def validation_section(fingerprint: dict[str, Any], image_root: str, decode: DecodeConfig, stats: RejectStats,
                       rejected: dict[str, str]) -> dict[str, Any]:
    """The manifest section of a finished pass; ``rejected``: record id -> reason of image failures."""
    reasons = Counter(stats.rejected)
    reasons.update(rejected.values())
    return {
        "data": fingerprint,
        "image_root": image_root,
        "decode": dataclasses.asdict(decode),
        "records": stats.total,
        "accepted": stats.total - sum(reasons.values()),
        "rejects_by_reason": dict(sorted(reasons.items())),
        "rejected": dict(sorted(rejected.items())),
    }


def differences(section: dict[str, Any], fingerprint: dict[str, Any], image_root: str,
                decode: DecodeConfig) -> list[str]:
    """One line per checked input that differs from this run's, naming both values."""
    checked, problems = section["data"], []
    if (checked["sha256"], checked["bytes"]) != (fingerprint["sha256"], fingerprint["bytes"]):
        problems.append(f"data file {fingerprint['uri']} has sha256 {fingerprint['sha256'][:16]}… "
                        f"({fingerprint['bytes']} bytes), the validated file {checked['uri']} had "
                        f"{checked['sha256'][:16]}… ({checked['bytes']} bytes)")
    if section["image_root"] != image_root:
        problems.append(f"image root is {image_root!r}, the validated one was {section['image_root']!r}")
    if section["decode"] != dataclasses.asdict(decode):
        problems.append(f"label.decode is {dataclasses.asdict(decode)}, validation used {section['decode']}")
    return problems


def check_matches(section: dict[str, Any], fingerprint: dict[str, Any], image_root: str, decode: DecodeConfig,
                  where: str) -> None:
    """Raise ``DataChanged`` unless ``section`` checked exactly this data file, image root and decoding."""
    problems = differences(section, fingerprint, image_root, decode)
    if problems:
        raise DataChanged(f"the validation at {where} does not describe this data: " + "; ".join(problems))


def check_rejects(section: dict[str, Any], threshold: float, where: str) -> None:
    """Raise ``TooManyRejected`` when the validated rejected fraction passes ``threshold``."""
    stats = RejectStats(section["records"], Counter(section["rejects_by_reason"]))
    stats.check(threshold, where=where)


def read_section(uri: str) -> dict[str, Any]:
    """The ``validation`` section of a manifest file (a labeling manifest or the driver's pass)."""
    manifest = json.loads(storage.read_bytes(uri))
    if SECTION not in manifest:
        raise DataChanged(f"{uri} has no {SECTION!r} section (written by an older version): make it again")
    return manifest[SECTION]


def trusted_records(uri: str, image_root: str, decode: DecodeConfig, section: dict[str, Any], *,
                    allow_duplicate_ids: bool = False) -> tuple[list[Record], RejectStats]:
    """The records of ``uri`` that validation accepted, with the validation's counts.

    The file is read once and fingerprinted from the same bytes, so a file replaced after
    validation is an error rather than training on records nobody checked.
    """
    data = storage.read_bytes(uri)
    check_matches(section, data_fingerprint(uri, data), image_root, decode, where=uri)
    records, stats = validate_all(parse_raw(data, uri), allow_duplicate_ids, where=uri)
    rejected = section["rejected"]
    kept = [record for record in records if record.id not in rejected]
    for record in records:
        if record.id in rejected:
            stats.reject(rejected[record.id])
    return kept, stats

