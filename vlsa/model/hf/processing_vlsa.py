"""The VLSA processor for ``transformers``: compressive encoding of images and ``<image>`` expansion (shipped in the
export folder; imports no ``vlsa``).

The image side is the training pipeline's own (Sec. 3.1 of the VLSA paper): the image is padded, bottom and right
with black, to the smallest canvas whose sides are multiples of the encoder side s; X_Lo (``pixel_values``) is that
canvas resized to s x s (bicubic); the tiles X_Hi (``pixel_values_hi``, padded to the batch's most tiles, real ones
marked by ``tile_mask``) are cut from the canvas, resized first to the largest grid within ``max_tiles`` when it
holds more. With ``lowres_view="square_pad"`` the view is LLaVA-1.5's instead: the image centred on a square of the
normalisation's mean colour, resized to s, and used as the one tile. Values are normalised per channel.
"""

import math

import numpy as np
import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ProcessorMixin

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def tile_grid(width: int, height: int, side: int, max_tiles: int) -> tuple[int, int]:
    """(tiles across, tiles down) of an image: its padded canvas, or the largest grid within ``max_tiles``."""
    gw0, gh0 = math.ceil(width / side), math.ceil(height / side)
    if gw0 * gh0 <= max_tiles:
        return gw0, gh0
    grids = [(gw, gh) for gw in range(1, min(gw0, max_tiles) + 1) for gh in range(1, min(gh0, max_tiles // gw) + 1)]
    # keep as much resolution as possible along the side that loses most, then use the most tiles
    return max(grids, key=lambda g: (min(g[0] / gw0, g[1] / gh0), g[0] * g[1]))


def padded_canvas(image: Image.Image, side: int) -> Image.Image:
    """The image padded (bottom/right, black) to the smallest multiple of ``side`` per dimension."""
    canvas = Image.new("RGB", (math.ceil(image.width / side) * side, math.ceil(image.height / side) * side))
    canvas.paste(image, (0, 0))
    return canvas


def square_pad(image: Image.Image, colour: tuple) -> Image.Image:
    """LLaVA-1.5's ``expand2square``: the image centred on a square of ``colour``."""
    side = max(image.width, image.height)
    canvas = Image.new("RGB", (side, side), colour)
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


class VlsaImageProcessor(BaseImageProcessor):
    """PIL images -> ``pixel_values`` (N, 3, s, s), ``pixel_values_hi`` (N, M, 3, s, s), ``tile_mask`` (N, M),
    ``image_sizes`` (N, 2) as (height, width)."""

    model_input_names = ["pixel_values", "pixel_values_hi", "tile_mask", "image_sizes"]

    def __init__(self, image_size: int = 336, max_tiles: int = 4, lowres_view: str = "canvas",
                 image_mean=CLIP_MEAN, image_std=CLIP_STD, **kwargs) -> None:
        super().__init__(**kwargs)
        if lowres_view not in ("canvas", "square_pad"):
            raise ValueError(f"lowres_view must be 'canvas' or 'square_pad', got {lowres_view!r}")
        self.image_size, self.max_tiles, self.lowres_view = int(image_size), int(max_tiles), lowres_view
        self.image_mean, self.image_std = list(image_mean), list(image_std)

    def _normalise(self, rgb) -> torch.Tensor:
        x = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).float() / 255.0  # (3, H, W)
        mean = torch.tensor(self.image_mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.image_std, dtype=torch.float32).view(3, 1, 1)
        return (x - mean) / std

    def views(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        """(X_Lo (3, s, s), X_Hi (m, 3, s, s)) of one image."""
        image, s = image.convert("RGB"), self.image_size
        if self.lowres_view == "square_pad":
            colour = tuple(int(m * 255) for m in self.image_mean)
            lo = self._normalise(square_pad(image, colour).resize((s, s), Image.BICUBIC))
            return lo, lo[None]
        canvas = padded_canvas(image, s)
        lo = self._normalise(canvas.resize((s, s), Image.BICUBIC))
        gw, gh = tile_grid(image.width, image.height, s, self.max_tiles)
        if (gw * s, gh * s) != canvas.size:
            canvas = canvas.resize((gw * s, gh * s), Image.BICUBIC)
        rgb = np.asarray(canvas, dtype=np.uint8).reshape(gh, s, gw, s, 3).transpose(0, 2, 1, 3, 4)
        return lo, torch.stack([self._normalise(tile) for tile in rgb.reshape(gh * gw, s, s, 3)])

    def preprocess(self, images, return_tensors=None, **kwargs) -> BatchFeature:
        if isinstance(images, Image.Image):
            images = [images]
        images = [im for group in images for im in (group if isinstance(group, (list, tuple)) else [group])]
        views = [self.views(im) for im in images]
        most = max(hi.shape[0] for _, hi in views)
        lo = torch.stack([lo for lo, _ in views])  # (N, 3, s, s)
        hi = lo.new_zeros(len(views), most, *lo.shape[1:])  # (N, M, 3, s, s)
        mask = torch.zeros(len(views), most, dtype=torch.bool)  # (N, M)
        for n, (_, tiles) in enumerate(views):
            hi[n, : tiles.shape[0]], mask[n, : tiles.shape[0]] = tiles, True
        sizes = torch.tensor([[im.height, im.width] for im in images], dtype=torch.long)
        data = {"pixel_values": lo, "pixel_values_hi": hi, "tile_mask": mask, "image_sizes": sizes}
        return BatchFeature(data=data, tensor_type=return_tensors)

    def __call__(self, images, return_tensors=None, **kwargs) -> BatchFeature:
        return self.preprocess(images, return_tensors=return_tensors, **kwargs)


class VlsaProcessor(ProcessorMixin):
    """Texts with ``<image>`` placeholders and their images -> model inputs: each ``<image>`` becomes
    ``image_seq_length`` image tokens (the SA-Perceiver gives l tokens whatever the image's size)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, image_token: str = "<image>",
                 image_seq_length: int = 576, **kwargs) -> None:
        self.image_token, self.image_seq_length = image_token, int(image_seq_length)
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    def __call__(self, images=None, text=None, return_tensors="pt", **kwargs) -> BatchFeature:
        texts = [text] if isinstance(text, str) else list(text or [])
        found = sum(t.count(self.image_token) for t in texts)
        pixels = {} if images is None else dict(self.image_processor(images, return_tensors=return_tensors))
        given = 0 if images is None else len(pixels["pixel_values"])
        if found != given:
            raise ValueError(f"the texts hold {found} {self.image_token} placeholder(s) but {given} image(s) "
                             "were given")
        expanded = [t.replace(self.image_token, self.image_token * self.image_seq_length) for t in texts]
        encoded = self.tokenizer(expanded, return_tensors=return_tensors, **kwargs)
        return BatchFeature(data={**encoded, **pixels}, tensor_type=return_tensors)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values", "pixel_values_hi", "tile_mask", "image_sizes"]


__all__ = ["VlsaImageProcessor", "VlsaProcessor"]
