"""VLSA as transformers classes: the code an export ships in its folder, and its registration with the Auto classes.

The three ``*_vlsa.py`` files import nothing from ``vlsa`` (only transformers, torch, numpy and PIL), so an
exported folder loads with ``trust_remote_code=True`` where this package is not installed. Importing this package
registers the same classes with ``AutoConfig``, ``AutoModelForImageTextToText``, ``AutoImageProcessor`` and
``AutoProcessor``, so where it is installed an export loads without remote code::

    import vlsa.model.hf  # noqa: F401  (registers model type "vlsa")
    model = AutoModelForImageTextToText.from_pretrained(folder)
"""

from pathlib import Path

from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from vlsa.model.hf.configuration_vlsa import VlsaConfig
from vlsa.model.hf.modeling_vlsa import VlsaForConditionalGeneration
from vlsa.model.hf.processing_vlsa import VlsaImageProcessor, VlsaProcessor

CODE_FILES = tuple(Path(__file__).with_name(f"{part}_vlsa.py") for part in ("configuration", "modeling", "processing"))
"""The files an export copies into its folder (the ``auto_map`` entries name them)."""

AUTO_MAP = {
    "AutoConfig": "configuration_vlsa.VlsaConfig",
    "AutoModelForImageTextToText": "modeling_vlsa.VlsaForConditionalGeneration",
}
PROCESSOR_AUTO_MAP = {"AutoProcessor": "processing_vlsa.VlsaProcessor"}
IMAGE_PROCESSOR_AUTO_MAP = {"AutoImageProcessor": "processing_vlsa.VlsaImageProcessor",
                            "AutoProcessor": "processing_vlsa.VlsaProcessor"}


def _register() -> None:
    if VlsaConfig.model_type in CONFIG_MAPPING:  # a reloaded module registers nothing twice
        return
    AutoConfig.register(VlsaConfig.model_type, VlsaConfig)
    AutoModelForImageTextToText.register(VlsaConfig, VlsaForConditionalGeneration)
    AutoImageProcessor.register(VlsaConfig, image_processor_classes={"pil": VlsaImageProcessor,
                                                                 "torchvision": VlsaImageProcessor})
    AutoProcessor.register(VlsaConfig, VlsaProcessor)


_register()

__all__ = ["VlsaConfig", "VlsaForConditionalGeneration", "VlsaImageProcessor", "VlsaProcessor", "CODE_FILES"]
