"""The unified family's config (ViLT, VisualBERT, UNITER, Oscar)."""

from huggingface_hub.dataclasses import strict

from .configuration_vlp import VISUAL_INPUTS, VLPTransformerConfig, _check_choice

EMBEDDING_NORMS = ("text", "joint", "separate")
BOX_EMBEDDINGS = ("none", "linear", "uniter")
VQA_HEADS = ("pooled_mlp", "text_token")
VQA_LOSSES = ("bce", "kl")


@strict
class VLPUnifiedConfig(VLPTransformerConfig):
    r"""One transformer over `[text; visual]` tokens (ViLT, VisualBERT, UNITER, Oscar).

    Text tokens are word + position + token-type embeddings. Visual tokens come from `visual_input`:
    - "patches" (ViLT): a convolutional patch projection of `pixel_values`, a class token, and learned positions for
      the `image_size / patch_size` grid, resized bilinearly to each image's own grid (`interpolate_pos_encoding`;
      without it, a patch at row r, column c takes the position of (r, c) and larger images are refused). In
      training `max_image_length > 0` samples that many patches per image; in evaluation every valid patch is used.
    - "regions" (VisualBERT, UNITER): detector features `visual_feats (B, N, visual_feat_dim)` through a Linear
      (+ LayerNorm with `visual_feat_layernorm`), plus box features by `box_embedding`: none ("none", VisualBERT),
      a Linear of the `visual_pos_dim` (4 or 5) box coordinates ("linear"), or UNITER's 7-d
      `[x1, y1, x2, y2, w, h, w*h]` computed from `(x1, y1, x2, y2)` ("uniter"); + LayerNorm with
      `visual_pos_layernorm`. At most `max_regions` regions; `normalized_boxes` checks that boxes lie in [0, 1].

    Both streams get a modality-type embedding (0 text, 1 visual). `embedding_norm` says where the embedding
    LayerNorm sits: "text" (ViLT: inside the text embeddings only; modality added after), "joint" (VisualBERT: one
    LayerNorm over `[text; visual]` after all sums) or "separate" (UNITER: the text LayerNorm, and a visual LayerNorm
    over the visual sum including its modality embedding).

    The encoder is pre-norm with a final LayerNorm (`pre_norm=True`, ViLT) or post-norm BERT (VisualBERT, UNITER);
    the pooler is BERT's (dense + tanh on the first token).

    Heads: the pretraining losses are weighted by `itm_loss_weight`, `mlm_loss_weight`, `mim_loss_weight`; region
    inputs classify masked regions over `num_object_labels` detector classes (0: no classifier). `vqa_head` is
    ViLT's MLP on the pooled output ("pooled_mlp") or VisualBERT's linear layer on the text token before [SEP]
    ("text_token"); `vqa_loss` is ViLT's BCE on soft scores times the number of answers ("bce") or VisualBERT's
    KL divergence to the soft scores ("kl").
    """

    model_type = "vlp_unified"
    # The Trainer's predictions leave out the base model's output a head's output holds (features, not predictions).
    keys_to_ignore_at_inference = ["unified_output"]

    # text
    vocab_size: int = 30522
    max_position_embeddings: int = 40
    type_vocab_size: int = 2
    # visual input
    visual_input: str = "patches"
    image_size: int = 384
    patch_size: int = 32
    num_channels: int = 3
    patch_bias: bool = True
    max_image_length: int = 200
    interpolate_pos_encoding: bool = True
    visual_feat_dim: int = 2048
    box_embedding: str = "linear"
    visual_pos_dim: int = 4
    visual_feat_layernorm: bool = False
    visual_pos_layernorm: bool = False
    normalized_boxes: bool = True
    max_regions: int = 100
    # embeddings and encoder (the other fields of the stack: `VLPTransformerConfig`'s)
    embedding_norm: str = "text"
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    # heads
    itm_loss_weight: float = 1.0
    mlm_loss_weight: float = 1.0
    mim_loss_weight: float = 1.0
    num_object_labels: int = 0
    vqa_head: str = "pooled_mlp"
    vqa_loss: str = "bce"
    pad_token_id: int | None = 0
    tie_word_embeddings: bool = True

    def validate_architecture(self):
        super().validate_architecture()
        _check_choice("visual_input", self.visual_input, VISUAL_INPUTS)
        _check_choice("embedding_norm", self.embedding_norm, EMBEDDING_NORMS)
        _check_choice("box_embedding", self.box_embedding, BOX_EMBEDDINGS)
        _check_choice("vqa_head", self.vqa_head, VQA_HEADS)
        _check_choice("vqa_loss", self.vqa_loss, VQA_LOSSES)
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"`image_size` ({self.image_size}) must be a multiple of `patch_size` ({self.patch_size})."
            )
        if self.max_image_length == 0 or self.max_image_length < -1:
            raise ValueError(
                f"`max_image_length` must be -1 (use every patch) or a positive number, got {self.max_image_length}."
            )
        if self.box_embedding == "linear" and self.visual_pos_dim not in (4, 5):
            raise ValueError(
                f"`visual_pos_dim` must be 4 (x1, y1, x2, y2) or 5 (+ area) with box_embedding='linear', "
                f"got {self.visual_pos_dim}."
            )
        if self.max_regions < 1:
            raise ValueError(f"`max_regions` must be positive, got {self.max_regions}.")
        if self.num_object_labels < 0:
            raise ValueError(f"`num_object_labels` must be >= 0, got {self.num_object_labels}.")

    # Read by the shared blocks of modeling_layers (VLPTextEmbeddings, VLPPatchEmbeddings).
    @property
    def embedding_layernorm(self) -> bool:
        return self.embedding_norm in ("text", "separate")

    @property
    def class_token(self) -> bool:
        return True

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def box_feature_dim(self) -> int:
        """Width of the box features the box Linear reads (0: no box input)."""
        return {"none": 0, "linear": self.visual_pos_dim, "uniter": 7}[self.box_embedding]


__all__ = ["VLPUnifiedConfig"]
