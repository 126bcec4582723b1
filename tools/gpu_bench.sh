#!/usr/bin/env bash
# GPU check of `coft bench perf`: image embedding, the Phase I step and the Phase II step (MoCo
# off and on) at ViT-B/16, batch 32, coft (`--features cuda`) beside PyTorch (bf16 autocast) on
# the same GPU in the same run: images/s, memory, ratio and achieved model TFLOP/s (model FLOP
# utilisation = TFLOP/s / the GPU's dense bf16 peak; H100/H200 SXM: 989).
#
# Sized for a 15-minute device budget (one run with room to rerun): the PyTorch rows come
# first and alone (they need only a CUDA torch + transformers + open_clip), then coft is built
# and the interleaved table is printed. Every part has its own timeout and the script goes on
# when one fails, so a run always leaves whatever it could measure under $OUT.
#
#   tools/gpu_bench.sh                      # PYTHON=python3 BATCH=32 ITERS=10 OUT=./gpu_out
#   PYTHON=~/venv/bin/python BATCH=128 tools/gpu_bench.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BATCH=${BATCH:-32}
ITERS=${ITERS:-10}
WARMUP=${WARMUP:-3}
OUT=${OUT:-./gpu_out}
STEPS=${STEPS:-embed,phase1,phase2,moco}
mkdir -p "$OUT"
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }

log "$(date -u +%FT%TZ) gpu_bench: ViT-B/16, batch $BATCH, $ITERS timed steps after $WARMUP"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$OUT/summary.txt"

# 1. PyTorch alone (bf16 autocast): these rows survive even if coft cannot be built.
log "PyTorch rows"
"$PY" -c "import torch, transformers, open_clip; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$OUT/summary.txt"
for step in ${STEPS//,/ }; do
  timeout 150 "$PY" tools/bench_steps_torch.py --step "$step" --shape ViT-B/16 --batch "$BATCH" \
    --steps "$ITERS" --warmup "$WARMUP" --device cuda > "$OUT/torch_$step.json" 2> "$OUT/torch_$step.err"
  rc=$?
  echo "$step $(tail -n1 "$OUT/torch_$step.json") (exit $rc)" | tee -a "$OUT/summary.txt"
done

# 2. Build coft with CUDA. Offline machines: cubecl's LLVM bundle (tracel-llvm-bundler) is
#    downloaded by a build script; a cache of it must already be there or the build fails
#    (reported in build.log, the PyTorch rows above stand).
log "building coft --features cuda"
if ! command -v cargo > /dev/null; then
  log "no cargo on this machine: coft rows skipped"; exit 0
fi
if ! timeout 420 cargo build --release --features cuda > "$OUT/build.log" 2>&1; then
  log "coft build failed (tail of build.log):"; tail -n 15 "$OUT/build.log" | tee -a "$OUT/summary.txt"; exit 0
fi

# 3. The interleaved table: each row is coft then PyTorch, one process per configuration.
log "coft bench perf --device cuda"
timeout 420 ./target/release/coft bench perf --device cuda --python "$PY" --shapes ViT-B/16 \
  --steps "$STEPS" --batch "$BATCH" --iters "$ITERS" --warmup "$WARMUP" --checkpointing off \
  2> "$OUT/perf.err" | tee "$OUT/table.md"
log "done (exit ${PIPESTATUS[0]}); table in $OUT/table.md"
