"""Where speednet's training time goes: forward + backward of each of its
layer shapes, in JAX (jaxcnn's ops, as the model calls them) and PyTorch,
side by side in one process, taking turns.

    python -m benchmarks.speednet_layers --batch 1024 --repeats 3

Each row times `grad(sum(layer(x)))` with respect to the input (and the
kernel, for convs) at the shape the full-width net sees it in a batch, after
a warm-up call; the last row is the whole net (forward, loss, backward).
PyTorch (optional: requirements-bench.txt) runs the same op on a
channels-last tensor with autograd. Printed: the best of `--repeats` turns
in ms, and the ratio JAX / PyTorch (above 1: JAX is slower).
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn.models import cpu_kernels, create_model, layers

GELU = layers.ACTIVATIONS["gelu"]


def jax_cases(batch: int) -> list[tuple[str, tuple, callable, tuple]]:
  """(label, input shape, f(x, *params), param shapes) per layer shape of
  the full-width net (32x32 input, widths 64/256/256)."""
  def conv(x, k):
    return layers.conv_fn("auto", x.shape[1], x.shape[2])(x, k)

  def bn(x):  # Training-mode BatchNorm without scale, bias added.
    m = jnp.mean(x, axis=(0, 1, 2))
    v = jnp.var(x, axis=(0, 1, 2))
    return (x - m) * jax.lax.rsqrt(v + 1e-5)

  b = batch
  return [
      ("conv3x3 31x31 24->64", (b, 31, 31, 24), conv, ((3, 3, 24, 64),)),
      ("conv3x3 15x15 64->64", (b, 15, 15, 64), conv, ((3, 3, 64, 64),)),
      ("conv3x3 15x15 64->256", (b, 15, 15, 64), conv, ((3, 3, 64, 256),)),
      ("conv3x3 7x7 256->256 (x2)", (b, 7, 7, 256), conv,
       ((3, 3, 256, 256),)),
      ("conv3x3 3x3 256->256", (b, 3, 3, 256), conv, ((3, 3, 256, 256),)),
      ("maxpool2 31x31x64", (b, 31, 31, 64), layers.max_pool_2x2, ()),
      ("maxpool2 15x15x256", (b, 15, 15, 256), layers.max_pool_2x2, ()),
      ("batchnorm 15x15x64 (x2)", (b, 15, 15, 64), bn, ()),
      ("batchnorm 7x7x256 (x3)", (b, 7, 7, 256), bn, ()),
      ("gelu 31x31x24", (b, 31, 31, 24), GELU, ()),
      ("gelu 15x15x64 (x2)", (b, 15, 15, 64), GELU, ()),
      ("gelu 7x7x256 (x3)", (b, 7, 7, 256), GELU, ()),
  ]


def time_best(fn, repeats: int) -> float:
  fn()  # Warm-up (compiles).
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def jax_layer(shape, f, param_shapes):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(shape).astype(np.float32))
  ps = [jnp.asarray(0.05 * rng.standard_normal(s).astype(np.float32))
        for s in param_shapes]
  g = jax.jit(jax.grad(lambda *a: jnp.sum(f(*a)),
                       argnums=tuple(range(1 + len(ps)))))
  return lambda: jax.block_until_ready(g(x, *ps))


def jax_model(batch: int):
  model = create_model({"name": "speednet", "bn_scale": False,
                        "bn_momentum": 0.4})
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, 32, 32, 3)).astype(np.float32))
  y = jnp.asarray(rng.integers(0, 10, batch))
  v = model.init({"params": jax.random.key(0)}, x[:2], train=False)

  def loss(p, bs):
    out, nv = model.apply({"params": p, "batch_stats": bs}, x, train=True,
                          mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(out, y).mean(), nv

  g = jax.jit(jax.value_and_grad(loss, has_aux=True))
  return lambda: jax.block_until_ready(g(v["params"], v["batch_stats"]))


def torch_layer(torch, label, shape, param_shapes):
  f = torch.nn.functional
  b, h, w, c = shape
  x = torch.randn(b, c, h, w).contiguous(memory_format=torch.channels_last)
  x.requires_grad_(True)
  if label.startswith("conv"):
    k = (0.05 * torch.randn(param_shapes[0][3], param_shapes[0][2], 3, 3)
         ).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    op = lambda: f.conv2d(x, k, padding=1)
  elif label.startswith("maxpool"):
    op = lambda: f.max_pool2d(x, 2)
  elif label.startswith("batchnorm"):
    op = lambda: f.batch_norm(x, None, None, training=True, eps=1e-5)
  else:
    op = lambda: f.gelu(x)

  def run():
    x.grad = None
    op().sum().backward()
  return run


def torch_model(torch, batch: int):
  from benchmarks import torch_models
  net = torch_models.create("speednet", bn_momentum=0.4).to(
      memory_format=torch.channels_last)
  x = torch.randn(batch, 3, 32, 32).contiguous(
      memory_format=torch.channels_last)
  y = torch.randint(0, 10, (batch,))

  def run():
    net.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(net(x), y).backward()
  return run


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch", type=int, default=1024)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
  p.add_argument("--no-torch", dest="no_torch", action="store_true")
  args = p.parse_args(argv)
  cpu_kernels.prefer_eigen_convolutions()  # Before XLA starts.
  torch = None
  if not args.no_torch:
    try:
      import torch
      torch.set_num_threads(args.threads)
    except ImportError:
      print("PyTorch is not installed: JAX only")
  rows = []
  for label, shape, f, param_shapes in jax_cases(args.batch):
    t_jax = time_best(jax_layer(shape, f, param_shapes), args.repeats)
    t_torch = (time_best(torch_layer(torch, label, shape, param_shapes),
                         args.repeats) if torch else None)
    rows.append((label, t_jax, t_torch))
    print(f"{label:28s} jax {t_jax * 1e3:8.1f} ms" + (
        f"   torch {t_torch * 1e3:8.1f} ms   ratio {t_jax / t_torch:5.2f}"
        if t_torch else ""), flush=True)
  t_jax = time_best(jax_model(args.batch), args.repeats)
  t_torch = time_best(torch_model(torch, args.batch), args.repeats) \
      if torch else None
  print(f"{'whole net, fwd+bwd':28s} jax {t_jax * 1e3:8.1f} ms" + (
      f"   torch {t_torch * 1e3:8.1f} ms   ratio {t_jax / t_torch:5.2f}"
      if t_torch else ""), flush=True)


if __name__ == "__main__":
  main()
