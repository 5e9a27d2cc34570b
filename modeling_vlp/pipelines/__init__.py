"""Pipelines that know our models, and their registration (`register_pipelines`, run by `import modeling_vlp`).

transformers' zero-shot image classification pipeline picks sigmoid scores (and SigLIP's max-length padding) only
when "siglip" is in the model type, so a `VLPDualEncoderModel` trained with the sigmoid loss would get softmax
scores. `VLPZeroShotImageClassificationPipeline` reads `config.loss_type` instead; it is installed as the
"zero-shot-image-classification" task, and for every other model it behaves exactly as the stock pipeline.

Two tasks transformers does not have (any more) are ours: "image-text-retrieval" (`VLPImageTextRetrievalPipeline`,
every family that ranks) and "visual-question-answering" (`VLPVisualQuestionAnsweringPipeline`, answer classifiers of
the unified and fusion families; transformers 5 removed the task).

The stock "image-text-to-text" pipeline is built for chat models: it requires a text prompt and feeds it through the
processor, whose tokenizer would end the caption with its eos token. `VLPImageTextToTextPipeline` writes captions
for our captioning models (optional prompt) and is the stock pipeline for every other model; "image-to-text", which
transformers 5 redirects to "image-text-to-text", reaches it too.
"""

import logging

from transformers import (
    AutoModelForImageTextToText,
    AutoModelForVisualQuestionAnswering,
    AutoModelForZeroShotImageClassification,
)
from transformers.pipelines import PIPELINE_REGISTRY

from ..registration import AutoModelForImageTextRetrieval
from .captioning import CAPTIONING_TASK, VLPImageTextToTextPipeline
from .common import RETRIEVAL_TASK, VQA_TASK
from .retrieval import VLPImageTextRetrievalPipeline
from .vqa import VLPVisualQuestionAnsweringPipeline
from .zero_shot import TASK, VLPZeroShotImageClassificationPipeline

# --------------------------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------------------------


def _register(task: str, pipeline_class: type, pt_model: tuple, default=None, task_type: str = "multimodal") -> None:
    if PIPELINE_REGISTRY.supported_tasks.get(task, {}).get("impl") is pipeline_class:
        return
    # Overwriting a built-in task logs a warning on every import; it is intended here.
    registry_logger = logging.getLogger("transformers.pipelines.base")
    level = registry_logger.level
    registry_logger.setLevel(logging.ERROR)
    try:
        PIPELINE_REGISTRY.register_pipeline(
            task, pipeline_class=pipeline_class, pt_model=pt_model, default=default, type=task_type
        )
    finally:
        registry_logger.setLevel(level)
    # `register_pipeline` marks the class as custom code, which `Pipeline.save_pretrained` would then write into
    # every saved model's config (`custom_pipelines`) and require `trust_remote_code` to load; it is not custom code
    # for anyone who has `modeling_vlp`, and the model folders carry their own remote code.
    del pipeline_class._registered_impl


class _WarningCategoryArgumentFilter(logging.Filter):
    """transformers 5 logs its "image-to-text has been replaced by image-text-to-text" notice with `UserWarning` as a
    %-argument that the message has no placeholder for, so formatting the record fails and logging prints a traceback
    (or, under pytest, raises). The filter drops such an argument and keeps the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args and all(isinstance(a, type) and issubclass(a, Warning) for a in args):
            record.args = ()
        return True


def register_pipelines() -> None:
    """Install `VLPZeroShotImageClassificationPipeline` as the "zero-shot-image-classification" task and
    `VLPImageTextToTextPipeline` as "image-text-to-text" (keeping the stock tasks' model classes and default models),
    and our "image-text-retrieval" and "visual-question-answering" (alias "vqa") tasks. Idempotent."""
    for task, pipeline_class, auto_class in (
        (TASK, VLPZeroShotImageClassificationPipeline, AutoModelForZeroShotImageClassification),
        (CAPTIONING_TASK, VLPImageTextToTextPipeline, AutoModelForImageTextToText),
    ):
        current = PIPELINE_REGISTRY.supported_tasks.get(task, {})
        _register(
            task, pipeline_class, tuple(current.get("pt") or (auto_class,)), default=current.get("default"),
            task_type=current.get("type", "multimodal"),
        )  # fmt: skip
    _register(RETRIEVAL_TASK, VLPImageTextRetrievalPipeline, (AutoModelForImageTextRetrieval,))
    _register(VQA_TASK, VLPVisualQuestionAnsweringPipeline, (AutoModelForVisualQuestionAnswering,))
    # transformers 5 removed the VQA task and `pipeline()` refuses the name before looking at the registry.
    from transformers.pipelines import REMOVED_TASKS

    for name in (VQA_TASK, "vqa"):
        REMOVED_TASKS.pop(name, None)
    pipelines_logger = logging.getLogger("transformers.pipelines")
    if not any(isinstance(item, _WarningCategoryArgumentFilter) for item in pipelines_logger.filters):
        pipelines_logger.addFilter(_WarningCategoryArgumentFilter())
    PIPELINE_REGISTRY.task_aliases["vqa"] = VQA_TASK
__all__ = [
    "VLPImageTextRetrievalPipeline",
    "VLPImageTextToTextPipeline",
    "VLPVisualQuestionAnsweringPipeline",
    "VLPZeroShotImageClassificationPipeline",
    "register_pipelines",
]
