#!/usr/bin/env bash
# Creates .venv (if missing) and installs modeling_vlp with its test tools at the versions pinned in
# constraints.txt (the set the test suite last passed on; scripts/update_pins.sh moves it forward). Safe to run again:
# pip skips what already matches the pins and replaces what does not. torch and torchvision are installed first,
# pinned, so that no other requirement pulls a newer multi-GB build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
CONSTRAINTS=${VLP_CONSTRAINTS-constraints.txt}   # VLP_CONSTRAINTS= (empty): resolve the newest allowed versions
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
pin=()
if [ -n "$CONSTRAINTS" ]; then
    pin=(-c "$CONSTRAINTS")
fi
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
    .venv/bin/pip install -q "${pin[@]}" "torch==2.14.1" "torchvision==0.29.1"
fi
.venv/bin/pip install -q "${pin[@]}" -e ".[dev]"
# The ALBEF converter's reference implementation pins packages that conflict with ours (attrs, DALL-E) but needs only
# torch and torchvision: installed without its dependencies, at the pinned version.
# CLIP_benchmark (the reference of the retrieval metrics) likewise: its other dependencies are only for datasets.
if [ -n "$CONSTRAINTS" ] && ! .venv/bin/python -c "import torchmultimodal, clip_benchmark" >/dev/null 2>&1; then
    .venv/bin/pip install -q "${pin[@]}" --no-deps torchmultimodal-nightly clip-benchmark
fi
