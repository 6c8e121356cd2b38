"""The labeling actor's background writer (bounded, drained before a shard is reported) and the
storage retry policy (transient errors retried, others raised at once)."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from PIL import Image

from vlsa.io import storage
from vlsa.labels.shards import labels_uri, rejects_uri
from vlsa.labels.writer import ShardWriter


@pytest.fixture(scope="module")
def rows(label_computer):
    rng = np.random.default_rng(0)
    out = label_computer.label([Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)) for _ in range(3)])
    for k, row in enumerate(out):
        row.update(id=f"r{k}", image=f"{k}.png")
    return out


REJECTS = [{"id": "bad", "image": "bad.png", "reason": "truncated", "detail": "half a file"}]


@pytest.mark.parametrize("max_pending", [0, 2])
def test_a_written_shard_has_both_files_when_its_future_is_done(tmp_path, rows, max_pending):
    writer = ShardWriter(str(tmp_path), max_pending=max_pending)
    seconds = writer.submit(3, rows, REJECTS).result()
    assert seconds > 0
    assert pq.read_table(labels_uri(str(tmp_path), 3)).column("id").to_pylist() == ["r0", "r1", "r2"]
    assert pq.read_table(rejects_uri(str(tmp_path), 3)).column("reason").to_pylist() == ["truncated"]
    writer.close()


class _HeldWriter(ShardWriter):
    """Writes only once ``release`` is set, so the queue can be seen full."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.release = threading.Event()

    def write(self, shard, rows, rejects):
        self.release.wait()
        return super().write(shard, rows, rejects)


def test_submit_waits_while_max_pending_shards_are_queued_and_drain_waits_for_all(tmp_path, rows):
    writer = _HeldWriter(str(tmp_path), max_pending=2)
    first, second = writer.submit(0, rows, []), writer.submit(1, rows, [])
    third: list = []
    blocked = threading.Thread(target=lambda: third.append(writer.submit(2, rows, [])))
    blocked.start()
    blocked.join(timeout=0.5)
    assert blocked.is_alive() and not third  # a third shard would exceed the bound: the caller waits
    assert not first.done() and not storage.exists(labels_uri(str(tmp_path), 0))
    writer.release.set()
    blocked.join()
    writer.drain()
    assert all(f.done() for f in (first, second, *third))
    assert all(storage.exists(labels_uri(str(tmp_path), k)) for k in range(3))
    writer.close()


def _client_error(status: int, code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "PutObject")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ConnectionResetError("reset by peer"), True),
        (TimeoutError("read timed out"), True),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
        (_client_error(503, "SlowDown"), True),
        (_client_error(500, "InternalError"), True),
        (OSError("When uploading part: AWS Error NETWORK_CONNECTION during UploadPart operation"), True),
        (_client_error(403, "AccessDenied"), False),
        (_client_error(404, "NoSuchKey"), False),
        (FileNotFoundError("gone"), False),
        (OSError(28, "No space left on device"), False),
        (ValueError("bad table"), False),
    ],
)
def test_transient_errors_are_told_apart(error, expected):
    assert storage.transient(error) is expected


def test_retry_cures_transient_errors_and_raises_the_others_at_once():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset by peer")
        return "stored"

    assert storage.retry(flaky, attempts=4, delay=0) == "stored" and len(calls) == 3
    calls.clear()

    def denied():
        calls.append(1)
        raise _client_error(403, "AccessDenied")

    with pytest.raises(ClientError):
        storage.retry(denied, attempts=4, delay=0)
    assert len(calls) == 1
    calls.clear()

    def down():
        calls.append(1)
        raise ConnectionResetError("still down")

    with pytest.raises(ConnectionResetError):
        storage.retry(down, attempts=3, delay=0)
    assert len(calls) == 3


def test_writer_retries_a_write_that_fails_transiently(tmp_path, rows, monkeypatch):
    """The first put of each file fails as a dropped connection would; the shard is still written."""
    real, failed = storage.write_bytes, []

    def drops_once(uri, data):
        if uri not in failed:
            failed.append(uri)
            raise ConnectionResetError(f"connection reset while writing {uri}")
        real(uri, data)

    monkeypatch.setattr(storage, "write_bytes", drops_once)
    ShardWriter(str(tmp_path), max_pending=1, retry_delay=0).submit(0, rows, REJECTS).result()
    assert len(failed) == 2 and pq.read_table(labels_uri(str(tmp_path), 0)).num_rows == 3
