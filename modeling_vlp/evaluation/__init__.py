"""Evaluation, written once in plain torch: ranks and Recall@k (`ranking`), dual-encoder embeddings, zero-shot and
retrieval (`embeddings`), ITM matching and the fusion re-rank (`matching`), VQA accuracy (`vqa`), captioning metrics
(`captioning`), the PNG reports (`visualize`) and the `evaluate` modules over these functions (`metrics`)."""

from .captioning import (
    DEFAULT_CAPTION_TOKENS,
    caption_metrics,
    caption_references,
    caption_token_budget,
    coco_tokenize,
    evaluate_captioning,
    generate_captions,
)
from .clip_benchmark import load_modeling_vlp, to_clip_benchmark_metrics
from .embeddings import (
    build_zero_shot_classifier,
    encode_images,
    encode_texts,
    evaluate_dual_encoder,
    retrieval_texts,
)
from .matching import (
    VISUAL_INPUT_NAMES,
    evaluate_fusion_retrieval,
    evaluate_image_text_matching,
    fusion_rerank_scores,
    image_text_match_matrix,
    image_text_match_scores,
)
from .ranking import (
    retrieval_chance_levels,
    retrieval_metrics,
    topk_accuracy,
    zero_shot_accuracy,
)
from .visualize import (
    BACKGROUND,
    CORRECT,
    HEAT_HIGH,
    HEAT_LOW,
    MUTED,
    TEXT,
    WRONG,
    caption_grid,
    confusion_matrix,
    confusion_matrix_image,
    retrieval_grid,
    vqa_grid,
)
from .vqa import (
    evaluate_vqa,
    vqa_accuracy,
    vqa_compute_metrics,
    vqa_metrics,
    vqa_predictions,
    vqa_score,
    vqa_soft_score_accuracy,
)

__all__ = [
    "BACKGROUND",
    "CORRECT",
    "DEFAULT_CAPTION_TOKENS",
    "HEAT_HIGH",
    "HEAT_LOW",
    "MUTED",
    "TEXT",
    "VISUAL_INPUT_NAMES",
    "WRONG",
    "build_zero_shot_classifier",
    "caption_grid",
    "caption_metrics",
    "caption_references",
    "caption_token_budget",
    "coco_tokenize",
    "confusion_matrix",
    "confusion_matrix_image",
    "encode_images",
    "encode_texts",
    "evaluate_captioning",
    "evaluate_dual_encoder",
    "evaluate_fusion_retrieval",
    "evaluate_image_text_matching",
    "evaluate_vqa",
    "fusion_rerank_scores",
    "generate_captions",
    "image_text_match_matrix",
    "image_text_match_scores",
    "load_modeling_vlp",
    "retrieval_chance_levels",
    "retrieval_grid",
    "retrieval_metrics",
    "retrieval_texts",
    "to_clip_benchmark_metrics",
    "topk_accuracy",
    "vqa_accuracy",
    "vqa_compute_metrics",
    "vqa_grid",
    "vqa_metrics",
    "vqa_predictions",
    "vqa_score",
    "vqa_soft_score_accuracy",
    "zero_shot_accuracy",
]
