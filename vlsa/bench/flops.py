"""FLOPs of a training step or an inference prefill, counted from the config (App. B.3 of the paper).

What is counted: matrix-multiply FLOPs, 2 per multiply-add, of every linear layer and convolution and
of the two attention products (Q K^T and A V), over the full T x T square whether or not the mask is
causal (the convention of PaLM's MFU). Norms, activations, softmax, the loss, the optimizer update
and the frozen VAE (its latents are cached by the labeling job) are left out: a few percent at most.

A training step costs k x forward for each part: k = 3 for a trainable part (forward, input
gradients, weight gradients; for the LLM this is the familiar 6N per token plus the attention term),
k = 2 for a frozen part a gradient passes through (something before it trains), k = 1 for a part no
gradient reaches. Ops whose inputs need no gradient (pixels, the noisy latent, the timestep, and a
frozen upstream part's outputs) skip their activation gradient, and the vision tower's backward covers
only the layers up to ``select_layer``. With these rules the count equals torch's own FLOP counter on
the real modules (``tests/bench/test_flops.py``).

Every count is per step (batch B, one image per sample with m tiles) and comes with its formula, so a
printed report can be checked by hand.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from vlsa.config import ComponentConfig, Config, ProjectorConfig
from vlsa.model import geometry
from vlsa.model.builder import build_model_tokenizer
from vlsa.model.geometry import component_config, vision_config

GATED_LLMS = ("llama", "mistral", "qwen2", "qwen3")  # SwiGLU MLP: gate, up and down projections


# ------------------------------------------------------------------------------------------ dimensions


@dataclass(frozen=True)
class VisionDims:
    """A ViT tower (CLIP or SigLIP)."""

    kind: str
    image_size: int
    patch_size: int
    channels: int
    width: int
    ffn: int
    layers: int
    used_layers: int
    use_head: bool = False

    @property
    def patches(self) -> int:
        """l: patch tokens per view."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def seq(self) -> int:
        """Tokens inside the tower per view (CLIP adds a class token)."""
        return self.patches + (1 if self.kind == "clip" else 0)


@dataclass(frozen=True)
class LLMDims:
    """A decoder-only LLM with a gated MLP."""

    width: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    layers: int
    vocab: int

    @property
    def params_per_token(self) -> int:
        """N: weights one token is multiplied by (attention and MLP projections of all layers, and the LM head)."""
        D, q, kv = self.width, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return self.layers * (D * q + 2 * D * kv + q * D + 3 * D * self.ffn) + D * self.vocab


@dataclass(frozen=True)
class DenoiserDims:
    """An SD3 MMDiT (``SD3Transformer2DModel``) and the latent it denoises."""

    inner: int
    layers: int
    patch: int
    in_channels: int
    out_channels: int
    joint_dim: int
    caption_dim: int
    pooled_dim: int
    latent_side: int

    @property
    def image_tokens(self) -> int:
        """n_x: latent patches."""
        return (self.latent_side // self.patch) ** 2


@dataclass(frozen=True)
class RossDims:
    """ROSS's encoder-block denoiser (``vlsa.model.ross``) and the latent it denoises (one token per latent pixel)."""

    width: int
    layers: int
    channels: int
    latent_side: int

    @property
    def image_tokens(self) -> int:
        """n_x: latent tokens."""
        return self.latent_side ** 2


@dataclass(frozen=True)
class ModelDims:
    """Everything the FLOP count needs from a config."""

    vision: VisionDims
    llm: LLMDims
    projector: ProjectorConfig
    epigone_rank: int = 0
    denoiser: DenoiserDims | RossDims | None = None
    conditioning: str = "projector"

    @classmethod
    def from_config(cls, cfg: Config, vocab_size: int | None = None) -> "ModelDims":
        """Dimensions of ``cfg``'s parts (``init`` dicts or saved config files; no weights are read).

        ``vocab_size``: the tokenizer's length when known (the LLM grows to it); None builds the tokenizer.
        """
        if vocab_size is None:
            vocab_size = len(build_model_tokenizer(cfg))
        model = cfg.model
        denoiser = _denoiser_dims(cfg) if model.recon.enabled else None
        return cls(_vision_dims(cfg), _llm_dims(model.llm, vocab_size), model.projector, model.epigone.rank,
                   denoiser, model.recon.conditioning)


def _vision_dims(cfg: Config) -> VisionDims:
    from transformers import CLIPVisionConfig, SiglipVisionConfig

    part = cfg.model.vision
    data = vision_config(cfg.model)
    c = (CLIPVisionConfig if part.kind == "clip" else SiglipVisionConfig)(**data)
    layers = c.num_hidden_layers
    sel = part.select_layer
    used = layers + 1 + sel if sel < 0 else sel  # hidden_states[0] is the embedding output
    return VisionDims(part.kind, c.image_size, c.patch_size, c.num_channels, c.hidden_size, c.intermediate_size,
                      layers, used, part.kind == "siglip" and bool(getattr(c, "vision_use_head", True)))


def _llm_dims(part, vocab_size: int) -> LLMDims:
    from transformers import AutoConfig

    data = component_config(part, "model.llm")
    kind = data.pop("model_type", "")
    if kind not in GATED_LLMS:
        raise ValueError(f"model.llm: FLOP counting knows model types {GATED_LLMS}, got {kind!r}")
    c = AutoConfig.for_model(kind, **data)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads  # older configs lack it
    kv = c.num_key_value_heads or c.num_attention_heads
    return LLMDims(c.hidden_size, c.num_attention_heads, kv, head_dim, c.intermediate_size, c.num_hidden_layers,
                   max(c.vocab_size, vocab_size))


def _diffusers_config(part: ComponentConfig, cls, name: str) -> dict:
    """The part's config over the class's constructor defaults."""
    defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return defaults | component_config(part, name)


def _denoiser_dims(cfg: Config) -> DenoiserDims | RossDims:
    from diffusers import AutoencoderKL, SD3Transformer2DModel

    recon = cfg.model.recon
    if recon.head == "ross":
        vae = _diffusers_config(recon.vae, AutoencoderKL, "model.recon.vae")
        down = 2 ** (len(vae["block_out_channels"]) - 1)
        return RossDims(recon.ross.width, recon.ross.layers, vae["latent_channels"], recon.image_size // down)
    d = _diffusers_config(recon.denoiser, SD3Transformer2DModel, "model.recon.denoiser")
    if d.get("dual_attention_layers"):
        raise ValueError("model.recon.denoiser: FLOP counting covers SD3 (no dual attention), "
                         f"got dual_attention_layers={d['dual_attention_layers']}")
    vae = _diffusers_config(recon.vae, AutoencoderKL, "model.recon.vae")
    down = 2 ** (len(vae["block_out_channels"]) - 1)
    return DenoiserDims(d["num_attention_heads"] * d["attention_head_dim"], d["num_layers"], d["patch_size"],
                        d["in_channels"], d["out_channels"] or d["in_channels"], d["joint_attention_dim"],
                        d["caption_projection_dim"], d["pooled_projection_dim"], recon.image_size // down)


# ------------------------------------------------------------------------------------- part counts


@dataclass(frozen=True)
class Workload:
    """What one step processes: B samples, each one image of m tiles and ``text_tokens`` text tokens."""

    batch: int
    tiles: int
    text_tokens: int
    logits_all: bool = True
    """LM head on every position (training) or on the last one only (prefill)."""


@dataclass
class Part:
    """One part's FLOPs split the way its backward pass needs them, and its formula.

    ``weights``: products with a weight matrix (forward F_w); ``products``: activation x activation
    products (attention, forward F_a). The backward pass spends F_w on weight gradients (trainable
    parts), and F_w + 2 F_a on activation gradients (both operands of an attention product need one),
    less the ops whose inputs need no gradient: ``input_free`` always (pixels, noisy latents), ``entry``
    (the ops reading the upstream part's output) when no part upstream trains.
    """

    name: str
    weights: float
    products: float
    formula: str
    values: dict[str, int] = field(default_factory=dict)
    input_free: float = 0.0
    entry: float = 0.0
    weights_bwd: float | None = None
    """F_w of the layers that get gradients (the vision tower's layers past ``select_layer`` get none)."""
    products_bwd: float | None = None
    k: int = 1
    upstream_trains: bool = False

    @property
    def forward(self) -> float:
        """Forward FLOPs."""
        return self.weights + self.products

    @property
    def step(self) -> float:
        """FLOPs of this part in the step: forward plus the backward work that k calls for."""
        w = self.weights if self.weights_bwd is None else self.weights_bwd
        a = self.products if self.products_bwd is None else self.products_bwd
        grad_input = w + 2 * a - self.input_free - (0.0 if self.upstream_trains else self.entry)
        return self.forward + (self.k >= 2) * grad_input + (self.k == 3) * w


def vision_part(v: VisionDims, work: Workload) -> Part:
    """The tower on X_Lo and every tile: B(1+m) views."""
    views = 2.0 * work.batch * (1 + work.tiles)  # x 2 FLOPs per multiply-add
    T, d = v.seq, v.width
    embed = v.patches * v.channels * v.patch_size**2 * d
    dense, attn = T * (4 * d * d + 2 * d * v.ffn), 2 * T * T * d  # per layer
    head = (2 * v.patches * d * d + 2 * d * d + 2 * d * v.ffn) if v.use_head else 0
    head_attn = 2 * v.patches * d if v.use_head else 0
    formula = "2*B(1+m)*[l*C*p^2*d + L_v*(T_v*(4d^2 + 2d*F_v) + 2*T_v^2*d)]"
    if v.use_head:
        formula += " + SigLIP pooling head"
    values = {"B": work.batch, "m": work.tiles, "l": v.patches, "C": v.channels, "p": v.patch_size, "d": d,
              "L_v": v.layers, "T_v": T, "F_v": v.ffn, "L_used": v.used_layers}
    return Part("vision", views * (embed + v.layers * dense + head), views * (v.layers * attn + head_attn),
                formula, values, input_free=views * embed, weights_bwd=views * (embed + v.used_layers * dense),
                products_bwd=views * v.used_layers * attn)


def cue_tokens(p: ProjectorConfig, l: int) -> int:
    """n_c: tokens of the denoiser cue per image (V for the SA-Perceiver, the base view for baselines)."""
    return {"qformer": p.num_queries or l, "pixel_unshuffle": l // 4}.get(p.type, l)


@dataclass(frozen=True)
class Macs:
    """Multiply-adds of one image through a projector: with weights, attention products, and ops reading V_Lo/V_Hi."""

    weights: int
    products: int
    entry: int
    formula: str


def _perceiver_macs(p: ProjectorConfig, l: int, m: int, d: int, D: int) -> Macs:
    nq, keys = (l + 1 if p.global_embedding == "query" else l), m * l
    kv = keys * d * d * (2 if p.full_projections else 1)  # w_kv (and ex2's w_v1) read V_Hi
    entry = kv + (0 if p.global_embedding == "query" else nq * d * d)  # without q, w_q reads V_Lo alone
    weights, products = 2 * nq * d * d + kv, 2 * nq * keys * d  # w_q, w_o1, w_kv; cross QK^T + AV
    if p.self_attention:
        weights += nq * d * d * (3 if p.full_projections else 1)  # w_k (ex2: w_q2, w_v2)
        products += 2 * nq * nq * d
    formula = ("w_q,w_o1: 2*n_q*d^2 + w_kv: ml*d^2 + cross 2*n_q*ml*d"
               + (" + w_k: n_q*d^2 + self 2*n_q^2*d" if p.self_attention else "") + " + w_o2: n_q*d*D")
    return Macs(weights + nq * d * D, products, entry, formula)


def _projector_macs(p: ProjectorConfig, l: int, m: int, d: int, D: int) -> Macs:
    """Multiply-adds of one image through the projector, and their formula."""
    if p.type == "sa_perceiver":
        return _perceiver_macs(p, l, m, d, D)
    if p.type == "mlp2x_gelu":
        return Macs(l * (d * D + D * D), 0, l * d * D, "l*(d*D + D^2)")
    if p.type in ("anyres", "hd_grid"):  # the newline tokens of anyres are a parameter, not a product
        n = (1 + m) * l
        return Macs(n * (d * D + D * D), 0, n * d * D, "(1+m)*l*(d*D + D^2)")
    if p.type == "pixel_unshuffle":
        n = (1 + m) * (l // 4)
        return Macs(n * (4 * d * D + D * D), 0, n * 4 * d * D, "(1+m)*(l/4)*(4d*D + D^2)")
    nq = p.num_queries or l  # qformer: q/k/v/out projections, cross attention, MLP block, Linear(d, D)
    weights = 2 * nq * d * d + 2 * m * l * d * d + 8 * nq * d * d + nq * d * D
    return Macs(weights, 2 * nq * m * l * d, 0, "2*n_q*d^2 + 2*ml*d^2 + 2*n_q*ml*d + 8*n_q*d^2 + n_q*d*D")


def projector_part(dims: ModelDims, work: Workload) -> Part:
    """The projector over B images."""
    l, d, D = dims.vision.patches, dims.vision.width, dims.llm.width
    macs = _projector_macs(dims.projector, l, work.tiles, d, D)
    nq = l + 1 if dims.projector.global_embedding == "query" else l
    values = {"B": work.batch, "m": work.tiles, "l": l, "d": d, "D": D, "n_q": nq}
    b2 = 2.0 * work.batch
    return Part(f"projector ({dims.projector.type})", b2 * macs.weights, b2 * macs.products,
                f"2*B*[{macs.formula}]", values, entry=b2 * macs.entry)


def llm_part(dims: ModelDims, work: Workload) -> Part:
    """The LLM over B sequences of T = visual + text tokens: 2NT + 4 L T^2 H d_h per sequence."""
    lm = dims.llm
    T = geometry.visual_tokens(dims.projector, dims.vision.patches, work.tiles) + work.text_tokens
    head_tokens = T if work.logits_all else 1
    N = lm.params_per_token
    dense = N * T - lm.width * lm.vocab * (T - head_tokens)  # the LM head only where logits are taken
    attn = 2 * lm.layers * T * T * lm.heads * lm.head_dim
    values = {"B": work.batch, "T": T, "N": N, "L": lm.layers, "H": lm.heads, "d_h": lm.head_dim,
              "D": lm.width, "H_kv": lm.kv_heads, "F": lm.ffn, "V": lm.vocab}
    formula = "2*B*[N*T + 2*L*T^2*H*d_h], N = L*(2*D*H*d_h + 2*D*H_kv*d_h + 3*D*F) + D*V"
    if not work.logits_all:
        formula += " (LM head on the last token only)"
    return Part("llm", 2.0 * work.batch * dense, 2.0 * work.batch * attn, formula, values)


def epigone_part(dims: ModelDims, work: Workload) -> Part:
    """Epigone on [V; P] of B images: down-projection on n_c + 1 tokens, then the two up-projections."""
    dd, D, r = dims.denoiser, dims.llm.width, dims.epigone_rank
    n_c = cue_tokens(dims.projector, dims.vision.patches)
    down = (n_c + 1) * D * r
    values = {"B": work.batch, "n_c": n_c, "D": D, "r": r, "J": dd.joint_dim, "P_d": dd.pooled_dim}
    b2 = 2.0 * work.batch
    return Part("epigone", b2 * (down + n_c * r * dd.joint_dim + r * dd.pooled_dim), 0.0,
                "2*B*[(n_c+1)*D*r + n_c*r*J + r*P_d]", values, entry=b2 * down)


def _mmdit_block_macs(dd: DenoiserDims, n_c: int, last: bool) -> tuple[int, int]:
    """(weights, products) of one JointTransformerBlock: adaLN modulations, joint attention, MLPs.

    The last block (``context_pre_only``) drops the context stream's output projection and MLP.
    """
    E, n_x = dd.inner, dd.image_tokens
    modulation = 6 * E * E + (2 if last else 6) * E * E  # norm1, norm1_context (per sample)
    x_stream = 4 * n_x * E * E + 8 * n_x * E * E  # q, k, v, out; MLP 4x
    c_stream = 3 * n_c * E * E + (0 if last else n_c * E * E + 8 * n_c * E * E)
    return modulation + x_stream + c_stream, 2 * (n_x + n_c) ** 2 * E


def denoiser_part(dims: ModelDims, work: Workload) -> Part:
    """One denoising step of the MMDiT for B images, conditioned on n_c cue tokens."""
    dd, n_c = dims.denoiser, cue_tokens(dims.projector, dims.vision.patches)
    E, n_x, p = dd.inner, dd.image_tokens, dd.patch
    patchify, t_embed = n_x * dd.in_channels * p * p * E, 256 * E  # their inputs never need a gradient
    context, pooled = n_c * dd.joint_dim * dd.caption_dim, dd.pooled_dim * E  # read Epigone's outputs
    io = patchify + context + n_x * E * p * p * dd.out_channels
    embeds = t_embed + E * E + pooled + E * E + 2 * E * E  # timestep, pooled text, norm_out
    blocks = [_mmdit_block_macs(dd, n_c, i == dd.layers - 1) for i in range(dd.layers)]
    values = {"B": work.batch, "n_x": n_x, "n_c": n_c, "E": E, "L_d": dd.layers, "p": p, "J": dd.joint_dim}
    formula = ("2*B*[patch/context/out projections + (L_d-1)*(12E^2 + 12*n_x*E^2 + 12*n_c*E^2 + 2(n_x+n_c)^2*E)"
               " + last block (8E^2 + 12*n_x*E^2 + 3*n_c*E^2 + 2(n_x+n_c)^2*E) + embeddings]")
    b2 = 2.0 * work.batch
    return Part("denoiser", b2 * (io + embeds + sum(w for w, _ in blocks)), b2 * sum(a for _, a in blocks),
                formula, values, input_free=b2 * (patchify + t_embed), entry=b2 * (context + pooled))


def ross_denoiser_part(dims: ModelDims, work: Workload) -> Part:
    """One denoising step of ROSS's denoiser for B images: per block three input projections
    (condition D -> W, latent C -> W, timestep) and a pre-norm encoder block (attention 4W^2, MLP 8W^2)."""
    rd, D = dims.denoiser, dims.llm.width
    W, n_x, C = rd.width, rd.image_tokens, rd.channels
    per_block = n_x * (D * W + C * W + 12 * W * W) + W * W
    t_embed, out = W * W + W * W, n_x * W * C  # TimestepEmbedding's two layers, output projection
    values = {"B": work.batch, "n_x": n_x, "W": W, "L_d": rd.layers, "D": D, "C": C}
    formula = "2*B*[L_d*(n_x*(D*W + C*W + 12*W^2) + W^2 + 2*n_x^2*W) + 2*W^2 + n_x*W*C]"
    b2 = 2.0 * work.batch
    return Part("denoiser", b2 * (rd.layers * per_block + t_embed + out), b2 * rd.layers * 2 * n_x * n_x * W,
                formula, values, input_free=b2 * (t_embed + rd.layers * n_x * C * W), entry=b2 * rd.layers * n_x * D * W)


# ------------------------------------------------------------------------------------------- totals


def upstream(dims: ModelDims) -> dict[str, tuple[str, ...]]:
    """Parts whose gradients flow through each part (the data path of the model)."""
    cue = ("vision", "projector", "llm") if dims.conditioning == "llm_hidden" else ("vision", "projector")
    denoiser = cue if isinstance(dims.denoiser, RossDims) else cue + ("epigone",)
    return {"vision": (), "projector": ("vision",), "llm": ("vision", "projector"), "epigone": cue,
            "denoiser": denoiser}


def multiplier(name: str, trainable: frozenset[str], ups: dict[str, tuple[str, ...]]) -> int:
    """k: 3 trainable, 2 frozen with a trainable part before it, 1 otherwise."""
    if name in trainable:
        return 3
    return 2 if any(u in trainable for u in ups[name]) else 1


@dataclass
class FlopCount:
    """Per-part FLOPs of one step and their total."""

    parts: list[Part]
    workload: Workload
    trainable: frozenset[str]

    @property
    def total(self) -> float:
        """FLOPs of the step (training: forward + backward; inference: forward)."""
        return sum(p.step for p in self.parts)

    @property
    def forward(self) -> float:
        """FLOPs of the forward pass alone."""
        return sum(p.forward for p in self.parts)

    def by_part(self) -> dict[str, float]:
        """Step FLOPs per part name (the projector named without its type)."""
        return {p.name.split(" ")[0]: p.step for p in self.parts}

    def formula(self) -> str:
        """The counting rule and every part's formula with its values, as printed by the benchmarks."""
        lines = ["FLOPs = sum over parts of k x forward (2 FLOPs per multiply-add; matmuls and attention products",
                 "        only; k = 3 trainable, 2 frozen with gradient passing through, 1 no gradient)"]
        for p in self.parts:
            vals = " ".join(f"{k}={v}" for k, v in p.values.items())
            lines.append(f"  {p.name:<26} k={p.k}  fwd {p.forward / 1e9:12.4f} GFLOP  step {p.step / 1e9:12.4f} GFLOP")
            lines.append(f"      {p.formula}")
            lines.append(f"      {vals}")
        lines.append(f"  total step {self.total / 1e9:.4f} GFLOP (forward {self.forward / 1e9:.4f})")
        return "\n".join(lines)


def count(dims: ModelDims, work: Workload, trainable: frozenset[str] | set[str] | None = None) -> FlopCount:
    """FLOPs of one step of ``work``: a training step when ``trainable`` (the parts the stage trains) is
    given, else an inference forward pass (no reconstruction head, as at inference).

    Parts: vision, projector, llm, and (training with reconstruction) epigone and denoiser.
    """
    training = trainable is not None
    trainable = frozenset(trainable or ())
    parts = [vision_part(dims.vision, work), projector_part(dims, work), llm_part(dims, work)]
    if isinstance(dims.denoiser, RossDims) and training:
        parts.append(ross_denoiser_part(dims, work))  # no Epigone: the LLM's outputs condition it directly
    elif dims.denoiser is not None and training:
        parts += [epigone_part(dims, work), denoiser_part(dims, work)]
    ups = upstream(dims)
    for p in parts:
        name = p.name.split(" ")[0]
        p.k = multiplier(name, trainable, ups)
        p.upstream_trains = any(u in trainable for u in ups[name])
    return FlopCount(parts, work, trainable)
