"""The benchmark presets: the GPU one has the real widths (built on the meta device: no memory, no
download), and the CPU one keeps the 8B model's mix of work, as the FLOP counter sees it."""

from __future__ import annotations

import pytest
import torch

from vlsa.bench import flops, variants
from vlsa.bench.step import step_counts
from vlsa.config import load_config


def test_gpu_preset_has_the_real_widths_and_builds():
    from diffusers import AutoencoderKL, SD3Transformer2DModel, VQModel
    from transformers import AutoConfig, AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel

    cfg = load_config("bench_gpu")
    dims = flops.ModelDims.from_config(cfg, vocab_size=1)
    v, lm = dims.vision, dims.llm
    assert (v.width, v.layers, v.image_size, v.patch_size) == (1024, 24, 336, 14)
    assert (lm.width, lm.heads, lm.kv_heads, lm.ffn, lm.vocab) == (4096, 32, 8, 14336, 128256)
    d = dims.denoiser
    assert (d.layers, d.inner, d.joint_dim, d.pooled_dim, d.caption_dim, d.patch, d.latent_side) == (
        24, 1536, 4096, 2048, 1536, 2, 42)
    llm_init = dict(cfg.model.llm.init)
    with torch.device("meta"):
        vision = CLIPVisionModel(CLIPVisionConfig(**cfg.model.vision.init))
        llm = AutoModelForCausalLM.from_config(AutoConfig.for_model(llm_init.pop("model_type"), **llm_init))
        denoiser = SD3Transformer2DModel.from_config(cfg.model.recon.denoiser.init)
        AutoencoderKL.from_config(cfg.model.recon.vae.init)
        VQModel.from_config(cfg.model.vq.init)
    assert sum(p.numel() for p in vision.parameters()) == pytest.approx(0.30e9, rel=0.02)  # CLIP-L vision tower
    assert sum(p.numel() for p in denoiser.parameters()) == pytest.approx(2.03e9, rel=0.02)  # SD3-medium MMDiT
    per_layer = sum(p.numel() for p in llm.model.layers[0].parameters())
    assert per_layer == pytest.approx(218.1e6, rel=0.01)  # one LLaMA-3-8B decoder layer


def test_cpu_preset_keeps_the_8b_mix():
    """bench_cpu is the 8B model scaled by 1/16 in widths and tokens: same VLSA/AnyRes FLOP ratio and shares."""
    full = load_config("bench_gpu", ["model.llm.init.num_hidden_layers=32", "bench.text_tokens=256"])
    small = load_config("bench_cpu")
    big, little = step_counts(full, vocab_size=1), step_counts(small, vocab_size=1)
    ratio = little["vlsa"].total / little["anyres"].total
    assert ratio == pytest.approx(big["vlsa"].total / big["anyres"].total, abs=0.02)
    for name in ("vlsa", "anyres"):
        for part, share in big[name].by_part().items():
            want = share / big[name].total
            assert little[name].by_part()[part] / little[name].total == pytest.approx(want, abs=0.015)


def test_variants_share_sizes_and_differ_in_projector_and_recon():
    cfg = load_config("bench_cpu")
    vlsa, anyres = variants.vlsa_config(cfg), variants.anyres_config(cfg)
    assert (vlsa.model.projector.type, vlsa.model.recon.enabled) == ("sa_perceiver", True)
    assert (anyres.model.projector.type, anyres.model.recon.enabled) == ("anyres", False)
    assert set(variants.bench_stage(anyres).lr) == {"vision", "projector", "llm"}
    assert vlsa.model.llm == anyres.model.llm and vlsa.model.vision == anyres.model.vision
    assert variants.workload(vlsa) == variants.workload(anyres)


def test_gpu_preset_has_the_deepest_llm_whose_step_fits_an_80gb_card():
    from vlsa.bench import budget

    cfg = load_config("bench_gpu")
    layers = cfg.model.llm.init["num_hidden_layers"]
    usable = (1 - budget.HEADROOM) * budget.CARD_80GB
    fits = budget.step_budget(cfg, vocab_size=1)
    deeper = budget.step_budget(budget.with_depth(cfg, layers + 1), vocab_size=1)
    assert fits["peak"] <= usable < deeper["peak"], (layers, fits["peak"], deeper["peak"])
    # both variants' weights and AdamW states at 6 bytes per trainable parameter, 2 for the frozen VAE
    params = fits["vlsa_parameters"] + fits["anyres_parameters"]
    assert 6 * params > fits["vlsa_resident"] + fits["anyres_resident"] > 5.9 * params
