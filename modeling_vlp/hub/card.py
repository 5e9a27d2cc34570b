"""Model cards of saved folders: `build_model_card` (any folder `save_pretrained` wrote), `model_card_for_run` (what
`vlp pretrain` wrote) and `use_model_card` (the Trainer's own push uploads ours).

The card is a `huggingface_hub.ModelCard` whose metadata holds only what is known: license,
`library_name: transformers`, the `modeling_vlp` tag, the family (`config.model_type`) and objectives as tags,
`base_model` for a converted checkpoint, the datasets given, and a `model-index` built from the metrics given (a
card without measured metrics has no model-index). The family's description (`families.FAMILIES`) gives the
architecture text and the `pipeline_tag`: a dual encoder is "zero-shot-image-classification" (the stock pipeline
runs it); a question-answering head "visual-question-answering"; a captioning model with its language-model head
"image-text-to-text"; every other encoder "feature-extraction", the Hub tag for models whose output is features and
scores. `model-index` task types follow the metric: zero-shot and VQA metrics take those Hub tasks, "fill-mask" MLM
accuracy; retrieval and matching metrics take "image-text-retrieval" / "image-text-matching", which name the task
although the Hub has no pipeline of that name (model-index task types are free text).
"""

import json
import logging
import math
import os
import re
import struct
from collections.abc import Mapping, Sequence

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.repocard_data import EvalResult

from ..families import described
from ..training.family_objectives import OBJECTIVE_DESCRIPTIONS

logger = logging.getLogger("modeling_vlp.conversion.hub")

CONFIG_NAME = "config.json"
EVAL_RESULTS_NAME = "eval_results.json"
TRAINER_STATE_NAME = "trainer_state.json"
CARD_KINDS = ("converted", "trained")

def read_config(folder: str) -> dict:
    path = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(path):
        raise ValueError(f"`folder` {folder!r} has no {CONFIG_NAME}; expected a folder written by save_pretrained.")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def count_parameters(folder: str) -> int | None:
    """Number of weights in the folder's safetensors files, read from their headers (nothing is loaded)."""
    index_path = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index_path):
        with open(index_path, encoding="utf-8") as handle:
            files = sorted(set(json.load(handle)["weight_map"].values()))
    elif os.path.isfile(os.path.join(folder, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        return None
    total = 0
    for name in files:
        with open(os.path.join(folder, name), "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        total += sum(math.prod(entry["shape"]) for key, entry in header.items() if key != "__metadata__")
    return total


def pipeline_tag_for(config: Mapping) -> str:
    """The Hub pipeline tag of a saved model: its family's tag for the saved class (`FAMILIES[...].pipeline_tags`)."""
    description = described(config)
    architecture = (config.get("architectures") or [None])[0]
    return description.pipeline_tag(architecture) if description is not None else "feature-extraction"


def describe_architecture(config: Mapping) -> list[str]:
    """Bullet points on the architecture, read from config.json (the family's `describe`)."""
    model_type = config.get("model_type")
    description = described(config)
    if description is not None:
        lines = description.describe(config)
    else:
        sizes = {key: config[key] for key in ("hidden_size", "num_hidden_layers") if key in config}
        lines = [f"`{model_type}` model; {', '.join(f'{k} {v}' for k, v in sizes.items()) or 'sizes unknown'}."]
    if config.get("architectures"):
        lines.append(f"Saved class: `{'`, `'.join(config['architectures'])}`.")
    return lines


def _auto_class(config: Mapping) -> str:
    """The Auto class that loads the saved architecture (from `auto_map`), AutoModel when none names it."""
    auto_map = config.get("auto_map") or {}
    architecture = (config.get("architectures") or [None])[0]
    if architecture is None or auto_map.get("AutoModel", "").endswith("." + architecture):
        return "AutoModel"
    candidates = [
        auto_class
        for auto_class, reference in auto_map.items()
        if auto_class.startswith("AutoModel") and str(reference).endswith("." + architecture)
    ]
    # One class may serve several Auto classes (ForPreTraining is also the masked-LM one): take the namesake.
    head = architecture.partition("For")[2]
    return next((name for name in candidates if head and head in name), candidates[0] if candidates else "AutoModel")


def _preprocessor_class(folder: str) -> str | None:
    if os.path.isfile(os.path.join(folder, "processor_config.json")):
        return "AutoProcessor"
    if os.path.isfile(os.path.join(folder, "tokenizer_config.json")):
        return "AutoTokenizer"
    return None


# Values of eval_results.json that describe the run or the data rather than measure the model (baselines included:
# chance, the majority-class accuracy, how many queries a tie decided).
_BOOKKEEPING = re.compile(
    r"^(global_step|epoch|num_.*|.*runtime|.*_per_second|.*chance.*|.*majority_class_accuracy|.*tied_queries)$"
)


def _is_measurement(name: str, value) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and not _BOOKKEEPING.match(name)
    )


def _metric_task(name: str) -> tuple[str, str]:
    if name.startswith("zero_shot"):
        return "zero-shot-image-classification", "Zero-shot image classification"
    if name.startswith("vqa"):
        return "visual-question-answering", "Visual question answering"
    if name.startswith(("i2t_", "t2i_")) or name == "rsum":
        return "image-text-retrieval", "Image-text retrieval"
    if name.startswith("itm"):
        return "image-text-matching", "Image-text matching"
    if name.startswith("mlm"):
        return "fill-mask", "Masked language modelling"
    return "vision-language-pretraining", "Held-out evaluation"


def _metric_name(name: str) -> str:
    patterns = (
        (r"i2t_r@(\d+)", "Image-to-text recall@{} (%)"), (r"t2i_r@(\d+)", "Text-to-image recall@{} (%)"),
        (r"(i2t|t2i)_(mean|median)_rank", None), (r"zero_shot_top(\d+)", "Zero-shot top-{} accuracy (%)"),
    )  # fmt: skip
    for pattern, template in patterns:
        match = re.fullmatch(pattern, name)
        if match and template:
            return template.format(match.group(1))
        if match:
            direction = "Image-to-text" if match.group(1) == "i2t" else "Text-to-image"
            return f"{direction} {match.group(2)} rank"
    names = {"rsum": "Sum of the recalls", "itm_accuracy": "ITM accuracy (%)", "mlm_accuracy": "MLM accuracy (%)",
             "vqa_accuracy": "VQA accuracy (%)", "eval_loss": "Held-out loss"}  # fmt: skip
    return names.get(name, name)


def _eval_results(metrics: Mapping[str, float], dataset_name: str, dataset_type: str, split: str | None):
    results = []
    for name, value in metrics.items():
        if not _is_measurement(name, value):
            continue
        task_type, task_name = _metric_task(name)
        results.append(
            EvalResult(
                task_type=task_type, task_name=task_name, dataset_type=dataset_type, dataset_name=dataset_name,
                dataset_split=split, metric_type=name, metric_name=_metric_name(name), metric_value=float(value),
            )  # fmt: skip
        )
    return results


def _format_number(value) -> str:
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.4g}"
    return str(int(value)) if isinstance(value, float) else str(value)


def build_model_card(
    folder: str | os.PathLike,
    *,
    kind: str | None = "converted",
    repo_id: str | None = None,
    base_model: str | None = None,
    source: str | None = None,
    parity: Mapping[str, float] | None = None,
    parity_tolerance: float | None = None,
    objectives: Sequence[str] | None = None,
    training: Mapping | None = None,
    eval_results: Mapping[str, float] | None = None,
    eval_dataset: str | None = None,
    eval_split: str | None = None,
    datasets: str | Sequence[str] | None = None,
    license: str = "apache-2.0",
    tags: Sequence[str] | None = None,
    limitations: Sequence[str] | None = None,
) -> ModelCard:
    """The model card of a saved folder, from its config.json and what the caller measured.

    kind: "converted" (from `source`, `base_model` on the Hub, with the `parity` max-abs differences measured at
    conversion, e.g. `{"logits_per_image": 3e-6}`), "trained" (with `objectives`, and `training`: any of
    `steps`, `batch_size`, `dataset`, `dataset_description`, `learning_rate`, `final_loss`), or None (nothing is
    known about how the weights were made). `eval_results` is the flat metrics dict `vlp pretrain` writes to
    eval_results.json; measured values become the card's model-index on `eval_dataset` (default:
    `training["dataset"]`), run bookkeeping (global_step, num_*, chance levels) only appears in the body.
    `datasets` are Hub dataset ids for the metadata.
    """
    folder = os.fspath(folder)
    if kind is not None and kind not in CARD_KINDS:
        raise ValueError(f"`kind` must be one of {CARD_KINDS} or None, got {kind!r}.")
    config = read_config(folder)
    model_type = config.get("model_type") or "unknown"
    training = dict(training or {})
    objectives = list(objectives or [])
    unknown = [name for name in objectives if name not in OBJECTIVE_DESCRIPTIONS]
    if unknown:
        raise ValueError(f"`objectives` holds {unknown}; expected names among {sorted(OBJECTIVE_DESCRIPTIONS)}.")
    name = (repo_id or os.path.basename(os.path.abspath(folder))).split("/")[-1]
    repo_ref = repo_id or "path/to/this/folder"
    datasets = [datasets] if isinstance(datasets, str) else list(datasets or []) or None

    metrics = dict(eval_results or {})
    results = None
    if any(_is_measurement(key, value) for key, value in metrics.items()):
        dataset_name = eval_dataset or training.get("dataset") or "held-out split"
        dataset_type = eval_dataset or training.get("dataset") or "unspecified"
        results = _eval_results(metrics, dataset_name, dataset_type, eval_split)

    card_tags = ["modeling_vlp", model_type, "vision-language", *objectives]
    if kind == "converted":
        card_tags.append("converted")
    card_tags += list(tags or [])
    card_data = ModelCardData(
        license=license,
        library_name="transformers",
        pipeline_tag=pipeline_tag_for(config),
        tags=list(dict.fromkeys(card_tags)),
        base_model=base_model,
        datasets=datasets,
        model_name=name if results else None,  # the model-index's name; alone it would only repeat the title
        eval_results=results,
    )

    description = described(config)
    family = description.summary if description is not None else f"`{model_type}` model"
    num_parameters = count_parameters(folder)
    size = f"{num_parameters / 1e6:.2f}M-parameter " if num_parameters is not None else ""
    body = [f"# {name}", "", f"A {size}vision-language {family}, saved with `modeling_vlp` as a transformers "
            "model.", ""]  # fmt: skip
    body += [f"- {line}" for line in describe_architecture(config)]
    body += ["", *_loading_section(folder, config, repo_ref)]
    if kind == "converted":
        body += ["", *_conversion_section(source, base_model, parity, parity_tolerance)]
    elif kind == "trained":
        body += ["", *_training_section(objectives, training)]
    else:
        body += ["", "## Provenance", "", "How these weights were made is not recorded with them."]
    body += ["", *_evaluation_section(metrics, results is not None)]
    body += ["", *_limits_section(kind, training, license, limitations)]
    content = f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n"
    return ModelCard(content)


def _loading_section(folder: str, config: Mapping, repo_ref: str) -> list[str]:
    auto_class = _auto_class(config)
    preprocessor = _preprocessor_class(folder)
    imports = ", ".join(sorted({auto_class, *([preprocessor] if preprocessor else [])}))
    with_package = ["import modeling_vlp  # registers the modeling_vlp classes with the transformers Auto classes",
                    f"from transformers import {imports}", "",
                    f'model = {auto_class}.from_pretrained("{repo_ref}")']  # fmt: skip
    without = [f"from transformers import {imports}", "",
               f'model = {auto_class}.from_pretrained("{repo_ref}", trust_remote_code=True)']  # fmt: skip
    if preprocessor:
        with_package.append(f'processor = {preprocessor}.from_pretrained("{repo_ref}")')
        without.append(f'processor = {preprocessor}.from_pretrained("{repo_ref}", trust_remote_code=True)')
    lines = ["## How to use", "", "With the `modeling_vlp` package installed:", "", "```python",
             *with_package, "```", "",
             "Without it, transformers runs the modelling code stored in this repository (the `*.py` files, the "
             "package's code at the version that saved the model; read them before trusting them):", "",
             "```python", *without, "```"]  # fmt: skip
    if config.get("model_type") == "vlp_dual_encoder":
        lines += ["", "Zero-shot image classification:", "", "```python", "from transformers import pipeline", "",
                  f'classifier = pipeline("zero-shot-image-classification", model="{repo_ref}")  '
                  "# after `import modeling_vlp`, or with trust_remote_code=True",
                  'classifier(image, candidate_labels=["a photo of a cat", "a photo of a dog"])', "```"]  # fmt: skip
    return lines


def _conversion_section(source, base_model, parity, tolerance) -> list[str]:
    lines = ["## Conversion", ""]
    if base_model:
        lines += [f"Base model: [{base_model}](https://huggingface.co/{base_model})", ""]
    lines += [f"Source: {source or 'not recorded'}", "",
              "Converted by `modeling_vlp.conversion`: every source weight is loaded strictly (none missing, none left "
              "over), and the checkpoint is written only when both models agree on a fixed batch of synthetic images "
              "and captions in fp32."]  # fmt: skip
    if parity:
        lines += ["", "Largest absolute difference to the source measured at conversion:", "",
                  "| output | max abs diff |", "| --- | --- |"]  # fmt: skip
        lines += [f"| {name} | {float(value):.2e} |" for name, value in parity.items()]
        if tolerance is not None:
            lines += ["", f"(tolerance {tolerance:g})"]
    else:
        lines += ["", "No parity figures were recorded with this card."]
    return lines


def _training_section(objectives: Sequence[str], training: Mapping) -> list[str]:
    lines = ["## Training", ""]
    if objectives:
        lines += ["Objectives:", "", *[f"- `{name}`: {OBJECTIVE_DESCRIPTIONS[name]}" for name in objectives], ""]
    else:
        lines += ["The training objectives were not recorded.", ""]
    facts = [("steps", "Optimizer steps"), ("batch_size", "Batch size (all devices)"),
             ("learning_rate", "Peak learning rate"), ("final_loss", "Last logged training loss")]  # fmt: skip
    for key, label in facts:
        if training.get(key) is not None:
            lines.append(f"- {label}: {_format_number(training[key])}")
    if training.get("dataset"):
        description = f": {training['dataset_description']}" if training.get("dataset_description") else ""
        lines.append(f"- Data: {training['dataset']}{description}")
    elif training.get("dataset_description"):
        lines.append(f"- Data: {training['dataset_description']}")
    else:
        lines.append("- Data: not recorded.")
    return lines


def _evaluation_section(metrics: Mapping, has_results: bool) -> list[str]:
    lines = ["## Evaluation", ""]
    if not metrics:
        return lines + ["No evaluation results were recorded for this checkpoint."]
    lines += ["Measured on the held-out split (the model-index above), with the run's bookkeeping and chance "
              "levels for reference:" if has_results else "Recorded values (no model measurements):",
              "", "| metric | value |", "| --- | --- |"]  # fmt: skip
    lines += [f"| {name} | {_format_number(value)} |" for name, value in metrics.items()]
    return lines


def _limits_section(kind, training: Mapping, license: str, limitations) -> list[str]:
    lines = ["## Limitations", ""]
    if kind == "converted":
        lines.append("- Parity with the source was checked on the batch above only, in fp32; other dtypes and "
                     "inputs far from it differ accordingly. A head the source did not have (the conversion log "
                     "names them) starts untrained.")  # fmt: skip
        if license == "unknown":
            lines.append("- The weights keep the source checkpoint's license, which was not recorded: check it.")
    elif kind == "trained":
        steps = training.get("steps")
        run = f"{_format_number(steps)} steps" if steps is not None else "a short run"
        lines.append(f"- A small model trained for {run}: its figures come from a held-out split of its own "
                     "training distribution and say nothing about other data or standard benchmarks.")  # fmt: skip
    lines.append("- Not evaluated for bias, fairness, safety or robustness.")
    lines += [f"- {item}" for item in limitations or []]
    return lines


# --------------------------------------------------------------------------------------------------------------
# Training runs
# --------------------------------------------------------------------------------------------------------------


def _read_json(path: str):
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def model_card_for_run(
    output_dir: str | os.PathLike,
    *,
    trainer=None,
    repo_id: str | None = None,
    objectives: Sequence[str] | None = None,
    dataset: str | None = None,
    dataset_description: str | None = None,
    datasets: str | Sequence[str] | None = None,
    base_model: str | None = None,
    source: str | None = None,
    license: str | None = None,
) -> ModelCard:
    """The card of what `vlp pretrain` wrote to `output_dir`: config.json, eval_results.json (the metrics) and
    trainer_state.json (global_step, train_batch_size, the logged losses; `trainer.state` when given, before it
    is saved). Objectives default to those the logs name (`loss_<objective>`). A folder with neither file gets a
    card without training facts (converted when `base_model` or `source` is given). `license` defaults to
    apache-2.0, or "unknown" for a converted checkpoint (its source's license applies)."""
    output_dir = os.fspath(output_dir)
    metrics = _read_json(os.path.join(output_dir, EVAL_RESULTS_NAME))
    state = trainer.state.__dict__ if trainer is not None else _read_json(os.path.join(output_dir, TRAINER_STATE_NAME))
    if trainer is not None and repo_id is None:
        repo_id = getattr(trainer, "hub_model_id", None)
    if state is None and metrics is None:
        kind = "converted" if base_model or source else None
        return build_model_card(
            output_dir, kind=kind, repo_id=repo_id, base_model=base_model, source=source, datasets=datasets,
            license=license or ("unknown" if kind == "converted" else "apache-2.0"),
        )  # fmt: skip
    state = state or {}
    log_history = state.get("log_history") or []
    if objectives is None:
        logged = [key[len("loss_") :] for entry in log_history for key in entry if key.startswith("loss_")]
        objectives = [name for name in dict.fromkeys(logged) if name in OBJECTIVE_DESCRIPTIONS]
    losses = [entry["loss"] for entry in log_history if isinstance(entry.get("loss"), (int, float))]
    steps = state.get("global_step")
    if steps is None and metrics is not None:
        steps = metrics.get("global_step")
    training = dict(
        steps=steps,
        batch_size=state.get("train_batch_size"),
        dataset=dataset,
        dataset_description=dataset_description,
        final_loss=losses[-1] if losses else None,
    )
    return build_model_card(
        output_dir, kind="trained", repo_id=repo_id, base_model=base_model, objectives=objectives, training=training,
        eval_results=metrics, datasets=datasets, license=license or "apache-2.0",
    )  # fmt: skip


def use_model_card(trainer, model_card: ModelCard | None = None, **card_kwargs):
    """Make `trainer.push_to_hub()` push our card: the Trainer writes its own README.md in `create_model_card`
    just before uploading; this replaces that step on this trainer with writing `model_card`, or, by default,
    `model_card_for_run(output_dir, trainer=trainer, **card_kwargs)` built at push time (so it holds the final
    state and the eval_results.json written by then). The same step rewrites training_args.bin, which the Trainer
    pushes too, without `hub_token`. Returns the trainer."""

    def create_model_card(**trainer_card_kwargs) -> None:
        if not trainer.is_world_process_zero():
            return
        output_dir = trainer.args.output_dir
        card = model_card if model_card is not None else model_card_for_run(output_dir, trainer=trainer, **card_kwargs)
        card.save(os.path.join(output_dir, README_NAME))
        _drop_token_from_training_args(trainer.args, output_dir)

    trainer.create_model_card = create_model_card
    return trainer




README_NAME = "README.md"

TRAINING_ARGS_NAME = "training_args.bin"

def _drop_token_from_training_args(training_args, output_dir: str) -> None:
    # `Trainer.save_model` pickles the TrainingArguments, `hub_token` included, and `push_to_hub` uploads the file.
    path = os.path.join(output_dir, TRAINING_ARGS_NAME)
    if getattr(training_args, "hub_token", None) is None or not os.path.isfile(path):
        return
    import copy

    import torch

    redacted = copy.copy(training_args)
    redacted.hub_token = None
    torch.save(redacted, path)
