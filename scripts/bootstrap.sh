#!/usr/bin/env bash
# Creates .venv (if missing) and installs modeling_vlp with its test tools. Safe to run again: pip skips what is
# already there. torch and torchvision are installed first, pinned, so that no other requirement pulls a newer
# multi-GB build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
    .venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
.venv/bin/pip install -q -e ".[dev]"
