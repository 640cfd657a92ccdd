"""The cost of speednet's backward pass with frozen leading groups: forward +
backward at batch B, side S (argv), of speedrun_pruned's model,
with the stem frozen (frozen_blocks 0), then group 1 frozen too, then
groups 1 and 2. A one-off check, not part of the package; from the
repository root:

    PYTHONPATH=. .venv/bin/python docs/reference/session14_2026-12-08_zen4/freeze_step_cost.py 512 32
"""
import sys, time
from jaxcnn.models import cpu_kernels
cpu_kernels.prefer_eigen_convolutions()
import jax, jax.numpy as jnp, numpy as np, optax
from jaxcnn.config import load_experiment
from jaxcnn.models import create_model

c = load_experiment("speedrun_pruned")
m = create_model(c.model)
B = int(sys.argv[1]); S = int(sys.argv[2])
x = jnp.asarray(np.random.RandomState(0).randn(B, S, S, 3).astype(np.float32))
y = jnp.asarray(np.random.RandomState(1).randint(0, 10, B))
v = m.init(jax.random.PRNGKey(0), x[:2], train=False)

def make(k):
  def loss(p):
    logits, _ = m.apply({"params": p, "batch_stats": v["batch_stats"]}, x,
                        train=True, stem_frozen=True, frozen_blocks=k,
                        mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return jax.jit(jax.grad(loss))

fns = {k: make(k) for k in (0, 1, 2)}
for f in fns.values():
  jax.block_until_ready(f(v["params"]))
res = {k: [] for k in fns}
for r in range(3):
  for k, f in fns.items():
    t = time.time(); jax.block_until_ready(f(v["params"])); res[k].append(time.time() - t)
for k in fns:
  print(f"B={B} S={S} frozen_blocks {k}: best {min(res[k]):.3f}s all "
        f"{[round(t, 3) for t in res[k]]} ratio {min(res[k]) / min(res[0]):.3f}")
