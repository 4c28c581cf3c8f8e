#!/usr/bin/env bash
# Python for the tests: the official `openai` SDK (against /v1), schemathesis (against
# /openapi.json) and the official MCP SDK (`mcp`, against `deep-recall mcp` and /mcp), ruff +
# mypy for the project's own Python, maturin + pytest for the Python package (bindings/python),
# httpx + websockets + hatchling for the Python client (clients/python). Installs a venv from
# PyPI once (pinned), then only prints its python.
#
#   scripts/test-venv.sh          install if needed, print the venv's python
#   DEEP_RECALL_TEST_VENV=DIR     where the venv lives (default ~/.cache/deep-recall/test-venv)
set -euo pipefail

VENV="${DEEP_RECALL_TEST_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/deep-recall/test-venv}"
PY="$VENV/bin/python"
PINS="openai==3.54.0 mcp==2.3.0 ruff==0.17.6 mypy==2.4.1 maturin==1.16.0 pytest==9.2.0 httpx==0.28.1 websockets==17.4 hatchling==1.33.0 schemathesis==4.32.5"
STAMP="$VENV/.deep-recall-pins"

if [ -x "$PY" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$PINS" ]; then
  echo "$PY"
  exit 0
fi
echo "test-venv: installing $PINS into $VENV" >&2
python3 -m venv "$VENV" >&2
# shellcheck disable=SC2086
"$PY" -m pip install --quiet --disable-pip-version-check $PINS >&2
echo "$PINS" > "$STAMP"
echo "$PY"
