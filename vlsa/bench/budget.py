"""The memory budget of the ``step`` benchmark on one GPU, and the deepest LLM that fits a card.

``step`` keeps VLSA and the AnyRes baseline resident together and steps them in turn, in bf16 with
bf16 AdamW states (``vlsa.bench.loop``). Per variant, in bytes (P: parameters, exact, counted from
the real classes built on the meta device; A: activation values of one step, estimated):

```
resident (both variants, between steps)  2 P + 4 P_trainable        (bf16 weights, AdamW exp_avg + exp_avg_sq)
one step adds (one variant at a time)    2 P_trainable + 2 A + 12 B T V
A per token and layer                    LLM: 7 D + 2 D_kv + 4 F   vision: 6 d + 2 F_v   denoiser: 2 (6 E + 2 F_E)
```
(what autograd keeps for backward without activation checkpointing, attention through SDPA so no
T x T scores; the LM head's logits are kept in bf16 and upcast to fp32 for the loss and its gradient:
12 bytes per logit). ``headroom`` covers the CUDA context, cuBLAS workspaces and allocator
fragmentation. These are estimates to choose a size with, not measurements: ``step`` measures the
real peaks on the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlsa.bench import flops, variants
from vlsa.config import Config, config_from_dict
from vlsa.model import builder, geometry
from vlsa.model.epigone import Epigone
from vlsa.model.projectors import build_projector

GB = 1e9
CARD_80GB = 80 * GB
HEADROOM = 0.10
"""Fraction of the card kept free for the CUDA context, workspaces and fragmentation."""


@dataclass(frozen=True)
class VariantBudget:
    """Bytes of one variant."""

    parameters: int
    trainable: int
    resident: float
    step: float


def meta_parameters(cfg: Config, vocab_size: int) -> dict[str, int]:
    """Parameters per part of ``cfg``'s model, from the real classes built on the meta device (no memory)."""
    counts = {}
    with torch.device("meta"):
        vision = builder.random_instance(_vision_class(cfg), cfg.model.vision.init, 0)
        llm = builder.random_instance(_llm_class(), cfg.model.llm.init, 0)
        llm.resize_token_embeddings(max(vocab_size, llm.get_input_embeddings().num_embeddings), mean_resizing=False)
        d, D = vision.config.hidden_size, llm.get_input_embeddings().embedding_dim
        side = vision.config.image_size // vision.config.patch_size
        projector = build_projector(cfg.model.projector, d, D, num_patches=side * side,
                                    image_size=vision.config.image_size, grids=cfg.model.encoding.anyres_grids)
        counts |= {"vision": _count(vision), "llm": _count(llm), "projector": _count(projector)}
        if cfg.model.recon.enabled:
            from diffusers import AutoencoderKL, SD3Transformer2DModel

            denoiser = builder.random_instance(SD3Transformer2DModel, cfg.model.recon.denoiser.init, 0)
            epigone = Epigone(D, cfg.model.epigone.rank, denoiser.config.joint_attention_dim,
                              denoiser.config.pooled_projection_dim)
            vae = builder.random_instance(AutoencoderKL, cfg.model.recon.vae.init, 0)
            counts |= {"denoiser": _count(denoiser), "epigone": _count(epigone), "vae": _count(vae)}
    return counts


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _vision_class(cfg: Config):
    from transformers import CLIPVisionModel, SiglipVisionModel

    return {"clip": CLIPVisionModel, "siglip": SiglipVisionModel}[cfg.model.vision.kind]


def _llm_class():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM


def activation_values(dims: flops.ModelDims, work: flops.Workload) -> tuple[float, float]:
    """(values autograd keeps for one step's backward, logits B x T x V) of a variant: the estimate above."""
    v, llm, B, m = dims.vision, dims.llm, work.batch, work.tiles
    kv = llm.kv_heads * llm.head_dim
    tokens = geometry.visual_tokens(dims.projector, v.patches, m) + work.text_tokens
    values = B * tokens * llm.layers * (7 * llm.width + 2 * kv + 4 * llm.ffn)
    values += B * (1 + m) * v.seq * v.layers * (6 * v.width + 2 * v.ffn)
    dd = dims.denoiser
    if dd is not None:
        joint = dd.image_tokens + flops.cue_tokens(dims.projector, v.patches)
        values += B * joint * dd.layers * 2 * (6 * dd.inner + 2 * 4 * dd.inner)
    return float(values), float(B * tokens * llm.vocab)


def variant_budget(cfg: Config, vocab_size: int) -> VariantBudget:
    """Resident and per-step bytes of one variant in bf16 with bf16 AdamW states."""
    counts = meta_parameters(cfg, vocab_size)
    stage = variants.bench_stage(cfg)
    trainable = sum(n for part, n in counts.items() if part in stage.lr)
    total = sum(counts.values())
    values, logits = activation_values(flops.ModelDims.from_config(cfg, vocab_size), variants.workload(cfg))
    return VariantBudget(total, trainable, 2 * total + 4 * trainable, 2 * trainable + 2 * values + 12 * logits)


def step_budget(cfg: Config, vocab_size: int) -> dict[str, float]:
    """Bytes the ``step`` benchmark needs: both variants resident plus the larger step."""
    both = {name: variant_budget(make(cfg), vocab_size) for name, make in
            (("vlsa", variants.vlsa_config), ("anyres", variants.anyres_config))}
    peak = sum(b.resident for b in both.values()) + max(b.step for b in both.values())
    return {"peak": peak, **{f"{n}_resident": b.resident for n, b in both.items()},
            **{f"{n}_step": b.step for n, b in both.items()},
            **{f"{n}_parameters": float(b.parameters) for n, b in both.items()}}


def with_depth(cfg: Config, layers: int) -> Config:
    """``cfg`` with ``layers`` LLM layers."""
    data = cfg.to_dict()
    data["model"]["llm"]["init"]["num_hidden_layers"] = layers
    return config_from_dict(data)


def deepest_llm(cfg: Config, vocab_size: int, capacity: float = CARD_80GB, headroom: float = HEADROOM) -> int:
    """The most LLM layers for which the ``step`` budget fits ``(1 - headroom) x capacity`` bytes (0: none)."""
    usable, layers = (1 - headroom) * capacity, 0
    while step_budget(with_depth(cfg, layers + 1), vocab_size)["peak"] <= usable:
        layers += 1
    return layers
