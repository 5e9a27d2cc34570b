"""Registration of our configs, models and processors with transformers.

Two registrations happen: with the Auto mappings of this Python (so `AutoModel.from_pretrained(dir)` /
`AutoProcessor.from_pretrained(dir)` resolve our classes once `modeling_vlp` is imported), and
`register_for_auto_class` (so `save_pretrained` writes `auto_map` and copies the code files, and
`trust_remote_code=True` loads a checkpoint where the package is not installed).

Pipelines are registered by `modeling_vlp.pipelines.register_pipelines` (which loads the "image-text-retrieval"
models through `AutoModelForImageTextRetrieval`, defined here); `import modeling_vlp` does both.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    AutoModelForVisualQuestionAnswering,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
    AutoTokenizer,
)

from .configuration_captioning import VLPCaptioningConfig
from .configuration_fusion import VLPFusionConfig
from .configuration_unified import VLPUnifiedConfig
from .configuration_vlp import VLPDualEncoderConfig, VLPTextConfig, VLPVisionConfig
from .modeling_captioning import VLPCaptioningModel, VLPForConditionalGeneration
from .modeling_dual_encoder import VLPDualEncoderModel, VLPTextModel, VLPVisionModel
from . import modeling_fusion as fusion
from . import modeling_unified as unified
from .modeling_fusion_retrieval import VLPFusionForImageTextRetrieval
from .processors.image_processing_vlp import VLPImageProcessor
from .processors.processing_vlp import VLPProcessor
from .processors.tokenization_vlp import VLPTokenizer
from .transformers_compat import AutoModelFactoryBase, empty_auto_mapping

_registered = False

# Every model class of ours by name (what a saved config's `architectures` lists).
MODEL_CLASSES: dict[str, type] = {
    model_class.__name__: model_class
    for model_class in (
        VLPVisionModel, VLPTextModel, VLPDualEncoderModel,
        unified.VLPUnifiedModel, unified.VLPUnifiedForPreTraining, unified.VLPUnifiedForQuestionAnswering,
        unified.VLPUnifiedForImageTextRetrieval,
        fusion.VLPFusionModel, fusion.VLPFusionForPreTraining, fusion.VLPFusionForQuestionAnswering,
        VLPFusionForImageTextRetrieval,
        VLPCaptioningModel, VLPForConditionalGeneration,
    )
}  # fmt: skip


class AutoModelForImageTextRetrieval(AutoModelFactoryBase):
    """Auto class of the "image-text-retrieval" pipeline (transformers has no such task): the dual encoder itself,
    and the fusion and unified families' `ForImageTextRetrieval` heads. Those read the `vlp.*` and `itm_head.*`
    weights of a pretraining checkpoint under the same names, so a `ForPreTraining` checkpoint loads with its ITM
    head (its MLM / MIM heads are left out).

    Only for Python with `modeling_vlp` installed: it is not a transformers class, so a saved checkpoint's `auto_map`
    does not name it (use `VLP*ForImageTextRetrieval` with `trust_remote_code` instead)."""

    # No built-in entries: `register_auto_classes` registers ours into the mapping's extra content.
    _model_mapping = empty_auto_mapping()


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
    for config_class, model_class in (
        (VLPDualEncoderConfig, VLPDualEncoderModel),
        (VLPFusionConfig, VLPFusionForImageTextRetrieval),
        (VLPUnifiedConfig, unified.VLPUnifiedForImageTextRetrieval),
    ):
        AutoModelForImageTextRetrieval.register(config_class, model_class, exist_ok=True)
    # Families with heads: one class per Auto class. Saved checkpoints list every one of them in `auto_map`
    # (`VLPPreTrainedModel.save_pretrained`), whichever class saved them.
    for config_class, auto_classes in (
        (
            VLPUnifiedConfig,
            {
                AutoModel: unified.VLPUnifiedModel,
                AutoModelForPreTraining: unified.VLPUnifiedForPreTraining,
                AutoModelForMaskedLM: unified.VLPUnifiedForPreTraining,
                AutoModelForVisualQuestionAnswering: unified.VLPUnifiedForQuestionAnswering,
            },
        ),
        (
            VLPFusionConfig,
            {
                AutoModel: fusion.VLPFusionModel,
                AutoModelForPreTraining: fusion.VLPFusionForPreTraining,
                AutoModelForMaskedLM: fusion.VLPFusionForPreTraining,
                AutoModelForVisualQuestionAnswering: fusion.VLPFusionForQuestionAnswering,
            },
        ),
        (VLPCaptioningConfig, {AutoModel: VLPCaptioningModel, AutoModelForImageTextToText: VLPForConditionalGeneration}),
    ):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        config_class.register_for_auto_class()
        for auto_class, model_class in auto_classes.items():
            auto_class.register(config_class, model_class, exist_ok=True)
            if getattr(model_class, "_auto_class", None) is None:
                model_class.register_for_auto_class(auto_class.__name__)


def _register_processors() -> None:
    # transformers 5 keys image processors by backend; ours is PIL-based whichever backend is asked for.
    image_processor_classes = {"pil": VLPImageProcessor, "torchvision": VLPImageProcessor}
    for config_class in (VLPVisionConfig, VLPDualEncoderConfig, VLPUnifiedConfig, VLPFusionConfig, VLPCaptioningConfig):
        AutoImageProcessor.register(config_class, image_processor_classes=image_processor_classes, exist_ok=True)
    for config_class in (VLPTextConfig, VLPDualEncoderConfig, VLPUnifiedConfig, VLPFusionConfig, VLPCaptioningConfig):
        # transformers 5: one `tokenizer_class` (the slow/fast pair arguments are deprecated).
        AutoTokenizer.register(config_class, tokenizer_class=VLPTokenizer, exist_ok=True)
    for config_class in (VLPDualEncoderConfig, VLPUnifiedConfig, VLPFusionConfig, VLPCaptioningConfig):
        AutoProcessor.register(config_class, VLPProcessor, exist_ok=True)
    VLPImageProcessor.register_for_auto_class("AutoImageProcessor")
    VLPTokenizer.register_for_auto_class("AutoTokenizer")
    VLPProcessor.register_for_auto_class("AutoProcessor")


def register_auto_classes() -> None:
    global _registered
    if _registered:
        return
    _register_models()
    _register_processors()
    _registered = True


__all__ = ["MODEL_CLASSES", "AutoModelForImageTextRetrieval", "register_auto_classes"]
