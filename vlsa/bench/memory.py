"""Memory of training steps: what a variant keeps between steps, what one step adds, the process peak.

Between steps a variant holds its parameters and buffers, its AdamW states and its batch; these are
counted from the tensors themselves (``resident``), on any device. What a step adds on top
(activations, gradients, temporaries) is read from CUDA's caching allocator: ``memory_allocated``
before the step, ``max_memory_allocated`` after a ``reset_peak_memory_stats``. Resident plus step is
the peak the variant needs when it is alone on the GPU (the allocator's cached, unused blocks are not
counted). A CPU has no such counter; there only the process's peak resident set is reported, which
covers everything the process ever held, both variants and their building included.

``lm_logits`` computes, on any device, the largest LM-logits tensor of a step: the plain head's fp32
(B, T, V) against the largest piece of the chunked loss (``model.llm.loss_chunks``), and the difference.
"""

from __future__ import annotations

import resource
import sys

import torch

from vlsa.bench.device import synchronize
from vlsa.bench.loop import TrainStep
from vlsa.tokens import IGNORE_INDEX

GIB = 2**30
REPORT_CHUNKS = 8
"""Chunks the report assumes when the preset uses the plain head (``model.llm.loss_chunks=0``)."""


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


def lm_logits(step: TrainStep) -> dict[str, int | bool]:
    """Bytes of the largest fp32 LM-logits tensor of one step, plain head vs chunked loss (computed, not measured).

    The plain loss upcasts (B, T, V) logits over every position of the spliced sequence; the chunked
    one holds (ceil(n / chunks), V) for the n supervised positions. ``chunks`` is the config's, or
    ``REPORT_CHUNKS`` when the config uses the plain head (``configured`` False).
    """
    model, batch = step.model, step.batch
    keys = ("input_ids", "attention_mask", "image_counts", "pixel_lo", "pixel_hi", "tile_mask", "labels", "ssft_mask")
    with torch.no_grad():
        spliced, _ = model.prepare_inputs(*(batch[k] for k in keys), image_sizes=batch.get("image_sizes"))
    (B, T), V = spliced.labels.shape, model.language_model.get_output_embeddings().weight.shape[0]
    n = int((spliced.labels[:, 1:] != IGNORE_INDEX).sum())
    chunks = model.config.llm.loss_chunks or REPORT_CHUNKS
    plain, piece = B * T * V * 4, -(-n // chunks) * V * 4
    return {"batch": B, "tokens": T, "vocab": V, "supervised": n, "chunks": chunks,
            "configured": bool(model.config.llm.loss_chunks), "plain_bytes": plain,
            "chunked_bytes": piece, "avoided_bytes": plain - piece}
