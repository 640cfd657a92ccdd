#!/usr/bin/env bash
# Fills .gpudata/ (ignored by git) with everything benchmarks/gpu_evidence.sh
# needs on a lent GPU machine, which has no network and to which ../shared
# does not travel. Run it HERE, from the repository root, before the device
# call that names `carry: [".gpudata"]`:
#
#   bash benchmarks/gpu_prepare.sh            (FORCE=1 repacks the images)
#
# What it writes (sizes printed at the end; all of it plus the checkout's
# tracked files must stay under the 64 MiB the device tool carries):
#   .gpudata/cifar10.npz        the JPEG CIFAR-10 folder (50k train, 5k test)
#                               packed as raw file bytes (benchmarks/jpeg_pack.py,
#                               then compressed);
#                               55k loose files would not travel well, and the
#                               upstream train.pt/test.pt (~150 MB decoded) are
#                               too big: gpu_evidence.sh writes those there.
#   .gpudata/tools/airbench_cpu.py          its ensure_pt writes train.pt/test.pt
#   .gpudata/tools/upstream/*.py, LICENSE-* the reference scripts as published
#   .gpudata/wheels/*.whl       Python 3.12 wheels the GPU image lacks
#                               (tensorboardX only: see WHEELS below)
#   .gpudata/MANIFEST.txt       sha256 and size of every file above
#
# Inputs (override with the environment): CIFAR_JPEG (default
# ../shared/data/cifar10-jpeg), SHARED_TOOLS (default ../shared/tools), PY
# (default .venv/bin/python, else python3; it needs numpy and pip).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.gpudata
CIFAR_JPEG=${CIFAR_JPEG:-../shared/data/cifar10-jpeg}
SHARED_TOOLS=${SHARED_TOOLS:-../shared/tools}
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
# The GPU image (JAX 0.11.2, flax, optax, orbax-checkpoint, numpy, pillow,
# matplotlib, tqdm, protobuf, torch 2.11, torchvision; Python 3.12) has every
# package jaxcnn imports for a folder: data source except tensorboardX (an
# earlier run printed "tensorboardX is not installed"; docs/gpu/h200_run.log).
# tensorflow / tensorflow-datasets are imported only for tfds: sources, which
# the GPU run does not use. The version: requirements.lock's.
WHEELS=${WHEELS:-"tensorboardX==$(sed -n 's/^tensorboardX==//p' requirements.lock)"}
LIMIT_MIB=${LIMIT_MIB:-60}   # refuse to finish above this (carry limit: 64)

mkdir -p "$DEST/tools/upstream" "$DEST/wheels"

echo "== images: $CIFAR_JPEG -> $DEST/cifar10.npz"
if [ "${FORCE:-0}" = "1" ] || [ ! -s "$DEST/cifar10.npz" ]; then
  [ -d "$CIFAR_JPEG/train" ] && [ -d "$CIFAR_JPEG/test" ] || {
    echo "error: $CIFAR_JPEG/{train,test} not found (set CIFAR_JPEG)" >&2; exit 1; }
  nice "$PY" -m benchmarks.jpeg_pack pack "$CIFAR_JPEG" "$DEST/cifar10.tmp.npz"
  # The same arrays, compressed: the 55k names as fixed-width unicode are
  # 5.7 MB raw and shrink ~20x (the JPEG bytes do not); np.load (and so
  # `jpeg_pack unpack`) reads either form.
  nice "$PY" -c 'import sys, numpy as np; z = np.load(sys.argv[1]); np.savez_compressed(sys.argv[2], **{k: z[k] for k in z.files})' \
      "$DEST/cifar10.tmp.npz" "$DEST/cifar10.npz"
  rm -f "$DEST/cifar10.tmp.npz"
else
  echo "   kept the existing one (FORCE=1 to repack)"
fi
# The archive must hold 50,000 train and 5,000 test files, 10 classes each.
"$PY" - "$DEST/cifar10.npz" <<'PYEOF'
import collections, sys
import numpy as np
z = np.load(sys.argv[1])
names = [str(n) for n in z["names"]]
splits = collections.Counter(n.split("/")[0] for n in names)
classes = {n.split("/")[1] for n in names}
assert splits == {"train": 50000, "test": 5000}, splits
assert len(classes) == 10, classes
assert len(z["offsets"]) == len(names) + 1 and z["offsets"][-1] == len(z["data"])
print(f"   checked: {dict(splits)}, classes {sorted(classes)}")
PYEOF

echo "== reference scripts: $SHARED_TOOLS -> $DEST/tools"
for f in airbench_cpu.py upstream/airbench94_muon.py upstream/cifar10_speedrun.py \
         upstream/LICENSE-airbench upstream/LICENSE-hiverge; do
  [ -f "$SHARED_TOOLS/$f" ] || { echo "error: $SHARED_TOOLS/$f missing" >&2; exit 1; }
  cp "$SHARED_TOOLS/$f" "$DEST/tools/$f"
done
"$PY" -m py_compile "$DEST"/tools/airbench_cpu.py "$DEST"/tools/upstream/*.py
find "$DEST/tools" -name __pycache__ -prune -exec rm -rf {} +

echo "== wheels for Python 3.12: $WHEELS"
rm -f "$DEST"/wheels/*.whl
# --no-deps: their own needs (numpy, packaging, protobuf) are in the image.
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST/wheels" $WHEELS
ls "$DEST"/wheels

echo "== manifest"
( cd "$DEST" && find . -type f ! -name MANIFEST.txt | sort | xargs sha256sum ) > "$DEST/MANIFEST.txt"
{ echo "# written by benchmarks/gpu_prepare.sh $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "# commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); images from $CIFAR_JPEG"; } >> "$DEST/MANIFEST.txt"

echo "== sizes (bytes)"
du -ab "$DEST" | sort -k2 | awk '{printf "%12d  %s\n", $1, $2}' | grep -v "/upstream/" || true
gpudata=$(du -sb "$DEST" | cut -f1)
tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
untracked=${untracked:-0}
total=$(( gpudata + tracked + untracked ))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
echo "$DEST: $(mib "$gpudata") MiB; tracked files $(mib "$tracked") MiB," \
     "untracked-not-ignored $(mib "$untracked") MiB; travels: $(mib "$total") MiB of 64 MiB"
if [ "$total" -gt $(( LIMIT_MIB * 1048576 )) ]; then
  echo "error: over LIMIT_MIB=$LIMIT_MIB MiB" >&2; exit 1
fi
echo "ready: the device call names carry: [\"$DEST\"] (benchmarks/README.md, GPU evidence)"
