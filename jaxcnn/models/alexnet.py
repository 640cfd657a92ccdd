"""The "AlexNet-like" model of the TensorFlow CIFAR-10 tutorial
(tensorflow/models tutorials/image/cifar10/cifar10.py, `inference`).

  conv1 5x5 64 -> act -> maxpool 3/2 SAME -> norm1
  conv2 5x5 64 -> act -> norm2 -> maxpool 3/2 SAME
  flatten -> fc384 -> act -> fc192 -> act -> logits

The tutorial trains on 24x24 crops, so its flatten is 6*6*64 = 2304 wide; we
feed the full 32x32 image, whose flatten is 8*8*64 = 4096, so fc384 and the
whole model are larger than the tutorial's: 1,756,426 parameters here against
1,068,298 (arithmetic in tests/test_models.py).
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from jaxcnn.models import layers
from jaxcnn.models.spec import (Common, ModelConfigError, ModelSpec,
                                check_finite, conv_then_bn_layers, width_text)

# The tutorial's LRN (tf.nn.lrn(x, 4, bias=1.0, alpha=0.001 / 9.0,
# beta=0.75)): config `model.alexnet.lrn_*`, used with norm 'lrn'.
CONFIG = dict(
    lrn_depth_radius=4,  # Channels on each side in the window.
    lrn_bias=1.0,
    lrn_alpha=0.001 / 9.0,
    lrn_beta=0.75,
)


class AlexNetLike(layers.ModelBase):
  """`norm`: 'lrn' (the tutorial), 'none' (no normalisation) or 'batchnorm'
  (BatchNorm where each LRN was). `dropout` > 0 adds dropout before fc192 and
  before the logits; the tutorial has none. `width` scales 64/384/192."""
  activation: str = "relu"
  norm: str = "lrn"
  dropout: float = 0.0
  lrn_depth_radius: int = 4
  lrn_bias: float = 1.0
  lrn_alpha: float = 0.001 / 9.0
  lrn_beta: float = 0.75

  def _normalize(self, x, train: bool, index: int):
    if self.norm == "lrn":
      return layers.LocalResponseNorm(
          depth_radius=self.lrn_depth_radius, bias=self.lrn_bias,
          alpha=self.lrn_alpha, beta=self.lrn_beta, name=f"norm{index}")(x)
    if self.norm == "batchnorm":
      return self.bn(x, train, f"bn{index}")
    return x

  @nn.compact
  def __call__(self, x, train: bool):
    act = layers.ACTIVATIONS[self.activation]
    conv_channels = layers.scaled(64, self.width)
    # The tutorial's initialisers: truncated normal (cut at 2 std) with these
    # stds; biases 0 for conv1 and the logits, 0.1 elsewhere.
    conv_init = nn.initializers.truncated_normal(5e-2)
    fc_init = nn.initializers.truncated_normal(0.04)
    dense = lambda features, init, bias, name: nn.Dense(
        features, kernel_init=init, bias_init=nn.initializers.constant(bias),
        dtype=self.dtype, name=name)

    # layers.Conv is nn.Conv(features, (5, 5), padding='SAME') with the same
    # parameters, and a cheaper kernel gradient on CPU.
    x = layers.Conv(conv_channels, 5, kernel_init=conv_init,
                    bias_init=nn.initializers.zeros_init(), dtype=self.dtype,
                    name="conv1")(x)
    x = act(x)
    x = layers.max_pool(x, 3, 2, "SAME")
    x = self._normalize(x, train, 1)

    x = layers.Conv(conv_channels, 5, kernel_init=conv_init,
                    bias_init=nn.initializers.constant(0.1), dtype=self.dtype,
                    name="conv2")(x)
    x = act(x)
    x = self._normalize(x, train, 2)
    x = layers.max_pool(x, 3, 2, "SAME")

    x = x.reshape(x.shape[0], -1)
    x = act(dense(layers.scaled(384, self.width), fc_init, 0.1, "fc384")(x))
    if self.dropout > 0:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = act(dense(layers.scaled(192, self.width), fc_init, 0.1, "fc192")(x))
    if self.dropout > 0:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    # The logits layer computes in float32 whatever the compute dtype.
    logits = nn.Dense(self.num_classes,
                      kernel_init=nn.initializers.truncated_normal(1 / 192.0),
                      bias_init=nn.initializers.zeros_init(),
                      dtype=jnp.float32, name="logits")(x)
    return logits


def build(common: Common, own: dict) -> AlexNetLike:
  radius = own["lrn_depth_radius"]
  if not (isinstance(radius, int) and not isinstance(radius, bool)
          and radius >= 0):
    raise ModelConfigError(
        f"model.alexnet.lrn_depth_radius={radius!r} must be an integer >= 0")
  bias = check_finite("alexnet.lrn_bias", own["lrn_bias"])
  if bias <= 0:
    raise ModelConfigError(
        f"model.alexnet.lrn_bias={own['lrn_bias']!r} must be > 0")
  return AlexNetLike(
      activation=common.activation, norm=common.norm,
      dropout=common.dropout, lrn_depth_radius=radius, lrn_bias=bias,
      lrn_alpha=check_finite("alexnet.lrn_alpha", own["lrn_alpha"], 0.0),
      lrn_beta=check_finite("alexnet.lrn_beta", own["lrn_beta"]),
      **common.module_kwargs)


def describe(m) -> str:
  return f"alexnet{width_text(m)} ({m['norm']}, {m['activation']})"


def stats_layers(module_names):
  # BatchNorm (like LRN) comes after the activation and the pooling here, so
  # every pre-activation is the conv's or dense layer's own output.
  return [(name, name) for name, _ in conv_then_bn_layers(module_names)
          if name in ("conv1", "conv2")] + [
              (name, name) for name in ("fc384", "fc192")
              if name in module_names]


SPEC = ModelSpec(
    name="alexnet",
    summary="the AlexNet-like net of the TensorFlow CIFAR-10 tutorial",
    norms=("lrn", "batchnorm", "none"),
    config=CONFIG, build=build, describe=describe,
    stats_layers=stats_layers, layer_order=("fc384", "fc192"))
