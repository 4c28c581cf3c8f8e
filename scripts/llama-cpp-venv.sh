#!/usr/bin/env bash
# The llama.cpp reference for the generation benchmark (core/benches/llm.rs --llama-cpp):
# a venv with llama-cpp-python, which PyPI serves only as source — pip builds llama.cpp with
# the CPU's native flags (cmake and ninja come from PyPI as build dependencies). About 6–10
# minutes on 2 cores, once.
#
#   scripts/llama-cpp-venv.sh          install if needed, print the venv's python
#   DEEP_RECALL_LLAMA_VENV=DIR         where the venv lives (default ~/.cache/deep-recall/llama-venv)
set -euo pipefail

VENV="${DEEP_RECALL_LLAMA_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/deep-recall/llama-venv}"
PY="$VENV/bin/python"
PINS="llama-cpp-python==0.3.36"
STAMP="$VENV/.deep-recall-pins"

if [ -x "$PY" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$PINS" ]; then
  echo "$PY"; exit 0
fi
[ -x "$PY" ] || python3 -m venv "$VENV"
# shellcheck disable=SC2086
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON}" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
  "$PY" -m pip install --quiet --disable-pip-version-check $PINS >&2
echo "$PINS" > "$STAMP"
echo "$PY"
