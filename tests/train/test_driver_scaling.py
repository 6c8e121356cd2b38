"""The trainer the driver builds asks Ray for what the config says: workers, GPUs, CPUs and the GPU kind."""

from __future__ import annotations

from vlsa.config import load_config
from vlsa.train.driver import build_trainer
from vlsa.train.loop import JobInfo


def _scaling(tmp_path, *overrides):
    cfg = load_config("tiny", [f"run.storage_path={tmp_path}", *overrides])
    return build_trainer(cfg, JobInfo(run=f"{tmp_path}/r", tracking_uri="", parent_run_id="")).scaling_config


def test_the_trainer_asks_for_the_configured_gpu_kind(tmp_path):
    scaling = _scaling(tmp_path, "run.num_workers=4", "run.use_gpu=true", "run.cpus_per_worker=8",
                       "run.accelerator_type=A100-80G")
    assert (scaling.num_workers, scaling.use_gpu, scaling.accelerator_type) == (4, True, "A100-80G")
    assert scaling.resources_per_worker == {"CPU": 8, "GPU": 1}
    assert _scaling(tmp_path).accelerator_type is None  # any GPU kind (or none)
