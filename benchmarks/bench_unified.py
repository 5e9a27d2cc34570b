"""Speed of our unified model against transformers' ViLT and VisualBERT, same architecture, same weights.

    python benchmarks/bench_unified.py [--family vilt|visualbert|both] [--batch-size 32] [--device cpu|cuda]
                                       [--steps 7] [--warmup 2] [--autocast none|bf16] [--small]

Each transformers model (`ViltForMaskedLM`: ViLT-B/32; `VisualBertForPreTraining`: BERT-base over 2048-d region
features) is built from its default config with random weights (nothing is downloaded) and translated into our
`VLPUnifiedForPreTraining` with the converters of `modeling_vlp.conversion` (our ITM / MIM heads are new and unused
by the MLM step). Batches:
- ViLT: images 384x576 (12x18 patches of 32 px), every other one padded from a 384x384 image (`pixel_mask`), every
  patch kept (`max_image_length` -1 for both), captions of 8-40 tokens padded to 40, 15% of their tokens labelled;
- VisualBERT: 32-token captions (padded), 36 region features of which every other image has 24, 15% labelled,
  every pair matching (`sentence_image_labels` 0 there, `itm_labels` 1 here), so both compute MLM + matching.
It first prints how far apart the outputs are, then times

- train: zero_grad + forward with the labels + backward + AdamW step, in train mode;
- infer: forward to the MLM logits under `torch.no_grad()`, in eval mode;

interleaved (one step of each model in turn, the starting model rotating, several rounds) and reports the median
milliseconds per step and the ratio ours / theirs (below 1 means we are faster). Ours uses `--attn` (default SDPA);
transformers' ViLT and VisualBERT implement eager attention only. `--small` shrinks both models (2 layers, width
64) for a CPU smoke run.
"""

import argparse
import logging
import platform
import statistics
import time
from collections.abc import Callable

import torch


SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)


def build_vilt(small: bool, attn: str, seed: int):
    from transformers import ViltConfig, ViltForMaskedLM

    from modeling_vlp.conversion import common, convert_vilt
    from modeling_vlp.modeling_unified import VLPUnifiedForPreTraining

    fields = dict(max_image_length=-1)
    if small:
        fields.update(SMALL, vocab_size=1000, image_size=64, patch_size=16)
    torch.manual_seed(seed)
    reference = ViltForMaskedLM(ViltConfig(**fields))
    config = convert_vilt.convert_config(reference.config)
    config._attn_implementation = attn
    state_dict = convert_vilt.convert_state_dict(reference.state_dict(), "vilt.")
    new = ("itm_head.", "mim_head.", "vlp." + convert_vilt.MASK_TOKEN)
    ours = common.load_converted(config, state_dict, VLPUnifiedForPreTraining, new)
    return ours, reference


def build_visualbert(small: bool, attn: str, seed: int):
    from transformers import VisualBertConfig, VisualBertForPreTraining

    from modeling_vlp.conversion import common, convert_visualbert
    from modeling_vlp.modeling_unified import VLPUnifiedForPreTraining

    fields = dict(visual_embedding_dim=2048, pad_token_id=0)
    if small:
        fields.update(SMALL, vocab_size=1000, visual_embedding_dim=128)
    torch.manual_seed(seed)
    reference = VisualBertForPreTraining(VisualBertConfig(**fields))
    config = convert_visualbert.convert_config(reference.config)
    config._attn_implementation = attn
    state_dict = convert_visualbert.convert_state_dict(reference.state_dict(), "visual_bert.")
    ours = common.load_converted(config, state_dict, VLPUnifiedForPreTraining, ("mim_head.",))
    return ours, reference


def text_batch(batch_size: int, length: int, min_length: int, vocab_size: int, generator):
    lengths = torch.randint(min_length, length + 1, (batch_size,), generator=generator)
    attention_mask = (torch.arange(length)[None] < lengths[:, None]).long()
    input_ids = torch.randint(1000 if vocab_size > 2000 else 5, vocab_size, (batch_size, length), generator=generator)
    input_ids = input_ids * attention_mask
    labelled = (torch.rand(batch_size, length, generator=generator) < 0.15) & attention_mask.bool()
    labelled[:, 1] = True  # at least one label per row
    mlm_labels = torch.where(labelled, input_ids, -100)
    return dict(input_ids=input_ids, attention_mask=attention_mask), mlm_labels


def vilt_batch(batch_size: int, config, small: bool, seed: int):
    generator = torch.Generator().manual_seed(seed)
    text, mlm_labels = text_batch(batch_size, config.max_position_embeddings, 8, config.vocab_size, generator)
    height, width = (64, 96) if small else (384, 576)
    pixel_values = torch.randn(batch_size, 3, height, width, generator=generator)
    pixel_mask = torch.ones(batch_size, height, width, dtype=torch.long)
    pixel_mask[1::2, :, height:] = 0  # every other image is square (height x height), padded on the right
    pixel_values = pixel_values * pixel_mask[:, None]
    inputs = dict(text, pixel_values=pixel_values, pixel_mask=pixel_mask)
    return inputs, dict(inputs, mlm_labels=mlm_labels), dict(inputs, labels=mlm_labels)


def visualbert_batch(batch_size: int, config, small: bool, seed: int):
    generator = torch.Generator().manual_seed(seed)
    text, mlm_labels = text_batch(batch_size, 32, 8, config.vocab_size, generator)
    num_regions = 36
    visual_feats = torch.rand(batch_size, num_regions, config.visual_feat_dim, generator=generator)
    visual_attention_mask = torch.ones(batch_size, num_regions, dtype=torch.long)
    visual_attention_mask[1::2, 24:] = 0
    ours = dict(text, visual_feats=visual_feats, visual_attention_mask=visual_attention_mask)
    theirs = dict(text, visual_embeds=visual_feats, visual_attention_mask=visual_attention_mask)
    # VisualBERT's labels cover text and regions; its sentence-image class 0 means "matches".
    labels = torch.cat([mlm_labels, torch.full((batch_size, num_regions), -100)], dim=1)
    ours_train = dict(ours, mlm_labels=mlm_labels, itm_labels=torch.ones(batch_size, dtype=torch.long))
    theirs_train = dict(theirs, labels=labels, sentence_image_labels=torch.zeros(batch_size, dtype=torch.long))
    return (ours, theirs), ours_train, theirs_train


def to_device(batch: dict, device) -> dict:
    return {key: value.to(device) for key, value in batch.items()}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(steps: dict[str, Callable], device, repeats: int, warmup: int, autocast) -> dict[str, dict]:
    """Median ms per step of each model, measured round-robin with the first model rotating each round."""
    times = {name: [] for name in steps}
    peaks = {name: 0 for name in steps}
    names = list(steps)
    with autocast():
        for _ in range(warmup):
            for name in names:
                steps[name]()
        synchronize(device)
        for round_index in range(repeats):
            order = names[round_index % len(names) :] + names[: round_index % len(names)]
            for name in order:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                synchronize(device)
                start = time.perf_counter()
                steps[name]()
                synchronize(device)
                times[name].append((time.perf_counter() - start) * 1000)
                if device.type == "cuda":
                    peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(device))
    return {
        name: {"median": statistics.median(t), "min": min(t), "max": max(t), "peak_mib": peaks[name] / 2**20}
        for name, t in times.items()
    }


def train_step(model, inputs: dict, lr: float = 1e-6) -> Callable:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        return loss

    return step


def run_family(family: str, args, device, autocast) -> dict:
    reference_name = "ViltForMaskedLM" if family == "vilt" else "VisualBertForPreTraining"
    build = build_vilt if family == "vilt" else build_visualbert
    ours, reference = build(args.small, args.attn, args.seed)
    models = {"ours": ours.to(device), reference_name: reference.to(device)}
    if family == "vilt":
        inputs, ours_train, theirs_train = vilt_batch(args.batch_size, ours.config, args.small, args.seed)
        ours_infer = theirs_infer = to_device(inputs, device)
    else:
        (ours_infer, theirs_infer), ours_train, theirs_train = visualbert_batch(
            args.batch_size, ours.config, args.small, args.seed
        )
        ours_infer, theirs_infer = to_device(ours_infer, device), to_device(theirs_infer, device)
    ours_train, theirs_train = to_device(ours_train, device), to_device(theirs_train, device)

    def their_logits(outputs):
        return outputs.logits if family == "vilt" else outputs.prediction_logits

    text_length = ours_infer["input_ids"].shape[1]
    for model in models.values():
        model.eval()
    with torch.no_grad():
        ours_logits = ours(**ours_infer).mlm_logits
        theirs_logits = their_logits(reference(**theirs_infer))[:, :text_length]
        ours_loss, theirs_loss = ours(**ours_train).loss, reference(**theirs_train).loss
    parameters = sum(p.numel() for p in ours.parameters())
    visual = ours_infer.get("pixel_values", ours_infer.get("visual_feats"))
    print(
        f"\n== {family}: ours (attn {ours.config._attn_implementation}) vs {reference_name} (eager), "
        f"{parameters / 1e6:.1f}M parameters, text {tuple(ours_infer['input_ids'].shape)}, visual {tuple(visual.shape)}"
    )
    print(f"Output check (fp32): mlm logits max |diff| {(ours_logits - theirs_logits).abs().max().item():.2e}, "
          f"losses {ours_loss.item():.5f} vs {theirs_loss.item():.5f}")  # fmt: skip

    results = {}
    if args.only in (None, "infer"):
        steps = {
            "ours": lambda: ours(**ours_infer).mlm_logits,
            reference_name: lambda: their_logits(reference(**theirs_infer)),
        }
        with torch.no_grad():
            results["infer"] = time_interleaved(steps, device, args.steps, args.warmup, autocast)
    if args.only in (None, "train"):
        for model in models.values():
            model.train()
        steps = {"ours": train_step(ours, ours_train), reference_name: train_step(reference, theirs_train)}
        results["train"] = time_interleaved(steps, device, args.steps, args.warmup, autocast)
    print_table(results, reference_name, device)
    del models, ours, reference
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results


def print_table(results: dict, reference_name: str, device) -> None:
    names = ("ours", reference_name)
    header = f"{'step':<6} " + " ".join(f"{name + ' ms':>27}" for name in names) + f" {'ours/theirs':>12}"
    print(header)
    print("-" * len(header))
    for phase, stats in results.items():
        line = f"{phase:<6} " + " ".join(f"{stats[name]['median']:>27.1f}" for name in names)
        print(line + f" {stats['ours']['median'] / stats[reference_name]['median']:>12.3f}")
    for phase, stats in results.items():
        spread = ", ".join(f"{name} {stats[name]['min']:.1f}-{stats[name]['max']:.1f}" for name in names)
        print(f"  {phase} spread (ms): {spread}")
        if device.type == "cuda":
            memory = ", ".join(f"{name} {stats[name]['peak_mib']:.0f} MiB" for name in names)
            print(f"  {phase} peak memory: {memory}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=("vilt", "visualbert", "both"), default="both", help="Default: both.")
    parser.add_argument("--batch-size", type=int, default=32, help="Image-text pairs per step. Default: 32.")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (or cuda:N). Default: cpu.")
    parser.add_argument("--attn", choices=("sdpa", "eager"), default="sdpa", help="Ours. Default: sdpa.")
    parser.add_argument("--steps", "--repeats", dest="steps", type=int, default=7,
                        help="Timed rounds per step kind. Default: 7.")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=2, help="Untimed rounds first. Default: 2.")
    parser.add_argument("--autocast", choices=("none", "bf16"), default="none",
                        help="Run the steps under torch.autocast(bfloat16). Default: none (fp32).")  # fmt: skip
    parser.add_argument("--small", action="store_true", help="Tiny models and inputs: a CPU smoke run.")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU.")
    parser.add_argument("--only", choices=("train", "infer"), default=None, help="Time one step kind only.")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("modeling_vlp.conversion").setLevel(logging.WARNING)
    import transformers

    print(
        f"batch {args.batch_size}, device {device}, attn {args.attn}, autocast {args.autocast}, "
        f"steps {args.steps} (+{args.warmup} warmup){', small models' if args.small else ''}\n"
        f"torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}, "
        f"threads {torch.get_num_threads()}"
        + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "")
    )
    if args.autocast == "bf16":

        def autocast():
            return torch.autocast(device.type, dtype=torch.bfloat16)
    else:

        def autocast():
            return torch.autocast(device.type, enabled=False)

    families = ("vilt", "visualbert") if args.family == "both" else (args.family,)
    return {family: run_family(family, args, device, autocast) for family in families}


if __name__ == "__main__":
    main()
