"""The labeling job on Ray Data: records -> safe decode (CPU read tasks) -> models (actor pool) -> shards.

``run_labeling`` plans deterministic shards over the record order, skips those already complete,
runs the rest through Ray Data and writes the manifest last. Ray is imported inside functions only;
the caller owns ``ray.init`` (the entry point starts a local instance when there is no cluster).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Callable

from vlsa.config import Config, LabelConfig
from vlsa.io import storage
from vlsa.io.records import Record, load_records, parse_raw, validate_all
from vlsa.io.validation import SECTION, data_fingerprint, validation_section
from vlsa.labels import progress as progress_lib
from vlsa.labels.compute import LabelGeometry
from vlsa.labels.schema import label_identity
from vlsa.labels.shards import (
    Item,
    build_manifest,
    completed_shards,
    ensure_spec,
    fingerprint,
    items_of,
    label_key,
    plan_shards,
    rejected_ids,
    write_manifest,
)
from vlsa.labels.worker import ShardLabeler, decode_batch
from vlsa.ray_session import gpus_requested

logger = logging.getLogger("vlsa.labels")

_MAX_SHARD_BYTES = 1 << 30
"""A decoded shard travels as one Arrow binary value, which must stay well below 2 GiB."""
_READ_WORKER_BYTES = 320 << 20
"""Resident memory of a read task's worker before any image (Python, torch, PIL)."""


@dataclass(frozen=True)
class PoolPlan:
    """How the job uses the cluster: labeling actors and what each reserves, and the read tasks' CPUs."""

    actors: int
    actor_cpus: float
    actor_gpus: float
    read_cpus: float


def plan_pool(resources: dict[str, float], label: LabelConfig, pending: int) -> PoolPlan:
    """Size the actor pool to what fits next to the read tasks (never more than fit, or than shards).

    One CPU per actor and per read task; a 1-CPU cluster splits it in halves so both stages always
    have room and the job cannot wait forever for resources. With ``gpus_per_actor`` > 0, one actor
    per ``gpus_per_actor`` GPUs, still keeping CPUs for reading; a cluster with fewer GPUs than one
    actor asks for is an error (labeling 558K images on CPUs by accident would take days).
    """
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    if cpus <= 0:
        raise RuntimeError(f"the Ray cluster has no CPUs (resources: {resources})")
    unit = 1.0 if cpus >= 2 else cpus / 2
    fit = int((cpus - unit) // unit)  # CPUs left once one read task can run
    use_gpu = label.gpus_per_actor > 0
    if use_gpu and gpus < label.gpus_per_actor:
        raise RuntimeError(
            f"label.gpus_per_actor={label.gpus_per_actor} but the Ray cluster has {gpus:g} GPUs "
            f"(resources: {resources}); add GPU nodes, or set label.gpus_per_actor=0 to label on CPUs"
        )
    if use_gpu:
        fit = min(fit, int(gpus // label.gpus_per_actor))
    wanted = label.num_actors or fit
    actors = max(1, min(wanted, fit, pending))
    return PoolPlan(actors, unit, label.gpus_per_actor, unit)


def shard_bytes(geometry: LabelGeometry, rows_per_shard: int) -> int:
    """Size of one decoded shard in transit (uint8 model inputs and pixel targets)."""
    return 3 * rows_per_shard * (geometry.vq_image_size**2 + geometry.recon_image_size**2 + geometry.vision_side**2)


def read_memory(resources: dict[str, float], geometry: LabelGeometry, rows_per_shard: int) -> int:
    """Memory one read task reserves: its worker (decoders, torch) and the shard it builds, packed and
    unpacked; capped at a quarter of the cluster's so a read can always be scheduled."""
    wanted = _READ_WORKER_BYTES + 2 * shard_bytes(geometry, rows_per_shard)
    return int(min(wanted, resources.get("memory", wanted * 4) / 4))


def _check_shard_size(geometry: LabelGeometry, rows_per_shard: int) -> None:
    size = shard_bytes(geometry, rows_per_shard)
    if size > _MAX_SHARD_BYTES:
        raise ValueError(
            f"label.rows_per_shard={rows_per_shard}: a decoded shard takes {size} bytes > {_MAX_SHARD_BYTES}; "
            f"lower label.rows_per_shard"
        )


def _dataset(cfg: Config, shards: list[list[Item]], pending: list[int], image_root: str, output: str,
             plan: PoolPlan, resources: dict[str, float]):
    """The Ray Data plan: one row per pending shard -> read task (decode) -> labeling actor -> summary row."""
    import ray

    geometry = LabelGeometry.from_config(cfg)
    items = [{"shard": k, "items": json.dumps([[i.id, i.image] for i in shards[k]])} for k in pending]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds.context.enable_progress_bars = False  # this dataset only: the per-shard lines are the progress
    ds.context.print_on_execution_start = False  # ... and the job's own log says what runs
    # A read task holds its decoded shard; reserving that memory also keeps Ray Data from fusing
    # decoding into the actors (it fuses only equal remote args), so the models never wait on it.
    ds = ds.map_batches(decode_batch, batch_size=1, num_cpus=plan.read_cpus,
                        memory=read_memory(resources, geometry, cfg.label.rows_per_shard),
                        fn_kwargs={"root": image_root, "decode": cfg.label.decode, "geometry": geometry})
    # 1 + write_ahead calls per actor: one labels while the others wait for their uploads (models serialised)
    calls = 1 + cfg.label.write_ahead
    pool = ray.data.ActorPoolStrategy(size=plan.actors, max_concurrent_calls_per_actor=calls,
                                      enable_true_multi_threading=calls > 1)
    return ds.map_batches(
        ShardLabeler, batch_size=1, compute=pool,
        num_cpus=plan.actor_cpus, num_gpus=plan.actor_gpus or None,
        fn_constructor_kwargs={"cfg": cfg.to_dict(), "output": output, "threads": int(plan.actor_cpus),
                               "device": "cuda" if plan.actor_gpus else "cpu"},
    )


def _run_ray(cfg: Config, shards: list[list[Item]], pending: list[int], image_root: str, output: str,
             log: Callable[[str], None]) -> progress_lib.Progress:
    """Label the ``pending`` shards on the current Ray instance, reporting each as it finishes."""
    with gpus_requested(cfg.label.min_gpus, cfg.label.wait_timeout_s, log) as resources:
        plan = plan_pool(resources, cfg.label, len(pending))
        log(f"labeling {len(pending)} of {len(shards)} shards with {plan.actors} actor(s) "
            f"({plan.actor_gpus or 0} GPU, {plan.actor_cpus} CPU each), read tasks {plan.read_cpus} CPU each")
        ds = _dataset(cfg, shards, pending, image_root, output, plan, resources)
        tracker = progress_lib.Progress(len(shards), len(pending), plan.actors, log)
        for summary in ds.iter_rows():
            tracker.shard_done(summary)
    return tracker


def record_rejects(records: list[Record], rejected_images: dict[str, str]) -> dict[str, str]:
    """record id -> reason, for the records with a rejected image (label ids mapped back to records)."""
    out: dict[str, str] = {}
    for record in records:
        for k in range(len(record.images)):
            reason = rejected_images.get(label_key(record.id, k, len(record.images)))
            if reason is not None and record.id not in out:
                out[record.id] = reason if reason.startswith("image_") else f"image_{reason}"
    return out


def label_spec(cfg: Config, items: list[Item]) -> dict[str, Any]:
    """What one labeling output is made of: a run resumes an output only when this is unchanged."""
    spec = {"identity": label_identity(cfg), "items": len(items), "fingerprint": fingerprint(items),
            "rows_per_shard": cfg.label.rows_per_shard}
    precision = {"vae": cfg.label.precision, "vq": cfg.label.vq_precision}
    if set(precision.values()) != {"fp32"}:  # one output never mixes precisions; fp32 outputs keep their old spec
        # the VQ-VAE's quant_conv runs in fp32 whatever the encoder's precision; naming it in the spec
        # refuses to resume a half-labeled output made when it did not (other rounding in one output)
        spec["precision"] = precision | {"vq_tail": "fp32"}
    return spec


def run_labeling(cfg: Config, data: str, image_root: str, output: str,
                 log: Callable[[str], None] = logger.info, allow_duplicate_ids: bool = False) -> dict[str, Any]:
    """Label every image of ``data`` into ``output`` (local or ``s3://``); returns the run summary.

    Completed shards are skipped, so a re-run is a no-op and a killed run resumes where it stopped.
    The manifest's ``validation`` section (``vlsa.io.validation``) lets training trust the data
    without reading the images again.
    """
    raw = storage.read_bytes(data)
    records, stats = validate_all(parse_raw(raw, data), allow_duplicate_ids, where=data)
    items = items_of(records)
    shards = plan_shards(items, cfg.label.rows_per_shard)
    geometry = LabelGeometry.from_config(cfg)
    _check_shard_size(geometry, cfg.label.rows_per_shard)
    spec = label_spec(cfg, items)
    ensure_spec(output, spec)
    done = completed_shards(output)
    pending = [k for k in range(len(shards)) if k not in done]
    log(f"{stats.total} records ({stats.total - stats.accepted} invalid), {len(items)} images, "
        f"{len(shards)} shards, {len(shards) - len(pending)} already complete")
    if pending:
        tracker = _run_ray(cfg, shards, pending, image_root, output, log)
    else:
        tracker = progress_lib.Progress(len(shards), 0, 0, log)
    source = {"data": data, "image_root": image_root, "records": stats.to_dict()}
    manifest = build_manifest(output, shards, spec, source)
    rejected = record_rejects(records, rejected_ids(output, len(shards)))
    manifest[SECTION] = validation_section(data_fingerprint(data, raw), image_root, cfg.label.decode, stats, rejected)
    write_manifest(output, manifest)
    summary = tracker.summary(manifest)
    summary["invalid_records"] = stats.to_dict()["rejected"]
    for line in progress_lib.summary_lines(summary):
        log(line)
    progress_lib.log_to_mlflow(cfg, summary, {"data": data, "image_root": image_root, "output": output})
    return summary
