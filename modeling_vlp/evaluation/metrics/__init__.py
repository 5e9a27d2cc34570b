"""The evaluation metrics of modeling_vlp as `evaluate` modules, one local script per metric.

Each script is a thin `evaluate.Metric` over the implementation in `modeling_vlp.evaluation` (the math is written
once, there), so `evaluate.load` gives exactly the numbers of those functions:

    vlp_retrieval      scores (one row per text over all images) + image_index -> i2t/t2i R@k, ranks (`retrieval_metrics`)
    vlp_zero_shot      predictions (class logits per example) + references (class index) -> top1, top5 (`topk_accuracy`)
    vlp_vqa_accuracy   predictions (answer) + references (annotator answers) -> vqa_accuracy (`vqa_accuracy`);
                       config "soft_scores": predictions (logits) + references (soft targets) (`vqa_soft_score_accuracy`)
    vlp_caption        predictions (caption) + references (captions) -> bleu_1..4, cider, meteor (`caption_metrics`)

    from modeling_vlp.metrics import load_metric
    metric = load_metric("vlp_zero_shot")
    metric.add_batch(predictions=logits, references=labels)  # as many batches as needed
    metric.compute()  # {"top1": ..., "top5": ...}

Loading reads only the local script (no network). The scripts import `modeling_vlp` by its installed name (evaluate
copies each script alone into its module cache), for the functions above and `metric_info`.
"""

import os

METRICS: tuple[str, ...] = ("vlp_retrieval", "vlp_zero_shot", "vlp_vqa_accuracy", "vlp_caption")


def metric_path(name: str) -> str:
    """Path of the `evaluate` script of the metric `name` (one of `METRICS`)."""
    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; the metrics of modeling_vlp are {', '.join(METRICS)}.")
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")


def metric_info(description: str, inputs_description: str, features: dict):
    """The `evaluate.MetricInfo` a metric script's `_info` returns: its docs and its input `features` (a dict of
    `datasets` feature types), no citation."""
    import datasets
    import evaluate

    return evaluate.MetricInfo(
        description=description,
        citation="",
        inputs_description=inputs_description,
        features=datasets.Features(features),
    )


def load_metric(name: str, **kwargs):
    """`evaluate.load` of the metric `name` (one of `METRICS`); `kwargs` go to `evaluate.load` (`config_name`,
    `experiment_id`, `keep_in_memory`, ...)."""
    import evaluate

    return evaluate.load(metric_path(name), **kwargs)


__all__ = ["METRICS", "metric_path", "metric_info", "load_metric"]
