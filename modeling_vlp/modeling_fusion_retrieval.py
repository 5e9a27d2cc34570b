"""The fusion family's retrieval head: `VLPFusionModel` with its ITM head, for the "image-text-retrieval" pipeline
and ALBEF's re-ranked retrieval (`evaluation.rerank`)."""

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_fusion import VLPFusionConfig
from .losses import itm_log_odds
from .modeling_fusion import VLPFusionModel, VLPFusionPreTrainedModel, _return
from .modeling_fusion_layers import VLPFusionRetrievalOutput


class VLPFusionForImageTextRetrieval(VLPFusionPreTrainedModel):
    """`VLPFusionModel` with an ITM head: ITC similarity for every pair, ITM log-odds for given pairs, and ALBEF's
    re-ranked retrieval (`rank`)."""

    # A pretraining checkpoint loads here with its ITM head; its other heads are not part of this model.
    _keys_to_ignore_on_load_unexpected = [r"^(mlm|mim|patch|region|answer)_head\."]

    def __init__(self, config: VLPFusionConfig):
        super().__init__(config)
        self.vlp = VLPFusionModel(config)
        self.itm_head = nn.Linear(config.text_config.hidden_size, 2)
        self.post_init()

    def itm_logits_for_pairs(
        self,
        text_states: torch.Tensor,
        text_attention_mask: torch.Tensor | None,
        image_states: torch.Tensor,
        image_attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """ITM logits (B, 2) of text i with image i, from unimodal states."""
        fused = self.vlp.fuse(text_states, text_attention_mask, image_states, image_attention_mask)
        return self.itm_head(fused.pooler_output)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        visual_feats: torch.Tensor | None = None,
        visual_pos: torch.Tensor | None = None,
        visual_attention_mask: torch.Tensor | None = None,
        itm_labels: torch.Tensor | None = None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> VLPFusionRetrievalOutput:
        r"""Scores text i against image i (`logits`, ITM log-odds) and every text against every image of the batch
        (`logits_per_image`, ITC). `itm_labels` `(batch_size,)` adds the ITM cross-entropy, `return_loss` the ITC
        loss."""
        outputs = self.vlp(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            pixel_values=pixel_values, pixel_mask=pixel_mask, visual_feats=visual_feats, visual_pos=visual_pos,
            visual_attention_mask=visual_attention_mask, return_loss=return_loss,
            interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True,
        )  # fmt: skip
        itm_logits = self.itm_head(outputs.pooler_output)
        losses = {}
        if return_loss:
            losses["itc"] = outputs.loss
        if itm_labels is not None:
            losses["itm"] = F.cross_entropy(itm_logits, itm_labels.to(itm_logits.device))
        loss = sum(self.config.loss_weights[name] * value for name, value in losses.items()) if losses else None
        output = VLPFusionRetrievalOutput(
            loss=loss,
            logits=itm_log_odds(itm_logits),
            itm_logits=itm_logits,
            logits_per_image=outputs.logits_per_image,
            logits_per_text=outputs.logits_per_text,
            text_embeds=outputs.text_embeds,
            image_embeds=outputs.image_embeds,
            logit_scale=outputs.logit_scale,
        )
        return _return(self, output, return_dict)


__all__ = ["VLPFusionForImageTextRetrieval"]
