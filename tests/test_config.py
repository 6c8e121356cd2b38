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
    "llava_next_anyres",
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


def test_ross_denoiser_starts_random_at_sd3_medium_shape():
    """ROSS's denoiser is randomly initialised (VLSA App. B.10): built from `init`, never the base's SD3 path."""
    import inspect

    from diffusers import SD3Transformer2DModel

    vlsa, ross = (load_config(n).model.recon for n in ("llava_next_llama3_8b", "ross"))
    assert vlsa.denoiser.path and not vlsa.denoiser.init  # VLSA starts from pretrained SD3-medium
    assert ross.denoiser.path == "" and ross.denoiser.subfolder == ""  # load_component takes `init`
    init = ross.denoiser.init
    assert set(init) <= set(inspect.signature(SD3Transformer2DModel.__init__).parameters)
    inner = init["num_attention_heads"] * init["attention_head_dim"]
    assert (init["num_layers"], inner, init["joint_attention_dim"], init["pooled_projection_dim"]) == (24, 1536, 4096, 2048)
    assert (init["caption_projection_dim"], init["patch_size"], init["in_channels"]) == (1536, 2, 16)
    assert init == load_config("bench_gpu").model.recon.denoiser.init  # the SD3-medium shape stated there
    assert ross.vae == vlsa.vae and ross.vae.path  # the frozen VAE stays pretrained


def test_dotted_overrides_reach_nested_fields_and_list_items():
    cfg = load_config("tiny", ["train.stages.1.global_batch=32", "model.projector.self_attention=false",
                               "model.vision.init.hidden_size=96", "run.mlflow.experiment=x"])
    assert cfg.train.stages[1].global_batch == 32
    assert cfg.model.projector.self_attention is False
    assert cfg.model.vision.init["hidden_size"] == 96
    assert cfg.run.mlflow.experiment == "x"
    assert load_config("tiny", {"train.stages.0.w_rec": 0.25}).train.stages[0].w_rec == 0.25


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.stages.0.lrr=1", "unknown keys ['lrr']"),
        ("model.projector.type=mlp", "model.projector.type='mlp'"),
        ("train.stages.5.w_rec=1", "'5' is not an index of a list of 2"),
        ("train.stages.0.global_batch=abc", "expected int, got 'abc'"),
        ("train.stages.0.lr={llm: 1.0, mouth: 1.0}", "unknown modules in lr: ['mouth']"),
        ("train.stages.1.data.ssft.p_vq=1.5", "ssft.p_vq must be in [0, 1], got 1.5"),
        ("model.recon.enabled=false", "trains denoiser/epigone but model.recon.enabled=false"),
        ("model.vision.init={}", "need a `path` or an `init` config: ['model.vision']"),
        ("no_equals_sign", "not of the form key=value"),
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
