"""Where the time of one train step goes: the real step against itself with
one part removed at a time, and against the model's forward and backward
pass alone, in one process, taking turns.

    python -m benchmarks.step_parts --model speednet --batch 1024 --steps 2

Rows (all the real step of `steps.make_train_fn` on synthetic data, one
device, unless said):
  full            the experiment's step as training runs it
  -augment        no crop, no flip (the input pipeline is then a gather and
                  a normalization)
  -lookahead      optim.lookahead_every_steps=0
  -label_smooth   train.label_smoothing=0
  stem frozen     the step as it runs once the optimizer has frozen the
                  model's stem (speednet: after the whitening bias's epochs):
                  no gradient into the stem, so no input gradient for the
                  first conv group
  fwd+bwd only    value_and_grad of the loss on a fixed normalized batch in
                  training mode (no input pipeline, no optimizer, no EMA, no
                  lookahead): the floor a step cannot go below
Each variant's time is the median over the rounds; "less than full" is the
time the removed part costs (noise is a few percent on a shared machine).
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.throughput import MODELS, JaxBench, make_config
from jaxcnn import models
from jaxcnn.models import cpu_kernels
from jaxcnn import steps
from jaxcnn.steps import smoothed_cross_entropy

VARIANTS = {
    "full": [],
    "-augment": ["data.random_crop=false", "data.random_flip=false"],
    "-lookahead": ["optim.lookahead_every_steps=0"],
    "-label_smooth": ["train.label_smoothing=0"],
}


def fwd_bwd_fn(bench: JaxBench):
  """A zero-argument callable running value_and_grad of the training loss
  on one fixed normalized batch (BatchNorm in training mode, without the
  cross-device axis: a plain jit has none to reduce over)."""
  setup = dataclasses.replace(
      bench.setup, model=bench.setup.model.clone(bn_axis_name=None))
  state = jax.tree.map(lambda x: x[0], bench.state)
  batch = setup.config.train.batch_size
  x = jax.random.normal(jax.random.PRNGKey(0),
                        (batch,) + setup.image_shape, jnp.float32)
  y = jnp.asarray(np.arange(batch) % setup.config.model.num_classes)
  smoothing = float(setup.config.train.label_smoothing)

  @jax.jit
  def run(params, batch_stats):
    def loss_fn(p):
      logits, _ = setup.model.apply(
          {"params": p, "batch_stats": batch_stats}, x, train=True,
          rngs={"dropout": jax.random.PRNGKey(1)}, mutable=["batch_stats"])
      return jnp.mean(smoothed_cross_entropy(logits, y, smoothing))
    return jax.value_and_grad(loss_fn)(params)

  return lambda: run(state.params, state.batch_stats)


def main(argv=None) -> int:
  rows = ["full"] + list(VARIANTS)[1:] + ["stem frozen", "fwd+bwd only"]
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="speednet", choices=sorted(MODELS))
  p.add_argument("--batch", type=int, default=1024)
  p.add_argument("--steps", type=int, default=2,
                 help="timed steps per variant per round")
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--only", nargs="+", metavar="VARIANT",
                 help="time only these rows (besides 'full'): "
                 + ", ".join(rows[1:]))
  args = p.parse_args(argv)
  wanted = set(rows if not args.only else ["full"] + args.only)
  unknown = wanted - set(rows)
  if unknown:
    p.error(f"unknown --only {', '.join(sorted(unknown))}; use "
            f"{', '.join(rows[1:])}")
  cpu_kernels.prefer_eigen_convolutions()
  benches = {}
  for name, overrides in VARIANTS.items():
    if name not in wanted:
      continue
    config = make_config(args.model, args.batch, "float32", 1,
                         max(2 * args.batch, 2048), overrides)
    benches[name] = JaxBench.create(config)
  if "stem frozen" in wanted:
    frozen = JaxBench.create(make_config(args.model, args.batch, "float32", 1,
                                         max(2 * args.batch, 2048), []))
    if models.stem_params(frozen.setup.config.model):
      frozen.train_fn = steps.make_train_fn(frozen.setup, 1, stem_frozen=True)
      frozen.run(1)  # Compiles.
      benches["stem frozen"] = frozen
    else:
      print(f"{args.model} has no stem to freeze: no 'stem frozen' row",
            file=sys.stderr)
  times: dict[str, list[float]] = {name: [] for name in benches}
  fwd_bwd = None
  if "fwd+bwd only" in wanted:
    times["fwd+bwd only"] = []
  for r in range(args.rounds):
    for name, bench in benches.items():
      bench.run(1)  # Warm.
      times[name].append(bench.run(args.steps) / args.steps)
    if "fwd+bwd only" in wanted:
      if fwd_bwd is None:
        fwd_bwd = fwd_bwd_fn(benches["full"])
        jax.block_until_ready(fwd_bwd())
      t0 = time.perf_counter()
      for _ in range(args.steps):
        out = fwd_bwd()
      jax.block_until_ready(out)
      times["fwd+bwd only"].append((time.perf_counter() - t0) / args.steps)
    print(f"round {r + 1}: " + ", ".join(
        f"{k} {v[-1]:.2f}s" for k, v in times.items()), file=sys.stderr)
  full = statistics.median(times["full"])
  print(f"{args.model}, batch {args.batch}, {jax.devices()[0].device_kind}, "
        f"median of {args.rounds} rounds x {args.steps} steps")
  print(f"{'variant':<16}{'s/step':>8}{'less than full':>16}")
  for name, values in times.items():
    t = statistics.median(values)
    print(f"{name:<16}{t:>8.2f}{full - t:>+16.2f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
