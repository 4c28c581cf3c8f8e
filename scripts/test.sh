#!/usr/bin/env bash
# Every check and test of the workspace, on a fresh machine as on a developer's:
#   formatting, clippy (-D warnings), unit and integration tests against a real Postgres +
#   pgvector (started here through scripts/pg.sh unless DATABASE_URL is set) and the embedded
#   store, with the real default models (fetched here into DEEP_RECALL_MODELS_DIR, ./models by
#   default; already-present files are only checked), and the server driven as a real process
#   by HTTP, the npm `graphql-ws` client (Node.js) and the official `openai` Python SDK (a
#   venv from scripts/test-venv.sh) and the official MCP Python SDK; the Python, Node and wasm
#   packages built as a user builds them and tested (the wasm demo page in headless Chromium,
#   installed from Debian if missing); the TypeScript SDK, the Python client and the web UI
#   (in Chromium) against the server; the Vue example built; the deployment files (Docker,
#   Compose, Kubernetes, Helm, Prometheus, Grafana) checked statically (scripts/check-deploy.sh);
#   the `cuda` feature compiled against the CUDA toolkit from PyPI (scripts/cuda-toolkit.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

export DEEP_RECALL_MODELS_DIR="${DEEP_RECALL_MODELS_DIR:-$PWD/models}"
target="${CARGO_TARGET_DIR:-$PWD/target}"
step() { printf '\n==> %s\n' "$*"; }
started=$SECONDS

step "rustfmt"
cargo fmt --all -- --check

step "build (tests and binary)"
cargo test --workspace --locked --no-run

step "models ($DEEP_RECALL_MODELS_DIR)"
"$target/debug/deep-recall" models fetch --all --dir "$DEEP_RECALL_MODELS_DIR"

step "test clients (openai Python SDK, npm graphql-ws)"
DEEP_RECALL_TEST_PYTHON="$(scripts/test-venv.sh)"
export DEEP_RECALL_TEST_PYTHON
(cd server/tests/graphql-ws-client && npm ci --no-audit --no-fund --loglevel=error)

if [ -z "${DATABASE_URL:-}" ]; then
  step "postgres + pgvector"
  DATABASE_URL="$(scripts/pg.sh start)"
  export DATABASE_URL
fi

step "tests"
cargo test --workspace --locked

step "deployment files (deploy/: hadolint, promtool, kustomize + kubernetes-validate, Helm values, settings and flags)"
DEEP_RECALL_BIN="$target/debug/deep-recall" scripts/check-deploy.sh

step "python package (bindings/python: pip install, pytest)"
# The same `pip install ./bindings/python` a user runs, built with the dev profile and the
# workspace's dependency features (bindings/workspace-features) so that it shares this build's
# compiled dependencies (a user's install builds the release profile without them), with the
# venv's maturin (its backend runs `maturin` from PATH).
venv_bin="$(dirname "$DEEP_RECALL_TEST_PYTHON")"
PATH="$venv_bin:$PATH" MATURIN_PEP517_ARGS="--profile dev --features workspace-features" \
  "$DEEP_RECALL_TEST_PYTHON" -m pip \
  install --quiet --disable-pip-version-check --no-build-isolation --force-reinstall --no-deps \
  ./bindings/python
"$DEEP_RECALL_TEST_PYTHON" -m pytest -q -p no:cacheprovider bindings/python/tests

step "python client (clients/python: pip install, pytest)"
# The same `pip install ./clients/python` a user runs (hatchling from the venv), then its tests
# against this build's server, started by the tests themselves.
"$DEEP_RECALL_TEST_PYTHON" -m pip install --quiet --disable-pip-version-check \
  --no-build-isolation --force-reinstall --no-deps ./clients/python
DEEP_RECALL_BIN="$target/debug/deep-recall" "$DEEP_RECALL_TEST_PYTHON" -m pytest -q \
  -p no:cacheprovider clients/python/tests

step "node package (bindings/node: npm install, node --test, TypeScript declarations)"
# `npm install` builds the addon with cargo (the dev profile and the workspace's dependency
# features here, to share this build).
export DEEP_RECALL_NODE_PROFILE=dev DEEP_RECALL_NODE_FEATURES=workspace-features
(
  cd bindings/node
  npm ci --no-audit --no-fund --loglevel=error
  npm test
  # The committed declarations are what the JSDoc of index.js generates, and a strict
  # TypeScript program type-checks against them.
  types_out="$(mktemp -d)"
  npx tsc -p tsconfig.json --outDir "$types_out"
  diff -r types "$types_out" || { echo "bindings/node/types is out of date: run npm run types"; exit 1; }
  rm -rf "$types_out"
  npx tsc -p tsconfig.usage.json
)
# What a user does: `npm install ./bindings/node` into a project of their own.
user_project="$(mktemp -d)"
package="$PWD/bindings/node"
(cd "$user_project" && npm init -y >/dev/null && npm install --no-audit --no-fund --loglevel=error "$package" \
  && node -e "require('deep-recall').Memory.open({ modelsDir: '/nonexistent' }).catch(e => { if (e.code !== 'MODEL_ERROR') throw e; console.log('npm install ./bindings/node: ok') })")
rm -rf "$user_project"

step "typescript SDK (clients/typescript: codegen drift, build, strict types, tests against the server)"
export DEEP_RECALL_BIN="$target/debug/deep-recall"
(
  cd clients/typescript
  npm ci --no-audit --no-fund --loglevel=error
  # The committed types are what graphql-codegen makes of schema.graphql (itself checked against
  # the server by the Rust tests) and the SDK's operations.
  npm run --silent codegen >/dev/null
  git diff --exit-code -- src/generated \
    || { echo "clients/typescript/src/generated is out of date: run npm run codegen"; exit 1; }
  npm test
)

step "wasm package (bindings/wasm: build, wasm-bindgen tests under Node, the demo in Chromium)"
rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
# wasm-bindgen-cli must equal the crate's wasm-bindgen (Cargo.toml pins it); not --locked: its
# lockfile names a crate version the registry mirror lacks.
wasm_bindgen_version="0.2.130"
wasm-bindgen --version 2>/dev/null | grep -qF "$wasm_bindgen_version" \
  || cargo install --quiet wasm-bindgen-cli --version "$wasm_bindgen_version"
# Headless Chromium from Debian for the demo page (playwright-core drives it).
command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
(cd bindings/wasm && npm ci --no-audit --no-fund --loglevel=error && npm test)

step "web UI (clients/web: strict types, build, end to end in headless Chromium against the server), Vue example"
# Uses the SDK built by the TypeScript step (a file: dependency) and the server binary.
(cd clients/web && npm ci --no-audit --no-fund --loglevel=error && npm run build && npm test)
# The Vue example builds (vue-tsc type-checks it against the SDK).
(cd clients/vue-example && npm ci --no-audit --no-fund --loglevel=error && npm run build)

step "python (ruff on every file; mypy --strict where the venv has the imports)"
# shellcheck disable=SC2046
"$venv_bin/ruff" check $(git ls-files '*.py')
# shellcheck disable=SC2046
"$venv_bin/ruff" format --check $(git ls-files '*.py')
"$DEEP_RECALL_TEST_PYTHON" -m mypy --strict server/tests/*.py bindings/python/python/deep_recall \
  bindings/python/tests clients/python/src/deep_recall_client clients/python/tests \
  scripts/prune-target.py eval/cli_harness.py

step "fuzzing (cargo-fuzz on nightly: each target for ${DEEP_RECALL_FUZZ_SECONDS:-15}s)"
# nightly and cargo-fuzz are installed once when missing (rustup, ~/.cargo/bin); the sanitizer build shares the cache's target dir.
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install --quiet --locked cargo-fuzz
fuzz_corpus="$(mktemp -d)"
for t in ingest rest_bodies graphql model_files; do
  mkdir -p "$fuzz_corpus/$t"
  if ! (cd fuzz && cargo +nightly fuzz run --target-dir "$target/fuzz" "$t" "$fuzz_corpus/$t" \
    "seeds/$t" -- -max_total_time="${DEEP_RECALL_FUZZ_SECONDS:-15}" -rss_limit_mb=4096 \
    >"$fuzz_corpus/$t.log" 2>&1); then
    tail -n 60 "$fuzz_corpus/$t.log"
    echo "fuzz target $t failed (the input is in fuzz/artifacts/$t)"
    exit 1
  fi
  echo "$t: $(grep -E '^Done [0-9]+ runs' "$fuzz_corpus/$t.log" || tail -n 1 "$fuzz_corpus/$t.log")"
done
rm -rf "$fuzz_corpus"

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy -p recall-wasm --target wasm32-unknown-unknown --all-targets --locked -- -D warnings

step "cuda build (cargo check --features cuda with the CUDA 13.0 toolkit from PyPI; no GPU needed)"
# The GPU code paths run on the lent GPU machines only (scripts/gpu-bench.sh); here they must
# keep compiling. Its own target directory: nvcc-built kernels and other RUSTFLAGS.
(
  # shellcheck disable=SC1090
  source "$(scripts/cuda-toolkit.sh)"
  export CARGO_TARGET_DIR="${target}-cuda"
  # One check for both (one feature resolution: each crate is checked once): the server's
  # library and binary, core's library and its benches (GPU benchmarks, scripts/gpu-bench.sh).
  cargo check --locked -p recall-server -p recall-core \
    --features recall-server/cuda,recall-core/testing --lib --bins --benches
)

step "done in $((SECONDS - started))s"
