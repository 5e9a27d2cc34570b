"""The base class of every modeling_vlp model (weight initialisation, capabilities, embeddings access, the
`return_dict` convention, the family's `auto_map`) and what outputs and models share around it."""

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .modeling_layers import VLPAttentionPool, VLPPatchEmbeddings, VLPTextEmbeddings


class VLPModelOutput(ModelOutput):
    """An output that may hold other outputs (a head's output holds its base model's, as transformers' `CLIPOutput`
    holds its towers'): `to_tuple` turns those into tuples too."""

    def to_tuple(self) -> tuple:
        return tuple(value.to_tuple() if isinstance(value, ModelOutput) else value for value in self.values())


@dataclass
class VLPContrastiveOutput(VLPModelOutput):
    r"""
    The fields of a model with a contrastive (ITC) head, first in its output (pair i is image i with text i):
    loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `return_loss=True`):
        The contrastive loss of the local batch (`VLPTrainer` gathers features across ranks for global negatives).
    logits_per_image (`torch.FloatTensor` of shape `(image_batch_size, text_batch_size)`):
        Scaled cosine similarities of every image with every text.
    logits_per_text (`torch.FloatTensor` of shape `(text_batch_size, image_batch_size)`):
        The transpose of `logits_per_image`.
    text_embeds, image_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
        L2-normalised projected embeddings.
    logit_scale (`torch.FloatTensor` of shape `()`):
        The temperature `exp(logit_scale)` used (clamped), so that objectives outside the model can reuse it.
    """

    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    logit_scale: torch.Tensor | None = None


@dataclass
class VLPClassifierOutput(VLPModelOutput):
    r"""
    The fields a classification head's output starts with (a VQA head; with `itm_logits`, a retrieval head), before
    the base model's output it holds:
    loss (`torch.FloatTensor` of shape `()`, *optional*, returned with the labels): the head's loss.
    logits (`torch.FloatTensor`): the head's scores.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


@dataclass
class VLPRetrievalOutput(VLPClassifierOutput):
    r"""
    A retrieval head's `loss` and `logits` (`(batch_size,)`, the ITM log-odds `itm_logits[:, 1] - itm_logits[:, 0]`
    that text i matches image i), then:
    itm_logits (`torch.FloatTensor` of shape `(batch_size, 2)`): the ITM head, [no match, match].
    """

    itm_logits: torch.Tensor | None = None


def exp_logit_scale(logit_scale: torch.Tensor, maximum: float | None) -> torch.Tensor:
    """The contrastive temperature exp(logit_scale), clamped to `maximum` (`config.logit_scale_max`) when set."""
    if maximum is not None:
        logit_scale = logit_scale.clamp(max=math.log(maximum))
    return logit_scale.exp()


def encoder_auto_map(model: str, pretraining: str, question_answering: str) -> dict[str, str]:
    """The `family_auto_map` of an encoder family (fusion, unified): its base model, its pretraining head (which is
    also its masked-LM head) and its VQA head, by class name."""
    return {
        "AutoModel": model,
        "AutoModelForPreTraining": pretraining,
        "AutoModelForMaskedLM": pretraining,
        "AutoModelForVisualQuestionAnswering": question_answering,
    }


def share_attn_implementation(config) -> None:
    """A composite config's towers follow its attention implementation unless set on their own: the layers read the
    towers' configs, which `PreTrainedModel.__init__` leaves unresolved (it resolves the top-level config's only)."""
    for tower in (config.text_config, config.vision_config):
        if tower._attn_implementation is None:
            tower._attn_implementation_internal = config._attn_implementation


class VLPPreTrainedModel(PreTrainedModel):
    """Weight initialisation, capabilities and output conventions shared by every modeling_vlp model.


    `_text_embeddings` is the dotted path of the `VLPTextEmbeddings` whose `token_embedding` are the input
    embeddings, for base models that do not keep it at `self.embeddings` (transformers' own lookup, which also leads
    a head to its base model); `_output_embeddings` the path of a head's vocabulary decoder, tied to them.
    """

    base_model_prefix = "vlp"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["VLPTransformerLayer", "VLPPatchEmbeddings", "VLPTextEmbeddings"]
    # Auto class name -> class name in the model's module, written into the `auto_map` of every checkpoint a
    # registered class of the family saves: `register_for_auto_class` names one Auto class per model class, but with
    # `trust_remote_code` (no package installed) any head should load from any checkpoint of its family.
    family_auto_map: dict[str, str] = {}
    _text_embeddings: str | None = None
    _output_embeddings: str | None = None

    def post_init(self):
        super().post_init()
        # The embeddings' input checks (`check_finite`) read this model's config, a head's or a dual encoder's.
        for module in self.modules():
            if hasattr(module, "checks_config"):
                module.checks_config = self.config

    def get_input_embeddings(self) -> nn.Module:
        if self._text_embeddings is None:
            return super().get_input_embeddings()
        return self.get_submodule(self._text_embeddings).token_embedding

    def set_input_embeddings(self, value: nn.Module) -> None:
        if self._text_embeddings is None:
            return super().set_input_embeddings(value)
        self.get_submodule(self._text_embeddings).token_embedding = value

    def get_output_embeddings(self) -> nn.Module | None:
        if self._output_embeddings is None:
            return super().get_output_embeddings()
        return self.get_submodule(self._output_embeddings)

    def set_output_embeddings(self, value: nn.Module) -> None:
        parent, _, name = self._output_embeddings.rpartition(".")
        setattr(self.get_submodule(parent), name, value)

    def _output(self, output: ModelOutput, return_dict: bool | None):
        """`output`, or its tuple when `return_dict` (default: `config.return_dict`) is False."""
        return output if (return_dict if return_dict is not None else self.config.return_dict) else output.to_tuple()

    def save_pretrained(self, save_directory, *args, **kwargs):
        if self.family_auto_map and getattr(type(self), "_auto_class", None) is not None:
            module = type(self).__module__.split(".")[-1]
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            auto_map.update({auto: f"{module}.{name}" for auto, name in self.family_auto_map.items()})
            self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module):
        std = getattr(self.config, "initializer_range", 0.02)
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.normal_(module.weight, std=getattr(module, "init_std", None) or std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, VLPPatchEmbeddings):
            if module.class_embedding is not None:
                init.normal_(module.class_embedding, std=module.embed_dim**-0.5)
            init.copy_(module.position_ids, torch.arange(module.num_positions).expand((1, -1)))
        elif isinstance(module, VLPTextEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
        elif isinstance(module, VLPAttentionPool):
            init.normal_(module.probe, std=std)

