"""``startup``: a training worker's time to its first step, with 600 and with 60,000 records.

The demo's Stage I file (600 records, one image each) and the same records repeated 100 times
under new ids (60,000 records, the same images referenced again) are validated once with the
driver-side pass's check (``vlsa.data.validate``, here in-process; timed apart as ``validate_s``). Then a fresh
process per measurement does what a worker does before its first optimizer step: build the
tokenizer, the stage's data from the validation manifest, the DeepSpeed engine, and run one step.
Sizes alternate (small, large, small, ...) and medians are compared: ``ratio`` = large / small.
Imports and process start-up are outside the timed span (they do not depend on the data).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from vlsa.bench.device import describe
from vlsa.bench.report import Report, fmt_seconds
from vlsa.config import Config, config_from_dict
from vlsa.data.demo import generate_demo
from vlsa.data.validate import run_validation
from vlsa.model.builder import build_model_tokenizer
from vlsa.train import state as train_state
from vlsa.train.data import build_stage_data, take
from vlsa.train.loop import Worker, _single_process_group, build_engine, import_deepspeed
from vlsa.train.step import train_step

FACTOR = 100
"""The large file repeats the small one this many times (600 -> 60,000 with the default demo)."""


def repeated(records: list[dict], count: int) -> list[dict]:
    """``count`` records cycling through ``records`` with new ids (the images are referenced again)."""
    return [{**records[i % len(records)], "id": f"{records[i % len(records)]['id']}-{i // len(records)}"}
            for i in range(count)]


def first_step(cfg: Config, validation: str) -> dict[str, float]:
    """Seconds of each start-up phase of a one-worker Stage I, up to and including its first step."""
    import_deepspeed()
    scratch = train_state.scratch_root(cfg.run.scratch_dir)
    worker = Worker(0, 1, torch.device("cpu"), train_state.Saver(scratch, 0, 1), scratch)
    _single_process_group(worker.device)
    started = time.perf_counter()
    tokenizer = build_model_tokenizer(cfg)
    data = build_stage_data(cfg, cfg.train.stages[0], tokenizer, rank=0, world_size=1, validation=validation)
    built = time.perf_counter()
    engine, _, _, _ = build_engine(cfg, 0, "", worker, data.total_steps)
    ready = time.perf_counter()
    train_step(engine, take(data.micro_batches(), engine.gradient_accumulation_steps()))
    done = time.perf_counter()
    return {"data_s": built - started, "engine_s": ready - built, "step_s": done - ready, "total_s": done - started}


def _measure(cfg: Config, validation: str) -> dict[str, float]:
    """``first_step`` in a fresh Python process (nothing cached from an earlier measurement)."""
    code = ("import json, sys; from vlsa.bench.startup import first_step; from vlsa.config import config_from_dict; "
            "a = json.loads(sys.argv[1]); print('RESULT ' + json.dumps(first_step(config_from_dict(a['cfg']), a['v'])))")
    done = subprocess.run([sys.executable, "-c", code, json.dumps({"cfg": cfg.to_dict(), "v": validation})],
                          capture_output=True, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"}, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"start-up measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _prepare(cfg: Config, folder: Path) -> dict[int, tuple[Config, str, float]]:
    """Per size: (config whose Stage I reads that file, its validation manifest, validation seconds)."""
    demo = generate_demo(cfg.demo, folder / "demo", seed=cfg.train.seed)
    records = json.loads(Path(demo.pretrain).read_text())
    out = {}
    for size in (len(records), FACTOR * len(records)):
        data_file = folder / f"pretrain-{size}.json"
        data_file.write_text(json.dumps(repeated(records, size)))
        data = cfg.to_dict()
        stage = data["train"]["stages"][0]
        stage["data"] |= {"train": str(data_file), "image_root": demo.image_root}
        sized = config_from_dict(data)
        uri = str(folder / f"validation-{size}.json")
        started = time.perf_counter()
        # The pass's own per-task check, in this process: the set is small (600 distinct images).
        run_validation(sized.train.stages[0].data, sized.label.decode, uri, use_ray=False)
        out[size] = (sized, uri, time.perf_counter() - started)
    return out


def run(cfg: Config, device: torch.device, out_dir: str) -> Report:
    """Validate both sizes once, then time the start-up ``bench.repeats`` times per size, alternating."""
    if device.type != "cpu":
        raise ValueError("startup measures the CPU worker path; use --device cpu")
    repeats = max(1, cfg.bench.repeats)
    with tempfile.TemporaryDirectory(prefix="vlsa-bench-startup-") as tmp:
        prepared = _prepare(cfg, Path(tmp))
        sizes = tuple(prepared)
        runs: dict[int, list[dict[str, float]]] = {size: [] for size in sizes}
        for _ in range(repeats):
            for size in sizes:
                sized, uri, _ = prepared[size]
                runs[size].append(_measure(sized, uri))
    med = {size: {k: statistics.median(r[k] for r in runs[size]) for k in runs[size][0]} for size in sizes}
    small, large = sizes
    metrics: dict[str, Any] = {"ratio": med[large]["total_s"] / med[small]["total_s"]}
    for size in sizes:
        metrics[f"first_step_s_{size}"] = med[size]["total_s"]
        metrics[f"data_s_{size}"] = med[size]["data_s"]
        metrics[f"validate_s_{size}"] = prepared[size][2]
    lines = [f"time to the first step (median of {repeats}, fresh process each): "
             + ", ".join(f"{size} records {fmt_seconds(med[size]['total_s'])}" for size in sizes)
             + f"; ratio {metrics['ratio']:.3f}"]
    lines += [f"  {size}: data {fmt_seconds(med[size]['data_s'])}, engine {fmt_seconds(med[size]['engine_s'])}, "
              f"step {fmt_seconds(med[size]['step_s'])}; one-time validation {fmt_seconds(prepared[size][2])}"
              for size in sizes]
    settings = {"preset": cfg.preset, "sizes": list(sizes), "repeats": repeats,
                "distinct_images": cfg.demo.train_images}
    return Report("startup", metrics, settings, describe(device), lines)
