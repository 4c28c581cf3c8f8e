#!/usr/bin/env bash
# Regenerates core/tests/data/reference_tokens.json: SmolLM2's byte-level vocabulary written
# as GGUF files that name different pre-tokenizers (by the Rust test suite), tokenized by
# Python `transformers`' GGUF loader (the benchmark venv, scripts/bench-venv.sh). Needs the
# default models (`deep-recall models fetch`). Run after changing the texts or names in
# core/tests/it/chat_tokenizer.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${DEEP_RECALL_BENCH_PYTHON:-$(scripts/bench-venv.sh)}"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
DEEP_RECALL_TOKENIZER_DIR="$dir" cargo test -p recall-core --test it --locked -- \
  --ignored --exact chat_tokenizer::write_vocabulary_ggufs_for_reference
"$python" scripts/reference-tokens.py "$dir" core/tests/data/reference_tokens.json
