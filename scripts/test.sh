#!/usr/bin/env bash
# Runs every check CI runs, from nothing: a fresh venv with pinned dependencies, then
# ruff (format + lint), mypy --strict and the whole pytest suite, twice: against the installed
# package (hot-path modules compiled with mypyc, as users get it) and against the plain-Python
# sources in src/ (as an editable install runs them).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VFLEET_TEST_VENV:-.venv-test}"
# tests/test_ui.py drives Debian's chromium headless through Playwright (no browser download):
# installed here when missing, as root (CI on Debian) or through password-less sudo; only when
# neither can install it does that test skip (and says why).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  AS_ROOT=""
  [ "$(id -u)" = 0 ] || AS_ROOT="sudo -n"
  ($AS_ROOT apt-get update -qq &&
    $AS_ROOT env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ||
    echo "could not install chromium: tests/test_ui.py will skip" >&2
fi
rm -rf "$VENV" build
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip==25.3
# The wheels are built once (the mypyc compile takes minutes) for this venv and for the image
# tests/test_image.py runs vfleet in. As root, scripts/image/build.sh starts now on the image's
# Debian packages, on the core the compile leaves idle, and takes the wheels when they are
# renamed into place; if a step fails first, $WHEELS.failed stops it.
WHEELS="$VENV/wheels"
IMAGE_PID=""
if [ "$(id -u)" = 0 ] && [ "${VFLEET_TEST_IMAGE:-1}" = 1 ] &&
  { command -v mmdebstrap || command -v apt-get; } >/dev/null; then
  trap 'touch "$WHEELS.failed"' EXIT
  scripts/image/build.sh --worktree --wheels "$WHEELS" --out "$VENV/image" >"$VENV/image.log" 2>&1 &
  IMAGE_PID=$!
fi
"$VENV/bin/python" -m pip wheel --quiet --wheel-dir "$WHEELS.partial" '.[dev]'
mv "$WHEELS.partial" "$WHEELS"
"$VENV/bin/python" -m pip install --quiet --no-index --find-links "$WHEELS" 'vfleet[dev]'
"$VENV/bin/ruff" format --check src tests benchmarks setup.py
"$VENV/bin/ruff" check src tests benchmarks setup.py
"$VENV/bin/mypy" src
# Layering contracts ([tool.importlinter] in pyproject.toml), checked on the sources in src/.
PYTHONPATH=src "$VENV/bin/lint-imports" --no-cache
if [ -n "$IMAGE_PID" ]; then
  trap - EXIT
  if wait "$IMAGE_PID"; then
    VFLEET_IMAGE_ARCHIVE=$(tail -n 1 "$VENV/image.log")
    export VFLEET_IMAGE_ARCHIVE
  else
    export VFLEET_IMAGE_BUILD_LOG="$VENV/image.log" # tests/test_image.py fails with its end
  fi
  grep '^build.sh: .* MB' "$VENV/image.log" || true # the image's size and build time
fi
"$VENV/bin/python" -c 'import vfleet.sim.scheduler as m; print("installed scheduler:", m.__file__)'
"$VENV/bin/pytest" "$@"
# The plain-Python pass re-runs what exercises the compiled modules (setup.py COMPILED: the
# simulator, the router's hot path, the HTTP server); code that is never compiled (spec, local
# supervisor, downloads, chart, Kubernetes discovery) ran as plain Python in the pass above.
# It must really be plain Python: a compiled extension left in src/ would shadow its .py file.
if find src -name '*.so' | grep -q .; then
  echo "compiled extensions in src/ would shadow the plain-Python sources:" >&2
  find src -name '*.so' >&2
  exit 1
fi
PYTHONPATH=src "$VENV/bin/python" - <<'PY'
import importlib

for name in ("vfleet.http.server", "vfleet.router.proxy", "vfleet.sim.scheduler"):
    path = importlib.import_module(name).__file__ or ""
    assert path.endswith(".py") and "/src/vfleet/" in path, f"{name} is not plain Python: {path}"
    print("plain-Python pass runs", path)
PY
PYTHONPATH=src "$VENV/bin/pytest" "$@" \
  --ignore-glob='tests/test_spec_*' --ignore-glob='tests/test_download_*' \
  --ignore-glob='tests/test_chart_*' --ignore-glob='tests/test_local_*' \
  --ignore=tests/test_packer.py --ignore=tests/test_vllm_command.py \
  --ignore=tests/test_kubepods.py --ignore=tests/test_router_kube.py \
  --ignore=tests/test_k8s_package.py --ignore=tests/test_image.py \
  --ignore-glob='tests/test_multi_gpu_*' --ignore=tests/test_bench_agree.py
