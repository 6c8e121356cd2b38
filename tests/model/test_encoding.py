"""Compressive encoding input and the visual-token counts the LLM receives (VLSA vs AnyRes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import make_batch, solid, tiny_config

import vlsa
from vlsa.model.encoding import encode_image, lowres_rgb, recon_pixels, tile_grid, vision_norm


def test_tiles_pad_and_cap():
    mean, std = vision_norm("clip")
    # 451x300 pads to 480x320 = 15x10 tiles of 32; capped at 4 it is resized to 2x2
    assert tile_grid(451, 300, 32, 1000) == (15, 10)
    assert tile_grid(451, 300, 32, 4) == (2, 2)
    assert tile_grid(427, 640, 336, 4) == (2, 2)
    assert tile_grid(1000, 300, 336, 4) == (3, 1)
    assert tile_grid(300, 200, 336, 4) == (1, 1)
    lo, hi = encode_image(solid(60, 20), 32, 4, mean, std)
    assert lo.shape == (3, 32, 32) and hi.shape == (2, 3, 32, 32)


def test_tiles_are_the_padded_canvas():
    image = solid(40, 20, (10, 200, 90))
    lo, hi = encode_image(image, 32, 8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    canvas = np.zeros((32, 64, 3), np.uint8)
    canvas[:20, :40] = np.asarray(image)
    for j in range(2):
        expected = torch.from_numpy(canvas[:, 32 * j : 32 * (j + 1)].copy()).permute(2, 0, 1).float() / 255
        torch.testing.assert_close(hi[j], expected)
    torch.testing.assert_close(lo, torch.from_numpy(lowres_rgb(image, 32).copy()).permute(2, 0, 1).float() / 255)
    target = recon_pixels(image, 16, pad_multiple=32)
    assert target.shape == (3, 16, 16) and target.min() >= -1 and target.max() <= 1


def test_llm_receives_l_tokens_with_vlsa_and_m_plus_1_l_with_the_hd_grid(tiny_model, cache_dir):
    images = [solid(451, 300), solid(427, 640), solid(60, 20)]
    texts = ["<image>\nred", "<image>\nblue", "<image>\ngreen"]
    tiles = [tiny_model.encoder().num_tiles(im.width, im.height) for im in images]
    assert tiles == [4, 4, 2]
    l = tiny_model.num_patches
    batch = make_batch(tiny_model, images, texts)
    spliced, _ = tiny_model.prepare_inputs(batch["input_ids"], batch["attention_mask"], batch["image_counts"],
                                           batch["pixel_lo"], batch["pixel_hi"], batch["tile_mask"])
    assert [n for _, _, n in spliced.spans] == [l, l, l]

    anyres = vlsa.build_model(tiny_config(cache_dir, "model.projector.type=hd_grid", "model.recon.enabled=false",
                                          "train.stages.0.lr={projector: 0.001}", "train.stages.1.lr={projector: 0.001}"))
    spliced, _ = anyres.prepare_inputs(batch["input_ids"], batch["attention_mask"], batch["image_counts"],
                                       batch["pixel_lo"], batch["pixel_hi"], batch["tile_mask"])
    assert [n for _, _, n in spliced.spans] == [(m + 1) * l for m in tiles]
    text = int(batch["attention_mask"][0].sum()) - 1
    assert int(spliced.attention_mask[0].sum()) == text + 5 * l
    assert (spliced.image_index[0] == 0).sum() == 5 * l


@pytest.mark.parametrize("kind", ["mlp2x_gelu", "qformer", "pixel_unshuffle"])
def test_other_projectors_token_counts(tiny_model, kind):
    from vlsa.model.projectors import build_projector

    cfg = tiny_model.config.projector
    proj = build_projector(type(cfg)(type=kind, heads=cfg.heads), 64, 128, num_patches=16)
    v_lo, v_hi = torch.randn(2, 16, 64), torch.randn(2, 4 * 16, 64)
    mask = torch.ones(2, 64, dtype=torch.bool)
    mask[1, 32:] = False  # the second image has 2 of 4 tiles
    out = proj(v_lo, v_hi, mask)
    assert [t.shape[0] for t in out.tokens] == [proj.token_count(4), proj.token_count(2)]
    assert {"mlp2x_gelu": 16, "qformer": 16, "pixel_unshuffle": 20}[kind] == proj.token_count(4)
    assert out.pooled.shape == (2, 128) and out.cue.shape[0] == 2


def test_a_672_reconstruction_target_is_the_tiles_canvas_itself():
    """Paper presets reconstruct the padded high-resolution canvas (2x2 tiles of 336 -> 672 px), not X_Lo."""
    from PIL import Image

    from vlsa.model.encoding import highres_tiles, padded_canvas, recon_pixels

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (600, 650, 3), dtype=np.uint8))
    target = recon_pixels(image, 672, pad_multiple=336)
    canvas = np.asarray(padded_canvas(image, 336), dtype=np.float32) / 127.5 - 1.0
    assert target.shape == (3, 672, 672)
    torch.testing.assert_close(target, torch.from_numpy(canvas).permute(2, 0, 1))  # no resampling: every detail
    tiles = highres_tiles(image, 336, 4)
    assert np.array_equal(tiles[3], np.asarray(padded_canvas(image, 336))[336:, 336:])
