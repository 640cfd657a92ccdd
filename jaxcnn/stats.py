"""Per-layer statistics of a network on a fixed probe batch, computed on the
devices at log steps when `train.collect_stats` is on.

The trainer builds one `StatsCollector(setup)` (only when asked: with
`collect_stats` off this module is not even imported, so it costs nothing) and
at each log step writes `collector(state_r)` as a 'stats' record of
metrics.jsonl. Keys (LAYER is a conv or hidden dense layer, named after its
conv/dense module even when the activation follows a BatchNorm):

  dead_fraction/LAYER       channels (units) whose activation output is <= 0
                            for every probe example and position. For ReLU:
                            units that pass no gradient on the whole probe.
                            Same definition for the other activations (for
                            tanh/elu/leaky it means 'never positive', not
                            'no gradient'; sigmoid is never <= 0).
  saturated_fraction/LAYER  (tanh: |y| > 0.99, sigmoid: y < 0.01 or y > 0.99)
                            fraction of all activations; only for tanh and
                            sigmoid.
  zero_fraction/LAYER       activation sparsity: fraction of activations with
                            |y| < 1e-6.
  grad_norm/MODULE          L2 norm of the gradient of the mean cross-entropy
                            on the probe batch with respect to that module's
                            parameters (every module with parameters,
                            BatchNorm and logits included).
  weight_zero_fraction      fraction of kernel weights with |w| < 1e-3, over
                            all kernels; weight_zero_fraction/MODULE per layer.

Everything uses the RAW parameters in inference mode (train=False): BatchNorm
uses its running statistics and dropout is off, so the numbers describe the
network as it would be evaluated, not one noisy training step. The gradient
norms are therefore those of the inference-mode loss, which differ a little
from the training step's (no dropout, running instead of batch statistics).

The probe batch is the first PROBE_SIZE training images (at most), without
augmentation, normalized as in training, split over the devices once at
construction; per-device partial sums are combined with psum/pmax, so the
result does not depend on the device count.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn import augment, models, parallel
from jaxcnn.models import layers
from jaxcnn.models.spec import numbered_order

AXIS = parallel.AXIS
# 128 images: enough positions per channel for the conv layers, and on a
# loaded 2-core CPU one call (forward and backward) stays near one train step.
PROBE_SIZE = 128
SATURATING = ("tanh", "sigmoid")
ZERO_EPS = 1e-6
WEIGHT_ZERO_EPS = 1e-3


def _cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels)


def activation_layers(model_name: str, module_names) -> list[tuple[str, str]]:
  """(layer label, module whose output is the pre-activation) for each layer
  followed by the activation function, in layer order: what the model's
  spec says (its `stats_layers`, jaxcnn/models/). In VGG and the tiny net a
  conv is followed by its BatchNorm and then the activation, so the
  pre-activation is the BatchNorm's output when there is one; in the
  AlexNet-like net BatchNorm (like LRN) comes after the activation and the
  pooling, so there it is the conv's own output."""
  return list(models.get_spec(model_name).stats_layers(list(module_names)))


def layer_order(name: str):
  """Sort key of a layer label: conv before fc, then by the numbers in the
  name (conv2_10 after conv2_9), except labels a registered model lists in
  its spec's `layer_order` (alexnet's fc384 before fc192), which keep that
  order."""
  kind, numbers, _ = numbered_order(name)
  for spec in models.REGISTRY.values():
    if name in spec.layer_order:
      numbers = (spec.layer_order.index(name),)
      break
  return kind, numbers, name


def saturation_mask(activation: str, y):
  if activation == "tanh":
    return jnp.abs(y) > 0.99
  if activation == "sigmoid":
    return (y < 0.01) | (y > 0.99)
  raise ValueError(f"no saturation defined for {activation!r}")


def probe_batch(setup, size: int = PROBE_SIZE):
  """The first min(size, N) training images, cut to a multiple of the device
  count, normalized as in training (no augmentation): numpy (x, y)."""
  cfg = setup.config
  n = min(size, len(setup.data.train_labels))
  n -= n % setup.num_devices
  if n <= 0:
    raise ValueError(f"the probe batch needs at least {setup.num_devices} "
                     "training images")
  mean, std = setup.mean_std
  x = np.asarray(augment.normalize(setup.data.train_images[:n],
                                   cfg.data.normalization, mean, std))
  y = setup.data.train_labels[:n].astype(np.int32)
  return x, y


class StatsCollector:
  """`collector(state_r) -> {key: float}` for a replicated TrainState."""

  def __init__(self, setup, probe_size: int = PROBE_SIZE):
    self.setup = setup
    cfg = setup.config
    model = setup.model
    self.activation = cfg.model.activation
    act = layers.ACTIVATIONS[self.activation]
    x, y = probe_batch(setup, probe_size)
    self.probe_size = len(y)

    # Which modules feed an activation: read off one traced forward pass.
    init_vars = jax.eval_shape(
        lambda: model.init({"params": jax.random.PRNGKey(0),
                            "dropout": jax.random.PRNGKey(0)},
                           jnp.zeros((1,) + x.shape[1:], jnp.float32),
                           train=False))
    _, captured = jax.eval_shape(
        lambda v: model.apply(v, jnp.zeros((1,) + x.shape[1:], jnp.float32),
                              train=False, capture_intermediates=True,
                              mutable=["intermediates"]), init_vars)
    self.layers = activation_layers(cfg.model.name,
                                    captured["intermediates"].keys())
    wanted = {module for _, module in self.layers}
    layer_list = self.layers
    saturating = self.activation in SATURATING
    activation = self.activation

    def stats(params, batch_stats, xs, ys):
      def loss_fn(p):
        logits, inter = model.apply(
            {"params": p, "batch_stats": batch_stats}, xs, train=False,
            capture_intermediates=lambda mdl, method: (
                method == "__call__" and mdl.name in wanted),
            mutable=["intermediates"])
        return jnp.mean(_cross_entropy(logits, ys)), inter["intermediates"]

      grads, inter = jax.grad(loss_fn, has_aux=True)(params)
      # Equal shards on every device: the mean of the device means is the
      # gradient of the mean loss over the whole probe batch.
      grads = jax.lax.pmean(grads, AXIS)
      out = {}
      for label, module in layer_list:
        pre = inter[module]["__call__"][0].astype(jnp.float32)
        post = act(pre)
        channel_max = jnp.max(post.reshape(-1, post.shape[-1]), axis=0)
        channel_max = jax.lax.pmax(channel_max, AXIS)
        out[f"dead_fraction/{label}"] = jnp.mean(
            (channel_max <= 0).astype(jnp.float32))
        count = jax.lax.psum(jnp.float32(post.size), AXIS)
        zeros = jax.lax.psum(
            jnp.sum((jnp.abs(post) < ZERO_EPS).astype(jnp.float32)), AXIS)
        out[f"zero_fraction/{label}"] = zeros / count
        if saturating:
          sat = jax.lax.psum(jnp.sum(
              saturation_mask(activation, post).astype(jnp.float32)), AXIS)
          out[f"saturated_fraction/{label}"] = sat / count
      small, total = jnp.float32(0), jnp.float32(0)
      for module in params:
        out[f"grad_norm/{module}"] = optax.global_norm(grads[module])
        kernel = params[module].get("kernel")
        if kernel is not None:
          k_small = jnp.sum((jnp.abs(kernel) < WEIGHT_ZERO_EPS)
                            .astype(jnp.float32))
          out[f"weight_zero_fraction/{module}"] = k_small / kernel.size
          small, total = small + k_small, total + kernel.size
      out["weight_zero_fraction"] = small / jnp.maximum(total, 1.0)
      return out

    self._fn = jax.pmap(stats, axis_name=AXIS, devices=setup.devices)
    per_device = self.probe_size // setup.num_devices
    rows = parallel.local_rows(setup.devices)
    shape = (setup.num_devices, per_device)
    self._x = parallel.shard(x.reshape(shape + x.shape[1:])[rows],
                             setup.local_devices)
    self._y = parallel.shard(y.reshape(shape)[rows], setup.local_devices)

  def __call__(self, state_r) -> dict[str, float]:
    out = self._fn(state_r.params, state_r.batch_stats, self._x, self._y)
    host = jax.device_get(parallel.unreplicate(out))
    return {k: float(v) for k, v in sorted(host.items())}
