#!/usr/bin/env bash
# The prepared GPU check: build here (no GPU needed, offline is fine), run there (a CUDA machine
# with no Rust toolchain and no network, e.g. one H200 with CUDA 13 and a Python with torch).
#
#   tools/gpu_bench.sh prepare    # here: the CUDA build of coft and of tests/gpu_cuda.rs,
#                                 # stripped and xz-packed into target/gpu-check (~30 MiB)
#   tools/gpu_bench.sh run        # there, from the repository root, with target/gpu-check
#                                 # carried along: results under $OUT (default ./gpu_out)
#
# `run` does three parts, each with its own time limit, and goes on when one fails, so $OUT
# always holds what could be measured (summary.txt first):
#   1. parity: tests/gpu_cuda.rs on CUDA device 0 (the tiny CLIP against the committed
#      reference fixtures and against the CPU backend, Phase I / II steps, bf16, train + eval);
#   2. ViT-B/16 (random weights) image embedding, Phase I step and Phase II step at batch 32
#      and 128: coft f32, coft bf16 and PyTorch bf16 autocast (tools/bench_steps_torch.py) on
#      the same GPU, one process per row: img/s, peak GPU memory (nvidia-smi, sampled every
#      100 ms), ratio to PyTorch and model TFLOP/s (the analytic FLOPs of `step_flops` in
#      src/cli/bench_perf.rs) -> table.md;
#   3. `coft train --method coft` end to end on ViT-B/16 random weights and $E2E_IMAGES
#      synthetic 224 px images -> e2e/timings.json.
# Sized for a 15-minute device budget including start-up with room for one rerun (about 9
# minutes at the defaults; PARTS=1,2,3, STEPS, BATCHES, DTYPES, ITERS, WARMUP, E2E_IMAGES and
# the *_BUDGET seconds change it).
#
# CUDA libraries: the driver (libcuda) must be on the loader path; NVRTC is loaded at run time
# and looked up on the loader path, else in the Python's `nvidia-*` pip packages (what a CUDA
# torch installs); the CUDA headers NVRTC needs come from $CUDA_PATH, /usr/local/cuda, or those
# packages too.
set -uo pipefail
cd "$(dirname "$0")/.."
PACK=target/gpu-check

prepare() {
  set -e
  # CUDA 13.0 bindings (the lent machine's driver 580 / nvcc 13.0); without it, a machine
  # without nvcc gets cudarc's newest (13.4). Override for another driver, e.g. 12080.
  export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
  cargo build --release --locked --features cuda
  local json test
  json=$(cargo test --release --locked --features cuda --test gpu_cuda --no-run --message-format=json)
  test=$(printf '%s\n' "$json" | sed -n 's/.*"executable":"\([^"]*gpu_cuda-[^"]*\)".*/\1/p' | tail -n1)
  [ -x "$test" ] || { echo "gpu_cuda test binary not found" >&2; exit 1; }
  rm -rf "$PACK" && mkdir -p "$PACK"
  strip -o "$PACK/coft" target/release/coft
  strip -o "$PACK/gpu_cuda" "$test"
  xz -T0 -6 "$PACK/coft" "$PACK/gpu_cuda"
  echo "CUDARC_CUDA_VERSION=$CUDARC_CUDA_VERSION $(git rev-parse --short HEAD 2>/dev/null)" > "$PACK/BUILD"
  du -sh "$PACK"/*
}

run() {
  OUT=${OUT:-./gpu_out}
  PY=${PYTHON:-python3}
  PARTS=${PARTS:-1,2,3}
  STEPS=${STEPS:-embed,phase1,phase2}
  BATCHES=${BATCHES:-32,128}
  DTYPES=${DTYPES:-f32,bf16}
  ITERS=${ITERS:-5}
  WARMUP=${WARMUP:-2}
  CLASSES=${CLASSES:-100}
  E2E_IMAGES=${E2E_IMAGES:-2000}
  PARITY_BUDGET=${PARITY_BUDGET:-150}
  BENCH_BUDGET=${BENCH_BUDGET:-330}
  E2E_BUDGET=${E2E_BUDGET:-150}
  mkdir -p "$OUT"
  SUMMARY="$OUT/summary.txt"
  log() { echo "== $*" | tee -a "$SUMMARY"; }
  log "$(date -u +%FT%TZ) gpu_bench run: parts $PARTS"
  cat "$PACK/BUILD" 2>/dev/null | tee -a "$SUMMARY"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$SUMMARY"

  # Unpack (python's lzma when there is no xz).
  local bin=$PACK/bin
  mkdir -p "$bin"
  for f in coft gpu_cuda; do
    if [ ! -x "$bin/$f" ]; then
      if command -v xz > /dev/null; then xz -dc "$PACK/$f.xz" > "$bin/$f"
      else "$PY" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$PACK/$f.xz" "$bin/$f"
      fi
      chmod +x "$bin/$f"
    fi
  done
  COFT=$PWD/$bin/coft

  # CUDA libraries and headers from the pip packages when the system has none.
  local nv
  nv=$("$PY" - << 'EOF' 2> /dev/null
import os
try:
    import nvidia
except ImportError:
    raise SystemExit
libs, incs = set(), set()
for root in list(nvidia.__path__):
    for d, _, files in os.walk(root):
        if any(f.startswith("lib") and ".so" in f for f in files):
            libs.add(d)
        if "cuda_fp16.h" in files:
            incs.add(os.path.dirname(d))
print(":".join(sorted(libs)))
print(":".join(sorted(incs)))
EOF
)
  local nvlibs nvinc
  nvlibs=$(printf '%s\n' "$nv" | sed -n 1p)
  nvinc=$(printf '%s\n' "$nv" | sed -n 2p)
  if ! ldconfig -p 2> /dev/null | grep -q 'libnvrtc\.so'; then
    [ -n "$nvlibs" ] && export LD_LIBRARY_PATH="$nvlibs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
  if [ -z "${CUDA_PATH:-}" ] && [ ! -f /usr/local/cuda/include/cuda_fp16.h ] && [ -n "$nvinc" ]; then
    export CUDA_PATH=${nvinc%%:*}
  fi
  { echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"; echo "CUDA_PATH=${CUDA_PATH:-(unset: /usr/local/cuda)}"; } >> "$SUMMARY"

  case ",$PARTS," in *,1,*)
    log "1. parity (tests/gpu_cuda.rs, ${PARITY_BUDGET}s)"
    local t0=$SECONDS
    COFT_BIN=$COFT timeout "$PARITY_BUDGET" "$bin/gpu_cuda" --test-threads=1 --nocapture \
      > "$OUT/parity.log" 2>&1
    local rc=$?
    grep -E '^test |max \|diff\||test result' "$OUT/parity.log" | tee -a "$SUMMARY"
    log "parity exit $rc in $((SECONDS - t0))s (full log parity.log)"
  esac

  case ",$PARTS," in *,2,*)
    log "2. ViT-B/16 steps: $STEPS x batch $BATCHES, coft $DTYPES + PyTorch bf16 (${BENCH_BUDGET}s)"
    local deadline=$((SECONDS + BENCH_BUDGET)) rows="$OUT/rows.jsonl"
    : > "$rows"
    local torch_pp="tools"
    "$PY" -c 'import open_clip' 2> /dev/null || torch_pp="tools/gpu:tools"
    for b in ${BATCHES//,/ }; do
      for step in ${STEPS//,/ }; do
        for who in torch ${DTYPES//,/ }; do
          local left=$((deadline - SECONDS))
          if [ "$left" -lt 20 ]; then echo "skipped $step b$b $who: budget spent" | tee -a "$SUMMARY"; continue; fi
          local lim=$((left < 120 ? left : 120)) name="${step}_b${b}_${who}"
          local base
          base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 2> /dev/null | head -n1)
          nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 100 > "$OUT/$name.mem" 2> /dev/null &
          local smi=$!
          if [ "$who" = torch ]; then
            PYTHONPATH=$torch_pp timeout "$lim" "$PY" tools/bench_steps_torch.py --step "$step" \
              --shape ViT-B/16 --batch "$b" --classes "$CLASSES" --steps "$ITERS" --warmup "$WARMUP" \
              --device cuda > "$OUT/$name.json" 2> "$OUT/$name.err"
          else
            timeout "$lim" "$COFT" bench perf --worker "$step" --shapes ViT-B/16 --batch "$b" \
              --classes "$CLASSES" --iters "$ITERS" --warmup "$WARMUP" --checkpointing off \
              --device cuda --dtype "$who" > "$OUT/$name.json" 2> "$OUT/$name.err"
          fi
          local rc=$?
          kill "$smi" 2> /dev/null; wait "$smi" 2> /dev/null
          "$PY" tools/gpu/row.py "$step" "$b" "$who" "$rc" "$OUT/$name.json" "$OUT/$name.mem" "${base:-0}" \
            "$OUT/$name.err" >> "$rows"
          echo "$name exit $rc: $(tail -n1 "$OUT/$name.json" 2> /dev/null)" | tee -a "$SUMMARY"
        done
      done
    done
    "$PY" tools/gpu/row.py --table "$rows" "$CLASSES" > "$OUT/table.md" 2>> "$SUMMARY"
    cat "$OUT/table.md" | tee -a "$SUMMARY"
  esac

  case ",$PARTS," in *,3,*)
    log "3. coft train --method coft, ViT-B/16 random weights, $E2E_IMAGES images at 224 px (${E2E_BUDGET}s)"
    local t0=$SECONDS data=target/gpu-check/e2e_data run="$OUT/e2e"
    "$PY" tools/gpu/images.py "$data" "$E2E_IMAGES" 224 2>&1 | tee -a "$SUMMARY"
    rm -rf "$run"
    timeout "$E2E_BUDGET" "$COFT" train --model random:ViT-B/16 --data "$data" --out "$run" \
      --device cuda --method coft --batch-size 128 --threads "$(nproc)" \
      --set phase1.epochs=1 --set phase2.epochs=1 --set phase1.batch_size=64 \
      --set phase2.batch_size=64 > "$OUT/e2e.log" 2>&1
    local rc=$?
    tail -n 5 "$OUT/e2e.log" | tee -a "$SUMMARY"
    [ -f "$run/timings.json" ] && cp "$run/timings.json" "$OUT/timings.json" && cat "$OUT/timings.json" | tee -a "$SUMMARY"
    # The checkpoints are large and not needed here.
    find "$run" -name '*.safetensors' -delete 2> /dev/null
    log "e2e exit $rc in $((SECONDS - t0))s"
  esac
  log "$(date -u +%FT%TZ) done; results in $OUT"
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  *) echo "usage: tools/gpu_bench.sh prepare|run (see the comment at the top)" >&2; exit 2 ;;
esac
