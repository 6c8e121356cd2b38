"""Sample assembly: a validated record and its image labels -> one training sample.

Steps: read and safely decode the images; fit the conversation into ``model.llm.max_length`` (visual
tokens included) by dropping whole trailing turn pairs; insert the cognition-alignment turns with a
token budget that keeps the sequence within the maximum length; render with the chat template;
tokenize once and label from character offsets; encode the pixels (X_Lo, X_Hi tiles) and the
reconstruction target (image at the VAE size, or the VAE latent cached by the labeling job).

Labels are any mapping from label id (``vlsa.labels.shards.label_key``) to a label row: the
labeling job's ``LabelStore`` or a dict computed in-process (``compute_labels``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import torch

from vlsa.config import Config, DataConfig, DecodeConfig, EncodingConfig, SSFTConfig
from vlsa.data import ssft as ssft_mod
from vlsa.data.templates import ChatTemplate, Encoded, build_template, encode, label
from vlsa.io.image import ImageRejected, decode_image
from vlsa.io.records import Record, RecordRejected, Turn, read_image_bytes
from vlsa.labels.schema import LabelsMismatch, identity_differences
from vlsa.labels.shards import label_key
from vlsa.model.encoding import lowres_rgb, recon_pixels
from vlsa.model.geometry import config_num_patches, config_token_count, image_token_count, most_visual_tokens
from vlsa.model.geometry import vision_input_side
from vlsa.model.views import make_encoder
from vlsa.tokens import IGNORE_INDEX, IMAGE_TOKEN

SSFT_ATTEMPTS = 4


@dataclass
class Geometry:
    """Sizes the assembly needs from the model: vision input side, tile cap, visual tokens per image."""

    image_size: int
    max_tiles: int
    vision_kind: str
    visual_tokens: Callable[[int], int]
    """Visual tokens the LLM receives for an image of m tiles, at most (sampler lengths)."""
    max_length: int
    recon_size: int
    vq_image_size: int
    image_tokens: Callable[[int, int, int], int]
    """Visual tokens of an image of (height, width) and m tiles, exactly (``anyres`` depends on the size)."""
    projector: str = "sa_perceiver"
    encoding: EncodingConfig = field(default_factory=EncodingConfig)
    """Which views the projector takes (``vlsa.model.views.make_encoder``)."""


class SampleBuilder:
    """Turns records into samples (dicts of tensors, see ``build``) for one stage's data config."""

    def __init__(self, tokenizer, data: DataConfig, geometry: Geometry, *, labels: Mapping[str, dict] | None,
                 decode: DecodeConfig, recon: str = "pixels", seed: int = 0, label_identity: dict | None = None):
        if recon not in ("pixels", "latent"):
            raise ValueError(f"recon must be 'pixels' or 'latent', got {recon!r}")
        if (data.ssft.p_vq > 0 or data.ssft.p_px > 0 or recon == "latent") and labels is None:
            raise ValueError(
                f"ssft p_vq={data.ssft.p_vq}, p_px={data.ssft.p_px}, recon={recon} need labels; none given"
            )
        self.tokenizer, self.data, self.geometry = tokenizer, data, geometry
        self.template: ChatTemplate = build_template(data.template, tokenizer)
        self.labels, self.decode, self.recon, self.seed = labels, decode, recon, seed
        # Labels that name their identity (a LabelStore) are compared with the config's once here;
        # every row then carries the verdict, so a mismatch stops at the first sample that uses one.
        found = getattr(labels, "identity", None)
        self.identity_problems = (identity_differences(found, label_identity)
                                  if found is not None and label_identity is not None else [])
        self.encoder = make_encoder(geometry.projector, geometry.image_size, geometry.encoding, geometry.vision_kind)
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    @property
    def ssft(self) -> SSFTConfig:
        return self.data.ssft

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` on its own (SSFT answers start and end with special tokens, so in context too)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ------------------------------------------------------------------------------------- text

    def encode_turns(self, record: Record, turns: list[Turn], tokenized: tuple | None = None) -> Encoded:
        """Render and label ``turns`` (``tokenized``: their (ids, offsets) when already tokenized in a batch);
        the placeholders must tokenize to one run per image."""
        rendered = self.template.render(turns)
        if tokenized is None:
            encoded = encode(rendered, self.tokenizer, record.id)
        else:
            encoded = label(rendered, *tokenized, record.id)
        runs = _runs(encoded.input_ids, self.image_token_id)
        expected = sum(t.content.count(IMAGE_TOKEN) for t in turns)
        if runs != expected:
            raise RecordRejected(
                "placeholder_mismatch",
                f"record {record.id}: {expected} {IMAGE_TOKEN} placeholders give {runs} token runs",
            )
        if all(value == IGNORE_INDEX for value in encoded.labels):
            raise RecordRejected("no_supervised_tokens", f"record {record.id}: nothing to learn after rendering")
        return encoded

    def fit(self, record: Record, visual: int, tokenized: tuple | None = None) -> tuple[list[Turn], Encoded]:
        """The longest prefix of whole turn pairs within ``max_length`` (``visual`` extra image tokens)."""
        limit = self.geometry.max_length
        last_image = max((i // 2 for i, t in enumerate(record.turns) if IMAGE_TOKEN in t.content), default=0)
        turns = record.turns
        encoded = self.encode_turns(record, turns, tokenized)
        while len(encoded.input_ids) + visual > limit and len(turns) // 2 > last_image + 1:
            turns = turns[:-2]
            encoded = self.encode_turns(record, turns)
        if len(encoded.input_ids) + visual > limit:
            raise RecordRejected(
                "too_long",
                f"record {record.id}: {len(encoded.input_ids)} text + {visual} visual tokens > max_length {limit}",
            )
        return turns, encoded

    def text_length(self, record: Record, tokenized: tuple | None = None) -> int:
        """Tokens of the record's fitted conversation, visual tokens at the tile cap included (sampler lengths)."""
        visual = len(record.images) * (self.geometry.visual_tokens(self.geometry.max_tiles) - 1)
        _, encoded = self.fit(record, visual, tokenized)
        return len(encoded.input_ids) + visual

    def text_lengths(self, records: list[Record], chunk: int = 1024) -> list[int | RecordRejected]:
        """``text_length`` of many records, tokenized in batches (the tokenizer's threads do the work)."""
        out: list[int | RecordRejected] = []
        for start in range(0, len(records), chunk):
            part = records[start : start + chunk]
            texts = [_render_or_none(self.template, r.turns) for r in part]
            valid = [t for t in texts if t is not None]
            enc = self.tokenizer(valid, add_special_tokens=False, return_offsets_mapping=True) if valid else None
            k = 0
            for record, text in zip(part, texts):
                pre = None if text is None else (enc["input_ids"][k], enc["offset_mapping"][k])
                k += text is not None
                try:
                    out.append(self.text_length(record, pre))
                except RecordRejected as err:
                    out.append(err)
        return out

    # ------------------------------------------------------------------------------------- ssft

    def augment(self, record: Record, turns: list[Turn], encoded: Encoded, visual: int, rows: list, epoch: int,
                images: list):
        """Insert the drawn SSFT turns that fit; returns (turns, encoded, kinds inserted, coverage by kind).

        Coverage is the fraction of the drawn quarter's values the inserted answer gives (0 when the
        target did not fit at all). VQ answers come from the label row, pixel answers from X_Lo of
        the decoded image (``images``)."""
        draws = ssft_mod.draw(self.ssft, self.seed, epoch, record.id)
        if not draws or len(record.images) != 1 or rows[0] is None:
            return turns, encoded, [], {}
        kinds, coverage = [], {}
        for d in draws:
            budget = self.ssft.budget(d.kind)
            coverage[d.kind] = 0.0
            for _ in range(SSFT_ATTEMPTS):  # shrink the target until the whole sequence fits
                target = self._target(d, rows[0], images[0], budget)
                if target is None:
                    break
                new_turns = ssft_mod.insert(turns, target, d.u_position)
                try:
                    new_encoded = self.encode_turns(record, new_turns)
                except RecordRejected:  # the inserted turn does not line up: keep the sample without it
                    break
                excess = len(new_encoded.input_ids) + visual - self.geometry.max_length
                if excess <= 0:
                    turns, encoded = new_turns, new_encoded
                    kinds.append(d.kind)
                    coverage[d.kind] = target.coverage
                    break
                budget = self.count_tokens(target.answer) - excess
        return turns, encoded, kinds, coverage

    def _target(self, d: ssft_mod.Draw, row: dict, image, budget: int) -> ssft_mod.Target | None:
        if d.kind == "vq":
            return ssft_mod.vq_target(
                d, row, vq_image_size=self.geometry.vq_image_size, budget=budget,
                count_tokens=self.count_tokens, encoding=self.ssft.vq_encoding,
            )
        rgb = pixel_targets(image, self.geometry.image_size)
        return ssft_mod.px_target(d, rgb, budget=budget, count_tokens=self.count_tokens)

    # ----------------------------------------------------------------------------------- sample

    def load_images(self, record: Record, image_root: str) -> list:
        """The record's images, decoded to RGB; failures are ``RecordRejected`` with ``image_*`` reasons."""
        return [load_image(image_root, rel, self.decode) for rel in record.images]

    def label_rows(self, record: Record, images: list | None = None) -> list[dict | None]:
        """The label row of each image (None without labels); a missing row rejects the record.

        Each row is checked against its record: image path, decoded width and height (``images``),
        and the labels' identity (VQ-VAE / VAE content, sides); a mismatch is ``LabelsMismatch``.
        """
        if self.labels is None:
            return [None] * len(record.images)
        rows = []
        for k in range(len(record.images)):
            key = label_key(record.id, k, len(record.images))
            if key not in self.labels:
                raise RecordRejected("image_not_labeled", f"record {record.id}: no label row {key!r}")
            row = self.labels[key]
            check_row(record, k, row, images[k] if images is not None else None, self.identity_problems)
            rows.append(row)
        return rows

    def build(self, record: Record, image_root: str, epoch: int = 0) -> dict:
        """One sample: ``input_ids``, ``labels``, ``ssft_mask`` (T,), ``pixel_lo`` (n, 3, s, s),
        ``pixel_hi`` (list of n (m_i, 3, s, s)), ``recon_pixels`` (n, 3, S, S) or ``recon_latent``
        (n, C, s', s'), plus ``id``, ``ssft`` (the kinds of SSFT turns inserted) and ``ssft_coverage``
        (the fraction of each drawn target's quarter the answer covers)."""
        images = self.load_images(record, image_root)
        rows = self.label_rows(record, images)
        tiles = [self.encoder.num_tiles(im.width, im.height) for im in images]
        visual = sum(self.geometry.image_tokens(im.height, im.width, m) - 1 for im, m in zip(images, tiles))
        turns, encoded = self.fit(record, visual)
        turns, encoded, kinds, coverage = self.augment(record, turns, encoded, visual, rows, epoch, images)
        sample = {
            "id": record.id,
            "input_ids": torch.tensor(encoded.input_ids, dtype=torch.long),  # (T,)
            "labels": torch.tensor(encoded.labels, dtype=torch.long),  # (T,)
            "ssft_mask": torch.tensor(encoded.ssft_mask, dtype=torch.bool),  # (T,)
            "ssft": kinds,
            "ssft_coverage": coverage,
        }
        sample.update(self.pixels(images, rows))
        return sample

    def pixels(self, images: list, rows: list[dict | None]) -> dict:
        """Pixel tensors of a sample's images (empty with the right trailing shape for text-only samples)."""
        s = self.geometry.image_size
        encoded = [self.encoder(im) for im in images]
        out = {
            "pixel_lo": torch.stack([lo for lo, _ in encoded]) if encoded else torch.zeros(0, 3, s, s),
            "pixel_hi": [hi for _, hi in encoded],
            "image_sizes": torch.tensor([[im.height, im.width] for im in images], dtype=torch.long).view(-1, 2),
        }
        if self.recon == "latent":
            latents = [torch.from_numpy(_latent(row)) for row in rows]
            out["recon_latent"] = torch.stack(latents) if latents else torch.zeros(0, *self.latent_shape())
        else:
            size = self.geometry.recon_size
            recon = [recon_pixels(im, size, pad_multiple=s) for im in images]
            out["recon_pixels"] = torch.stack(recon) if recon else torch.zeros(0, 3, size, size)
        return out

    def latent_shape(self) -> tuple[int, ...]:
        """(C, s, s) of the cached latents (read from any label row)."""
        for key in self.labels:
            return tuple(int(n) for n in self.labels[key]["latent_shape"])
        raise ValueError("no label rows to take the latent shape from")


def check_row(record: Record, k: int, row: dict, image, identity_problems: list[str]) -> None:
    """Raise ``LabelsMismatch`` naming the record and both values unless ``row`` labels image ``k`` of it."""
    where = f"record {record.id} image {k}"
    if identity_problems:
        raise LabelsMismatch(f"{where}: labels were made with other models or sides: " + "; ".join(identity_problems))
    if "image" in row and row["image"] != record.images[k]:
        raise LabelsMismatch(f"{where}: the label row is for image {row['image']!r}, the record has "
                             f"{record.images[k]!r} (labels made from another data file?)")
    if image is not None and "width" in row and (row["width"], row["height"]) != image.size:
        raise LabelsMismatch(f"{where} ({record.images[k]}): the label row is for a {row['width']}x{row['height']} "
                             f"image, the image read is {image.width}x{image.height} (labels made from another "
                             f"image root?)")


def pixel_targets(image, side: int) -> np.ndarray:
    """Target_PX of a decoded image: X_Lo as (side, side, 3) uint8, the values label schema version 1
    stored (recomputed here, from the image the sample decodes anyway)."""
    return lowres_rgb(image, side)


def _render_or_none(template: ChatTemplate, turns: list[Turn]) -> str | None:
    try:
        return template.render(turns).text
    except RecordRejected:
        return None  # rendered again (and rejected with its reason) record by record


def load_image(image_root: str, rel: str, decode: DecodeConfig):
    """Read and safely decode one image; every failure is a ``RecordRejected`` (``image_<reason>``)."""
    data = read_image_bytes(image_root, rel, decode.max_bytes)
    try:
        return decode_image(data, decode)
    except ImageRejected as err:
        raise RecordRejected(f"image_{err.reason}", f"image {rel}: {err.detail}") from None


def _latent(row: dict) -> np.ndarray:
    return np.frombuffer(row["latent"], dtype=np.float32).reshape(row["latent_shape"]).copy()


def _runs(ids: list[int], token: int) -> int:
    return sum(1 for i, t in enumerate(ids) if t == token and (i == 0 or ids[i - 1] != token))


# ---------------------------------------------------------------------------------------- config


def geometry_from_config(cfg: Config, model=None) -> Geometry:
    """Assembly sizes from a built model (exact) or, without one, from the config's vision part."""
    if model is not None:
        image_size, visual, exact = model.image_size, model.token_count, model.visual_tokens
    else:
        image_size, visual = vision_input_side(cfg.model), config_token_count(cfg.model)
        exact = image_token_count(cfg.model, image_size, config_num_patches(cfg.model))
    if cfg.model.projector.type == "anyres":  # LLaVA-NeXT's count depends on the size: bound lengths by the most
        most = most_visual_tokens(cfg.model, image_size, config_num_patches(cfg.model))
        visual = lambda m: most  # noqa: E731
    return Geometry(
        image_size=image_size,
        max_tiles=cfg.model.encoding.max_tiles,
        vision_kind=cfg.model.vision.kind,
        visual_tokens=visual,
        max_length=cfg.model.llm.max_length,
        recon_size=cfg.model.recon.image_size,
        vq_image_size=cfg.model.vq_image_size,
        image_tokens=exact,
        projector=cfg.model.projector.type,
        encoding=cfg.model.encoding,
    )
