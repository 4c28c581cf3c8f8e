#!/usr/bin/env bash
# The main job on the embedded default store, from nothing: fetch the default models, build,
# import the sample conversation shipped in examples/ for the user "demo" (replacing what an
# earlier run stored for "demo"), and search it.
# Data goes to ./data, models to ./models (override with DEEP_RECALL__STORE__DATA_DIR and
# DEEP_RECALL__MODELS__DIR, or the --data-dir and --models-dir flags).
set -euo pipefail
cd "$(dirname "$0")/.."
run() { cargo run --quiet --locked -p recall-server -- "$@"; }

run models fetch
run forget --user demo >/dev/null
run ingest --user demo examples/sample-conversation.jsonl
for q in "Where does Alice live now?" "What can't she eat?" "What did she do at the weekend?"; do
  printf '\n> %s\n' "$q"
  run search --user demo --top-k 3 "$q"
done
