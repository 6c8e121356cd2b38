"""Label computation against the real VQModel / AutoencoderKL (tiny configs), without Ray."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from label_helpers import assert_codes_match, label_config, reference_row
from PIL import Image

from vlsa.labels.compute import (
    LabelGeometry,
    nearest_codes,
    prepare,
    split_quarters,
    to_unit_range,
)
from vlsa.labels.schema import latent_array, pixels_array, vq_array
from vlsa.model.encoding import lowres_rgb, recon_pixels
from vlsa.model.geometry import vision_input_side


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(70, 33), (21, 50), (32, 32), (5, 90), (120, 64)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def test_nearest_codes_equal_the_vq_models_own_quantizer(frozen_models):
    vq, _ = frozen_models
    torch.manual_seed(0)
    x = torch.rand(3, 3, 32, 32) * 2 - 1  # (B, 3, S, S)
    with torch.no_grad():
        latents = vq.encode(x).latents  # (B, D, 8, 8)
        _, _, (_, _, theirs) = vq.quantize(latents)
    ours = nearest_codes(latents, vq.quantize.embedding.weight)
    assert ours.shape == (3, 8, 8)
    assert torch.equal(ours.flatten(), theirs)
    assert ours.unique().numel() > 1  # not a degenerate codebook: the comparison means something


def test_split_quarters_order_and_row_major_layout():
    grid = torch.arange(2 * 6 * 6).view(2, 6, 6)
    quarters = split_quarters(grid)
    assert quarters.shape == (2, 4, 3, 3)
    for b in range(2):
        assert torch.equal(quarters[b, 0], grid[b, :3, :3])  # upper left
        assert torch.equal(quarters[b, 1], grid[b, :3, 3:])  # upper right
        assert torch.equal(quarters[b, 2], grid[b, 3:, :3])  # lower left
        assert torch.equal(quarters[b, 3], grid[b, 3:, 3:])  # lower right
    with pytest.raises(ValueError, match="5x6"):
        split_quarters(torch.zeros(1, 5, 6, dtype=torch.long))


def test_uint8_transport_restores_the_model_inputs_exactly(label_cfg):
    geometry = LabelGeometry.from_config(label_cfg)
    for image in _images():
        prepared = prepare(image, geometry)
        assert torch.equal(to_unit_range(prepared.vq_rgb[None])[0], recon_pixels(image, 32, pad_multiple=32))
        assert torch.equal(to_unit_range(prepared.vae_rgb[None])[0], recon_pixels(image, 32, pad_multiple=32))
        assert np.array_equal(prepared.pixels, lowres_rgb(image, 32))


def test_label_rows_equal_direct_model_calls(label_cfg, frozen_models, label_computer):
    vq, vae = frozen_models
    images = _images()
    busy_before = label_computer.model_seconds
    rows = label_computer.label(images)  # batch_size 2: batches of 2, 2, 1
    assert len(rows) == len(images)
    assert label_computer.model_seconds > busy_before  # time inside model calls is counted
    for image, row in zip(images, rows):
        ref = reference_row(label_cfg, vq, vae, image)
        assert (row["width"], row["height"]) == (image.width, image.height)
        assert row["vq_side"] == 4 and len(row["vq_indices"]) == 4
        assert all(len(q) == 16 for q in row["vq_indices"])
        assert_codes_match(vq_array(row), ref, vq.quantize.embedding.weight)
        assert row["pixels_side"] == 32 and np.array_equal(pixels_array(row), ref["pixels"])
        assert row["latent_shape"] == [16, 8, 8]
        np.testing.assert_allclose(latent_array(row), ref["latent"], atol=1e-4, rtol=1e-4)  # batched vs single conv


def test_latent_is_shifted_and_scaled_mean_not_a_sample(frozen_models, label_computer):
    _, vae = frozen_models
    computer = label_computer
    x = to_unit_range(prepare(_images()[0], computer.geometry).vae_rgb[None])
    first, second = computer.vae_latents(x), computer.vae_latents(x)
    assert torch.equal(first, second)  # deterministic
    with torch.no_grad():
        mean = vae.encode(x).latent_dist.mean
    expected = (mean - vae.config.shift_factor) * vae.config.scaling_factor
    assert vae.config.shift_factor != 0 and vae.config.scaling_factor != 1  # the transform is visible
    torch.testing.assert_close(first, expected)


def test_vision_input_side_from_a_saved_vision_config(tmp_path, cache_dir):
    from transformers import CLIPConfig, CLIPVisionConfig

    CLIPVisionConfig(image_size=48, patch_size=8).save_pretrained(tmp_path / "vision")
    CLIPConfig(vision_config={"image_size": 56, "patch_size": 8}).save_pretrained(tmp_path / "clip")
    assert vision_input_side(label_config(cache_dir, f"model.vision.path={tmp_path / 'vision'}").model) == 48
    assert vision_input_side(label_config(cache_dir, f"model.vision.path={tmp_path / 'clip'}").model) == 56
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    with pytest.raises(ValueError, match="no `image_size`"):
        vision_input_side(label_config(cache_dir, f"model.vision.path={tmp_path / 'bad'}").model)
