"""``build-memory``: each worker's peak resident memory while building and stepping a ZeRO-3 model.

The benchmark stage (``bench.stage``, ZeRO-3) runs on 1 and on 2 CPU worker processes (gloo, spawned
here; no Ray). Each worker does what a training worker does at a stage start: ``build_engine`` of the
trainer (the model built partitioned under ``deepspeed.zero.Init``, the stage-start weights read
from the previous stage's ``model.safetensors``, each rank its own slices, then
``deepspeed.initialize``), then ``STEPS`` optimizer steps of ``train_step`` on a synthetic batch of
``bench.batch`` samples per worker, with the trainer's workers' glibc settings (``ALLOCATOR``). Peak
resident set (``VmHWM``, the same as ``ru_maxrss``) is read after the build and after the steps, so
the build's own peak is visible too. The stage-start
weights are written beforehand by one separate process from a plain build (its peak is reported,
but is no part of the comparison). Goal: with 2 workers each peak is at most 0.65x the 1-worker peak.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
from pathlib import Path

import torch

from vlsa.bench.batch import synthetic_batch
from vlsa.bench.device import describe
from vlsa.bench.report import Report, table
from vlsa.bench.variants import bench_stage, workload
from vlsa.config import Config, config_from_dict
from vlsa.io.environ import patched_environ
from vlsa.model import weights
from vlsa.model.builder import build_model
from vlsa.model.params import apply_stage
from vlsa.train import state as train_state
from vlsa.train.allocator import WORKER_ALLOCATOR
from vlsa.train.checkpoint import WEIGHTS
from vlsa.train.loop import Worker, build_engine
from vlsa.train.step import train_step

GIB = 2**30
WORLDS = (1, 2)
STEPS = 2
"""Optimizer steps per worker: the first records ZeRO-3's parameter trace, the second prefetches by it."""
GOAL = 0.65
ALLOCATOR = WORKER_ALLOCATOR
"""glibc settings of the workers: those of the trainer's workers (``vlsa.train.allocator``), every block of
128 KiB or more its own mapping, returned to the system when freed."""


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` figure in KiB (VmRSS: resident now; VmHWM: the peak so far)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _gib(kib: int) -> float:
    return kib * 1024 / GIB


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def world_config(cfg: Config, world: int) -> Config:
    """``cfg`` with the benchmark stage's batch set to ``bench.batch`` per worker and no accumulation."""
    data = cfg.to_dict()
    stages = data["train"]["stages"]
    stage = stages[cfg.bench.stage % len(stages)]
    stage["micro_batch"], stage["global_batch"] = cfg.bench.batch, cfg.bench.batch * world
    return config_from_dict(data)


# ------------------------------------------------------------------------------------------ processes


def _quiet_stdout() -> None:
    """Send a child's stdout to stderr: the parent's stdout carries the report (``--json``) alone."""
    os.dup2(2, 1)


def _prepare(rank: int, cfg_dict: dict, folder: str) -> None:
    """Write the stage-start weights of a plain build (and the counts of what the model holds)."""
    _quiet_stdout()
    cfg = config_from_dict(cfg_dict)
    model = build_model(cfg)
    apply_stage(model, bench_stage(cfg))
    params = list(model.parameters())
    counts = {"parameters": sum(p.numel() for p in params),
              "llm_parameters": sum(p.numel() for p in model.language_model.parameters()),
              "trainable_parameters": sum(p.numel() for p in params if p.requires_grad)}
    weights.save(model.state_dict(), Path(folder) / WEIGHTS)
    del model, params
    counts["peak_gib"] = _gib(_status_kib("VmHWM"))
    Path(folder, "counts.json").write_text(json.dumps(counts))


def _worker(rank: int, world: int, port: int, cfg_dict: dict, checkpoint: str, out: str) -> None:
    import torch.distributed as dist

    _quiet_stdout()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    cfg = config_from_dict(cfg_dict)
    if cfg.bench.threads:
        torch.set_num_threads(cfg.bench.threads)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = _build_and_step(cfg, rank, world, checkpoint)
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def bench_worker(rank: int, world: int, checkpoint: str) -> Worker:
    """The trainer's ``Worker`` of ``rank`` on CPU (its saver's scratch beside the stage-start weights: nothing is saved)."""
    scratch = Path(checkpoint).parent
    return Worker(rank, world, torch.device("cpu"), train_state.Saver(scratch, rank, world), scratch)


class PhasePeaks:
    """Peak resident memory per phase, sampled every ``PERIOD_S`` by a thread: where a step's peak comes from.

    Phases of step k: ``forward_k`` (the model's forward pass), ``backward_k`` (from its end through the
    optimizer step) and ``after_k`` (until the next one starts).
    """

    PERIOD_S = 0.02

    def __init__(self) -> None:
        self.phase, self.peaks, self._stop = "build", {}, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._record()
            self._stop.wait(self.PERIOD_S)

    def _record(self) -> None:
        rss, phase = _gib(_status_kib("VmRSS")), self.phase
        self.peaks[phase] = max(self.peaks.get(phase, 0.0), rss)

    def mark(self, phase: str) -> None:
        """End the current phase and start ``phase`` (each sampled at least at its start and end)."""
        self._record()
        self.phase = phase
        self._record()

    def watch(self, model, step: list[int]) -> None:
        """Mark the forward pass of ``model`` (``step[0]``: the current step) and what follows it."""
        model.register_forward_pre_hook(lambda *_: self.mark(f"forward_{step[0]}"))
        model.register_forward_hook(lambda *_: self.mark(f"backward_{step[0]}"))

    def stop(self) -> dict[str, float]:
        self._record()
        self._stop.set()
        self._thread.join()
        return {phase: round(gib, 3) for phase, gib in self.peaks.items()}


def _build_and_step(cfg: Config, rank: int, world: int, checkpoint: str) -> dict:
    marks = {"start": _gib(_status_kib("VmRSS"))}
    phases = PhasePeaks()
    stage_index = cfg.bench.stage % len(cfg.train.stages)
    engine, model, _, _ = build_engine(cfg, stage_index, checkpoint, bench_worker(rank, world, checkpoint), STEPS)
    marks["built_rss"], marks["build_peak"] = _gib(_status_kib("VmRSS")), _gib(_status_kib("VmHWM"))
    batch = synthetic_batch(model, workload(cfg), seed=rank)
    step = [0]
    phases.watch(model, step)
    losses = []
    for step[0] in range(STEPS):
        losses.append(float(train_step(engine, [batch]).losses["loss"]))
        phases.mark(f"after_{step[0]}")
    marks["stepped_rss"], marks["peak"] = _gib(_status_kib("VmRSS")), _gib(_status_kib("VmHWM"))
    partitioned = all(hasattr(p, "ds_tensor") for p in model.parameters())
    gathered = sum(p.numel() for p in model.parameters() if getattr(p, "ds_status", None) is not None
                   and p.ds_status.name != "NOT_AVAILABLE")
    return {"rank": rank, "gib": marks, "losses": losses, "partitioned": partitioned, "phase_peaks_gib": phases.stop(),
            "held_parameters": sum(p.ds_tensor.numel() for p in model.parameters() if hasattr(p, "ds_tensor")),
            "gathered_after_steps": gathered}


def _spawn(fn, args: tuple, nprocs: int) -> None:
    """Run ``fn`` in ``nprocs`` new processes started with ``ALLOCATOR`` in their environment."""
    import torch.multiprocessing as mp

    with patched_environ(ALLOCATOR):  # read by glibc when each new process starts
        mp.start_processes(fn, args=args, nprocs=nprocs, start_method="spawn", join=True)


# ------------------------------------------------------------------------------------------ run


def run(cfg: Config, device: torch.device, out_dir: str) -> Report:
    """Prepare the stage-start weights, then build and step on each world size of ``WORLDS``."""
    if device.type != "cpu":
        raise ValueError("build-memory measures CPU worker processes (gloo): run it with --device cpu")
    stage = bench_stage(cfg)
    if stage.zero_stage != 3:
        raise ValueError(f"build-memory measures a ZeRO-3 build; bench stage {stage.name!r} has zero_stage={stage.zero_stage}")
    with tempfile.TemporaryDirectory(prefix="vlsa-build-memory-") as scratch:
        checkpoint = Path(scratch, "00_previous_step00000001")
        checkpoint.mkdir()
        _spawn(_prepare, (cfg.to_dict(), str(checkpoint)), 1)
        counts = json.loads((checkpoint / "counts.json").read_text())
        workers = {world: _run_world(cfg, world, str(checkpoint), scratch) for world in WORLDS}
    metrics = _metrics(counts, workers)
    settings = {"preset": cfg.preset, "stage": stage.name, "zero_stage": 3, "trainable": sorted(stage.lr),
                "batch_per_worker": cfg.bench.batch, "tiles": cfg.bench.tiles, "text_tokens": cfg.bench.text_tokens,
                "steps": STEPS, "precision": cfg.train.precision, "threads_per_worker": cfg.bench.threads,
                "zero3_live_parameters": cfg.train.zero3_live_parameters,
                "zero3_reuse_distance": cfg.train.zero3_reuse_distance, "worlds": list(WORLDS),
                "worker_environment": ALLOCATOR}
    return Report("build-memory", metrics, settings, describe(device), _lines(metrics))


def _run_world(cfg: Config, world: int, checkpoint: str, scratch: str) -> list[dict]:
    out = Path(scratch, f"world{world}")
    out.mkdir()
    _spawn(_worker, (world, _free_port(), world_config(cfg, world).to_dict(), checkpoint, str(out)), world)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def _metrics(counts: dict, workers: dict[int, list[dict]]) -> dict:
    one = workers[1][0]["gib"]["peak"]
    two = max(r["gib"]["peak"] for r in workers[2])
    return {
        "parameters": counts["parameters"], "llm_parameters": counts["llm_parameters"],
        "trainable_parameters": counts["trainable_parameters"], "prepare_peak_gib": counts["peak_gib"],
        "workers": {str(world): ranks for world, ranks in workers.items()},
        "peak_gib_1_worker": one, "peak_gib_2_workers": two, "ratio": two / one, "goal": GOAL,
        "meets_goal": two / one <= GOAL,
    }


def _lines(m: dict) -> list[str]:
    rows = [[world, r["rank"], f"{r['gib']['start']:.3f}", f"{r['gib']['build_peak']:.3f}", f"{r['gib']['built_rss']:.3f}",
             f"{r['gib']['peak']:.3f}", f"{r['held_parameters']:,}"]
            for world, ranks in m["workers"].items() for r in ranks]
    lines = [f"model: {m['parameters']:,} parameters ({m['llm_parameters']:,} in the LLM), "
             f"{m['trainable_parameters']:,} trainable in the stage", ""]
    lines += table(["workers", "rank", "RSS at start", "peak to built engine", "RSS built", "peak after steps",
                    "parameter values held"], rows)
    lines += ["", "peak resident memory by phase (GiB; forward_k: step k's forward pass, backward_k: from its end through "
                  "the optimizer step, after_k: until the next step):"]
    lines += [f"  {world} workers, rank {r['rank']}: " + ", ".join(f"{k} {v:.3f}" for k, v in r["phase_peaks_gib"].items())
              for world, ranks in m["workers"].items() for r in ranks]
    lines += ["", f"peak per worker: 1 worker {m['peak_gib_1_worker']:.3f} GiB, 2 workers (the larger) "
                  f"{m['peak_gib_2_workers']:.3f} GiB: ratio {m['ratio']:.3f} (goal <= {m['goal']})",
              f"stage-start weights written by a plain build in a separate process (peak {m['prepare_peak_gib']:.3f} GiB)",
              "GiB of resident memory from /proc/self/status (VmRSS now, VmHWM peak since the process started)"]
    return lines
