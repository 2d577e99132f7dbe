#!/usr/bin/env bash
# Set up the course in ./.venv: `bash scripts/setup.sh` (runtime) or `--dev` (plus tests).
# Idempotent: reinstalls only when requirements*.txt or pyproject.toml changed.
# torch is pinned to 2.13.0 in requirements.txt (the local CPU wheel on the course's
# machines); course_lib itself asks for torch>=2.4, so Colab keeps its own torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
req=requirements.txt
[ "${1:-}" = "--dev" ] && req=requirements-dev.txt
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=".setup-stamp-$(basename "$req" .txt)"
hash=$(cat requirements*.txt pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$hash" ]; then
  echo "setup: installing $req into .venv (about a minute the first time)"
  # pip byte-compiles one file at a time; compileall on every core afterwards is faster
  # (1.7 vs 2.1 min on 2 cores). Some packages ship files that are not meant to compile.
  .venv/bin/python -m pip install -q --no-compile --disable-pip-version-check -r "$req" -e . \
    2> >(grep -v "is ignored: it is neither" >&2)
  .venv/bin/python -m compileall -q -j 0 .venv/lib >/dev/null 2>&1 || true
  echo "$hash" > "$stamp"
fi
