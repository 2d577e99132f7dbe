#!/usr/bin/env bash
# The test suite: set up .venv with the test requirements, lint code and notebooks,
# run the unit tests and execute every notebook through nbval, offline, on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1 COURSE_DEVICE=cpu
export PYTHONHASHSEED=0 COURSE_EXPORT_DIR="${COURSE_EXPORT_DIR:-$PWD/exports/test}"
.venv/bin/ruff check .
.venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile --nbval-lax \
  --nbval-current-env tests notebooks "$@"
