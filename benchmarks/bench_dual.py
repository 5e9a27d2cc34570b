"""Speed of our dual encoder against transformers' `CLIPModel` and open_clip, same architecture, same weights.

    python benchmarks/bench_dual.py [--model-name ViT-B-32] [--batch-size 8] [--device cpu|cuda]
                                    [--attn sdpa|eager] [--repeats 7] [--warmup 2] [--autocast none|bf16]

An open_clip model is built from its registered config with random weights (`pretrained=None`, nothing is
downloaded), translated into our `VLPDualEncoderModel` with `modeling_vlp.conversion.convert_open_clip`, and our
weights are copied into a `CLIPModel` of the same shape. All three get the same batch: random images and open_clip
style token rows (`<sot> ... <eot>` then zeros up to the context length, no attention mask, text pooled at the
highest id). It first prints how far apart their logits are, then times

- train: zero_grad + forward + symmetric InfoNCE loss + backward + AdamW step, in train mode;
- infer: forward to `logits_per_image` under `torch.no_grad()`, in eval mode;

interleaved (one step of each model in turn, the starting model rotating, several rounds) and reports the median
milliseconds per step and the ratios ours / theirs (below 1 means we are faster). `--attn` applies to ours and to
`CLIPModel`; open_clip always uses `nn.MultiheadAttention`.
"""

import argparse
import platform
import statistics
import time
import types
from collections.abc import Callable

import torch
import torch.nn.functional as F


NAMES = ("ours", "CLIPModel", "open_clip")
# open_clip's tokenizer layout for the CLIP BPE vocabulary.
PAD_ID, SOT_ID, EOT_ID = 0, 49406, 49407


def build_models(model_name: str, attn: str, seed: int):
    """open_clip model (random weights), ours and a CLIPModel holding the same weights."""
    import open_clip
    from transformers import CLIPConfig, CLIPModel

    from modeling_vlp import VLPDualEncoderModel
    from modeling_vlp.conversion import convert_open_clip

    torch.manual_seed(seed)
    reference = open_clip.create_model(model_name, pretrained=None)
    tokenizer_ids = types.SimpleNamespace(pad_token_id=PAD_ID, bos_token_id=SOT_ID, eos_token_id=EOT_ID)
    config = convert_open_clip.convert_config(reference, tokenizer_ids)
    ours = VLPDualEncoderModel._from_config(config, attn_implementation=attn)
    ours.load_state_dict(convert_open_clip.convert_state_dict(reference.state_dict()), strict=True)

    clip = CLIPModel._from_config(clip_config_from(config, CLIPConfig), attn_implementation=attn)
    # Our parameter names are CLIPModel's; only non-persistent buffers differ.
    clip.load_state_dict(ours.state_dict(), strict=True)
    return {"ours": ours, "CLIPModel": clip, "open_clip": reference}


def clip_config_from(config, clip_config_class):
    """The `CLIPConfig` of the architecture our config describes (a CLIP-shaped one: cls pooling, causal text)."""
    vision, text = config.vision_config, config.text_config
    if vision.pooling != "cls" or not vision.class_token or not vision.pre_layernorm or not text.causal:
        raise ValueError("CLIPModel can only mirror CLIP-shaped towers (cls pooling, pre-LN, causal text).")
    if config.loss_type != "softmax" or "none" in (config.vision_projection, config.text_projection):
        raise ValueError("CLIPModel can only mirror the softmax loss with both projections.")
    shared = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "hidden_act",
              "layer_norm_eps")  # fmt: skip
    vision_fields = {name: getattr(vision, name) for name in shared + ("image_size", "patch_size", "num_channels")}
    text_fields = {name: getattr(text, name) for name in shared + ("vocab_size", "max_position_embeddings")}
    # transformers' CLIP text tower pools at the highest id (open_clip's "argmax") when eos_token_id == 2.
    eos_token_id = 2 if text.pooling == "argmax" else text.eos_token_id
    text_fields.update(pad_token_id=text.pad_token_id, bos_token_id=text.bos_token_id, eos_token_id=eos_token_id)
    # final_norm "all" vs "pooled" only changes the unpooled tokens: the cls token is normalised either way.
    return clip_config_class(
        vision_config=vision_fields,
        text_config=text_fields,
        projection_dim=config.projection_dim,
        logit_scale_init_value=config.logit_scale_init_value,
    )


def make_batch(batch_size: int, image_size: int, context_length: int, vocab_size: int, device, seed: int):
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
    input_ids = torch.full((batch_size, context_length), PAD_ID, dtype=torch.long)
    for row in range(batch_size):
        length = int(torch.randint(4, context_length + 1, (1,), generator=generator))
        input_ids[row, 1 : length - 1] = torch.randint(1, min(vocab_size, SOT_ID), (length - 2,), generator=generator)
        input_ids[row, 0], input_ids[row, length - 1] = SOT_ID, EOT_ID
    return pixel_values.to(device), input_ids.to(device)


def open_clip_logits(model, pixel_values, input_ids) -> torch.Tensor:
    image_features, text_features, logit_scale = model(pixel_values, input_ids)[:3]
    return logit_scale * image_features @ text_features.t()


def infer_steps(models, pixel_values, input_ids) -> dict[str, Callable]:
    def hf(model):
        return lambda: model(input_ids=input_ids, pixel_values=pixel_values).logits_per_image

    return {
        "ours": hf(models["ours"]),
        "CLIPModel": hf(models["CLIPModel"]),
        "open_clip": lambda: open_clip_logits(models["open_clip"], pixel_values, input_ids),
    }


def train_steps(models, pixel_values, input_ids, lr: float = 1e-6) -> dict[str, Callable]:
    labels = torch.arange(pixel_values.shape[0], device=pixel_values.device)

    def open_clip_loss(model):
        logits = open_clip_logits(model, pixel_values, input_ids)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2

    losses = {
        "ours": lambda m: m(input_ids=input_ids, pixel_values=pixel_values, return_loss=True).loss,
        "CLIPModel": lambda m: m(input_ids=input_ids, pixel_values=pixel_values, return_loss=True).loss,
        "open_clip": open_clip_loss,
    }
    steps = {}
    for name, model in models.items():
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)

        def step(model=model, optimizer=optimizer, loss_fn=losses[name]):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model)
            loss.backward()
            optimizer.step()
            return loss

        steps[name] = step
    return steps


def check_outputs(models, pixel_values, input_ids) -> float:
    """Print the differences of the three models' logits and embeddings; returns the largest logit difference."""
    with torch.no_grad():
        ours = models["ours"](input_ids=input_ids, pixel_values=pixel_values)
        clip = models["CLIPModel"](input_ids=input_ids, pixel_values=pixel_values)
        image_features, text_features, logit_scale = models["open_clip"](pixel_values, input_ids)[:3]
    reference = logit_scale * image_features @ text_features.t()
    rows = [
        ("logits_per_image  ours vs open_clip", ours.logits_per_image, reference),
        ("logits_per_image  ours vs CLIPModel", ours.logits_per_image, clip.logits_per_image),
        ("image_embeds      ours vs open_clip", ours.image_embeds, image_features),
        ("text_embeds       ours vs open_clip", ours.text_embeds, text_features),
        ("text_embeds       ours vs CLIPModel", ours.text_embeds, clip.text_embeds),
    ]
    print("Output check (max |difference|, fp32):")
    for label, a, b in rows:
        print(f"  {label}: {(a.float() - b.float()).abs().max().item():.2e}")
    print(f"  logits range: [{reference.min().item():.2f}, {reference.max().item():.2f}]")
    return max((a.float() - b.float()).abs().max().item() for _, a, b in rows[:2])


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


def print_table(results: dict[str, dict[str, dict]], device) -> None:
    header = f"{'step':<6} " + " ".join(f"{name + ' ms':>14}" for name in NAMES)
    header += f" {'ours/CLIPModel':>15} {'ours/open_clip':>15}"
    print(header)
    print("-" * len(header))
    for phase, stats in results.items():
        line = f"{phase:<6} " + " ".join(f"{stats[name]['median']:>14.1f}" for name in NAMES)
        line += f" {stats['ours']['median'] / stats['CLIPModel']['median']:>15.3f}"
        line += f" {stats['ours']['median'] / stats['open_clip']['median']:>15.3f}"
        print(line)
    print("(median of the rounds; spread min-max in ms:")
    for phase, stats in results.items():
        spread = ", ".join(f"{name} {stats[name]['min']:.1f}-{stats[name]['max']:.1f}" for name in NAMES)
        print(f"  {phase}: {spread}")
    print(")")
    if device.type == "cuda":
        for phase, stats in results.items():
            memory = ", ".join(f"{name} {stats[name]['peak_mib']:.0f} MiB" for name in NAMES)
            print(f"peak memory {phase}: {memory}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-name", default="ViT-B-32", help="An open_clip ViT CLIP config. Default: ViT-B-32.")
    parser.add_argument("--batch-size", type=int, default=8, help="Images and texts per step. Default: 8.")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (or cuda:N). Default: cpu.")
    parser.add_argument("--attn", choices=("sdpa", "eager"), default="sdpa", help="Ours and CLIPModel. Default: sdpa.")
    parser.add_argument("--repeats", type=int, default=7, help="Timed rounds per step kind. Default: 7.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed rounds first. Default: 2.")
    parser.add_argument("--autocast", choices=("none", "bf16"), default="none",
                        help="Run the steps under torch.autocast(bfloat16). Default: none (fp32).")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU.")
    parser.add_argument("--only", choices=("train", "infer"), default=None, help="Time one step kind only.")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    import open_clip
    import transformers

    print(
        f"model {args.model_name}, batch {args.batch_size}, device {device}, attn {args.attn}, "
        f"autocast {args.autocast}, repeats {args.repeats} (+{args.warmup} warmup)\n"
        f"torch {torch.__version__}, transformers {transformers.__version__}, open_clip {open_clip.__version__}, "
        f"python {platform.python_version()}, threads {torch.get_num_threads()}"
        + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "")
    )
    models = build_models(args.model_name, args.attn, args.seed)
    for model in models.values():
        model.to(device)
    config = models["ours"].config
    pixel_values, input_ids = make_batch(
        args.batch_size, config.vision_config.image_size, config.text_config.max_position_embeddings,
        config.text_config.vocab_size, device, args.seed,
    )  # fmt: skip
    parameters = sum(p.numel() for p in models["ours"].parameters())
    print(f"{parameters / 1e6:.1f}M parameters, images {tuple(pixel_values.shape)}, texts {tuple(input_ids.shape)}")

    for model in models.values():
        model.eval()
    check_outputs(models, pixel_values, input_ids)

    if args.autocast == "bf16":

        def autocast():
            return torch.autocast(device.type, dtype=torch.bfloat16)
    else:

        def autocast():
            return torch.autocast(device.type, enabled=False)

    results = {}
    if args.only in (None, "infer"):
        for model in models.values():
            model.eval()
        with torch.no_grad():
            results["infer"] = time_interleaved(
                infer_steps(models, pixel_values, input_ids), device, args.repeats, args.warmup, autocast
            )
    if args.only in (None, "train"):
        for model in models.values():
            model.train()
        results["train"] = time_interleaved(
            train_steps(models, pixel_values, input_ids), device, args.repeats, args.warmup, autocast
        )
    print_table(results, device)
    return results


if __name__ == "__main__":
    main()
