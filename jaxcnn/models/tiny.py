"""A model for tests only: two small convs, so a train step takes milliseconds
on CPU while still exercising BatchNorm, dropout and every trainer path.

  conv1 3x3 8 -> bn1 -> act -> maxpool 2 -> conv2 3x3 16 -> bn2 -> act
  -> global average pool -> dropout -> logits

With norm 'lrn' each BatchNorm gives way to local response normalization
after the activation (the AlexNet-like net's order), so a study of
normalizations runs at the tiny scale too.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from jaxcnn.models import layers
from jaxcnn.models.spec import Common, ModelSpec, width_text


class TinyCNN(layers.ModelBase):
  """`norm`: 'batchnorm' | 'lrn' | 'none'. `width` scales the 8 and 16
  channels."""
  activation: str = "relu"
  norm: str = "batchnorm"
  dropout: float = 0.0
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool):
    act = layers.ACTIVATIONS[self.activation]
    use_bn = self.norm == "batchnorm"
    for index, channels in enumerate((8, 16), start=1):
      if index > 1:
        x = layers.max_pool_2x2(x)
      x = layers.Conv3x3(layers.scaled(channels, self.width), use_bias=not use_bn,
                         impl=self.conv_impl, dtype=self.dtype,
                         name=f"conv{index}")(x)
      if use_bn:
        x = self.bn(x, train, f"bn{index}")
      x = act(x)
      if self.norm == "lrn":
        x = layers.LocalResponseNorm(name=f"lrn{index}")(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=jnp.float32, name="logits")(x)


def build(common: Common, own: dict) -> TinyCNN:
  return TinyCNN(activation=common.activation, norm=common.norm,
                 dropout=common.dropout, conv_impl=common.conv_impl,
                 **common.module_kwargs)


SPEC = ModelSpec(
    name="tiny", summary="two small convs, for tests (milliseconds a step)",
    norms=("batchnorm", "lrn", "none"), build=build,
    describe=lambda m: f"tiny{width_text(m)} ({m['norm']}, {m['activation']})")
