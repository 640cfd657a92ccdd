"""Times one 3x3 SAME convolution (forward, and forward + both gradients)
under each XLA CPU convolution backend this jaxlib offers, in fp32 and
bf16: which kernels the speed recipe's convolutions could run on, and
whether bf16 is any faster on this CPU (issue #21's bf16 lever).

    .venv/bin/python -m benchmarks.conv_backends [--batch 256] [--side 16]
        [--channels 128] [--repeats 5] [--rounds 2]

Each backend is a set of XLA_FLAGS, so each (backend, dtype) runs in its own
process; the cases take turns for --rounds rounds. Printed per case: the
best of --repeats calls in ms and GFLOP/s (2 x multiply-adds; forward +
both gradients count three times the forward's), whether the convolution ran as a
YNNPACK fusion, and the sum of squares of its output (every backend must
give the same within rounding). Backends:
  eigen    jaxcnn's default on CPU (`cpu_kernels.EIGEN_CONV_FLAG`);
  ynnpack  XLA's own default (YNNPACK convolutions);
  xnnpack  eigen's flags + XNNPACK convolution fusions;
  onednn   eigen's flags + oneDNN convolution fusions and `use_onednn`.
The convolution is `lax.conv_general_dilated` in NHWC, as jaxcnn's models
call it under `model.conv_impl=xla`; bf16 inputs and kernel, fp32 result.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

EIGEN = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
BACKENDS = {
    "eigen": EIGEN,
    "ynnpack": "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution",
    "xnnpack": EIGEN + " --xla_cpu_experimental_xnn_fusion_type="
                       "+individual_convolution",
    "onednn": EIGEN + " --xla_cpu_use_onednn=true"
                      " --xla_cpu_experimental_onednn_fusion_type="
                      "+individual_convolution",
}
DTYPES = ("float32", "bfloat16")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(dtype: str, batch: int, side: int, channels: int,
            repeats: int) -> dict:
  """In this process (its XLA_FLAGS already set): the best times of the
  forward and of forward + input and kernel gradients."""
  import jax
  import jax.numpy as jnp
  from jax import lax

  from benchmarks.conv_small_maps import time_ms

  dt = jnp.dtype(dtype)
  keys = jax.random.split(jax.random.key(0))
  x = jax.random.normal(keys[0], (batch, side, side, channels), dt)
  k = (jax.random.normal(keys[1], (3, 3, channels, channels)) * 0.05
       ).astype(dt)

  def conv(x, k):
    return lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        preferred_element_type=jnp.float32)

  fwd = jax.jit(conv)
  grads = jax.jit(jax.grad(lambda x, k: jnp.sum(conv(x, k) ** 2),
                           argnums=(0, 1)))
  macs = batch * side * side * channels * channels * 9
  # Whether the convolution itself went to YNNPACK (the forward program is
  # the convolution alone), and a checksum of its result: every backend
  # computes the same convolution.
  out = {"ynn_fusion": "__ynn_fusion" in fwd.lower(x, k).compile().as_text(),
         "checksum": float(jnp.sum(fwd(x, k) ** 2))}
  for name, fn, flops in (("fwd", fwd, 2 * macs), ("fwd_bwd", grads,
                                                   6 * macs)):
    ms = time_ms(fn, x, k, repeats=repeats)
    out[name + "_ms"] = ms
    out[name + "_gflops"] = flops / ms / 1e6
  return out


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--side", type=int, default=16)
  p.add_argument("--channels", type=int, default=128)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--backends", default=",".join(BACKENDS),
                 help="comma-separated subset of " + ", ".join(BACKENDS))
  p.add_argument("--child", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.child:
    print(json.dumps(measure(args.child, args.batch, args.side,
                             args.channels, args.repeats)))
    return
  backends = args.backends.split(",")
  unknown = [b for b in backends if b not in BACKENDS]
  if unknown:
    p.error(f"unknown backend(s) {', '.join(unknown)}; use "
            f"{', '.join(BACKENDS)}")
  print(f"3x3 SAME conv, batch {args.batch}, {args.side}x{args.side}, "
        f"{args.channels} -> {args.channels} channels; best of "
        f"{args.repeats} calls, ms (GFLOP/s)")
  print(f"{'round':>5} {'backend':>8} {'dtype':>9} {'forward':>16} "
        f"{'fwd + grads':>17} {'ynn_fusion':>10} checksum")
  base = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  for r in range(args.rounds):
    for backend in backends:
      for dtype in DTYPES:
        env = dict(base, XLA_FLAGS=BACKENDS[backend])
        run = subprocess.run(
            [sys.executable, "-m", "benchmarks.conv_backends", "--child",
             dtype, "--batch", str(args.batch), "--side", str(args.side),
             "--channels", str(args.channels), "--repeats",
             str(args.repeats)], env=env, capture_output=True, text=True,
            check=False, cwd=ROOT)
        if run.returncode != 0:
          print(f"{r + 1:>5} {backend:>8} {dtype:>9} failed: "
                f"{(run.stderr.strip().splitlines() or ['?'])[-1]}")
          continue
        m = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"{r + 1:>5} {backend:>8} {dtype:>9} "
              f"{m['fwd_ms']:>7.1f} ({m['fwd_gflops']:>5.0f}) "
              f"{m['fwd_bwd_ms']:>8.1f} ({m['fwd_bwd_gflops']:>5.0f}) "
              f"{str(m['ynn_fusion']):>10} {m['checksum']:.6g}", flush=True)


if __name__ == "__main__":
  main()
