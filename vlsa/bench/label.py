"""``label``: labeling throughput (decode, VQ encode + codebook search, VAE encode) and device busy fraction.

Runs the labeling code itself, in one process: ``decode_image`` on encoded JPEG bytes, ``prepare``
(the CPU resizing) and ``LabelComputer.compute`` (the frozen VQ-VAE with its nearest-code search and
the VAE, timed inside by ``LabelComputer.model_seconds``). Reports images/s end to end, images/s of
the model calls alone (what one device sustains when decoding runs elsewhere, as in the Ray Data
pipeline), and the fraction of the time the device computes.

Then the labeling actor's own loop, decoding done elsewhere as in the pipeline: shards labeled and
written as Parquet to a local folder, once with every write in line and once through the bounded
background writer (``label.write_ahead``); its busy fraction is model time / the loop's wall time.
"""

from __future__ import annotations

import io
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from vlsa.bench.device import describe, table_peak
from vlsa.bench.label_flops import images_per_s_bound, label_flops
from vlsa.bench.report import Report, table
from vlsa.config import Config
from vlsa.io.image import decode_image
from vlsa.labels.compute import LabelComputer, prepare
from vlsa.labels.writer import ShardWriter


def jpeg_images(n: int, width: int, height: int, seed: int = 0) -> list[bytes]:
    """``n`` encoded JPEGs of smooth gradients with noise (so decoding does real work)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    out = []
    for _ in range(n):
        base = (np.sin(xs[..., None] / rng.uniform(5, 40) + rng.uniform(0, 6, 3)) * 80 + 128
                + np.cos(ys[..., None] / rng.uniform(5, 40)) * 40)
        rgb = np.clip(base + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def label_pass(computer, blobs: list[bytes], cfg: Config) -> dict[str, float]:
    """Seconds spent decoding, preparing and in the models for ``blobs``."""
    t0 = time.perf_counter()
    images = [decode_image(b, cfg.label.decode) for b in blobs]
    t1 = time.perf_counter()
    prepared = [prepare(image, computer.geometry) for image in images]
    t2 = time.perf_counter()
    before = computer.model_seconds
    rows = computer.compute(prepared)
    t3 = time.perf_counter()
    if len(rows) != len(blobs):
        raise RuntimeError(f"labeling returned {len(rows)} rows for {len(blobs)} images")
    return {"decode_s": t1 - t0, "prepare_s": t2 - t1, "compute_s": t3 - t2,
            "model_s": computer.model_seconds - before, "total_s": t3 - t0}


def run(cfg: Config, device: torch.device, out_dir: str) -> Report:
    """One warm-up batch, then one timed pass over ``bench.label_images`` images."""
    computer = LabelComputer(cfg, device=device)
    side = cfg.model.vq_image_size
    width, height = side, max(1, side * 3 // 4)  # a typical 4:3 photo at the VQ input size
    label_pass(computer, jpeg_images(cfg.label.batch_size, width, height, seed=1), cfg)
    n = cfg.bench.label_images
    t = label_pass(computer, jpeg_images(n, width, height), cfg)
    metrics = {"images_per_s": n / t["total_s"], "device_images_per_s": n / t["model_s"],
               "busy_fraction": t["model_s"] / t["total_s"],
               "seconds_per_image": {k.removesuffix("_s"): v / n for k, v in t.items()}}
    shard_rows = max(1, n // 4)
    prepared = prepare_all(computer, jpeg_images(n, width, height, seed=2), cfg)
    actor_pass(computer, prepared[:shard_rows], shard_rows, 1)  # warm-up: the first Parquet write pays set-up
    actor = {mode: actor_pass(computer, prepared, shard_rows, pending)
             for mode, pending in (("inline", 0), ("background", max(1, cfg.label.write_ahead)))}
    metrics["actor_busy_fraction"] = {mode: a["busy_fraction"] for mode, a in actor.items()}
    metrics["actor_images_per_s"] = {mode: a["images_per_s"] for mode, a in actor.items()}
    metrics |= flop_figures(cfg, device, metrics["device_images_per_s"])
    settings = {"preset": cfg.preset, "images": n, "image_size": f"{width}x{height} JPEG",
                "batch_size": cfg.label.batch_size, "vq_image_size": side,
                "recon_image_size": cfg.model.recon.image_size, "device": device.type,
                "precision": cfg.label.precision, "shard_rows": shard_rows, "write_ahead": cfg.label.write_ahead,
                "writes_to": "local disk (Parquet)", "threads": torch.get_num_threads()}
    rows = [[k, f"{v * 1e3:.2f} ms"] for k, v in metrics["seconds_per_image"].items()]
    lines = [f"images/s end to end {metrics['images_per_s']:.2f}; model calls alone "
             f"{metrics['device_images_per_s']:.2f}; device busy {metrics['busy_fraction']:.1%} of the time",
             *_flop_lines(metrics), ""]
    lines += table(["stage", "per image"], rows)
    lines += ["", "labeling actor loop (decoding elsewhere), shards written as Parquet:", ""]
    lines += table(["writes", "images/s", "busy"], [[mode, f"{a['images_per_s']:.2f}", f"{a['busy_fraction']:.1%}"]
                                                   for mode, a in actor.items()])
    return Report("label", metrics, settings, describe(device), lines)


def flop_figures(cfg: Config, device: torch.device, device_images_per_s: float) -> dict:
    """FLOPs per image, the rate the model calls achieved, and on a GPU of known peak the images/s bound and
    the share of the peak used (None elsewhere)."""
    flops = label_flops(cfg)
    achieved = flops["total"] * device_images_per_s
    peak = table_peak(device)
    return {"flops_per_image": flops, "achieved_flops": achieved,
            "peak_flops": peak[0] if peak else None, "peak_source": peak[1] if peak else None,
            "images_per_s_bound": images_per_s_bound(flops["total"], peak[0]) if peak else None,
            "flop_utilisation": achieved / peak[0] if peak else None}


def _flop_lines(m: dict) -> list[str]:
    f = m["flops_per_image"]
    lines = [f"{f['total'] / 1e9:.3f} GFLOP per image (VQ-VAE encoder {f['vq'] / 1e9:.3f}, nearest-code search "
             f"{f['codebook_search'] / 1e9:.3f}, VAE encoder {f['vae'] / 1e9:.3f}): the model calls ran at "
             f"{m['achieved_flops'] / 1e12:.3f} TFLOP/s"]
    if m["peak_flops"]:
        lines.append(f"{m['flop_utilisation']:.1%} of the {m['peak_source']}; at that peak no labeling exceeds "
                     f"{m['images_per_s_bound']:.0f} images/s")
    return lines


def prepare_all(computer, blobs: list[bytes], cfg: Config) -> list:
    """Decoded and prepared images, as a labeling actor receives them from the read tasks."""

    return [prepare(decode_image(b, cfg.label.decode), computer.geometry) for b in blobs]


def actor_pass(computer, prepared: list, shard_rows: int, max_pending: int) -> dict[str, float]:
    """Label ``prepared`` shard by shard and write each shard, in line (0) or in the background.

    With a background writer, shard k is reported (its future waited on) once shard k+1 is labeled,
    as two concurrent actor calls do in the pipeline.
    """

    with tempfile.TemporaryDirectory() as out:
        writer = ShardWriter(out, max_pending=max_pending)
        before, started, previous = computer.model_seconds, time.perf_counter(), None
        for shard, start in enumerate(range(0, len(prepared), shard_rows)):
            rows = computer.compute(prepared[start : start + shard_rows])
            for k, row in enumerate(rows):
                row.update(id=f"{shard}-{k}", image=f"{shard}-{k}.jpg")
            future = writer.submit(shard, rows, [])
            if previous is not None:
                previous.result()
            previous = future
        writer.close()
        wall = time.perf_counter() - started
    model = computer.model_seconds - before
    return {"busy_fraction": model / wall, "images_per_s": len(prepared) / wall}
