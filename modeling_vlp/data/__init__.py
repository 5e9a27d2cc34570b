"""Image-text data: the embedded synthetic scenes (captions, VQA questions, synthetic detector regions) in `scenes`,
the loaders of local corpora (imagefolder, parquet, webdataset shards, `save_to_disk`, region features) in `local`,
and VQA answer normalisation in `answers`."""

from .answers import normalize_vqa_answer
from .local import (
    load_image_text_dataset,
    load_region_text_dataset,
    pick_eval_split,
    read_region_column,
)
from .scenes import (
    IGNORE_REGION_LABEL,
    VQA_NUM_ANNOTATORS,
    make_scenes_dataset,
    make_scenes_vqa_dataset,
    scene_class_names,
    scene_region_features,
    vqa_answer_vocabulary,
)

__all__ = [
    "IGNORE_REGION_LABEL",
    "VQA_NUM_ANNOTATORS",
    "load_image_text_dataset",
    "load_region_text_dataset",
    "make_scenes_dataset",
    "make_scenes_vqa_dataset",
    "normalize_vqa_answer",
    "pick_eval_split",
    "read_region_column",
    "scene_class_names",
    "scene_region_features",
    "vqa_answer_vocabulary",
]
