"""Real-data benchmark: our dual encoder recipe (`vlp pretrain`) against transformers' plain `CLIPModel` + `Trainer`
on captioned openclipart drawings, at the same budget.

    python benchmarks/real_data.py [--steps 1000] [--batch-size 64] [--image-size 64] [--max-drawings N]
                                   [--skip-minilm] [--runs ours,ours_lit,...] [--data-dir DIR]
                                   [--output-dir runs/real-data]

Data. The Debian package `openclipart-svg` ships ~8,100 SVG drawings under /usr/share/openclipart, each with Dublin
Core metadata: a `<dc:title>` and often a `<dc:description>` in `cc:Work`. `build_openclipart_dataset` turns them
into an imagefolder (`train/` and `test/`, each with `metadata.jsonl`), cached and reused:

- caption: the title, plus ". description" when the drawing has one that says more, cut at a word boundary to at
  most `CAPTION_CHARS` characters. About half the drawings carry a collection's name as title ("gramastar" on
  1,375 stars, "Part of the Flat Icon Collection (...)", "Lemon SVG theme"...): a title found on
  `GENERIC_TITLE_COUNT` or more drawings is a label, not a caption, and the file name's words stand in for it
  ("computer/icons/flat-theme/action/music_halfnote.svg" -> "music halfnote"). Drawings left with no words are
  skipped (counted), and at most `MAX_PER_CAPTION` drawings keep the same caption (the others are counted as
  repeated): 137 test stars all captioned "star pt step" would make retrieval a lottery for both models alike.
- image: rendered with cairosvg, the longer side scaled to the image size, centred on a white square (RGB PNG).
  Files cairosvg cannot render (or not within `RENDER_TIMEOUT_S`) are skipped and counted. A process pool renders.
- split: a drawing is in `test` when `int(sha1(relative path)[:8], 16) % 10 == 0`, so the split never depends on
  which other drawings exist.

Runs, all with the same steps, batch, image size, towers (the dual-small preset), text length, tokenizer,
optimizer (AdamW: lr, betas, weight decay, cosine schedule, warmup), seed, image normalisation and evaluation
(`evaluate_dual_encoder`: `retrieval_metrics` on the test split's embeddings):

- `ours`: `vlp pretrain --family dual` (VLPTrainer, VLPDualEncoderModel), run in-process through `modeling_vlp.commands.main`;
- `CLIPModel`: transformers' `CLIPModel(CLIPConfig(...))` of the same tower sizes, a plain `Trainer`, its own
  `return_loss=True`, a collator that only runs the processor;
- `ours + MiniLM` / `VisionTextDualEncoder + MiniLM` (unless `--skip-minilm`): the text tower starts from the
  pretrained all-MiniLM-L6-v2 (`vlp pretrain --text-model`) against transformers' `VisionTextDualEncoderModel`
  (a CLIP vision tower of the same size + the same MiniLM `BertModel`), same plain Trainer. It is the nearest
  transformers path to the pretrained-tower runs below: `VisionTextDualEncoderModel` refuses the timm tower, so its
  image tower stays a CLIP vision tower trained from scratch;
- `ours_lit` / `ours_pretrained_unlocked` (unless `--skip-minilm`): both towers pretrained, `vlp pretrain
  --vision-model EFFNET_DIR --text-model MINILM_DIR` with the ImageNet EfficientNet-Lite0 of `pretrained_towers.py`
  (a timm folder written once to `--vision-model`'s folder; its mean, std and interpolation come with it, its input
  side is `--image-size`) and all-MiniLM-L6-v2; `ours_lit` adds `--lock-image` (LiT: the image tower frozen, its
  BatchNorm statistics kept, the text tower and the projections trained), `ours_pretrained_unlocked` trains both.

The runs that start from a pretrained tower (MiniLM, and EfficientNet) take `--minilm-steps` (default `--steps`) and
`--minilm-learning-rate` (default 5e-4) instead of `--steps` and `--learning-rate`.

Writes `results.md` (the table), `results.json` and `losses.png` (training loss curves) under `--output-dir`.
"""

import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import signal
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (REPO_ROOT, os.path.join(REPO_ROOT, "benchmarks")):  # modeling_vlp, pretrained_towers
    if _path not in sys.path:
        sys.path.insert(0, _path)

logger = logging.getLogger("real_data")

SVG_ROOT = "/usr/share/openclipart"
NAMESPACES = {
    "dc": "http://purl.org/dc/elements/1.1/",
    "cc": "http://web.resource.org/cc/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
}
GENERIC_TITLE_COUNT = 10  # a title on this many drawings or more names a collection
MAX_PER_CAPTION = 10
CAPTION_CHARS = 200
RENDER_TIMEOUT_S = 20
BUILD_INFO_NAME = "build_info.json"


# --------------------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------------------


def clean_text(text: str | None) -> str:
    """Whitespace runs (newlines, tabs) -> one space, trimmed."""
    return " ".join((text or "").split())


def parse_svg_metadata(path: str) -> tuple[str, str]:
    """(title, description) of a drawing from its `cc:Work` Dublin Core metadata, whitespace-cleaned; "" when absent.

    Only the work's own `dc:title` counts: the publisher, creator and rights agents carry `dc:title`s too.
    Raises `ET.ParseError` on a file that is not well-formed XML."""
    root = ET.parse(path).getroot()
    title = description = ""
    for work in root.iter(f"{{{NAMESPACES['cc']}}}Work"):
        title = title or clean_text("".join(text for node in work.findall("dc:title", NAMESPACES) for text in node.itertext()))
        description = description or clean_text(
            "".join(text for node in work.findall("dc:description", NAMESPACES) for text in node.itertext())
        )
    return title, description


def file_name_words(relative_path: str) -> str:
    """The words of a file name: "flat-theme/action/music_halfnote2.svg" -> "music halfnote"."""
    stem = os.path.splitext(os.path.basename(relative_path))[0]
    return clean_text(re.sub(r"[^A-Za-z]+", " ", stem))


def make_caption(title: str, description: str = "", max_chars: int = CAPTION_CHARS) -> str:
    """ "title. description" (the description only when it adds to the title), cut at a word boundary."""
    caption = title
    if description and description.lower() not in title.lower():
        caption = f"{title.rstrip('.')}. {description}"
    if len(caption) > max_chars:
        cut = caption[:max_chars]
        caption = cut[: cut.rfind(" ")] if " " in cut else cut
    return caption.rstrip(" ,;:")


def split_of(relative_path: str) -> str:
    """ "test" for one drawing in ten, fixed by the hash of its path."""
    return "test" if int(hashlib.sha1(relative_path.encode()).hexdigest()[:8], 16) % 10 == 0 else "train"


def render_svg(path: str, size: int):
    """The drawing as a `size` x `size` RGB image: longer side scaled to `size`, centred on white."""
    import cairosvg
    from PIL import Image

    image = Image.open(io.BytesIO(cairosvg.svg2png(url=path, output_width=size))).convert("RGBA")
    if image.height > size:  # a tall drawing: scale its height down to the size instead
        width = max(1, round(image.width * size / image.height))
        image = image.resize((width, size), Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    canvas.alpha_composite(image, ((size - image.width) // 2, (size - image.height) // 2))
    return canvas.convert("RGB")


class _RenderTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _RenderTimeout()


def _render_job(job: tuple[str, str, int, int]) -> tuple[str, str | None]:
    """Render one drawing to `target`; (relative path, None) or (relative path, why it failed)."""
    source, target, size, timeout = job
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(timeout)
    try:
        render_svg(source, size).save(target, format="PNG", optimize=True)
        return source, None
    except _RenderTimeout:
        return source, f"timeout after {timeout} s"
    except Exception as error:  # cairosvg raises anything from ValueError to cairo errors on broken files
        return source, f"{type(error).__name__}: {error}"[:200]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Drawing:
    path: str  # relative to the SVG root
    title: str
    description: str
    caption: str = ""


def collect_drawings(svg_root: str, generic_title_count: int = GENERIC_TITLE_COUNT,
                     max_per_caption: int = MAX_PER_CAPTION) -> tuple[list[Drawing], Counter]:  # fmt: skip
    """Every SVG under `svg_root` with a usable caption, in hash order, and the counts of those skipped."""
    skipped = Counter()  # also counts "title_from_file_name", drawings kept with the file name's words
    drawings = []
    for directory, folders, files in os.walk(svg_root):
        folders.sort()
        for name in sorted(files):
            if not name.lower().endswith(".svg"):
                continue
            relative = os.path.relpath(os.path.join(directory, name), svg_root)
            try:
                title, description = parse_svg_metadata(os.path.join(svg_root, relative))
            except ET.ParseError:
                skipped["unparsable_xml"] += 1
                continue
            drawings.append(Drawing(relative, title, description))
    title_counts = Counter(drawing.title.lower() for drawing in drawings if drawing.title)
    kept, caption_counts = [], Counter()
    for drawing in sorted(drawings, key=lambda d: hashlib.sha1(d.path.encode()).hexdigest()):
        title = drawing.title
        if not title or title_counts[title.lower()] >= generic_title_count:
            skipped["title_from_file_name"] += 1
            title = file_name_words(drawing.path)
        if not title:
            skipped["no_usable_title"] += 1
            continue
        drawing.caption = make_caption(title, drawing.description)
        key = drawing.caption.lower()
        if caption_counts[key] >= max_per_caption:
            skipped["repeated_caption"] += 1
            continue
        caption_counts[key] += 1
        kept.append(drawing)
    return kept, skipped


def default_data_dir(image_size: int, max_drawings: int | None) -> str:
    suffix = f"-{max_drawings}" if max_drawings else ""
    return os.path.join(os.path.expanduser("~"), ".cache", "modeling_vlp", f"openclipart-{image_size}{suffix}")


def build_openclipart_dataset(
    output_dir: str,
    svg_root: str = SVG_ROOT,
    image_size: int = 64,
    max_drawings: int | None = None,
    workers: int = 2,
    show_progress: bool = True,
    render_timeout: int = RENDER_TIMEOUT_S,
) -> dict:
    """Build (or reuse) the imagefolder of captioned drawings in `output_dir` and return its build info: counts of
    drawings per split, of skipped ones by reason, and the render failures. `max_drawings` keeps the first drawings
    in hash order (a quick run); the split of a drawing does not depend on it."""
    from tqdm.auto import tqdm

    info_path = os.path.join(output_dir, BUILD_INFO_NAME)
    if os.path.isfile(info_path):
        with open(info_path) as handle:
            info = json.load(handle)
        logger.info("Reusing the dataset in %s (%s).", output_dir, info["counts"])
        return info
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 pixels, got {image_size}.")
    if not os.path.isdir(svg_root):
        raise ValueError(f"svg_root {svg_root!r} is not a folder (install the Debian package openclipart-svg).")
    drawings, skipped = collect_drawings(svg_root)
    if max_drawings:
        drawings = drawings[:max_drawings]
    if not drawings:
        raise ValueError(f"No drawing with a usable caption under {svg_root!r}.")

    building = output_dir.rstrip(os.sep) + ".building"
    shutil.rmtree(building, ignore_errors=True)
    for split in ("train", "test"):
        os.makedirs(os.path.join(building, split))
    jobs, targets = [], {}
    for index, drawing in enumerate(drawings):
        source = os.path.join(svg_root, drawing.path)
        file_name = f"{index:05d}.png"
        targets[source] = (drawing, file_name)
        jobs.append((source, os.path.join(building, split_of(drawing.path), file_name), image_size, render_timeout))
    failures = {}
    with ProcessPoolExecutor(max_workers=workers) if workers > 1 else contextlib.nullcontext() as pool:
        results = pool.map(_render_job, jobs, chunksize=8) if pool is not None else map(_render_job, jobs)
        for source, error in tqdm(results, total=len(jobs), desc="Rendering", disable=not show_progress):
            if error is not None:
                failures[os.path.relpath(source, svg_root)] = error
    skipped["render_failed"] = len(failures)
    counts = Counter()
    for split in ("train", "test"):
        with open(os.path.join(building, split, "metadata.jsonl"), "w") as handle:
            for source, (drawing, file_name) in targets.items():
                if split_of(drawing.path) != split or drawing.path in failures:
                    continue
                row = {"file_name": file_name, "caption": drawing.caption, "source": drawing.path}
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                counts[split] += 1
    info = {
        "svg_root": svg_root, "image_size": image_size, "max_drawings": max_drawings, "counts": dict(counts),
        "skipped": dict(skipped), "render_failures": failures,
    }  # fmt: skip
    with open(os.path.join(building, BUILD_INFO_NAME), "w") as handle:
        json.dump(info, handle, indent=2)
    shutil.rmtree(output_dir, ignore_errors=True)
    os.replace(building, output_dir)
    logger.info("Built %s: %s; skipped %s.", output_dir, dict(counts), dict(skipped))
    return info


# --------------------------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------------------------

RUN_LABELS = {
    "ours": "ours (vlp pretrain)",
    "ours_crop": "ours + random crops (--recipe-args)",
    "clip": "CLIPModel + Trainer",
    "ours_clip_init": "ours from CLIPModel's initial weights",
    "ours_minilm": "ours + MiniLM text tower (--text-model)",
    "vtde_minilm": "VisionTextDualEncoder + MiniLM (CLIP vision tower from scratch)",
    "ours_lit": "ours LiT: locked EfficientNet-Lite0 + MiniLM (--lock-image)",
    "ours_pretrained_unlocked": "ours: EfficientNet-Lite0 + MiniLM, both trained",
}
# Runs that start from pretrained towers: the MiniLM text tower (all of them), the EfficientNet image tower (the
# ones named in VISION_TOWER_RUNS); they take the --minilm-steps / --minilm-learning-rate budget.
PRETRAINED_RUNS = ("ours_minilm", "vtde_minilm", "ours_lit", "ours_pretrained_unlocked")
VISION_TOWER_RUNS = ("ours_lit", "ours_pretrained_unlocked")
# `vlp pretrain` options of the "ours_crop" run on top of its defaults (--recipe-args replaces them).
RECIPE_ARGS = "--random-crop-scale 0.5"


def training_budget(steps: int, batch_size: int, seed: int, learning_rate: float | None = None) -> dict:
    """The optimisation budget every run gets, as `TrainingArguments` fields: `vlp pretrain`'s CPU defaults (AdamW,
    cosine schedule, warmup, weight decay, gradient clipping) at `steps` x `batch_size`."""
    from modeling_vlp.commands.arguments import CPU_TRAINING_DEFAULTS

    defaults = CPU_TRAINING_DEFAULTS
    warmup = defaults["warmup_steps"]
    return dict(
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=defaults["learning_rate"] if learning_rate is None else learning_rate,
        weight_decay=defaults["weight_decay"],
        adam_beta1=0.9,
        adam_beta2=defaults["adam_beta2"],
        adam_epsilon=1e-8,
        # A whole number of steps, so that both command lines read the same value.
        warmup_steps=int(round(warmup * steps)) if warmup < 1 else int(warmup),
        lr_scheduler_type=defaults["lr_scheduler_type"],
        max_grad_norm=defaults["max_grad_norm"],
        seed=seed,
        logging_steps=max(1, min(25, steps // 10)),
        dataloader_drop_last=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=defaults["dataloader_pin_memory"],
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
    )


def _budget_argv(budget: dict) -> list[str]:
    argv = []
    for key, value in budget.items():
        flag = "--" + key.replace("_", "-")
        argv += [flag, str(value)]
    return argv


def evaluate_retrieval(model, processor, test_dataset, batch_size: int = 128) -> dict[str, float]:
    """The one evaluation of every run: `evaluate_dual_encoder` (`retrieval_metrics` over the test split's
    embeddings: each test image against each test caption)."""
    from modeling_vlp.evaluation.embeddings import evaluate_dual_encoder

    return evaluate_dual_encoder(model, processor, test_dataset, batch_size=batch_size, show_progress=False)


def _loss_history(log_history: list[dict]) -> list[tuple[int, float]]:
    return [(int(entry["step"]), float(entry["loss"])) for entry in log_history if "loss" in entry]


def _train_runtime(log_history: list[dict]) -> float:
    return next((float(entry["train_runtime"]) for entry in reversed(log_history) if "train_runtime" in entry), 0.0)


def _run_result(model, processor, test_dataset, log_history: list[dict]) -> dict:
    """What every run reports: test retrieval of the trained model, training time, loss curve, size."""
    return {
        "metrics": evaluate_retrieval(model, processor, test_dataset),
        "train_runtime": _train_runtime(log_history),
        "losses": _loss_history(log_history),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def run_ours(data_dir: str, output_dir: str, budget: dict, image_size: int, max_text_length: int,
             tokenizer_dir: str | None = None, text_model: str | None = None, vision_model: str | None = None,
             preset: str = "dual-small", extra_argv: list[str] | None = None) -> dict:  # fmt: skip
    """`vlp pretrain --family dual` in-process (`text_model` / `vision_model`: `--text-model` / `--vision-model`),
    then the common evaluation of the saved model."""
    from modeling_vlp.processors import VLPProcessor

    from modeling_vlp.commands import main
    from modeling_vlp.data.local import load_image_text_dataset
    from modeling_vlp.modeling_dual_encoder import VLPDualEncoderModel

    shutil.rmtree(output_dir, ignore_errors=True)
    argv = ["pretrain", "--family", "dual", "--preset", preset, "--dataset", data_dir, "--output-dir", output_dir,
            "--image-size", str(image_size), "--max-text-length", str(max_text_length)]  # fmt: skip
    if tokenizer_dir is not None:
        argv += ["--tokenizer", tokenizer_dir]
    if text_model is not None:
        argv += ["--text-model", text_model]
    if vision_model is not None:
        argv += ["--vision-model", vision_model]
    argv += _budget_argv(budget) + list(extra_argv or [])
    logger.info("vlp %s", " ".join(argv))
    status = main(argv)
    if status != 0:
        raise RuntimeError(f"vlp pretrain exited with status {status}.")
    with open(os.path.join(output_dir, "trainer_state.json")) as handle:
        log_history = json.load(handle)["log_history"]
    model = VLPDualEncoderModel.from_pretrained(output_dir)
    processor = VLPProcessor.from_pretrained(output_dir)
    test_dataset = load_image_text_dataset(data_dir)["test"]
    return {**_run_result(model, processor, test_dataset, log_history), "command": "vlp " + " ".join(argv)}


class PlainCollator:
    """Rows -> the processor's batch + `return_loss=True`: what a transformers user writes for CLIP training."""

    def __init__(self, processor, max_length: int):
        self.processor = processor
        self.max_length = max_length

    def __call__(self, rows: list[dict]) -> dict:
        batch = self.processor(
            images=[row["image"] for row in rows], text=[row["caption"] for row in rows], paired=True,
            padding=True, truncation=True, max_length=self.max_length, return_tensors="pt",
        )  # fmt: skip
        return {**batch, "return_loss": True}


def _plain_train(model, processor, data_dir: str, output_dir: str, budget: dict, max_text_length: int) -> dict:
    from transformers import Trainer, TrainingArguments

    from modeling_vlp.data.local import load_image_text_dataset

    shutil.rmtree(output_dir, ignore_errors=True)
    splits = load_image_text_dataset(data_dir)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(output_dir=output_dir, **budget),
        train_dataset=splits["train"],
        data_collator=PlainCollator(processor, max_text_length),
    )
    trainer.train()
    trainer.save_model(output_dir)
    return _run_result(model, processor, splits["test"], trainer.state.log_history)


def _vision_fields(preset: str, image_size: int) -> dict:
    """The CLIPVisionConfig fields of the preset's image tower at `image_size`."""
    from modeling_vlp.presets import get_preset_config

    vision = get_preset_config(preset, vision_config={"image_size": image_size}).vision_config
    names = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "hidden_act",
             "layer_norm_eps", "image_size", "patch_size", "num_channels")  # fmt: skip
    return {name: getattr(vision, name) for name in names}


def run_clip(data_dir: str, output_dir: str, budget: dict, image_size: int, max_text_length: int,
             tokenizer_dir: str, preset: str = "dual-small") -> dict:  # fmt: skip
    """transformers' `CLIPModel` with the towers of `preset`, our tokenizer's ids, a plain `Trainer`."""
    from modeling_vlp.commands.arguments import PretrainArguments
    from modeling_vlp.commands.common import build_processor

    processor = build_processor(PretrainArguments(tokenizer=tokenizer_dir), None, image_size, max_text_length)
    model = _build_clip(processor.tokenizer, budget, image_size, max_text_length, preset)
    return _plain_train(model, processor, data_dir, output_dir, budget, max_text_length)


def _build_clip(tokenizer, budget: dict, image_size: int, max_text_length: int, preset: str):
    """`CLIPModel` with the towers of `preset` and the tokenizer's vocabulary and ids, seeded by the budget."""
    from transformers import CLIPConfig, CLIPModel, set_seed

    from modeling_vlp.presets import get_preset_config

    preset_config = get_preset_config(preset)
    text = preset_config.text_config
    text_fields = dict(
        hidden_size=text.hidden_size, intermediate_size=text.intermediate_size,
        num_hidden_layers=text.num_hidden_layers, num_attention_heads=text.num_attention_heads,
        hidden_act=text.hidden_act, layer_norm_eps=text.layer_norm_eps, max_position_embeddings=max_text_length,
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        # CLIP pools the text at the first eos_token_id (any id but 2, which means "the highest id").
        eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    if tokenizer.eos_token_id == 2:
        raise ValueError("CLIPModel reads eos_token_id == 2 as 'pool at the highest id'; the tokenizer's eos is 2.")
    config = CLIPConfig(
        vision_config=_vision_fields(preset, image_size), text_config=text_fields,
        projection_dim=preset_config.projection_dim, logit_scale_init_value=preset_config.logit_scale_init_value,
    )  # fmt: skip
    set_seed(budget["seed"])
    return CLIPModel(config)


def run_ours_from_clip_init(data_dir: str, output_dir: str, budget: dict, image_size: int, max_text_length: int,
                            tokenizer_dir: str, preset: str = "dual-small", extra_argv: list[str] | None = None) -> dict:  # fmt: skip
    """A diagnostic: what `vlp pretrain` trains (our model, `VLPTrainer`, `VLPCollator` with the recipe's options),
    started from the very weights `run_clip`'s `CLIPModel` starts from (the parameter names are the same), which
    separates what the initialisation does from what the training loop does."""
    from transformers import TrainingArguments

    from modeling_vlp import VLPDualEncoderModel
    from modeling_vlp.commands.common import build_config, build_processor
    from modeling_vlp.commands.pretrain import _pretrain_parser
    from modeling_vlp.data.local import load_image_text_dataset
    from modeling_vlp.training.collators import VLPCollator
    from modeling_vlp.training.trainer import VLPTrainer

    recipe, _ = _pretrain_parser().parse_args_into_dataclasses(
        args=list(extra_argv or []) + ["--output-dir", output_dir, "--preset", preset, "--tokenizer", tokenizer_dir,
                                       "--image-size", str(image_size), "--max-text-length", str(max_text_length)]
    )  # fmt: skip
    processor = build_processor(recipe, None, image_size, max_text_length)
    clip = _build_clip(processor.tokenizer, budget, image_size, max_text_length, preset)
    model = VLPDualEncoderModel(build_config(recipe, preset, processor.tokenizer))
    model.load_state_dict(clip.state_dict(), strict=True)
    shutil.rmtree(output_dir, ignore_errors=True)
    splits = load_image_text_dataset(data_dir)
    collator = VLPCollator(processor, max_length=max_text_length, seed=budget["seed"],
                           random_crop_scale=recipe.random_crop_scale)  # fmt: skip
    trainer = VLPTrainer(model=model, args=TrainingArguments(output_dir=output_dir, **budget),
                         train_dataset=splits["train"], data_collator=collator)  # fmt: skip
    trainer.train()
    return _run_result(model, processor, splits["test"], trainer.state.log_history)


def run_vision_text_dual_encoder(data_dir: str, output_dir: str, budget: dict, image_size: int,
                                 max_text_length: int, text_model: str, preset: str = "dual-small") -> dict:  # fmt: skip
    """transformers' `VisionTextDualEncoderModel`: a `CLIPVisionModel` with the towers of `preset` + the pretrained
    text model, a plain `Trainer`."""
    from transformers import (
        AutoModel,
        CLIPVisionConfig,
        CLIPVisionModel,
        VisionTextDualEncoderConfig,
        VisionTextDualEncoderModel,
        set_seed,
    )  # fmt: skip

    from modeling_vlp.commands.arguments import PretrainArguments
    from modeling_vlp.commands.common import build_text_model_processor
    from modeling_vlp.presets import get_preset_config

    processor = build_text_model_processor(PretrainArguments(text_model=text_model), image_size, max_text_length)
    set_seed(budget["seed"])
    vision_config = CLIPVisionConfig(**_vision_fields(preset, image_size))
    text_tower = AutoModel.from_pretrained(text_model)
    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        vision_config, text_tower.config, projection_dim=get_preset_config(preset).projection_dim
    )
    model = VisionTextDualEncoderModel(config, vision_model=CLIPVisionModel(vision_config), text_model=text_tower)
    return _plain_train(model, processor, data_dir, output_dir, budget, max_text_length)


def train_shared_tokenizer(data_dir: str, output_dir: str, vocab_size: int, max_text_length: int) -> str:
    """One SentencePiece tokenizer trained on the training captions, saved to `output_dir` for every run."""
    from modeling_vlp.processors import VLPTokenizer

    from modeling_vlp.data.local import load_image_text_dataset

    captions = load_image_text_dataset(data_dir)["train"]["caption"]
    tokenizer = VLPTokenizer.train_from_iterator(captions, vocab_size=vocab_size, model_max_length=max_text_length)
    tokenizer.save_pretrained(output_dir)
    return output_dir


# --------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------


def _recalls(metrics: dict, direction: str) -> str:
    return " / ".join(f"{metrics[f'{direction}_r@{k}']:.1f}" for k in (1, 5, 10))


def format_table(results: dict[str, dict]) -> str:
    """Markdown: model | i2t R@1/5/10 | t2i R@1/5/10 | train time."""
    lines = ["| model | i2t R@1 / 5 / 10 | t2i R@1 / 5 / 10 | train time |", "| --- | --- | --- | --- |"]
    for name, result in results.items():
        metrics = result["metrics"]
        minutes, seconds = divmod(int(round(result["train_runtime"])), 60)
        lines.append(
            f"| {RUN_LABELS.get(name, name)} | {_recalls(metrics, 'i2t')} | {_recalls(metrics, 't2i')} | "
            f"{minutes}:{seconds:02d} |"
        )
    if results:
        chance = {key[len("chance_"):]: value for key, value in next(iter(results.values()))["metrics"].items()
                  if key.startswith("chance_")}  # fmt: skip
        lines.append(f"| chance | {_recalls(chance, 'i2t')} | {_recalls(chance, 't2i')} | |")
    return "\n".join(lines)


def plot_losses(results: dict[str, dict], path: str, width: int = 900, height: int = 480) -> None:
    """Training loss against step, one line per run (PIL only)."""
    from PIL import Image, ImageDraw

    curves = {name: result["losses"] for name, result in results.items() if result["losses"]}
    if not curves:
        return
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]
    left, right, top, bottom = 60, 20, 20, 40
    max_step = max(step for curve in curves.values() for step, _ in curve) or 1
    max_loss = max(loss for curve in curves.values() for _, loss in curve)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")

    def point(step: float, loss: float) -> tuple[float, float]:
        x = left + (width - left - right) * step / max_step
        y = height - bottom - (height - top - bottom) * loss / max_loss
        return x, y

    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        _, y = point(0, max_loss * fraction)
        draw.line([left - 4, y, left, y], fill="black")
        draw.text((4, y - 6), f"{max_loss * fraction:.2f}", fill="black")
        x, _ = point(max_step * fraction, 0)
        draw.line([x, height - bottom, x, height - bottom + 4], fill="black")
        draw.text((x - 10, height - bottom + 8), str(int(max_step * fraction)), fill="black")
    for index, (name, curve) in enumerate(curves.items()):
        colour = colours[index % len(colours)]
        draw.line([point(step, loss) for step, loss in curve], fill=colour, width=2)
        x, y = width - right - 400, top + 8 + 14 * index
        draw.rectangle([x, y + 4, x + 12, y + 6], fill=colour)
        draw.text((x + 18, y), RUN_LABELS.get(name, name), fill=colour)
    draw.text((width // 2 - 40, height - 16), "step / training loss", fill="black")
    image.save(path)


# --------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000, help="Optimizer steps of every run.")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=64, help="Rendered and model input side.")
    parser.add_argument("--max-text-length", type=int, default=32, help="Caption tokens (text positions).")
    parser.add_argument("--vocab-size", type=int, default=2000, help="Shared SentencePiece tokenizer's vocabulary.")
    parser.add_argument("--learning-rate", type=float, default=None, help="Default: vlp pretrain's (1e-3).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="dual-small", help="Tower sizes of every run.")
    parser.add_argument("--max-drawings", type=int, default=None, help="Use the first N drawings (a quick run).")
    parser.add_argument("--skip-minilm", action="store_true", help="Skip the pretrained-MiniLM pair of runs.")
    parser.add_argument("--runs", default=None,
                        help=f"Comma-separated subset of {list(RUN_LABELS)} (default: all but the ours_clip_init "
                        "diagnostic).")
    parser.add_argument("--minilm-steps", type=int, default=None,
                        help="Optimizer steps of the MiniLM pair (default: --steps); ~4x slower per step on a CPU.")
    parser.add_argument("--minilm-learning-rate", type=float, default=5e-4,
                        help="Peak learning rate of the MiniLM pair (both runs): the pretrained tower is fine-tuned.")
    parser.add_argument("--recipe-args", default=RECIPE_ARGS,
                        help=f"`vlp pretrain` options of the 'ours_crop' run beyond its defaults (default: {RECIPE_ARGS!r}).")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: fastest for these small models on a shared CPU).")
    parser.add_argument("--svg-root", default=SVG_ROOT)
    parser.add_argument("--data-dir", default=None, help="Dataset cache (default ~/.cache/modeling_vlp/openclipart-<size>).")
    parser.add_argument("--workers", type=int, default=2, help="Rendering processes.")
    parser.add_argument("--text-model", default=None, help="Pretrained text tower (default: the installed MiniLM).")
    parser.add_argument("--vision-model", default=None,
                        help="Pretrained image tower of ours_lit / ours_pretrained_unlocked (default: the "
                        "EfficientNet-Lite0 timm folder, written once to ~/.cache/modeling_vlp/efficientnet-lite0).")
    parser.add_argument("--output-dir", default="runs/real-data")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    import shlex

    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    import torch

    import modeling_vlp  # noqa: F401  (registers our classes with the Auto classes)

    torch.set_num_threads(args.threads)

    runs = [name for name in RUN_LABELS if name != "ours_clip_init"] if args.runs is None else [name for name in args.runs.split(",") if name]
    unknown = sorted(set(runs) - set(RUN_LABELS))
    if unknown:
        raise ValueError(f"--runs {args.runs!r}: unknown runs {unknown}; known: {list(RUN_LABELS)}.")
    if args.skip_minilm:
        runs = [name for name in runs if name not in PRETRAINED_RUNS]
    from pretrained_towers import efficientnet_lite0_folder, minilm_folder

    text_model = args.text_model or (minilm_folder() if set(runs) & set(PRETRAINED_RUNS) else None)
    vision_model = args.vision_model or os.path.expanduser("~/.cache/modeling_vlp/efficientnet-lite0")
    if set(runs) & set(VISION_TOWER_RUNS):
        vision_model = efficientnet_lite0_folder(vision_model)

    data_dir = args.data_dir or default_data_dir(args.image_size, args.max_drawings)
    build_info = build_openclipart_dataset(
        data_dir, args.svg_root, args.image_size, args.max_drawings, workers=args.workers
    )
    os.makedirs(args.output_dir, exist_ok=True)
    tokenizer_dir = train_shared_tokenizer(
        data_dir, os.path.join(args.output_dir, "tokenizer"), args.vocab_size, args.max_text_length
    )
    budget = training_budget(args.steps, args.batch_size, args.seed, args.learning_rate)
    minilm_budget = training_budget(args.minilm_steps or args.steps, args.batch_size, args.seed, args.minilm_learning_rate)
    common = dict(image_size=args.image_size, max_text_length=args.max_text_length, preset=args.preset)
    recipe = shlex.split(args.recipe_args)
    launchers = {
        "ours": lambda out: run_ours(data_dir, out, budget, tokenizer_dir=tokenizer_dir, **common),
        "ours_crop": lambda out: run_ours(data_dir, out, budget, tokenizer_dir=tokenizer_dir, extra_argv=recipe, **common),
        "clip": lambda out: run_clip(data_dir, out, budget, tokenizer_dir=tokenizer_dir, **common),
        "ours_clip_init": lambda out: run_ours_from_clip_init(data_dir, out, budget, tokenizer_dir=tokenizer_dir,
                                                              **common),
        "ours_minilm": lambda out: run_ours(data_dir, out, minilm_budget, text_model=text_model, **common),
        "ours_lit": lambda out: run_ours(data_dir, out, minilm_budget, text_model=text_model, vision_model=vision_model,
                                         extra_argv=["--lock-image"], **common),
        "ours_pretrained_unlocked": lambda out: run_ours(data_dir, out, minilm_budget, text_model=text_model,
                                                         vision_model=vision_model, **common),
        "vtde_minilm": lambda out: run_vision_text_dual_encoder(data_dir, out, minilm_budget, text_model=text_model,
                                                                **common),
    }  # fmt: skip
    results = {}
    for name in runs:
        logger.info("=== %s ===", RUN_LABELS[name])
        results[name] = launchers[name](os.path.join(args.output_dir, name))
        logger.info("%s: %s", name, {k: round(v, 2) for k, v in results[name]["metrics"].items() if "r@" in k})

    table = format_table(results)
    summary = {
        "command": "python benchmarks/real_data.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "budget": budget, "preset": args.preset, "image_size": args.image_size,
        "max_text_length": args.max_text_length, "vocab_size": args.vocab_size, "data_dir": data_dir,
        "minilm_budget": minilm_budget, "dataset": {key: build_info[key] for key in ("counts", "skipped")},
        "render_failures": build_info["render_failures"], "recipe_args": args.recipe_args, "results": results,
    }  # fmt: skip
    with open(os.path.join(args.output_dir, "results.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    with open(os.path.join(args.output_dir, "results.md"), "w") as handle:
        handle.write(table + "\n")
    plot_losses(results, os.path.join(args.output_dir, "losses.png"))
    print(table, flush=True)
    return summary


if __name__ == "__main__":
    main()
