"""A sweep's data is prepared once on its driver, as a training run's: validated once for every trial,
and a point that needs labels without any stops the sweep before a trial starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tune_spaces import build_space
from vlsa.config import DemoConfig, load_config
from vlsa.data.demo import generate_demo
from vlsa.io.validation import read_section
from vlsa.train.prepare import LabelsMissing
from vlsa.tune.data import data_root, point_configs, prepare_sweep, trial_validations
from vlsa.tune.sweep import run_sweep, sweep_path

NO_SSFT = ["train.stages.1.data.ssft.p_vq=0", "train.stages.1.data.ssft.p_px=0"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return generate_demo(DemoConfig(train_images=4, eval_images=2, min_side=24, max_side=48),
                         tmp_path_factory.mktemp("sweep-demo"))


def _cfg(demo, root: Path, cache_dir: str, *extra: str):
    return load_config("tiny", [
        f"train.stages.0.data.train={demo.pretrain}", f"train.stages.0.data.image_root={demo.image_root}",
        f"train.stages.1.data.train={demo.instruct}", f"train.stages.1.data.image_root={demo.image_root}",
        f"run.storage_path={root / 'runs'}", f"run.mlflow.tracking_uri={root / 'mlruns'}",
        f"model.cache_dir={cache_dir}", *NO_SSFT, *extra])


def test_a_point_that_needs_labels_and_has_none_stops_the_sweep_before_any_trial(demo, tmp_path, cache_dir):
    cfg = _cfg(demo, tmp_path, cache_dir)
    space = build_space("ssft_mix", cfg, ["vq"])  # the base inserts no SSFT turn, this point does
    with pytest.raises(LabelsMissing, match=r"search-space point .*p_vq.*stage 'stage2' inserts SSFT turns .*"
                                            r"has no labels.*\n    python ray_jobs/label.py --data .*instruct"):
        run_sweep(cfg, space, "labels-missing")
    path = Path(sweep_path(cfg, "labels-missing"))
    assert not path.exists()  # no trial, no Tune state, no validation pass


@pytest.mark.integration
def test_the_data_of_every_trial_is_validated_once_on_the_sweeps_driver(demo, tmp_path, cache_dir, local_ray):
    cfg = _cfg(demo, tmp_path, cache_dir)
    space = build_space("loss_ratio", cfg)
    path = sweep_path(cfg, "once")
    lines: list[str] = []
    prepare_sweep(cfg, space, path, lines.append)
    passes = [line for line in lines if line.startswith("validated ")]
    assert len(passes) == 2, lines  # one Ray Data pass per data file, however many points

    configs = point_configs(cfg, space)
    assert len(configs) > 3
    manifests = {trial_validations(point_cfg, data_root(path)) for _, point_cfg in configs}
    assert len(manifests) == 1  # every trial trusts the same two manifests
    (pretrain, instruct), = manifests
    assert read_section(pretrain)["data"]["uri"] == demo.pretrain
    assert read_section(instruct)["data"]["uri"] == demo.instruct

    lines.clear()
    prepare_sweep(cfg, space, path, lines.append)  # a restored sweep: nothing validated again
    assert not [line for line in lines if line.startswith("validated ")]


def test_a_trial_without_the_sweeps_validation_or_its_labels_does_not_start(demo, tmp_path, cache_dir):
    cfg = _cfg(demo, tmp_path, cache_dir)
    with pytest.raises(RuntimeError, match="not validated before the sweep started"):
        trial_validations(cfg, data_root(str(tmp_path / "sweep")))
    with pytest.raises(LabelsMissing, match="python ray_jobs/label.py"):
        trial_validations(cfg.with_overrides({"train.stages.1.data.ssft.p_vq": 0.5}), data_root(str(tmp_path / "sweep")))
