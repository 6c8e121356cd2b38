"""``latency``: the paper's Fig. 5 -- inference prefill latency and FLOPs per image vs input resolution.

For each entry g of ``bench.latency_grids``, one square image of side g x the vision input size
(g^2 tiles) goes through the compressive encoding and the model's prefill: vision tower on X_Lo and
the tiles, projector, and one LLM forward over the visual tokens (no text, as the paper strips the
instructions; KV cache built, logits of the last position only). The inference models carry no
denoiser, VAE or Epigone. VLSA and AnyRes alternate at each resolution. Output: a table, and a PNG
plot when matplotlib is installed.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlsa.bench import flops, variants
from vlsa.bench.device import describe, dtype_for
from vlsa.bench.loop import build_model_on
from vlsa.bench.report import Report, table
from vlsa.bench.timing import interleave, paired_ratios, summary
from vlsa.config import Config

VARIANTS = (("vlsa", variants.vlsa_config), ("anyres", variants.anyres_config))


def test_image(side: int, seed: int = 0) -> Image.Image:
    """A square RGB image with some structure (content does not change the work)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))


def _with_tile_cap(cfg: Config, grid: int) -> Config:
    """Room for g x g tiles: VLSA's tile cap, and AnyRes resolutions up to g x g (LLaVA-NeXT's list scaled up,
    so a square image of g tiles a side is cut into g x g tiles by both variants)."""
    return cfg.with_overrides({"model.encoding.max_tiles": max(grid * grid, cfg.model.encoding.max_tiles),
                               "model.encoding.anyres_grids": [[r, c] for r in range(1, grid + 1)
                                                               for c in range(1, grid + 1)]})


def prefill_fn(model, side: int, device: torch.device):
    """A closure running one prefill of an image of ``side`` pixels; returns (fn, visual tokens)."""
    image = test_image(side)
    pixel_lo, pixel_hi = model.encoder()(image)
    pixel_lo, pixel_hi = pixel_lo[None].to(device), pixel_hi[None].to(device)  # (1, 3, s, s), (1, m, 3, s, s)
    sizes = torch.tensor([[image.height, image.width]], device=device)  # (1, 2)
    ids = torch.tensor([[model.image_token_id]], device=device)
    ones, counts = torch.ones_like(ids), torch.ones(1, dtype=torch.long, device=device)
    tokens = model.visual_tokens(image.height, image.width, pixel_hi.shape[1])
    if tokens > model.config.llm.max_length:
        raise ValueError(f"latency at {side}px: {tokens} visual tokens exceed model.llm.max_length "
                         f"{model.config.llm.max_length}")

    @torch.inference_mode()
    def run_once():
        spliced, _ = model.prepare_inputs(ids, ones, counts, pixel_lo, pixel_hi, image_sizes=sizes)
        return model.language_model(inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask,
                                    use_cache=True, logits_to_keep=1).logits

    return run_once, tokens


def measure(cfg: Config, device: torch.device) -> list[dict]:
    """One row per resolution: tokens, median latency, FLOPs of each variant, and the ratios."""
    dtype, bench = dtype_for(cfg, device), cfg.bench
    grid = max(bench.latency_grids)
    configs = {name: variants.inference_config(_with_tile_cap(make(cfg), grid)) for name, make in VARIANTS}
    models = {name: build_model_on(c, device, dtype).eval() for name, c in configs.items()}
    dims = {name: flops.ModelDims.from_config(configs[name], len(m.tokenizer)) for name, m in models.items()}
    rows = []
    for g in bench.latency_grids:
        side = g * next(iter(models.values())).image_size
        fns = {name: prefill_fn(m, side, device) for name, m in models.items()}
        times = interleave({k: fn for k, (fn, _) in fns.items()}, bench.warmup, bench.repeats, device)
        pick = (lambda t: t.cpu) if device.type == "cpu" else (lambda t: t.wall)
        work = flops.Workload(batch=1, tiles=g * g, text_tokens=0, logits_all=False)
        row = {"side": side, "tiles": g * g}
        for name in models:
            row[name] = {"tokens": fns[name][1], "latency_s": summary(pick(times[name]))["median_s"],
                         "flops": flops.count(dims[name], work).total}
        row["ratio"] = paired_ratios(pick(times["vlsa"]), pick(times["anyres"]))["median"]
        row["flop_ratio"] = row["vlsa"]["flops"] / row["anyres"]["flops"]
        rows.append(row)
    return rows


def plot(rows: list[dict], path: Path, title: str) -> str | None:
    """Latency and GFLOP per image vs resolution, VLSA vs AnyRes, as a PNG (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    sides = [r["side"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for name, label in (("vlsa", "VLSA (SA-Perceiver)"), ("anyres", "LLaVA-NeXT AnyRes")):
        axes[0].plot(sides, [r[name]["latency_s"] * 1e3 for r in rows], marker="o", label=label)
        axes[1].plot(sides, [r[name]["flops"] / 1e9 for r in rows], marker="o", label=label)
    for ax, ylabel in zip(axes, ("prefill latency per image (ms)", "GFLOP per image")):
        ax.set_xlabel("input side (px)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def run(cfg: Config, device: torch.device, out_dir: str) -> Report:
    """Measure every resolution, print the table, write the plot."""
    started = time.strftime("%Y-%m-%d")
    rows = measure(cfg, device)
    png = plot(rows, Path(out_dir) / f"latency_{cfg.preset}_{device.type}.png",
               f"vlsa.bench latency, preset {cfg.preset}, {device.type}, {started}")
    metrics = {"rows": rows, "ratios": [r["ratio"] for r in rows], "flop_ratios": [r["flop_ratio"] for r in rows],
               "plot": png}
    clock = "process CPU" if device.type == "cpu" else "wall-clock"
    header = ["side px", "tiles", "tokens VLSA", "tokens AnyRes", f"VLSA ms ({clock})", "AnyRes ms", "ratio",
              "GFLOP VLSA", "GFLOP AnyRes", "FLOP ratio"]
    body = [[r["side"], r["tiles"], r["vlsa"]["tokens"], r["anyres"]["tokens"], f"{r['vlsa']['latency_s'] * 1e3:.2f}",
             f"{r['anyres']['latency_s'] * 1e3:.2f}", f"{r['ratio']:.3f}", f"{r['vlsa']['flops'] / 1e9:.3f}",
             f"{r['anyres']['flops'] / 1e9:.3f}", f"{r['flop_ratio']:.3f}"] for r in rows]
    lines = table(header, body) + ["", f"plot: {png or 'not written (matplotlib is not installed)'}"]
    settings = {"preset": cfg.preset, "grids": cfg.bench.latency_grids, "warmup": cfg.bench.warmup,
                "repeats": cfg.bench.repeats, "dtype": str(dtype_for(cfg, device)).replace("torch.", ""),
                "device": device.type, "threads": torch.get_num_threads()}
    return Report("latency", metrics, settings, describe(device), lines)
