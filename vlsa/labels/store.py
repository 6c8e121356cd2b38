"""Reading labels back for training: manifest check first, then lazy random access by id.

``load_labels`` refuses labels whose manifest does not fit the config (schema version, VQ-VAE, VAE,
image sides) and returns a read-only mapping id -> label row. Only the ``id`` columns are read up
front; a row is fetched with its Parquet row group on first access (a few groups stay cached), so
a dataset larger than memory can be looked up in any order. Shards in S3 are read from a node-local
copy when a scratch folder is given, so random lookups cost about one row's bytes each.
"""

from __future__ import annotations

import bisect
import io
import itertools
import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from vlsa.config import Config
from vlsa.io import storage
from vlsa.labels.schema import LABEL_COLUMNS, MANIFEST, check_manifest, current_identity
from vlsa.labels.shards import labels_uri, open_parquet, rejects_uri


def read_manifest(output: str) -> dict[str, Any]:
    """The manifest of a labeling output; an error naming the path when the run has not finished."""
    uri = storage.join(output, MANIFEST)
    if not storage.exists(uri):
        raise FileNotFoundError(f"no {MANIFEST} at {output}: the labeling run has not finished (run it again)")
    return json.loads(storage.read_bytes(uri))


OPEN_SHARDS = 16
"""Shard files a store keeps open at once (least recently used closed first)."""


class _CountedFile(io.RawIOBase):
    """A seekable binary file that adds every byte read to ``counter[0]`` (pyarrow reads through it)."""

    def __init__(self, raw, counter: list[int]) -> None:
        super().__init__()
        self.raw, self.counter = raw, counter

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def readinto(self, buffer) -> int:
        data = self.raw.read(len(buffer))
        buffer[: len(data)] = data
        self.counter[0] += len(data)
        return len(data)

    def close(self) -> None:
        self.raw.close()
        super().close()


class LabelStore(Mapping):
    """Read-only mapping label id -> label row (a dict with the columns of ``vlsa.labels.schema``).

    With ``scratch`` set, a shard stored in S3 is copied to that node-local folder the first time
    one of its rows is asked for, once per node (``storage.node_copy``), and read there: a random
    lookup then costs its row's share of one download instead of a whole row group from S3.
    Without it rows are read from the output directly, a row group at a time. ``bytes_read`` counts
    what this process read from the output's storage (index, copies, direct reads).
    """

    def __init__(self, output: str, manifest: dict[str, Any], cache_groups: int = 8, scratch: str = "") -> None:
        self.output, self.manifest, self.cache_groups, self.scratch = output, manifest, cache_groups, scratch
        self._counter = [0]
        self.rows_read = 0
        self._index: dict[str, tuple[int, int]] = {}
        self._starts: list[list[int]] = []  # per shard: first row of each row group, then the row count
        stored = rows = 0
        for shard in range(len(manifest["shards"])):
            parquet = self._direct(shard)
            ids = parquet.read(columns=["id"]).column("id").to_pylist()
            groups = [parquet.metadata.row_group(g) for g in range(parquet.metadata.num_row_groups)]
            parquet.close(force=True)
            self._index.update((rid, (shard, row)) for row, rid in enumerate(ids))
            self._starts.append([0, *itertools.accumulate(g.num_rows for g in groups)])
            stored += sum(g.column(c).total_compressed_size for g in groups for c in range(g.num_columns)
                          if g.column(c).path_in_schema.split(".")[0] in LABEL_COLUMNS)
            rows += len(ids)
        self.row_bytes = stored / rows if rows else 0.0  # mean stored row: the chunks of the columns read, compressed
        self._cache: OrderedDict[tuple[int, int], pa.Table] = OrderedDict()
        self._files: OrderedDict[int, pq.ParquetFile] = OrderedDict()

    @property
    def bytes_read(self) -> int:
        """Bytes this process has read from the label output's storage."""
        return self._counter[0]

    def read_stats(self) -> dict[str, float]:
        """Rows looked up, bytes read, bytes per row looked up and the stored row size, for reports."""
        per_row = self.bytes_read / self.rows_read if self.rows_read else 0.0
        return {"rows_read": self.rows_read, "bytes_read": self.bytes_read, "bytes_per_row": per_row,
                "row_bytes": self.row_bytes}

    @property
    def identity(self) -> dict[str, Any]:
        """What the labels were made from (``vlsa.labels.schema.label_identity`` at labeling time)."""
        return current_identity(self.manifest["identity"])

    def __getitem__(self, key: str) -> dict[str, Any]:
        shard, row = self._index[key]
        starts = self._starts[shard]
        group = bisect.bisect_right(starts, row) - 1
        self.rows_read += 1
        return self._group(shard, group).slice(row - starts[group], 1).to_pylist()[0]

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def _direct(self, shard: int) -> pq.ParquetFile:
        """Shard ``shard`` opened on the output's storage, its reads counted."""
        uri = labels_uri(self.output, shard)
        filesystem, path = storage.pyarrow_filesystem(uri)
        raw = filesystem.open_input_file(path) if filesystem is not None else open(path, "rb")
        return pq.ParquetFile(_CountedFile(raw, self._counter))

    def _file(self, shard: int) -> pq.ParquetFile:
        """Shard ``shard`` opened for row-group reads; a few stay open (their footers parsed once)."""
        if shard in self._files:
            self._files.move_to_end(shard)
            return self._files[shard]
        uri = labels_uri(self.output, shard)
        if self.scratch and storage.is_s3(uri):
            path, downloaded = storage.node_copy(uri, self.scratch)
            self._counter[0] += downloaded
            self._files[shard] = pq.ParquetFile(path, memory_map=True)
        else:
            self._files[shard] = self._direct(shard)
        if len(self._files) > OPEN_SHARDS:  # bounded: thousands of shards must not exhaust file descriptors
            self._files.popitem(last=False)[1].close(force=True)
        return self._files[shard]

    def _group(self, shard: int, group: int) -> pa.Table:
        key = (shard, group)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        table = self._file(shard).read_row_group(group, columns=list(LABEL_COLUMNS))
        self._cache[key] = table
        if len(self._cache) > self.cache_groups:
            self._cache.popitem(last=False)
        return table

    def __getstate__(self) -> dict[str, Any]:  # data-loader workers get the index, not caches or open files
        return {**self.__dict__, "_cache": OrderedDict(), "_files": OrderedDict(), "_counter": [0], "rows_read": 0}


def load_labels(output: str, cfg: Config, scratch: str = "") -> LabelStore:
    """Labels written by ``ray_jobs/label.py`` at ``output``, checked against ``cfg``; ``scratch``: the
    node-local folder for shard copies (see ``LabelStore``).

    Raises ``LabelsMismatch`` when the labels were made with another schema version, VQ-VAE, VAE or
    image geometry than ``cfg`` describes, and ``FileNotFoundError`` when the run did not finish.
    """
    manifest = read_manifest(output)
    check_manifest(manifest, cfg, output)
    return LabelStore(output, manifest, scratch=scratch)


def load_rejects(output: str) -> dict[str, str]:
    """id -> reason of every image the labeling run rejected (training skips these records)."""
    manifest = read_manifest(output)
    out: dict[str, str] = {}
    for shard in range(len(manifest["shards"])):
        table = open_parquet(rejects_uri(output, shard)).read(columns=["id", "reason"])
        out.update(zip(table.column("id").to_pylist(), table.column("reason").to_pylist()))
    return out
