#!/usr/bin/env bash
# `vfleet up --engine vllm` end to end on a GPU host: two chat replicas and two embedding
# replicas packed onto one GPU, served through the router; then kill -9 one engine and check it
# comes back while the other keeps serving; then `vfleet down`. Works wherever `vllm` runs and
# vfleet is importable by python3 (installed, or PYTHONPATH=src).
# usage: up_check.sh GENERATE_MODEL_DIR EMBEDDING_MODEL_DIR OUTDIR
set -euo pipefail
GEN="${1:?generate model dir}"; EMB="${2:?embedding model dir}"; OUT="${3:?output dir}"
HERE="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$OUT"
cat > "$OUT/fleet.yaml" <<YAML
name: gpu-check
engine: vllm
router: {port: 8000, policy: least_load}
models:
  - name: chat
    servedNames: [qwen3-rand]
    source: $GEN
    task: generate
    replicas: 2
    gpu: 0.3
    vllm:
      maxModelLen: 2048
      # old spellings users still copy; vfleet rewrites them for the installed vLLM
      extraArgs: ["--disable-log-requests", "--cuda-graph-sizes 1 2 4 8 16"]
  - name: embed
    servedNames: [bert-rand]
    source: $EMB
    replicas: 2
    gpu: 0.1
    vllm:
      maxModelLen: 512
      enforceEager: true
      extraArgs: ["--task", "embed"]
YAML
python3 -m vfleet spec check "$OUT/fleet.yaml" > "$OUT/normalized.yaml"
start=$(date +%s)
python3 -m vfleet up -f "$OUT/fleet.yaml" --gpus 0 --detach --run-dir "$OUT/run" 2>&1 | tee "$OUT/up.txt"
echo "up took $(( $(date +%s) - start )) s" | tee -a "$OUT/up.txt"
python3 -m vfleet status --run-dir "$OUT/run" | tee "$OUT/status.txt" || true
python3 "$HERE/up_check.py" --run-dir "$OUT/run" 2>&1 | tee "$OUT/check.txt"
rc=${PIPESTATUS[0]}
python3 -m vfleet down --run-dir "$OUT/run" | tee -a "$OUT/check.txt"
sleep 2
# (match the engine processes, not a shell whose command line merely mentions them)
if pgrep -f "^[^ ]*python[0-9.]* -m vllm.entrypoints.cli.main serve|^[^ ]*vllm serve" >/dev/null; then
  echo "FAIL: vLLM processes left after vfleet down" | tee -a "$OUT/check.txt"; rc=1
else
  echo "ok: no vLLM process left after vfleet down" | tee -a "$OUT/check.txt"
fi
nvidia-smi --query-gpu=memory.used --format=csv | tee -a "$OUT/check.txt" || true
exit "$rc"
