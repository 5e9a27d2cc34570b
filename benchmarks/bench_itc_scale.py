"""Time and memory of the gathered contrastive (ITC) loss as the global batch grows: ours
(`modeling_vlp.training.objectives.contrastive_loss`, softmax) against open_clip's `ClipLoss`, same settings.

    .venv/bin/python benchmarks/bench_itc_scale.py [--worlds 1 2 4] [--local-batch 256] [--dim 512]
                                                   [--repeats 10] [--warmup 2] [--threads 1]

For each world size one group of CPU processes (torch.multiprocessing spawn, gloo) runs every cell; each rank holds
a fixed local batch of random image / text features (`--local-batch` x `--dim`, leaf tensors), so the global batch is
world x local. One step is the loss alone, forward + backward: L2-normalise both, gather (or not), the symmetric
InfoNCE with a learnable temperature, `backward()`. Settings, as open_clip names them: `local_loss` (each rank scores
only its own rows of the global similarity matrix) and `gather_with_grad` (backpropagate through the other ranks'
features); with one process there is nothing to gather, so only one setting is run.

Reported per cell:
- ms: the median over `--repeats` rounds of rank 0's step time, after `--warmup` rounds; a round runs every cell
  once, the implementation going first alternating (the all-gathers keep the ranks in step);
- MiB: peak tensor memory of one step above the tensors alive before it, the largest over the ranks, measured by
  torch's `MemTracker` (torch.distributed._tools.mem_tracker: a dispatch mode that follows every tensor storage
  created, forward and backward, on CPU too), in a separate untimed step;
- the loss of rank 0 and the norm of its gradient: ours and open_clip's must agree (with `local_loss` and without
  `gather_with_grad`, ours also sends the gradient of the local rows as candidates, which open_clip drops, so the
  gradient norms differ there by design).
Ratios are ours / open_clip: below 1 means we are faster or smaller.
"""

import argparse
import json
import math
import os
import platform
import socket
import statistics
import tempfile
import time
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

SETTINGS = {  # name -> (local_loss, gather_with_grad)
    "full, grad": (False, True),
    "local, grad": (True, True),
    "full, no grad": (False, False),
    "local, no grad": (True, False),
}
IMPLEMENTATIONS = ("ours", "open_clip")


def _peak_tensor_mib(step) -> float:
    """Peak memory of the tensors that `step()` creates (freed ones included), by torch's MemTracker."""
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    with tracker:
        step()
    return sum(by_device["Total"] for by_device in tracker.get_tracker_snapshot("peak").values()) / 2**20


def _loss_function(implementation: str, local_loss: bool, gather_with_grad: bool, rank: int, world: int):
    if implementation == "ours":
        from modeling_vlp.training.objectives import contrastive_loss

        return lambda image, text, scale: contrastive_loss(
            image, text, scale, None, loss_type="softmax", gather=True, local_loss=local_loss,
            gather_with_grad=gather_with_grad,
        )  # fmt: skip
    from open_clip.loss import ClipLoss

    loss = ClipLoss(local_loss=local_loss, gather_with_grad=gather_with_grad, cache_labels=True, rank=rank,
                    world_size=world)  # fmt: skip
    return lambda image, text, scale: loss(image, text, scale)


def _worker(rank: int, world: int, cells: list, args, port: int, out_dir: str) -> None:
    # Both gathers go through torch.distributed.nn.functional.all_gather, which warns of its deprecation every call.
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(args.threads)
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    generator = torch.Generator().manual_seed(1000 + rank)
    image = torch.randn(args.local_batch, args.dim, generator=generator).requires_grad_()
    text = torch.randn(args.local_batch, args.dim, generator=generator).requires_grad_()
    log_scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)

    def make_step(implementation: str, setting: str):
        loss_fn = _loss_function(implementation, *SETTINGS[setting], rank, world)

        def step() -> float:
            image.grad = text.grad = log_scale.grad = None
            loss = loss_fn(F.normalize(image, dim=-1), F.normalize(text, dim=-1), log_scale.exp())
            loss.backward()
            return loss.item()

        return step

    steps = {(implementation, setting): make_step(implementation, setting) for implementation, setting in cells}
    times = {cell: [] for cell in steps}
    for round_index in range(args.warmup + args.repeats):
        order = IMPLEMENTATIONS if round_index % 2 == 0 else IMPLEMENTATIONS[::-1]
        for setting in dict.fromkeys(setting for _, setting in cells):
            for implementation in order:
                start = time.perf_counter()
                steps[implementation, setting]()
                if round_index >= args.warmup:
                    times[implementation, setting].append((time.perf_counter() - start) * 1000)
    results = []
    for (implementation, setting), step in steps.items():
        loss = step()
        grad_norm = torch.cat([image.grad.flatten(), text.grad.flatten()]).norm().item()
        results.append({
            "implementation": implementation, "setting": setting, "loss": loss, "grad_norm": grad_norm,
            "ms": statistics.median(times[implementation, setting]), "peak_mib": _peak_tensor_mib(step),
        })  # fmt: skip
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(results, handle)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_world(world: int, settings: list[str], args) -> dict:
    """Every (setting, implementation) cell in one group of `world` fresh processes: {(world, setting): {impl: cell}}
    with rank 0's time, loss and gradient norm and the ranks' largest peak."""
    cells = [(implementation, setting) for setting in settings for implementation in IMPLEMENTATIONS]
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(world, cells, args, _free_port(), out_dir), nprocs=world)
        ranks = []
        for rank in range(world):
            with open(os.path.join(out_dir, f"rank{rank}.json")) as handle:
                ranks.append(json.load(handle))
    results = {}
    for index, cell in enumerate(ranks[0]):
        peak = max(rank_cells[index]["peak_mib"] for rank_cells in ranks)
        results.setdefault((world, cell["setting"]), {})[cell["implementation"]] = dict(cell, peak_mib=peak)
    return results


def print_table(results: dict, args) -> None:
    header = (f"{'world':>5} {'global':>6} {'setting':<15} {'ours ms':>9} {'oc ms':>9} {'ms ratio':>8} "
              f"{'ours MiB':>9} {'oc MiB':>9} {'MiB ratio':>9} {'loss |diff|':>11} "
              f"{'grad norm ours/oc':>18}")  # fmt: skip
    print(header)
    print("-" * len(header))
    for (world, setting), cell in results.items():
        ours, theirs = cell["ours"], cell["open_clip"]
        memory_ratio = ours["peak_mib"] / theirs["peak_mib"]
        print(
            f"{world:>5} {world * args.local_batch:>6} {setting:<15} {ours['ms']:>9.2f} {theirs['ms']:>9.2f} "
            f"{ours['ms'] / theirs['ms']:>8.3f} {ours['peak_mib']:>9.1f} {theirs['peak_mib']:>9.1f} "
            f"{memory_ratio:>9.3f} {abs(ours['loss'] - theirs['loss']):>11.2e} "
            f"{ours['grad_norm'] / theirs['grad_norm']:>18.6f}"
        )
    print("(ms: median per forward+backward step of rank 0; MiB: peak tensor memory of a step (MemTracker), the "
          "largest over the ranks; ratios ours / open_clip)")  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4], help="Process counts. Default: 1 2 4.")
    parser.add_argument("--local-batch", type=int, default=256, help="Pairs per rank. Default: 256.")
    parser.add_argument("--dim", type=int, default=512, help="Embedding size. Default: 512.")
    parser.add_argument("--repeats", type=int, default=10, help="Timed steps per cell. Default: 10.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps first. Default: 2.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank. Default: 1.")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS),
                        help="Settings run with world > 1. Default: all four.")  # fmt: skip
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import open_clip

    print(
        f"ITC loss alone, forward + backward, local batch {args.local_batch} x dim {args.dim} per rank, gloo on CPU, "
        f"{args.threads} thread(s) per rank, {args.repeats} steps (+{args.warmup} warmup), {os.cpu_count()} CPUs\n"
        f"torch {torch.__version__}, open_clip {open_clip.__version__}, python {platform.python_version()}"
    )
    results = {}
    for world in args.worlds:
        results.update(run_world(world, args.settings if world > 1 else ["full, grad"], args))
        print(f"  measured world {world}", flush=True)
    print_table(results, args)
    return results


if __name__ == "__main__":
    main()
