#!/usr/bin/env bash
# Real vLLM next to `vfleet sim` twins, compared request by request (scripts/gpu/conformance.py).
# Runs on any GPU host where `vllm` works; vfleet must be importable by python3 (installed, or
# PYTHONPATH=src). Engines start one after another: vLLM's start-up memory profiling counts
# other instances' allocations on the same GPU.
# usage: conformance.sh GENERATE_MODEL_DIR EMBEDDING_MODEL_DIR OUTDIR
set -euo pipefail
GEN="${1:?generate model dir}"; EMB="${2:?embedding model dir}"; OUT="${3:?output dir}"
HERE="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$OUT"
export VLLM_SERVER_DEV_MODE=1 VLLM_ALLOW_RUNTIME_LORA_UPDATING=True
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_healthy() {  # url seconds
  for _ in $(seq 1 "$2"); do
    if python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$1/health" 2>/dev/null; then return 0; fi
    sleep 1
  done
  echo "not healthy after $2 s: $1" >&2; return 1
}

vllm serve "$GEN" --served-model-name qwen3-rand --host 127.0.0.1 --port 8000 --max-model-len 512 \
  --gpu-memory-utilization 0.3 --api-key sk-test --enforce-eager > "$OUT/vllm-generate.log" 2>&1 &
pids+=($!)
wait_healthy http://127.0.0.1:8000 400
vllm serve "$EMB" --runner pooling --served-model-name bert-rand --host 127.0.0.1 --port 8001 \
  --gpu-memory-utilization 0.15 --enforce-eager > "$OUT/vllm-embed.log" 2>&1 &
pids+=($!)
wait_healthy http://127.0.0.1:8001 400

python3 -m vfleet sim --model "$GEN" --served-model-name qwen3-rand --port 8100 --profile small \
  --max-model-len 512 --api-key sk-test > "$OUT/sim-generate.log" 2>&1 &
pids+=($!)
python3 -m vfleet sim --model "$EMB" --served-model-name bert-rand --task embed --port 8101 \
  --max-model-len 512 > "$OUT/sim-embed.log" 2>&1 &
pids+=($!)
wait_healthy http://127.0.0.1:8100 30
wait_healthy http://127.0.0.1:8101 30

python3 "$HERE/conformance.py" --vllm http://127.0.0.1:8000 --sim http://127.0.0.1:8100 \
  --model qwen3-rand --api-key sk-test --embed-vllm http://127.0.0.1:8001 \
  --embed-sim http://127.0.0.1:8101 --embed-model bert-rand --out "$OUT/conformance.json" \
  | tee "$OUT/conformance.txt"
python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8000/metrics').read().decode())" \
  > "$OUT/vllm-metrics.txt"

# Latency calibration: the same streamed load on vLLM and on the simulator's `small` profile.
python3 "$HERE/latency_compare.py" --model qwen3-rand --api-key sk-test \
  http://127.0.0.1:8000 http://127.0.0.1:8100 | tee "$OUT/latency.txt"
