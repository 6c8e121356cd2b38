"""glibc's allocator settings of the training worker processes: freed tensors go back to the system.

glibc serves a request from its heap unless it is at least ``M_MMAP_THRESHOLD``, which gets a mapping
of its own, unmapped when freed. The threshold starts at 128 KiB, but glibc raises it to the size of
every mapped block freed (up to 32 MiB), so once a training process has freed its first large tensor,
tensors up to that size come from the heap. Freed there, they leave holes below smaller blocks still in
use (only the heap's top is returned), and the holes stay resident. On CPU this was half of what a
ZeRO-3 step added to a worker's peak: with a fixed 1 MiB threshold a frozen, recomputed 1.0B LLM still
fragmented it with each layer's 104-624 KiB tensors (hidden states, keys, values at a batch of
104 tokens), to 0.47 GiB of free heap at 36 layers (docs/benchmarks.md, ZeRO-3 build memory). Fixing
the threshold at glibc's starting value keeps every tensor of 128 KiB or more in its own mapping for
the whole run.

glibc reads the variables when a process starts, so they are set in the environment that starts the
workers (Ray's ``runtime_env``), not by the worker itself.
"""

from __future__ import annotations

import os
from typing import Mapping

MMAP_THRESHOLD = 128 * 1024
"""Bytes from which a request gets its own mapping: glibc's starting value, kept fixed."""
WORKER_ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
"""The environment variables of the allocator settings (setting the threshold also stops its raising)."""


def allocator_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """``WORKER_ALLOCATOR``, where ``environ`` (the driver's) does not set a variable itself."""
    return {name: environ.get(name, value) for name, value in WORKER_ALLOCATOR.items()}
