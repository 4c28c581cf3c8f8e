#!/usr/bin/env bash
# Regenerates core/tests/data/reference_logits.json: the tiny test models of every family
# (written by the Rust test suite) run through Python `transformers` (the benchmark venv,
# scripts/bench-venv.sh). Run after changing the tiny models in core/tests/it/tiny_models.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${DEEP_RECALL_BENCH_PYTHON:-$(scripts/bench-venv.sh)}"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
DEEP_RECALL_TINY_MODELS_DIR="$dir" cargo test -p recall-core --test it --locked -- \
  --ignored --exact tiny_models::write_tiny_models_for_reference
"$python" scripts/reference-logits.py "$dir" core/tests/data/reference_logits.json
