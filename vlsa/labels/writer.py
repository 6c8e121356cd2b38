"""Writing finished shards off the labeling model's path: a bounded background writer, with retries.

Encoding a shard to Parquet and uploading it takes seconds at the paper geometry (~200 MB a shard).
Done in line, the accelerator idles meanwhile. ``ShardWriter`` does it on a background thread while
the actor labels its next shard, and holds at most ``max_pending`` shards (a submit waits for a slot),
so memory stays bounded. A shard is reported done only after its write has finished (the caller
waits on the returned future), so the manifest, written after every report, is still written last.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from vlsa.io import storage
from vlsa.labels.schema import REJECT_SCHEMA
from vlsa.labels.shards import label_table, labels_uri, rejects_uri, write_table


class ShardWriter:
    """Writes shards' rejects and labels files to ``output`` on one background thread.

    ``max_pending`` = 0 writes in the caller's thread (no overlap). Each file is retried on
    transient storage errors (``storage.transient``) ``attempts`` times.
    """

    def __init__(self, output: str, max_pending: int = 1, attempts: int = 4, retry_delay: float = 0.5) -> None:
        self.output, self.attempts, self.retry_delay = output, attempts, retry_delay
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer") if max_pending else None
        self._slots = threading.BoundedSemaphore(max(1, max_pending))
        self._pending: set[Future] = set()
        self._lock = threading.Lock()

    def submit(self, shard: int, rows: list[dict[str, Any]], rejects: list[dict[str, Any]]) -> Future:
        """Queue shard ``shard``'s files; the future's result is the seconds its write took."""
        if self._pool is None:
            done: Future = Future()
            done.set_result(self.write(shard, rows, rejects))
            return done
        self._slots.acquire()  # waits while max_pending shards are queued: bounded memory
        future = self._pool.submit(self.write, shard, rows, rejects)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._finished)
        return future

    def _finished(self, future: Future) -> None:
        with self._lock:
            self._pending.discard(future)
        self._slots.release()

    def write(self, shard: int, rows: list[dict[str, Any]], rejects: list[dict[str, Any]]) -> float:
        """Encode and store the rejects file, then the labels file (its presence marks the shard complete)."""
        started = time.perf_counter()
        reject_table = pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA)
        self._retry(lambda: write_table(reject_table, rejects_uri(self.output, shard)))
        labels = label_table(rows)
        self._retry(lambda: write_table(labels, labels_uri(self.output, shard)))
        return time.perf_counter() - started

    def _retry(self, fn) -> None:
        storage.retry(fn, attempts=self.attempts, delay=self.retry_delay)

    def drain(self) -> None:
        """Wait for every queued write; the first failure is raised."""
        with self._lock:
            pending = list(self._pending)
        for future in pending:
            future.result()

    def close(self) -> None:
        """Drain, then stop the thread."""
        self.drain()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
