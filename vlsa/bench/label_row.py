"""``label-row``: should pixel targets be stored in the label rows or recomputed from the decoded image?

Builds label rows at the config's geometry in the stored layout (VQ indices and VAE latents as random
values of the right shapes and dtypes, since trained latents compress no better than noise), plus the
pixel targets X_Lo of real decoded JPEGs as label schema version 1 stored them; writes them as one
Parquet shard with and without the ``pixels`` column, and times what recomputing the targets costs: ``lowres_rgb`` on the decoded image
(training decodes every image anyway, for X_Lo and the tiles). Reports bytes per stored row either
way, the share the pixels take, and milliseconds per image to recompute them, next to decoding.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from vlsa.bench.device import describe
from vlsa.bench.label import jpeg_images
from vlsa.bench.report import Report, table
from vlsa.config import Config
from vlsa.io.image import decode_image
from vlsa.labels.compute import PreparedImage, label_row
from vlsa.labels.schema import LABEL_SCHEMA, ROW_GROUP_ROWS
from vlsa.model.encoding import lowres_rgb
from vlsa.model.geometry import vision_input_side

WITH_PIXELS = pa.schema([*LABEL_SCHEMA, pa.field("pixels", pa.binary()), pa.field("pixels_side", pa.int32())])
"""Label schema version 1: the current columns and the stored pixel targets."""
PHOTO = (640, 480)
"""Size of the benchmark JPEGs: a typical COCO / LAION photo of LLaVA-558K."""


def downsampling(init: dict) -> int:
    """Spatial factor of a diffusers VQModel / AutoencoderKL encoder (one halving per block but the last)."""
    return 2 ** (len(init["block_out_channels"]) - 1)


def shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
    """Stored shapes of one row at ``cfg``'s geometry: vq (4, q, q), latent (C, s, s), pixels (h, h, 3)."""

    vq, vae = cfg.model.vq.init, cfg.model.recon.vae.init
    grid = cfg.model.vq_image_size // downsampling(vq)
    side = cfg.model.recon.image_size // downsampling(vae)
    h = vision_input_side(cfg.model)
    return {"vq": (4, grid // 2, grid // 2), "latent": (vae["latent_channels"], side, side), "pixels": (h, h, 3),
            "codes": (vq["num_vq_embeddings"],)}


def rows(cfg: Config, images: list, rng: np.random.Generator) -> list[dict]:
    """Label rows in the stored layout (``vlsa.labels.compute.label_row``), ids included, with the pixel
    targets as version 1 stored them (``pixels``, ``pixels_side``)."""

    s = shapes(cfg)
    out = []
    for k, image in enumerate(images):
        prepared = PreparedImage(image.width, image.height, None, None)
        codes = torch.from_numpy(rng.integers(0, s["codes"][0], s["vq"], dtype=np.int64))
        latent = torch.from_numpy(rng.standard_normal(s["latent"], dtype=np.float32))
        pixels = {"pixels": lowres_rgb(image, s["pixels"][0]).tobytes(), "pixels_side": s["pixels"][0]}
        out.append({**label_row(prepared, codes, latent), **pixels, "id": f"r{k}", "image": f"{k}.jpg"})
    return out


def shard_bytes(table) -> int:
    """Bytes of ``table`` written as the labeling job writes a shard."""

    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=ROW_GROUP_ROWS)
    return len(buffer.getvalue())


def run(cfg: Config, device: torch.device, out_dir: str) -> Report:
    """Row sizes with and without pixels, and the per-image cost of recomputing them."""

    n = max(8, cfg.bench.label_images)
    blobs = jpeg_images(n, *PHOTO)
    t0 = time.perf_counter()
    images = [decode_image(b, cfg.label.decode) for b in blobs]
    decode_s = (time.perf_counter() - t0) / n
    side = shapes(cfg)["pixels"][0]
    t0 = time.perf_counter()
    recomputed = [lowres_rgb(image, side) for image in images]
    recompute_s = (time.perf_counter() - t0) / n
    table_ = pa.Table.from_pylist(rows(cfg, images, np.random.default_rng(0)), schema=WITH_PIXELS)
    stored = [np.frombuffer(r, np.uint8).reshape(side, side, 3) for r in table_.column("pixels").to_pylist()]
    exact = all(np.array_equal(a, b) for a, b in zip(stored, recomputed))
    with_px, without_px = shard_bytes(table_) / n, shard_bytes(table_.drop_columns(["pixels", "pixels_side"])) / n
    metrics = {"row_bytes_with_pixels": with_px, "row_bytes_without_pixels": without_px,
               "pixels_share": 1 - without_px / with_px, "recompute_ms_per_image": recompute_s * 1e3,
               "decode_ms_per_image": decode_s * 1e3, "recomputed_equal_stored": exact}
    s = shapes(cfg)
    settings = {"preset": cfg.preset, "rows": n, "photo": f"{PHOTO[0]}x{PHOTO[1]} JPEG", "pixels": s["pixels"],
                "latent": s["latent"], "vq_per_quarter": s["vq"][1:], "vq_image_size": cfg.model.vq_image_size,
                "recon_image_size": cfg.model.recon.image_size, "threads": torch.get_num_threads()}
    lines = table(["figure", "value"], [
        ["stored row, with pixels", f"{with_px / 1e3:.1f} kB"],
        ["stored row, without pixels", f"{without_px / 1e3:.1f} kB"],
        ["pixels' share of the row", f"{metrics['pixels_share']:.1%}"],
        ["recompute X_Lo from the decoded image", f"{metrics['recompute_ms_per_image']:.2f} ms/image"],
        ["decode the JPEG (done in training anyway)", f"{metrics['decode_ms_per_image']:.2f} ms/image"],
        ["recomputed == stored, every row", str(exact)],
    ])
    return Report("label-row", metrics, settings, describe(device), lines)
