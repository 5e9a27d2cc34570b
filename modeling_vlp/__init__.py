"""modeling_vlp: vision-language pretraining models for transformers.

Importing the package registers every config, model, processor and pipeline with transformers (Auto classes and
`PIPELINE_REGISTRY`). The layout, and which part may import which, is in ARCHITECTURE.md.
"""

from .version_check import check_transformers_version

check_transformers_version()  # one clear line for an unsupported transformers, before any model code runs

from .configuration_captioning import VLPCaptioningConfig  # noqa: E402
from .configuration_fusion import VLPFusionConfig  # noqa: E402
from .configuration_unified import VLPUnifiedConfig  # noqa: E402
from .configuration_vlp import VLPDualEncoderConfig, VLPTextConfig, VLPVisionConfig  # noqa: E402
from .evaluation.rerank import VLPRerankedRetrieval, rerank_retrieval  # noqa: E402
from .families import FAMILIES  # noqa: E402
from .modeling_captioning import (  # noqa: E402
    VLPCaptioningModel,
    VLPCaptioningOutput,
    VLPForConditionalGeneration,
)
from .modeling_dual_encoder import (  # noqa: E402
    VLPDualEncoderModel,
    VLPDualEncoderOutput,
    VLPTextModel,
    VLPVisionModel,
)
from .modeling_fusion import (  # noqa: E402
    VLPFusionForPreTraining,
    VLPFusionForQuestionAnswering,
    VLPFusionModel,
)
from .modeling_fusion_retrieval import VLPFusionForImageTextRetrieval  # noqa: E402
from .modeling_unified import (  # noqa: E402
    VLPUnifiedForImageTextRetrieval,
    VLPUnifiedForPreTraining,
    VLPUnifiedForQuestionAnswering,
    VLPUnifiedModel,
)
from .pipelines import (  # noqa: E402
    VLPImageTextRetrievalPipeline,
    VLPImageTextToTextPipeline,
    VLPVisualQuestionAnsweringPipeline,
    VLPZeroShotImageClassificationPipeline,
    register_pipelines,
)
from .presets import PRESETS, get_preset_config, preset_names  # noqa: E402
from .registration import AutoModelForImageTextRetrieval, register_auto_classes  # noqa: E402
from .training import (  # noqa: E402
    VLPCollator,
    VLPObjectiveArguments,
    VLPPretrainingCollator,
    VLPReportingTrainer,
    VLPTrainer,
)

register_auto_classes()
register_pipelines()

__version__ = "0.1.0"

__all__ = [
    "FAMILIES",
    "PRESETS",
    "AutoModelForImageTextRetrieval",
    "VLPCaptioningConfig",
    "VLPCaptioningModel",
    "VLPCaptioningOutput",
    "VLPCollator",
    "VLPDualEncoderConfig",
    "VLPDualEncoderModel",
    "VLPDualEncoderOutput",
    "VLPForConditionalGeneration",
    "VLPFusionConfig",
    "VLPFusionForImageTextRetrieval",
    "VLPFusionForPreTraining",
    "VLPFusionForQuestionAnswering",
    "VLPFusionModel",
    "VLPImageTextRetrievalPipeline",
    "VLPImageTextToTextPipeline",
    "VLPObjectiveArguments",
    "VLPPretrainingCollator",
    "VLPRerankedRetrieval",
    "VLPReportingTrainer",
    "VLPTextConfig",
    "VLPTextModel",
    "VLPTrainer",
    "VLPUnifiedConfig",
    "VLPUnifiedForImageTextRetrieval",
    "VLPUnifiedForPreTraining",
    "VLPUnifiedForQuestionAnswering",
    "VLPUnifiedModel",
    "VLPVisionConfig",
    "VLPVisionModel",
    "VLPVisualQuestionAnsweringPipeline",
    "VLPZeroShotImageClassificationPipeline",
    "get_preset_config",
    "preset_names",
    "register_auto_classes",
    "register_pipelines",
    "rerank_retrieval",
]
