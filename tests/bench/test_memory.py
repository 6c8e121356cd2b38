"""Memory figures of the step benchmark: resident bytes counted exactly, the CPU peak in the right unit,
and on CUDA the step's increase read from the caching allocator."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch

from vlsa.bench import memory
from vlsa.bench.__main__ import main
from vlsa.bench.loop import TrainStep


class Toy(torch.nn.Module):
    """A linear layer with a buffer, called like the VLSA model (keyword batch, ``.loss`` output)."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(8, 4)  # 36 fp32 parameters: 144 bytes
        self.register_buffer("scale", torch.ones(3))  # 12 bytes

    def forward(self, x, **_):
        return SimpleNamespace(loss=(self.linear(x) * self.scale[0]).square().mean())


def toy_step(device: torch.device) -> TrainStep:
    """A Toy step after one update, so AdamW's states exist; the batch holds a view and a non-tensor."""
    model = Toy().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), foreach=True)
    x = torch.ones(2, 8, device=device)  # 64 bytes
    step = TrainStep(model, optimizer, {"x": x, "x_row": x[0], "ids": ["a", "b"]}, grad_clip=0.0)
    step()
    return step


def test_resident_counts_each_storage_once():
    step = toy_step(torch.device("cpu"))
    # parameters 144 + buffer 12 + AdamW exp_avg and exp_avg_sq 2 x 144 + two fp32 step counters 8 + batch 64
    assert memory.resident_bytes(step) == 144 + 12 + 288 + 8 + 64
    assert memory.variant_memory(step, torch.device("cpu")) == {
        "resident_gib": 516 / memory.GIB, "step_gib": None, "peak_gib": None}


def test_cpu_process_peak_is_the_resident_set_in_gib():
    held = torch.ones(64 * 2**20 // 4)  # 64 MiB, written, so resident
    peak, source = memory.process_peak(torch.device("cpu"))
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / memory.GIB
    assert held.numel() * 4 / memory.GIB <= peak < physical and "ru_maxrss" in source


@pytest.mark.gpu
def test_cuda_step_increase_covers_the_gradients():
    device = torch.device("cuda")
    step = toy_step(device)
    mem = memory.variant_memory(step, device)
    assert mem["step_gib"] >= 144 / memory.GIB  # the gradients live until zero_grad
    assert mem["peak_gib"] == pytest.approx(mem["resident_gib"] + mem["step_gib"])
    memory.reset_peak(device)
    peak, source = memory.process_peak(device)
    assert peak >= torch.cuda.memory_allocated(device) / memory.GIB and source == "torch.cuda.max_memory_allocated"


@pytest.mark.gpu
def test_cuda_step_report_has_memory_per_variant(capsys, cache_dir):
    capsys.readouterr()
    assert main(["step", "--preset", "tiny", "--device", "cuda", "--smoke", "--json",
                 "--set", f"model.cache_dir={cache_dir}"]) == 0
    r = json.loads(capsys.readouterr().out)
    mem = r["memory"]
    for name in ("vlsa", "anyres"):
        assert mem[name]["step_gib"] > 0
        assert mem[name]["peak_gib"] == pytest.approx(mem[name]["resident_gib"] + mem[name]["step_gib"])
    # both variants stay resident during the timed steps, and each step adds its own activations
    assert r["process_peak_gib"] >= mem["vlsa"]["resident_gib"] + mem["anyres"]["resident_gib"]


@pytest.mark.parametrize("chunks", [0, 3])
def test_lm_logits_avoided_by_the_chunked_loss_are_computed_from_the_batch(cache_dir, chunks):
    import vlsa
    from vlsa.bench import variants
    from vlsa.bench.loop import build_train_step

    cfg = vlsa.load_config("tiny", [f"model.cache_dir={cache_dir}", f"model.llm.loss_chunks={chunks}",
                                    "bench.batch=3", "bench.text_tokens=10", "bench.tiles=2"])
    step = build_train_step(cfg, variants.bench_stage(cfg), variants.workload(cfg), torch.device("cpu"), torch.float32)
    got = memory.lm_logits(step)
    V = len(step.model.tokenizer)  # the LM head grew to the tokenizer
    T = 10 + step.model.token_count(2)  # each sample: <image> (-> visual tokens) then 10 supervised text tokens
    k = chunks or memory.REPORT_CHUNKS
    assert (got["batch"], got["tokens"], got["vocab"], got["supervised"], got["chunks"]) == (3, T, V, 30, k)
    assert got["configured"] == bool(chunks)
    assert got["plain_bytes"] == 3 * T * V * 4 and got["chunked_bytes"] == -(-30 // k) * V * 4
    assert got["avoided_bytes"] == got["plain_bytes"] - got["chunked_bytes"] > 0
