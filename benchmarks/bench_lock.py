"""What locking a tower saves (LiT): step time and peak memory of a dual encoder built from pretrained towers
(EfficientNet-Lite0 through timm, MiniLM; see pretrained_towers.py), unlocked vs locked.

    .venv/bin/python benchmarks/bench_lock.py [--device cpu|cuda] [--batch-size 32] [--image-size 128] [--steps 6]

Each variant runs in its own process (a process's peak RSS only grows), as the Trainer runs it: `model.train()`,
forward with the contrastive loss, backward, AdamW over the trainable parameters. Peak memory is the process's peak
RSS above its RSS before the first step on the CPU, `torch.cuda.max_memory_allocated` on CUDA.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# name -> (lock_image_tower kwargs or None, lock_text_tower kwargs or None)
VARIANTS = {
    "unlocked": (None, None),
    "lock image": ({}, None),
    "lock image, last 2 groups train": ({"unlocked_groups": 2}, None),
    "lock image + text (LiT)": ({}, {}),
}


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_variant(name: str, args) -> dict:
    import torch

    sys.path.insert(0, HERE)
    from pretrained_towers import efficientnet_lite0_folder, minilm_folder
    from transformers import AutoTokenizer

    from modeling_vlp import VLPDualEncoderModel

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    vision = efficientnet_lite0_folder(args.towers)
    model = VLPDualEncoderModel.from_vision_text_pretrained(vision, minilm_folder(), projection_dim=256)
    lock_image, lock_text = VARIANTS[name]
    if lock_image is not None:
        model.lock_image_tower(**lock_image)
    if lock_text is not None:
        model.lock_text_tower(**lock_text)
    device = torch.device(args.device)
    model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(minilm_folder())
    captions = [f"a photo of object number {index} on a table" for index in range(args.batch_size)]
    text = tokenizer(captions, padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    generator = torch.Generator().manual_seed(0)
    batch = {
        "pixel_values": torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator),
        **text,
    }
    batch = {key: value.to(device) for key, value in batch.items()}
    optimizer = torch.optim.AdamW([param for param in model.parameters() if param.requires_grad], lr=1e-5)
    trainable = sum(param.numel() for param in model.parameters() if param.requires_grad)

    def step():
        model.train()
        loss = model(**batch, return_loss=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    baseline = _rss_mib()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for index in range(args.steps + 1):  # the first step warms up (and allocates the optimizer state)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if index:
            times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline
    return {"variant": name, "trainable_M": trainable / 1e6, "step_ms": 1000 * statistics.median(times),
            "min_ms": 1000 * min(times), "peak_mib": peak}  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--towers", default=os.path.join(HERE, "..", "runs", "towers", "efficientnet-lite0"))
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # one variant, in a child process
    args = parser.parse_args(argv)
    if args.variant is not None:
        print(json.dumps(run_variant(args.variant, args)))
        return 0
    rest = list(argv if argv is not None else sys.argv[1:])
    results = []
    for name in VARIANTS:
        output = subprocess.run(
            [sys.executable, os.path.abspath(__file__), *rest, "--variant", name], check=True, capture_output=True,
            text=True,
        ).stdout  # fmt: skip
        results.append(json.loads(output.strip().splitlines()[-1]))
    base = results[0]
    memory = "peak CUDA memory" if args.device.startswith("cuda") else "peak RSS over start"
    print(f"device {args.device}, batch {args.batch_size}, images {args.image_size}px, {args.steps} steps after one "
          "warm-up (median and fastest: on a shared CPU the fastest is the least disturbed)")
    print(f"{'variant':<34} {'trainable':>10} {'median ms':>10} {'fastest ms':>11} {'x':>6} {memory + ' MiB':>26} "
          f"{'x':>6}")  # fmt: skip
    for row in results:
        print(f"{row['variant']:<34} {row['trainable_M']:>9.2f}M {row['step_ms']:>10.1f} {row['min_ms']:>11.1f} "
              f"{row['min_ms'] / base['min_ms']:>6.2f} {row['peak_mib']:>26.1f} "
              f"{row['peak_mib'] / max(base['peak_mib'], 1e-9):>6.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
