#!/usr/bin/env bash
# Everything the GPU machine runs: the benchmarks (python -m bench.run), the six shipped
# latency tables (dnas-latency profile + validate) and a short latency-targeted search
# (python -m bench.search_run), in time-boxed parts that each fit one 10-minute call.
#
#   OUT=/some/dir bash bench/device_run.sh part1     # then part2, then part3 for leftovers
#   OUT=/some/dir BUDGET_S=100000 bash bench/device_run.sh all   # no time limit
#   OUT=/some/dir bash bench/device_run.sh preflight # versions and GPU only
#   OUT=/tmp/x TAG=smoke bash bench/device_run.sh smoke   # the plumbing on CPU, tiny space
#
# Every task is skipped when it is already done (markers in runs/device/done, or in
# bench/results/$TAG/done after unpacking an earlier call's tarball into the repo) or when
# the time left in this call is below its minimum; a killed table profile resumes from its
# TABLE.partial.json. On exit everything is packed into $OUT (at most 6 files):
#   results_<part>.tar.gz  paths relative to the repo root: latency_tables/, bench/results/$TAG/
#   bench.md, bench.json, search.json, status_<part>.log, preflight.txt
# See bench/README.md for how to unpack and commit the results.
set -uo pipefail

PART="${1:-part1}"
: "${OUT:?set OUT to the folder whose files come back}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TAG="${TAG:-h200}"                 # device tag in the table names (h200_fbnetv2_xlarge_b64_bf16)
BUDGET="${BUDGET_S:-555}"          # seconds this call may use (the remote limit is 600)
PY="${PYTHON:-$(command -v python || command -v python3)}"
WORK="runs/device"                 # ignored by git; survives between calls while the machine is warm
RES="bench/results/$TAG"
START=$(date +%s)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ -d bench/vendor ]; then export PYTHONPATH="$ROOT/bench/vendor:$PYTHONPATH"; fi
export DNAS_CACHE="$ROOT/$WORK/cache"
export PYTHONUNBUFFERED=1
mkdir -p "$WORK/tables" "$WORK/bench" "$WORK/search" "$WORK/logs/$PART" "$WORK/done" "$OUT"
STATUS="$WORK/logs/$PART/status.log"
: > "$STATUS"

left() { echo $(( BUDGET - ($(date +%s) - START) )); }
log() { echo "[$(date -u +%H:%M:%S) +$(( $(date +%s) - START ))s] $*" | tee -a "$STATUS"; }

seed() {  # results of earlier calls unpacked into the repo (a cold machine starts from them)
  local f
  for f in latency_tables/"$TAG"_*; do
    [ -e "$f" ] && [ ! -e "$WORK/tables/$(basename "$f")" ] && cp "$f" "$WORK/tables/"
  done
  if [ -f "$RES/bench/bench.json" ] && [ ! -f "$WORK/bench/bench.json" ]; then cp "$RES/bench/"* "$WORK/bench/"; fi
  if [ -d "$RES/done" ]; then cp -n "$RES/done/"* "$WORK/done/" 2>/dev/null || true; fi
  if [ -f "$RES/search/search.json" ] && [ ! -f "$WORK/search/search.json" ]; then
    cp "$RES/search/search.json" "$WORK/search/"
  fi
}

# task NAME MIN_SECONDS COMMAND...: run unless done or too little time is left
task() {
  local name="$1" need="$2" l t0 rc
  shift 2
  if [ -e "$WORK/done/$name" ]; then log "$name: done earlier"; return 0; fi
  l=$(left)
  if [ "$l" -lt "$need" ]; then log "$name: PENDING ($l s left, needs >= $need s): run the next part"; return 0; fi
  log "$name: start (time box $((l - 30)) s)"
  t0=$(date +%s)
  timeout -s INT -k 20 $((l - 30)) "$@" > "$WORK/logs/$PART/$name.log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then
    touch "$WORK/done/$name"
    log "$name: ok in $(( $(date +%s) - t0 )) s"
  else
    log "$name: FAILED (rc $rc) after $(( $(date +%s) - t0 )) s; last lines of its log:"
    tail -n 6 "$WORK/logs/$PART/$name.log" | sed 's/^/      /' | tee -a "$STATUS"
  fi
}

# measurement settings of the tables (the smoke part overrides them for a CPU check)
DEV=cuda; DTYPE=bf16; PROFILE_ARGS=(--channels-last --passes 3 --windows 5 --window-ms 1 --warmup 2)
ARCHS=100; BENCH_ARGS=(); SEARCH_ARGS=(--batch 256 --steps 250 --ids 500 --images-per-id 20 --workers 8)

table_name() {  # SPACE BATCH -> h200_fbnetv2_xlarge_b64_bf16 (the space's own name, as the recipes use)
  local name="$1"
  case "$1" in large|xlarge) name="fbnetv2_$1" ;; esac
  echo "${TAG}_${name}_b$2_${DTYPE}"
}

profile_table() {  # SPACE BATCH
  local name; name=$(table_name "$1" "$2")
  if [ -f "$WORK/tables/$name.csv" ]; then touch "$WORK/done/profile_$1_b$2"; fi
  task "profile_$1_b$2" 45 "$PY" -m dnas.cli.latency profile --supernet "$1" --device "$DEV" --batch "$2" \
    --dtype "$DTYPE" "${PROFILE_ARGS[@]}" --checkpoint-every 20 --no-progress --out "$WORK/tables/$name"
  if [ -f "$WORK/tables/$name.validate.json" ]; then touch "$WORK/done/validate_$1_b$2"; fi
  if [ -f "$WORK/tables/$name.csv" ]; then
    task "validate_$1_b$2" 50 "$PY" -m dnas.cli.latency validate --supernet "$1" --table "$WORK/tables/$name.csv" \
      --archs "$ARCHS" --passes 2 --save-calibration --no-progress --out "$WORK/tables/$name.validate.json" \
      --plot "$WORK/tables/$name.validate.png"
  else
    log "validate_$1_b$2: PENDING (no table yet)"
  fi
}

search() {  # SPACE BATCH_OF_ITS_TABLE
  local table; table="$WORK/tables/$(table_name "$1" "$2").csv"
  if [ -f "$WORK/search/search.json" ]; then touch "$WORK/done/search_$1"; fi
  if [ ! -f "$table" ]; then log "search_$1: PENDING (needs $table)"; return 0; fi
  task "search_$1" 240 "$PY" -m bench.search_run --space "$1" --table "$table" "${SEARCH_ARGS[@]}" \
    --out "$WORK/search"
}

bench() {  # NAME MIN_SECONDS WHAT
  task "bench_$1" "$2" "$PY" -m bench.run --what "$3" --resume "${BENCH_ARGS[@]}" --out "$WORK/bench"
}

preflight() {
  {
    echo "date $(date -u +%FT%TZ)  part $PART  budget $BUDGET s"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true
    "$PY" - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0])
for m in ("torch", "torchvision", "numpy", "yaml", "tqdm", "PIL", "matplotlib", "pandas", "onnx", "onnxruntime",
          "timm", "fvcore", "networkx", "tensorboard"):
    try:
        mod = importlib.import_module(m)
        print(f"{m:12s} {getattr(mod, '__version__', 'ok')}")
    except Exception as exc:  # noqa: BLE001
        print(f"{m:12s} MISSING ({type(exc).__name__}: {exc})")
import torch
print("cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
try:
    import onnxruntime as ort
    print("onnxruntime providers", ort.get_available_providers())
except Exception:  # noqa: BLE001
    pass
EOF
    df -h . | tail -1
    nproc
  } > "$WORK/logs/$PART/preflight.txt" 2>&1
  cp "$WORK/logs/$PART/preflight.txt" "$OUT/preflight.txt"
  log "preflight: $(grep -c MISSING "$WORK/logs/$PART/preflight.txt") missing modules (see preflight.txt)"
}

pack() {
  local stage; stage=$(mktemp -d)
  mkdir -p "$stage/latency_tables" "$stage/$RES/search" "$stage/$RES/logs" "$stage/$RES/done"
  cp "$WORK/tables/"* "$stage/latency_tables/" 2>/dev/null
  cp -r "$WORK/bench" "$stage/$RES/bench"
  cp "$WORK/done/"* "$stage/$RES/done/" 2>/dev/null
  cp -r "$WORK/logs/$PART" "$stage/$RES/logs/$PART"
  if [ -d "$WORK/search" ]; then
    cp "$WORK/search/search.json" "$stage/$RES/search/" 2>/dev/null
    for f in metrics.csv config.yaml final_arch.yaml arch_history.csv; do
      cp "$WORK/search/run/$f" "$stage/$RES/search/" 2>/dev/null
    done
    cp "$WORK/search/run/plots/"*.png "$stage/$RES/search/" 2>/dev/null
  fi
  tar czf "$OUT/results_$PART.tar.gz" -C "$stage" .
  rm -rf "$stage"
  cp "$WORK/bench/bench.md" "$WORK/bench/bench.json" "$OUT/" 2>/dev/null
  cp "$WORK/search/search.json" "$OUT/" 2>/dev/null
  log "packed $OUT/results_$PART.tar.gz ($(du -h "$OUT/results_$PART.tar.gz" | cut -f1))"
  cp "$STATUS" "$OUT/status_$PART.log"
}

seed
preflight
[ "$PART" = preflight ] && { cp "$STATUS" "$OUT/status_$PART.log"; exit 0; }
trap pack EXIT
case "$PART" in
  part1)
    bench core 150 supernet,arch,dcs,timm
    profile_table xlarge 64
    profile_table fbnetv2 64
    profile_table large 64
    bench profile 45 profile
    ;;
  part2)
    search xlarge 64
    profile_table xlarge 1
    profile_table fbnetv2 1
    profile_table large 1
    ;;
  part3|all)
    [ "$PART" = all ] && BUDGET=${BUDGET_S:-100000}
    bench core 150 supernet,arch,dcs,timm
    for b in 64 1; do for s in xlarge fbnetv2 large; do profile_table "$s" "$b"; done; done
    search xlarge 64
    bench profile 45 profile
    bench onnx 60 onnx
    bench compile 180 compile
    ;;
  smoke)  # the same plumbing on CPU with the tiny space, in about a minute (no GPU needed)
    DEV=cpu; DTYPE=fp32; PROFILE_ARGS=(--passes 1 --windows 3); ARCHS=8; BENCH_ARGS=(--smoke)
    SEARCH_ARGS=(--smoke)
    bench core 20 supernet,arch,dcs,timm,onnx,compile,profile
    profile_table tiny 8
    search tiny 8
    ;;
  *) log "unknown part $PART (expected part1, part2, part3, all or preflight)"; exit 2 ;;
esac
log "pending after $PART: $(grep -c PENDING "$STATUS") task(s); $(left) s of the budget left"
