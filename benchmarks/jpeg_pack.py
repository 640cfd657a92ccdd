"""Packs an image-folder dataset (PATH/{train,test}/<class>/*.jpg) into one
.npz of raw file bytes, and unpacks it again. Used to carry the real CIFAR-10
JPEGs (51 MB of files, 55k of them) to a GPU machine as a single file.

    python -m benchmarks.jpeg_pack pack ../shared/data/cifar10-jpeg .gpudata/cifar10.npz
    python -m benchmarks.jpeg_pack unpack .gpudata/cifar10.npz /tmp/cifar10-jpeg
"""
import argparse
import pathlib

import numpy as np


def pack(root: pathlib.Path, out: pathlib.Path) -> None:
  names, blobs = [], []
  for path in sorted(root.glob("*/*/*")):
    if path.is_file():
      names.append(str(path.relative_to(root)))
      blobs.append(np.frombuffer(path.read_bytes(), np.uint8))
  offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
  out.parent.mkdir(parents=True, exist_ok=True)
  np.savez(out, names=np.array(names), offsets=offsets,
           data=np.concatenate(blobs))
  print(f"packed {len(names)} files, {offsets[-1] / 1e6:.1f} MB -> {out}")


def unpack(archive: pathlib.Path, root: pathlib.Path) -> None:
  z = np.load(archive)
  names, offsets, data = z["names"], z["offsets"], z["data"]
  for i, name in enumerate(names):
    path = root / str(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[offsets[i]:offsets[i + 1]].tobytes())
  print(f"unpacked {len(names)} files -> {root}")


if __name__ == "__main__":
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("command", choices=["pack", "unpack"])
  p.add_argument("src", type=pathlib.Path)
  p.add_argument("dst", type=pathlib.Path)
  a = p.parse_args()
  (pack if a.command == "pack" else unpack)(a.src, a.dst)
