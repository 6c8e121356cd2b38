"""The training dataset of one stage: records validated up front, samples assembled on access.

``build_dataset`` reads the stage's records and attaches labels. With a validation manifest (the
labeling job's, or the training driver's Ray Data pass, see ``vlsa.io.validation``) it trusts
what was checked: records are parsed, the rejected ids left out, and no image is read, so a worker
starts in time that does not grow with the images; sampler lengths are estimated from the text.
Without one (small runs, tools) it checks every record here (structure, images, template alignment,
length), computing labels in-process when SSFT needs them, and stops with ``TooManyRejected`` when
the rejected fraction passes ``data.reject_threshold``. A record that fails later (a file gone from
the bucket) is replaced by the next good one and reported in the batch (``skipped``: (id, reason)
pairs) for the training loop to count, never a crash mid-epoch.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Callable, Mapping

import torch

from vlsa.config import Config, DataConfig
from vlsa.data.assemble import SampleBuilder, geometry_from_config, load_image
from vlsa.io.records import Record, RecordRejected, RejectStats, load_records
from vlsa.labels.compute import LabelComputer
from vlsa.labels.shards import label_key
from vlsa.labels.store import load_labels, load_rejects
from vlsa.io.validation import read_section
from vlsa.io.validation import trusted_records
from vlsa.labels.schema import label_identity

logger = logging.getLogger(__name__)
MAX_SUBSTITUTES = 16
CHARS_PER_TOKEN = 4
"""Sampler lengths of trusted data are estimated, not tokenized (only similar lengths are grouped)."""


class VLSADataset(torch.utils.data.Dataset):
    """Map-style dataset of assembled samples; ``set_epoch`` changes the SSFT draws."""

    def __init__(self, records: list[Record], builder: SampleBuilder, image_root: str, lengths: list[int],
                 stats: RejectStats):
        self.records, self.builder, self.image_root = records, builder, image_root
        self.lengths, self.stats = lengths, stats
        self.epoch = 0
        self.skipped: Counter = Counter()

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Augmentation of epoch ``epoch`` (deterministic per sample id)."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        reasons = []
        for step in range(min(MAX_SUBSTITUTES, len(self.records))):
            record = self.records[(index + step) % len(self.records)]
            try:
                sample = self.builder.build(record, self.image_root, self.epoch)
            except RecordRejected as err:
                self.skipped[err.reason] += 1
                reasons.append((record.id, err.reason))
                logger.warning("skipping record %s: %s", record.id, err)
                continue
            sample["skipped"] = reasons
            return sample
        raise RuntimeError(f"records {index}..{index + MAX_SUBSTITUTES - 1} all failed: {reasons}")


def build_dataset(cfg: Config, data: DataConfig, tokenizer, *, model=None, labels: Mapping[str, dict] | None = None,
                  label_fn: Callable[[list], list[dict]] | None = None, check: bool = True,
                  validation: str = "") -> VLSADataset:
    """The dataset of ``data`` (one stage's data config) for ``tokenizer``.

    ``validation``: a validation manifest to trust (see the module docstring). Labels: ``labels``
    if given; else the labeling output at ``data.labels``; else, when SSFT needs them, computed
    in-process with ``label_fn`` (default: ``vlsa.labels.compute.LabelComputer``).
    ``model`` (optional) gives the exact visual-token count and vision input side.
    """
    if not data.train:
        raise ValueError("data.train is empty: pass a LLaVA JSON/JSONL file (vlsa.data.demo.generate_demo makes one)")
    if validation and labels is None:
        return trusted_dataset(cfg, data, tokenizer, validation, model=model)
    records, stats = load_records(data.train, data.allow_duplicate_ids)
    recon, identity = "pixels", None
    if labels is None and data.labels:
        labels, records = _stored_labels(cfg, data, records, stats)
        recon, identity = "latent", _label_identity(cfg)
    elif labels is None and (data.ssft.p_vq > 0 or data.ssft.p_px > 0):
        labels, records = compute_labels(cfg, records, data.image_root, stats, label_fn)
    elif labels is None:
        records = check_images(cfg, records, data.image_root, stats)
    builder = SampleBuilder(tokenizer, data, geometry_from_config(cfg, model), labels=labels,
                            decode=cfg.label.decode, recon=recon, seed=cfg.train.seed, label_identity=identity)
    records, lengths = measure(builder, records, stats)
    logger.info("data %s: %s", data.train, stats.to_dict())
    if check:
        stats.check(data.reject_threshold, where=data.train)
    return VLSADataset(records, builder, data.image_root, lengths, stats)


def trusted_dataset(cfg: Config, data: DataConfig, tokenizer, validation: str, *, model=None) -> VLSADataset:
    """The dataset of validated data: records parsed, rejected ids left out, no image read."""
    records, stats = trusted_records(data.train, data.image_root, cfg.label.decode, read_section(validation),
                                     allow_duplicate_ids=data.allow_duplicate_ids)
    labels, identity = None, None
    if data.labels:
        labels, identity = load_labels(data.labels, cfg, scratch=data.label_cache), _label_identity(cfg)
    builder = SampleBuilder(tokenizer, data, geometry_from_config(cfg, model), labels=labels,
                            decode=cfg.label.decode, recon="latent" if labels is not None else "pixels",
                            seed=cfg.train.seed, label_identity=identity)
    visual = builder.geometry.visual_tokens(builder.geometry.max_tiles) - 1
    lengths = [estimated_length(record, visual, builder.geometry.max_length) for record in records]
    logger.info("data %s (validated, %s): %s", data.train, validation, stats.to_dict())
    return VLSADataset(records, builder, data.image_root, lengths, stats)


def estimated_length(record: Record, visual_per_image: int, max_length: int) -> int:
    """Tokens of a record estimated from its characters (sampler grouping only)."""
    text = sum(len(turn.content) for turn in record.turns) // CHARS_PER_TOKEN
    return min(max_length, text + len(record.images) * visual_per_image)


def _label_identity(cfg: Config) -> dict:
    return label_identity(cfg)


def measure(builder: SampleBuilder, records: list[Record], stats: RejectStats) -> tuple[list[Record], list[int]]:
    """Render and label every record once: the ones that line up, with their token lengths."""
    kept, lengths = [], []
    for record, length in zip(records, builder.text_lengths(records)):
        if isinstance(length, RecordRejected):
            stats.reject(length.reason)
            continue
        kept.append(record)
        lengths.append(length)
    return kept, lengths


def _stored_labels(cfg: Config, data: DataConfig, records: list[Record], stats: RejectStats):
    store, rejects = load_labels(data.labels, cfg, scratch=data.label_cache), load_rejects(data.labels)
    kept = []
    for record in records:
        keys = [label_key(record.id, k, len(record.images)) for k in range(len(record.images))]
        missing = [k for k in keys if k not in store]
        if missing:
            reason = rejects.get(missing[0])
            stats.reject(_image_reason(reason) if reason else "image_not_labeled")
            continue
        kept.append(record)
    return store, kept


def _image_reason(reason: str) -> str:
    return reason if reason.startswith("image_") else f"image_{reason}"


def check_images(cfg: Config, records: list[Record], image_root: str, stats: RejectStats) -> list[Record]:
    """The records whose every image reads and decodes; the others are counted by reason."""
    kept = []
    for record in records:
        try:
            for rel in record.images:
                load_image(image_root, rel, cfg.label.decode)
        except RecordRejected as err:
            stats.reject(err.reason)
            continue
        kept.append(record)
    return kept


def compute_labels(cfg: Config, records: list[Record], image_root: str, stats: RejectStats,
                   label_fn: Callable[[list], list[dict]] | None = None, batch: int = 32):
    """Label rows for every image of ``records`` in-process (small runs): (labels by label id, kept records)."""
    if label_fn is None:
        label_fn = LabelComputer(cfg).label
    labels: dict[str, dict] = {}
    kept: list[Record] = []
    pending: list[tuple[Record, list]] = []
    for record in records:
        try:
            pending.append((record, [load_image(image_root, rel, cfg.label.decode) for rel in record.images]))
        except RecordRejected as err:
            stats.reject(err.reason)
            continue
        if sum(len(images) for _, images in pending) >= batch:
            kept += _label_batch(pending, label_fn, labels)
            pending = []
    kept += _label_batch(pending, label_fn, labels)
    return labels, kept


def _label_batch(pending: list[tuple[Record, list]], label_fn, labels: dict[str, dict]) -> list[Record]:
    images = [image for _, imgs in pending for image in imgs]
    rows = iter(label_fn(images) if images else [])
    for record, imgs in pending:
        for k in range(len(imgs)):
            labels[label_key(record.id, k, len(imgs))] = next(rows)
    return [record for record, _ in pending]
