"""Quick check: BatchNorm statistics recomputed on clean training images."""
import sys, time
from jaxcnn.models import cpu_kernels
cpu_kernels.prefer_eigen_convolutions()
import jax, jax.numpy as jnp, numpy as np
from jaxcnn import restore, augment, evaluation
from jaxcnn.data import load_from_config
from jaxcnn.models import create_model
from jaxcnn.state import variables_of

workdir, n_images = sys.argv[1], int(sys.argv[2])
config, state, step = restore.load_checkpoint(workdir)
data = load_from_config(config.data, config.seed)
cfg0 = config.copy(); cfg0.model.bn_momentum = 0.0
model0 = create_model(cfg0.model)
mean = np.asarray(config.data.channel_mean, np.float32)
std = np.asarray(config.data.channel_std, np.float32)

@jax.jit
def batch_stats(variables, x_u8):
  x = augment.normalize(x_u8, config.data.normalization, mean, std)
  _, upd = model0.apply(variables, x, train=True, mutable=["batch_stats"])
  return upd["batch_stats"]

def recal(variables, images, bs=1000):
  stats = []
  for i in range(0, len(images), bs):
    stats.append(jax.device_get(batch_stats(variables, images[i:i + bs])))
  means = jax.tree.map(lambda *a: np.stack(a), *stats)
  def combine(path, leaf):
    return leaf
  out = {}
  def walk(tree):
    if isinstance(tree, dict) and "mean" in tree and "var" in tree:
      m, v = tree["mean"], tree["var"]  # [batches, C]
      return {"mean": m.mean(0), "var": v.mean(0) + m.var(0)}
    return {k: walk(t) for k, t in tree.items()}
  return walk(means)

rng = np.random.default_rng(0)
idx = rng.permutation(len(data.train_labels))[:n_images]
imgs = data.train_images[idx]
t0 = time.time()
results = {}
for name in ("raw", "ema"):
  v = variables_of(state, name)
  new_stats = recal(v, imgs)
  if name == "raw":
    st2 = state.__class__(**{**state.to_dict(), "batch_stats": new_stats})
  else:
    st2 = state.__class__(**{**state.to_dict(), "ema_batch_stats": new_stats})
  for s, label in ((state, name), (st2, name + "_recal")):
    r = evaluation.evaluate(config, s, data, weights=name, tta="mirror_translate", tta_fraction=0.25)
    p = evaluation.evaluate(config, s, data, weights=name)
    results[label] = (round(100 * p[name]["accuracy"], 2), round(100 * r[name]["accuracy"], 2))
  print(workdir, results, f"{time.time() - t0:.0f}s", flush=True)
