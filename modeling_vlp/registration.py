"""Registration of our configs, models, processors and pipelines with transformers.

Two registrations happen: with the Auto mappings of this Python (so `AutoModel.from_pretrained(dir)` /
`AutoProcessor.from_pretrained(dir)` resolve our classes once `modeling_vlp` is imported), and
`register_for_auto_class` (so `save_pretrained` writes `auto_map` and copies the code files, and
`trust_remote_code=True` loads a checkpoint where the package is not installed).

The zero-shot image classification pipeline is replaced by a subclass that also knows our sigmoid-loss models
(see `pipelines.py`); every other model gets the stock behaviour.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
    AutoTokenizer,
)

from .configuration_vlp import VLPDualEncoderConfig, VLPTextConfig, VLPVisionConfig
from .modeling_dual_encoder import VLPDualEncoderModel, VLPTextModel, VLPVisionModel
from .processors.image_processing_vlp import VLPImageProcessor
from .processors.processing_vlp import VLPProcessor
from .processors.tokenization_vlp import VLPTokenizer


_registered = False


def _register_models() -> None:
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


def _register_processors() -> None:
    # transformers 5 keys image processors by backend; ours is PIL-based whichever backend is asked for.
    image_processor_classes = {"pil": VLPImageProcessor, "torchvision": VLPImageProcessor}
    for config_class in (VLPVisionConfig, VLPDualEncoderConfig):
        AutoImageProcessor.register(config_class, image_processor_classes=image_processor_classes, exist_ok=True)
    for config_class in (VLPTextConfig, VLPDualEncoderConfig):
        # transformers 5: one `tokenizer_class` (the slow/fast pair arguments are deprecated).
        AutoTokenizer.register(config_class, tokenizer_class=VLPTokenizer, exist_ok=True)
    AutoProcessor.register(VLPDualEncoderConfig, VLPProcessor, exist_ok=True)
    VLPImageProcessor.register_for_auto_class("AutoImageProcessor")
    VLPTokenizer.register_for_auto_class("AutoTokenizer")
    VLPProcessor.register_for_auto_class("AutoProcessor")


def register_auto_classes() -> None:
    global _registered
    if _registered:
        return
    _register_models()
    _register_processors()
    from .pipelines import register_pipelines

    register_pipelines()
    _registered = True
