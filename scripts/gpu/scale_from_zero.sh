#!/usr/bin/env bash
# Scale from zero on real vLLM: a model with minReplicas 0 under `vfleet up --engine vllm`; each
# wake-up sends one chat request to the idle model through the router, which holds it while the
# local autoscaler starts `vllm serve`. Records the first request's latency against vLLM's own
# cold start (spawn -> /health 200) and what vfleet adds beyond it (benchmarks/scale_from_zero.py).
# Works wherever `vllm` runs and vfleet is importable by python3 (installed, or PYTHONPATH=src).
# usage: scale_from_zero.sh GENERATE_MODEL_DIR OUTDIR [REPS]
set -euo pipefail
GEN="${1:?generate model dir}"; OUT="${2:?output dir}"; REPS="${3:-3}"
HERE="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$OUT"
python3 -c 'import vllm, vfleet; print("vllm", vllm.__version__, "| vfleet from", vfleet.__file__)' \
  | tee "$OUT/scale_from_zero.txt"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv | tee -a "$OUT/scale_from_zero.txt" || true
python3 "$HERE/../../benchmarks/scale_from_zero.py" --engine vllm --source "$GEN" --gpu 0.3 \
  --reps "$REPS" --grace 2 --timeout 600 --out "$OUT/scale_from_zero.json" 2>&1 \
  | tee -a "$OUT/scale_from_zero.txt"
sleep 2
if pgrep -f "^[^ ]*python[0-9.]* -m vllm.entrypoints.cli.main serve|^[^ ]*vllm serve" >/dev/null; then
  echo "FAIL: vLLM processes left after the fleet stopped" | tee -a "$OUT/scale_from_zero.txt"; exit 1
fi
echo "ok: no vLLM process left" | tee -a "$OUT/scale_from_zero.txt"
