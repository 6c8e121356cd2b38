"""The FLOP counter: a hand count of a config with one- and two-layer parts, and torch's own count of the
real tiny model (forward and a whole training step, attention included through the math SDPA kernel)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vlsa.bench import flops, variants
from vlsa.bench.batch import synthetic_batch
from vlsa.config import load_config
from vlsa.model import geometry

# vision: 16 px, patch 8 -> l = 4 patches (+ CLS), width 8, 2 layers (select_layer -2: 1 gets gradients)
# LLM: width 16, 2 heads x 8, 1 KV head, FFN 32, 1 layer, vocabulary 40
# denoiser: one (last) block, 2 heads x 4 = 8 wide, latent 4 x 4 (VAE of 3 blocks: /4 from 16 px), patch 2
SMALL = [
    "model.vision.init={image_size: 16, patch_size: 8, hidden_size: 8, intermediate_size: 16,"
    " num_hidden_layers: 2, num_attention_heads: 2}",
    "model.projector.heads=2",
    "model.epigone.rank=4",
    "model.llm.init={model_type: llama, vocab_size: 40, hidden_size: 16, intermediate_size: 32,"
    " num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1}",
    "model.recon.image_size=16",
    "model.recon.denoiser.init={sample_size: 4, patch_size: 2, in_channels: 16, out_channels: 16, num_layers: 1,"
    " attention_head_dim: 4, num_attention_heads: 2, joint_attention_dim: 12, caption_projection_dim: 8,"
    " pooled_projection_dim: 6, pos_embed_max_size: 4}",
]
WORK = flops.Workload(batch=2, tiles=4, text_tokens=3)
ALL = {"vision", "projector", "llm", "epigone", "denoiser"}
STAGE1 = {"projector", "epigone", "denoiser"}


def small_dims():
    return flops.ModelDims.from_config(load_config("tiny", SMALL), vocab_size=40)


def hand_count() -> dict[str, dict[str, int]]:
    """Forward FLOPs and step FLOPs (all parts trainable, and Stage I) of SMALL at WORK, by hand.

    Conventions: 2 FLOPs per multiply-add; backward = activation gradients (weights + 2 x attention
    products, minus ops whose inputs need none) + weight gradients (trainable parts).
    """
    B, m = 2, 4
    # vision, per view (B(1+m) = 10 views): T_v = 5 tokens, d = 8, FFN 16
    views = B * (1 + m)
    embed = 4 * 3 * 8 * 8 * 8  # l * C * p^2 * d = 6144
    dense = 5 * (4 * 8 * 8 + 2 * 8 * 16)  # T_v (4d^2 + 2dF) = 2560 per layer
    attn = 2 * 5 * 5 * 8  # 2 T_v^2 d = 400 per layer
    vision_fwd = 2 * views * (embed + 2 * dense + 2 * attn)
    vision_train = vision_fwd + 2 * views * (dense + 2 * attn) + 2 * views * (embed + dense)  # only layer 1 gets grads
    # SA-Perceiver per image: n_q = l + 1 = 5 queries, m*l = 16 keys, d = 8, D = 16
    p_w = 5 * 64 + 16 * 64 + 5 * 64 + 5 * 64 + 5 * 8 * 16  # w_q, w_kv, w_o1, w_k, w_o2 = 2624
    p_a = 2 * 5 * 16 * 8 + 2 * 5 * 5 * 8  # cross QK^T + AV, self QK^T + AV = 1680
    proj_fwd = 2 * B * (p_w + p_a)
    proj_train = proj_fwd + 2 * B * (p_w + 2 * p_a) + 2 * B * p_w
    proj_stage1 = proj_train - 2 * B * 16 * 64  # vision frozen: w_kv's input (V_Hi) needs no gradient
    # LLM: T = 4 visual + 3 text = 7; N = q + k + v + o + gate/up/down + LM head
    N = 16 * 16 + 16 * 8 + 16 * 8 + 16 * 16 + 3 * 16 * 32 + 16 * 40  # 2944
    llm_w, llm_a = N * 7, 2 * 1 * 7 * 7 * 2 * 8  # N T; 2 L T^2 H d_h
    llm_fwd = 2 * B * (llm_w + llm_a)
    llm_train = 3 * llm_fwd  # 6NT + 12 L T^2 H d_h per sample
    llm_frozen = llm_fwd + 2 * B * (llm_w + 2 * llm_a)  # Stage I: activation gradients only
    # Epigone: [V; P] = 5 tokens through 16 -> 4, then 4 tokens -> 12 and P -> 6
    epi_fwd = 2 * B * (5 * 16 * 4 + 4 * 4 * 12 + 4 * 6)
    # denoiser: E = 8, n_x = 4 latent patches, n_c = 4 cue tokens; the one block is the last
    io = 4 * 16 * 4 * 8 + 4 * 12 * 8 + 4 * 8 * 4 * 16  # patchify, context embedder, proj_out
    embeds = 256 * 8 + 8 * 8 + 6 * 8 + 8 * 8 + 2 * 8 * 8  # timestep MLP, pooled MLP, norm_out
    block = 6 * 64 + 2 * 64 + 12 * 4 * 64 + 3 * 4 * 64  # adaLN x, adaLN context, x stream, context q/k/v
    d_w, d_a = io + embeds + block, 2 * 8 * 8 * 8  # attention over n_x + n_c = 8 tokens
    den_fwd = 2 * B * (d_w + d_a)
    den_train = den_fwd + 2 * B * (d_w + 2 * d_a - 4 * 16 * 4 * 8 - 256 * 8) + 2 * B * d_w  # noisy latent, t: no grads
    return {
        "forward": {"vision": vision_fwd, "projector": proj_fwd, "llm": llm_fwd, "epigone": epi_fwd,
                    "denoiser": den_fwd},
        "all": {"vision": vision_train, "projector": proj_train, "llm": llm_train, "epigone": 3 * epi_fwd,
                "denoiser": den_train},
        "stage1": {"vision": vision_fwd, "projector": proj_stage1, "llm": llm_frozen, "epigone": 3 * epi_fwd,
                   "denoiser": den_train},
    }


def test_dimensions_come_from_the_config():
    dims = small_dims()
    assert (dims.vision.patches, dims.vision.seq, dims.vision.layers, dims.vision.used_layers) == (4, 5, 2, 1)
    assert (dims.llm.width, dims.llm.heads, dims.llm.kv_heads, dims.llm.head_dim, dims.llm.vocab) == (16, 2, 1, 8, 40)
    assert (dims.denoiser.inner, dims.denoiser.latent_side, dims.denoiser.image_tokens) == (8, 4, 4)


def test_counter_matches_the_hand_count():
    dims, want = small_dims(), hand_count()
    train = flops.count(dims, WORK, ALL)
    assert {p.name.split(" ")[0]: p.forward for p in train.parts} == want["forward"]
    assert train.by_part() == want["all"]
    assert flops.count(dims, WORK, STAGE1).by_part() == want["stage1"]
    inference = flops.count(dims, WORK)  # forward only, no reconstruction head
    assert inference.by_part() == {k: want["forward"][k] for k in ("vision", "projector", "llm")}
    assert train.total == sum(want["all"].values())


def test_anyres_counts_every_tile_in_the_llm():
    dims = flops.ModelDims.from_config(variants.anyres_config(load_config("tiny", SMALL)), vocab_size=40)
    assert geometry.visual_tokens(dims.projector, 4, 4) == 20 + 4  # (m + 1) l + a newline per row of the 2x2 grid's 4 rows
    parts = flops.count(dims, WORK, {"vision", "projector", "llm"}).by_part()
    assert set(parts) == {"vision", "projector", "llm"}
    assert parts["projector"] == 3 * 2 * 2 * 20 * (8 * 16 + 16 * 16)  # k * 2 * B * (1+m) l (dD + D^2)


def test_formula_is_printed_with_values():
    text = flops.count(small_dims(), WORK, ALL).formula()
    assert "N = L*(2*D*H*d_h + 2*D*H_kv*d_h + 3*D*F) + D*V" in text
    assert "N=2944" in text and "T=7" in text and "k=3" in text


def torch_count(model, batch, train: bool) -> int:
    """FLOPs torch counts for a forward (and backward) pass; the math SDPA kernel exposes attention matmuls."""
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        if train:
            model(**batch).loss.backward()
        else:
            with torch.no_grad():
                model(**batch)
    return counter.get_total_flops()


@pytest.mark.parametrize("variant,stage", [("vlsa", -1), ("vlsa", 0), ("anyres", -1)])
def test_counter_matches_torch_on_the_real_tiny_model(cache_dir, variant, stage):
    from vlsa.model.builder import build_model
    from vlsa.model.params import apply_stage

    cfg = load_config("tiny", [f"model.cache_dir={cache_dir}"])
    cfg = variants.vlsa_config(cfg) if variant == "vlsa" else variants.anyres_config(cfg)
    model = build_model(cfg)
    trainable = set(cfg.train.stages[stage].lr)
    apply_stage(model, cfg.train.stages[stage])
    model.train()
    work = flops.Workload(batch=2, tiles=3, text_tokens=5)
    batch = synthetic_batch(model, work)
    count = flops.count(flops.ModelDims.from_config(cfg, len(model.tokenizer)), work, trainable)
    assert torch_count(model, batch, train=False) == count.forward
    assert torch_count(model, batch, train=True) == pytest.approx(count.total, rel=1e-4)


def test_dimensions_from_saved_config_files_match_init(tmp_path):
    """Parts given by `path` are counted from their config.json (no weights read)."""
    import json

    from transformers import AutoConfig, CLIPVisionConfig

    cfg = load_config("tiny", SMALL)
    CLIPVisionConfig(**cfg.model.vision.init).save_pretrained(tmp_path / "vision")
    llm_init = dict(cfg.model.llm.init)
    AutoConfig.for_model(llm_init.pop("model_type"), **llm_init).save_pretrained(tmp_path / "llm")
    (tmp_path / "sd3" / "transformer").mkdir(parents=True)
    (tmp_path / "sd3" / "transformer" / "config.json").write_text(json.dumps(cfg.model.recon.denoiser.init))
    from_files = load_config("tiny", SMALL + [
        f"model.vision.path={tmp_path / 'vision'}", "model.vision.init={}",
        f"model.llm.path={tmp_path / 'llm'}", "model.llm.init={}",
        f"model.recon.denoiser.path={tmp_path / 'sd3'}", "model.recon.denoiser.subfolder=transformer",
        "model.recon.denoiser.init={}",
    ])
    assert flops.ModelDims.from_config(from_files, vocab_size=40) == small_dims()
    missing = load_config("tiny", SMALL + [f"model.llm.path={tmp_path / 'nowhere'}", "model.llm.init={}"])
    with pytest.raises(ValueError, match="model.llm: cannot read its config"):
        flops.ModelDims.from_config(missing, vocab_size=40)


def test_the_cost_of_the_high_resolution_target_is_reported():
    """`vlsa.bench flops` prices the 2x target (the tiles' canvas) against one of X_Lo's size."""
    from vlsa.bench.flops_report import recon_target_cost
    from vlsa.bench.step import step_counts

    base = load_config("tiny", SMALL)
    same = recon_target_cost(base, step_counts(base, vocab_size=40)["vlsa"], vocab_size=40)
    assert same["denoiser_ratio"] == 1.0 and same["step_ratio"] == 1.0
    big = load_config("tiny", [*SMALL, "model.recon.image_size=32", "model.recon.denoiser.init.pos_embed_max_size=8"])
    cost = recon_target_cost(big, step_counts(big, vocab_size=40)["vlsa"], vocab_size=40)
    assert (cost["image_size"], cost["lowres_size"]) == (32, 16)
    assert cost["denoiser_ratio"] > 3.0  # 4x the latent tokens: linear parts x4, attention more
    assert 1.0 < cost["step_ratio"] < cost["denoiser_ratio"]
