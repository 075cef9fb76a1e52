#!/usr/bin/env bash
# Sets up a fresh venv and runs the quickstart: today, one simulated vLLM engine serving the
# model "demo" on http://127.0.0.1:8100 (the fleet runner replaces this once `vfleet up` exists).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VFLEET_VENV:-.venv-quickstart}"
[ -x "$VENV/bin/vfleet" ] || {
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet .
}
exec "$VENV/bin/vfleet" sim --model demo --port "${PORT:-8100}" --profile small "$@"
