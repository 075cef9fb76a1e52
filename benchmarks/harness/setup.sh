#!/usr/bin/env bash
# What the router benchmarks need beyond a vfleet venv (Debian/Ubuntu; apt needs root):
#   wrk and nginx-light from apt, and the Rust vllm-router from PyPI, pinned, in its own venv
#   under $VFLEET_BENCH_ROOT (default /tmp/vfleet-bench), where benchmarks/harness/systems.py
#   looks for it. Nothing is written into the repository.
set -euo pipefail
root="${VFLEET_BENCH_ROOT:-/tmp/vfleet-bench}"
version="${VLLM_ROUTER_VERSION:-0.1.17}"   # the version docs/benchmarks.md's numbers were taken with

if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk nginx-light
fi

venv="$root/venv-vllm-router"
mkdir -p "$root"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q "vllm-router==$version"
echo "ready: wrk $(command -v wrk), nginx $(command -v nginx), $venv/bin/vllm-router ($version)"
