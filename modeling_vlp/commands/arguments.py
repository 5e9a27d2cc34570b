"""The options of `vlp pretrain` (shared by `vlp finetune` and `vlp evaluate`), the CPU-sized training defaults and
`run_subcommand`, the dispatch of `vlp COMMAND` and `vlp convert SOURCE_KIND`."""

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..families import FAMILIES
from ..presets import preset_names


@dataclass
class PretrainArguments:
    """Options of `vlp pretrain` besides transformers' `TrainingArguments`."""

    family: str = field(default="dual", metadata={"help": "Model family.", "choices": sorted(FAMILIES)})
    model: str | None = field(
        default=None,
        metadata={
            "help": "Start from this checkpoint (a folder saved by vlp pretrain / vlp convert / save_pretrained, or a "
            "Hub repo id) and its processor: the family comes from its config.json (model_type), the architecture, "
            "image size and text length from its config and processor, so --preset and the architecture options "
            "cannot be given. A base model without heads gets fresh heads (the log says so)."
        },
    )
    preset: str | None = field(
        default=None,
        metadata={"help": f"Architecture preset (default: the family's CPU preset, dual-small): {preset_names()}."},
    )
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "Image-text corpus: imagefolder with metadata.jsonl/csv, parquet, webdataset .tar shards, a "
            "save_to_disk folder, or webdataset URL patterns as open_clip's --train-data ('DIR/{00000..00999}.tar', "
            "several joined with '::', 'pipe:COMMAND'), which are streamed. Default: the embedded scenes dataset."
        },
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read --dataset as a stream, without loading or caching it first (parquet, imagefolder through "
            "datasets' streaming; webdataset shards and URL patterns always stream)."
        },
    )
    dataset_resampled: bool = field(
        default=False,
        metadata={"help": "Draw the shards of each pass with replacement (open_clip's --dataset-resampled)."},
    )
    train_num_samples: int | None = field(
        default=None,
        metadata={"help": "Rows of one epoch of a streamed --dataset (open_clip's --train-num-samples), for the logs."},
    )
    dataset_weights: str | None = field(
        default=None,
        metadata={
            "help": "Mix the '::'-separated sources of --dataset with these weights, '::'- or comma-separated "
            "(e.g. --dataset 'a/{0..9}.tar::b/{0..4}.tar' --dataset-weights 1::3)."
        },
    )
    shuffle_buffer: int = field(
        default=1000, metadata={"help": "Samples shuffled together inside each shard of a streamed --dataset."}
    )
    max_bad_fraction: float = field(
        default=0.05,
        metadata={
            "help": "Stop when more than this share of the training rows read (judged after 1000) cannot be used "
            "(undecodable or missing image, empty or non-text caption); such rows are skipped and counted."
        },
    )
    image_column: str | None = field(default=None, metadata={"help": "Image column of --dataset (default: detected)."})
    text_column: str | None = field(default=None, metadata={"help": "Caption column of --dataset (default: detected)."})
    num_train: int = field(default=6000, metadata={"help": "Training examples of the embedded scenes dataset."})
    num_validation: int = field(
        default=500,
        metadata={
            "help": "Validation examples of the embedded dataset; with a --dataset that has no validation or test "
            "split, the number of training rows held out for evaluation."
        },
    )
    # Architecture overrides of the preset.
    image_size: int | None = field(default=None, metadata={"help": "Input image side (a multiple of the patch size)."})
    patch_size: int | None = field(default=None, metadata={"help": "ViT patch size."})
    vision_layers: int | None = field(default=None, metadata={"help": "Transformer layers of the image tower."})
    vision_width: int | None = field(default=None, metadata={"help": "Hidden size of the image tower (MLP: 4x)."})
    vision_heads: int | None = field(default=None, metadata={"help": "Attention heads of the image tower."})
    text_layers: int | None = field(default=None, metadata={"help": "Transformer layers of the text tower."})
    text_width: int | None = field(default=None, metadata={"help": "Hidden size of the text tower (MLP: 4x)."})
    text_heads: int | None = field(default=None, metadata={"help": "Attention heads of the text tower."})
    max_text_length: int | None = field(
        default=None, metadata={"help": "Longest caption in tokens (the text tower's position embeddings)."}
    )
    layers: int | None = field(default=None, metadata={"help": "Transformer layers of a single-stream (unified) model."})
    width: int | None = field(default=None, metadata={"help": "Hidden size of a single-stream model (MLP: 4x)."})
    heads: int | None = field(default=None, metadata={"help": "Attention heads of a single-stream model."})
    fusion_layers: int | None = field(default=None, metadata={"help": "Fusion layers of a fusion-encoder model."})
    projection_dim: int | None = field(default=None, metadata={"help": "Dimension of the shared embedding space."})
    loss_type: str | None = field(
        default=None,
        metadata={
            "help": "Contrastive loss: softmax (CLIP) or sigmoid (SigLIP). Default: the preset's.",
            "choices": ["softmax", "sigmoid"],
        },
    )
    # Objectives.
    objectives: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Objectives to train, space- or comma-separated (itc; itm, mlm, mim; lm). Default: the family's "
            "(dual: itc; unified: itm mlm; captioning: lm, with a CoCa preset such as coca-small: itc lm)."
        },
    )
    objective_weights: list[str] = field(
        default_factory=list,
        metadata={"help": "Weights as NAME=WEIGHT (e.g. itm=1.0,mlm=0.5); unlisted objectives weigh 1."},
    )
    itm_negative_ratio: float = field(
        default=0.5, metadata={"help": "Share of rows paired with another image's caption for ITM (unified)."}
    )
    mlm_probability: float = field(default=0.15, metadata={"help": "Share of caption tokens masked for MLM."})
    mim_ratio: float = field(default=0.4, metadata={"help": "Share of patches or regions masked for MIM."})
    momentum_distill: bool = field(
        default=False,
        metadata={"help": "Fusion family: ALBEF's momentum distillation (EMA teacher, soft ITC/MLM targets, queue)."},
    )
    momentum: float = field(default=0.995, metadata={"help": "EMA decay of the momentum teacher per step."})
    distill_alpha: float = field(default=0.4, metadata={"help": "Weight of the teacher's soft targets."})
    distill_warmup_steps: int | None = field(
        default=None,
        metadata={"help": "Optimizer steps over which the soft targets' weight ramps from 0 (ALBEF; default one epoch)."},
    )
    queue_size: int = field(default=4096, metadata={"help": "Teacher features kept as extra ITC negatives."})
    local_loss: bool = field(
        default=False, metadata={"help": "Contrastive loss over the local rows of the global similarity matrix only."}
    )
    gather_with_grad: bool = field(
        default=True, metadata={"help": "Backpropagate through the features gathered from other ranks."}
    )
    accum_freq: int = field(
        default=1,
        metadata={
            "help": "open_clip's --accum-freq K (needs itc; lm, mlm, mim are averaged over the K batches, itm is "
            "refused): each step takes K batches of --per-device-train-batch-size "
            "and computes one contrastive loss over all of their pairs (and every rank's), holding one batch's "
            "activations at a time. Unlike --gradient-accumulation-steps, the K batches are each other's negatives."
        },
    )
    # Text and image processing.
    tokenizer: str | None = field(
        default=None, metadata={"help": "Tokenizer folder (any AutoTokenizer). Default: train one on the captions."}
    )
    vocab_size: int = field(default=1000, metadata={"help": "Vocabulary size of the trained tokenizer (a soft limit)."})
    tokenizer_model_type: str = field(
        default="bpe",
        metadata={"help": "SentencePiece model of the trained tokenizer.", "choices": ["bpe", "unigram"]},
    )
    resume: bool = field(
        default=True,
        metadata={
            "help": "Continue from the last complete checkpoint in --output-dir when there is one "
            "(--no-resume: start over)."
        },
    )
    sample_captions: bool = field(
        default=True, metadata={"help": "Train on a random one of each image's captions when a `captions` list exists."}
    )
    random_crop_scale: float | None = field(
        default=None,
        metadata={
            "help": "Train-time augmentation: each training image becomes a random crop covering at least this share "
            "of its area (aspect 3/4 to 4/3, torchvision's RandomResizedCrop), e.g. 0.5. Default: whole images."
        },
    )
    text_model: str | None = field(
        default=None,
        metadata={
            "help": "Dual family: start the text tower from this pretrained model folder (any transformers text "
            "model, e.g. MiniLM / BERT; LiT / ALIGN-style) and use its tokenizer (unless --tokenizer). The image "
            "tower comes from the preset and its overrides; --max-text-length truncates captions."
        },
    )
    vision_model: str | None = field(
        default=None,
        metadata={
            "help": "Dual family: start the image tower from this pretrained model folder: any vision model "
            "AutoModel loads (ViT, CLIP / SigLIP vision or full model, ours, a timm model saved by "
            "timm.models.save_for_hf, loaded as TimmWrapperModel, which needs timm installed). Images are normalised "
            "with the tower's own mean / std / interpolation, at its input size (--image-size may change it for a "
            "tower without a fixed size, e.g. a timm CNN)."
        },
    )
    lock_image: bool = field(
        default=False,
        metadata={
            "help": "Dual family: freeze the image tower (LiT) but its last --lock-image-unlocked-groups groups; "
            "its locked BatchNorm statistics are kept (--no-lock-image-freeze-bn-stats: updated). A fully locked "
            "tower runs without autograd, in eval mode. Meant for a pretrained tower (--vision-model), but a "
            "random one can be locked too, as open_clip allows."
        },
    )
    lock_image_unlocked_groups: int = field(
        default=0,
        metadata={"help": "With --lock-image: train the last N groups (blocks; a timm tower's group_matcher groups)."},
    )
    lock_image_freeze_bn_stats: bool = field(
        default=True, metadata={"help": "With --lock-image: keep the locked BatchNorm layers' running statistics."}
    )
    lock_text: bool = field(
        default=False,
        metadata={
            "help": "Dual family: freeze the text tower but its last --lock-text-unlocked-layers layers (a fully "
            "locked one runs without autograd, in eval mode). Meant for --text-model; a random tower can be locked."
        },
    )
    lock_text_unlocked_layers: int = field(
        default=0, metadata={"help": "With --lock-text: train the last N transformer layers of the text tower."}
    )
    lock_text_freeze_layer_norm: bool = field(
        default=True,
        metadata={"help": "With --lock-text: freeze the locked layers' LayerNorms too (--no-...: train them)."},
    )
    patch_dropout: float | None = field(
        default=None,
        metadata={
            "help": "FLIP: drop this share of the image patches (a random subset per image; the class token kept) "
            "in training only, in [0, 1), e.g. 0.5; evaluation and generation see every patch. Our ViT image "
            "towers (dual, captioning)."
        },
    )


# Applied when the command line does not set them: a run that fits a laptop CPU.
CPU_TRAINING_DEFAULTS = dict(
    max_steps=1000,
    per_device_train_batch_size=64,
    per_device_eval_batch_size=128,
    learning_rate=1e-3,
    weight_decay=0.1,
    adam_beta2=0.98,
    warmup_steps=0.05,
    lr_scheduler_type="cosine",
    max_grad_norm=1.0,
    logging_steps=25,
    eval_strategy="no",
    save_strategy="steps",
    save_steps=250,
    save_total_limit=2,
    report_to="none",
    remove_unused_columns=False,
    # Images are decoded and resized in DataLoader workers, one per core the training process leaves (up to 8).
    dataloader_num_workers=min(8, max(1, (os.cpu_count() or 2) - 1)),
    dataloader_persistent_workers=True,
    dataloader_drop_last=True,
    ddp_find_unused_parameters=False,
    dataloader_pin_memory=torch.cuda.is_available(),
    seed=0,
)


FINETUNE_DEFAULTS = dict(
    CPU_TRAINING_DEFAULTS, max_steps=600, learning_rate=3e-4, warmup_steps=0.1, eval_strategy="steps",
    eval_steps=200, save_steps=200, weight_decay=0.01, dataloader_drop_last=False,
)  # fmt: skip


def settle_worker_options(training_args) -> None:
    """`--dataloader-num-workers 0` turns the default persistent workers off (torch refuses them without workers)."""
    if training_args.dataloader_num_workers == 0:
        training_args.dataloader_persistent_workers = False


def run_subcommand(
    argv: Sequence[str],
    table: dict[str, tuple[Callable[[Sequence[str]], int], str]],
    usage: str,
    unknown: Callable[[str], str],
) -> int:
    """Run the entry of `table` (`{name: (function argv -> exit status, summary)}`) that `argv[0]` names on the rest
    of `argv`. With no arguments print `usage` and return 2, with -h / --help print it and return 0; an unknown name
    prints `unknown(name)` to stderr and returns 2."""
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in table:
        print(unknown(name), file=sys.stderr)
        return 2
    return table[name][0](rest)
