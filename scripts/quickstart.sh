#!/usr/bin/env bash
# Sets up a fresh venv and runs the quickstart fleet (examples/quickstart.yaml): a chat model x2
# and an embedding model x4 sharing one GPU, on simulated engines, behind the router on
# http://127.0.0.1:8000/v1. Ctrl-C stops it. Extra arguments go to `vfleet up`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VFLEET_VENV:-.venv-quickstart}"
rev="$(git rev-parse HEAD 2>/dev/null || echo none)"
if [ ! -x "$VENV/bin/vfleet" ] || [ "$(cat "$VENV/.vfleet-rev" 2>/dev/null)" != "$rev" ] \
    || [ "$rev" = none ]; then
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet .
  echo "$rev" > "$VENV/.vfleet-rev"
fi
exec "$VENV/bin/vfleet" up -f examples/quickstart.yaml "$@"
