"""Training: `VLPTrainer` (a transformers `Trainer`, `trainer`), each family's objectives (`family_objectives`) and
their global-batch parts (`objectives`), the data collators and masking (`collators`, `masking`), momentum distillation (`momentum`), a
contrastive batch larger than memory (`accumulation`, `--accum-freq`) and the torch.distributed helpers
(`distributed`)."""

from .accumulation import accumulate_contrastive_gradients, split_batch
from .collators import (
    VLPCollator,
    VLPPretrainingCollator,
    VLPQuestionAnsweringCollator,
    collate_region_columns,
    random_resized_crop,
)
from .distributed import (
    all_gather_features,
    all_gather_object_list,
    all_gather_padded,
    get_rank,
    get_world_size,
    is_distributed,
)
from .masking import (
    mask_tokens_for_mlm,
    patch_valid_mask,
    random_patch_mask,
    random_region_mask,
)
from .momentum import (
    MOMENTUM_STATE_NAME,
    MomentumDistiller,
    soft_cross_entropy,
)
from .objectives import (
    contrastive_loss,
    sample_hard_negatives,
    sample_itm_negatives,
)
from .family_objectives import (
    Objective,
    VLPObjectiveArguments,
    captioning_itc_objective,
    compute_objective_losses,
    fusion_itc_objective,
    fusion_itm_objective,
    fusion_mlm_objective,
    itc_objective,
    model_loss,
    prepare_itm_pairs,
    prepare_lm_labels,
    resolve_objectives,
)
from .trainer import VLPReportingTrainer, VLPTrainer

__all__ = [
    "MOMENTUM_STATE_NAME",
    "MomentumDistiller",
    "Objective",
    "VLPCollator",
    "VLPObjectiveArguments",
    "VLPPretrainingCollator",
    "VLPQuestionAnsweringCollator",
    "VLPReportingTrainer",
    "VLPTrainer",
    "accumulate_contrastive_gradients",
    "all_gather_features",
    "all_gather_object_list",
    "all_gather_padded",
    "captioning_itc_objective",
    "collate_region_columns",
    "compute_objective_losses",
    "contrastive_loss",
    "fusion_itc_objective",
    "fusion_itm_objective",
    "fusion_mlm_objective",
    "get_rank",
    "get_world_size",
    "is_distributed",
    "itc_objective",
    "mask_tokens_for_mlm",
    "model_loss",
    "patch_valid_mask",
    "prepare_itm_pairs",
    "prepare_lm_labels",
    "random_patch_mask",
    "random_region_mask",
    "random_resized_crop",
    "resolve_objectives",
    "sample_hard_negatives",
    "sample_itm_negatives",
    "soft_cross_entropy",
    "split_batch",
]
