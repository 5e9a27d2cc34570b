"""Speed of our fusion model against transformers' `LxmertForPreTraining` (same architecture, same weights), and the
cost of ALBEF-style re-ranked retrieval against scoring every pair with the ITM head.

    python benchmarks/bench_fusion.py [--small] [--batch-size 32] [--device cpu|cuda] [--attn sdpa|eager]
                                      [--repeats 7] [--warmup 2] [--autocast none|bf16]
                                      [--retrieval-n 1000] [--k 16] [--retrieval-batch 256]

Part 1. An `LxmertForPreTraining` with random weights (`LxmertConfig()`, unc-nlp/lxmert-base-uncased's shape; a
small one with `--small`) is converted with `modeling_vlp.conversion.convert_lxmert` into our
`VLPFusionForPreTraining`. Both get the same batch: padded text, 36 padded detector regions, MLM labels (15%), ITM
labels and LXMERT's region labels (object, attribute, feature regression). After printing how far apart their
outputs are, it times

- train: zero_grad + forward with MLM + ITM + region labels + backward + AdamW step, in train mode;
- infer: forward under `torch.no_grad()`, in eval mode (ours also runs the region heads, LXMERT does not);

interleaved (one step of each model in turn, the starting model rotating) and reports median ms and ours / theirs
(below 1: we are faster). `--attn` applies to ours; LXMERT only has its own eager attention.

Part 2. The same architecture with an ITC head (256-d) ranks `--retrieval-n` region sets against as many captions
(caption i describes image i), random weights: `rerank_retrieval` (ITC for all pairs, ITM on each query's top `--k`
in both directions) against the ITM head on all N^2 pairs (+ ITC, the same final score). Both include encoding.
Reported: time, pairs fused, and how often both rankings put the same candidate first (and both R@1).
"""

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_dual import synchronize, time_interleaved  # noqa: E402

NAMES = ("ours", "LXMERT")
SMALL = dict(
    vocab_size=1000, hidden_size=128, num_attention_heads=4, intermediate_size=512, l_layers=2, x_layers=2,
    r_layers=2, visual_feat_dim=256, num_qa_labels=100, num_object_labels=160, num_attr_labels=40,
)  # fmt: skip


def build_models(small: bool, attn: str, seed: int):
    """LxmertForPreTraining (random weights) and our converted VLPFusionForPreTraining with the same weights."""
    from modeling_vlp.conversion import common, convert_lxmert
    from transformers import LxmertConfig, LxmertForPreTraining

    from modeling_vlp.modeling_fusion import VLPFusionForPreTraining

    torch.manual_seed(seed)
    # No dropout: both models then compute the same training step.
    config = LxmertConfig(**(SMALL if small else {}), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    reference = LxmertForPreTraining(config)
    ours_config = convert_lxmert.convert_config(config, "LxmertForPreTraining")
    ours_config._attn_implementation = attn
    ours = common.load_converted(
        ours_config, convert_lxmert.convert_state_dict(reference.state_dict()), VLPFusionForPreTraining
    )
    return {"ours": ours, "LXMERT": reference}


def make_batch(config, batch_size: int, text_length: int, num_regions: int, device, seed: int) -> dict:
    """Padded text, padded regions and every pretraining label of LXMERT (region labels in its dict form)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch_size, text_length)
    input_ids = torch.randint(config.vocab_size // 4, config.vocab_size, shape, generator=generator)
    attention_mask = torch.ones(batch_size, text_length, dtype=torch.long)
    visual_attention_mask = torch.ones(batch_size, num_regions, dtype=torch.long)
    for row in range(batch_size):
        real = int(torch.randint(text_length // 2, text_length + 1, (1,), generator=generator))
        input_ids[row, real:], attention_mask[row, real:] = 0, 0
        regions = int(torch.randint(num_regions // 2, num_regions + 1, (1,), generator=generator))
        visual_attention_mask[row, regions:] = 0
    input_ids[:, 0] = 101 if config.vocab_size > 101 else 1
    masked = (torch.rand(batch_size, text_length, generator=generator) < 0.15) & attention_mask.bool()
    mlm_labels = input_ids.masked_fill(~masked, -100)
    masked_regions = torch.rand(batch_size, num_regions, generator=generator) < 0.15
    weights = (masked_regions & visual_attention_mask.bool()).float()
    visual_feats = torch.randn(batch_size, num_regions, config.visual_feat_dim, generator=generator).abs()
    obj_labels = {
        "obj": (torch.randint(0, config.num_object_labels, (batch_size, num_regions), generator=generator), weights),
        "attr": (torch.randint(0, config.num_attr_labels, (batch_size, num_regions), generator=generator), weights),
        "feat": (visual_feats.clone(), weights),
    }
    batch = dict(
        input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids),
        visual_feats=visual_feats.masked_fill(weights.bool()[..., None], 0.0),
        visual_pos=torch.rand(batch_size, num_regions, 2, 2, generator=generator).sort(dim=2).values.flatten(2),
        visual_attention_mask=visual_attention_mask,
        mlm_labels=mlm_labels, itm_labels=(torch.rand(batch_size, generator=generator) < 0.5).long(),
        obj_labels=obj_labels,
    )  # fmt: skip
    return _to(batch, device)


def _to(value, device):
    if isinstance(value, dict):
        return {key: _to(item, device) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(_to(item, device) for item in value)
    return value.to(device)


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "visual_feats", "visual_pos", "visual_attention_mask")


def model_inputs(batch: dict) -> dict:
    return {name: batch[name] for name in MODEL_INPUTS}


def lxmert_labels(batch: dict) -> dict:
    return dict(labels=batch["mlm_labels"], matched_label=batch["itm_labels"], obj_labels=batch["obj_labels"])


def our_labels(batch: dict) -> dict:
    return dict(mlm_labels=batch["mlm_labels"], itm_labels=batch["itm_labels"], obj_labels=batch["obj_labels"])


def check_outputs(models, batch) -> None:
    inputs = model_inputs(batch)
    with torch.no_grad():
        ours = models["ours"](**inputs)
        reference = models["LXMERT"](**inputs)
    rows = [
        ("prediction_logits / mlm_logits", reference.prediction_logits, ours.mlm_logits),
        ("cross_relationship_score / itm_logits", reference.cross_relationship_score, ours.itm_logits),
        ("question_answering_score / answer_logits", reference.question_answering_score, ours.answer_logits),
    ]
    print("Output check (max |difference|, eval mode):")
    for label, a, b in rows:
        print(f"  {label}: {(a.float() - b.float()).abs().max().item():.2e}")


def infer_steps(models, batch) -> dict[str, Callable]:
    inputs = model_inputs(batch)
    return {name: (lambda model=model: model(**inputs)) for name, model in models.items()}


def train_steps(models, batch, lr: float = 1e-6) -> dict[str, Callable]:
    inputs = model_inputs(batch)
    labels = {"ours": our_labels(batch), "LXMERT": lxmert_labels(batch)}
    steps = {}
    for name, model in models.items():
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)

        def step(model=model, optimizer=optimizer, labels=labels[name]):
            optimizer.zero_grad(set_to_none=True)
            loss = model(**inputs, **labels).loss
            loss.backward()
            optimizer.step()
            return loss

        steps[name] = step
    return steps


def print_table(results: dict[str, dict[str, dict]], device) -> None:
    header = f"{'step':<6} " + " ".join(f"{name + ' ms':>12}" for name in NAMES) + f" {'ours/LXMERT':>12}"
    print(header)
    print("-" * len(header))
    for phase, stats in results.items():
        line = f"{phase:<6} " + " ".join(f"{stats[name]['median']:>12.1f}" for name in NAMES)
        print(line + f" {stats['ours']['median'] / stats['LXMERT']['median']:>12.3f}")
    for phase, stats in results.items():
        spread = ", ".join(f"{name} {stats[name]['min']:.1f}-{stats[name]['max']:.1f}" for name in NAMES)
        print(f"  {phase} spread (ms): {spread}")
    if device.type == "cuda":
        for phase, stats in results.items():
            print(f"  {phase} peak memory: " + ", ".join(f"{n} {stats[n]['peak_mib']:.0f} MiB" for n in NAMES))


# --------------------------------------------------------------------------------------------------------------
# Re-ranked retrieval
# --------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def all_pairs_scores(model, image_inputs: dict, text_inputs: dict, batch_size: int) -> torch.Tensor:
    """ITM log-odds + ITC cosine for every (image, text) pair: (num_images, num_texts). Encodes each side once."""
    vlp = model.vlp
    image = vlp.encode_image(**image_inputs)
    text_states = vlp.encode_text(**text_inputs).last_hidden_state
    text_mask = text_inputs["attention_mask"]
    similarity = vlp.project_image(image.last_hidden_state, image.attention_mask) @ vlp.project_text(text_states).t()
    num_images, num_texts = similarity.shape
    pairs = torch.arange(num_images * num_texts, device=similarity.device)
    log_odds = torch.empty(pairs.shape[0], device=similarity.device)
    for start in range(0, pairs.shape[0], batch_size):
        chunk = pairs[start : start + batch_size]
        images, texts = chunk // num_texts, chunk % num_texts
        logits = model.itm_logits_for_pairs(
            text_states[texts], text_mask[texts], image.last_hidden_state[images], image.attention_mask[images]
        )
        log_odds[start : start + batch_size] = (logits[:, 1] - logits[:, 0]).float()
    return log_odds.view(num_images, num_texts) + similarity.float()


def bench_retrieval(small: bool, attn: str, n: int, k: int, batch_size: int, device, seed: int) -> dict:
    from modeling_vlp.conversion import common, convert_lxmert
    from transformers import LxmertConfig

    from modeling_vlp.evaluation.rerank import rerank_retrieval
    from modeling_vlp.modeling_fusion_retrieval import VLPFusionForImageTextRetrieval

    source = LxmertConfig(**(SMALL if small else {}))
    config = convert_lxmert.convert_config(source, "LxmertModel")
    config.projection_dim = 256
    config._attn_implementation = attn
    torch.manual_seed(seed)
    model = VLPFusionForImageTextRetrieval(config).to(device).eval()
    batch = make_batch(source, n, 20, 36, device, seed + 1)
    image_inputs = {name: batch[name] for name in ("visual_feats", "visual_pos", "visual_attention_mask")}
    text_inputs = {name: batch[name] for name in ("input_ids", "attention_mask", "token_type_ids")}

    # Warm-up (kernels, allocator) on a few rows.
    rerank_retrieval(model, _rows(image_inputs, 8), _rows(text_inputs, 8), k=min(k, 8), batch_size=batch_size)
    synchronize(device)
    start = time.perf_counter()
    ranking = rerank_retrieval(model, image_inputs, text_inputs, k=k, batch_size=batch_size)
    synchronize(device)
    rerank_seconds = time.perf_counter() - start
    start = time.perf_counter()
    full = all_pairs_scores(model, image_inputs, text_inputs, batch_size)
    synchronize(device)
    full_seconds = time.perf_counter() - start

    truth = torch.arange(n, device=full.device)
    result = {
        "n": n, "k": k, "rerank_s": rerank_seconds, "all_pairs_s": full_seconds,
        "rerank_pairs": ranking.num_itm_pairs, "all_pairs": n * n,
    }  # fmt: skip
    for direction, reranked, brute in (("i2t", ranking.scores_i2t, full), ("t2i", ranking.scores_t2i, full.t())):
        result[f"{direction}_top1_agreement"] = float((reranked.argmax(1) == brute.argmax(1)).double().mean() * 100)
        result[f"{direction}_r@1_rerank"] = float((reranked.argmax(1) == truth).double().mean() * 100)
        result[f"{direction}_r@1_all_pairs"] = float((brute.argmax(1) == truth).double().mean() * 100)
    return result


def _rows(inputs: dict, count: int) -> dict:
    return {name: value[:count] for name, value in inputs.items()}


def print_retrieval(result: dict) -> None:
    n, k = result["n"], result["k"]
    print(f"Re-ranked retrieval, N={n} images x {n} captions, k={k} (random weights):")
    print(f"  rerank_retrieval   {result['rerank_s']:8.2f} s   {result['rerank_pairs']:>9} pairs through the ITM head")
    print(f"  all N^2 pairs      {result['all_pairs_s']:8.2f} s   {result['all_pairs']:>9} pairs through the ITM head")
    print(f"  time ratio all/rerank: {result['all_pairs_s'] / result['rerank_s']:.1f}x")
    for direction in ("i2t", "t2i"):
        print(
            f"  {direction}: same top-1 as all pairs for {result[f'{direction}_top1_agreement']:.1f}% of queries; "
            f"R@1 rerank {result[f'{direction}_r@1_rerank']:.1f}% vs all pairs "
            f"{result[f'{direction}_r@1_all_pairs']:.1f}%"
        )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="A small LXMERT and N=64: a CPU run in under a minute.")
    parser.add_argument("--batch-size", type=int, default=None, help="Pairs per step. Default: 32 (8 with --small).")
    parser.add_argument("--text-length", type=int, default=20, help="Tokens per caption (padded). Default: 20.")
    parser.add_argument("--num-regions", type=int, default=36, help="Regions per image (padded). Default: 36.")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (or cuda:N). Default: cpu.")
    parser.add_argument("--attn", choices=("sdpa", "eager"), default="sdpa", help="Ours. Default: sdpa.")
    parser.add_argument("--repeats", type=int, default=7, help="Timed rounds per step kind. Default: 7.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed rounds first. Default: 2.")
    parser.add_argument("--autocast", choices=("none", "bf16"), default="none", help="Default: none (fp32).")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU.")
    parser.add_argument(
        "--retrieval-n", type=int, default=None, help="Images (= captions). Default: 1000 (64 with --small)."
    )
    parser.add_argument("--k", type=int, default=16, help="Candidates re-scored per query. Default: 16.")
    parser.add_argument("--retrieval-batch", type=int, default=256, help="Pairs fused at once. Default: 256.")
    parser.add_argument("--only", choices=("speed", "retrieval"), default=None, help="Run one part only.")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    batch_size = args.batch_size or (8 if args.small else 32)
    import transformers

    print(
        f"{'small' if args.small else 'lxmert-base'}, batch {batch_size}, device {device}, attn {args.attn}, "
        f"autocast {args.autocast}, repeats {args.repeats} (+{args.warmup} warmup)\n"
        f"torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}, "
        f"threads {torch.get_num_threads()}"
        + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "")
    )
    results = {}
    if args.only in (None, "speed"):
        models = build_models(args.small, args.attn, args.seed)
        for model in models.values():
            model.to(device)
        batch = make_batch(models["LXMERT"].config, batch_size, args.text_length, args.num_regions, device, args.seed)
        parameters = sum(p.numel() for p in models["ours"].parameters())
        print(f"{parameters / 1e6:.1f}M parameters, text {tuple(batch['input_ids'].shape)}, "
              f"regions {tuple(batch['visual_feats'].shape)}")  # fmt: skip
        for model in models.values():
            model.eval()
        check_outputs(models, batch)

        def autocast():
            if args.autocast == "bf16":
                return torch.autocast(device.type, dtype=torch.bfloat16)
            return torch.autocast(device.type, enabled=False)

        for model in models.values():
            model.eval()
        with torch.no_grad():
            steps = infer_steps(models, batch)
            results["infer"] = time_interleaved(steps, device, args.repeats, args.warmup, autocast)
        for model in models.values():
            model.train()
        results["train"] = time_interleaved(train_steps(models, batch), device, args.repeats, args.warmup, autocast)
        print_table(results, device)
        del models
    if args.only in (None, "retrieval"):
        n = args.retrieval_n or (64 if args.small else 1000)
        results["retrieval"] = bench_retrieval(
            args.small, args.attn, n, args.k, args.retrieval_batch, device, args.seed
        )
        print_retrieval(results["retrieval"])
    return results


if __name__ == "__main__":
    main()
