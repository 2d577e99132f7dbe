#!/usr/bin/env bash
# The course's GPU figures in priority order within a time budget (benchmarks/gpu_check.py says
# which checks, in what order, and how long each is expected to take).
#
# One lease of the device tool (15 minutes of device time, the machine's start included):
#   1. here:  bash scripts/gpu_check.sh --prepare
#             (copies ../shared/data into .devdata/, downloads the wheels into .whl/ (15.3 MB), and
#             says what will travel: the working tree + .whl + .devdata must stay under 64 MiB)
#   2. the device tool's run, from the checkout the session started in:
#        command:   bash scripts/gpu_check.sh --budget 480 --pack $OUT
#        carry:     [".whl", ".devdata"]
#        timeout_s: 560
#      It brings back one file, gpu_check.tar.gz (results, logs, executed notebooks; < 16 MiB),
#      rewritten after every check, so a run stopped at its limit still brings back what it did.
#   3. here:  bash scripts/gpu_check.sh --unpack <files_at>/gpu_check.tar.gz
#      then commit the gpu_*.json and nb*_full.json in resources/results and resources/gpu_results.md:
#      the next lease skips what is recorded ok and runs the rest.
#
#   bash scripts/gpu_check.sh --dry-run     # the order, the expected times, what would be skipped
#   bash scripts/gpu_check.sh --only nb07 --budget 540   # one check; --redo NAME runs a recorded one again
#
# PYTHON=... picks the interpreter (default: .venv/bin/python if there is one, else python3);
# it must have a CUDA build of torch. Where nbclient or ipykernel is missing and .whl/ exists,
# the wheels are installed into a folder of their own (GPU_CHECK_SITE, default /tmp/gpu_check_site).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ -d .whl ]] && ! "$PYTHON" -c "import nbclient, nbformat, ipykernel" 2>/dev/null; then
  SITE="${GPU_CHECK_SITE:-/tmp/gpu_check_site}"
  echo "installing the wheels of .whl/ into $SITE"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || echo "warning: the wheels did not install; the notebooks will be skipped"
  export PYTHONPATH="$PYTHONPATH:$SITE"
fi
exec "$PYTHON" benchmarks/gpu_check.py "$@"
