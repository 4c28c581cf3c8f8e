#!/usr/bin/env bash
# The main job: the server on the embedded default store, from nothing. Fetches the default
# models (embedding + chat) into ./models, builds the release binary and the web UI (with npm,
# when it is there) and serves the chat UI at http://127.0.0.1:8080/, GraphQL at /graphql
# (GraphiQL in a browser), the OpenAI-compatible REST API under /v1, MCP at /mcp, /health,
# /ready and /metrics.
#
# Local development mode: anonymous access is on, and the `X-User-Id` header names the user.
# For anything else give a JWT secret instead (DEEP_RECALL__AUTH__JWT_SECRET, or `--jwt-secret`):
#   DEEP_RECALL__AUTH__JWT_SECRET="$(openssl rand -hex 32)" scripts/serve.sh --graphiql
# Extra arguments go to `deep-recall serve` (see `deep-recall serve --help`). Data goes to
# ./data, models to ./models (DEEP_RECALL__STORE__DATA_DIR, DEEP_RECALL__MODELS__DIR; all
# settings are in docs/setup.md).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --locked --release -p recall-server
bin="${CARGO_TARGET_DIR:-$PWD/target}/release/deep-recall"
"$bin" models fetch
if command -v npm >/dev/null; then
  for dir in clients/typescript clients/web; do
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build >/dev/null)
  done
else
  echo "serve.sh: npm is missing, so the web UI at / is not built (the API works)" >&2
fi
if [ "$#" -eq 0 ]; then
  set -- --allow-anonymous --graphiql
fi
exec "$bin" serve "$@"
