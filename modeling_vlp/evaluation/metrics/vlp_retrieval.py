"""Image-text retrieval recall@k and ranks (Flickr30k / COCO protocol) as an `evaluate` metric.

Inputs, one row per text query (so `add_batch` can stream the texts in any number of batches):
    scores: the text's similarity to every image, a list of `num_images` floats (row `i` of the
        `(num_texts, num_images)` matrix, i.e. column `i` of `retrieval_metrics`' `(num_images, num_texts)`).
    image_index: index (0-based, into the score rows) of the image the text describes. An image may have several
        texts (Flickr30k / COCO: five), and every image needs at least one.
Keywords of compute(): `ks` (default (1, 5, 10)); `image_to_text_scores`, a `(num_images, num_texts)` matrix that
ranks the texts of each image when it is not the transpose of the rows above (a re-ranker that rescores each
direction's own shortlist, as ALBEF's); the rows then rank only the images of each text.

Returns `modeling_vlp.evaluation.retrieval_metrics`: i2t_r@k, t2i_r@k (%), i2t/t2i mean and median ranks, rsum.
Image->text ranks the best-placed of an image's texts; ties count against the model.
"""

import datasets
import evaluate
import numpy as np

from modeling_vlp.evaluation import retrieval_metrics
from modeling_vlp.evaluation.metrics import metric_info

_DESCRIPTION = __doc__
_KWARGS_DESCRIPTION = """
Args:
    scores: list of rows, one per text, each with one float per image.
    image_index: list of int, the image of each text.
    ks: recall cut-offs, default (1, 5, 10).
    image_to_text_scores: optional (num_images, num_texts) scores for image->text ranking.
Returns:
    dict of floats: i2t_r@k, t2i_r@k, i2t_mean_rank, t2i_mean_rank, i2t_median_rank, t2i_median_rank, rsum.
"""


class VlpRetrieval(evaluate.Metric):
    def _info(self):
        features = {"scores": datasets.Sequence(datasets.Value("float64")), "image_index": datasets.Value("int64")}
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, features)

    def _compute(self, scores, image_index, ks=(1, 5, 10), image_to_text_scores=None):
        scores = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
        image_index = np.asarray(image_index, dtype=np.int64)
        if image_to_text_scores is None:
            return retrieval_metrics(scores.T, image_index, ks)
        return retrieval_metrics(image_to_text_scores, image_index, ks, text_to_image_scores=scores)
