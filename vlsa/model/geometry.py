"""Model geometry from the config alone: a part's saved config without its weights, the vision tower's
input side and patch grid, and the visual-token count of each projector.

The projectors, sample assembly, labeling and the FLOP count all ask these questions; this module is
the one place that answers them, so a built model and a config-only count can never disagree.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from vlsa.config import ComponentConfig, ModelConfig, ProjectorConfig
from vlsa.io import storage
from vlsa.model.anyres import anyres_token_count, squarest_grid


def component_config(part: ComponentConfig, name: str) -> dict[str, Any]:
    """A part's config as a dict, without reading weights: the ``config.json`` under its ``path`` (local
    folder, ``s3://`` prefix, or a hub name where the hub is reachable), else its ``init`` dict."""
    if not part.path:
        if not part.init:
            raise ValueError(f"{name}: neither `init` nor `path` is set")
        return dict(part.init)
    folder = storage.join(part.path, part.subfolder) if part.subfolder else part.path
    uri = storage.join(folder, "config.json")
    try:
        if storage.is_s3(uri) or Path(uri).expanduser().is_file():
            return json.loads(storage.read_bytes(uri))
        from transformers import PretrainedConfig  # a hub name: transformers resolves and caches it

        return PretrainedConfig.get_config_dict(part.path, subfolder=part.subfolder)[0]
    except (OSError, ValueError) as err:
        raise ValueError(f"{name}: cannot read its config at {uri!r} ({err}); "
                         "a local folder or s3:// copy of the part is needed") from None


def vision_config(model: ModelConfig) -> dict[str, Any]:
    """The vision tower's config (the vision part of a full CLIP / SigLIP config)."""
    data = component_config(model.vision, "model.vision")
    return data.get("vision_config", data)


def vision_input_side(model: ModelConfig) -> int:
    """h = w: the side of the vision tower's input."""
    vision = vision_config(model)
    if "image_size" not in vision:
        where = f"at {model.vision.path!r}" if model.vision.path else "in model.vision.init"
        raise ValueError(f"vision config {where} has no `image_size`; keys: {sorted(vision)}")
    return int(vision["image_size"])


def num_patches(image_size: int, patch_size: int) -> int:
    """l: patch tokens per view of an ``image_size`` input cut into ``patch_size`` patches."""
    return (image_size // patch_size) ** 2


def config_num_patches(model: ModelConfig) -> int:
    """l of the configured vision tower."""
    vision = vision_config(model)
    if "patch_size" not in vision:
        raise ValueError(f"vision config of model.vision has no `patch_size`; keys: {sorted(vision)}")
    return num_patches(vision_input_side(model), int(vision["patch_size"]))


def visual_tokens(projector: ProjectorConfig, l: int, tiles: int) -> int:
    """Visual tokens the LLM receives for one image of ``tiles`` tiles through ``projector`` (l patches a view).

    ``anyres`` depends on the image's size (``image_token_count``); here it counts an image that fills the
    squarest grid of ``tiles`` tiles: no unpadding, one newline per token row.
    """
    if projector.type == "anyres":
        return (tiles + 1) * l + squarest_grid(tiles)[0] * math.isqrt(l)
    counts = {"sa_perceiver": l, "mlp2x_gelu": l, "hd_grid": (tiles + 1) * l, "qformer": projector.num_queries or l,
              "pixel_unshuffle": (tiles + 1) * l // 4}
    return counts[projector.type]


def config_token_count(model: ModelConfig) -> Callable[[int], int]:
    """Visual tokens per image (a function of the tile count) as the configured projector gives them."""
    l = config_num_patches(model)
    return lambda tiles: visual_tokens(model.projector, l, tiles)


def image_token_count(model: ModelConfig, side: int, l: int) -> Callable[[int, int, int], int]:
    """Visual tokens of an image of (height, width) cut into m tiles, exactly: LLaVA-NeXT's count for
    ``anyres`` (a function of the size), the tile-count rule for every other projector."""
    if model.projector.type == "anyres":
        grids, patch = model.encoding.anyres_grids, side // math.isqrt(l)
        return lambda h, w, m: anyres_token_count(h, w, grids, side, patch)
    return lambda h, w, m: visual_tokens(model.projector, l, m)


def most_visual_tokens(model: ModelConfig, side: int, l: int) -> int:
    """The most visual tokens one image can give (sampler lengths, length checks before decoding)."""
    if model.projector.type == "anyres":
        exact = image_token_count(model, side, l)
        return max(exact(r * side, c * side, r * c) for r, c in model.encoding.anyres_grids)
    return visual_tokens(model.projector, l, model.encoding.max_tiles)
