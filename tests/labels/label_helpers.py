"""Shared pieces of the labeling tests: a tiny config, a generated corpus of good and bad images,
and the reference labels computed by calling the VQ-VAE and VAE directly."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vlsa
from vlsa.config import DecodeConfig
from vlsa.io.image import ImageRejected, decode_image
from vlsa.labels.compute import LabelGeometry
from vlsa.model.encoding import recon_pixels

TURNS = [{"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": "A pattern."}]


def label_config(cache_dir: str, *overrides: str) -> vlsa.Config:
    """The tiny preset with small shards, so a dozen images make several shards."""
    base = [f"model.cache_dir={cache_dir}", "label.rows_per_shard=4", "label.batch_size=2", "label.num_actors=1"]
    return vlsa.load_config("tiny", [*base, *overrides])


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _noise(width: int, height: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _huge_png() -> bytes:
    """A valid PNG header declaring 100000 x 100000 pixels (a decompression bomb's signature)."""
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _bad_crc_png() -> bytes:
    data = bytearray(_encode(Image.fromarray(_noise(24, 24, 7)), "PNG"))
    data[29] ^= 0xFF  # the last byte of the IHDR checksum
    return bytes(data)


def _exif_rotated_jpeg() -> bytes:
    """A 40 x 20 JPEG whose EXIF orientation (6) says: shown rotated, 20 x 40."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(Image.fromarray(_noise(40, 20, 5)), "JPEG", exif=exif.tobytes(), quality=95)


def good_images() -> dict[str, bytes]:
    """Images the decoder accepts, in the odd formats real datasets hold."""
    palette = Image.fromarray(_noise(30, 18, 3)).convert("P", palette=Image.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    deep = Image.fromarray(np.arange(36 * 20, dtype=np.uint16).reshape(20, 36) * 90)  # mode I;16
    return {
        "rgb_wide.png": _encode(Image.fromarray(_noise(70, 33, 1)), "PNG"),
        "rgb_tall.jpg": _encode(Image.fromarray(_noise(21, 50, 2)), "JPEG", quality=95),
        "square.png": _encode(Image.fromarray(_noise(32, 32, 4)), "PNG"),
        "palette_transparent.png": _encode(palette, "PNG", transparency=0),
        "cmyk.jpg": _encode(Image.fromarray(_noise(26, 26, 6)).convert("CMYK"), "JPEG"),
        "gray16.png": _encode(deep, "PNG"),
        "exif_rotated.jpg": _exif_rotated_jpeg(),
    }


def bad_images() -> dict[str, bytes]:
    """Files the decoder must refuse."""
    jpeg = _encode(Image.fromarray(_noise(64, 64, 8)), "JPEG", quality=95)
    return {
        "zero.jpg": b"",
        "random.jpg": np.random.default_rng(9).integers(0, 256, 600, dtype=np.uint8).tobytes(),
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "bad_crc.png": _bad_crc_png(),
        "huge.png": _huge_png(),
    }


PINNED_REASONS = {
    "zero.jpg": "empty",
    "random.jpg": "unsupported_format",
    "truncated.jpg": "truncated",
    "huge.png": "too_many_pixels",
}
"""Reasons the shared decoder must give; a bad checksum may read as corrupt or unidentified."""


def decoder_verdict(data: bytes | None, decode: DecodeConfig) -> str | None:
    """The reason the shared decoder (or a missing file) gives, or None for a usable image."""
    if data is None:
        return "image_missing"
    try:
        decode_image(data, decode)
    except ImageRejected as err:
        return err.reason
    return None


def write_corpus(root: Path) -> tuple[Path, Path, dict[str, tuple[str, bytes | None]]]:
    """Images under ``root/images`` and ``root/data.json`` (one record per file, plus a missing
    file and a text-only record); returns (data file, image root, id -> (file name, bytes or None))."""
    images = root / "images"
    (images / "sub").mkdir(parents=True, exist_ok=True)
    files = {**good_images(), **bad_images()}
    records, contents = [], {}
    for i, (name, data) in enumerate(sorted(files.items())):
        rel = f"sub/{name}" if i % 2 else name
        (images / rel).write_bytes(data)
        records.append({"id": f"img-{i:02d}", "image": rel, "conversations": TURNS})
        contents[f"img-{i:02d}"] = (name, data)
    records.insert(3, {"id": "missing", "image": "not/there.png", "conversations": TURNS})
    contents["missing"] = ("there.png", None)
    records.insert(5, {"id": "text-only", "conversations": [{"from": "human", "value": "Hi"}, TURNS[1]]})
    data = root / "data.json"
    data.write_text(json.dumps(records))
    return data, images, contents


@torch.no_grad()
def reference_row(cfg: vlsa.Config, vq, vae, image: Image.Image) -> dict:
    """The labels of one image from direct model calls: VQModel's own quantizer, the VAE's mean."""
    geometry = LabelGeometry.from_config(cfg)
    side = geometry.vision_side
    vq_in = recon_pixels(image, geometry.vq_image_size, pad_multiple=side)[None]  # (1, 3, S, S)
    latents = vq.encode(vq_in).latents  # (1, D, H, W)
    _, _, (_, _, indices) = vq.quantize(latents)
    grid = indices.view(latents.shape[2], latents.shape[3])  # (H, W)
    q = grid.shape[0] // 2
    quarters = [grid[:q, :q], grid[:q, q:], grid[q:, :q], grid[q:, q:]]
    vae_in = recon_pixels(image, geometry.recon_image_size, pad_multiple=side)[None]
    z = vae.encode(vae_in).latent_dist.mean[0]
    shift = vae.config.shift_factor or 0.0
    return {
        "vq": torch.stack(quarters).numpy(),  # (4, q, q)
        "vq_latents": latents[0],  # (D, H, W), for tie checks
        "latent": ((z - shift) * vae.config.scaling_factor).numpy(),
        "width": image.width,
        "height": image.height,
    }


def assert_codes_match(found: np.ndarray, ref: dict, codebook: torch.Tensor) -> None:
    """Codes equal the reference, except where two codebook entries are tied to float precision
    (batched and single convolutions differ in the last bits)."""
    expected = ref["vq"]
    if np.array_equal(found, expected):
        return
    latents = ref["vq_latents"]  # (D, H, W)
    q = expected.shape[-1]
    full = np.block([[found[0], found[1]], [found[2], found[3]]])  # (H, W)
    full_ref = np.block([[expected[0], expected[1]], [expected[2], expected[3]]])
    for y, x in zip(*np.nonzero(full != full_ref)):
        vector = latents[:, y, x]
        d_found = torch.dist(vector, codebook[int(full[y, x])]).item()
        d_ref = torch.dist(vector, codebook[int(full_ref[y, x])]).item()
        assert abs(d_found - d_ref) < 1e-4, f"code at ({y}, {x}) of {2 * q}x{2 * q}: {full[y, x]} vs {full_ref[y, x]}"
