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
"$VENV/bin/python" -m pip install --quiet '.[dev]'
"$VENV/bin/ruff" format --check src tests benchmarks setup.py
"$VENV/bin/ruff" check src tests benchmarks setup.py
"$VENV/bin/mypy" src
# Layering contracts ([tool.importlinter] in pyproject.toml), checked on the sources in src/.
PYTHONPATH=src "$VENV/bin/lint-imports" --no-cache
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
  --ignore-glob='tests/test_chart_*' --ignore=tests/test_local_up.py --ignore=tests/test_local_liveness.py \
  --ignore=tests/test_packer.py --ignore=tests/test_vllm_command.py \
  --ignore=tests/test_kubepods.py --ignore=tests/test_router_kube.py \
  --ignore=tests/test_k8s_package.py --ignore=tests/test_image.py \
  --ignore-glob='tests/test_multi_gpu_*' --ignore=tests/test_bench_agree.py
