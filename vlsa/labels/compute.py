"""Label computation (Sec. 3.2, Eq. 5; Eq. 3 targets), in plain PyTorch.

For each image: the VQ-VAE codebook index of every latent position of each image quarter
(Target_VQ = argmin distance between the frozen encoder latent and the codebook) and the frozen VAE
latent of the image at the reconstruction size, already shifted and scaled as the denoiser consumes
it. The pixel targets (Target_PX: RGB values of X_Lo) are not labels: sample assembly recomputes them
from the image it decodes anyway (``vlsa.model.encoding.lowres_rgb``), cheaper than reading them.

Work splits in two so a pipeline can run it on different machines: ``prepare`` (CPU: resizing, only
uint8 arrays) and ``LabelComputer.compute`` (the model calls). ``LabelComputer.label`` chains both
and is what small in-process runs use, so the two paths are the same code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vlsa.config import Config
from vlsa.model.builder import build_vae, build_vq
from vlsa.model.encoding import recon_pixels
from vlsa.model.geometry import vision_input_side


@dataclass(frozen=True)
class LabelGeometry:
    """Image sides the labels depend on (all from the config)."""

    vision_side: int
    """Side h of X_Lo (the vision tower's input): the canvas is padded to a multiple of it."""
    vq_image_size: int
    """Side of the square image the VQ-VAE encodes."""
    recon_image_size: int
    """Side of the square image the VAE encodes."""

    @classmethod
    def from_config(cls, cfg: Config) -> "LabelGeometry":
        """The geometry of ``cfg``."""
        return cls(vision_input_side(cfg.model), cfg.model.vq_image_size, cfg.model.recon.image_size)


@dataclass
class PreparedImage:
    """One decoded image reduced to the fixed-size uint8 arrays the models and targets need."""

    width: int
    height: int
    vq_rgb: np.ndarray
    """(S_vq, S_vq, 3) uint8: the VQ-VAE input before scaling to [-1, 1]."""
    vae_rgb: np.ndarray
    """(S_rec, S_rec, 3) uint8: the VAE input before scaling to [-1, 1]."""


def _as_uint8(pixels: torch.Tensor) -> np.ndarray:
    """``recon_pixels`` output (3, S, S) in [-1, 1] back to the (S, S, 3) uint8 it was made from."""
    return np.round((pixels.permute(1, 2, 0).numpy() + 1.0) * 127.5).astype(np.uint8)


def to_unit_range(rgb: np.ndarray) -> torch.Tensor:
    """(B, S, S, 3) uint8 to (B, 3, S, S) float in [-1, 1], exactly as ``recon_pixels`` scales."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def prepare(image: Image.Image, geometry: LabelGeometry) -> PreparedImage:
    """The CPU part of labeling one RGB image.

    Both views come from the canvas padded to a multiple of the vision side, as X_Lo does, so the VQ
    indices, the pixel targets (made at assembly) and the latent show the same content at the same place. The model
    inputs travel as uint8 (4x smaller than floats); ``to_unit_range`` restores them exactly.
    """
    side = geometry.vision_side
    return PreparedImage(
        width=image.width,
        height=image.height,
        vq_rgb=_as_uint8(recon_pixels(image, geometry.vq_image_size, pad_multiple=side)),
        vae_rgb=_as_uint8(recon_pixels(image, geometry.recon_image_size, pad_multiple=side)),
    )


_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def nearest_codes(latents: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook entry (Euclidean) at every latent position.

    latents (B, D, H, W), codebook (K, D) -> (B, H, W) long. Ties go to the lowest index.
    """
    b, d, h, w = latents.shape
    if codebook.shape[1] != d:
        raise ValueError(f"latent channels {d} != codebook dimension {codebook.shape[1]}")
    flat = latents.permute(0, 2, 3, 1).reshape(-1, d)  # (B*H*W, D)
    distances = torch.cdist(flat.float(), codebook.float())  # (B*H*W, K)
    return distances.argmin(dim=1).view(b, h, w)


def split_quarters(codes: torch.Tensor) -> torch.Tensor:
    """(B, H, W) -> (B, 4, H/2, W/2): upper-left, upper-right, lower-left, lower-right."""
    b, h, w = codes.shape
    if h % 2 or w % 2:
        raise ValueError(f"VQ latent grid {h}x{w} cannot be split into quarters (sides must be even)")
    quarters = codes.view(b, 2, h // 2, 2, w // 2).permute(0, 1, 3, 2, 4)  # (B, 2, 2, H/2, W/2)
    return quarters.reshape(b, 4, h // 2, w // 2)


class LabelComputer:
    """The frozen VQ-VAE and VAE on one device, turning images into label rows.

    ``model_seconds`` accumulates the time spent inside model calls (results copied back, so device
    work is included), so a caller can report how busy the accelerator was.
    """

    def __init__(self, cfg: Config, device: str | torch.device | None = None, precision: str | None = None,
                 vq_precision: str | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.geometry = LabelGeometry.from_config(cfg)
        self.batch_size = cfg.label.batch_size
        precision = precision or cfg.label.precision  # the VAE's
        self.dtype = _DTYPES[precision]
        self.vq_dtype = _DTYPES[vq_precision or cfg.label.vq_precision]
        vq = build_vq(cfg)
        # the nearest-code search runs in fp32 against the exact codebook, whatever the encoder's dtype
        self.codebook = vq.quantize.embedding.weight.detach().float().to(self.device)  # (K, D)
        vq.encoder.to(self.vq_dtype)  # only the encoder: quant_conv keeps its exact fp32 weights (see vq_latents)
        self.vq = vq.to(self.device)
        self.vae = build_vae(cfg, dtype=precision).to(self.device)
        self.shift = float(self.vae.config.shift_factor or 0.0)  # SD1/2-style VAEs have no shift
        self.scale = float(self.vae.config.scaling_factor)
        self.model_seconds = 0.0

    @torch.no_grad()
    def vq_latents(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [-1, 1] -> (B, D, S/f, S/f) float32: the encoder latents the nearest-code search compares.

        ``VQModel.encode`` is its encoder then ``quant_conv``; composed here so the encoder's output is cast to
        fp32 before ``quant_conv`` (kept fp32): the latents are not rounded once more to the encoder's dtype, for a
        negligible 1x1 convolution (that rounding alone flips 0.24% of the codes on the test images; with the whole
        encoder in bf16 keeping it fp32 saves only 3 of 75 flips: see docs/benchmarks.md).
        """
        features = self.vq.encoder(x.to(self.device, self.vq_dtype))  # (B, C, S/f, S/f)
        if not torch.isfinite(features).all():  # fp16's range is narrow: an overflow would give arbitrary codes
            raise FloatingPointError(f"the VQ-VAE encoder overflowed in {self.vq_dtype} (non-finite latents); "
                                     f"label with label.vq_precision=fp32")
        return self.vq.quant_conv(features.float())

    @torch.no_grad()
    def vq_codes(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [-1, 1] -> (B, 4, q, q) codebook indices per quarter."""
        return split_quarters(nearest_codes(self.vq_latents(x), self.codebook)).cpu()

    @torch.no_grad()
    def vae_latents(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [-1, 1] -> (B, C, s, s) float32, the distribution's mode, shifted and scaled."""
        z = self.vae.encode(x.to(self.device, self.dtype)).latent_dist.mode().float()  # the mean: deterministic
        return ((z - self.shift) * self.scale).float().cpu()

    def compute(self, prepared: list[PreparedImage]) -> list[dict]:
        """Label rows (without ``id`` / ``image``) for prepared images, ``batch_size`` per model call."""
        rows: list[dict] = []
        for start in range(0, len(prepared), self.batch_size):
            rows.extend(self._compute_batch(prepared[start : start + self.batch_size]))
        return rows

    def _compute_batch(self, batch: list[PreparedImage]) -> list[dict]:
        vq_in = to_unit_range(np.stack([p.vq_rgb for p in batch]))  # (B, 3, S_vq, S_vq)
        vae_in = to_unit_range(np.stack([p.vae_rgb for p in batch]))  # (B, 3, S_rec, S_rec)
        started = time.perf_counter()
        codes = self.vq_codes(vq_in)  # (B, 4, q, q)
        latents = self.vae_latents(vae_in)  # (B, C, s, s); .cpu() waits for the device: true compute time
        self.model_seconds += time.perf_counter() - started
        return [label_row(p, codes[i], latents[i]) for i, p in enumerate(batch)]

    def label(self, images: list[Image.Image]) -> list[dict]:
        """Label rows for RGB images: ``prepare`` then ``compute``, the same code as the pipeline."""
        return self.compute([prepare(image, self.geometry) for image in images])


def label_row(prepared: PreparedImage, codes: torch.Tensor, latent: torch.Tensor) -> dict:
    """One label row in the stored layout (see ``vlsa.labels.schema``), without ``id`` / ``image``.

    codes (4, q, q) codebook indices per quarter; latent (C, s, s).
    """
    latent_np = np.ascontiguousarray(latent.numpy(), dtype=np.float32)  # (C, s, s)
    return {
        "width": int(prepared.width),
        "height": int(prepared.height),
        "vq_indices": codes.reshape(4, -1).tolist(),  # each quarter row-major
        "vq_side": int(codes.shape[-1]),
        "latent": latent_np.tobytes(),
        "latent_shape": [int(n) for n in latent_np.shape],
    }
