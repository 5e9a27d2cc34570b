"""Zero-shot (or any) classification top-k accuracy as an `evaluate` metric.

Inputs, one row per example:
    predictions: the example's score for every class, a list of `num_classes` floats (e.g. image embedding @
        class text embeddings of the prompt-ensembled zero-shot classifier).
    references: the true class index.
Keyword of compute(): `ks` (default (1, 5)).

Returns `modeling_vlp.evaluation.topk_accuracy` (what `zero_shot_accuracy` computes): `top1`, `top5` in %; a tie
between the true class and another counts as a miss; a k >= num_classes is 100.
"""

import datasets
import evaluate
import numpy as np

from modeling_vlp.evaluation import topk_accuracy
from modeling_vlp.evaluation.metrics import metric_info

_DESCRIPTION = __doc__
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of rows of class scores.
    references: list of int class indices.
    ks: top-k cut-offs, default (1, 5).
Returns:
    dict of floats: top1, top5 (%).
"""


class VlpZeroShot(evaluate.Metric):
    def _info(self):
        features = {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")}
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, features)

    def _compute(self, predictions, references, ks=(1, 5)):
        logits = np.asarray(predictions, dtype=np.float64).reshape(len(predictions), -1)
        return topk_accuracy(logits, np.asarray(references, dtype=np.int64), ks)
