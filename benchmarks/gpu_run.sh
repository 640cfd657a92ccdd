#!/usr/bin/env bash
# Everything jaxcnn checks on a lent GPU machine, in one run (see
# docs/performance.md for the results). Needs the real CIFAR-10 JPEGs packed
# into .gpudata/cifar10.npz (python -m benchmarks.jpeg_pack pack ...).
#   OUT=/tmp/out bash benchmarks/gpu_run.sh
# Phases are capped so the whole run fits a 10-minute lease; each keeps
# going if an earlier one failed.
set -u
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
OUT=${OUT:-/tmp/jaxcnn_gpu_out}
PY=${PY:-python3}
TRAIN_SECONDS=${TRAIN_SECONDS:-230}
TRAIN_ARGS=${TRAIN_ARGS:---exp vgg_short --set model.dtype=bfloat16}
mkdir -p "$OUT"
log() { echo "== $(date +%H:%M:%S) $*"; }

log "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"

log "smoke: the test experiment, 20 steps"
timeout 120 $PY -m jaxcnn.train --exp test --workdir /tmp/gpu_smoke \
    --set train.num_steps=20 2>&1 | tail -3

log "unpack the real CIFAR-10 JPEGs"
$PY -m benchmarks.jpeg_pack unpack .gpudata/cifar10.npz /tmp/cifar10-jpeg

log "train VGG-16-BN bf16 on the real images (vgg_short, SIGINT after ${TRAIN_SECONDS}s)"
timeout -s INT "$TRAIN_SECONDS" $PY -m jaxcnn.train $TRAIN_ARGS \
    --data folder:/tmp/cifar10-jpeg --workdir /tmp/vgg_gpu \
    --set train.progress_bar=false \
    2>&1 | tee "$OUT/vgg_train.log" | grep -v "^WARNING"
cp /tmp/vgg_gpu/metrics.jsonl "$OUT/vgg_metrics.jsonl" 2>/dev/null

log "evaluate the VGG checkpoint from the workdir alone"
timeout 90 $PY -m jaxcnn.eval --workdir /tmp/vgg_gpu --no_plots \
    2>&1 | tee "$OUT/vgg_eval.txt" | head -12

log "throughput: jaxcnn's train step beside PyTorch, same GPU"
mkdir -p /tmp/tp
TP_CASES=${TP_CASES:-"vgg16,bfloat16,128 vgg16,float32,128 alexnet,bfloat16,128 alexnet,float32,128 vgg16,bfloat16,512"}
for case in $TP_CASES; do
  IFS=, read -r -a parts <<< "$case"
  set -- "${parts[@]}"
  log "throughput $case"
  timeout "${CASE_SECONDS:-55}" $PY -m benchmarks.throughput --model "$1" \
      --dtype "$2" --batch "$3" --steps "${TP_STEPS:-30}" --repeats 3 \
      ${TP_ARGS:-} --json > "/tmp/tp/$1_$2_$3.json" 2> "/tmp/tp/$1_$2_$3.err"
  tail -2 "/tmp/tp/$1_$2_$3.err"
done
$PY - "$OUT/throughput.json" <<'PYEOF'
import json, pathlib, sys
out = {}
for p in sorted(pathlib.Path("/tmp/tp").glob("*.json")):
  try:
    out[p.stem] = json.loads(p.read_text())
  except ValueError:
    out[p.stem] = {"error": (p.with_suffix(".err").read_text()[-600:])}
pathlib.Path(sys.argv[1]).write_text(json.dumps(out, indent=1))
for k, v in out.items():
  print(k, {x: v[x] for x in v if not isinstance(v[x], (dict, list))})
PYEOF
log "done"
