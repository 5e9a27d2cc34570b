"""`vlp push DIR REPO_ID`: push a saved folder to the Hugging Face Hub, with a model card generated from what the
folder holds unless it has its own README.md (the publishing itself is `modeling_vlp.hub`)."""

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from huggingface_hub.errors import HfHubHTTPError

from ..hub.card import README_NAME, model_card_for_run
from ..hub.push import (
    HubPushError,
    add_push_arguments,
    push_folder,
    push_kwargs_from_args,
)

logger = logging.getLogger("modeling_vlp.conversion.hub")


def _push_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlp push",
        description="Push a saved folder (config.json, model.safetensors, processor, code files) to the Hugging Face "
        "Hub. Without a README.md in the folder, a model card is generated from what the folder holds "
        "(config.json, and eval_results.json / trainer_state.json of a `vlp pretrain` run).",
    )
    parser.add_argument("folder", help="The folder save_pretrained wrote (e.g. the --output-dir of vlp pretrain).")
    parser.add_argument("repo_id", help="Hub repo: namespace/name, or name in your namespace.")
    add_push_arguments(parser, repo_option=False)
    card = parser.add_argument_group("Model card")
    card.add_argument(
        "--card", choices=("auto", "generate", "keep"), default="auto",
        help="auto: keep the folder's README.md, else generate one; generate: replace it; keep: push as is "
        "(no card when there is none).",
    )  # fmt: skip
    card.add_argument("--source", default=None, help="What the checkpoint was converted from, for the card.")
    card.add_argument("--dataset", default=None, help="Training data, for the card (a name or a Hub dataset id).")
    card.add_argument("--objectives", default=None, help="Training objectives, comma-separated (e.g. itc,itm).")
    return parser


def push_command(argv: Sequence[str]) -> int:
    """`vlp push DIR REPO_ID [options]`: 0 when pushed, 1 when not (the reason on stderr)."""
    args = _push_parser().parse_args(list(argv))
    try:
        card = None
        readme = os.path.join(args.folder, README_NAME)
        if args.card == "generate" or (args.card == "auto" and not os.path.isfile(readme)):
            objectives = [name for name in (args.objectives or "").split(",") if name] or None
            card = model_card_for_run(
                args.folder, repo_id=args.repo_id, base_model=args.base_model, source=args.source,
                objectives=objectives, dataset=args.dataset, license=args.license,
            )  # fmt: skip
        info = push_folder(args.folder, args.repo_id, model_card=card, **push_kwargs_from_args(args))
    except (HubPushError, HfHubHTTPError, ValueError, FileNotFoundError) as error:
        print(f"vlp push: error: {error}", file=sys.stderr)
        return 1
    print(f"Pushed {args.folder} to {info.commit_url}")
    return 0
