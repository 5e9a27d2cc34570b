"""modeling_vlp: vision-language pretraining models for transformers.

Importing the package registers every config, model and processor with the transformers Auto classes.
"""

from .version_check import check_transformers_version


check_transformers_version()  # one clear line for an unsupported transformers, before any model code runs

from .configuration_vlp import (
    PRESETS,
    VLPCaptioningConfig,
    VLPDualEncoderConfig,
    VLPFusionConfig,
    VLPTextConfig,
    VLPUnifiedConfig,
    VLPVisionConfig,
    get_preset_config,
    preset_names,
)
from .modeling_captioning import (
    VLPCaptioningModel,
    VLPCaptioningOutput,
    VLPForConditionalGeneration,
)
from .modeling_dual_encoder import VLPDualEncoderModel, VLPDualEncoderOutput, VLPTextModel, VLPVisionModel
from .modeling_fusion import (
    VLPFusionForImageTextRetrieval,
    VLPFusionForPreTraining,
    VLPFusionForQuestionAnswering,
    VLPFusionModel,
    rerank_retrieval,
)
from .modeling_unified import (
    VLPUnifiedForImageTextRetrieval,
    VLPUnifiedForPreTraining,
    VLPUnifiedForQuestionAnswering,
    VLPUnifiedModel,
)
from .pipelines import (
    VLPImageTextRetrievalPipeline,
    VLPImageTextToTextPipeline,
    VLPVisualQuestionAnsweringPipeline,
    VLPZeroShotImageClassificationPipeline,
)
from .registration import AutoModelForImageTextRetrieval, register_auto_classes


register_auto_classes()

__version__ = "0.1.0"
