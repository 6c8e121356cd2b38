"""Bounded reads: an image or record file is checked (regular file, size) before any byte is read, so an
oversized file costs no memory and a named pipe in the data folder is refused at once instead of blocking."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal

import psutil
import pytest
from PIL import Image

from vlsa.config import DecodeConfig
from vlsa.data.assemble import load_image
from vlsa.io.records import RecordRejected, load_records, read_image_bytes
from vlsa.io import storage
from vlsa.labels.worker import ImageReader

GIB = 1024**3


@contextlib.contextmanager
def must_return_within(seconds: int):
    """Fail instead of hanging: SIGALRM interrupts a read blocked on a pipe with no writer."""

    def expired(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _png(size=(6, 4)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (9, 8, 7)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (root / "ok.png").write_bytes(_png())
    with open(root / "huge.png", "wb") as handle:  # sparse: 1 GiB long, no disk blocks
        handle.write(_png())
        handle.truncate(GIB)
    os.mkfifo(root / "pipe.png")
    (root / "folder.png").mkdir()
    return root


def _reason(call) -> str:
    with must_return_within(20), pytest.raises(RecordRejected) as err:
        call()
    return err.value.reason


def test_oversized_sparse_image_is_refused_without_reading_it(image_root):
    rss = psutil.Process().memory_info().rss
    assert _reason(lambda: load_image(str(image_root), "huge.png", DecodeConfig())) == "image_too_many_bytes"
    assert _reason(lambda: ImageReader(str(image_root), GIB // 2).read("huge.png")) == "image_too_many_bytes"
    # Reading the file would have taken 1 GiB; the generous bound only allows for allocator noise.
    assert psutil.Process().memory_info().rss - rss < 128 * 1024**2
    assert load_image(str(image_root), "ok.png", DecodeConfig()).size == (6, 4)


def test_image_exactly_at_the_limit_is_read_and_one_byte_more_is_not(image_root):
    data = _png()
    assert read_image_bytes(str(image_root), "ok.png", max_bytes=len(data)) == data
    with pytest.raises(RecordRejected, match=f"{len(data)} bytes > limit {len(data) - 1}"):
        read_image_bytes(str(image_root), "ok.png", max_bytes=len(data) - 1)


@pytest.mark.parametrize("name, kind", [("pipe.png", "named pipe"), ("folder.png", "folder")])
def test_non_regular_image_is_refused_at_once_with_a_reason(image_root, name, kind):
    with must_return_within(20), pytest.raises(RecordRejected) as err:
        load_image(str(image_root), name, DecodeConfig())
    assert err.value.reason == "image_not_a_file" and kind in err.value.detail
    assert _reason(lambda: ImageReader(str(image_root), 1024).read(name)) == "image_not_a_file"


def test_record_files_are_bounded_and_must_be_regular(tmp_path):
    record = {"id": "a", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(record) + "\n")
    assert [r.id for r in load_records(str(path))[0]] == ["a"]
    with pytest.raises(ValueError, match="too_many_bytes"):
        load_records(str(path), max_bytes=path.stat().st_size - 1)
    os.mkfifo(tmp_path / "pipe.json")
    with must_return_within(20), pytest.raises(ValueError, match="not_a_file: .* named pipe"):
        load_records(str(tmp_path / "pipe.json"))


@pytest.mark.integration
def test_s3_objects_are_sized_before_they_are_read(s3_server):
    bucket = s3_server.make_bucket("bounded-reads")
    data = _png()
    storage.write_bytes(f"{bucket}/images/a.png", data)
    assert storage.read_bytes(f"{bucket}/images/a.png", max_bytes=len(data)) == data
    with pytest.raises(storage.ReadRefused, match="too_many_bytes"):
        storage.read_bytes(f"{bucket}/images/a.png", max_bytes=len(data) - 1)
    assert _reason(lambda: read_image_bytes(f"{bucket}/images", "a.png", len(data) - 1)) == "image_too_many_bytes"
    assert _reason(lambda: ImageReader(f"{bucket}/images", len(data) - 1).read("a.png")) == "image_too_many_bytes"
    assert ImageReader(f"{bucket}/images", len(data)).read("a.png") == data
