#!/usr/bin/env bash
# `vfleet up --engine vllm` across GPUs (issue 17), two fleets one after the other:
#   (a) scripts/gpu/fleets/tp2.yaml   one chat model at --tensor-parallel-size 2 on GPUs 0,1
#   (b) scripts/gpu/fleets/mixed.yaml a chat model on 80% of each GPU (x2) and four embedding
#       replicas at 10%, packed two per GPU
# For each: the plan (`vfleet up --dry-run`), `up`, `status`, then multi_gpu_check.py checks
# CUDA_VISIBLE_DEVICES / NCCL_NVLS_ENABLE of every engine process against the plan, what
# nvidia-smi shows per GPU, requests to every engine and through the router, kill -9 of one
# engine per model (back on the same GPUs), and after `vfleet down` that no process and no
# GPU memory is left. Everything lands in OUTDIR (results.md sums it up).
#
# Works on any host with >= 2 GPUs where `pip install vllm` works; vfleet must be importable by
# $PYTHON (installed, or PYTHONPATH=src). Models: any vLLM-loadable directory; the embedding
# replicas default to the chat model served as embeddings (--runner pooling --convert embed).
#
# usage: multi_gpu_check.sh [--gpus 0,1] [--embed-model DIR] [--only tp2|mixed] [--eager]
#                           [--dry-run-single-gpu] MODEL_DIR OUTDIR
#   --dry-run-single-gpu: the same checks on one GPU with the TP1 variant of both fleets (TP 1,
#   half of the fractional replicas), for a host with one GPU.
#   --only: one of the two fleets (to split the run over calls with a time limit).
#   --eager: --enforce-eager for every engine (cold starts ~26 s instead of ~60 s).
set -uo pipefail
PY="${PYTHON:-python3}"
HERE="$(cd "$(dirname "$0")" && pwd)"
GPUS=0,1; EMB=""; SINGLE=0; ARGS=(); INVOKED="$0 $*"; FLEETS="tp2 mixed"; SPEC_FLAGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --gpus) GPUS="$2"; shift 2 ;;
    --embed-model) EMB="$2"; shift 2 ;;
    --dry-run-single-gpu) SINGLE=1; shift ;;
    --only) FLEETS="$2"; shift 2 ;;
    --eager) SPEC_FLAGS+=(--eager); shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
[ ${#ARGS[@]} -eq 2 ] || { echo "usage: $0 [--gpus 0,1] [--embed-model DIR] [--only tp2|mixed] [--eager] [--dry-run-single-gpu] MODEL_DIR OUTDIR" >&2; exit 2; }
case "$FLEETS" in "tp2 mixed"|tp2|mixed) ;; *) echo "--only $FLEETS: tp2 or mixed" >&2; exit 2 ;; esac
MODEL="$(cd "${ARGS[0]}" && pwd)" || { echo "no model directory ${ARGS[0]}" >&2; exit 2; }
EMB="$(cd "${EMB:-$MODEL}" && pwd)" || exit 2
OUT="${ARGS[1]}"; mkdir -p "$OUT"; OUT="$(cd "$OUT" && pwd)"
if [ "$SINGLE" = 1 ]; then GPUS="${GPUS%%,*}"; SPEC_FLAGS+=(--single-gpu); fi

# NVLink multicast off for everything started from here; the fleet files also set it per engine.
export NCCL_NVLS_ENABLE=0
command -v nvidia-smi >/dev/null || { echo "nvidia-smi not found" >&2; exit 2; }
command -v vllm >/dev/null || { echo "vllm not on PATH (pip install vllm)" >&2; exit 2; }
"$PY" -c "import vfleet, yaml" || { echo "vfleet is not importable by $PY" >&2; exit 2; }
n=$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)
want=$(tr ',' '\n' <<<"$GPUS" | wc -l)
if [ "$SINGLE" = 0 ] && [ "$want" -lt 2 ]; then echo "--gpus $GPUS: the check needs 2 GPUs (or --dry-run-single-gpu)" >&2; exit 2; fi
[ "$n" -ge "$want" ] || { echo "--gpus $GPUS but nvidia-smi shows $n GPU(s)" >&2; exit 2; }

{
  echo "# multi-GPU check $(date -u +%FT%TZ)"
  echo "command: $INVOKED"; echo "mode: $([ "$SINGLE" = 1 ] && echo "dry run, one GPU, TP1" || echo "GPUs $GPUS")"
  echo "vllm: $(vllm --version 2>/dev/null | tail -1)  vfleet: $(cd "$HERE/../.." && git rev-parse --short HEAD 2>/dev/null || echo '?')"
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
} > "$OUT/host.txt"
cat "$OUT/host.txt"
"$PY" "$HERE/multi_gpu_check.py" smi > "$OUT/smi-baseline.json" || exit 2

UP=""  # the run dir of a fleet that is up, for the trap
cleanup() { [ -n "$UP" ] && "$PY" -m vfleet down --run-dir "$UP" >/dev/null 2>&1; UP=""; }
trap cleanup EXIT INT TERM

rc=0
for fleet in $FLEETS; do
  D="$OUT/$fleet"; rm -rf "$D"; mkdir -p "$D"  # no stale results from an earlier run
  echo "not finished" > "$D/result.txt"
  echo "=== fleet $fleet ($D)"
  "$PY" "$HERE/multi_gpu_check.py" spec "$HERE/fleets/$fleet.yaml" --chat "$MODEL" --embed "$EMB" \
    ${SPEC_FLAGS[@]+"${SPEC_FLAGS[@]}"} > "$D/fleet.yaml" || { echo "spec failed" > "$D/result.txt"; rc=1; continue; }
  "$PY" -m vfleet up -f "$D/fleet.yaml" --engine vllm --gpus "$GPUS" --port 0 --dry-run \
    > "$D/plan.json" 2> "$D/plan.txt" || { cat "$D/plan.txt"; echo "plan failed" > "$D/result.txt"; rc=1; continue; }
  start=$(date +%s)
  UP="$D/run"
  if ! "$PY" -m vfleet up -f "$D/fleet.yaml" --engine vllm --gpus "$GPUS" --port 0 --detach \
      --run-dir "$D/run" > "$D/up.txt" 2>&1; then
    cat "$D/up.txt"; echo "up failed (logs: $D/run/logs)" > "$D/result.txt"; rc=1; cleanup; continue
  fi
  echo "up took $(( $(date +%s) - start )) s" | tee -a "$D/up.txt"
  "$PY" -m vfleet status --run-dir "$D/run" | tee "$D/status.txt"
  "$PY" "$HERE/multi_gpu_check.py" check --run-dir "$D/run" --plan "$D/plan.json" --out "$D" \
    2>&1 | tee "$D/check.txt"
  check_rc=${PIPESTATUS[0]}
  "$PY" -m vfleet status --run-dir "$D/run" > "$D/status-after.txt" 2>&1
  "$PY" -m vfleet down --run-dir "$D/run" 2>&1 | tee "$D/down.txt"; UP=""
  "$PY" "$HERE/multi_gpu_check.py" after-down --baseline "$OUT/smi-baseline.json" \
    --state "$D/status-before.json" "$D/status-after.json" --out "$D/down.json" 2>&1 | tee -a "$D/down.txt"
  down_rc=${PIPESTATUS[0]}
  if [ "$check_rc" = 0 ] && [ "$down_rc" = 0 ]; then echo PASS > "$D/result.txt"; else echo FAIL > "$D/result.txt"; rc=1; fi
done

{
  cat "$OUT/host.txt"; echo
  for fleet in tp2 mixed; do  # both, when an earlier call into OUTDIR (--only) ran the other
    [ -f "$OUT/$fleet/result.txt" ] || continue
    echo "## $fleet: $(cat "$OUT/$fleet/result.txt")"; echo
    [ -f "$OUT/$fleet/up.txt" ] && grep -h "up took" "$OUT/$fleet/up.txt"; echo
    [ -f "$OUT/$fleet/gpus.md" ] && cat "$OUT/$fleet/gpus.md"; echo
    for f in check.txt down.txt; do [ -f "$OUT/$fleet/$f" ] && grep -hE '^(ok  |FAIL)' "$OUT/$fleet/$f" | sed 's/^/    /'; done
    echo
  done
} > "$OUT/results.md"
echo "results: $OUT/results.md"
exit "$rc"
