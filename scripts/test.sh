#!/usr/bin/env bash
# Runs every check CI runs, from nothing: a fresh venv with pinned dependencies, then
# ruff (format + lint), mypy --strict and the whole pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VFLEET_TEST_VENV:-.venv-test}"
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip==25.3
"$VENV/bin/python" -m pip install --quiet -e '.[dev]'
"$VENV/bin/ruff" format --check src tests benchmarks
"$VENV/bin/ruff" check src tests benchmarks
"$VENV/bin/mypy" src
"$VENV/bin/pytest" "$@"
