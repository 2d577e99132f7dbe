#!/usr/bin/env bash
# Run the whole course headlessly: set up .venv, execute every notebook (as many at once
# as there are CPU cores, longest first; offline-safe, scale chosen by the device found),
# and write executed copies and all exported plots under exports/.
# Usage: bash scripts/course.sh [exports-folder] [run_notebooks options, e.g. --jobs 1]
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
bash scripts/setup.sh
echo "setup ready after $((SECONDS - start)) s"
out=${1:-exports}
[ $# -gt 0 ] && shift
# ${@+...}: no arguments is an unset variable to macOS's bash 3.2 under set -u
.venv/bin/python scripts/run_notebooks.py --out "$out" ${@+"$@"}
echo "the course ran in $((SECONDS - start)) s, setup included"
