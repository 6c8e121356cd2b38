"""The config schema: presets load, overrides apply, bad values fail with the key named."""

import subprocess
import sys

import pytest

from vlsa.config import Config, ConfigError, check_batches, config_from_dict, flatten, list_presets, load_config

PAPER_PRESETS = [
    "llava15_hd_vicuna7b",
    "llava15_hd_vicuna7b_stage1",
    "llava15_hd_vicuna7b_stage2",
    "llava_next_llama3_8b",
    "llava_next_llama3_8b_stage1",
    "llava_next_llama3_8b_stage2",
    "llava_next_llama3_8b_3stage",
    "llava_next_llama3_8b_ex25",
    "llava_next_anyres",
    "llava15_baseline",
    "llava15_hd_baseline",
    "ross",
    "vdep",
]


@pytest.mark.parametrize("name", ["tiny", *PAPER_PRESETS])
def test_every_shipped_preset_loads(name):
    assert name in list_presets()
    cfg = load_config(name)
    assert isinstance(cfg, Config) and cfg.preset == name


@pytest.mark.parametrize("name", ["llava15_hd_vicuna7b", "llava_next_llama3_8b"])
def test_two_stage_presets_follow_table_7(name):
    stage1, stage2 = load_config(name).train.stages
    assert stage1.lr == {"projector": 1e-3, "epigone": 1e-3, "denoiser": 1e-3}
    assert stage1.global_batch == 128 and stage1.zero_stage == 2
    assert stage2.lr == {"projector": 1e-5, "epigone": 1e-5, "denoiser": 1e-5, "vision": 2e-6, "llm": 1e-5}
    assert stage2.global_batch == 64 and stage2.zero_stage == 3
    for stage in (stage1, stage2):
        assert stage.warmup_ratio == 0.03 and stage.weight_decay == 0.0


@pytest.mark.parametrize("name", [p for p in PAPER_PRESETS if not p.endswith("stage1")])
def test_paper_presets_set_the_memory_controls(name):
    cfg = load_config(name)
    model = cfg.model
    assert [model.llm.dtype, model.vision.dtype, model.recon.denoiser.dtype, model.recon.vae.dtype] == ["bf16"] * 4
    assert model.attn_implementation == "sdpa" and model.llm.loss_chunks == 8
    llm_stages = [s for s in cfg.train.stages if "llm" in s.lr]
    assert llm_stages and all(s.activation_checkpointing == ["llm"] for s in llm_stages)
    assert all(s.activation_checkpointing == [] for s in cfg.train.stages if "llm" not in s.lr)


def test_three_stage_variant_follows_the_earlier_appendix():
    stages = load_config("llava_next_llama3_8b_3stage").train.stages
    assert [s.global_batch for s in stages] == [256, 64, 32]
    assert set(stages[0].lr) == {"projector", "epigone"}
    assert stages[1].lr["denoiser"] == 1e-3 and stages[1].lr["vision"] == 2e-6 and "llm" not in stages[1].lr
    assert stages[2].lr["llm"] == 1e-5


def test_baselines_switch_the_right_parts():
    anyres, ross, vdep = (load_config(n).model for n in ("llava_next_anyres", "ross", "vdep"))
    assert anyres.projector.type == "anyres" and not anyres.recon.enabled
    assert ross.recon.enabled and ross.recon.conditioning == "llm_hidden"
    assert vdep.vdep.enabled and vdep.vdep.alpha == 0.001 and not vdep.recon.enabled


def test_ross_is_rosss_own_head():
    """ROSS (paper 004, Sec. 4.2, Tab. 6): its encoder-block denoiser on KL-16 latents, no SD3 MMDiT,
    no Epigone, the vision encoder frozen in both stages."""
    ross = load_config("ross")
    recon = ross.model.recon
    assert recon.head == "ross" and recon.conditioning == "llm_hidden"
    assert not recon.denoiser.defined()  # the SD3 MMDiT is not part of ROSS
    assert recon.image_size == 384  # 24x24 KL-16 latent tokens <-> the 24x24 base-view tokens
    assert recon.ross.beta_schedule == "squaredcos_cap_v2" and recon.ross.train_timesteps == 1000
    stage1, stage2 = ross.train.stages
    assert set(stage1.lr) == {"projector", "denoiser"} and set(stage2.lr) == {"projector", "denoiser", "llm"}
    vlsa1, vlsa2 = load_config("llava_next_llama3_8b").train.stages
    for ours, theirs in ((stage1, vlsa1), (stage2, vlsa2)):  # the schedule of the VLSA preset it is compared with
        assert (ours.global_batch, ours.micro_batch, ours.warmup_ratio) == (theirs.global_batch, theirs.micro_batch,
                                                                            theirs.warmup_ratio)
        assert all(ours.lr[k] == theirs.lr[k] for k in ours.lr)


def test_vlsa_ex25_keeps_vlsa_and_changes_only_the_cue():
    """Tab. 17 ex25: SA-Perceiver, Epigone and SD3-medium init of VLSA, cued by the LLM's outputs."""
    vlsa_cfg, ex25 = load_config("llava_next_llama3_8b"), load_config("llava_next_llama3_8b_ex25")
    assert ex25.model.recon.conditioning == "llm_hidden" and vlsa_cfg.model.recon.conditioning == "projector"
    assert ex25.model.recon.head == "sd3" and ex25.model.recon.denoiser.path
    a, b = flatten(vlsa_cfg.to_dict()), flatten(ex25.to_dict())
    differ = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    assert differ <= {"model.recon.conditioning", "run.name", "preset"}, differ


def test_dotted_overrides_reach_nested_fields_and_list_items():
    cfg = load_config("tiny", ["train.stages.1.global_batch=32", "model.projector.self_attention=false",
                               "model.vision.init.hidden_size=96", "run.mlflow.experiment=x"])
    assert cfg.train.stages[1].global_batch == 32
    assert cfg.model.projector.self_attention is False
    assert cfg.model.vision.init["hidden_size"] == 96
    assert cfg.run.mlflow.experiment == "x"
    assert load_config("tiny", {"train.stages.0.w_rec": 0.25}).train.stages[0].w_rec == 0.25


def test_exponent_floats_without_a_dot_are_numbers():
    # YAML 1.1 reads 2e-5 as a string; a learning rate typed that way must still be a float
    cfg = load_config("tiny", ["train.stages.1.lr.llm=2e-5", "train.stages.0.weight_decay=1e-2"])
    assert cfg.train.stages[1].lr["llm"] == 2e-5 and isinstance(cfg.train.stages[1].lr["llm"], float)
    assert cfg.train.stages[0].weight_decay == 0.01


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.stages.0.lrr=1", "unknown keys ['lrr']"),
        ("train.stages.1.lr.llm=fast", "train.stages.1.lr.llm: expected float, got 'fast'"),
        ("model.projector.type=mlp", "model.projector.type='mlp'"),
        ("train.stages.5.w_rec=1", "'5' is not an index of a list of 2"),
        ("train.stages.0.global_batch=abc", "expected int, got 'abc'"),
        ("train.stages.0.lr={llm: 1.0, mouth: 1.0}", "unknown modules in lr: ['mouth']"),
        ("train.stages.1.data.ssft.p_vq=1.5", "ssft.p_vq must be in [0, 1], got 1.5"),
        ("model.recon.enabled=false", "trains denoiser/epigone but model.recon.enabled=false"),
        ("model.vision.init={}", "need a `path` or an `init` config: ['model.vision']"),
        ("no_equals_sign", "not of the form key=value"),
        ("model.recon.vae.dtype=fp16", "model.recon.vae.dtype='fp16' is not one of ('fp32', 'bf16')"),
        ("model.attn_implementation=flash", "model.attn_implementation='flash' is not one of"),
        ("model.llm.loss_chunks=-1", "model.llm.loss_chunks must be >= 0, got -1"),
        ("train.stages.1.activation_checkpointing=[llm, lm_head]",
         "stage stage2 activation_checkpointing part='lm_head' is not one of ('llm', 'vision', 'denoiser')"),
    ],
)
def test_bad_values_fail_naming_the_key_and_value(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("tiny", [override])
    assert message in str(err.value)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="presets: .*'tiny'"):
        load_config("tinyy")


def test_accumulation_is_derived_from_the_global_batch():
    stage = load_config("llava_next_llama3_8b").train.stages[0]
    assert stage.accumulation(world_size=8) == 1  # 128 = 16 x 8
    assert stage.accumulation(world_size=2) == 4
    with pytest.raises(ConfigError, match="not a multiple"):
        stage.accumulation(world_size=3)


def test_batch_check_names_the_stage_and_the_values_that_would_work():
    cfg = load_config("llava15_hd_vicuna7b", ["run.num_workers=32"])
    with pytest.raises(ConfigError) as err:
        check_batches(cfg)
    message = str(err.value)
    assert "stage stage1: global_batch 128 is not a multiple of micro_batch 16 x workers 32 = 512" in message
    assert "micro_batch may be [1, 2, 4]" in message and "workers may be [1, 2, 4, 8]" in message
    assert "stage stage2: global_batch 64" in message and "micro_batch may be [1, 2]" in message
    check_batches(cfg, world_size=8)  # the preset's own world size works
    check_batches(load_config("tiny", ["run.num_workers=0"]))  # Ray Train's local mode: one process
    check_batches(load_config("llava15_hd_vicuna7b", ["run.num_workers=32", "train.stages.0.micro_batch=4",
                                                      "train.stages.1.micro_batch=2"]))


def test_batch_check_when_the_workers_do_not_divide_the_global_batch():
    stage = load_config("llava_next_llama3_8b").train.stages[0]
    problem = stage.batch_problem(3)
    assert "micro_batch may be nothing" in problem and "multiple of 48" in problem
    assert stage.batch_problem(4) == ""


def test_round_trip_through_a_dict_and_flat_keys():
    cfg = load_config("tiny")
    assert config_from_dict(cfg.to_dict()) == cfg
    flat = flatten(cfg.to_dict())
    assert flat["train.stages.1.lr.llm"] == cfg.train.stages[1].lr["llm"]
    assert flat["model.projector.type"] == "sa_perceiver"


def test_import_vlsa_imports_neither_ray_nor_deepspeed():
    code = "import sys, vlsa; vlsa.load_config('tiny'); print('ray' in sys.modules, 'deepspeed' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_with_overrides_returns_a_new_validated_config():
    cfg = load_config("tiny")
    changed = cfg.with_overrides({"run.name": "other", "train.stages.1.lr": {"llm": 1e-4}})
    assert changed.run.name == "other" and changed.train.stages[1].lr == {"llm": 1e-4}
    assert cfg.run.name != "other" and changed.train.stages[0] == cfg.train.stages[0]
    assert cfg.with_overrides(["run.num_workers=3"]) == load_config("tiny", ["run.num_workers=3"])
    with pytest.raises(ConfigError, match="nope"):
        cfg.with_overrides({"run.nope": 1})


def test_data_loader_processes_and_ray_workers_have_distinct_names():
    cfg = load_config("tiny", ["train.loader_workers=3", "run.num_workers=2"])
    assert (cfg.train.loader_workers, cfg.run.num_workers) == (3, 2)
    with pytest.raises(ConfigError, match="unknown keys \\['num_workers'\\]"):
        load_config("tiny", ["train.num_workers=3"])


@pytest.mark.parametrize("preset", ["llava15_hd_vicuna7b", "llava_next_llama3_8b"])
def test_paper_presets_reconstruct_the_high_resolution_canvas(preset):
    """Sec. 3.1: the 672 px canvas of up to 4 tiles -> an 84x84 latent that SD3-medium's MMDiT accepts."""
    from types import SimpleNamespace

    from vlsa.model.reconstruction import _check_geometry

    cfg = load_config(preset)
    assert cfg.model.recon.image_size == 672 == 2 * 336 and cfg.model.encoding.max_tiles == 4
    sd3 = load_config("bench_gpu").model.recon.denoiser.init  # SD3-medium's MMDiT shape
    _check_geometry(SimpleNamespace(**sd3), channels=16, latent_size=672 // 8, image_size=672)


@pytest.mark.parametrize("baseline,vlsa_preset", [("llava_next_anyres", "llava_next_llama3_8b"),
                                                  ("llava15_baseline", "llava15_hd_vicuna7b"),
                                                  ("llava15_hd_baseline", "llava15_hd_vicuna7b"),
                                                  ("vdep", "llava_next_llama3_8b")])
def test_baselines_train_on_the_schedule_of_their_vlsa_preset(baseline, vlsa_preset):
    """Tab. 11: a baseline differs from the VLSA preset it is compared with in the method, not the schedule."""
    ours, theirs = load_config(baseline), load_config(vlsa_preset)
    assert not ours.model.recon.enabled and ours.model.llm == theirs.model.llm and ours.model.vision == theirs.model.vision
    for a, b in zip(ours.train.stages, theirs.train.stages, strict=True):
        assert (a.global_batch, a.micro_batch, a.zero_stage, a.data.train) == (b.global_batch, b.micro_batch,
                                                                               b.zero_stage, b.data.train)
        assert a.lr == {k: v for k, v in b.lr.items() if k in ("projector", "vision", "llm")}
        assert a.data.ssft.p_vq == a.data.ssft.p_px == 0


def test_llava15_baselines_take_llavas_views():
    one, hd = load_config("llava15_baseline").model, load_config("llava15_hd_baseline").model
    assert (one.projector.type, one.encoding.lowres_view, one.encoding.max_tiles) == ("mlp2x_gelu", "square_pad", 1)
    assert (hd.projector.type, hd.encoding.lowres_view, hd.encoding.max_tiles) == ("hd_grid", "canvas", 4)
