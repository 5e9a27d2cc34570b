"""The `vlp` command.

    vlp pretrain --family dual --output-dir runs/x [options]   pretrain a model, evaluate it, save it
    vlp finetune --task vqa --model runs/x --output-dir runs/y  fine-tune a pretrained model for VQA
    vlp evaluate --model runs/x --task retrieval                evaluate a saved model, print JSON, write a PNG
    vlp push runs/x namespace/name                              push a saved folder to the Hub with a model card
    vlp convert clip --source DIR --output DIR                  convert a published checkpoint with parity
    vlp shards --dataset DIR --output DIR --shard-size N        write a corpus as webdataset shards (img2dataset layout)
    vlp <command> --help                                        the options of one command
    vlp --debug <command> ...                                   a user error shows its traceback too

Each command is a function `argv -> exit status` in `COMMANDS`, one module each.

Errors. A user error (a `ValueError`, an `OSError` such as a missing file or folder, a `HubPushError`) is one line,
`vlp: error: ...`, and exit status 2; anything else is a bug and keeps its traceback. `--debug` (before the command:
TrainingArguments has a `--debug` of its own) shows the traceback of user errors too. Called from Python with an
`argv`, `main` raises instead, so that callers and tests see the exception.
"""

import logging
import sys
from collections.abc import Callable, Sequence

import torch.distributed as dist

from ..hub.push import HubPushError
from .arguments import run_subcommand
from .convert import convert_command
from .evaluate import evaluate_command
from .finetune import finetune
from .pretrain import pretrain
from .push import push_command
from .shards import shards_command


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "pretrain": (pretrain, "pretrain a model on image-text pairs, evaluate it and save it"),
    "finetune": (finetune, "fine-tune a pretrained model for a downstream task (vqa), evaluate it and save it"),
    "evaluate": (evaluate_command, "evaluate a saved model (retrieval, zero-shot, vqa, captioning) and write a JSON + PNG report"),
    "push": (push_command, "push a saved folder to the Hugging Face Hub with a generated model card"),
    "convert": (convert_command, "convert a published checkpoint (clip, siglip, open_clip, vilt, visualbert, lxmert, blip)"),
    "shards": (shards_command, "write an image-text corpus as webdataset shards in img2dataset's layout"),
}


def _usage() -> str:
    lines = ["usage: vlp <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "`vlp <command> --help` lists the options of a command."]
    return "\n".join(lines)


# What the user can fix: bad options or values, missing or unreadable paths, a refused push. Everything else is a bug.
USER_ERRORS = (ValueError, OSError, HubPushError)


def main(argv: Sequence[str] | None = None) -> int:
    """The `vlp` command on `argv` (default: the command line). Returns the exit status; with `argv=None` a user
    error (`USER_ERRORS`) is printed as one line and returns 2, unless `--debug` is given before the command."""

    def unknown(command: str) -> str:
        return f"vlp: unknown command {command!r}.\n\n{_usage()}"

    as_command = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = bool(argv) and argv[0] == "--debug"
    argv = argv[1:] if debug else argv
    try:
        return run_subcommand(argv, COMMANDS, _usage(), unknown)
    except USER_ERRORS as error:
        if debug or not as_command:
            raise
        print(f"vlp: error: {one_line(error)}", file=sys.stderr, flush=True)
        logging.getLogger("modeling_vlp.cli").debug("vlp: error", exc_info=error)
        return 2
    finally:
        _close_process_group()


def one_line(error: BaseException) -> str:
    """The message of `error` on one line (its lines joined), with its type when the message alone does not say."""
    message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    if not isinstance(error, ValueError) or not message:
        message = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return message


def _close_process_group() -> None:
    """Under torchrun, wait for every rank (rank 0 evaluates while the others are done) and close the process group
    before the interpreter exits: a gloo group torn down at exit can abort the process ("terminate called without
    an active exception"), failing the whole launch after a successful run."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


__all__ = ["COMMANDS", "main"]
