"""Registration of our configs, models and processors with the transformers Auto classes.

Two registrations happen: with the Auto mappings of this Python (so `AutoModel.from_pretrained(dir)` resolves our
classes once `modeling_vlp` is imported), and `register_for_auto_class` (so `save_pretrained` writes `auto_map` and
copies the code files, and `trust_remote_code=True` loads a checkpoint where the package is not installed).
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForZeroShotImageClassification,
)

from .configuration_vlp import VLPDualEncoderConfig, VLPTextConfig, VLPVisionConfig
from .modeling_dual_encoder import VLPDualEncoderModel, VLPTextModel, VLPVisionModel


_registered = False


def register_auto_classes() -> None:
    global _registered
    if _registered:
        return
    for config_class, model_class in (
        (VLPVisionConfig, VLPVisionModel),
        (VLPTextConfig, VLPTextModel),
        (VLPDualEncoderConfig, VLPDualEncoderModel),
    ):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, model_class, exist_ok=True)
        config_class.register_for_auto_class()
        model_class.register_for_auto_class("AutoModel")
    AutoModelForZeroShotImageClassification.register(VLPDualEncoderConfig, VLPDualEncoderModel, exist_ok=True)
    _registered = True
