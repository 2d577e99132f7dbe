#!/usr/bin/env bash
# The test suite: set up .venv with the test requirements, lint code and notebooks,
# run the unit tests and execute every notebook through nbval, offline, on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1 COURSE_DEVICE=cpu
# Two pytest workers on two cores: one thread each. Two-thread torch ops in two processes
# at once oversubscribe the cores and run several times slower (measured: 6.7 vs 3.6 min).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export PYTHONHASHSEED=0 COURSE_EXPORT_DIR="${COURSE_EXPORT_DIR:-$PWD/exports/test}"
# Keep the bytecode Python compiles on first import (setup.sh compiles nothing ahead); where it
# may not write it, every test process and notebook kernel compiles torch's modules again.
unset PYTHONDONTWRITEBYTECODE
.venv/bin/ruff check .
# Notebooks first: pytest-xdist hands out whole files in this order, and the two longest
# (07 and 08, two to three minutes each) would otherwise start last and run alone.
.venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile --nbval-lax \
  --nbval-current-env notebooks tests "$@"
# The tests of attention, the GPT, FLOP counts, memory and plans once more at two threads, in
# one process: with more than one thread a CPU splits its products otherwise, and attention
# may take another route (course_lib.attention.attention_route, up to CPU_SHORT_ATTENTION
# positions), so a result that depends on the thread count fails here.
OMP_NUM_THREADS=2 .venv/bin/python -m pytest -q tests/test_attention.py \
  tests/test_scaling.py tests/test_gpt.py tests/test_memory.py tests/test_plan.py
