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
quiet_pip() { .venv/bin/python -m pip "$@" 2> >(grep -v "is ignored: it is neither" >&2); }

# uv installs the same packages as pip about ten times faster (requirements-dev.txt into a
# fresh venv on 2 cores: 9 s against 100 s). It does not read pip's configuration, so the
# indexes, local wheels and constraints that pip is configured with (on the course's machines,
# the local CPU wheel of torch) are handed to it, and it picks the newest release across all
# of them, as pip does (its default stops at the first index that has a package: an older
# ruff, here). Checked: the same 157 packages and versions as pip. Where uv fails, pip does it.
uv_install() {
  quiet_pip install -q --disable-pip-version-check uv >/dev/null || return 1
  local args=() key value v
  while IFS='=' read -r key value; do
    value=${value#\'}; value=${value%\'}
    case "$key" in
      *.extra-index-url) for v in $value; do args+=(--extra-index-url "$v"); done ;;
      *.index-url) args+=(--index-url "$value") ;;
      *.find-links) for v in $value; do args+=(--find-links "$v"); done ;;
      *.constraint) for v in $value; do args+=(--constraint "$v"); done ;;
      *.cert) export SSL_CERT_FILE="${SSL_CERT_FILE:-$value}" ;;
    esac
  done < <(.venv/bin/python -m pip config list 2>/dev/null)
  # ${args[@]+...}: an empty array is an unset variable to macOS's bash 3.2 under set -u
  .venv/bin/uv pip install -q --python .venv/bin/python --index-strategy unsafe-best-match \
    ${args[@]+"${args[@]}"} -r "$1" -e .
}

if [ "$(cat "$stamp" 2>/dev/null || true)" != "$hash" ]; then
  echo "setup: installing $req into .venv (under a minute the first time)"
  if [ -n "${COURSE_NO_UV:-}" ] || ! uv_install "$req"; then
    [ -n "${COURSE_NO_UV:-}" ] || echo "setup: uv did not work here; pip installs instead (about two minutes)"
    quiet_pip install -q --no-compile --disable-pip-version-check -r "$req" -e .
  fi
  # Nothing is byte-compiled ahead: Python compiles each module on its first import and keeps
  # it, which costs far less than compiling all 15,000 files (40 s on 2 cores), most never imported.
  echo "$hash" > "$stamp"
fi
