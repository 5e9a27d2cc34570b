#!/usr/bin/env bash
# The main job: a small dual-encoder (CLIP-style) pretraining run on the embedded scenes dataset, ending with its
# evaluation (retrieval R@1/5, zero-shot accuracy) printed as JSON. Extra arguments go to `vlp pretrain`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/vlp pretrain --family dual --output-dir runs/dual-scenes "$@"
