#!/usr/bin/env bash
# Measure every GPU figure of the course on this machine's GPU and write resources/gpu_results.md.
#
#   bash scripts/gpu_check.sh             # all checks (< 20 minutes on one H100 is the aim)
#   bash scripts/gpu_check.sh --dry-run   # what would run, and what is missing; runs nothing
#   bash scripts/gpu_check.sh --only memory,bench,fsdp
#
# Before going to a GPU machine without internet, carry (both folders are git-ignored):
#   .whl/      wheels of what that machine's Python lacks (for Jupyter: nbclient nbformat ipykernel);
#              the pip download command for another Python version is in benchmarks/gpu_check.py
#   .devdata/  the data: cp -r ../shared/data/tinyshakespeare ../shared/data/multi30k .devdata/
#              (the script copies it itself when ../shared/data is there)
# PYTHON=... picks the interpreter (default: .venv/bin/python if there is one, else python3);
# it must have a CUDA build of torch.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
