"""Memory of training steps: what a variant keeps between steps, what one step adds, the process peak.

Between steps a variant holds its parameters and buffers, its AdamW states and its batch; these are
counted from the tensors themselves (``resident``), on any device. What a step adds on top
(activations, gradients, temporaries) is read from CUDA's caching allocator: ``memory_allocated``
before the step, ``max_memory_allocated`` after a ``reset_peak_memory_stats``. Resident plus step is
the peak the variant needs when it is alone on the GPU (the allocator's cached, unused blocks are not
counted). A CPU has no such counter; there only the process's peak resident set is reported, which
covers everything the process ever held, both variants and their building included.
"""

from __future__ import annotations

import resource
import sys

import torch

from vlsa.bench.device import synchronize
from vlsa.bench.loop import TrainStep

GIB = 2**30


def reset_peak(device: torch.device) -> None:
    """Start a new CUDA peak (a no-op on CPU, whose peak resident set cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def process_peak(device: torch.device) -> tuple[float, str]:
    """(GiB, what it is): CUDA peak allocated since ``reset_peak``, or the CPU process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB, "torch.cuda.max_memory_allocated"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KiB on Linux and in bytes on macOS
    peak_bytes = peak if sys.platform == "darwin" else peak * 1024
    return peak_bytes / GIB, "getrusage ru_maxrss: the process's peak resident set since it started"


def _tensors(step: TrainStep):
    yield from step.model.parameters()
    yield from step.model.buffers()
    head = getattr(step.model, "recon_head", None)
    if head is not None:  # the frozen VAE sits outside the module tree, but on the device all the same
        yield from head.vae.parameters()
        yield from head.vae.buffers()
    for state in step.optimizer.state.values():
        yield from (v for v in state.values() if isinstance(v, torch.Tensor))
    yield from (v for v in step.batch.values() if isinstance(v, torch.Tensor))


def resident_bytes(step: TrainStep) -> int:
    """Bytes of the storages a variant keeps between steps: parameters, buffers, optimizer states, batch.

    Each storage counts once (tied weights, views). Gradients are not counted: the step clears them.
    """
    storages = {}
    for t in _tensors(step):
        storage = t.untyped_storage()
        storages[(storage.device, storage.data_ptr())] = storage.nbytes()
    return sum(storages.values())


def step_increase(step: TrainStep, device: torch.device) -> int | None:
    """Peak bytes one more (untimed) step allocates above what was allocated before it; None on CPU."""
    if device.type != "cuda":
        return None
    synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def variant_memory(step: TrainStep, device: torch.device) -> dict[str, float | None]:
    """GiB a variant keeps (``resident_gib``), one step adds (``step_gib``) and their sum (``peak_gib``);
    the last two are None on CPU. Runs one extra step on CUDA."""
    resident, added = resident_bytes(step), step_increase(step, device)
    return {"resident_gib": resident / GIB, "step_gib": None if added is None else added / GIB,
            "peak_gib": None if added is None else (resident + added) / GIB}
