"""Bad input gets an error naming the values, before any shape crash deep inside a model."""

from __future__ import annotations

import pytest
import torch
from model_helpers import make_batch, solid
from PIL import Image

from vlsa.model.encoding import encode_image, vision_norm


def test_wrong_channel_count(tiny_model, two_image_batch):
    with pytest.raises(ValueError, match=r"RGB image \(3 channels\), got mode 'L' with 1 channel"):
        encode_image(Image.new("L", (40, 30)), 32, 4, *vision_norm("clip"))
    with pytest.raises(ValueError, match=r"RGB image \(3 channels\), got mode 'RGBA' with 4 channel"):
        tiny_model.answer(Image.new("RGBA", (40, 30)), "What is it?")
    batch = dict(two_image_batch, pixel_lo=two_image_batch["pixel_lo"][:, :1])
    with pytest.raises(ValueError, match=r"pixel_lo must be \(N, 3, 32, 32\), got \(2, 1, 32, 32\)"):
        tiny_model(**batch)


def test_empty_image():
    with pytest.raises(ValueError, match="empty image: width=0, height=12"):
        encode_image(Image.new("RGB", (0, 12)), 32, 4, *vision_norm("clip"))


def test_more_placeholders_than_images(tiny_model):
    batch = make_batch(tiny_model, [solid(40, 30)], ["<image> and <image>\nsame?"], image_counts=[1])
    with pytest.raises(ValueError, match=r"sample 0: 2 <image> placeholder\(s\) in input_ids but image_counts\[0\] = 1"):
        tiny_model(**batch)


def test_more_images_than_placeholders(tiny_model):
    batch = make_batch(tiny_model, [solid(40, 30), solid(50, 20)], ["<image>\nwhat?", "no image here"],
                       image_counts=[1, 1])
    with pytest.raises(ValueError, match=r"sample 1: 0 <image> placeholder\(s\) in input_ids but image_counts\[1\] = 1"):
        tiny_model(**batch)
    batch = make_batch(tiny_model, [solid(40, 30), solid(50, 20)], ["<image>\nwhat?"], image_counts=[1])
    with pytest.raises(ValueError, match="image_counts sums to 1 but the batch has 2 images"):
        tiny_model(**batch)


def test_visual_token_count_mismatch(tiny_model):
    l = tiny_model.num_patches
    batch = make_batch(tiny_model, [solid(40, 30)], ["<image><image><image>\nwhat?"], image_counts=[1])
    with pytest.raises(ValueError, match=f"3 <image> tokens in input_ids but the projector gives {l} visual tokens"):
        tiny_model(**batch)
    expanded = make_batch(tiny_model, [solid(40, 30)], ["<image>" * l + "\nwhat?"], image_counts=[1])
    single = make_batch(tiny_model, [solid(40, 30)], ["<image>\nwhat?"], image_counts=[1])
    with torch.no_grad():
        a = tiny_model(**{k: v for k, v in expanded.items() if k != "recon_pixels"})
        b = tiny_model(**{k: v for k, v in single.items() if k != "recon_pixels"})
    torch.testing.assert_close(a.logits, b.logits)  # a pre-expanded run is the same as one placeholder


def test_bad_reconstruction_targets(tiny_model, two_image_batch):
    latent = torch.zeros(2, 4, 8, 8)
    batch = {k: v for k, v in two_image_batch.items() if k != "recon_pixels"}
    with pytest.raises(ValueError, match=r"recon_latent must be \(N, 16, 8, 8\), got \(2, 4, 8, 8\)"):
        tiny_model(**batch, recon_latent=latent)
    with pytest.raises(ValueError, match="both recon_pixels and recon_latent"):
        tiny_model(**two_image_batch, recon_latent=latent)
    with pytest.raises(TypeError, match=r"unexpected batch tensors \['pixel_values'\]"):
        tiny_model(**two_image_batch, pixel_values=torch.zeros(1))
