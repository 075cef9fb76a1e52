#!/usr/bin/env bash
# KV-cache-aware routing on real vLLM (issue 11): `vfleet up` starts 4 engines of a generating
# model on one GPU, one after another, each publishing KV-cache events (the fleet's policy is
# kv) with 3,500 KV blocks (56k tokens); then kv_routing.py puts a fresh router with each of
# round_robin / prefix / kv in front of them and runs `vllm bench serve --dataset-name
# prefix_repetition` (32 prefixes x 3,000 tokens, 128-token suffixes, 96 output tokens) at 64,
# 96 and 128 req/s, emptying the engines' prefix caches before every run; then 4 req/s
# 3,000-token direct-vs-router TTFT/TPOT comparisons (random prompts, then prompts sharing 4
# prefixes, these also through a round_robin router); then `vfleet down`. About 10 minutes on an
# H200: `vfleet up` 4-5 (the first vLLM start compiles for ~90 s, the others reuse the compile
# cache), each `vllm bench serve` ~10 s to start plus its run. Results: OUTDIR/report.md.
# Works wherever `vllm` runs and vfleet is importable by python3 (installed, or PYTHONPATH=src).
# usage: kv_routing.sh MODEL_DIR OUTDIR
# env:   GPU (0), GPU_SHARE (0.15 per engine), KV_BLOCKS (3500), ROUTER_PORT (8000),
#        VLLM_EXTRA (more `vllm serve` flags, e.g. "--enforce-eager" to start faster),
#        RATES (64,96,128), PROMPTS (1280,768,768: per rate), POLICIES (round_robin,prefix,kv),
#        DIRECT_PROMPTS (40),
#        DIRECT_REPS (1: direct/router pairs; one pair varies by a few ms on an H100, so
#        use 2 or more to read the 2 ms / 3% targets from the pairs' median)
set -euo pipefail
MODEL="${1:?model dir (e.g. make_model.py --kind qwen3 output)}"; OUT="${2:?output dir}"
HERE="$(cd "$(dirname "$0")" && pwd)"
MODEL="$(cd "$MODEL" && pwd)"
mkdir -p "$OUT"; OUT="$(cd "$OUT" && pwd)"
extra='"--num-gpu-blocks-override", "'"${KV_BLOCKS:-3500}"'"'
for flag in ${VLLM_EXTRA:-}; do extra="$extra, \"$flag\""; done
cat > "$OUT/fleet.yaml" <<YAML
name: kv-routing
engine: vllm
router: {port: ${ROUTER_PORT:-8000}, policy: kv}
models:
  - name: chat
    servedNames: [qwen3-rand]
    source: $MODEL
    task: generate
    replicas: 4
    gpu: ${GPU_SHARE:-0.15}
    env:
      - {name: VLLM_SERVER_DEV_MODE, value: "1"}   # POST /reset_prefix_cache between runs
    vllm:
      maxModelLen: 4096
      extraArgs: [$extra]
YAML
{
  python3 -c 'import vllm, vfleet; print("vllm", vllm.__version__, "| vfleet from", vfleet.__file__)'
  python3 -c 'import vfleet.router.proxy as p; print("router build:", "compiled" if p.__file__.endswith(".so") else "plain Python")'
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true
} 2>&1 | tee "$OUT/env.txt"
python3 -m vfleet spec check "$OUT/fleet.yaml" > "$OUT/normalized.yaml"
start=$(date +%s)
python3 -m vfleet up -f "$OUT/fleet.yaml" --gpus "${GPU:-0}" --detach --run-dir "$OUT/run" 2>&1 | tee "$OUT/up.txt"
echo "up took $(( $(date +%s) - start )) s" | tee -a "$OUT/up.txt"
cp "$OUT/run/endpoints.json" "$OUT/endpoints.json"
rc=0
python3 "$HERE/kv_routing.py" --run-dir "$OUT/run" --model "$MODEL" --served qwen3-rand \
  --out "$OUT" --rates "${RATES:-64,96,128}" --prompts "${PROMPTS:-1280,768,768}" \
  --policies "${POLICIES:-round_robin,prefix,kv}" \
  --direct-prompts "${DIRECT_PROMPTS:-40}" --direct-reps "${DIRECT_REPS:-1}" 2>&1 \
  | tee "$OUT/kv_routing.txt" || rc=$?
python3 -m vfleet down --run-dir "$OUT/run" | tee -a "$OUT/kv_routing.txt"
echo "total $(( $(date +%s) - start )) s" | tee -a "$OUT/kv_routing.txt"
sleep 2
# (match the engine processes, not a shell whose command line merely mentions them)
if pgrep -f "^[^ ]*python[0-9.]* -m vllm.entrypoints.cli.main serve|^[^ ]*vllm serve" >/dev/null; then
  echo "FAIL: vLLM processes left after vfleet down" | tee -a "$OUT/kv_routing.txt"; rc=1
fi
exit "$rc"
