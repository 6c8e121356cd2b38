"""Model weights in safetensors files: written whole, read whole or read per ZeRO-3 partition.

Under ZeRO-3 a rank owns one contiguous slice of each parameter's flattened values
(``ceil(numel / world)`` elements, rank r from ``r * size``) and ``deepspeed.zero.Init`` leaves
only that slice in memory. :func:`load_into` reads each slice straight from the file with
positioned reads (the safetensors header gives every tensor's byte range), so no rank ever holds
another rank's values or a second full copy of the weights; parameters that are not partitioned
are read whole. The file must be loaded before ``deepspeed.initialize``: the ZeRO optimizer copies
the partitions into its own flat buffers there.

safetensors refuses tensors that share memory (tied embeddings), so :func:`save` stores each
storage once and records the other names in the file's metadata; :func:`read` restores them.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

ALIASES = "vlsa_aliases"
"""Metadata key: ``{alias: stored name}`` of tensors that share memory with a stored one."""

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class Entry:
    """Where one tensor lies in a safetensors file."""

    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    """Byte offset of its first value in the file."""

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass
class LoadStats:
    """What :func:`load_into` read on this rank."""

    tensors: int = 0
    elements_read: int = 0
    """Values read from the file by this rank (a partitioned parameter counts its slice only)."""
    elements_total: int = 0
    """Values of the loaded tensors in full."""
    partitioned: int = 0
    """Tensors read as a ZeRO-3 slice."""
    largest_read: int = 0
    """The most values read at once: the largest temporary buffer of the load."""
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def read_index(files: list[Path]) -> tuple[dict[str, Entry], dict[str, str]]:
    """(name -> Entry, alias -> stored name) of every tensor in ``files``, from their headers only."""
    entries: dict[str, Entry] = {}
    aliases: dict[str, str] = {}
    for path in files:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        meta = header.pop("__metadata__", None) or {}
        aliases.update(json.loads(meta.get(ALIASES, "{}")))
        for name, info in header.items():
            if info["dtype"] not in _DTYPES:
                raise ValueError(f"{path}: tensor {name!r} has dtype {info['dtype']}, which this reader does not handle")
            entries[name] = Entry(path, _DTYPES[info["dtype"]], tuple(info["shape"]), 8 + length + info["data_offsets"][0])
    return entries, aliases


def safetensors_files(folder: str | Path) -> list[Path]:
    """The safetensors weight files of a ``save_pretrained`` folder (sharded or not); empty if none."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.safetensors") if p.is_file())


def _read(fd: int, entry: Entry, first: int, count: int) -> torch.Tensor:
    """Values ``first .. first + count`` of the flattened tensor, read from the open file."""
    size = torch.empty((), dtype=entry.dtype).element_size()
    data = bytearray(count * size)
    view, offset, done = memoryview(data), entry.start + first * size, 0
    while done < len(data):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:
            raise OSError(f"{entry.path}: the file ends inside a tensor (read {done} of {len(data)} bytes)")
        done += got
    if not data:
        return torch.empty(0, dtype=entry.dtype)
    return torch.frombuffer(data, dtype=entry.dtype)


def _zero3_slice(param: torch.Tensor) -> tuple[int, int]:
    """(first value, count) of the flattened parameter that this rank's ZeRO-3 partition holds."""
    from deepspeed import comm

    size = param.ds_tensor.ds_numel
    first = size * comm.get_rank(group=param.ds_process_group)
    return first, max(0, min(size, param.ds_numel - first))


def _targets(module: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Parameters (each storage once) and persistent buffers, by state-dict name."""
    yield from module.named_parameters()
    persistent = set(module.state_dict(keep_vars=True))
    yield from ((name, b) for name, b in module.named_buffers() if name in persistent)


def load_into(module: torch.nn.Module, files: list[Path], *, strict: bool = True) -> LoadStats:
    """Copy the values in ``files`` into ``module``'s parameters and persistent buffers, in place.

    A ZeRO-3 parameter receives only this rank's slice (read from the file as such); any other tensor
    is read whole. A name of the module missing from the files is an error; with ``strict``, so is a
    name in the files that the module does not have.
    """
    entries, aliases = read_index(files)
    stats = LoadStats()
    fds = {path: os.open(path, os.O_RDONLY) for path in files}
    try:
        wanted = dict(_targets(module))
        for name, target in wanted.items():
            entry = entries.get(aliases.get(name, name))
            if entry is None:
                stats.missing.append(name)
                continue
            _load_one(name, target, entry, fds[entry.path], stats)
    finally:
        for fd in fds.values():
            os.close(fd)
    stats.unexpected = sorted(set(entries) - set(wanted) - set(aliases.values()))
    _check(stats, files, strict)
    return stats


def _load_one(name: str, target: torch.Tensor, entry: Entry, fd: int, stats: LoadStats) -> None:
    partitioned = hasattr(target, "ds_tensor")
    shape = tuple(target.ds_shape) if partitioned else tuple(target.shape)
    if shape != entry.shape:
        raise ValueError(f"{entry.path}: tensor {name!r} has shape {entry.shape}, the model's is {shape}")
    with torch.no_grad():
        if partitioned:
            first, count = _zero3_slice(target)
            values = _read(fd, entry, first, count)
            target.ds_tensor[:count].copy_(values)
            stats.partitioned += 1
        else:
            values = _read(fd, entry, 0, entry.numel)
            target.copy_(values.view(entry.shape))
    stats.tensors += 1
    stats.elements_read += values.numel()
    stats.elements_total += entry.numel
    stats.largest_read = max(stats.largest_read, values.numel())


def _check(stats: LoadStats, files: list[Path], strict: bool) -> None:
    names = ", ".join(str(f) for f in files)
    if stats.missing:
        raise KeyError(f"{len(stats.missing)} tensors of the model are not in {names}: {stats.missing[:8]}")
    if strict and stats.unexpected:
        raise KeyError(f"{len(stats.unexpected)} tensors in {names} are not in the model: {stats.unexpected[:8]}")


def read(path: str | Path) -> dict[str, torch.Tensor]:
    """The whole state dict of one file, tensors that shared memory when saved sharing it again."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    _, aliases = read_index([Path(path)])
    for alias, stored in aliases.items():
        state[alias] = state[stored]
    return state


def save(state: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, Any] | None = None) -> None:
    """Write ``state`` as one safetensors file; a tensor sharing memory with an earlier one is an alias."""
    from safetensors.torch import save_file

    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, tensor in state.items():
        key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen and tensor.numel():
            aliases[name] = seen[key]
            continue
        seen[key] = name
        unique[name] = tensor.detach().contiguous()
    meta = {"format": "pt", ALIASES: json.dumps(aliases), **(metadata or {})}
    save_file(unique, str(path), metadata=meta)
