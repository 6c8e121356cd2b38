"""A sweep's data, prepared once on the sweep's driver before any trial starts.

Each point of the space is a training config whose stages are checked as a training run's driver
checks them (``vlsa.train.prepare``): labels present where SSFT turns need them (first, for every
point, so a missing label set stops the sweep before any data is read), then each distinct data set
validated once into a manifest under the sweep folder, shared by every trial (and by a restored
sweep). A trial only works out where its manifests are; its workers parse records and read no image.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from typing import Any, Callable

from vlsa.config import Config
from vlsa.io import storage
from vlsa.labels.pipeline import run_labeling
from vlsa.labels.schema import label_identity
from vlsa.train.prepare import manifest_uri, needs_labels, prepare_stage
from vlsa.tune.points import sample_points

logger = logging.getLogger(__name__)
SAMPLES = 2
"""Random draws per grid point checked (as the space check draws them)."""


def data_root(path: str) -> str:
    """Where a sweep keeps the validations of its stages' data (``path``: the sweep folder)."""
    return storage.join(path, "data")


def data_run(root: str, cfg: Config, index: int) -> str:
    """The folder holding stage ``index``'s validation, one per distinct data set (what a validation
    checks: data file, image root, decoding limits, duplicate-id rule), so points over data do not collide."""
    data = cfg.train.stages[index].data
    checked = {"train": data.train, "image_root": data.image_root, "decode": dataclasses.asdict(cfg.label.decode),
               "allow_duplicate_ids": data.allow_duplicate_ids}
    return storage.join(root, hashlib.sha256(json.dumps(checked, sort_keys=True).encode()).hexdigest()[:16])


def point_configs(cfg: Config, space: dict[str, Any]) -> list[tuple[dict[str, Any], Config]]:
    """The base config and the sampled points of ``space`` applied to it, with their points."""
    points = sample_points(space, SAMPLES)
    return [({}, cfg)] + [(point, cfg.with_overrides(dict(sorted(point.items())))) for point in points]


def _checked_inputs(cfg: Config, index: int) -> str:
    """Everything ``prepare_stage`` reads from the config (stage data, label settings, the model the
    label identity comes from): equal for two points, their stage is prepared once."""
    parts = {"data": dataclasses.asdict(cfg.train.stages[index].data), "label": dataclasses.asdict(cfg.label),
             "model": cfg.to_dict()["model"]}
    return json.dumps(parts, sort_keys=True, default=str)


def _at(point: dict[str, Any], err: Exception) -> Exception:
    """``err`` naming the point it came from (same type, so callers can tell a missing label set)."""
    try:
        return type(err)(f"search-space point {point}: {err}") if point else err
    except TypeError:  # an exception type with other arguments: as it is
        return err


def prepare_sweep(cfg: Config, space: dict[str, Any], path: str,
                  log: Callable[[str], None] = logger.info) -> None:
    """Check and validate the data of every stage of every point of ``space`` over ``cfg``, once."""
    configs = point_configs(cfg, space)
    root = data_root(path)
    for point, point_cfg in configs:  # labels first: nothing read when one is missing
        for index in range(len(point_cfg.train.stages)):
            try:
                manifest_uri(point_cfg, index, data_run(root, point_cfg, index))
            except (RuntimeError, ValueError) as err:
                raise _at(point, err) from err
    done: set[str] = set()
    for point, point_cfg in configs:
        for index in range(len(point_cfg.train.stages)):
            key = _checked_inputs(point_cfg, index)
            if key in done:
                continue
            try:
                prepare_stage(point_cfg, index, data_run(root, point_cfg, index), log)
            except (RuntimeError, ValueError) as err:
                raise _at(point, err) from err
            done.add(key)


def with_demo_labels(cfg: Config, space: dict[str, Any], stages: list[int], folder: str) -> Config:
    """``cfg`` with labels for the generated demo data of ``stages`` where any point of ``space`` inserts
    SSFT turns there (labeled once under ``folder``, by the labeling job's pipeline)."""
    needed = sorted({i for _, point_cfg in point_configs(cfg, space) for i in stages
                     if needs_labels(point_cfg.train.stages[i]) and not point_cfg.train.stages[i].data.labels})
    key = hashlib.sha256(json.dumps(label_identity(cfg), sort_keys=True).encode()).hexdigest()[:10]
    overrides = {}
    for i in needed:
        data = cfg.train.stages[i].data
        out = storage.join(folder, "labels", f"{data.train.rsplit('/', 1)[-1].rsplit('.', 1)[0]}-{key}")
        run_labeling(cfg, data.train, data.image_root, out)
        overrides[f"train.stages.{i}.data.labels"] = out
    return cfg.with_overrides(overrides)


def trial_validations(cfg: Config, root: str) -> tuple[str, ...]:
    """The manifests a trial's stages train with, prepared by :func:`prepare_sweep` under ``root``
    (:func:`data_root`). Nothing is read but their existence: a point the sweep did not prepare (a
    random draw over data paths) is an error, as is a stage that needs labels and has none."""
    uris = tuple(manifest_uri(cfg, i, data_run(root, cfg, i)) for i in range(len(cfg.train.stages)))
    missing = [uri for uri in uris if not storage.exists(uri)]
    if missing:
        raise RuntimeError(f"the data of run {cfg.run.name} was not validated before the sweep started (no "
                           f"{', '.join(missing)}): a space over data paths must list them in a grid")
    return uris
