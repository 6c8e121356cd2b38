"""Label lookups on S3 (moto): node-local shard copies made once per node, bytes read per sample
within twice the stored row size, and one S3 client per process."""

from __future__ import annotations

import json
import random
import threading

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from vlsa.io import storage
from vlsa.labels.schema import REJECT_SCHEMA, label_identity
from vlsa.labels.shards import (
    Item,
    build_manifest,
    ensure_spec,
    fingerprint,
    label_table,
    labels_uri,
    rejects_uri,
    write_manifest,
    write_table,
)
from vlsa.labels import store as store_module
from vlsa.labels.store import LabelStore, load_labels

pytestmark = pytest.mark.integration

SHARDS, ROWS = 6, 32


@pytest.fixture(scope="module")
def s3_labels(s3_server, label_cfg, label_computer):
    """A labeling output in S3 written by the job's own writers: 6 shards of 32 rows of real labels."""
    rng = np.random.default_rng(0)
    out = f"{s3_server.make_bucket('label-store')}/out"
    items = [Item(f"r{i:04d}", f"{i:04d}.png") for i in range(SHARDS * ROWS)]
    shards = [items[k * ROWS : (k + 1) * ROWS] for k in range(SHARDS)]
    spec = {"identity": label_identity(label_cfg), "items": len(items), "fingerprint": fingerprint(items),
            "rows_per_shard": ROWS}
    ensure_spec(out, spec)
    for k, shard in enumerate(shards):
        images = [Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)) for _ in shard]
        rows = label_computer.label(images)
        for row, item in zip(rows, shard):
            row.update(id=item.id, image=item.image)
        write_table(pa.Table.from_pylist([], schema=REJECT_SCHEMA), rejects_uri(out, k))
        write_table(label_table(rows), labels_uri(out, k))
    write_manifest(out, build_manifest(out, shards, spec, {"data": "generated"}))
    return out, [item.id for item in items]


def _object_size(uri: str) -> int:
    filesystem, path = storage.pyarrow_filesystem(uri)
    return filesystem.get_file_info(path).size


def test_random_lookups_read_at_most_twice_the_row_size(s3_labels, label_cfg, tmp_path, monkeypatch):
    out, ids = s3_labels
    monkeypatch.setattr(store_module, "OPEN_SHARDS", 2)  # reopening an evicted shard re-reads the node copy
    store = load_labels(out, label_cfg, scratch=str(tmp_path / "scratch"))
    order = random.Random(0).sample(ids, len(ids))
    for rid in order:
        assert store[rid]["id"] == rid
    stats = store.read_stats()
    assert stats["rows_read"] == len(ids) and store.row_bytes > 1000  # real rows: VQ indices and latents
    print("node copy:", stats)
    assert stats["bytes_per_row"] <= 2 * store.row_bytes, stats
    # every shard came down once: the downloads are the shard objects themselves
    shard_bytes = sum(_object_size(labels_uri(out, k)) for k in range(SHARDS))
    assert shard_bytes <= store.bytes_read <= 1.5 * shard_bytes
    assert len(store._files) == 2


def test_direct_reads_pull_whole_row_groups(s3_labels, label_cfg):
    """Without the node copy a random lookup costs a row group: the reason the copy exists."""
    out, ids = s3_labels
    store = LabelStore(out, json.loads(storage.read_bytes(f"{out}/manifest.json")), cache_groups=1)
    for rid in random.Random(1).sample(ids, 48):
        assert store[rid]["id"] == rid
    print("direct:", store.read_stats())
    assert store.read_stats()["bytes_per_row"] > 4 * store.row_bytes


def test_workers_of_a_node_download_each_shard_once(s3_labels, label_cfg, tmp_path):
    """Four workers ask for the same shard at once and share one scratch folder: one download."""
    out, ids = s3_labels
    scratch = str(tmp_path / "scratch")
    stores = [load_labels(out, label_cfg, scratch=scratch) for _ in range(4)]
    index_bytes = [s.bytes_read for s in stores]
    barrier = threading.Barrier(len(stores))

    def lookup(store):
        barrier.wait()
        assert store[ids[5]]["id"] == ids[5]

    threads = [threading.Thread(target=lookup, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    downloaded = [s.bytes_read - before for s, before in zip(stores, index_bytes)]
    assert sorted(downloaded)[:3] == [0, 0, 0] and max(downloaded) == _object_size(labels_uri(out, 0))
    late = load_labels(out, label_cfg, scratch=scratch)  # a worker started later reuses the copy too
    before = late.bytes_read
    assert late[ids[7]]["id"] == ids[7] and late.bytes_read == before


def test_one_s3_client_and_filesystem_per_process(s3_server, monkeypatch):
    client = storage.s3_client()
    assert storage.s3_client() is client
    assert storage.pyarrow_filesystem("s3://a/x")[0] is storage.pyarrow_filesystem("s3://b/y")[0]
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint.replace("127.0.0.1", "localhost"))
    moved = storage.s3_client()  # another endpoint: another client, never a stale one
    assert moved is not client and moved.meta.endpoint_url.startswith("http://localhost")
