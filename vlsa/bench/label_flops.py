"""FLOPs of labeling one image, and the images/s no device can exceed at its peak.

What is counted: the VQ-VAE encoder and its ``quant_conv`` at ``model.vq_image_size``, the nearest-code search
(positions x codes x code dimension multiply-adds), and the VAE encoder at ``model.recon.image_size``. The models
are built from their configs on the meta device and run under torch's FLOP counter: nothing is computed or
allocated, so the count is exact for the configured architectures at the real sizes, on any machine. As in
``vlsa.bench.flops``, a multiply-add is 2 FLOPs and norms and activations are left out.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from vlsa.config import Config
from vlsa.model.geometry import component_config


def _meta(cls, config: dict):
    with torch.device("meta"):
        return cls.from_config(config).eval()


def _counted(fn, side: int) -> tuple[int, torch.Tensor]:
    """(FLOPs, output) of ``fn`` on one meta image of ``side`` x ``side`` pixels."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        out = fn(torch.empty(1, 3, side, side, device="meta"))
    return counter.get_total_flops(), out


def label_flops(cfg: Config) -> dict[str, float]:
    """FLOPs per image by part (``vq``, ``codebook_search``, ``vae``) and their ``total``."""
    from diffusers import AutoencoderKL, VQModel

    vq = _meta(VQModel, component_config(cfg.model.vq, "model.vq"))
    vae = _meta(AutoencoderKL, component_config(cfg.model.recon.vae, "model.recon.vae"))
    encoder, latents = _counted(lambda x: vq.quant_conv(vq.encoder(x)), cfg.model.vq_image_size)  # (1, D, h, w)
    codes, dim = vq.quantize.embedding.weight.shape
    counts = {
        "vq": encoder,
        # the distance matrix's products, positions x codes x dim; its norms are O(positions + codes)
        "codebook_search": 2 * latents.shape[2] * latents.shape[3] * codes * dim,
        "vae": _counted(vae.encode, cfg.model.recon.image_size)[0],
    }
    return {k: float(v) for k, v in counts.items()} | {"total": float(sum(counts.values()))}


def images_per_s_bound(flops_per_image: float, peak_flops: float) -> float:
    """Images/s a device would label if every FLOP ran at its peak: no implementation exceeds it."""
    return peak_flops / flops_per_image
