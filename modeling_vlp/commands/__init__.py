"""The `vlp` command.

    vlp pretrain --family dual --output-dir runs/x [options]   pretrain a model, evaluate it, save it
    vlp finetune --task vqa --model runs/x --output-dir runs/y  fine-tune a pretrained model for VQA
    vlp evaluate --model runs/x --task retrieval                evaluate a saved model, print JSON, write a PNG
    vlp push runs/x namespace/name                              push a saved folder to the Hub with a model card
    vlp convert clip --source DIR --output DIR                  convert a published checkpoint with parity
    vlp <command> --help                                        the options of one command

Each command is a function `argv -> exit status` in `COMMANDS`, one module each.
"""

import sys
from collections.abc import Callable, Sequence

import torch.distributed as dist

from .arguments import run_subcommand
from .convert import convert_command
from .evaluate import evaluate_command
from .finetune import finetune
from .pretrain import pretrain
from .push import push_command


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "pretrain": (pretrain, "pretrain a model on image-text pairs, evaluate it and save it"),
    "finetune": (finetune, "fine-tune a pretrained model for a downstream task (vqa), evaluate it and save it"),
    "evaluate": (evaluate_command, "evaluate a saved model (retrieval, zero-shot, vqa, captioning) and write a JSON + PNG report"),
    "push": (push_command, "push a saved folder to the Hugging Face Hub with a generated model card"),
    "convert": (convert_command, "convert a published checkpoint (clip, siglip, open_clip, vilt, visualbert, lxmert, blip)"),
}


def _usage() -> str:
    lines = ["usage: vlp <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "`vlp <command> --help` lists the options of a command."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    def unknown(command: str) -> str:
        return f"vlp: unknown command {command!r}.\n\n{_usage()}"

    try:
        return run_subcommand(sys.argv[1:] if argv is None else argv, COMMANDS, _usage(), unknown)
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """Under torchrun, wait for every rank (rank 0 evaluates while the others are done) and close the process group
    before the interpreter exits: a gloo group torn down at exit can abort the process ("terminate called without
    an active exception"), failing the whole launch after a successful run."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


__all__ = ["COMMANDS", "main"]
