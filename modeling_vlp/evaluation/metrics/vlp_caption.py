"""COCO image captioning metrics as an `evaluate` metric.

Inputs, one row per image:
    predictions: the generated caption (str).
    references: the reference captions (list of str; COCO has 5).
Keyword of compute(): `meteor` (None: when a `java` executable is on the PATH, True / False: force).

Returns `modeling_vlp.evaluation.caption_metrics`, all in % (x100): `bleu_1` ... `bleu_4`, `cider` (CIDEr-D) and,
only when METEOR runs (it is a Java program), `meteor`. Text is tokenised like the COCO toolkit's PTBTokenizer
(lowercase, punctuation removed) in plain Python; scores come from `pycocoevalcap`. CIDEr's document frequencies
are those of the evaluated corpus, so compute over a whole split.
"""

import datasets
import evaluate

from modeling_vlp.evaluation import caption_metrics
from modeling_vlp.evaluation.metrics import metric_info

_DESCRIPTION = __doc__
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated captions.
    references: list of lists of reference captions.
    meteor: compute METEOR (Java) - None: when java is found.
Returns:
    dict of floats (%): bleu_1, bleu_2, bleu_3, bleu_4, cider, and meteor when it ran.
"""


class VlpCaption(evaluate.Metric):
    def _info(self):
        features = {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, features)

    def _compute(self, predictions, references, meteor=None):
        return caption_metrics(list(predictions), [list(refs) for refs in references], meteor=meteor)
