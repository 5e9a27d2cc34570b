"""VQA accuracy as an `evaluate` metric.

Default configuration, the official VQA accuracy: one row per question,
    predictions: the predicted answer (str).
    references: the annotators' answers (list of str; VQA v2 has 10).
A prediction scores min(#matching answers / 3, 1) averaged over the leave-one-out subsets of the answers (10
subsets of 9), after the official answer normalisation (`modeling_vlp.evaluation.vqa_accuracy`): `vqa_accuracy`
in %.

Configuration "soft_scores" (`evaluate.load(..., config_name="soft_scores")`), for a Trainer's compute_metrics:
    predictions: the question's logits over the answer vocabulary (list of float).
    references: the soft targets over the same vocabulary (list of float; the collator's `labels`).
`vqa_accuracy` is the mean soft target of the argmax answer (`vqa_soft_score_accuracy`).
"""

import datasets
import evaluate
import numpy as np

from modeling_vlp.evaluation import vqa_accuracy, vqa_soft_score_accuracy
from modeling_vlp.evaluation.metrics import metric_info

_DESCRIPTION = __doc__
_KWARGS_DESCRIPTION = """
Args:
    predictions: answers (str), or logits rows with config_name="soft_scores".
    references: lists of annotator answers, or soft-target rows with config_name="soft_scores".
Returns:
    dict: vqa_accuracy (%).
"""
_CONFIGS = ("default", "soft_scores")


class VlpVqaAccuracy(evaluate.Metric):
    def _info(self):
        if self.config_name not in _CONFIGS:
            raise ValueError(f"config_name={self.config_name!r} is not a configuration of vlp_vqa_accuracy: {_CONFIGS}")
        if self.config_name == "soft_scores":
            features = {
                "predictions": datasets.Sequence(datasets.Value("float32")),
                "references": datasets.Sequence(datasets.Value("float32")),
            }
        else:
            features = {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, features)

    def _compute(self, predictions, references):
        if self.config_name == "soft_scores":
            # float32 as the Trainer's arrays, so the mean is the very number numpy gives on them.
            logits = np.asarray(predictions, dtype=np.float32).reshape(len(predictions), -1)
            scores = np.asarray(references, dtype=np.float32).reshape(len(references), -1)
            return {"vqa_accuracy": vqa_soft_score_accuracy(logits, scores)}
        return {"vqa_accuracy": vqa_accuracy(list(predictions), [list(answers) for answers in references])}
