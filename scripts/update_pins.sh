#!/usr/bin/env bash
# Moves the pins forward: resolves the newest versions that setup.cfg allows in a new virtual environment
# (.venv-pins, removed first), runs the whole test suite there, and only if it passes rewrites constraints.txt from
# what was installed. To try releases beyond setup.cfg's upper bounds, raise the bounds there (and
# SUPPORTED_TRANSFORMERS in modeling_vlp/version_check.py) first. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv-pins
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$VENV/bin/pip" install -q "torch==2.14.1" "torchvision==0.29.1"
"$VENV/bin/pip" install -q --upgrade -e ".[dev]"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$VENV/bin/python" -m pytest tests -q "$@"
{
    echo "# The versions the test suite last passed on; scripts/bootstrap.sh installs them with pip -c."
    echo "# Written by scripts/update_pins.sh on $(date -u +%Y-%m-%d) (Python $("$VENV/bin/python" -c 'import platform; print(platform.python_version())')); do not edit by hand."
    "$VENV/bin/pip" freeze --exclude-editable | grep -v -i '^modeling[-_]vlp'
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt updated; the changed pins:"
git --no-pager diff --stat constraints.txt || true
git --no-pager diff -U0 constraints.txt | grep '^[-+][^-+#]' || true
