#!/usr/bin/env bash
# Sets up a fresh venv and runs the quickstart fleet (examples/quickstart.yaml): a chat model x2
# and an embedding model x4 sharing one GPU, on simulated engines, behind the router on
# http://127.0.0.1:8000/v1. Ctrl-C stops it. Extra arguments go to `vfleet up`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VFLEET_VENV:-.venv-quickstart}"
rev="$(git rev-parse HEAD 2>/dev/null || echo none)"
say() { echo "quickstart: $*" >&2; }
if [ ! -x "$VENV/bin/vfleet" ] || [ "$(cat "$VENV/.vfleet-rev" 2>/dev/null)" != "$rev" ] \
    || [ "$rev" = none ]; then
  # Said before anything slow starts: the first install compiles the hot path with mypyc and
  # prints nothing of its own for minutes (pip --quiet), which reads as a hang.
  say "installing vfleet into $VENV (first run only; compiling the hot path with mypyc takes" \
    "a couple of minutes, progress below every 15 s)"
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating the virtual environment $VENV"
    python3 -m venv "$VENV"
  fi
  log="$VENV/install.log"
  say "pip install . (full output in $log)"
  "$VENV/bin/python" -m pip install . >"$log" 2>&1 &
  pip_pid=$!
  trap 'kill "$pip_pid" 2>/dev/null || true' INT TERM EXIT
  started=$SECONDS
  next=15
  while kill -0 "$pip_pid" 2>/dev/null; do
    sleep 1
    elapsed=$((SECONDS - started))
    if [ "$elapsed" -ge "$next" ]; then
      say "still installing (${elapsed}s): $(tail -n 1 "$log" 2>/dev/null | cut -c1-100)"
      next=$((next + 15))
    fi
  done
  if ! wait "$pip_pid"; then
    trap - INT TERM EXIT
    say "pip install failed; the last lines of $log:"
    tail -n 20 "$log" >&2
    exit 1
  fi
  trap - INT TERM EXIT
  say "installed in $((SECONDS - started))s"
  echo "$rev" > "$VENV/.vfleet-rev"
fi
say "starting the fleet: $VENV/bin/vfleet up -f examples/quickstart.yaml $*"
exec "$VENV/bin/vfleet" up -f examples/quickstart.yaml "$@"
