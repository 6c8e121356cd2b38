"""``ray job submit -- python ray_jobs/label.py`` against a real Ray head, reading and writing S3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from label_helpers import write_corpus

from tests.services import submit_job
from vlsa.io import storage
from vlsa.labels.store import load_rejects, read_manifest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_ray_job_submit_labels_an_s3_dataset(ray_head, s3_server, frozen_models, cache_dir, tmp_path):
    write_corpus(tmp_path / "corpus")
    bucket = s3_server.make_bucket("vlsa-label-job")
    storage.upload_dir(tmp_path / "corpus", f"{bucket}/corpus")
    out = f"{bucket}/out"
    entrypoint = [
        "python", str(REPO / "ray_jobs" / "label.py"), "--data", f"{bucket}/corpus/data.json",
        "--image-root", f"{bucket}/corpus/images", "--output", out,
        f"model.cache_dir={cache_dir}", "label.rows_per_shard=4", "label.num_actors=1",
    ]  # fmt: skip
    env = {**s3_server.client_env(), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    status, logs = submit_job(ray_head, entrypoint, env=env, timeout=500)
    assert status == "SUCCEEDED", logs[-4000:]
    assert sum(line.split(" ", 2)[-1].startswith("shard 0000") for line in logs.splitlines()) == 4
    summary = json.loads(next(line for line in reversed(logs.splitlines()) if line.startswith("{")))
    assert (summary["labeled"], summary["rejected"], summary["shards_run"]) == (7, 6, 4)
    manifest = read_manifest(out)
    assert (manifest["rows"], manifest["rejects"], len(manifest["shards"])) == (7, 6, 4)
    assert load_rejects(out)["missing"] == "image_missing"
