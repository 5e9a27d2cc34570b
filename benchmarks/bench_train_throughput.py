"""End-to-end training throughput: `vlp pretrain` against open_clip's trainer (`python -m open_clip_train.main`) on the
same webdataset shards, the same tower sizes, batch, precision (fp32), steps and DataLoader workers.

    .venv/bin/python benchmarks/bench_train_throughput.py [--preset dual-small] [--batch-size 64] [--steps 40]
        [--warmup-steps 10] [--log-every 5] [--workers 2] [--threads 2] [--num-samples 1024] [--repeats 2]
        [--work-dir runs/bench-throughput]

1. Data: `--num-samples` generated scenes (`modeling_vlp.data.scenes`, PNG) written by `vlp shards` as
   `train-0000N.tar` shards of `--shard-size` (re-encoded as JPEG) plus a validation shard; kept in `--work-dir` and
   reused.
2. Ours: `vlp pretrain --family dual --preset P --dataset 'train-{...}.tar::validation-00000.tar' --max-steps S
   --per-device-train-batch-size B --dataloader-num-workers W --logging-steps L` (no checkpoints; the small
   evaluation after training is not timed). Its `samples_per_second` logs (training/trainer.py `_Throughput`: step
   time plus the wait for the next batch, per logging window) come from trainer_state.json.
3. open_clip (`open_clip_train.main`, with the webdataset EOF fix of open_clip issue #935 applied, see
   OPEN_CLIP_MAIN): the same tower sizes as a `local-dir:` model (open_clip_config.json written from our run's
   config.json: widths, layers, heads, MLP ratio, image / patch size, context length, embedding size, GELU, eos
   pooling) with our run's tokenizer (open_clip's HFTokenizer over the saved SentencePiece tokenizer, so both
   vocabularies are the same size), `--train-data 'train-{...}.tar' --dataset-type webdataset --train-num-samples
   S*B --epochs 1` (exactly S steps), the same lr / weight decay / beta2 / warmup share, `--precision fp32
   --device cpu`. Its samples/s per log window is B / its `Batch (t)` average (the time from one batch's end to the
   next one's, data wait included), parsed from its log.

Start-up is excluded from both: only the logging windows after the first `--warmup-steps` steps count, and the
steady figure of a run is their samples over their time. Runs alternate (ours, open_clip, ours, ...) `--repeats`
times; the medians and their ratio (ours / open_clip, above 1 means we train faster) are printed.
"""

import argparse
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = sys.executable
VLP = shutil.which("vlp", path=os.path.dirname(PYTHON)) or shutil.which("vlp")
TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "spiece.model", "tokenizer.json",
                   "tokenization_vlp.py")  # fmt: skip
# `python -m open_clip_train.main` with one fix: webdataset >= 0.2.96 ends each shard with an EOF marker ({}) that
# open_clip_train's group_by_keys_nothrow cannot read (KeyError 'fname'; webdataset issue #384, open_clip issue #935);
# the fix given there, tar_file_expander(eof_value=None), is applied before open_clip's main runs.
OPEN_CLIP_MAIN = (
    "import functools, sys; import webdataset.tariterators as tariterators; import open_clip_train.data as data; "
    "data.tar_file_expander = functools.partial(tariterators.tar_file_expander, eof_value=None); "
    "from open_clip_train.main import main; main(sys.argv[1:])"
)
# open_clip's log line: "Train Epoch: 0 [ 320/1920 (17%)] Data (t): 0.010 Batch (t): 0.512, 125.0/s, ..."
OPEN_CLIP_LOG = re.compile(r"Train Epoch: \d+ \[\s*(\d+)/\s*\d+ .*?Batch \(t\): ([0-9.]+),")


def _env(args) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(args.threads)}  # fmt: skip
    env["HF_DATASETS_CACHE"] = os.path.join(args.work_dir, "hf-cache")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _run(command: list[str], args, log_path: str) -> str:
    """Run a command, its output to `log_path`; returns the output, raises with its tail when it fails."""
    with open(log_path, "w") as log:
        result = subprocess.run(command, env=_env(args), stdout=log, stderr=subprocess.STDOUT, text=True, check=False)
    with open(log_path) as log:
        output = log.read()
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} ... failed ({result.returncode}):\n{output[-4000:]}")
    return output


def make_shards(args) -> tuple[str, str, int]:
    """(training shard pattern, validation shard, training samples) under `--work-dir`, made once by `vlp shards`."""
    shards = os.path.join(args.work_dir, f"shards-{args.num_samples}-{args.shard_size}")
    stats_path = os.path.join(shards, "stats.json")
    if not os.path.isfile(stats_path):
        source = os.path.join(args.work_dir, f"scenes-{args.num_samples}")
        if not os.path.isdir(source):
            code = ("import sys; from modeling_vlp.data.scenes import make_scenes_dataset; "
                    "make_scenes_dataset(num_train=int(sys.argv[1]), num_validation=int(sys.argv[2]), seed=0)"
                    ".save_to_disk(sys.argv[3])")  # fmt: skip
            _run([PYTHON, "-c", code, str(args.num_samples), str(args.num_validation), source], args,
                 os.path.join(args.work_dir, "scenes.log"))  # fmt: skip
        shutil.rmtree(shards, ignore_errors=True)
        _run([VLP, "shards", "--dataset", source, "--output", shards, "--shard-size", str(args.shard_size),
              "--no-progress"], args, os.path.join(args.work_dir, "shards.log"))  # fmt: skip
    with open(stats_path) as handle:
        splits = json.load(handle)["splits"]
    validation = os.path.join(shards, splits["validation"]["shards"][0])
    return splits["train"]["url_pattern"], validation, splits["train"]["samples"]


def steady_throughput(windows: list[tuple[int, float]], warmup_steps: int, batch_size: int) -> tuple[float, int]:
    """(samples/s, steps counted) over the logging windows that end after `warmup_steps`: `windows` lists
    (last step of the window, samples/s over the window), the window starting after the previous one's end."""
    samples = seconds = 0.0
    counted, previous = 0, 0
    for end, rate in windows:
        steps = end - previous
        if previous >= warmup_steps and steps > 0 and rate > 0:
            samples += steps * batch_size
            seconds += steps * batch_size / rate
            counted += steps
        previous = end
    if not counted:
        raise ValueError(f"no logging window after the first {warmup_steps} steps: log more often or run longer")
    return samples / seconds, counted


def run_ours(args, train_pattern: str, validation: str, train_samples: int, index: int) -> dict:
    output_dir = os.path.join(args.work_dir, f"ours-{index}")
    shutil.rmtree(output_dir, ignore_errors=True)
    command = [
        VLP, "pretrain", "--family", "dual", "--preset", args.preset, "--dataset", f"{train_pattern}::{validation}",
        "--train-num-samples", str(train_samples), "--max-steps", str(args.steps),
        "--per-device-train-batch-size", str(args.batch_size), "--dataloader-num-workers", str(args.workers),
        "--logging-steps", str(args.log_every), "--output-dir", output_dir, "--save-strategy", "no", "--no-resume",
        "--learning-rate", str(args.lr), "--num-validation", "32", "--seed", "0", "--report-to", "none",
    ]  # fmt: skip
    output = _run(command, args, output_dir + ".log")
    parameters = re.search(r"([0-9.]+M) parameters", output)
    with open(os.path.join(output_dir, "trainer_state.json")) as handle:
        history = json.load(handle)["log_history"]
    windows = [(entry["step"], entry["samples_per_second"]) for entry in history if "samples_per_second" in entry]
    rate, steps = steady_throughput(windows, args.warmup_steps, args.batch_size)
    return {"samples_per_second": rate, "steps": steps, "output_dir": output_dir,
            "parameters": parameters.group(1) if parameters else "?"}  # fmt: skip


def open_clip_model_dir(args, ours_dir: str) -> str:
    """A `local-dir:` open_clip model with the towers of our run's config.json and its tokenizer."""
    with open(os.path.join(ours_dir, "config.json")) as handle:
        config = json.load(handle)
    vision, text = config["vision_config"], config["text_config"]
    for tower in (vision, text):
        if tower.get("hidden_act") not in ("gelu", "quick_gelu"):
            raise ValueError(f"open_clip towers use GELU or QuickGELU, our preset has {tower.get('hidden_act')}")
    if vision["hidden_act"] != text["hidden_act"]:
        raise ValueError("open_clip has one activation (quick_gelu or not) for both towers")
    model_cfg = {
        "embed_dim": config["projection_dim"],
        "quick_gelu": vision["hidden_act"] == "quick_gelu",
        "vision_cfg": {
            "image_size": vision["image_size"], "patch_size": vision["patch_size"],
            "layers": vision["num_hidden_layers"], "width": vision["hidden_size"],
            "head_width": vision["hidden_size"] // vision["num_attention_heads"],
            "mlp_ratio": vision["intermediate_size"] / vision["hidden_size"],
        },
        "text_cfg": {
            "context_length": text["max_position_embeddings"], "vocab_size": text["vocab_size"],
            "width": text["hidden_size"], "heads": text["num_attention_heads"], "layers": text["num_hidden_layers"],
            "mlp_ratio": text["intermediate_size"] / text["hidden_size"], "pad_id": text["pad_token_id"],
            "eos_id": text["eos_token_id"], "pool_type": "eos" if text.get("pooling") == "eos" else "argmax",
            "hf_tokenizer_name": "local-dir", "tokenizer_kwargs": {"trust_remote_code": True},
        },
    }  # fmt: skip
    folder = os.path.join(args.work_dir, "open_clip_model")
    os.makedirs(folder, exist_ok=True)
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(ours_dir, name)):
            shutil.copy(os.path.join(ours_dir, name), folder)
    with open(os.path.join(folder, "open_clip_config.json"), "w") as handle:
        json.dump({"model_cfg": model_cfg, "preprocess_cfg": {}}, handle, indent=2)
    return folder


def _open_clip_parameters(model_dir: str) -> int:
    import open_clip

    model = open_clip.create_model(f"local-dir:{model_dir}")
    return sum(parameter.numel() for parameter in model.parameters())


def run_open_clip(args, train_pattern: str, model_dir: str, index: int) -> dict:
    logs = os.path.join(args.work_dir, "open_clip_logs")
    name = f"run-{index}"
    shutil.rmtree(os.path.join(logs, name), ignore_errors=True)
    command = [
        PYTHON, "-c", OPEN_CLIP_MAIN, "--train-data", train_pattern, "--dataset-type", "webdataset",
        "--train-num-samples", str(args.steps * args.batch_size), "--batch-size", str(args.batch_size),
        "--workers", str(args.workers), "--epochs", "1", "--model", f"local-dir:{model_dir}", "--lr", str(args.lr),
        "--wd", "0.1", "--beta2", "0.98", "--warmup", str(max(1, math.ceil(0.05 * args.steps))),
        "--precision", "fp32", "--device", "cpu", "--report-to", "none", "--save-frequency", "0",
        "--zeroshot-frequency", "0", "--val-frequency", "0", "--log-every-n-steps", str(args.log_every),
        "--logs", logs, "--name", name, "--seed", "0",
    ]  # fmt: skip
    output = _run(command, args, os.path.join(args.work_dir, f"open_clip-{index}.log"))
    windows = [(int(samples) // args.batch_size, args.batch_size / float(seconds))
               for samples, seconds in OPEN_CLIP_LOG.findall(output)]  # fmt: skip
    # open_clip rounds an epoch up to whole batches per worker, so it may run a step or so more than S.
    if not windows or windows[-1][0] < args.steps:
        raise RuntimeError(f"open_clip ran {windows[-1][0] if windows else 0} of {args.steps} steps:\n{output[-3000:]}")
    rate, steps = steady_throughput(windows, args.warmup_steps, args.batch_size)
    return {"samples_per_second": rate, "steps": steps}


def streaming_in_place() -> bool:
    """Whether `vlp pretrain` streams shards (its --help names a --streaming option)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([VLP, "pretrain", "--help"], capture_output=True, text=True, env=env, check=False)
    return "streaming" in result.stdout


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="dual-small", help="Our dual preset. Default: dual-small.")
    parser.add_argument("--batch-size", type=int, default=64, help="Default: 64.")
    parser.add_argument("--steps", type=int, default=40, help="Training steps per run. Default: 40.")
    parser.add_argument("--warmup-steps", type=int, default=10, help="Steps not counted (start-up). Default: 10.")
    parser.add_argument("--log-every", type=int, default=5, help="Logging window in steps. Default: 5.")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of both. Default: 2.")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of both. Default: 2.")
    parser.add_argument("--lr", type=float, default=1e-3, help="Learning rate of both. Default: 1e-3.")
    parser.add_argument("--num-samples", type=int, default=1024, help="Generated training scenes. Default: 1024.")
    parser.add_argument("--num-validation", type=int, default=64, help="Generated validation scenes. Default: 64.")
    parser.add_argument("--shard-size", type=int, default=256, help="Samples per shard. Default: 256.")
    parser.add_argument("--repeats", type=int, default=2, help="Runs of each, alternating. Default: 2.")
    parser.add_argument("--work-dir", default="runs/bench-throughput", help="Data, runs and logs.")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if VLP is None:
        raise SystemExit("the `vlp` console script is not installed (pip install -e .)")
    if args.steps <= args.warmup_steps:
        raise SystemExit("--steps must exceed --warmup-steps")
    import open_clip
    import torch

    os.makedirs(args.work_dir, exist_ok=True)
    args.work_dir = os.path.abspath(args.work_dir)
    streaming = streaming_in_place()
    print(
        f"preset {args.preset}, batch {args.batch_size}, {args.steps} steps ({args.warmup_steps} not counted, logged "
        f"every {args.log_every}), {args.workers} workers, {args.threads} threads, fp32 on CPU, {args.repeats} runs "
        f"each\ntorch {torch.__version__}, open_clip {open_clip.__version__}, python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; vlp pretrain streams shards: {streaming}",
        flush=True,
    )
    train_pattern, validation, train_samples = make_shards(args)
    print(f"data: {train_samples} training samples, {train_pattern}", flush=True)
    results = {"ours": [], "open_clip": []}
    model_dir = None
    for index in range(args.repeats):
        results["ours"].append(run_ours(args, train_pattern, validation, train_samples, index))
        print(f"  ours      run {index}: {results['ours'][-1]['samples_per_second']:8.1f} samples/s", flush=True)
        if model_dir is None:
            model_dir = open_clip_model_dir(args, results["ours"][-1]["output_dir"])
            print(f"  parameters: ours {results['ours'][-1]['parameters']}, open_clip "
                  f"{_open_clip_parameters(model_dir) / 1e6:.2f}M", flush=True)  # fmt: skip
        results["open_clip"].append(run_open_clip(args, train_pattern, model_dir, index))
        print(f"  open_clip run {index}: {results['open_clip'][-1]['samples_per_second']:8.1f} samples/s", flush=True)
    ours = statistics.median(run["samples_per_second"] for run in results["ours"])
    theirs = statistics.median(run["samples_per_second"] for run in results["open_clip"])
    print(f"{'':<10} {'samples/s (median)':>19} {'runs':>30}")
    for name, median in (("ours", ours), ("open_clip", theirs)):
        runs = ", ".join(f"{run['samples_per_second']:.1f}" for run in results[name])
        print(f"{name:<10} {median:>19.1f} {runs:>30}")
    print(f"ratio ours / open_clip: {ours / theirs:.3f} (goal >= 1.2); steps counted per run: "
          f"{results['ours'][0]['steps']} / {results['open_clip'][0]['steps']}")  # fmt: skip
    return {"ours": ours, "open_clip": theirs, "ratio": ours / theirs, "streaming": streaming, "runs": results}


if __name__ == "__main__":
    main()
