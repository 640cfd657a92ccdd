#!/usr/bin/env bash
# One run of the GPU throughput measurements: VGG-16 and AlexNet-like,
# float32 and bfloat16, batch 128 and (VGG-16) 512 and 1024 for MFU, jaxcnn
# beside PyTorch, one device (benchmarks/gpu_run.sh also trains; this one
# only times). Each case is its own process, so one failure does not stop the
# others; every case writes $OUT/<case>.json (stdout of the benchmark) and
# $OUT/<case>.log (its progress), and $OUT/summary.txt collects the report
# lines. Run from the repository root:
#
#   OUT=/tmp/gpu_out bash benchmarks/gpu_suite.sh    (PYTHON=... to pick one)
#
# About 3-4 minutes on an H100 (mostly compiles); BUDGET_S stops starting new
# cases once it has passed, CASE_TIMEOUT_S ends one that hangs. DRY=1 runs
# the same cases tiny (batch 8, one step) to check the script on any
# machine, a CPU one included.
set -u
export PYTHONUNBUFFERED=1
# JAX takes 75% of the GPU memory by default; leave PyTorch its share.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.45}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

OUT=${OUT:-/tmp/jaxcnn_gpu_suite}
PY=${PYTHON:-python3}
STEPS=${STEPS:-30}
REPEATS=${REPEATS:-3}
BUDGET_S=${BUDGET_S:-200}
CASE_TIMEOUT_S=${CASE_TIMEOUT_S:-150}
DRY=${DRY:-0}
mkdir -p "$OUT"

# model dtype batch steps-per-dispatch, most wanted first: the MFU target is
# VGG-16 bf16 (batch 512 and 1024, where launch overhead matters least), then
# the batch-128 side-by-side cases, then what fusing steps into one dispatch
# (train.steps_per_dispatch) gives where a step is short.
CASES=(
  "vgg16 bfloat16 512 1"
  "vgg16 bfloat16 1024 1"
  "vgg16 bfloat16 128 1"
  "vgg16 float32 128 1"
  "alexnet float32 128 1"
  "alexnet bfloat16 128 1"
  "alexnet bfloat16 128 10"
  "vgg16 bfloat16 128 10"
)
EXTRA=(--steps "$STEPS" --repeats "$REPEATS" --warmup 5 --eval_calls 3)
if [ "$DRY" = "1" ]; then
  EXTRA=(--steps 1 --repeats 1 --warmup 1 --eval_calls 1 --eval_batches 1)
fi

{
  echo "== jaxcnn GPU suite $(date -u +%Y-%m-%dT%H:%M:%SZ) =="
  git rev-parse --short HEAD 2>/dev/null | sed 's/^/commit /'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  "$PY" -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tail -1
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tail -1
} | tee "$OUT/summary.txt"

start=$(date +%s)
for case in "${CASES[@]}"; do
  read -r model dtype batch per_dispatch <<< "$case"
  if [ "$DRY" = "1" ]; then batch=8; fi
  name="${model}_${dtype}_b${batch}_k${per_dispatch}"
  elapsed=$(( $(date +%s) - start ))
  if [ "$elapsed" -ge "$BUDGET_S" ]; then
    echo "-- $name: skipped, ${elapsed}s spent of BUDGET_S=$BUDGET_S" | tee -a "$OUT/summary.txt"
    continue
  fi
  echo "-- $name (at ${elapsed}s)" | tee -a "$OUT/summary.txt"
  # stdout (the JSON) to its file; progress on stderr to the console and log.
  timeout "$CASE_TIMEOUT_S" "$PY" -m benchmarks.throughput --model "$model" \
      --dtype "$dtype" --batch "$batch" --steps_per_dispatch "$per_dispatch" \
      "${EXTRA[@]}" --json 2>&1 > "$OUT/$name.json" | tee "$OUT/$name.log"
  status=${PIPESTATUS[0]}
  if [ "$status" -ne 0 ]; then
    echo "   failed (exit $status); last lines of $name.log:" | tee -a "$OUT/summary.txt"
    tail -n 5 "$OUT/$name.log" | tee -a "$OUT/summary.txt"
    continue
  fi
  # The human-readable report of the case's JSON.
  "$PY" -c 'import json, sys; from benchmarks.throughput import report; print(report(json.load(open(sys.argv[1]))))' \
      "$OUT/$name.json" 2>&1 | tee -a "$OUT/summary.txt"
done
echo "== done in $(( $(date +%s) - start ))s; files in $OUT" | tee -a "$OUT/summary.txt"
