"""Configuration of a VLSA model exported for ``transformers`` (shipped in the export folder; imports no ``vlsa``).

The vision tower and the language model keep their own configs (``vision_config``, ``text_config``), as LLaVA's
do; the SA-Perceiver's switches and the compressive encoding's geometry sit beside them. Written for
transformers 5.x (composite configs declare their sub-configs with ``SubConfigSpec``).
"""

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


class VlsaConfig(PreTrainedConfig):
    """Vision tower -> SA-Perceiver -> language model.

    ``image_token_id``: the ``<image>`` token the processor repeats ``image_seq_length`` times (l, the patch tokens of
    one view) and the model fills with the perceiver's outputs. ``vision_feature_layer``: the hidden state whose patch
    tokens feed the perceiver (LLaVA's penultimate layer by default). ``perceiver_*``: the SA-Perceiver's heads and
    ablation switches (``self_attention`` Eq. 2 on/off, ``full_projections``, ``global_embedding`` query or pool).
    """

    model_type = "vlsa"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 0
    image_seq_length: int = 576
    vision_feature_layer: int = -2
    perceiver_heads: int = 16
    perceiver_self_attention: bool = True
    perceiver_full_projections: bool = False
    perceiver_global_embedding: str = "query"
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # the LLM's own tying decides (as LLaVA's config forwards it)
        if not self.tie_word_embeddings and self.text_config.tie_word_embeddings:
            self.tie_word_embeddings = self.text_config.tie_word_embeddings


__all__ = ["VlsaConfig"]
