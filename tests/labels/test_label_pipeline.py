"""The Ray Data labeling job on a local Ray instance, over a generated corpus of good and bad images.

The first run reads records and images from a moto S3 endpoint and writes its shards there; re-run
and resume tests work on a local copy of that output, so both kinds of paths are exercised.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
from label_helpers import (
    PINNED_REASONS,
    assert_codes_match,
    bad_images,
    decoder_verdict,
    label_config,
    reference_row,
    write_corpus,
)

from vlsa.io import storage
from vlsa.io.image import decode_image
from vlsa.labels.pipeline import run_labeling
from vlsa.labels.schema import LABEL_SCHEMA, LabelsMismatch, latent_array, vq_array
from vlsa.labels.store import load_labels, load_rejects, read_manifest
from tests.tracking_db import sqlite_tracking_uri

pytestmark = pytest.mark.integration

SHARDS = [f"shard-0000{k}.parquet" for k in range(4)]  # 13 images (12 files + 1 missing), 4 per shard
OUTPUT_FILES = sorted(["manifest.json", "spec.json", *[f"{d}/{s}" for d in ("labels", "rejects") for s in SHARDS]])


@pytest.fixture(scope="module")
def ray_local(s3_server):
    """A local Ray instance; started after the S3 endpoint so its workers inherit the endpoint settings."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def s3_run(ray_local, s3_server, corpus, label_cfg, frozen_models):
    """One labeling run from and to S3: (data, image root, output, summary, log lines)."""
    bucket = s3_server.make_bucket("vlsa-labels")
    storage.upload_dir(corpus[0].parent, f"{bucket}/corpus")  # data.json and images/
    data, root, out = f"{bucket}/corpus/data.json", f"{bucket}/corpus/images", f"{bucket}/out"
    lines: list[str] = []
    summary = run_labeling(label_cfg, data, root, out, log=lines.append)
    return data, root, out, summary, lines


@pytest.fixture
def local_output(s3_run, tmp_path):
    """A local copy of the S3 run's output."""
    return storage.download_dir(s3_run[2], tmp_path / "out")


def _expected(corpus) -> tuple[set[str], dict[str, str]]:
    """Good ids, and id -> reason of the others, as the shared decoder judges each file."""
    decode = label_config("/tmp/unused").label.decode
    verdicts = {rid: decoder_verdict(data, decode) for rid, (_, data) in corpus[2].items()}
    names = {rid: name for rid, (name, _) in corpus[2].items()}
    bad = {rid: reason for rid, reason in verdicts.items() if reason is not None}
    assert {names[rid] for rid in bad} == {*bad_images(), "there.png"}  # the corpus is what it claims
    for rid, reason in bad.items():
        assert reason == PINNED_REASONS.get(names[rid], reason)
    return set(verdicts) - set(bad), bad


def _files(out) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.rglob("*")) if p.is_file()}


def _all_rows(out) -> list[dict]:
    return [row for name in SHARDS for row in pq.read_table(out / "labels" / name).to_pylist()]


def test_good_images_labeled_bad_ones_rejected_with_their_reason(s3_run, corpus, label_cfg):
    out = s3_run[2]
    good, bad = _expected(corpus)
    assert len(good) == 7 and len(bad) == 6
    assert sorted(uri.removeprefix(out + "/") for uri in storage.list_files(out)) == OUTPUT_FILES
    labels = load_labels(out, label_cfg)
    assert set(labels) == good
    assert load_rejects(out) == bad
    manifest = read_manifest(out)
    assert (manifest["rows"], manifest["rejects"]) == (7, 6)
    assert manifest["rejects_by_reason"] == dict(sorted(Counter(bad.values()).items()))
    assert [s["rows"] + s["rejects"] for s in manifest["shards"]] == [4, 4, 4, 1]  # bad images cost one row
    assert manifest["geometry"] == {"vq_side": 4, "latent_shape": [16, 8, 8]}
    rotated = next(rid for rid, (name, _) in corpus[2].items() if name == "exif_rotated.jpg")
    assert (labels[rotated]["width"], labels[rotated]["height"]) == (20, 40)  # EXIF applied before labeling


def test_manifest_fingerprints_what_was_validated(s3_run, corpus):
    data, root, out = s3_run[:3]
    _, bad = _expected(corpus)
    raw = storage.read_bytes(data)
    section = read_manifest(out)["validation"]
    assert section["data"] == {"uri": data, "sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}
    records = len(json.loads(raw))  # the 13 images' records and a text-only one
    assert section["image_root"] == root and (section["records"], section["accepted"]) == (records, records - 6)
    image_reasons = {rid: r if r.startswith("image_") else f"image_{r}" for rid, r in bad.items()}
    assert section["rejected"] == image_reasons
    assert section["rejects_by_reason"] == dict(sorted(Counter(image_reasons.values()).items()))


def test_labels_equal_the_in_process_computation(s3_run, corpus, label_cfg, frozen_models, label_computer):
    vq, vae = frozen_models
    labels = load_labels(s3_run[2], label_cfg)
    for rid in sorted(labels):
        row = labels[rid]
        name, data = corpus[2][rid]
        image = decode_image(data, label_cfg.label.decode)
        ref = reference_row(label_cfg, vq, vae, image)  # VQModel's quantizer and the VAE, called directly
        assert row["image"].endswith(name)
        assert (row["width"], row["height"]) == (ref["width"], ref["height"])
        assert_codes_match(vq_array(row), ref, vq.quantize.embedding.weight)
        np.testing.assert_allclose(latent_array(row), ref["latent"], atol=1e-4, rtol=1e-4)
        (local,) = label_computer.label([image])
        assert local["vq_indices"] == row["vq_indices"] and "pixels" not in row
        np.testing.assert_allclose(latent_array(local), latent_array(row), atol=1e-4, rtol=1e-4)


def test_progress_lines_and_summary(s3_run, corpus):
    summary, lines = s3_run[3], s3_run[4]
    shard_lines = [line for line in lines if line.startswith("shard ")]
    assert len(shard_lines) == 4
    assert {line.split()[1] for line in shard_lines} == {"00000", "00001", "00002", "00003"}
    assert all("images/s in shard" in line for line in shard_lines)
    assert any(line.startswith("labeled 7 images, rejected 6") for line in lines)
    assert (summary["labeled"], summary["rejected"], summary["shards_run"], summary["shards_skipped"]) == (7, 6, 4, 0)
    assert summary["images_per_s"] > 0 and 0 < summary["busy_fraction"] <= 1 and summary["write_seconds"] > 0
    assert summary["actors"] == 1 and summary["device"] == "cpu"
    assert summary["rejects_by_reason"] == dict(sorted(Counter(_expected(corpus)[1].values()).items()))
    assert summary["invalid_records"] == {}


def test_rerun_skips_every_complete_shard(s3_run, label_cfg, local_output):
    data, root, out = s3_run[:3]
    again = run_labeling(label_cfg, data, root, out, log=lambda _: None)  # on S3
    assert (again["shards_run"], again["shards_skipped"], again["images"], again["output_rows"]) == (0, 4, 0, 7)
    before = _files(local_output)
    summary = run_labeling(label_cfg, data, root, str(local_output), log=lambda _: None)  # on a local copy
    assert (summary["shards_run"], summary["shards_skipped"], summary["images"]) == (0, 4, 0)
    after = _files(local_output)
    assert sorted(after) == OUTPUT_FILES
    assert {k: v for k, v in after.items() if k != "manifest.json"} == {
        k: v for k, v in before.items() if k != "manifest.json"
    }  # no shard rewritten
    assert read_manifest(str(local_output))["rows"] == 7 and len(_all_rows(local_output)) == 7


def test_resume_after_a_kill_finishes_only_missing_shards(s3_run, cache_dir, local_output, tmp_path):
    out = local_output
    original = {row["id"]: row for row in _all_rows(out)}
    # A kill between a shard's two writes leaves its rejects without labels; earlier ones leave neither.
    (out / "labels" / SHARDS[1]).unlink()
    (out / "labels" / SHARDS[3]).unlink()
    (out / "rejects" / SHARDS[3]).unlink()
    (out / "manifest.json").unlink()
    tracking = sqlite_tracking_uri(tmp_path)
    cfg = label_config(cache_dir, f"run.mlflow.tracking_uri={tracking}")
    summary = run_labeling(cfg, s3_run[0], s3_run[1], str(out), log=lambda _: None)
    assert (summary["shards_run"], summary["shards_skipped"]) == (2, 2)
    assert summary["images"] == 5  # shard 1 (4 images) and shard 3 (1 image)
    assert sorted(_files(out)) == OUTPUT_FILES
    rows = _all_rows(out)
    assert len(rows) == 7 and len({r["id"] for r in rows}) == 7
    for row in rows:
        assert row["vq_indices"] == original[row["id"]]["vq_indices"]
        assert row["latent"] == original[row["id"]]["latent"]
    manifest = read_manifest(str(out))
    assert (manifest["rows"], manifest["rejects"]) == (7, 6)
    _check_mlflow(tracking, cfg.run.name, summary)


def _check_mlflow(tracking: str, name: str, summary: dict) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("vlsa")
    (run,) = client.search_runs([experiment.experiment_id], filter_string=f"tags.mlflow.runName = '{name}-label'")
    assert run.data.metrics["labeled"] == summary["labeled"]
    assert run.data.metrics["images_per_s"] == pytest.approx(summary["images_per_s"])
    assert run.data.metrics["rejects.image_missing"] == 1
    assert run.data.params["label.rows_per_shard"] == "4"


def test_other_config_is_refused_on_the_same_output(s3_run, cache_dir, local_output):
    other = label_config(cache_dir, "model.vq.init.num_vq_embeddings=32")
    with pytest.raises(LabelsMismatch, match="holds labels of another run.*num_vq_embeddings"):
        run_labeling(other, s3_run[0], s3_run[1], str(local_output), log=lambda _: None)
    with pytest.raises(LabelsMismatch, match="were made for another config: vq: labels have"):
        load_labels(s3_run[2], other)
    assert json.loads((local_output / "spec.json").read_text())["items"] == 13
    assert pq.read_schema(local_output / "labels" / SHARDS[0]).equals(LABEL_SCHEMA, check_metadata=False)
