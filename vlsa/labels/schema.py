"""The stored label layout (versioned), the manifest, and the check that labels fit a config.

Output folder (local or ``s3://``) written by ``ray_jobs/label.py``::

    spec.json                       what the labels are made from (written first; a resumed run must match)
    labels/shard-00000.parquet      one row per labeled image (columns below)
    rejects/shard-00000.parquet     one row per image that could not be labeled: id, image, reason, detail
    manifest.json                   written last: schema version, model identities, geometry, counts

Shard k holds records [k * rows_per_shard, (k + 1) * rows_per_shard) of the record order (records
without an image skipped), so names are deterministic and each record is in exactly one of the two
tables of its shard.

Label columns (schema version 2):

- ``id`` (string): record id; ``image`` (string): image path relative to the image root.
- ``width``, ``height`` (int32): size of the decoded image (after EXIF rotation).
- ``vq_indices`` (list<list<int32>>): 4 lists, the quarters upper-left, upper-right, lower-left,
  lower-right of the VQ-VAE latent grid, each ``vq_side`` x ``vq_side`` row-major. The VQ-VAE encodes
  the padded canvas (see ``vlsa.model.encoding``) resized to ``model.vq_image_size``; each index is
  the nearest codebook entry (Euclidean) to the encoder latent after ``quant_conv`` (Eq. 5).
- ``vq_side`` (int32).
- ``latent`` (binary): float32 ``latent_shape`` = [C, s, s], C-order: the VAE latent distribution's
  mode (its mean, for determinism) of the canvas resized to ``model.recon.image_size``, stored already
  shifted and scaled: ``(z - shift_factor) * scaling_factor`` with the VAE config's values (shift 0
  when the VAE has none). This is the ``recon_latent`` the model consumes.
- ``latent_shape`` (list<int32>).

No pixel targets: sample assembly recomputes X_Lo from the image it decodes anyway (measured cheaper
than storing and reading them, see ``docs/benchmarks.md``). Version 1 also stored ``pixels`` (X_Lo as
uint8, h x h x 3) and ``pixels_side``; its labels are otherwise the same and stay readable (those
columns are never read).

Model identity: a part loaded from ``path`` is named by its config and a SHA-256 of its weight
files (not by the path: a hub name and an ``s3://`` copy of the same weights are the same labels); a
part built from ``init`` by its init dict and the model seed. Training refuses labels whose schema version, VQ
identity, VAE identity or image sides differ from its config (``pixels_side``: the vision side the canvas is padded
to a multiple of).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa

from vlsa.config import ComponentConfig, Config
from vlsa.labels.compute import LabelGeometry
from vlsa.model.builder import content_identity

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
"""Schema versions this code reads: version 1 differs only by its stored pixel targets."""
ROW_GROUP_ROWS = 64
"""Rows per Parquet row group, the unit a reader fetches for one random-access lookup."""

LABELS_DIR = "labels"
REJECTS_DIR = "rejects"
MANIFEST = "manifest.json"
SPEC = "spec.json"

LABEL_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("vq_indices", pa.list_(pa.list_(pa.int32()))),
        ("vq_side", pa.int32()),
        ("latent", pa.binary()),
        ("latent_shape", pa.list_(pa.int32())),
    ],
    metadata={"vlsa_label_schema": str(SCHEMA_VERSION)},
)
LABEL_COLUMNS = tuple(LABEL_SCHEMA.names)
"""The columns a reader asks for (a version 1 shard's pixel columns are left unread)."""
REJECT_SCHEMA = pa.schema(
    [("id", pa.string()), ("image", pa.string()), ("reason", pa.string()), ("detail", pa.string())],
    metadata={"vlsa_label_schema": str(SCHEMA_VERSION)},
)


class LabelsMismatch(ValueError):
    """Labels that were made for another schema version, VQ-VAE, VAE or image geometry."""


def shard_name(index: int) -> str:
    """``shard-00042.parquet``."""
    return f"shard-{index:05d}.parquet"


def component_identity(part: ComponentConfig, seed: int, cache_dir: str) -> dict[str, Any]:
    """What a model part is: for one loaded from ``path``, its config and a fingerprint of its
    weights' content (so a hub name and an ``s3://`` copy of the same weights agree); for one built
    from ``init``, that dict and the seed."""
    if part.path:
        return content_identity(part, cache_dir)
    return {"init": json.loads(json.dumps(part.init, sort_keys=True)), "seed": seed}


def label_identity(cfg: Config) -> dict[str, Any]:
    """Everything in ``cfg`` the labels depend on; equal identities give identical labels."""
    geometry = LabelGeometry.from_config(cfg)
    return {
        "schema_version": SCHEMA_VERSION,
        "vq": component_identity(cfg.model.vq, cfg.model.seed, cfg.model.cache_dir),
        "vae": component_identity(cfg.model.recon.vae, cfg.model.seed, cfg.model.cache_dir),
        "vq_image_size": geometry.vq_image_size,
        "recon_image_size": geometry.recon_image_size,
        "pixels_side": geometry.vision_side,
    }


def identity_differences(found: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """One line per key whose values differ, naming both."""
    keys = sorted(set(found) | set(expected))
    return [_difference(key, found.get(key), expected.get(key)) for key in keys if found.get(key) != expected.get(key)]


def _difference(key: str, found: Any, expected: Any) -> str:
    if isinstance(found, dict) and isinstance(expected, dict):  # a model part: name only what differs
        inner = sorted(k for k in set(found) | set(expected) if found.get(k) != expected.get(k))
        found, expected = ({k: side.get(k) for k in inner} for side in (found, expected))
    return f"{key}: labels have {found!r}, config has {expected!r}"


def current_identity(found: dict[str, Any]) -> dict[str, Any]:
    """The identity of labels of a readable version as this version names it (a version 1 label set
    is this version's plus columns never read, so only its version number differs)."""
    if found.get("schema_version") in READABLE_VERSIONS:
        return found | {"schema_version": SCHEMA_VERSION}
    return found


def check_manifest(manifest: dict[str, Any], cfg: Config, where: str) -> None:
    """Raise ``LabelsMismatch`` unless the labels described by ``manifest`` fit ``cfg``."""
    found = manifest.get("identity", {})
    if found.get("schema_version") not in READABLE_VERSIONS:
        raise LabelsMismatch(
            f"labels at {where} have schema version {found.get('schema_version')!r}, this code reads "
            f"versions {list(READABLE_VERSIONS)}; make them again with python ray_jobs/label.py --data D "
            f"--image-root R --output NEW --config C"
        )
    problems = identity_differences(current_identity(found), label_identity(cfg))
    if problems:
        raise LabelsMismatch(f"labels at {where} were made for another config: " + "; ".join(problems))


def vq_array(row: dict[str, Any]) -> np.ndarray:
    """(4, vq_side, vq_side) int64 codebook indices of a label row."""
    side = row["vq_side"]
    return np.asarray(row["vq_indices"], dtype=np.int64).reshape(4, side, side)


def latent_array(row: dict[str, Any]) -> np.ndarray:
    """(C, s, s) float32 latent (shifted and scaled) of a label row."""
    return np.frombuffer(row["latent"], dtype=np.float32).reshape(row["latent_shape"])
