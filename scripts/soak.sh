#!/usr/bin/env bash
# The long reliability run, for the figures in docs/benchmarks.md (CI runs a bounded subset):
#   1. kill -9 mid-ingest and mid-chat, 20 trials per case on both stores;
#   2. 100 chat streams at once with an isolation checker;
#   3. schemathesis against /openapi.json with 1000 cases per operation;
#   4. each cargo-fuzz target for FUZZ_SECONDS (300) on nightly, corpus kept in fuzz/corpus;
#   5. a soak: a mixed load (store, search, chat; a checker user) against a server on the
#      embedded store for SOAK_MINUTES (10), with its RSS sampled every 10 s (bench/soak.py).
# Needs what scripts/test.sh installs (Postgres, models, the test venv with the Python client).
#
#   scripts/soak.sh            everything
#   SOAK_MINUTES=2 scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."

export DEEP_RECALL_MODELS_DIR="${DEEP_RECALL_MODELS_DIR:-$PWD/models}"
target="${CARGO_TARGET_DIR:-$PWD/target}"
step() { printf '\n==> %s\n' "$*"; }
minutes="${SOAK_MINUTES:-10}"

cargo build --quiet --locked -p recall-server --tests --bins
if [ -z "${DATABASE_URL:-}" ]; then
  DATABASE_URL="$(scripts/pg.sh start)"
  export DATABASE_URL
fi
py="$(scripts/test-venv.sh)"
export DEEP_RECALL_TEST_PYTHON="$py"
"$py" -m pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps \
  --force-reinstall ./clients/python

step "crash trials: kill -9 mid-ingest and mid-chat, 20 per case, both stores"
DEEP_RECALL_CRASH_TRIALS=20 cargo test --quiet --locked -p recall-server --test it -- crash:: \
  --nocapture 2>&1 | grep -E "crash trials|test result|panicked|FAILED"

step "load: 100 chat streams at once, isolation checker"
DEEP_RECALL_LOAD_MODEL=packaged DEEP_RECALL_LOAD_STREAMS=100 cargo test --quiet --locked -p recall-server --test it -- load:: \
  --nocapture 2>&1 | grep -E "^load:|test result|panicked|FAILED"

step "API conformance: schemathesis, 1000 cases per operation"
DEEP_RECALL_SCHEMATHESIS_EXAMPLES=1000 cargo test --quiet --locked -p recall-server --test it -- \
  conformance:: --nocapture 2>&1 | grep -E "^schemathesis:|test result|panicked|FAILED"

step "fuzzing: each target for ${FUZZ_SECONDS:-300}s (cargo-fuzz, nightly)"
for t in ingest rest_bodies graphql model_files; do
  mkdir -p "fuzz/corpus/$t"
  (cd fuzz && cargo +nightly fuzz run --target-dir "$target/fuzz" "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="${FUZZ_SECONDS:-300}" -rss_limit_mb=4096 2>&1) | grep -E "^Done|crash|panicked|ERROR" \
    | sed "s/^/$t: /"
done

step "soak: $minutes minutes of mixed load, RSS every 10 s"
data="$(mktemp -d)"
out="$(mktemp)"
"$target/debug/deep-recall" --data-dir "$data" --models-dir "$DEEP_RECALL_MODELS_DIR" serve \
  --bind 127.0.0.1:0 --allow-anonymous >"$out" 2>/dev/null &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$data" "$out"' EXIT
for _ in $(seq 1 100); do grep -q "listening on" "$out" && break; sleep 0.2; done
url="$(sed -n 's/^deep-recall: listening on //p' "$out")"
"$py" bench/soak.py "$url" "$server" --minutes "$minutes"
