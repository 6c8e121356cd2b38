"""Helpers of the export tests: the model kinds, test images and prompts, the project's own greedy answers."""

from __future__ import annotations

import torch
from PIL import Image

KINDS = {
    "vlsa": [],
    "llava": ["model.projector.type=mlp2x_gelu", "model.encoding.lowres_view=square_pad", "model.encoding.max_tiles=1"],
    "llava_next": ["model.projector.type=anyres"],
}


def overrides(kind: str, cache_dir: str) -> list[str]:
    return [f"model.cache_dir={cache_dir}", *KINDS[kind]]


def two_colour(width: int, height: int, rgb=(200, 30, 30)) -> Image.Image:
    """An RGB image whose left half is ``rgb`` and right half a gradient (so every view differs)."""
    image = Image.new("RGB", (width, height), rgb)
    ramp = Image.linear_gradient("L").resize((width - width // 2, height)).convert("RGB")
    image.paste(ramp, (width // 2, 0))
    return image


IMAGES = [(451, 300), (60, 20), (30, 90)]  # several tile grids and aspect ratios at the tiny 32 px encoder
PROMPTS = ["<image>\nWhat color is the shape?", "<image>\nWhat shape is shown?", "<image>\nDescribe the image briefly."]


def ours(model, image, prompt: str, max_new_tokens: int) -> list[int]:
    """The project's own greedy answer ids to one image and prompt."""
    lo, hi = model.encoder()(image)
    ids = model.tokenizer(prompt, return_tensors="pt").input_ids
    new = model.generate(ids, torch.ones_like(ids), torch.ones(1, dtype=torch.long), lo[None], hi[None],
                         image_sizes=torch.tensor([[image.height, image.width]]), max_new_tokens=max_new_tokens,
                         eos_token_id=None, min_new_tokens=max_new_tokens)
    return new[0].tolist()
