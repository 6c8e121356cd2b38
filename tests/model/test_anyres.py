"""LLaVA-NeXT AnyRes exactly as LLaVA-NeXT: views, token counts and packing checked against transformers'
own ``LlavaNextImageProcessorPil``, ``LlavaNextProcessor`` and ``LlavaNextModel.pack_image_features``."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from model_helpers import make_batch, tiny_config
from PIL import Image
from transformers.models.llava_next.modeling_llava_next import LlavaNextModel
from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor

import vlsa
from vlsa.config import EncodingConfig, ProjectorConfig
from vlsa.model.anyres import AnyResEncoder, anyres_grid, anyres_token_count, pinpoints
from vlsa.model.projectors import AnyResProjector

GRIDS = EncodingConfig().anyres_grids
SIZES = [(672, 672), (336, 336), (480, 640), (1000, 300), (300, 1000), (600, 1100), (20, 900), (1024, 768)]


def hf_token_count(height: int, width: int) -> int:
    """transformers' LlavaNextProcessor count for CLIP-L/14-336 and LLaVA-NeXT's default pinpoints."""
    proc = SimpleNamespace(image_processor=SimpleNamespace(image_grid_pinpoints=pinpoints(GRIDS, 336)),
                           patch_size=14, num_additional_image_tokens=0)
    proc._get_unpadded_features = functools.partial(LlavaNextProcessor._get_unpadded_features, proc)
    return LlavaNextProcessor._get_number_of_features(proc, height, width, 336, 336)


@pytest.mark.parametrize("height,width", SIZES)
def test_token_count_equals_llava_next(height, width):
    assert anyres_token_count(height, width, GRIDS, 336, 14) == hf_token_count(height, width)


def test_the_documented_count_of_a_672_square():
    assert anyres_token_count(672, 672, GRIDS, 336, 14) == 2928 == 576 + 48 * 49
    assert pinpoints(GRIDS, 336) == [(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)]


@pytest.mark.parametrize("height,width", [(480, 640), (1000, 300), (672, 672), (37, 91)])
def test_views_equal_the_llava_next_image_processor(height, width):
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    rng = np.random.default_rng(height * width)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    hf = LlavaNextImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                    image_grid_pinpoints=pinpoints(GRIDS, 336))
    expected = torch.as_tensor(np.asarray(hf(image, return_tensors="np")["pixel_values"]))[0]  # (1 + m, 3, s, s)
    lo, hi = AnyResEncoder(336, GRIDS, "clip")(image)
    rows, cols = anyres_grid(height, width, GRIDS, 336)
    assert hi.shape[0] == rows * cols
    torch.testing.assert_close(torch.cat([lo[None], hi]), expected[: 1 + rows * cols].float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("height,width", [(480, 640), (1000, 300), (672, 672), (300, 1000)])
def test_packing_equals_llava_next(height, width):
    """Base tokens, then the unpadded tile grid with a newline per row, as LlavaNextModel packs them."""
    torch.manual_seed(0)
    l, D = 24 * 24, 8
    proj = AnyResProjector(ProjectorConfig(type="anyres"), 4, D, l, image_size=336, grids=GRIDS)
    rows, cols = anyres_grid(height, width, GRIDS, 336)
    feats = torch.randn(1 + rows * cols, l, D)
    ours = torch.cat([feats[0], proj._pack(feats[1:].reshape(-1, D), height, width)])
    config = SimpleNamespace(vision_config=SimpleNamespace(image_size=336, patch_size=14),
                             image_grid_pinpoints=pinpoints(GRIDS, 336))
    packed, lens = LlavaNextModel.pack_image_features(SimpleNamespace(config=config), [feats],
                                                      torch.tensor([[height, width]]), "default",
                                                      image_newline=proj.image_newline.detach())
    torch.testing.assert_close(ours, packed[0] if isinstance(packed, list) else packed)
    assert ours.shape[0] == anyres_token_count(height, width, GRIDS, 336, 14) == int(lens[0])


def test_the_model_and_the_data_path_agree_on_every_count(cache_dir):
    cfg = tiny_config(cache_dir, "model.projector.type=anyres", "model.recon.enabled=false",
                      "train.stages.0.lr={projector: 0.001}", "train.stages.1.lr={projector: 0.001}")
    model = vlsa.build_model(cfg)
    assert model.projector.image_newline.shape == (model.language_model.config.hidden_size,)
    images = [Image.new("RGB", (w, h), (200, 30, 30)) for w, h in [(451, 300), (60, 20), (40, 90)]]
    batch = make_batch(model, images, ["<image>\\nred"] * 3)
    spliced, _ = model.prepare_inputs(batch["input_ids"], batch["attention_mask"], batch["image_counts"],
                                      batch["pixel_lo"], batch["pixel_hi"], batch["tile_mask"],
                                      image_sizes=batch["image_sizes"])
    counts = [n for _, _, n in spliced.spans]
    assert counts == [model.visual_tokens(im.height, im.width, 0) for im in images]
    from vlsa.data.assemble import geometry_from_config

    for geometry in (geometry_from_config(cfg), geometry_from_config(cfg, model)):
        assert [geometry.image_tokens(im.height, im.width, 0) for im in images] == counts
    with pytest.raises(ValueError, match="image_sizes"):
        model.prepare_inputs(batch["input_ids"], batch["attention_mask"], batch["image_counts"],
                             batch["pixel_lo"], batch["pixel_hi"], batch["tile_mask"])
    assert model.answer(images[0], "what colour?", max_new_tokens=2) is not None


@pytest.mark.parametrize("height,width", [(480, 640), (700, 200), (336, 336)])
def test_llava15_view_is_llavas_mean_colour_square_then_clip_preprocessing(height, width):
    """LLaVA-1.5: expand2square with the CLIP mean colour, then CLIP's processor (shortest edge 336, centre crop)."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from vlsa.model.views import SquarePadEncoder, square_pad

    rng = np.random.default_rng(height + width)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    encoder = SquarePadEncoder(336, "clip")
    assert encoder.colour == (122, 116, 104)  # LLaVA: tuple(int(x * 255) for x in image_processor.image_mean)
    clip = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    expected = torch.as_tensor(np.asarray(clip(square_pad(image, encoder.colour), return_tensors="np")["pixel_values"]))
    lo, hi = encoder(image)
    torch.testing.assert_close(lo, expected[0].float(), atol=1e-5, rtol=0)
    assert hi.shape == (1, 3, 336, 336) and encoder.num_tiles(width, height) == 1
