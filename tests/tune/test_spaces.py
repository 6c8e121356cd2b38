"""Every search space and ablation grid is valid against the config schema of the presets it runs on."""

from __future__ import annotations

import pytest

from tune_spaces import GRIDS, SPACES, build_space
from vlsa.config import ConfigError, load_config
from vlsa.tune.points import VARIANT_KEY, sample_points, select_points
from vlsa.tune.sweep import check_space

PRESETS = ["tiny", "llava_next_llama3_8b"]


def at(cfg, path: str):
    """The value at a dotted path of a loaded config."""
    node = cfg.to_dict()
    for key in path.split("."):
        node = node[int(key)] if isinstance(node, list) else node[key]
    return node


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", sorted(SPACES) + sorted(GRIDS))
def test_every_point_of_every_space_loads_as_a_config(name, preset):
    base = load_config(preset)
    points = sample_points(build_space(name, base), count=3)
    assert points
    for point in points:
        cfg = load_config(preset, point)
        for path, value in point.items():
            assert at(cfg, path) == value, (name, preset, path)


@pytest.mark.parametrize("preset", PRESETS)
def test_continuous_spaces_share_a_draw_across_stages(preset):
    base = load_config(preset)
    last = len(base.train.stages) - 1
    for point in sample_points(build_space("loss_ratio_continuous", base), count=4):
        assert 0.25 <= point["train.stages.0.w_rec"] <= 1.0
        assert point[f"train.stages.{last}.w_rec"] == point["train.stages.0.w_rec"]
        assert point[f"train.stages.{last}.w_lm"] == point["train.stages.0.w_lm"]
    for point in sample_points(build_space("lr", base), count=4):
        for i, stage in enumerate(base.train.stages):
            for module, rate in stage.lr.items():
                assert rate / 10 <= point[f"train.stages.{i}.lr.{module}"] <= rate * 10


def test_grids_name_the_paper_variants():
    cfg = load_config("tiny")
    tab4 = GRIDS["tab4"](cfg)
    assert len(tab4) == 6
    baseline, full = tab4["(1) baseline (AnyRes)"], tab4["(6) +abc full VLSA"]
    assert (baseline["model.projector.type"], baseline["model.recon.enabled"]) == ("anyres", False)
    assert "denoiser" not in baseline["train.stages.0.lr"] and "denoiser" in full["train.stages.0.lr"]
    assert full["train.stages.1.data.ssft.p_vq"] > 0 and baseline["train.stages.1.data.ssft.p_vq"] == 0
    tab5 = sample_points(build_space("tab5", cfg))
    assert {(p["train.stages.1.data.ssft.p_px"] > 0, p["train.stages.1.data.ssft.p_vq"] > 0) for p in tab5} == {
        (False, False), (False, True), (True, False), (True, True)}
    points = sample_points(build_space("loss_ratio", cfg))
    ratios = {(p["train.stages.0.w_rec"], p["train.stages.0.w_lm"]) for p in points}
    assert ratios == {(0.25, 0.75), (0.5, 0.5), (0.75, 0.25), (1.0, 1.0)}


def test_selected_points_keep_their_order_and_unknown_labels_fail():
    cfg = load_config("tiny")
    space = build_space("perceiver", cfg, ["ex2_full_projections", "default"])
    assert [p[VARIANT_KEY] for p in sample_points(space)] == ["ex2_full_projections", "default"]
    with pytest.raises(ValueError, match="no point.*'ex9'"):
        select_points(build_space("perceiver", cfg), ["ex9"])
    with pytest.raises(ValueError, match="only a named grid"):
        build_space("lr", cfg, ["default"])


def test_a_misspelled_path_fails_validation_before_any_trial():
    cfg = load_config("tiny")
    space = build_space("perceiver", cfg) | {"model.projector.self_atention": True}
    with pytest.raises(ConfigError, match="self_atention"):
        load_config("tiny", sample_points(space)[0])
    with pytest.raises(ConfigError, match=r"search-space point .*unknown keys \['self_atention'\]"):
        check_space(cfg, space)
    with pytest.raises(ConfigError, match="train.stages.7"):
        check_space(cfg, {"train.stages.7.w_rec": 0.5})
    check_space(cfg, build_space("tab4", cfg))  # the grids themselves pass


def test_a_sweep_over_loss_weights_is_not_ranked_on_the_weighted_loss():
    cfg = load_config("tiny")
    for name in ("loss_ratio", "loss_ratio_continuous"):
        with pytest.raises(ConfigError, match=r"tune.metric='loss' .*train.stages.0.w_lm, train.stages.0.w_rec"):
            check_space(cfg, build_space(name, cfg))
    check_space(load_config("tiny", ["tune.metric=loss_lm"]), build_space("loss_ratio", cfg))
    check_space(cfg, build_space("lr", cfg))  # learning rates leave the loss's definition alone


def test_a_point_whose_batch_cannot_be_split_fails_before_any_trial():
    cfg = load_config("tiny")
    stage = cfg.train.stages[0]
    with pytest.raises(ConfigError, match=rf"(?s)search-space point .*stage {stage.name}: global_batch"):
        check_space(cfg, {"run.num_workers": stage.global_batch + 1})
