"""VGG-11/13/16/19 for 32x32 inputs, with optional BatchNorm.

Each int in a layer list is a 3x3 SAME conv with that many channels (then
BatchNorm, then the activation); 'M' is a 2x2 stride-2 max pool and ends a
block. Five pools take 32x32 to 1x1, so the head sees 512 features:

  dropout -> fc1 (512) -> act -> dropout -> fc2 (512) -> act -> logits

Parameter names: conv{block}_{i} and bn{block}_{i} (conv1_1 ... conv5_3),
fc1, fc2, logits.

`block='5x5'` replaces each pair of consecutive 3x3 convs in a block by one
5x5 conv of the same width (the same 5x5 receptive field, one non-linearity
instead of two, 25C^2 weights instead of 18C^2); a conv left over in a block
of odd length stays 3x3. VGG-13, with two convs in each of its five blocks,
becomes five 5x5 convs. (The VGG paper's section 2.3 comparison.)
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from jaxcnn.models import layers
from jaxcnn.models.spec import Common, ModelSpec, check_choice, width_text

POOL = "M"
LAYERS_BY_DEPTH: dict[int, tuple] = {
    11: (64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL),
    13: (64, 64, POOL, 128, 128, POOL, 256, 256, POOL, 512, 512, POOL,
         512, 512, POOL),
    16: (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512,
         POOL, 512, 512, 512, POOL),
    19: (64, 64, POOL, 128, 128, POOL, 256, 256, 256, 256, POOL,
         512, 512, 512, 512, POOL, 512, 512, 512, 512, POOL),
}
HEAD_FEATURES = 512
BLOCK_KINDS = ("3x3", "5x5")

# Config `model.vgg.*`.
CONFIG = dict(
    depth=16,  # 11 | 13 | 16 | 19.
    # '3x3' | '5x5' (each pair of 3x3 convs in a block becomes one 5x5
    # conv; see `conv_plan`).
    block="3x3",
)


def conv_plan(depth: int, block: str = "3x3") -> list:
  """The layer list of a VGG: (kernel size, channels) per conv and POOL.

  '3x3' is LAYERS_BY_DEPTH[depth] with every conv 3x3; '5x5' merges each
  pair of consecutive convs of a block into one 5x5 conv.
  """
  if block not in BLOCK_KINDS:
    raise ValueError(f"unknown VGG block {block!r}; use one of {BLOCK_KINDS}")
  plan, pending = [], []
  for item in LAYERS_BY_DEPTH[depth] + (None,):
    if item not in (POOL, None):
      pending.append(item)
      continue
    if block == "3x3":
      plan += [(3, c) for c in pending]
    else:
      for i in range(0, len(pending) - 1, 2):
        plan.append((5, pending[i + 1]))
      if len(pending) % 2:
        plan.append((3, pending[-1]))
    pending = []
    if item == POOL:
      plan.append(POOL)
  return plan


class VGG(layers.ModelBase):
  """`norm`: 'batchnorm' | 'none'. `width` scales every conv and fc width.
  `conv_impl` picks the conv implementation (see layers.conv_fn);
  `block` is '3x3' (VGG) or '5x5' (see `conv_plan`)."""
  depth: int = 16
  block: str = "3x3"
  activation: str = "relu"
  norm: str = "batchnorm"
  dropout: float = 0.5
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool):
    act = layers.ACTIVATIONS[self.activation]
    use_bn = self.norm == "batchnorm"
    # He init with fan_out, as torchvision's VGG: it keeps the gradient scale
    # through each conv, which is what a deep plain stack needs most; a plain
    # (not truncated) normal, as torch.nn.init.kaiming_normal_.
    conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

    block, index = 1, 1
    for item in conv_plan(self.depth, self.block):
      if item == POOL:
        x = layers.max_pool_2x2(x)
        block, index = block + 1, 1
        continue
      size, channels = item
      # A bias in front of BatchNorm would be cancelled by its mean.
      x = layers.Conv(layers.scaled(channels, self.width), size,
                      use_bias=not use_bn,
                      impl=self.conv_impl,
                      dtype=self.dtype, kernel_init=conv_init,
                      name=f"conv{block}_{index}")(x)
      if use_bn:
        x = self.bn(x, train, f"bn{block}_{index}")
      x = act(x)
      index += 1

    x = x.reshape(x.shape[0], -1)
    head_features = layers.scaled(HEAD_FEATURES, self.width)
    for name in ("fc1", "fc2"):
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
      x = act(nn.Dense(head_features, dtype=self.dtype, name=name)(x))
    # The logits layer computes in float32 whatever the compute dtype.
    return nn.Dense(self.num_classes, dtype=jnp.float32, name="logits")(x)


def build(common: Common, own: dict) -> VGG:
  check_choice("vgg.depth", own["depth"], tuple(LAYERS_BY_DEPTH), " by vgg")
  check_choice("vgg.block", own["block"], BLOCK_KINDS, " by vgg")
  return VGG(depth=own["depth"], block=own["block"],
             activation=common.activation, norm=common.norm,
             dropout=common.dropout, conv_impl=common.conv_impl,
             **common.module_kwargs)


def describe(m) -> str:
  block = "" if m["vgg"]["block"] == "3x3" else f" {m['vgg']['block']}"
  return (f"vgg-{m['vgg']['depth']}{block}{width_text(m)} "
          f"({m['norm']}, {m['activation']})")


SPEC = ModelSpec(
    name="vgg", summary="VGG-11/13/16/19 for 32x32 images",
    norms=("batchnorm", "none"), config=CONFIG, build=build,
    describe=describe)
