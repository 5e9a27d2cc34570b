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
