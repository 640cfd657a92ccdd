"""Times one SAME conv (forward and backward, batch 128) on small maps: XLA's
convolution (with jaxcnn's CPU gradient path, `cpu_kernels.cpu_conv`)
against the shifted-matmul form (`cpu_kernels.shifted_conv`). The numbers
behind the rule that `conv_impl='auto'` takes the shifted form where the
kernel is larger than the map (`layers.resolve_conv_impl`,
docs/performance.md).

    .venv/bin/python -m benchmarks.conv_small_maps [--batch 128] [--repeats 5]
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.models import cpu_kernels, layers

# (map side, channels, kernel size)
CASES = [(4, 64, 3), (2, 512, 3), (8, 64, 5), (4, 128, 5), (2, 128, 5),
         (1, 128, 5), (4, 512, 5)]


def time_ms(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # Compile.
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best * 1e3


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--repeats", type=int, default=5)
  args = p.parse_args(argv)
  cpu_kernels.prefer_eigen_convolutions()  # Before XLA starts.
  rng = np.random.default_rng(0)
  xla = layers.conv_fn("xla", 8, 8)  # cpu_conv on CPU, xla_conv elsewhere.
  print(f"fwd+bwd of one SAME conv, batch {args.batch}, on "
        f"{jax.devices()[0].platform}; best of {args.repeats} (ms)")
  print(f"{'map':>5} {'ch':>4} {'kernel':>6} {'lax.conv':>9} {'shifted':>8}"
        f" {'ratio':>6}")
  for side, channels, size in CASES:
    shape = (args.batch, side, side, channels)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    g = jnp.asarray(rng.normal(size=shape), jnp.float32)
    k = jnp.asarray(rng.normal(size=(size, size, channels, channels)) * 0.05,
                    jnp.float32)
    times = []
    for conv in (xla, cpu_kernels.shifted_conv):
      step = jax.jit(lambda x, k, g, conv=conv: jax.vjp(conv, x, k)[1](g))
      times.append(time_ms(step, x, k, g, repeats=args.repeats))
    print(f"{side:>3}x{side:<1} {channels:>4} {size:>4}x{size:<1} "
          f"{times[0]:>9.1f} {times[1]:>8.1f} {times[0] / times[1]:>6.2f}")


if __name__ == "__main__":
  main()
