"""Data validated once on the driver side, trusted by the workers; bad data met during training counted
in MLflow and bounded by ``data.reject_threshold``."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
from train_helpers import history, small_config, stage_run

import vlsa
from vlsa.data.dataset import build_dataset
from vlsa.io.records import DuplicateRecordId
from vlsa.io.validation import DataChanged, read_section
from vlsa.model.builder import build_model_tokenizer
from vlsa.train.prepare import LabelsMissing, prepare_stage, validation_uri

NO_SSFT = ("train.stages.1.data.ssft.p_vq=0", "train.stages.1.data.ssft.p_px=0")


@pytest.fixture()
def private_demo(train_demo, tmp_path):
    """The demo's files copied, so a test may break its images; plus one corrupt image record."""
    root = tmp_path / "images"
    shutil.copytree(train_demo.image_root, root)
    records = json.loads(Path(train_demo.pretrain).read_text())
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    records.append({**copy.deepcopy(records[0]), "id": "broken", "image": "broken.png"})
    data = tmp_path / "pretrain.json"
    data.write_text(json.dumps(records))
    return {"train": str(data), "image_root": str(root), "records": records}


def _cfg(private_demo, cache_dir, tmp_path, *extra):
    overrides = [f"model.cache_dir={cache_dir}", f"train.stages.0.data.train={private_demo['train']}",
                 f"train.stages.0.data.image_root={private_demo['image_root']}", "train.stages.0.data.reject_threshold=0.5",
                 *extra]
    return vlsa.load_config("tiny", overrides)


def test_a_stage_that_needs_labels_and_has_none_fails_naming_the_command(train_demo, cache_dir, tmp_path):
    cfg = vlsa.load_config("tiny", [f"model.cache_dir={cache_dir}", f"train.stages.1.data.train={train_demo.instruct}",
                                    f"train.stages.1.data.image_root={train_demo.image_root}"])
    with pytest.raises(LabelsMissing, match=r"stage 'stage2' inserts SSFT turns .* has no labels.*\n"
                                            r"    python ray_jobs/label.py --data .*instruct.* --image-root .* "
                                            r"--output OUT --config C\n.*train.stages.1.data.labels=OUT"):
        prepare_stage(cfg, 1, str(tmp_path / "run"))


def test_duplicate_ids_stop_the_driver(private_demo, cache_dir, tmp_path):
    records = private_demo["records"] + [private_demo["records"][1]]
    Path(private_demo["train"]).write_text(json.dumps(records))
    with pytest.raises(DuplicateRecordId, match="allow_duplicate_ids"):
        prepare_stage(_cfg(private_demo, cache_dir, tmp_path), 0, str(tmp_path / "run"))


@pytest.mark.integration
def test_validation_runs_once_and_the_workers_trust_it(local_ray, private_demo, cache_dir, tmp_path):
    cfg = _cfg(private_demo, cache_dir, tmp_path)
    run, lines = str(tmp_path / "run"), []
    uri = prepare_stage(cfg, 0, run, lines.append)
    assert uri == validation_uri(run, cfg.train.stages[0])
    section = read_section(uri)
    raw = Path(private_demo["train"]).read_bytes()
    assert section["data"]["bytes"] == len(raw) and len(section["data"]["sha256"]) == 64
    assert section["image_root"] == private_demo["image_root"]
    assert (section["records"], section["accepted"]) == (5, 4)
    assert section["rejects_by_reason"] == {"image_truncated": 1} and section["rejected"] == {"broken": "image_truncated"}
    assert any(line.startswith("validating") for line in lines)

    lines.clear()
    assert prepare_stage(cfg, 0, run, lines.append) == uri and lines == []  # a restart: no second pass

    for image in Path(private_demo["image_root"]).rglob("*.png"):  # the workers read no image to start
        image.unlink()
    dataset = build_dataset(cfg, cfg.train.stages[0].data, build_model_tokenizer(cfg), validation=uri)
    assert [r.id for r in dataset.records] == [r["id"] for r in private_demo["records"][:4]]
    assert dataset.stats.to_dict() == {"total": 5, "accepted": 4, "rejected": {"image_truncated": 1}}

    Path(private_demo["train"]).write_bytes(raw.replace(b"broken", b"broke2"))  # replaced after validation
    with pytest.raises(DataChanged, match=r"data file .*pretrain.json has sha256 .* the validated file .* had"):
        build_dataset(cfg, cfg.train.stages[0].data, build_model_tokenizer(cfg), validation=uri)


@pytest.mark.integration
def test_labels_of_another_data_file_are_refused_on_the_driver(train_demo, train_labels, cache_dir, tmp_path):
    edited = tmp_path / "instruct.json"
    records = json.loads(Path(train_demo.instruct).read_text())
    edited.write_text(json.dumps(records[::-1]))
    cfg = vlsa.load_config("tiny", [f"model.cache_dir={cache_dir}", f"train.stages.1.data.train={edited}",
                                    f"train.stages.1.data.image_root={train_demo.image_root}",
                                    f"train.stages.1.data.labels={train_labels}"])
    with pytest.raises(DataChanged, match=r"manifest.json does not describe this data: data file .*instruct.json"):
        prepare_stage(cfg, 1, str(tmp_path / "run"))


def _validated_then_missing(private_demo, cache_dir, tmp_path, tracking_uri, threshold: float):
    """A run whose data was validated, after which one image of the pretrain file disappeared."""
    demo = type("Demo", (), {"image_root": private_demo["image_root"], "pretrain": private_demo["train"],
                             "instruct": private_demo["train"]})
    cfg = small_config(demo, cache_dir, tmp_path / "runs", "rejects", tracking_uri, workers=1, steps=1, labels="",
                       extra=(*NO_SSFT, f"train.stages.0.data.reject_threshold={threshold}",
                              f"train.stages.1.data.reject_threshold={threshold}", "train.checkpoint_every=0",
                              "run.max_failures=0"))
    from vlsa.train.checkpoint import run_uri
    from vlsa.train.driver import resolve
    from vlsa.train.prepare import prepare_stages

    cfg = resolve(cfg)
    prepare_stages(cfg, run_uri(cfg.run.storage_path, cfg.run.name))
    missing = private_demo["records"][1]["image"]
    (Path(private_demo["image_root"]) / missing).unlink()
    return cfg


@pytest.mark.integration
def test_images_missing_during_training_are_mlflow_metrics_of_the_stage(local_ray, private_demo, cache_dir,
                                                                        tmp_path, mlflow_server):
    from vlsa.train.driver import train

    cfg = _validated_then_missing(private_demo, cache_dir, tmp_path, mlflow_server, threshold=0.5)
    outcome = train(cfg)
    stage = stage_run(mlflow_server, outcome.mlflow_run_id, "stage1")
    assert history(mlflow_server, stage.info.run_id, "data_rejected/image_missing") == {1: 1.0}
    assert history(mlflow_server, stage.info.run_id, "data_rejected_fraction") == {1: 2 / 5}  # + the corrupt one


@pytest.mark.integration
def test_past_the_threshold_the_run_stops_with_the_counts(local_ray, private_demo, cache_dir, tmp_path,
                                                          mlflow_server):
    import ray.train

    from vlsa.train.driver import train

    cfg = _validated_then_missing(private_demo, cache_dir, tmp_path, mlflow_server, threshold=0.3)
    with pytest.raises((ray.train.TrainingFailedError, RuntimeError)) as failure:
        train(cfg)
    message = str(failure.value)
    assert "stage stage1 data" in message and "1 records failed during training {'image_missing': 1}" in message
    assert "(40.0% > data.reject_threshold 30.0%)" in message
