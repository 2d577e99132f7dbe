#!/usr/bin/env bash
# Run the whole course headlessly: set up .venv, execute every notebook in order
# (offline-safe, scale chosen by the device found), and write executed copies and
# all exported plots under exports/. Usage: bash scripts/course.sh [exports-folder]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${1:-exports}
.venv/bin/python scripts/run_notebooks.py --out "$out"
