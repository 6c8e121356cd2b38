"""LLaVA-format records: reading, validation and image-path resolution.

Accepted inputs are the formats users already have: the LLaVA-558K pretrain JSON, the LLaVA-665K /
LLaVA-NeXT-790K instruction JSON (a list of records), or JSONL (one record a line), from a local
path or an ``s3://`` URI. A record is ``{"id", "image"?, "conversations": [{"from", "value"}, ...]}``;
``image`` is one relative path or a list of them, and text-only records have none. Every record is
validated before use; an invalid one becomes a ``RecordRejected`` with a short stable reason that
``RejectStats`` counts, so one bad line never stops an epoch, while too many stop the run.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from vlsa.io import storage
from vlsa.tokens import IMAGE_TOKEN

USER, ASSISTANT = "user", "assistant"
_DRIVE = re.compile(r"^[A-Za-z]:")
_ROLES = {"human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT}
# A record file is parsed whole in memory; the largest public LLaVA instruction file is about 1 GiB.
MAX_RECORD_FILE_BYTES = 4 * 1024**3


class RecordRejected(ValueError):
    """A record that cannot be used; ``reason`` is a short stable slug, ``detail`` names the field and values."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class TooManyRejected(RuntimeError):
    """The rejected fraction of a dataset passed ``data.reject_threshold``."""


class DuplicateRecordId(ValueError):
    """Two records share an id (labels and checkpoints' data positions are keyed by id)."""


@dataclass(frozen=True)
class Turn:
    """One conversation turn; ``ssft`` marks inserted cognition-alignment turns."""

    role: str
    content: str
    ssft: bool = False


@dataclass
class Record:
    """A validated record: id, image paths (relative to the image root) and alternating turns."""

    id: str
    images: list[str]
    turns: list[Turn]

    @property
    def num_pairs(self) -> int:
        return len(self.turns) // 2


@dataclass
class RejectStats:
    """Counts of seen and rejected records, by reason."""

    total: int = 0
    rejected: Counter = field(default_factory=Counter)

    @property
    def accepted(self) -> int:
        return self.total - sum(self.rejected.values())

    def add(self, reason: str | None) -> None:
        """Count one record; ``reason`` None means accepted."""
        self.total += 1
        if reason is not None:
            self.rejected[reason] += 1

    def reject(self, reason: str) -> None:
        """Turn one already-counted accepted record into a rejected one (a later check failed)."""
        self.rejected[reason] += 1

    def merge(self, other: "RejectStats") -> None:
        self.total += other.total
        self.rejected.update(other.rejected)

    def fraction(self) -> float:
        return sum(self.rejected.values()) / self.total if self.total else 0.0

    def check(self, threshold: float, where: str = "data") -> None:
        """Raise ``TooManyRejected`` when the rejected fraction passes ``threshold``."""
        if self.fraction() > threshold:
            raise TooManyRejected(
                f"{where}: {sum(self.rejected.values())} of {self.total} records rejected "
                f"({self.fraction():.1%} > data.reject_threshold {threshold:.1%}); by reason: {dict(self.rejected)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "accepted": self.accepted, "rejected": dict(sorted(self.rejected.items()))}


# ------------------------------------------------------------------------------------------ reading


def read_raw(uri: str, max_bytes: int = MAX_RECORD_FILE_BYTES) -> Iterator[tuple[int, Any]]:
    """(index, raw record) pairs of a JSON list or JSONL file (local or ``s3://``); a file that is not a
    regular file or is larger than ``max_bytes`` is refused before it is read."""
    try:
        data = storage.read_bytes(uri, max_bytes=max_bytes)
    except storage.ReadRefused as err:
        raise ValueError(f"record file {uri}: {err}") from None
    yield from parse_raw(data, uri)


def parse_raw(data: bytes, uri: str = "data") -> Iterator[tuple[int, Any]]:
    """(index, raw record) pairs of the bytes of a JSON list or JSONL file read from ``uri``.

    A JSONL line that is not valid JSON is yielded as a ``RecordRejected`` for the validator to
    count; a JSON list file that does not parse is an error of the whole file.
    """
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark
        data = data[3:]
    if data.lstrip().startswith(b"["):
        try:
            records = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{uri}: not a valid JSON list: {err}") from None
        yield from enumerate(records)
        return
    index = 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            yield index, json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            yield index, RecordRejected("bad_json", f"line {index + 1}: {err}")
        index += 1


def load_records(uri: str, allow_duplicate_ids: bool = False,
                 max_bytes: int = MAX_RECORD_FILE_BYTES) -> tuple[list[Record], RejectStats]:
    """Read and validate every record of a file; invalid ones are counted, not raised.

    A repeated id is a ``DuplicateRecordId`` error unless ``allow_duplicate_ids`` (then the later
    records with that id are counted as ``duplicate_id`` rejects).
    """
    return validate_all(read_raw(uri, max_bytes), allow_duplicate_ids, where=uri)


def validate_all(raw: Iterable[tuple[int, Any]], allow_duplicate_ids: bool = False,
                 where: str = "data") -> tuple[list[Record], RejectStats]:
    """Validate (index, raw) pairs: the accepted records and the counts (see ``load_records``)."""
    records, stats, seen = [], RejectStats(), {}
    for index, item in raw:
        try:
            if isinstance(item, RecordRejected):
                raise item
            record = validate_record(item, index)
            if record.id in seen:
                _duplicate(record.id, seen[record.id], index, allow_duplicate_ids, where)
            seen[record.id] = index
        except RecordRejected as err:
            stats.add(err.reason)
            continue
        stats.add(None)
        records.append(record)
    return records, stats


def _duplicate(rid: str, first: int, index: int, allow: bool, where: str) -> None:
    detail = f"record {index}: id {rid!r} is also the id of record {first}"
    if not allow:
        raise DuplicateRecordId(
            f"{where}: {detail}; record ids must be unique (labels are looked up by id). "
            f"Fix the ids, or set data.allow_duplicate_ids=true to skip the later records"
        )
    raise RecordRejected("duplicate_id", detail)


# --------------------------------------------------------------------------------------- validation


def validate_record(raw: Any, index: int = 0) -> Record:
    """A ``Record`` from one raw LLaVA record, or ``RecordRejected`` naming the field and the values."""
    if not isinstance(raw, dict):
        raise RecordRejected("not_an_object", f"record {index}: expected an object, got {type(raw).__name__}")
    for key in ("id", "conversations"):
        if key not in raw:
            raise RecordRejected("missing_key", f"record {index}: no {key!r} (keys: {sorted(raw)})")
    if isinstance(raw["id"], bool) or not isinstance(raw["id"], (str, int)) or str(raw["id"]) == "":
        raise RecordRejected("bad_id", f"record {index}: id must be a non-empty string or int, got {raw['id']!r}")
    rid = str(raw["id"])
    images = _images(raw.get("image"), rid)
    turns = _turns(raw["conversations"], rid)
    placeholders = sum(t.content.count(IMAGE_TOKEN) for t in turns)
    if placeholders != len(images):
        raise RecordRejected(
            "placeholder_mismatch", f"record {rid}: {placeholders} {IMAGE_TOKEN} placeholders, {len(images)} images"
        )
    return Record(id=rid, images=images, turns=turns)


def _images(value: Any, rid: str) -> list[str]:
    if value is None:
        return []
    paths = value if isinstance(value, list) else [value]
    if not paths or not all(isinstance(p, str) and p.strip() for p in paths):
        raise RecordRejected("bad_image_field", f"record {rid}: image must be a path or a list of paths, got {value!r}")
    return [safe_relative_path(p, rid) for p in paths]


def _turns(value: Any, rid: str) -> list[Turn]:
    if not isinstance(value, list) or not value:
        raise RecordRejected(
            "bad_conversations", f"record {rid}: conversations must be a non-empty list, got {value!r}"
        )
    turns = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or "from" not in item or "value" not in item:
            raise RecordRejected("missing_key", f"record {rid}: turn {i} needs 'from' and 'value', got {item!r}")
        role = _ROLES.get(item["from"]) if isinstance(item["from"], str) else None
        if role is None:
            raise RecordRejected("bad_role", f"record {rid}: turn {i} from={item['from']!r}; known: {sorted(_ROLES)}")
        expected = USER if i % 2 == 0 else ASSISTANT
        if role != expected:
            raise RecordRejected("roles_not_alternating", f"record {rid}: turn {i} is {role}, expected {expected}")
        if not isinstance(item["value"], str) or not item["value"].strip():
            raise RecordRejected("empty_turn", f"record {rid}: turn {i} value is {item['value']!r}")
        turns.append(Turn(role, item["value"]))
    if len(turns) % 2:
        raise RecordRejected("roles_not_alternating", f"record {rid}: {len(turns)} turns, the last is not an answer")
    return turns


def safe_relative_path(path: str, rid: str = "?") -> str:
    """Normalise a relative image path; absolute paths, URIs and ``..`` escapes are rejected."""
    if "\x00" in path or "://" in path or path.startswith(("/", "\\", "~")) or _DRIVE.match(path):
        raise RecordRejected("path_escape", f"record {rid}: image path {path!r} is not relative to the image root")
    norm = posixpath.normpath(path.replace("\\", "/"))
    if norm == ".." or norm.startswith("../") or norm in (".", ""):
        raise RecordRejected("path_escape", f"record {rid}: image path {path!r} leaves the image root")
    return norm


def resolve_image(root: str, rel: str) -> str:
    """The full path or URI of image ``rel`` under ``root``; a symlink leaving a local root is rejected."""
    rel = safe_relative_path(rel)
    full = storage.join(root, rel)
    if not storage.is_s3(root):
        base = Path(root).expanduser().resolve()
        resolved = Path(full).resolve()
        if resolved != base and base not in resolved.parents:
            raise RecordRejected("path_escape", f"image {rel!r} resolves to {resolved}, outside {base}")
    return full


def read_image_bytes(root: str, rel: str, max_bytes: int | None = None) -> bytes:
    """The encoded bytes of image ``rel`` under ``root``; a missing or unreadable file is ``image_missing``,
    one that is not a regular file or is larger than ``max_bytes`` is refused before it is read
    (``image_not_a_file``, ``image_too_many_bytes``)."""
    full = resolve_image(root, rel)
    try:
        return storage.read_bytes(full, max_bytes=max_bytes)
    except storage.ReadRefused as err:
        raise RecordRejected(f"image_{err.reason}", err.detail) from None
    except Exception as err:  # noqa: BLE001 - any storage failure is one counted rejection
        raise RecordRejected("image_missing", f"image {full}: {type(err).__name__}: {err}") from None
