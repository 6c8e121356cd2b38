"""The export command reads a checkpoint from S3 and writes the folder to S3 (moto on 127.0.0.1), and an S3 export
loads back for inference with the same answers; ``ray job submit -- python ray_jobs/export.py`` does the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from export_helpers import PROMPTS, overrides

from tests.services import submit_job

from vlsa.export.__main__ import main as export_main
from vlsa.io import storage
from vlsa.model.export import load_inference_model

REPO = Path(__file__).resolve().parents[2]


def test_export_from_and_to_s3(trained, s3_server, images, tmp_path):
    run = trained("vlsa")
    bucket = s3_server.make_bucket("exports")
    checkpoint = f"{bucket}/runs/tiny/{run.checkpoint.name}"
    storage.upload_dir(run.checkpoint, checkpoint)
    out = f"{bucket}/exports/tiny-vlsa"
    summary = export_main(["--checkpoint", checkpoint, "--out", out, *overrides("vlsa", run.cfg.model.cache_dir)])
    assert summary["out"] == out and summary["step"] == 12
    for name in ("config.json", "model.safetensors", "modeling_vlsa.py", "processor_config.json", "README.md"):
        assert storage.exists(storage.join(out, name)), name
    model = load_inference_model(out, cache_dir=str(tmp_path / "cache"))
    image, prompt = images[0], PROMPTS[0]
    assert model.answer(image, prompt, max_new_tokens=6) == run.model.answer(image, prompt, max_new_tokens=6)


@pytest.mark.slow
def test_ray_job_submit_exports_an_s3_checkpoint(trained, ray_head, s3_server):
    run = trained("llava")
    bucket = s3_server.make_bucket("export-job")
    checkpoint = f"{bucket}/runs/tiny/{run.checkpoint.name}"
    storage.upload_dir(run.checkpoint, checkpoint)
    out = f"{bucket}/exports/tiny-llava"
    entrypoint = ["python", str(REPO / "ray_jobs" / "export.py"), "--checkpoint", checkpoint, "--out", out,
                  *overrides("llava", run.cfg.model.cache_dir)]
    env = {**s3_server.client_env(), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    status, logs = submit_job(ray_head, entrypoint, env=env, timeout=500)
    assert status == "SUCCEEDED", logs[-4000:]
    summary = json.loads(next(line for line in reversed(logs.splitlines()) if line.startswith("{")))
    assert summary["format"] == "llava" and summary["out"] == out
    assert storage.exists(storage.join(out, "model.safetensors")) and storage.exists(storage.join(out, "README.md"))
