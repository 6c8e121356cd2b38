"""The per-worker training function that Ray Train runs: the stages in sequence, one DeepSpeed
engine each.

Each stage builds the model from the config, loads the weights the previous stage ended with (or
``train.init_from``), freezes and groups parameters for its learning rates (Tab. 7), and trains
with its own data, batch size and ZeRO stage. On start the newest complete checkpoint of the run
decides where to continue: after a finished stage, or inside one with the optimizer, scheduler,
RNG and data position restored. Rank 0 logs to the stage's MLflow run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from vlsa.config import Config, ConfigError, config_from_dict
from vlsa.data.collate import Collator
from vlsa.data.ssft import CoverageMeter
from vlsa.io import storage
from vlsa.io.grid import side_by_side
from vlsa.io.system_metrics import NodeMonitor
from vlsa.io.tracking import StageTracker
from vlsa.labels.schema import MANIFEST as LABEL_MANIFEST
from vlsa.model import weights as model_weights
from vlsa.model.builder import build_model, build_model_tokenizer
from vlsa.model.deepspeed_cpu import import_deepspeed
from vlsa.model.params import apply_stage
from vlsa.model.reconstruction import decode_latent
from vlsa.model.zero3 import is_zero3
from vlsa.train import checkpoint as ckpt
from vlsa.train import state as train_state
from vlsa.train.data import build_stage_data, take
from vlsa.train.deepspeed_config import deepspeed_config, use_bf16
from vlsa.train.schedule import build_scheduler
from vlsa.train.step import SkipGuard, StepResult, to_device, train_step
from vlsa.train.rejects import TrainingRejects

logger = logging.getLogger(__name__)
GRID_IMAGES = 4


def say(line: str) -> None:
    """One progress line on the worker's stdout, which Ray streams to the driver.

    Not ``print``: Ray Train patches it in workers to log *and* echo when stdout is wrapped, so
    every line would reach the console twice.
    """
    sys.stdout.write(f"[vlsa] {line}\n")
    sys.stdout.flush()


def eta(elapsed_s: float, done: int, left: int) -> str:
    """Time left at the pace so far, as ``m:ss`` (``?`` before the first step)."""
    if done < 1:
        return "?"
    seconds = round(elapsed_s / done * left)
    return f"{seconds // 60}:{seconds % 60:02d}"


@dataclass(frozen=True)
class JobInfo:
    """What the driver resolved for the workers."""

    run: str
    """Run folder (``<storage_path>/<name>``, local or ``s3://``)."""
    tracking_uri: str
    """MLflow tracking URI."""
    parent_run_id: str
    """The job's MLflow run; stages log to runs nested under it."""
    validations: tuple[str, ...] = ()
    """Per stage, the validation manifest the driver checked (``vlsa.train.prepare``); none: the
    workers validate the data themselves (small runs started without the driver)."""


@dataclass(frozen=True)
class StepInfo:
    """Passed to :class:`Hooks`: where the loop is."""

    stage_index: int
    stage: str
    step: int
    rank: int
    result: StepResult | None = None
    total_steps: int = 0
    """Optimizer steps of the stage (0 where not known)."""


@dataclass
class Hooks:
    """Optional callbacks for tests and tools; a normal run has none."""

    on_batch: Callable[[dict, StepInfo], dict] | None = None
    """Called with each micro-batch before the step (``step`` is the step about to run)."""
    after_step: Callable[[StepInfo], None] | None = None
    """Called after each optimizer step, before any checkpoint of that step."""
    after_restore: Callable[[StepInfo, Any], None] | None = None
    """Called on every worker after it resumed from a checkpoint, with what it fetched
    (:class:`vlsa.train.restore.Fetched`)."""


@dataclass(frozen=True)
class Worker:
    rank: int
    world_size: int
    device: torch.device
    saver: train_state.Saver
    """Writes this worker's checkpoints (the upload runs in the background)."""
    scratch: Path
    """This machine's scratch folder (``run.scratch_dir``)."""
    local_rank: int = 0
    """Rank among the workers of this node (its first one samples the node's system metrics)."""
    node: str = "node-0"
    """This node's name in the system metrics: ``node-<node rank>-<host>``."""


# ------------------------------------------------------------------------------------------ setup


def setup_worker(use_gpu: bool, scratch_dir: str = "") -> Worker:
    """Rank, world size and device of this worker, with a process group (made here in local mode)."""
    import ray.train
    import torch.distributed as dist

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = torch.device("cuda", context.get_local_rank()) if use_gpu else torch.device("cpu")
    if use_gpu:
        torch.cuda.set_device(device)
    if not dist.is_initialized():  # ScalingConfig(num_workers=0) runs in-process without one
        _single_process_group(device)
    scratch = train_state.scratch_root(scratch_dir)
    node = f"node-{context.get_node_rank()}-{socket.gethostname()}"
    return Worker(rank, world_size, device, train_state.Saver(scratch, rank, world_size), scratch,
                  context.get_local_rank(), node)


def _single_process_group(device: torch.device) -> None:
    import socket

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)


def seed_everything(seed: int, stage_index: int, rank: int) -> None:
    """Seed Python, NumPy and torch per (run seed, stage, rank): workers draw different noise."""
    import numpy as np

    value = (seed * 1_000_003 + stage_index * 1009 + rank) % (2**31)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def enable_activation_checkpointing(model, parts) -> None:
    """Recompute the activations of ``parts`` (llm, vision, denoiser) in the backward pass (non-reentrant)."""
    if "llm" in parts:
        model.language_model.activation_checkpointing_enable()
        # transformers also hooks the input embeddings to make their output require grad (for reentrant
        # checkpointing of a model fed token ids). Checkpointing here is non-reentrant and the LLM is fed
        # inputs_embeds, so the hook is not needed; with a frozen LLM it would put the embedding matrix in
        # the backward pass, where ZeRO-3 gathers it whole again for no gradient.
        model.language_model.disable_input_require_grads()
    if "vision" in parts:
        model.vision_tower.activation_checkpointing_enable()
    if "denoiser" in parts and model.recon_head is not None:
        model.recon_head.denoiser.enable_gradient_checkpointing()


# ------------------------------------------------------------------------------------------ plan


@dataclass(frozen=True)
class Plan:
    """Where this attempt starts."""

    start: int
    """Index of the first stage to run."""
    resume: ckpt.CheckpointInfo | None
    """A mid-stage checkpoint of stage ``start`` to continue from."""
    weights: str
    """Checkpoint whose full weights stage ``start`` begins with ("" : the built model as is)."""


def make_plan(cfg: Config, run: str) -> Plan:
    """The plan from the newest complete checkpoint of ``run`` (a partial one is never considered)."""
    latest = ckpt.latest_complete(run)
    if latest is None:
        return Plan(0, None, cfg.train.init_from)
    names = [s.name for s in cfg.train.stages]
    if latest.stage_index >= len(names) or names[latest.stage_index] != latest.stage:
        raise ConfigError(f"run {run} has a checkpoint of stage {latest.stage_index} {latest.stage!r}, but the "
                          f"config's stages are {names}: use another run.name or the run's stages")
    if latest.final:
        return Plan(latest.stage_index + 1, None, latest.uri)
    before = ckpt.stage_final(run, latest.stage_index - 1) if latest.stage_index else None
    return Plan(latest.stage_index, latest, before.uri if before else cfg.train.init_from)


# ------------------------------------------------------------------------------------------ stage


def build_engine(cfg: Config, stage_index: int, weights: str, worker: Worker, total_steps: int):
    """(engine, model, optimizer, param group names) of one stage."""
    deepspeed = import_deepspeed()

    stage = cfg.train.stages[stage_index]
    ds_config = deepspeed_config(cfg, stage, worker.world_size, worker.device.type)
    model = build_stage_model(cfg, ds_config, weights)
    groups = apply_stage(model, stage)
    enable_activation_checkpointing(model, stage.activation_checkpointing)
    if not use_bf16(cfg, worker.device.type):
        model.float()  # parts loaded in bf16 (model.*.dtype) train in fp32 here; bf16 engines cast it all themselves
    model.to(worker.device).train()  # from_pretrained parts come in eval mode
    optimizer = torch.optim.AdamW([{k: v for k, v in g.items() if k != "name"} for g in groups],
                                  weight_decay=stage.weight_decay)
    scheduler = build_scheduler(optimizer, total_steps, stage.warmup_ratio)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    return engine, model, optimizer, [g["name"] for g in groups]


def build_stage_model(cfg: Config, ds_config: dict[str, Any], weights: str):
    """The model a stage starts from: built, then given the ``weights`` checkpoint's values ("" : none).

    Under ZeRO-3 it is partitioned as it is built and each rank reads only its own slices of the
    stage-start file, so no rank ever holds the whole model; otherwise every rank loads it whole.
    """
    if not is_zero3(ds_config):
        model = build_model(cfg)
        if weights:
            model.load_state_dict(ckpt.load_weights(weights), strict=True)
        return model
    model = build_model(cfg, zero3=ds_config)
    if weights:
        with ckpt.local_weights(weights, cfg.model.cache_dir) as path:
            model_weights.load_into(model, [path], strict=True)
    return model


def visual_token_counter(model) -> Callable[[dict], int]:
    """LLM input tokens of a batch: text tokens with each ``<image>`` replaced by its visual tokens."""

    def count(batch: dict) -> int:
        tiles = batch["tile_mask"].sum(dim=1).tolist() if "tile_mask" in batch else []
        sizes = batch["image_sizes"].tolist() if "image_sizes" in batch else [(0, 0)] * len(tiles)
        visual = sum(model.visual_tokens(h, w, int(m)) for (h, w), m in zip(sizes, tiles))
        return int(batch["attention_mask"].sum()) - int(batch["image_counts"].sum()) + visual

    return count


def step_metrics(result: StepResult, lrs: dict[str, float], progress: train_state.Progress, seconds: float,
                 epoch: float) -> dict[str, float]:
    """The MLflow metrics of one optimizer step."""
    metrics = {k: v for k, v in result.losses.items() if math.isfinite(v)}
    metrics |= {f"lr/{name}": lr for name, lr in lrs.items()}
    if math.isfinite(result.grad_norm):
        metrics["grad_norm"] = result.grad_norm
    metrics |= {"skipped_steps": float(progress.skips.total), "step_skipped": float(not result.applied),
                "samples_per_s": result.samples / seconds, "tokens_per_s": result.tokens / seconds,
                "epoch": epoch}
    return metrics


class StageRun:
    """One stage on one worker: engine, data, progress, tracking."""

    def __init__(self, cfg: Config, job: JobInfo, worker: Worker, stage_index: int, plan: Plan,
                 hooks: Hooks | None) -> None:
        self.cfg, self.job, self.worker, self.index = cfg, job, worker, stage_index
        self.stage = cfg.train.stages[stage_index]
        self.hooks = hooks or Hooks()
        seed_everything(cfg.train.seed, stage_index, worker.rank)

        validation = job.validations[stage_index] if job.validations else ""
        self.data = build_stage_data(cfg, self.stage, build_model_tokenizer(cfg), rank=worker.rank,
                                     world_size=worker.world_size, validation=validation)
        self.engine, self.model, self.optimizer, self.group_names = build_engine(
            cfg, stage_index, plan.weights, worker, self.data.total_steps)

        self.rejects = TrainingRejects(self.data.dataset.stats, self.stage.data.reject_threshold,
                                       f"stage {self.stage.name} data {self.stage.data.train}", worker.device)
        guard = SkipGuard(cfg.train.max_consecutive_skips, where=f"stage {self.stage.name} ")
        self.progress = train_state.Progress(0, guard)
        self.coverage = CoverageMeter()  # SSFT targets covered, on this worker's samples
        resume = plan.resume if plan.start == stage_index else None
        if resume is not None:
            self._restore(resume)
        self.tracker = self._tracker(resumed=resume is not None)
        self.monitor = self._node_monitor()
        self.pace = (time.perf_counter(), self.progress.step)
        """(time, step) the ETA of the progress lines counts from."""

    def _restore(self, info: ckpt.CheckpointInfo) -> None:
        state, fetched = train_state.restore(self.engine, info, rank=self.worker.rank,
                                             world_size=self.worker.world_size, scratch=self.worker.scratch)
        self.data.load_state_dict(state["data"])
        self.progress.step, self.progress.samples = int(state["step"]), int(state["samples"])
        self.progress.skips.load_state_dict(state["skips"])
        say(f"{self.stage.name}: rank {self.worker.rank} resumed at step {self.progress.step} from {info.uri} "
            f"({fetched.downloaded} bytes downloaded, {len(fetched.files)} files)")
        if self.hooks.after_restore is not None:
            info = StepInfo(self.index, self.stage.name, self.progress.step, self.worker.rank)
            self.hooks.after_restore(info, fetched)

    def _tracker(self, resumed: bool):
        if self.worker.rank != 0:
            return None

        tracker = StageTracker(self.job.tracking_uri, self.job.parent_run_id, self.stage.name)
        tracker.log_params({"total_steps": self.data.total_steps, "samples": len(self.data.dataset),
                            "world_size": self.worker.world_size, "zero_stage": self.stage.zero_stage,
                            "accumulation": self.stage.accumulation(self.worker.world_size)})
        tracker.client.set_tag(tracker.run_id, "vlsa.resumed", str(resumed))
        self._log_dataset(tracker)
        return tracker

    def _log_dataset(self, tracker: StageTracker) -> None:
        """The stage's data as the run's dataset input: the label manifest when the labeling job made its
        labels, else the validation manifest of its records (the driver checked either; both fingerprint
        the data)."""
        data = self.stage.data
        checked = self.job.validations[self.index] if self.job.validations else ""
        manifest = checked or (storage.join(data.labels, LABEL_MANIFEST) if data.labels else "")
        if not manifest or not storage.exists(manifest):
            return
        digest = hashlib.sha256(storage.read_bytes(manifest)).hexdigest()
        kind = "labels" if data.labels else "records"
        tracker.log_dataset(f"{self.stage.name}-{kind}", manifest, digest,
                            profile=json.dumps({"records": data.train, "samples": len(self.data.dataset)}))

    def _node_monitor(self) -> NodeMonitor | None:
        """The system-metrics monitor of this node, on its first worker, logging to the stage's run."""
        interval = self.cfg.run.mlflow.system_metrics_interval_s
        if not interval:
            return None
        run_id = [self.tracker.run_id if self.tracker is not None else None]
        if self.worker.world_size > 1:  # only rank 0 opened the stage's run
            import torch.distributed as dist

            dist.broadcast_object_list(run_id, src=0)
        if self.worker.local_rank != 0:
            return None
        return NodeMonitor(self.job.tracking_uri, run_id[0], self.worker.node, interval).start()

    # ------------------------------------------------------------------------------------ steps

    def run(self) -> str:
        """Train to the stage's last step; returns the URI of the checkpoint that ends the stage."""
        stream = self.data.micro_batches()
        accumulation = self.engine.gradient_accumulation_steps()
        self.pace = (time.perf_counter(), self.progress.step)  # the ETA counts this run's steps only
        every = self.cfg.train.checkpoint_every
        try:
            while self.progress.step < self.data.total_steps:
                self.one_step(stream, accumulation)
                if every and self.progress.step % every == 0 and self.progress.step < self.data.total_steps:
                    self.save(final=False)
            self.log_reconstructions()
            uri = self.save(final=True)
        finally:  # a failing step too: what it logged is sent before the error ends the worker
            if self.monitor is not None:
                self.monitor.stop()
            if self.tracker is not None:
                self.tracker.flush()
        if self.tracker is not None:
            self.tracker.finish()
        return uri

    def _lrs(self) -> dict[str, float]:
        return {name: float(group["lr"]) for name, group in zip(self.group_names, self.optimizer.param_groups)}

    def one_step(self, stream, accumulation: int) -> StepResult:
        info = StepInfo(self.index, self.stage.name, self.progress.step + 1, self.worker.rank)
        batches = take(stream, accumulation)
        for batch in batches:
            self.coverage.update(batch.get("ssft_coverage", []))
        self.rejects.add(batches)
        if self.hooks.on_batch is not None:
            batches = [self.hooks.on_batch(b, info) for b in batches]
        batches = [to_device(b, self.worker.device) for b in batches]
        lrs, start = self._lrs(), time.perf_counter()
        result = train_step(self.engine, batches, tokens_of=visual_token_counter(self.model))
        seconds = time.perf_counter() - start
        self.progress.step += 1
        self.progress.samples += result.samples
        self.progress.skips.record(result)
        self.rejects.sync()
        self._log(result, lrs, seconds)
        self.rejects.check()  # every rank agrees on the counts, so every rank stops together
        self.progress.skips.check(result, self.progress.step)  # raises after too many skips in a row
        if self.hooks.after_step is not None:
            self.hooks.after_step(StepInfo(self.index, self.stage.name, self.progress.step, self.worker.rank, result,
                                           self.data.total_steps))
        return result

    def _log(self, result: StepResult, lrs: dict[str, float], seconds: float) -> None:
        if self.worker.rank != 0:
            return
        epoch = self.progress.samples / max(1, len(self.data.dataset))
        metrics = step_metrics(result, lrs, self.progress, seconds, epoch) | self.coverage.means() | self.rejects.metrics()
        self.tracker.log_metrics(metrics, self.progress.step)
        total = self.data.total_steps
        step = self.progress.step
        if step == 1 or step % max(1, total // 10) == 0 or step == total:
            loss = result.losses.get("loss", float("nan"))
            started, first = self.pace
            left = eta(time.perf_counter() - started, step - first, total - step)
            say(f"{self.stage.name} step {step}/{total} loss {loss:.4f} "
                f"grad_norm {result.grad_norm:.3f} {metrics['samples_per_s']:.1f} samples/s, ETA {left}")

    # ------------------------------------------------------------------------------------ outputs

    def save(self, final: bool) -> str:
        place = train_state.Place(self.job.run, self.index, self.stage.name, self.progress.step)
        metrics = {"stage_index": float(self.index), "step": float(self.progress.step), "final": float(final)}
        start = time.perf_counter()
        uri = self.worker.saver.save(self.engine, place, self.progress, self.data.state_dict(), final=final,
                                     keep=self.cfg.train.keep_checkpoints, metrics=metrics)
        if self.tracker is not None:  # how long training waited for the save (README: checkpoint cadence)
            self.tracker.log_metrics({"checkpoint_blocked_s": time.perf_counter() - start}, self.progress.step)
        return uri

    def log_reconstructions(self) -> None:
        """Inputs vs images sampled from the projector outputs, as an artifact of the stage run.

        Every worker runs the sampling (ZeRO-3 gathers parameters collectively); rank 0 logs it.
        """
        if self.model.recon_head is None:
            return

        batch = to_device(self._grid_batch(), self.worker.device)
        generator = torch.Generator(device=self.worker.device).manual_seed(self.cfg.train.seed)
        self.model.eval()
        with torch.no_grad():
            outputs = self.model.reconstruct(batch["pixel_lo"], batch["pixel_hi"], batch["tile_mask"],
                                             generator=generator, image_sizes=batch.get("image_sizes"))
            inputs = batch.get("recon_pixels")
            if inputs is None:
                inputs = decode_latent(self.model.recon_head.vae, batch["recon_latent"])
        self.model.train()
        if self.tracker is not None:
            grid = side_by_side(inputs[:GRID_IMAGES].cpu(), outputs[:GRID_IMAGES].cpu(), min_side=64, gap=2)
            self.tracker.log_image(grid, f"reconstruction/{self.stage.name}_step{self.progress.step:08d}.png")

    def _grid_batch(self) -> dict:
        samples = []
        for i in range(len(self.data.dataset)):
            sample = self.data.dataset[i]
            if sample["pixel_lo"].shape[0]:
                samples.append(sample)
            if sum(s["pixel_lo"].shape[0] for s in samples) >= GRID_IMAGES:
                break
        return Collator(self.model.tokenizer.pad_token_id)(samples)


# ------------------------------------------------------------------------------------------ entry


def train_worker(config: dict[str, Any], hooks: Hooks | None = None) -> None:
    """Ray Train's per-worker function: ``config = {"cfg": Config.to_dict(), "job": JobInfo fields}``."""
    cfg = config_from_dict(config["cfg"])
    job = JobInfo(**{**config["job"], "validations": tuple(config["job"].get("validations", ()))})
    worker = setup_worker(cfg.run.use_gpu, cfg.run.scratch_dir)
    plan = make_plan(cfg, job.run)
    weights = plan.weights
    for index in range(plan.start, len(cfg.train.stages)):
        stage_run = StageRun(cfg, job, worker, index, Plan(plan.start, plan.resume, weights), hooks)
        weights = stage_run.run()
        del stage_run  # frees the engine before the next stage builds its own
    if plan.start == len(cfg.train.stages) and worker.rank == 0:
        say(f"every stage of run {job.run} is already complete")
