"""Reading labels back for training: manifest check first, then lazy random access by id.

``load_labels`` refuses labels whose manifest does not fit the config (schema version, VQ-VAE, VAE,
image sides) and returns a read-only mapping id -> label row. Only the ``id`` columns are read up
front; a row is fetched with its Parquet row group on first access (a few groups stay cached), so
a dataset larger than memory can be looked up in any order.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Iterator

import pyarrow as pa

from vlsa.config import Config
from vlsa.io import storage
from vlsa.labels.schema import MANIFEST, ROW_GROUP_ROWS, check_manifest
from vlsa.labels.shards import labels_uri, open_parquet, rejects_uri


def read_manifest(output: str) -> dict[str, Any]:
    """The manifest of a labeling output; an error naming the path when the run has not finished."""
    uri = storage.join(output, MANIFEST)
    if not storage.exists(uri):
        raise FileNotFoundError(f"no {MANIFEST} at {output}: the labeling run has not finished (run it again)")
    return json.loads(storage.read_bytes(uri))


class LabelStore(Mapping):
    """Read-only mapping label id -> label row (a dict with the columns of ``vlsa.labels.schema``)."""

    def __init__(self, output: str, manifest: dict[str, Any], cache_groups: int = 8) -> None:
        self.output = output
        self.manifest = manifest
        self.cache_groups = cache_groups
        self._index: dict[str, tuple[int, int]] = {}
        for shard in range(len(manifest["shards"])):
            ids = open_parquet(labels_uri(output, shard)).read(columns=["id"]).column("id").to_pylist()
            self._index.update((rid, (shard, row)) for row, rid in enumerate(ids))
        self._cache: OrderedDict[tuple[int, int], pa.Table] = OrderedDict()

    @property
    def identity(self) -> dict[str, Any]:
        """What the labels were made from (``vlsa.labels.schema.label_identity`` at labeling time)."""
        return self.manifest["identity"]

    def __getitem__(self, key: str) -> dict[str, Any]:
        shard, row = self._index[key]
        group, offset = divmod(row, ROW_GROUP_ROWS)
        return self._group(shard, group).slice(offset, 1).to_pylist()[0]

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def _group(self, shard: int, group: int) -> pa.Table:
        key = (shard, group)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        table = open_parquet(labels_uri(self.output, shard)).read_row_group(group)
        self._cache[key] = table
        if len(self._cache) > self.cache_groups:
            self._cache.popitem(last=False)
        return table

    def __getstate__(self) -> dict[str, Any]:  # data-loader workers get the index, not the cache
        return {**self.__dict__, "_cache": OrderedDict()}


def load_labels(output: str, cfg: Config) -> LabelStore:
    """Labels written by ``ray_jobs/label.py`` at ``output``, checked against ``cfg``.

    Raises ``LabelsMismatch`` when the labels were made with another schema version, VQ-VAE, VAE or
    image geometry than ``cfg`` describes, and ``FileNotFoundError`` when the run did not finish.
    """
    manifest = read_manifest(output)
    check_manifest(manifest, cfg, output)
    return LabelStore(output, manifest)


def load_rejects(output: str) -> dict[str, str]:
    """id -> reason of every image the labeling run rejected (training skips these records)."""
    manifest = read_manifest(output)
    out: dict[str, str] = {}
    for shard in range(len(manifest["shards"])):
        table = open_parquet(rejects_uri(output, shard)).read(columns=["id", "reason"])
        out.update(zip(table.column("id").to_pylist(), table.column("reason").to_pylist()))
    return out
