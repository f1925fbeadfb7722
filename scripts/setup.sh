#!/usr/bin/env bash
# Shared, idempotent set-up: a virtual environment in .venv with the pinned stack and this package (editable).
# Re-running it only installs what is missing. Set REFINE_PYTHON to choose the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${REFINE_PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.refine-installed
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
.venv/bin/python -m pip install -q -U pip
# torch first and alone, so the rest of the stack resolves around the build already installed
# (a CPU-only user installs the CPU build here: see README "CPU-only machines").
.venv/bin/python -m pip install -q "torch==2.13.0" ${REFINE_TORCH_INDEX:+--index-url "$REFINE_TORCH_INDEX"}
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps -e .
# the `eval` extra (lm-eval with its RULER requirements), pinned in pyproject.toml only: the tests run lm-eval's
# NIAH tasks offline. ~30 s; of the packages above it only moves python-dateutil back to 2.9 (typepy needs <3).
read -ra eval_extra <<< "$(.venv/bin/python -c \
  'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["eval"])')"
.venv/bin/python -m pip install -q "${eval_extra[@]}"
echo "$want" > "$stamp"
