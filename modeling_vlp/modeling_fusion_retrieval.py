"""The fusion family's retrieval head: `VLPFusionModel` with its ITM head, for the "image-text-retrieval" pipeline
and ALBEF's re-ranked retrieval (`evaluation.rerank`)."""

import torch

from .losses import itm_log_odds, weighted_sum
from .modeling_fusion import VLPFusionWithITMHead
from .modeling_fusion_layers import VLPFusionRetrievalOutput


class VLPFusionForImageTextRetrieval(VLPFusionWithITMHead):
    """`VLPFusionModel` with an ITM head: ITC similarity for every pair, ITM log-odds for given pairs (ALBEF's
    re-ranked retrieval, `evaluation.rerank`, scores its shortlists with `itm_logits_for_pairs`)."""

    # A pretraining checkpoint loads here with its ITM head; its other heads are not part of this model.
    _keys_to_ignore_on_load_unexpected = [r"^(mlm|mim|patch|region|answer)_head\."]

    def __init__(self, config):
        super().__init__(config)
        self.post_init()

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
        (`fusion_output.logits_per_image`, ITC). `itm_labels` `(batch_size,)` adds the ITM cross-entropy,
        `return_loss` the ITC loss."""
        outputs = self.vlp(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            pixel_values=pixel_values, pixel_mask=pixel_mask, visual_feats=visual_feats, visual_pos=visual_pos,
            visual_attention_mask=visual_attention_mask, return_loss=return_loss,
            interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True,
        )  # fmt: skip
        itm_logits = self.itm_head(outputs.pooler_output)
        losses = self._matching_losses(outputs, itm_logits, itm_labels, return_loss)
        output = VLPFusionRetrievalOutput(
            loss=weighted_sum(losses, self.config.loss_weights),
            logits=itm_log_odds(itm_logits),
            itm_logits=itm_logits,
            fusion_output=outputs,
        )
        return self._output(output, return_dict)


__all__ = ["VLPFusionForImageTextRetrieval"]
