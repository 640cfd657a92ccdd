#!/usr/bin/env bash
# The GPU evidence run (issue 23): jaxcnn's recipes trained on the real
# CIFAR-10 images on a lent GPU, beside the PyTorch reference scripts as
# published, each case under its own time budget, most valuable first:
#
#   vgg              --exp vgg, bf16, 300 epochs: final raw/EMA accuracy, the
#                    accuracy-vs-epoch curve, training and compile seconds
#   speedrun         --exp speedrun --seeds 5: mean ± std accuracy with TTA,
#                    training seconds per seed (compile apart)
#   airbench         upstream airbench94_muon.py, as written (its own timer;
#                    200 runs if let run: stopped at its budget, the runs it
#                    finished are counted, at least 3 wanted)
#   hiverge          upstream cifar10_speedrun.py, likewise
#   alexnet          --exp alexnet, 100k steps: final EMA accuracy and time
#   activations      python -m jaxcnn.study activations --scale full --seeds 3
#   receptive_field  python -m jaxcnn.study receptive_field --scale full --seeds 2
#   throughput       VGG-16 bf16 at batch 512 and 1024, 1 and 10 steps per
#                    dispatch, MFU, beside PyTorch (benchmarks.throughput)
#
# Needs .gpudata/ from benchmarks/gpu_prepare.sh (carried: the device call
# names carry: [".gpudata"]). Run from the repository root:
#
#   OUT=/tmp/out CASES="vgg speedrun" TOTAL_S=560 bash benchmarks/gpu_evidence.sh
#   DRY=1 OUT=/tmp/gpu_dry nice bash benchmarks/gpu_evidence.sh   # any CPU machine
#
# DRY=1 runs every case for a few steps on the CPU (tiny data: a subset of
# .gpudata/cifar10.npz, or synthetic JPEGs where it is absent), with the
# same commands and flags plus a few size overrides, then the evaluations
# and the summary, so that the GPU run cannot fail on a typo. The PyTorch
# references need CUDA: in DRY mode their train.pt/test.pt are written and
# checked when TORCH_PY has torch, their files are compiled, and their
# printed table is parsed from their own print code; they are not run.
#
# Time: each case runs under `timeout` for its budget (<CASE>_S, seconds) or
# what is left of TOTAL_S (this command's whole wall time, default 560: a
# 600 s device command) less EVAL_RESERVE_S, whichever is less; a case that
# would get under MIN_CASE_S is skipped. Training cases are stopped with
# SIGINT (jaxcnn checkpoints and stops; running the same command again
# resumes it). A failed case does not stop the others. The JAX cases share
# a persistent XLA cache, the data and the workdirs under WORK (/tmp), which
# a second command on the same (still warm) machine reuses.
#
# Output: $OUT holds summary.txt (versions, each case's status and key
# lines, the evaluations' heads) and evidence_<tag>.tar.gz (each case's log
# <case>.log, eval_<case>*.txt, the vgg curve, the reference tables as JSON,
# the throughput JSON, and the workdirs without checkpoints: config.json,
# metrics.jsonl, seeds.json, study reports), refreshed after every case: the
# device tool returns at most 8 files from $OUT, so they are packed.
set -u
cd "$(dirname "$0")/.."
REPO=$PWD

DRY=${DRY:-0}
OUT=${OUT:-/tmp/jaxcnn_gpu_evidence_out}
if [ "$DRY" = "1" ]; then WORK=${WORK:-/tmp/jaxcnn_evidence_dry}; else WORK=${WORK:-/tmp/jaxcnn_evidence}; fi
# The GPU image's python3 holds JAX and PyTorch; a dry run here uses the
# project's .venv where there is one.
if [ "$DRY" = "1" ] && [ -x .venv/bin/python ]; then DEFAULT_PY=.venv/bin/python; else DEFAULT_PY=python3; fi
PY=${PY:-${PYTHON:-$DEFAULT_PY}}
TORCH_PY=${TORCH_PY:-$PY}
GPUDATA=${GPUDATA:-.gpudata}
CASES=${CASES:-"vgg speedrun airbench hiverge alexnet activations receptive_field throughput"}
TOTAL_S=${TOTAL_S:-$([ "$DRY" = "1" ] && echo 3600 || echo 560)}
EVAL_RESERVE_S=${EVAL_RESERVE_S:-$([ "$DRY" = "1" ] && echo 0 || echo 50)}
MIN_CASE_S=${MIN_CASE_S:-$([ "$DRY" = "1" ] && echo 0 || echo 40)}
EVAL_S=${EVAL_S:-90}        # one evaluation's cap
EVAL_JOBS=${EVAL_JOBS:-$([ "$DRY" = "1" ] && echo 1 || echo 4)}
# Budgets, seconds (the expected time in brackets, from the H200 run of
# docs/gpu/: VGG-16 bf16 at 62.6k img/s in the loop, a 23 s compile).
VGG_S=${VGG_S:-330}                 # [~290: 240 training, 23 compile, 60 evals]
SPEEDRUN_S=${SPEEDRUN_S:-170}       # [not run on a GPU yet: 5 seeds]
AIRBENCH_S=${AIRBENCH_S:-120}       # [max-autotune compile, then ~3 s a run]
HIVERGE_S=${HIVERGE_S:-140}         # [compile, then ~6 s a run: 3 s sleep]
ALEXNET_S=${ALEXNET_S:-150}         # [~100: 12.8M images at ~165k img/s]
ACTIVATIONS_S=${ACTIVATIONS_S:-240} # [12 convnet4 runs of up to 20-40 epochs]
RECEPTIVE_FIELD_S=${RECEPTIVE_FIELD_S:-180}  # [4 VGG-13/4 runs of 15 epochs]
THROUGHPUT_S=${THROUGHPUT_S:-150}   # [4 cases of ~35 s: compile, then timing]
SPEEDRUN_SEEDS=${SPEEDRUN_SEEDS:-$([ "$DRY" = "1" ] && echo 2 || echo 5)}
ACT_SEEDS=${ACT_SEEDS:-$([ "$DRY" = "1" ] && echo 1 || echo 3)}
RF_SEEDS=${RF_SEEDS:-$([ "$DRY" = "1" ] && echo 1 || echo 2)}
# The recipes' own flags (env-overridable); DRY adds its size overrides after.
VGG_ARGS=${VGG_ARGS:-"--set model.dtype=bfloat16 --set train.steps_per_dispatch=10 --set train.log_every_steps=390 --set train.checkpoint_every_steps=19500 --set train.progress_bar=false"}
SPEEDRUN_ARGS=${SPEEDRUN_ARGS:-"--set model.dtype=bfloat16 --set train.steps_per_dispatch=5 --set train.progress_bar=false"}
ALEXNET_ARGS=${ALEXNET_ARGS:-"--set train.steps_per_dispatch=10 --set train.checkpoint_every_steps=10000 --set train.progress_bar=false"}
# model dtype batch steps_per_dispatch
TP_CASES=${TP_CASES:-"vgg16,bfloat16,512,1 vgg16,bfloat16,1024,1 vgg16,bfloat16,512,10 vgg16,bfloat16,1024,10"}
TP_CASE_S=${TP_CASE_S:-60}

DRY_TRAIN=()
DRY_VGG=()
DRY_MEMBERS_ACT=()
DRY_MEMBERS_RF=()
DRY_TP=()
if [ "$DRY" = "1" ]; then
  export JAX_PLATFORMS=cpu
  # 31 steps an epoch on the 500 dry images (steps_per_dispatch must fit);
  # 11 steps: one fused call of the recipes' steps_per_dispatch (10, 5), then
  # the single steps that end the run exactly, so both programs compile.
  DRY_TRAIN=(--set train.num_steps=11 --set train.batch_size=16)
  DRY_VGG=(--set model.width=0.25)
  DRY_MEMBERS_ACT=(--members "${DRY_ACT_MEMBERS:-relu@0.01}")
  DRY_MEMBERS_RF=(--members "${DRY_RF_MEMBERS:-two_3x3}")
  DRY_TP=(--steps 1 --repeats 1 --warmup 1 --eval_calls 1 --eval_batches 1 --set model.width=0.25)
fi

export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3} MPLBACKEND=Agg
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$WORK/xla_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0}
export JAXCNN_CACHE_DIR=${JAXCNN_CACHE_DIR:-$WORK/data_cache}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$WORK/inductor_cache}
export PYTHONPYCACHEPREFIX=${PYTHONPYCACHEPREFIX:-$WORK/pycache}  # none in .gpudata/

TAG=$(date -u +%m%d-%H%M%S)
LOGS=$WORK/logs/$TAG
RUNS=$WORK/runs
DATA=$WORK/cifar10-jpeg
REF=$WORK/ref
mkdir -p "$OUT" "$LOGS" "$RUNS" "$JAX_COMPILATION_CACHE_DIR" "$JAXCNN_CACHE_DIR"
if [ "$DRY" = "1" ]; then rm -rf "$RUNS" "$REF"; mkdir -p "$RUNS"; fi
SUMMARY=$LOGS/summary.txt
WORKDIRS=$LOGS/workdirs.txt   # "case workdir" per line, for the evaluations
: > "$WORKDIRS"
START=$(date +%s)

say() { echo "== $(date -u +%H:%M:%S) [+$(( $(date +%s) - START ))s] $*"; }
sum() { echo "$*" >> "$SUMMARY"; }
FAILS=0
fail() { sum "ERROR: $*"; FAILS=$(( FAILS + 1 )); }
left() { echo $(( TOTAL_S - ($(date +%s) - START) )); }
pack() {  # $OUT/summary.txt and the tarball of this command's evidence
  cp "$SUMMARY" "$OUT/summary.txt"
  tar czf "$OUT/evidence_$TAG.tar.gz.tmp" -C "$WORK" \
      --exclude=checkpoints --exclude=tensorboard --exclude='*.npz' \
      "logs/$TAG" runs 2>/dev/null
  mv "$OUT/evidence_$TAG.tar.gz.tmp" "$OUT/evidence_$TAG.tar.gz"
}
has_case() { case " $CASES " in *" $1 "*) return 0;; esac; return 1; }

{
  echo "# jaxcnn GPU evidence, $(date -u +%Y-%m-%dT%H:%M:%SZ), DRY=$DRY, tag $TAG"
  echo "# CASES=\"$CASES\" TOTAL_S=$TOTAL_S (budgets: vgg $VGG_S, speedrun $SPEEDRUN_S," \
       "airbench $AIRBENCH_S, hiverge $HIVERGE_S, alexnet $ALEXNET_S, activations" \
       "$ACTIVATIONS_S, receptive_field $RECEPTIVE_FIELD_S, throughput $THROUGHPUT_S," \
       "evaluations $EVAL_RESERVE_S reserved, $EVAL_S each)"
  echo "# commit: $(git rev-parse HEAD 2>/dev/null || echo '(no git here)');" \
       "$(grep '^# commit' "$GPUDATA/MANIFEST.txt" 2>/dev/null | sed 's/^# //' || true)"
} > "$SUMMARY"

# --- versions ------------------------------------------------------------------
say "versions"
{
  echo "## machine"
  uname -srm; echo "cpus $(nproc), $(free -g 2>/dev/null | awk '/Mem:/ {print $2 " GiB memory"}')"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit \
        --format=csv,noheader 2>&1 | head -2
    nvidia-smi 2>/dev/null | grep -m1 "CUDA Version"
  else
    echo "nvidia-smi: not on this machine"
  fi
} >> "$SUMMARY"

# --- Python packages: the carried wheels where an import fails ------------------
say "python packages"
JAX_IMPORTS="import jax, jaxlib, flax, optax, orbax.checkpoint, numpy, PIL, matplotlib, tqdm"
TB_IMPORTS="from tensorboardX.event_file_writer import EventsWriter; from tensorboardX.proto import event_pb2; from tensorboardX.summary import scalar"
wheels=("$GPUDATA"/wheels/*.whl)
install_wheels() {  # into $1 with pip, no network
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target "$1" "${wheels[@]}" 2>&1 | tail -3
}
if [ -f "${wheels[0]}" ]; then
  if ! "$PY" -c "$JAX_IMPORTS" 2>/dev/null || ! "$PY" -c "$TB_IMPORTS" 2>/dev/null; then
    install_wheels "$WORK/site"
    if PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c "$TB_IMPORTS" 2>/dev/null; then
      export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
      sum "wheels: installed $(basename -a "${wheels[@]}" | tr '\n' ' ')into $WORK/site"
    else
      sum "wheels: installed, but tensorboardX still fails to import: left off PYTHONPATH"
    fi
  else
    sum "wheels: not needed (every import works)"
    if [ "$DRY" = "1" ]; then  # the install itself, checked into a scratch folder
      rm -rf "$WORK/site_check"; install_wheels "$WORK/site_check"
      PYTHONPATH="$WORK/site_check" "$PY" -c "import tensorboardX, sys; print('  dry: the wheels install and import:', tensorboardX.__file__)" >> "$SUMMARY" 2>&1
    fi
  fi
else
  sum "wheels: none in $GPUDATA/wheels (run benchmarks/gpu_prepare.sh)"
fi
JAX_OK=1
PYV=$LOGS/python_versions.txt
{
  echo "## python"
  "$PY" -c "import sys; print('python', sys.version.split()[0], sys.executable)"
  "$PY" -c "$JAX_IMPORTS
print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax-checkpoint', getattr(orbax.checkpoint, '__version__', '?'), 'numpy', numpy.__version__)
print('jax backend', jax.default_backend(), jax.devices())" 2>&1 | grep -v "^WARNING" | tail -3
  "$PY" -c "import tensorboardX; print('tensorboardX', tensorboardX.__version__)" 2>&1 | tail -1
  "$TORCH_PY" -c "import torch, torchvision; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'torchvision', torchvision.__version__, 'cuda available', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" 2>&1 | tail -1
  "$TORCH_PY" -c "import triton; print('triton', triton.__version__)" 2>&1 | tail -1
} > "$PYV" 2>&1
cat "$PYV" >> "$SUMMARY"
"$PY" -m pip list > "$LOGS/pip_list.txt" 2>/dev/null
grep -iE '^(jax|jaxlib|jax-cuda[0-9]*-(pjrt|plugin)|flax|optax|orbax-checkpoint|numpy|torch|torchvision|triton|tensorboardx|pillow|protobuf|nvidia-cudnn-cu[0-9]*) ' \
    "$LOGS/pip_list.txt" | awk '{printf "%s %s; ", $1, $2} END {print ""}' | sed 's/^/pip: /' >> "$SUMMARY"
if ! grep -q "^jax backend" "$PYV"; then
  JAX_OK=0; fail "the JAX stack does not import: the JAX cases are skipped"
elif [ "$DRY" != "1" ] && ! grep -q "^jax backend gpu" "$PYV"; then
  JAX_OK=0; fail "JAX sees no GPU: the JAX cases are skipped (DRY=1 runs them on the CPU)"
fi
TORCH_OK=1
"$TORCH_PY" -c "import torch, torchvision" >/dev/null 2>&1 || TORCH_OK=0
pack

# --- data ------------------------------------------------------------------------
say "data"
ARCHIVE=$GPUDATA/cifar10.npz
n_files() { find "$1" -type f 2>/dev/null | wc -l; }
if [ "$DRY" = "1" ]; then
  rm -rf "$DATA" "$WORK/cifar10-jpeg-full"
  if [ -f "$ARCHIVE" ]; then
    # The GPU run's unpack of the whole archive, checked; training uses a subset.
    "$PY" -m benchmarks.jpeg_pack unpack "$ARCHIVE" "$WORK/cifar10-jpeg-full" >> "$SUMMARY" 2>&1
    sum "  dry: $(n_files "$WORK/cifar10-jpeg-full") files unpacked (55000 expected)"
    rm -rf "$WORK/cifar10-jpeg-full"
  else
    sum "  dry: $ARCHIVE absent (run benchmarks/gpu_prepare.sh): synthetic images"
  fi
  "$PY" -m benchmarks.gpu_evidence dry-data "${ARCHIVE}" "$DATA" >> "$SUMMARY" 2>&1
elif [ "$(n_files "$DATA")" != "55000" ]; then
  rm -rf "$DATA" "$DATA.tmp"
  if "$PY" -m benchmarks.jpeg_pack unpack "$ARCHIVE" "$DATA.tmp" >> "$SUMMARY" 2>&1; then
    mv "$DATA.tmp" "$DATA"
  else
    fail "cannot unpack $ARCHIVE (carry .gpudata: benchmarks/gpu_prepare.sh)"
  fi
else
  sum "data: $DATA already unpacked (55000 files)"   # an earlier command, same machine
fi
sum "data: $(n_files "$DATA/train") train, $(n_files "$DATA/test") test images in $DATA"

# The references' cifar10/{train,test}.pt (ensure_pt), written in the
# background while the JAX cases run; their scripts copied beside them.
TOOLS=$GPUDATA/tools
if [ ! -d "$TOOLS/upstream" ] && [ "$DRY" = "1" ] && [ -d ../shared/tools/upstream ]; then
  TOOLS=../shared/tools; sum "  dry: $GPUDATA/tools absent: checking ../shared/tools"
fi
PT_PID=
# Written whatever CASES says (in the background, off the GPU), so that a
# later command on the same machine finds them.
if [ "${PREP_REFS:-1}" = "1" ] || has_case airbench || has_case hiverge; then
  mkdir -p "$REF"
  if [ -d "$TOOLS/upstream" ]; then
    cp "$TOOLS"/upstream/*.py "$REF"/
    if "$PY" -m py_compile "$TOOLS/airbench_cpu.py" "$REF"/*.py >> "$SUMMARY" 2>&1; then
      sum "refs: the upstream scripts compile"
    else
      fail "the upstream scripts do not compile"
    fi
    for f in "$REF"/airbench94_muon.py "$REF"/cifar10_speedrun.py; do
      "$PY" -m benchmarks.gpu_evidence refs-selftest "$f" >> "$SUMMARY" 2>&1 \
          || fail "$f: its table does not parse"
    done
    if "$TORCH_PY" -c "import torch" 2>/dev/null; then
      nice "$TORCH_PY" -m benchmarks.gpu_evidence pt "$TOOLS" "$DATA" "$REF/cifar10" \
          > "$LOGS/ref_data.log" 2>&1 &
      PT_PID=$!
    else
      sum "refs: no torch in $TORCH_PY: train.pt/test.pt not written" \
          "$([ "$DRY" = "1" ] && echo '(dry: expected on a machine without PyTorch)')"
    fi
  elif [ "$DRY" = "1" ] && [ ! -d "$GPUDATA" ]; then
    sum "WARNING: dry: no $GPUDATA and no ../shared/tools: the references are not checked"
  else
    fail "$TOOLS/upstream missing (run benchmarks/gpu_prepare.sh): no references"
  fi
fi
pack

# --- the cases ---------------------------------------------------------------------
CASE_LINES=()
run_case() {  # run_case NAME BUDGET_S CMD...: logs to $LOGS/NAME.log
  local name=$1 budget=$2; shift 2
  # The evaluations' reserve, once there is or will be a workdir to evaluate.
  local reserve=$EVAL_RESERVE_S
  if [ ! -s "$WORKDIRS" ] && [ "${JAX_CASE:-0}" != "1" ]; then reserve=0; fi
  local avail=$(( $(left) - reserve ))
  local t=$(( budget < avail ? budget : avail ))
  if [ "$t" -lt "$MIN_CASE_S" ] || [ "$t" -le 0 ]; then
    say "$name: skipped ($t s left of TOTAL_S=$TOTAL_S)"
    sum "== $name: SKIPPED, $t s left for it (budget $budget s)"
    CASE_LINES+=("$name skipped"); return 1
  fi
  say "$name (budget ${t}s): $*"
  echo "\$ $*" > "$LOGS/$name.log"
  local t0=$(date +%s)
  timeout -k 20 -s INT "$t" "$@" >> "$LOGS/$name.log" 2>&1
  local rc=$? secs=$(( $(date +%s) - t0 ))
  local what="exit $rc"
  [ "$rc" = 124 ] && what="stopped at its budget (partial)"
  [ "$rc" = 137 ] && what="killed after its budget"
  sum "== $name: $what, ${secs}s of ${t}s"
  if [ "$rc" != 0 ] && { [ "$DRY" = "1" ] || [ "$rc" != 124 ]; }; then
    fail "$name: $what (last lines of $name.log below)"
    tail -n 8 "$LOGS/$name.log" | cut -c1-300 | sed 's/^/   ! /' >> "$SUMMARY"
  fi
  sum "   \$ $*"
  CASE_LINES+=("$name ${what} ${secs}s")
  tail -n 3 "$LOGS/$name.log" | cut -c1-300 | sed 's/^/   | /'
  return 0
}
report() { "$PY" -m benchmarks.gpu_evidence "$@" 2>&1 | sed 's/^/   /' >> "$SUMMARY"; }
jax_case() {
  if [ "$JAX_OK" != "1" ]; then sum "== $1: SKIPPED (no JAX on a GPU)"; CASE_LINES+=("$1 skipped"); return 1; fi
}
wait_pt() {
  if [ -n "$PT_PID" ]; then wait "$PT_PID"; local rc=$?; PT_PID=
    sed 's/^/   /' "$LOGS/ref_data.log" >> "$SUMMARY"; sum "refs: train.pt/test.pt, exit $rc"
    [ "$rc" = 0 ] || fail "train.pt/test.pt not written (ref_data.log)"; fi
}
ref_case() {  # ref_case NAME BUDGET SCRIPT
  wait_pt
  if [ ! -f "$REF/$3" ]; then sum "== $1: SKIPPED ($REF/$3 missing)"; CASE_LINES+=("$1 skipped"); return; fi
  if [ "$DRY" = "1" ]; then
    sum "== $1: dry: not run (needs CUDA); $3 compiled and its table parsed above"
    CASE_LINES+=("$1 dry-checked"); return
  fi
  if [ "$TORCH_OK" != "1" ]; then
    sum "== $1: SKIPPED (torch and torchvision do not import in $TORCH_PY)"; CASE_LINES+=("$1 skipped"); return
  fi
  if [ ! -f "$REF/cifar10/train.pt" ] || [ ! -f "$REF/cifar10/test.pt" ]; then
    sum "== $1: SKIPPED (no $REF/cifar10/*.pt)"; CASE_LINES+=("$1 skipped"); return
  fi
  # As written, from the folder holding cifar10/ (it reads cifar10/*.pt).
  run_case "$1" "$2" bash -c "cd '$REF' && exec '$TORCH_PY' '$3'" || return
  report refs "$LOGS/$1.log" --json "$LOGS/$1_runs.json"
}
train_case() {  # train_case NAME BUDGET WORKDIR ARGS...
  local name=$1 budget=$2 workdir=$3; shift 3
  jax_case "$name" || return
  JAX_CASE=1 run_case "$name" "$budget" "$PY" -m jaxcnn.train --data "folder:$DATA" \
      --workdir "$workdir" "$@" || return
  [ -d "$workdir" ] && echo "$name $workdir" >> "$WORKDIRS"
}
study_case() {  # study_case NAME BUDGET STUDY_ARGS...
  local name=$1 budget=$2; shift 2
  jax_case "$name" || return
  JAX_CASE=1 run_case "$name" "$budget" "$PY" -m jaxcnn.study "$name" --scale full \
      --data "folder:$DATA" --root "$RUNS" "$@" || return
  local d
  for d in "$RUNS/study_$name"/*/; do
    [ -f "$d/config.json" ] && echo "$name ${d%/}" >> "$WORKDIRS"
  done
  ls "$RUNS/study_$name"/report.md >/dev/null 2>&1 && \
      sum "   report: runs/study_$name/report.md" && \
      sed -n '/^## Results/,/^## Plots/p' "$RUNS/study_$name/report.md" | grep '^|' \
          | head -n 40 | sed 's/^/   > /' >> "$SUMMARY"
}
throughput_case() {
  jax_case throughput || return
  local tp_py
  tp_py=$(mktemp)
  # One process per case, JSON on stdout, progress on stderr (gpu_suite.sh's way).
  cat > "$tp_py" <<EOF
set -u
cd '$REPO'
export XLA_PYTHON_CLIENT_MEM_FRACTION=\${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.45}
for c in $TP_CASES; do
  IFS=, read -r model dtype batch k <<< "\$c"
  [ "$DRY" = "1" ] && batch=8
  name=\${model}_\${dtype}_b\${batch}_k\${k}
  echo "-- \$name"
  timeout -k 10 $TP_CASE_S '$PY' -m benchmarks.throughput --model "\$model" --dtype "\$dtype" \\
      --batch "\$batch" --steps_per_dispatch "\$k" --steps 30 --repeats 3 --warmup 5 \\
      --eval_calls 3 ${DRY_TP[*]:-} --json > '$LOGS'/tp_\$name.json 2> '$LOGS'/tp_\$name.err
  echo "   exit \$?"; tail -n 4 '$LOGS'/tp_\$name.err
done
EOF
  run_case throughput "$THROUGHPUT_S" bash "$tp_py" || { rm -f "$tp_py"; return; }
  local f
  for f in "$LOGS"/tp_*.json; do
    [ -s "$f" ] || { sum "   $(basename "$f"): empty (see its .err)"; continue; }
    "$PY" -c 'import json, sys; from benchmarks.throughput import report; print(report(json.load(open(sys.argv[1]))))' \
        "$f" 2>&1 | sed 's/^/   /' >> "$SUMMARY"
  done
  rm -f "$tp_py"
}

say "cases: $CASES"
for case in $CASES; do
  case $case in
    vgg)
      train_case vgg "$VGG_S" "$RUNS/vgg" --exp vgg $VGG_ARGS "${DRY_TRAIN[@]}" "${DRY_VGG[@]}" \
        && report train "$RUNS/vgg" --curve "$LOGS/vgg_curve" ;;
    speedrun)
      train_case speedrun "$SPEEDRUN_S" "$RUNS/speedrun" --exp speedrun \
          --seeds "$SPEEDRUN_SEEDS" $SPEEDRUN_ARGS "${DRY_TRAIN[@]}" \
        && { report seeds "$RUNS/speedrun"
             sed -n '/^seed  /,$p' "$LOGS/speedrun.log" | sed 's/^/   /' >> "$SUMMARY"
             # Each seed's workdir is evaluated, not the folder holding them.
             sed -i "\#^speedrun $RUNS/speedrun\$#d" "$WORKDIRS"
             for d in "$RUNS"/speedrun/seed*/; do [ -d "$d" ] && echo "speedrun ${d%/}" >> "$WORKDIRS"; done; } ;;
    airbench) ref_case airbench "$AIRBENCH_S" airbench94_muon.py ;;
    hiverge) ref_case hiverge "$HIVERGE_S" cifar10_speedrun.py ;;
    alexnet)
      train_case alexnet "$ALEXNET_S" "$RUNS/alexnet" --exp alexnet $ALEXNET_ARGS "${DRY_TRAIN[@]}" \
        && report train "$RUNS/alexnet" --curve "$LOGS/alexnet_curve" ;;
    activations) study_case activations "$ACTIVATIONS_S" --seeds "$ACT_SEEDS" "${DRY_MEMBERS_ACT[@]}" ;;
    receptive_field) study_case receptive_field "$RECEPTIVE_FIELD_S" --seeds "$RF_SEEDS" "${DRY_MEMBERS_RF[@]}" ;;
    throughput) throughput_case ;;
    *) fail "$case: unknown case (known: vgg speedrun airbench hiverge alexnet activations receptive_field throughput)"
       CASE_LINES+=("$case unknown") ;;
  esac
  pack
done
wait_pt

# --- evaluations: python -m jaxcnn.eval on every workdir this command trained -------
say "evaluations ($(wc -l < "$WORKDIRS") workdirs, $(left)s left)"
sum "## evaluations (python -m jaxcnn.eval --workdir W --no_plots)"
eval_one() {  # eval_one CASE WORKDIR
  local out="$LOGS/eval_$1"
  [ "$(basename "$2")" != "$1" ] && out="${out}_$(basename "$2" | tr -c 'A-Za-z0-9._\n-' '_')"
  local t=$(( $(left) < EVAL_S ? $(left) : EVAL_S ))
  if [ "$t" -lt 10 ]; then echo "SKIPPED: ${t}s left" > "$out.txt"; echo "skipped, ${t}s left" > "$out.err"; return; fi
  XLA_PYTHON_CLIENT_PREALLOCATE=false timeout -k 10 -s INT "$t" \
      "$PY" -m jaxcnn.eval --workdir "$2" --no_plots > "$out.txt" 2> "$out.err"
  echo "exit $?" >> "$out.err"
}
n=0
while read -r c w; do
  eval_one "$c" "$w" < /dev/null &
  n=$(( n + 1 ))
  if [ $(( n % EVAL_JOBS )) = 0 ]; then wait; fi
done < "$WORKDIRS"
wait
while read -r c w; do
  out="$LOGS/eval_$c"
  [ "$(basename "$w")" != "$c" ] && out="${out}_$(basename "$w" | tr -c 'A-Za-z0-9._\n-' '_')"
  rc=$(tail -n 1 "$out.err" 2>/dev/null)
  sum "-- $c: $w ($rc)"
  bad=0
  case "$rc" in
    "exit 0") ;;
    "exit 124"|skipped*) [ "$DRY" = "1" ] && bad=1 ;;  # out of time on the GPU: noted, no error
    *) bad=1 ;;
  esac
  if [ "$bad" = 1 ]; then
    fail "jaxcnn.eval --workdir $w: ${rc:-not run}"
  fi
  # The header and the raw/EMA table.
  grep -E "^(workdir|step|weights|raw|ema|SKIPPED)" "$out.txt" 2>/dev/null | head -n 6 | sed 's/^/   /' >> "$SUMMARY"
  [ -s "$out.txt" ] || tail -n 3 "$out.err" 2>/dev/null | sed 's/^/   ! /' >> "$SUMMARY"
done < "$WORKDIRS"

sum "## cases"
for l in "${CASE_LINES[@]}"; do sum "   $l"; done
sum "# done in $(( $(date +%s) - START ))s, $FAILS error(s); files: $OUT/summary.txt, $OUT/evidence_$TAG.tar.gz"
pack
say "done; $OUT:"
ls -la "$OUT"
echo
cat "$SUMMARY"
# Non-zero when something failed (a case stopped at its budget is no failure
# on the GPU, but is one in DRY mode).
[ "$FAILS" = 0 ]
