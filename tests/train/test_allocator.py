"""The training workers' allocator settings: forwarded to the workers, and read by glibc as spelled."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
import sys

import pytest

from tests.services import patched_environ
from vlsa.train.allocator import MMAP_THRESHOLD, WORKER_ALLOCATOR
from vlsa.train.driver import worker_env

# In a new process: free a 4 MiB block (glibc raises its default threshold to its size), then ask for a
# block of twice the fixed threshold and say whether it got a mapping of its own or came from the heap.
PROBE = f"""
import ctypes
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                 "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype, libc.malloc.restype = Info, ctypes.c_void_p
libc.free(ctypes.c_void_p(libc.malloc(4 << 20)))
mapped = libc.mallinfo2().hblks
block = libc.malloc({2 * MMAP_THRESHOLD})
print("mapped" if libc.mallinfo2().hblks == mapped + 1 else "heap")
"""


def _glibc_with_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "mallinfo2")
    except OSError:
        return False


def test_workers_get_the_allocator_settings():
    with patched_environ({}, unset=tuple(WORKER_ALLOCATOR)):
        assert worker_env().items() >= WORKER_ALLOCATOR.items()
    with patched_environ({"MALLOC_MMAP_THRESHOLD_": "65536"}):  # a value the driver's node sets wins
        assert worker_env()["MALLOC_MMAP_THRESHOLD_"] == "65536"


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _glibc_with_mallinfo2(), reason="glibc only")
def test_glibc_reads_the_settings_at_process_start():
    base = {k: v for k, v in os.environ.items() if k not in WORKER_ALLOCATOR}

    def probe(env: dict[str, str]) -> str:
        done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert probe(base) == "heap"  # glibc's own threshold has risen past the block: it comes from the heap
    assert probe(base | WORKER_ALLOCATOR) == "mapped"
