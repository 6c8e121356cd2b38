"""A VLSA model for ``transformers``: vision tower -> SA-Perceiver -> language model (shipped in the export folder;
imports no ``vlsa``).

Laid out as transformers' LLaVA (``model.vision_tower``, ``model.multi_modal_projector``, ``model.language_model``,
``lm_head``), so tools that know LLaVA's layout find their way. The processor puts ``image_seq_length`` (l)
``<image>`` tokens per image into ``input_ids``; the model fills them with the SA-Perceiver's l tokens, which gather
each image's high-resolution tiles (``pixel_values_hi`` (N, M, 3, s, s), real tiles marked by ``tile_mask`` (N, M))
into its low-resolution view (``pixel_values`` (N, 3, s, s)). The perceiver is Eq. 1-2 of the VLSA paper, with the
same parameter names as the training code, so the weights map one to one.
"""


import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_vlsa import VlsaConfig


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)  # (B, h, T, d_h)


def _attend(q, k, v, heads: int, key_mask=None) -> torch.Tensor:
    """Multi-head softmax(Q K^T / sqrt(d_h)) V over (B, T, d) inputs; ``key_mask`` (B, S) True = attend."""
    mask = None if key_mask is None else key_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(_heads(q, heads), _heads(k, heads), _heads(v, heads), attn_mask=mask)
    b, h, t, dh = out.shape
    return out.transpose(1, 2).reshape(b, t, h * dh)


class VlsaPerceiver(nn.Module):
    """SA-Perceiver: cross-attention of [V_Lo; q] to the tiles (Eq. 1), self-attention to the LLM width (Eq. 2)."""

    def __init__(self, config: VlsaConfig) -> None:
        super().__init__()
        d, D = config.vision_config.hidden_size, config.text_config.hidden_size
        self.heads, self.self_attention = config.perceiver_heads, config.perceiver_self_attention
        self.full_projections = config.perceiver_full_projections
        self.global_embedding = config.perceiver_global_embedding
        if self.global_embedding == "query":
            self.query = nn.Parameter(torch.randn(1, d) * d**-0.5)
        self.w_q, self.w_kv, self.w_o1 = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        if self.self_attention:
            self.w_k = nn.Linear(d, d)
        self.w_o2 = nn.Linear(d, D)
        if self.full_projections:
            self.w_v1 = nn.Linear(d, d)
            if self.self_attention:
                self.w_q2, self.w_v2 = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, v_lo: torch.Tensor, v_hi: torch.Tensor, hi_mask: torch.Tensor) -> torch.Tensor:
        """V (B, l, D) from v_lo (B, l, d), v_hi (B, M*l, d) and hi_mask (B, M*l)."""
        b, l, _ = v_lo.shape
        x = v_lo
        if self.global_embedding == "query":
            x = torch.cat([v_lo, self.query.expand(b, 1, -1).to(v_lo.dtype)], dim=1)  # (B, l+1, d)
        keys = self.w_kv(v_hi)
        values = self.w_v1(v_hi) if self.full_projections else keys
        x = F.silu(self.w_o1(_attend(self.w_q(x), keys, values, self.heads, hi_mask))) + x
        if self.self_attention:
            q = self.w_q2(x) if self.full_projections else x
            v = self.w_v2(x) if self.full_projections else x
            x = self.w_o2(_attend(q, self.w_k(x), v, self.heads))
        else:
            x = self.w_o2(x)
        return x[:, :l]  # the query token (P) conditions the training-only denoiser: not for the LLM


class VlsaPreTrainedModel(PreTrainedModel):
    config: VlsaConfig
    config_class = VlsaConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, VlsaPerceiver) and hasattr(module, "query"):
            nn.init.normal_(module.query, std=module.query.shape[-1] ** -0.5)


class VlsaModel(VlsaPreTrainedModel):
    """The vision tower, the SA-Perceiver and the language model's decoder (no LM head)."""

    def __init__(self, config: VlsaConfig) -> None:
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = VlsaPerceiver(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    @property
    def num_patches(self) -> int:
        vision = self.config.vision_config
        return (vision.image_size // vision.patch_size) ** 2

    def get_image_features(self, pixel_values, pixel_values_hi, tile_mask=None) -> torch.Tensor:
        """The l visual tokens of each of N images, (N, l, D)."""
        n, m = pixel_values_hi.shape[:2]
        if tile_mask is None:
            tile_mask = torch.ones(n, m, dtype=torch.bool, device=pixel_values_hi.device)
        tile_mask = tile_mask.bool()
        l = self.num_patches
        pixels = torch.cat([pixel_values, pixel_values_hi[tile_mask]]).to(self.vision_tower.dtype)
        hidden = self.vision_tower(pixels, output_hidden_states=True).hidden_states[self.config.vision_feature_layer]
        feats = hidden[:, -l:]  # patch tokens only (CLIP's class token dropped)
        v_hi = feats.new_zeros(n, m, l, feats.shape[-1])
        v_hi[tile_mask] = feats[n:]
        hi_mask = tile_mask.repeat_interleave(l, dim=1)  # (N, M*l)
        return self.multi_modal_projector(feats[:n], v_hi.view(n, m * l, -1), hi_mask)

    def forward(self, input_ids=None, pixel_values=None, pixel_values_hi=None, tile_mask=None, attention_mask=None,
                position_ids=None, past_key_values=None, inputs_embeds=None, image_sizes=None, **kwargs):
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            if pixel_values_hi is None:
                raise ValueError("VLSA needs pixel_values_hi (N, M, 3, s, s), the image tiles, with pixel_values")
            features = self.get_image_features(pixel_values, pixel_values_hi, tile_mask)
            features = features.reshape(-1, features.shape[-1]).to(inputs_embeds.device, inputs_embeds.dtype)
            mask = input_ids == self.config.image_token_id  # (B, T)
            if int(mask.sum()) != features.shape[0]:
                raise ValueError(f"Image features and image tokens do not match, tokens: {int(mask.sum())}, "
                                 f"features: {features.shape[0]}")
            inputs_embeds = inputs_embeds.masked_scatter(mask[..., None], features)
        return self.language_model(attention_mask=attention_mask, position_ids=position_ids,
                                   past_key_values=past_key_values, inputs_embeds=inputs_embeds, **kwargs)


class VlsaForConditionalGeneration(VlsaPreTrainedModel, GenerationMixin):
    """VLSA with the language model's head: ``generate(**processor(images=..., text=...))``."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: VlsaConfig) -> None:
        super().__init__(config)
        self.model = VlsaModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, pixel_values=None, pixel_values_hi=None, tile_mask=None, attention_mask=None,
                position_ids=None, past_key_values=None, inputs_embeds=None, labels=None, image_sizes=None,
                logits_to_keep: int = 0, **kwargs) -> CausalLMOutputWithPast:
        out = self.model(input_ids=input_ids, pixel_values=pixel_values, pixel_values_hi=pixel_values_hi,
                         tile_mask=tile_mask, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past_key_values, inputs_embeds=inputs_embeds, **kwargs)
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                      hidden_states=out.hidden_states, attentions=out.attentions)

    def prepare_inputs_for_generation(self, input_ids, pixel_values=None, pixel_values_hi=None, tile_mask=None,
                                      image_sizes=None, is_first_iteration=False, **kwargs):
        inputs = super().prepare_inputs_for_generation(input_ids, is_first_iteration=is_first_iteration, **kwargs)
        if is_first_iteration or not kwargs.get("use_cache", True):  # the images enter with the prompt only
            inputs.update(pixel_values=pixel_values, pixel_values_hi=pixel_values_hi, tile_mask=tile_mask)
        return inputs


__all__ = ["VlsaPerceiver", "VlsaPreTrainedModel", "VlsaModel", "VlsaForConditionalGeneration"]
