"""Label identity and the manifest check, shard planning and actor-pool sizing (no models, no Ray)."""

from __future__ import annotations

import pytest
from label_helpers import label_config

from vlsa.config import ConfigError
from vlsa.io.records import validate_all
from vlsa.labels.pipeline import PoolPlan, label_spec, plan_pool
from vlsa.labels.schema import SCHEMA_VERSION, LabelsMismatch, check_manifest, label_identity
from vlsa.labels.shards import Item, ensure_spec, fingerprint, items_of, plan_shards


def _manifest(cfg) -> dict:
    return {"schema_version": SCHEMA_VERSION, "identity": label_identity(cfg)}


def test_identity_names_models_and_sides(label_cfg):
    identity = label_identity(label_cfg)
    assert identity["schema_version"] == SCHEMA_VERSION
    assert identity["vq"] == {"init": label_cfg.model.vq.init, "seed": 0}
    assert identity["vae"]["init"]["latent_channels"] == 16
    assert (identity["vq_image_size"], identity["recon_image_size"], identity["pixels_side"]) == (32, 32, 32)


def test_manifest_check_accepts_the_same_config(label_cfg, cache_dir):
    check_manifest(_manifest(label_cfg), label_config(cache_dir), "out/")  # a fresh, equal config


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("model.vq.init.num_vq_embeddings=128", "vq"),
        ("model.seed=3", "vae"),
        ("model.vq_image_size=64", "vq_image_size"),
        ("model.recon.image_size=64", "recon_image_size"),
        ("model.vision.init.image_size=64", "pixels_side"),
    ],
)
def test_manifest_check_refuses_other_models_and_sides(label_cfg, cache_dir, override, field):
    with pytest.raises(LabelsMismatch, match=rf"labels at out/ were made for another config: .*{field}: labels have"):
        check_manifest(_manifest(label_cfg), label_config(cache_dir, override), "out/")


def test_manifest_check_refuses_another_schema_version(label_cfg):
    manifest = _manifest(label_cfg)
    manifest["identity"]["schema_version"] = SCHEMA_VERSION + 1
    expected = (rf"schema version {SCHEMA_VERSION + 1}, this code reads versions \[1, 2\]; make them again with "
                r"python ray_jobs/label.py --data D --image-root R --output NEW --config C")
    with pytest.raises(LabelsMismatch, match=expected):
        check_manifest(manifest, label_cfg, "out/")


def test_labels_of_schema_version_1_stay_readable(label_cfg):
    """Version 1 stored the pixel targets too; its other columns and identity are this version's."""
    manifest = _manifest(label_cfg)
    manifest["identity"]["schema_version"] = 1
    check_manifest(manifest, label_cfg, "out/")
    manifest["identity"]["vq_image_size"] = 64
    with pytest.raises(LabelsMismatch, match="vq_image_size: labels have 64"):
        check_manifest(manifest, label_cfg, "out/")


def test_shards_are_fixed_slices_and_multi_image_records_get_indexed_ids():
    turns = [{"from": "human", "value": "<image>\n<image> two"}, {"from": "gpt", "value": "ok"}]
    raw = [
        {"id": "a", "image": "a.png", "conversations": [{"from": "human", "value": "<image>"}, turns[1]]},
        {"id": "t", "conversations": [{"from": "human", "value": "text only"}, turns[1]]},
        {"id": 7, "image": ["x/b.png", "c.png"], "conversations": turns},
    ]
    records, _ = validate_all(enumerate(raw))
    items = items_of(records)
    assert items == [Item("a", "a.png"), Item("7#0", "x/b.png"), Item("7#1", "c.png")]
    assert plan_shards(items, 2) == [items[:2], items[2:]]
    assert plan_shards(items, 5) == [items]
    assert fingerprint(items) == fingerprint(list(items)) != fingerprint(items[::-1])


@pytest.mark.parametrize(
    ("resources", "overrides", "pending", "expected"),
    [
        ({"CPU": 4}, [], 10, PoolPlan(3, 1.0, 0.0, 1.0)),  # CPUs minus one for reading
        ({"CPU": 2}, [], 10, PoolPlan(1, 1.0, 0.0, 1.0)),
        ({"CPU": 1}, [], 10, PoolPlan(1, 0.5, 0.0, 0.5)),  # halves: both stages fit, no deadlock
        ({"CPU": 4}, ["label.num_actors=9"], 10, PoolPlan(3, 1.0, 0.0, 1.0)),  # never more than fit
        ({"CPU": 8}, ["label.num_actors=2"], 10, PoolPlan(2, 1.0, 0.0, 1.0)),
        ({"CPU": 8}, [], 2, PoolPlan(2, 1.0, 0.0, 1.0)),  # never more than shards
        ({"CPU": 16, "GPU": 4}, ["label.gpus_per_actor=1"], 10, PoolPlan(4, 1.0, 1.0, 1.0)),  # one per GPU
        ({"CPU": 16, "GPU": 2}, ["label.gpus_per_actor=0.5"], 10, PoolPlan(4, 1.0, 0.5, 1.0)),
        ({"CPU": 3, "GPU": 8}, ["label.gpus_per_actor=1"], 10, PoolPlan(2, 1.0, 1.0, 1.0)),  # CPUs bound them too
        ({"CPU": 4, "GPU": 2}, [], 10, PoolPlan(3, 1.0, 0.0, 1.0)),  # gpus_per_actor=0: CPU actors by choice
    ],
)
def test_pool_fits_the_cluster(resources, overrides, pending, expected):
    cfg = label_config("/tmp/unused", "label.num_actors=0", *overrides)
    assert plan_pool(resources, cfg.label, pending) == expected


@pytest.mark.parametrize("resources", [{"CPU": 8}, {"CPU": 4, "GPU": 0.5}])
def test_gpu_actors_on_a_cluster_without_the_gpus_are_an_error(resources):
    cfg = label_config("/tmp/unused", "label.gpus_per_actor=1")
    with pytest.raises(RuntimeError, match=r"label.gpus_per_actor=1.0 but the Ray cluster has .* GPUs"):
        plan_pool(resources, cfg.label, 10)


def test_pool_needs_cpus_and_label_config_is_checked():
    with pytest.raises(RuntimeError, match="no CPUs"):
        plan_pool({"GPU": 1}, label_config("/tmp/unused").label, 1)
    with pytest.raises(ConfigError, match="label.rows_per_shard must be > 0, got 0"):
        label_config("/tmp/unused", "label.rows_per_shard=0")


def test_a_half_precision_output_from_before_the_fp32_vq_tail_is_not_resumed(label_cfg, tmp_path):
    items = [Item(f"r{i}", f"{i}.png") for i in range(4)]
    bf16 = label_cfg.with_overrides({"label.vq_precision": "bf16"})
    spec = label_spec(bf16, items)
    assert spec["precision"] == {"vae": label_cfg.label.precision, "vq": "bf16", "vq_tail": "fp32"}
    assert "precision" not in label_spec(label_cfg, items)  # fp32 outputs keep the spec they always had
    earlier = {k: v for k, v in spec.items() if k != "precision"} | {
        "precision": {"vae": label_cfg.label.precision, "vq": "bf16"}}  # written before quant_conv stayed fp32
    ensure_spec(str(tmp_path), earlier)
    with pytest.raises(LabelsMismatch, match="vq_tail"):
        ensure_spec(str(tmp_path), spec)
    ensure_spec(str(tmp_path / "new"), spec)
    ensure_spec(str(tmp_path / "new"), label_spec(bf16, items))  # the same run resumes
