"""Push a saved folder (model, processor, remote code) to the Hugging Face Hub with a generated model card.

    vlp push DIR REPO_ID [--hub-endpoint URL] [--private] [--revision BRANCH] [--commit-message MSG]
    vlp convert clip --source SRC --output OUT --push-to-hub me/clip-b-32

Every folder `save_pretrained` writes for us has the same layout whatever the family (config.json with `auto_map`,
model.safetensors, processor files and the model's code files), so one function pushes them all: `push_folder`
creates the repo (`create_repo`), writes the model card (`hub.card`) into the folder as README.md and uploads the
folder (`upload_folder`; Trainer checkpoints and `_*` files stay behind).

Tokens. The token is `token=` / `--hub-token`, else whatever `huggingface_hub` finds (`HF_TOKEN`, then the one
`hf auth login` stored). It is never printed or logged; errors say what to do instead. Prefer `HF_TOKEN` to
`--hub-token`: a command line is visible to other users of the machine.

Endpoint. `endpoint=` / `--hub-endpoint` points the push at another Hub (a mirror, a test server); reading back
goes through `HF_ENDPOINT`, which huggingface_hub reads once, at import. The Trainer's own push
(`Trainer.push_to_hub`) also uses `HF_ENDPOINT`; `use_model_card(trainer)` makes it push our card.

Xet. huggingface_hub 2.x uploads every file the server marks "lfs" through Xet storage whenever the `hf_xet`
package is installed, without asking the server; a Hub without Xet (an older mirror) then fails, and the error
says to set `HF_HUB_DISABLE_XET=1` (legacy LFS uploads).
"""

import argparse
import logging
import os
import re
from collections.abc import Iterable, Mapping
from contextlib import contextmanager

from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import HfHubHTTPError

from .card import CONFIG_NAME, README_NAME, TRAINING_ARGS_NAME, build_model_card

logger = logging.getLogger("modeling_vlp.conversion.hub")

# What a training output folder holds besides the model: Trainer checkpoints (pushed only as the final model), files
# the Trainer itself keeps out of pushes, TensorBoard logs, and the pickled TrainingArguments, which hold `hub_token`
# in clear when one was given to the Trainer.
DEFAULT_IGNORE_PATTERNS = ("checkpoint-*", "_*", "runs/*", TRAINING_ARGS_NAME)
TOKEN_HELP = "set HF_TOKEN, pass --hub-token (token= in Python), or log in once with `hf auth login`"


class HubPushError(RuntimeError):
    """A push that did not happen, with what to do about it."""


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------


def add_push_arguments(parser: argparse.ArgumentParser, repo_option: bool = True) -> argparse.ArgumentParser:
    """Add the push options: --push-to-hub REPO_ID (unless `repo_option=False`, for a command that takes the repo
    as a positional argument), --hub-endpoint, --private, --revision, --commit-message, --hub-token, --exist-ok /
    --no-exist-ok, and the card's --base-model and --license, each also spelled with underscores (`--hub_token`) as
    a TrainingArguments parser spells its own. Options the parser already has (a TrainingArguments parser has
    --push-to-hub, --hub-token) are left as they are."""
    group = parser.add_argument_group("Hugging Face Hub")
    options = [
        (("--hub-endpoint",), dict(default=None, metavar="URL",
            help="Hub to push to (default: HF_ENDPOINT, else https://huggingface.co).")),
        (("--private",), dict(action="store_true", help="Create the repo private (no effect on an existing repo).")),
        (("--revision",), dict(default=None, metavar="BRANCH", help="Branch to push to, created when missing "
            "(default: main).")),
        (("--commit-message",), dict(default=None, metavar="MESSAGE", help="Message of the commit.")),
        (("--hub-token",), dict(default=None, metavar="TOKEN", help="Hub token with write access (default: HF_TOKEN "
            "or the token `hf auth login` stored; prefer those, a command line is visible to other users).")),
        (("--exist-ok",), dict(action=argparse.BooleanOptionalAction, default=True, help="Push to the repo when it "
            "exists already (--no-exist-ok: fail instead). Default: push.")),
        (("--base-model",), dict(default=None, metavar="REPO_ID", help="Hub id of the checkpoint this one was "
            "converted or fine-tuned from, for the model card's base_model.")),
        (("--license",), dict(default=None, help="License in the model card (default: apache-2.0 for a trained "
            "model; 'unknown' for a converted one, which keeps its source's license: set it).")),
    ]  # fmt: skip
    if repo_option:
        help = "After saving, push the folder to this Hub repo (namespace/name, or name in your namespace)."
        options.insert(0, (("--push-to-hub",), dict(default=None, metavar="REPO_ID", help=help)))
    for flags, kwargs in options:
        if kwargs.get("action") is not argparse.BooleanOptionalAction:  # --exist_ok would also make --no-exist_ok
            flags = tuple(dict.fromkeys((*flags, *("--" + flag[2:].replace("-", "_") for flag in flags))))
        if any(flag in parser._option_string_actions for flag in flags):
            continue
        group.add_argument(*flags, **kwargs)
    return parser


def push_kwargs_from_args(args) -> dict:
    """`push_folder` keyword arguments from parsed options: ours (`add_push_arguments`) or TrainingArguments'
    (`hub_token`, `hub_private_repo`, `hub_revision`)."""
    private = getattr(args, "private", None)
    return dict(
        endpoint=getattr(args, "hub_endpoint", None),
        token=getattr(args, "hub_token", None),
        private=bool(private if private is not None else getattr(args, "hub_private_repo", False)),
        revision=getattr(args, "revision", None) or getattr(args, "hub_revision", None),
        commit_message=getattr(args, "commit_message", None),
        exist_ok=getattr(args, "exist_ok", True),
    )


# --------------------------------------------------------------------------------------------------------------
# Pushing
# --------------------------------------------------------------------------------------------------------------


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    exist_ok: bool = True,
    model_card: ModelCard | None = None,
    ignore_patterns: Iterable[str] = DEFAULT_IGNORE_PATTERNS,
):
    """Create `repo_id` (unless it exists and `exist_ok`), write `model_card` into `folder` as README.md and upload
    the folder, but `ignore_patterns`, in one commit to `revision` (a branch, created from main when missing).
    Returns the `huggingface_hub.CommitInfo` (`.commit_url`, `.oid`).

    Raises `HubPushError` with what to do when the Hub refuses (no or a wrong token, the repo exists and not
    `exist_ok`) or the connection fails (nothing is committed then: re-running uploads only what is missing).
    """
    folder = os.fspath(folder)
    if not os.path.isfile(os.path.join(folder, CONFIG_NAME)):
        raise ValueError(f"`folder` {folder!r} has no {CONFIG_NAME}; expected a folder written by save_pretrained.")
    if not isinstance(repo_id, str) or not re.fullmatch(r"([\w.-]+/)?[\w.-]+", repo_id):
        raise ValueError(f"`repo_id` must look like 'namespace/name' or 'name', got {repo_id!r}.")
    api = HfApi(endpoint=endpoint, token=token)
    where = f"{repo_id} on {api.endpoint}"
    with _explained_hub_errors(where, token_given=token is not None, creating=not exist_ok):
        repo_id = api.create_repo(repo_id, private=private, exist_ok=exist_ok).repo_id
    where = f"{repo_id} on {api.endpoint}"
    if model_card is not None:
        model_card.save(os.path.join(folder, README_NAME))
    with _explained_hub_errors(where, token_given=token is not None):
        if revision not in (None, "main"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(
            folder_path=folder,
            repo_id=repo_id,
            revision=revision,
            commit_message=commit_message or "Upload model and processor with modeling_vlp",
            ignore_patterns=list(ignore_patterns),
        )
    logger.info("Pushed %s to %s", folder, info.commit_url)
    return info


@contextmanager
def _explained_hub_errors(where: str, token_given: bool, creating: bool = False):
    """Turn what the client raises into a `HubPushError` that says what happened and what to do."""
    try:
        yield
    except Exception as error:
        message = _explain(error, where, token_given, creating)
        if message is None:
            raise
        raise HubPushError(message) from error


def _explain(error: Exception, where: str, token_given: bool, creating: bool) -> str | None:
    status = _status_code(error)
    if status == 401:
        found = "the token was refused" if token_given or _token_found() else "no token was found"
        return f"The Hub refused to write to {where} (HTTP 401: {found}). To push, {TOKEN_HELP}."
    if status == 403:
        return (
            f"The Hub refused to write to {where} (HTTP 403): the token has no write access to that namespace. Use "
            f"a token with write access ({TOKEN_HELP}), or push to your own namespace."
        )
    if status == 409 and creating:
        return (
            f"The repo {where} exists already, and --no-exist-ok (exist_ok=False) asked for a new one. Push to it "
            "with --exist-ok (exist_ok=True), or pick another repo id."
        )
    chain = _exception_chain(error)
    if any(_XET_FAILURE.search(str(e)) or type(e).__module__.startswith("hf_xet") for e in chain):
        return (
            f"Uploading to {where} through Xet storage failed ({_short(chain[-1])}). A Hub without Xet support needs "
            "the legacy LFS protocol: set HF_HUB_DISABLE_XET=1 and push again."
        )
    transport = next((e for e in chain if _is_transport_error(e)), None)
    if transport is not None:
        return (
            f"The connection to the Hub failed while pushing to {where} ({_short(transport)}). Nothing is committed "
            "until the final commit request succeeds: push again to finish (files already uploaded are not sent "
            "twice)."
        )
    return None


def _exception_chain(error: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        chain.append(error)
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return chain


def _status_code(error: BaseException) -> int | None:
    for item in _exception_chain(error):
        if isinstance(item, HfHubHTTPError) and item.response is not None:
            return item.response.status_code
    return None


def _is_transport_error(error: BaseException) -> bool:
    # httpx (huggingface_hub 1.x) or httpx2 (2.x): both name their network failures TransportError.
    return isinstance(error, ConnectionError) or any(
        cls.__name__ == "TransportError" and cls.__module__.split(".")[0] in ("httpx", "httpx2")
        for cls in type(error).__mro__
    )


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def _token_found() -> bool:
    from huggingface_hub import get_token

    return get_token() is not None


# --------------------------------------------------------------------------------------------------------------
# After a conversion
# --------------------------------------------------------------------------------------------------------------


def base_model_from_path(path: str | None) -> str | None:
    """The Hub id of a source folder in the Hub cache (`.../models--org--name/snapshots/<sha>`), else None."""
    if not path:
        return None
    match = re.search(r"models--([^/\\]+?)--([^/\\]+?)[/\\]snapshots[/\\]", os.path.abspath(path) + os.sep)
    return f"{match.group(1)}/{match.group(2)}" if match else None


def push_after_conversion(
    args: argparse.Namespace,
    output_dir: str,
    *,
    source: str,
    parity: Mapping[str, float],
    tolerance: float | None = None,
    source_path: str | None = None,
) -> int:
    """What a conversion script does after saving when --push-to-hub was given: a card with the source and the
    parity figures just measured, then the push. Returns the exit status (0 pushed, 1 not: the reason logged,
    the converted folder is saved either way)."""
    repo_id = getattr(args, "push_to_hub", None)
    if not repo_id:
        return 0
    if source_path:  # the card names the source folder, not where it sat on this machine
        source = source.replace(source_path, os.path.basename(os.path.normpath(source_path)))
    try:
        card = build_model_card(
            output_dir, kind="converted", repo_id=repo_id, source=source, parity=parity, parity_tolerance=tolerance,
            base_model=getattr(args, "base_model", None) or base_model_from_path(source_path),
            license=getattr(args, "license", None) or "unknown",
        )  # fmt: skip
        info = push_folder(output_dir, repo_id, model_card=card, **push_kwargs_from_args(args))
    except (HubPushError, HfHubHTTPError, ValueError) as error:
        logger.error("Saved to %s, but the push failed: %s", output_dir, error)
        logger.error("Push it later with: vlp push %s %s", output_dir, repo_id)
        return 1
    logger.info("Pushed to %s", info.commit_url)
    return 0


_XET_FAILURE = re.compile(r"xet-(write|read)-token|X-Xet|\bCAS\b")
