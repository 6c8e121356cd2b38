"""Reconstructions from the projector outputs, as in Fig. 4 of the paper, with PSNR and SSIM.

For each image the model's visual cue (the projector outputs [V; P], or for ROSS-style models the
LLM's hidden states over the image) conditions ``ReconstructionHead.sample``, which integrates the
flow from noise and decodes with the VAE. The reconstruction is compared with the VAE's input (the
padded canvas at ``model.recon.image_size``, the same view the training target is made from), so
two checkpoints can be compared by how much of the image their visual tokens keep (e.g. with and
without reconstructive training). The VAE itself bounds what any checkpoint can reach.

    python -m vlsa.eval.reconstruct --checkpoint DIR --images DIR_OR_FILES --out DIR [--config C] [k=v ...]

writes ``reconstruction.png`` (one row per image: input | reconstruction) and ``metrics.json``.
SSIM is Wang et al. (2004): an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, averaged
over the valid window positions and the RGB channels, on values in [0, 1].
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vlsa.config import DecodeConfig, load_config
from vlsa.eval.infer import load_model, pack_images
from vlsa.io import storage
from vlsa.io.grid import side_by_side
from vlsa.io.image import ImageRejected, decode_image
from vlsa.model.encoding import recon_pixels

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


# ------------------------------------------------------------------------------------------ metrics


def _as_batch(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(N, C, H, W) float64 from (C, H, W) or (N, C, H, W)."""
    x = torch.as_tensor(x).double()
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4:
        raise ValueError(f"expected an image (C, H, W) or batch (N, C, H, W), got shape {tuple(x.shape)}")
    return x


def psnr(a, b, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image (N,) in dB; ``inf`` for identical images."""
    a, b = _as_batch(a), _as_batch(b)
    if a.shape != b.shape:
        raise ValueError(f"psnr needs images of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    mse = ((a - b) ** 2).flatten(1).mean(1)  # (N,)
    return 10.0 * torch.log10(data_range**2 / mse)  # mse 0 -> inf


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """A normalised 2-D Gaussian window (size, size)."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a, b, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity per image (N,): 1.0 for identical images (window shrinks for tiny images)."""
    a, b = _as_batch(a), _as_batch(b)
    if a.shape != b.shape:
        raise ValueError(f"ssim needs images of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    side = min(window, a.shape[-1], a.shape[-2])
    side -= 1 - side % 2  # an odd window that fits the image
    channels = a.shape[1]
    kernel = gaussian_window(side, sigma).expand(channels, 1, side, side).contiguous()

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, kernel, groups=channels)  # (N, C, H', W'), valid positions only

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (num / den).flatten(1).mean(1)


def image_metrics(inputs: torch.Tensor, outputs: torch.Tensor) -> dict:
    """Per-image and mean PSNR (dB) and SSIM of ``outputs`` against ``inputs``, both (N, 3, S, S) in [-1, 1]."""
    a, b = (inputs.double().clamp(-1, 1) + 1) / 2, (outputs.double().clamp(-1, 1) + 1) / 2
    p, s = psnr(a, b).tolist(), ssim(a, b).tolist()
    return {"psnr": float(np.mean(p)), "ssim": float(np.mean(s)), "psnr_per_image": p, "ssim_per_image": s,
            "images": len(p)}


# ------------------------------------------------------------------------------------------ sampling


def model_views(model, images: list[Image.Image]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(encoder inputs on the model's device, VAE-input targets (N, 3, S, S) in [-1, 1])."""
    if not images:
        raise ValueError("reconstruction needs at least one image")
    device = next(model.parameters()).device
    encoder = model.encoder()
    rgb = [im.convert("RGB") for im in images]
    pixels = {k: v.to(device) for k, v in pack_images([encoder(im) for im in rgb], rgb).items()}
    size = model.recon_head.image_size
    targets = torch.stack([recon_pixels(im.convert("RGB"), size, model.image_size) for im in images])
    return pixels, targets


@torch.no_grad()
def reconstruction_grid(model, images: list[Image.Image], steps: int | None = None,
                        seed: int = 0) -> tuple[Image.Image, dict]:
    """(side-by-side grid, PSNR/SSIM metrics) of reconstructions sampled from the model's visual cues.

    ``steps``: Euler steps of the sampler (None: ``model.recon.sample_steps``); ``seed`` fixes the
    noise, so the same checkpoint gives the same grid. The model's train/eval mode is restored.
    """
    if model.recon_head is None:
        raise ValueError("this model has no reconstruction head (model.recon.enabled=false or an exported "
                         "inference model); reconstruct from a training checkpoint")
    was_training = model.training
    model.eval()
    try:
        pixels, targets = model_views(model, images)
        device = pixels["pixel_lo"].device
        generator = torch.Generator(device=device).manual_seed(seed)
        outputs = model.reconstruct(**pixels, steps=steps, generator=generator).float().cpu()  # (N, 3, S, S)
    finally:
        model.train(was_training)
    metrics = image_metrics(targets, outputs)
    metrics.update(steps=steps or model.recon_head.sample_steps, seed=seed)
    return side_by_side(targets, outputs), metrics


# ------------------------------------------------------------------------------------------ CLI


def image_files(sources: list[str]) -> list[str]:
    """Image paths from files and folders (folders: their image files, sorted), local or ``s3://``."""
    found: list[str] = []
    for source in sources:
        if source.lower().endswith(IMAGE_SUFFIXES):
            found.append(source)
            continue
        inside = [p for p in storage.list_files(source) if p.lower().endswith(IMAGE_SUFFIXES)]
        if not inside:
            raise FileNotFoundError(f"{source}: not an image file and no image files below it")
        found += inside
    return found


def read_images(paths: list[str], decode: DecodeConfig) -> list[Image.Image]:
    """Safely decoded RGB images; an unreadable one is an error naming its path."""
    images = []
    for path in paths:
        try:
            images.append(decode_image(storage.read_bytes(path, max_bytes=decode.max_bytes), decode))
        except (ImageRejected, storage.ReadRefused) as err:
            raise ValueError(f"image {path}: {err}") from None
    return images


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vlsa.eval.reconstruct", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True,
                        help="stage-end training checkpoint (folder with model.safetensors)")
    parser.add_argument("--images", required=True, nargs="+", help="image files and/or folders (local or s3://)")
    parser.add_argument("--out", required=True, help="output folder (local or s3://)")
    parser.add_argument("--config", default="tiny", help="the run's preset name or YAML path (default: tiny)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: model.recon.sample_steps)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--limit", type=int, default=16, help="at most this many images (default 16)")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides of the run, e.g. model.cache_dir=DIR")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Write the grid and metrics of a checkpoint; print the metrics as one JSON object."""
    import io

    args = _parser().parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    paths = image_files(args.images)[: args.limit]
    model = load_model(args.checkpoint, cfg)
    grid, metrics = reconstruction_grid(model, read_images(paths, cfg.label.decode), steps=args.steps, seed=args.seed)
    metrics["files"] = paths
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    storage.write_bytes(storage.join(args.out, "reconstruction.png"), buffer.getvalue())
    storage.write_bytes(storage.join(args.out, "metrics.json"), json.dumps(metrics, indent=1).encode())
    print(json.dumps({k: metrics[k] for k in ("psnr", "ssim", "images", "steps", "seed")}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
