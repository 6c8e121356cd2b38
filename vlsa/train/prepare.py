"""The driver's data check before any worker starts: each stage's data validated once, labels present.

A stage with labels trusts the labeling job's manifest (its label identity and its ``validation``
section must match the config and the data file). A stage without labels is validated by one Ray
Data pass (``vlsa.data.validate``) whose manifest is kept in the run folder, so a restart reuses it.
A stage whose SSFT turns need labels and has none stops here, naming the command that makes them.
"""

from __future__ import annotations

import logging
import shlex
from typing import Callable

from vlsa.config import Config, StageConfig
from vlsa.io.validation import DataChanged, check_matches, check_rejects, data_fingerprint, read_section
from vlsa.io import storage
from vlsa.data.validate import run_validation
from vlsa.labels.schema import MANIFEST
from vlsa.labels.schema import check_manifest
from vlsa.labels.store import read_manifest

logger = logging.getLogger(__name__)
VALIDATION_DIR = "validation"


class LabelsMissing(RuntimeError):
    """A stage needs labels (SSFT turns) that were not made, or not finished."""


def needs_labels(stage: StageConfig) -> bool:
    """Whether the stage's SSFT turns draw on labels (VQ indices, pixel targets)."""
    return stage.data.ssft.p_vq > 0 or stage.data.ssft.p_px > 0


def label_command(cfg: Config, index: int, output: str = "OUT") -> str:
    """The labeling command for stage ``index``'s data (then ``train.stages.<index>.data.labels=OUT``)."""
    data = cfg.train.stages[index].data
    args = ["python", "ray_jobs/label.py", "--data", data.train, "--image-root", data.image_root,
            "--output", output, "--config", "C"]
    return " ".join(shlex.quote(a) for a in args)


def _missing(cfg: Config, index: int, why: str) -> LabelsMissing:
    stage = cfg.train.stages[index]
    return LabelsMissing(
        f"stage {stage.name!r} {why}. Make them with\n    {label_command(cfg, index)}\n"
        f"(C: this run's config, OUT: a folder or s3:// prefix), then train with train.stages.{index}.data.labels=OUT"
    )


def validation_uri(run: str, stage: StageConfig) -> str:
    """Where the driver keeps the validation of a stage without labels."""
    return storage.join(run, VALIDATION_DIR, f"{stage.name}.json")


def _labels_manifest(cfg: Config, index: int) -> str:
    data = cfg.train.stages[index].data
    try:
        manifest = read_manifest(data.labels)
    except FileNotFoundError as err:
        raise _missing(cfg, index, f"has labels at {data.labels} that are not complete ({err})") from None
    check_manifest(manifest, cfg, data.labels)
    return storage.join(data.labels, MANIFEST)


def manifest_uri(cfg: Config, index: int, run: str) -> str:
    """Where stage ``index``'s validation manifest is: its labels' manifest, else the run's own
    validation. Reads nothing; a stage whose SSFT turns need labels and has none raises here."""
    stage = cfg.train.stages[index]
    data = stage.data
    if not data.train:
        raise ValueError(f"train.stages.{index}.data.train is empty: name a LLaVA JSON/JSONL file")
    if needs_labels(stage) and not data.labels:
        raise _missing(cfg, index, f"inserts SSFT turns (ssft.p_vq={data.ssft.p_vq}, ssft.p_px={data.ssft.p_px}) "
                                   f"but has no labels (train.stages.{index}.data.labels)")
    return storage.join(data.labels, MANIFEST) if data.labels else validation_uri(run, stage)


def prepare_stage(cfg: Config, index: int, run: str, log: Callable[[str], None] = logger.info) -> str:
    """The validation manifest stage ``index`` trains with (checked, or made by a Ray Data pass)."""
    stage = cfg.train.stages[index]
    data = stage.data
    uri = manifest_uri(cfg, index, run)
    if data.labels:
        _labels_manifest(cfg, index)
    fingerprint = data_fingerprint(data.train, storage.read_bytes(data.train))
    if storage.exists(uri):
        section = read_section(uri)
        try:
            check_matches(section, fingerprint, data.image_root, cfg.label.decode, where=uri)
        except DataChanged:
            if data.labels:  # labels of other data are never trusted, nor silently remade
                raise
            log(f"stage {stage.name}: {uri} describes other data; validating again")
            section = None
    else:
        section = None
    if section is None:
        section = run_validation(data, cfg.label.decode, uri, log)
    check_rejects(section, data.reject_threshold, where=f"stage {stage.name} data {data.train}")
    return uri


def prepare_stages(cfg: Config, run: str, log: Callable[[str], None] = logger.info) -> list[str]:
    """``prepare_stage`` for every stage, in order (the first problem stops before any worker starts)."""
    return [prepare_stage(cfg, index, run, log) for index in range(len(cfg.train.stages))]
