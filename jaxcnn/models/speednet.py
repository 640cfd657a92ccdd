"""speednet: the VGG-like network of the CIFAR-10 speed records (airbench94,
Jordan 2024, arXiv 2404.00498), written for jaxcnn.

  whiten: 2x2 VALID conv, 3 -> 24 channels, frozen patch-whitening filters
          (with a trainable bias) -> GELU                          32 -> 31
  group1..3: conv3x3 -> max-pool 2 -> BN -> act -> conv3x3 -> BN -> act
          (act: model.speednet.group_activation, GELU; hiverge's SiLU)
          widths (64, 256, 256) x `width`                  31 -> 15 -> 7 -> 3
  global max-pool -> linear (no bias) -> x logit_scale (1/9)       3 -> 1
          (airbench's 3x3 max-pool of its 3x3 map; smaller images,
          e.g. 24 -> 23 -> 11 -> 5 -> 2, take the max of their 2x2 map)

The whitening filters are computed from the training images by
`whitening_kernel` (`init_from_data`, which the trainer calls once at
initialisation): the eigenvectors of the 2x2x3 patch second-moment matrix,
each divided by the square root of its eigenvalue, and their negatives, so a
GELU after them keeps both signs. The kernel is held out of the gradient
(`stop_gradient`); a parameter group with frozen_from_epochs=0 (the recipes'
`whiten_kernel`) keeps weight decay and momentum off it too. Every 3x3 conv starts as the identity on its first
input-many output channels (Dirac init) over PyTorch's default uniform init,
so the untrained network passes its input through: an implicit residual.

Parameter names: whiten/{kernel,bias}, group{g}/conv{1,2}/kernel,
group{g}/bn{1,2}/{bias,scale}, head/kernel.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxcnn.models import layers
from jaxcnn.models.spec import (Common, DataInit, ModelConfigError, ModelSpec,
                                check_finite, check_positive_int, width_text)

WHITEN_SIZE = 2  # Patch size of the whitening layer.
WHITEN_EPS = 5e-4  # Added to each eigenvalue before the square root.

# Config `model.speednet.*`.
CONFIG = dict(
    # Channels of the three conv groups (times model.width).
    widths=(64, 256, 256),
    logit_scale=1.0 / 9.0,  # The factor on the logits.
    # Standard deviation of the head's initial kernel (PyTorch's default
    # init rescaled to exactly this); 0 keeps PyTorch's default.
    head_init_std=0.0,
    # Whether the first layer is the frozen 2x2 patch-whitening layer
    # (False: an ordinary trainable conv), and how many training images
    # its filters are computed from.
    whiten=True,
    whiten_images=5000,
    # The activation inside the conv groups (one of model.activation's
    # choices: airbench's GELU, hiverge's SiLU); the whitening layer's stays
    # GELU, as in both.
    group_activation="gelu",
)

# PyTorch's default conv and linear init: uniform(+-1/sqrt(fan_in)).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in",
                                                      "uniform")


def dirac_init(key, shape, dtype=jnp.float32):
  """PyTorch's default conv init, with output channel i < Cin set to the
  identity on input channel i (a centred one-hot 3x3 filter)."""
  size, _, cin, cout = shape
  kernel = torch_default_init(key, shape, dtype)
  n = min(cin, cout)
  identity = jnp.zeros((size, size, cin, n), dtype)
  identity = identity.at[size // 2, size // 2, jnp.arange(n),
                         jnp.arange(n)].set(1)
  return kernel.at[..., :n].set(identity)


def unit_std_head_init(std: float):
  """PyTorch's default linear init rescaled so the kernel's standard
  deviation (over all its entries, as drawn) is exactly `std`: airbench94_muon
  divides its head by its std and its logits by the width instead of 9."""
  def init(key, shape, dtype=jnp.float32):
    kernel = torch_default_init(key, shape, dtype)
    return kernel * (std / jnp.std(kernel))
  return init


def patch_moment(images_NxHxWxC: np.ndarray, size: int = WHITEN_SIZE,
                       chunk: int = 500) -> np.ndarray:
  """Second moment (not centred) of all size x size patches, flattened in
  (row, column, channel) order, the order of a conv kernel's first three
  axes: [size*size*C, size*size*C], float64."""
  x = np.asarray(images_NxHxWxC)
  n, h, w, c = x.shape
  dim = size * size * c
  total = np.zeros((dim, dim), np.float64)
  count = 0
  for start in range(0, n, chunk):
    part = x[start:start + chunk].astype(np.float64)
    views = [part[:, dy:h - size + 1 + dy, dx:w - size + 1 + dx, :]
             for dy in range(size) for dx in range(size)]
    flat = np.stack(views, axis=3).reshape(-1, dim)
    total += flat.T @ flat
    count += len(flat)
  return total / max(count, 1)


def whitening_kernel(images_NxHxWxC: np.ndarray, size: int = WHITEN_SIZE,
                     eps: float = WHITEN_EPS) -> np.ndarray:
  """[size, size, C, 2 * size*size*C] filters that whiten the patches of
  `images` (normalised floats): filter j < size*size*C is the j-th
  eigenvector of the patch moment matrix (largest eigenvalue first) over
  sqrt(eigenvalue + eps); the next ones are their negatives."""
  c = images_NxHxWxC.shape[-1]
  moment = patch_moment(images_NxHxWxC, size)
  eigenvalues, eigenvectors = np.linalg.eigh(moment)
  order = np.argsort(eigenvalues)[::-1]
  eigenvalues = np.clip(eigenvalues[order], 0.0, None)
  scaled = eigenvectors[:, order] / np.sqrt(eigenvalues + eps)
  filters = np.concatenate([scaled, -scaled], axis=1)
  return filters.reshape(size, size, c, -1).astype(np.float32)


class WhitenConv(nn.Module):
  """VALID WHITEN_SIZE x WHITEN_SIZE conv with a bias. `frozen`: its kernel
  is read through stop_gradient, so no gradient is computed for it, and its
  init is a placeholder until `SpeedNet.init_from_data` sets the whitening
  filters; otherwise it is an ordinary trainable conv."""
  features: int
  dtype: Any = jnp.float32
  frozen: bool = True

  @nn.compact
  def __call__(self, x):
    kernel = self.param(
        "kernel", torch_default_init,
        (WHITEN_SIZE, WHITEN_SIZE, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,),
                      jnp.float32)
    if self.frozen:
      kernel = jax.lax.stop_gradient(kernel)
    kernel = kernel.astype(self.dtype)
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel, (1, 1), "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias.astype(self.dtype)


class ConvGroup(nn.Module):
  features: int
  dtype: Any = jnp.float32
  conv_impl: str = "auto"
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_scale: bool = True
  activation: str = "gelu"

  @nn.compact
  def __call__(self, x, train: bool):
    act = layers.ACTIVATIONS[self.activation]

    def bn(x, name):
      return layers.batch_norm(x, train=train, axis_name=self.bn_axis_name,
                               name=name, dtype=self.dtype,
                               momentum=self.bn_momentum,
                               use_scale=self.bn_scale)

    def conv(x, name):
      return layers.Conv(self.features, 3, use_bias=False,
                         impl=self.conv_impl, dtype=self.dtype,
                         kernel_init=dirac_init, name=name)(x)

    x = layers.max_pool_2x2(conv(x, "conv1"))
    x = act(bn(x, "bn1"))
    return act(bn(conv(x, "conv2"), "bn2"))


class SpeedNet(layers.ModelBase):
  """See the module docstring. `widths`: the three groups' channels before
  the `width` multiplier. `whiten=False` makes the first layer an ordinary
  trainable conv of the same shape (the ablation of the whitening). `norm`
  must be 'batchnorm'; `activation` and `dropout` are not used (no dropout,
  as the recipe; the groups' activation is `group_activation`)."""
  widths: Sequence[int] = (64, 256, 256)
  logit_scale: float = 1.0 / 9.0
  head_init_std: float = 0.0  # 0: PyTorch's default; else unit_std_head_init.
  whiten: bool = True
  conv_impl: str = "auto"
  group_activation: str = "gelu"

  @nn.compact
  def __call__(self, x, train: bool, stem_frozen: bool = False,
               frozen_blocks: int = 0):
    """`stem_frozen`: no gradient flows into the stem; `frozen_blocks` k
    (with the stem frozen): none into the first k conv groups either, so
    their backward pass is not computed (see BLOCK_PARAMS)."""
    if frozen_blocks and not stem_frozen:
      raise ValueError("frozen_blocks needs stem_frozen: the stem's gradient "
                       "flows through the blocks")
    x = WhitenConv(2 * WHITEN_SIZE * WHITEN_SIZE * x.shape[-1],
                   dtype=self.dtype, frozen=self.whiten, name="whiten")(x)
    x = layers.ACTIVATIONS["gelu"](x)
    if stem_frozen:
      x = jax.lax.stop_gradient(x)
    for g, features in enumerate(self.widths, start=1):
      x = ConvGroup(layers.scaled(features, self.width), dtype=self.dtype,
                    conv_impl=self.conv_impl, bn_axis_name=self.bn_axis_name,
                    bn_momentum=self.bn_momentum, bn_scale=self.bn_scale,
                    activation=self.group_activation,
                    name=f"group{g}")(x, train)
      if g <= frozen_blocks:
        x = jax.lax.stop_gradient(x)
    # airbench's MaxPool2d(3) on the 3x3 map of a 28-32 pixel image, as a
    # global max: the same numbers there, and any side down to 9 pixels
    # trains the same parameters (data.small_crop_size).
    x = jnp.max(x, axis=(1, 2))
    head_init = (unit_std_head_init(self.head_init_std)
                 if self.head_init_std > 0 else torch_default_init)
    logits = nn.Dense(self.num_classes, use_bias=False, dtype=jnp.float32,
                      kernel_init=head_init, name="head")(x)
    return logits * self.logit_scale

  def init_from_data(self, params: dict, images_NxHxWxC: np.ndarray) -> dict:
    """`params` with the whitening kernel computed from `images`
    (normalised float training images: the trainer passes a seeded sample of
    model.speednet.whiten_images of them); as they are with `whiten=False`."""
    if not self.whiten:
      return params
    kernel = whitening_kernel(np.asarray(images_NxHxWxC))
    old = params["whiten"]["kernel"]
    if kernel.shape != old.shape:
      raise ValueError(f"whitening kernel {kernel.shape} != {old.shape}")
    whiten = {**params["whiten"], "kernel": jnp.asarray(kernel, old.dtype)}
    return {**params, "whiten": whiten}


# The parameters before the first conv group. Once the optimizer freezes all
# of them (state.Setup.stem_frozen_from), the train step calls the model with
# stem_frozen=True: no gradient flows into the stem, so the first conv's
# input gradient is not computed (PyTorch's autograd skips it by itself once
# they stop requiring gradients).
STEM_PARAMS = ("whiten/kernel", "whiten/bias")
# The conv groups after the stem, as regexes of their parameter paths: once
# the optimizer freezes the stem and every parameter of the first k groups
# (state.Setup.frozen_blocks_from), the train step calls the model with
# frozen_blocks=k, and the backward pass stops at group k + 1 (their
# BatchNorm statistics still follow the batches, as in PyTorch's train mode
# with requires_grad=False). The last group is left out: freezing the whole
# net is not training it.
BLOCK_PARAMS = (r"^group1/", r"^group2/")


def build(common: Common, own: dict) -> SpeedNet:
  widths = tuple(own["widths"])
  if len(widths) != 3 or not all(
      isinstance(w, int) and not isinstance(w, bool) and w > 0
      for w in widths):
    raise ModelConfigError(
        f"model.speednet.widths={widths!r} must be three positive integers")
  check_positive_int("speednet.whiten_images", own["whiten_images"])
  if own["group_activation"] not in layers.ACTIVATIONS:
    raise ModelConfigError(
        f"model.speednet.group_activation={own['group_activation']!r}; use "
        f"one of {', '.join(layers.ACTIVATIONS)}")
  head_std = check_finite("speednet.head_init_std", own["head_init_std"], 0.0,
                          " (0: PyTorch's default init)")
  return SpeedNet(widths=widths,
                  logit_scale=check_finite("speednet.logit_scale",
                                           own["logit_scale"]),
                  head_init_std=head_std, whiten=bool(own["whiten"]),
                  group_activation=own["group_activation"],
                  conv_impl=common.conv_impl, **common.module_kwargs)


def describe(m) -> str:
  # Its activation is the groups', whatever model.activation says.
  own = m["speednet"]
  widths = "/".join(str(w) for w in own["widths"])
  return (f"speednet {widths}{width_text(m)} (batchnorm, "
          f"{own.get('group_activation', 'gelu')})")


SPEC = ModelSpec(
    name="speednet",
    summary="the VGG-like net of the CIFAR-10 speed records (airbench94)",
    norms=("batchnorm",), config=CONFIG, build=build, describe=describe,
    # stats_layers: the default finds no top-level conv* or fc* module here
    # (the convs are inside the groups), so the per-layer activation
    # statistics are left out; gradient and weight statistics remain.
    data_init=DataInit(num_images=lambda own: int(own["whiten_images"]),
                       apply=lambda model, params, images:
                       model.init_from_data(params, images)),
    stem_params=STEM_PARAMS, block_params=BLOCK_PARAMS)
