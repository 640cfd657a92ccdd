"""Building blocks shared by the models: activations, LRN, a 3x3 conv with a
fast path for tiny feature maps on XLA CPU, and a cheap 2x2 max pool.

Why the fast paths exist (measured on the 2-core CPU machine, jax 0.10.2,
batch 128, 512 -> 512 channels, fwd+bwd of one 3x3 SAME conv):

  map   lax.conv   'shifted'
  1x1      52 ms       5 ms   (only the centre tap touches real pixels)
  2x2    1100 ms      31 ms   (XLA swaps operands when kernel > input and
                               misses its fast path)
  4x4     150 ms     130 ms   (at 128 channels lax.conv wins: 8 vs 11 ms)
  8x8     690 ms     590 ms   (at 128 channels lax.conv wins: 35 vs 61 ms)

So 'auto' takes the shifted form on CPU only for maps of at most 2x2
(`SHIFTED_MAX_SIZE`), where it wins by 4-35x at every width; at 4x4 and up the
two are close and lax.conv is the safer default.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

Array = jax.Array
Initializer = Callable[..., Array]

# Leaky ReLU keeps Flax's (and PyTorch's) default slope 0.01: small enough that
# it behaves like ReLU, yet no unit is ever fully dead. GELU is the exact erf
# form, the default of both tf.nn.gelu and torch.nn.GELU.
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": nn.relu,
    "leaky_relu": functools.partial(nn.leaky_relu, negative_slope=0.01),
    "elu": nn.elu,
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
    "gelu": functools.partial(nn.gelu, approximate=False),
}

CONV_IMPLS = ("auto", "xla", "shifted")

# Largest feature-map side for which conv_impl='auto' uses the shifted form
# on CPU (see the table in the module docstring).
SHIFTED_MAX_SIZE = 2


class LocalResponseNorm(nn.Module):
  """Local response normalisation across channels, exactly as `tf.nn.lrn`.

    sqr_sum[b, h, w, c] = sum(x[b, h, w, c - r : c + r + 1] ** 2)
    out = x / (bias + alpha * sqr_sum) ** beta

  The window is clipped at the first and last channel. The windowed sum is one
  `reduce_window` over the channel axis: on CPU it was the fastest of the forms
  tried (fwd+bwd at 128x16x16x64: reduce_window 24 ms, a banded matmul 28 ms,
  a cumulative sum 56 ms, nine shifted slices 171 ms), and unlike a cumulative
  sum it has no cancellation error. Computed in float32 whatever the input
  dtype; the output has the input's dtype. No parameters.
  """
  depth_radius: int = 4
  bias: float = 1.0
  alpha: float = 0.001 / 9.0
  beta: float = 0.75

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x32 = x.astype(jnp.float32)
    r = self.depth_radius
    window = (1,) * (x.ndim - 1) + (2 * r + 1,)
    padding = ((0, 0),) * (x.ndim - 1) + ((r, r),)
    sqr_sum = lax.reduce_window(x32 * x32, 0.0, lax.add, window,
                                (1,) * x.ndim, padding)
    out = x32 * (self.bias + self.alpha * sqr_sum) ** -self.beta
    return out.astype(x.dtype)


def shifted_conv3x3(x_BxHxWxC: Array, kernel_3x3xCxD: Array) -> Array:
  """3x3 SAME conv (stride 1) as one matmul over the nine shifted views.

  Equal to the sum over taps (dy, dx) of x_pad[:, dy:dy+H, dx:dx+W] @
  kernel[dy, dx]; stacking the views along channels makes it a single matmul
  of depth 9*C, which measured a little faster than nine separate ones (2x2,
  512 ch: 31 vs 33 ms; 4x4: 127 vs 144 ms). Taps that would only read zero
  padding (all but the centre row/column when H or W is 1) are left out, so a
  1x1 map costs one matmul with the centre tap.
  """
  _, height, width, _ = x_BxHxWxC.shape
  taps_y = (1,) if height == 1 else (0, 1, 2)
  taps_x = (1,) if width == 1 else (0, 1, 2)
  pad_y = 0 if height == 1 else 1
  pad_x = 0 if width == 1 else 1
  x_pad = jnp.pad(x_BxHxWxC, ((0, 0), (pad_y, pad_y), (pad_x, pad_x), (0, 0)))
  # With no padding on an axis, the centre tap starts at offset 0, not 1.
  views = [x_pad[:, dy - 1 + pad_y:dy - 1 + pad_y + height,
                 dx - 1 + pad_x:dx - 1 + pad_x + width, :]
           for dy in taps_y for dx in taps_x]
  taps = [kernel_3x3xCxD[dy, dx] for dy in taps_y for dx in taps_x]
  stacked_x = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
  stacked_kernel = jnp.concatenate(taps, axis=0)
  return stacked_x @ stacked_kernel


def xla_conv3x3(x_BxHxWxC: Array, kernel_3x3xCxD: Array) -> Array:
  return lax.conv_general_dilated(
      x_BxHxWxC, kernel_3x3xCxD, window_strides=(1, 1), padding="SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def resolve_conv_impl(impl: str, height: int, width: int) -> str:
  """'auto' -> 'shifted' on CPU for maps up to SHIFTED_MAX_SIZE, else 'xla'."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"conv impl {impl!r} is not one of {CONV_IMPLS}")
  if impl != "auto":
    return impl
  tiny_map = max(height, width) <= SHIFTED_MAX_SIZE
  return "shifted" if tiny_map and jax.default_backend() == "cpu" else "xla"


class Conv3x3(nn.Module):
  """3x3 SAME stride-1 convolution with a choice of implementation.

  Parameters are 'kernel' [3, 3, Cin, Cout] and optional 'bias' [Cout], the
  names and shapes of `nn.Conv(features, (3, 3))`, whichever `impl` runs, so
  checkpoints move freely between impls (and from nn.Conv). Inputs and kernel
  are cast to `dtype` for the compute; parameters are stored in `param_dtype`.
  """
  features: int
  use_bias: bool = True
  impl: str = "auto"  # 'auto' | 'xla' | 'shifted'
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_features = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init,
                        (3, 3, in_features, self.features), self.param_dtype)
    x = x.astype(self.dtype)
    kernel = kernel.astype(self.dtype)
    impl = resolve_conv_impl(self.impl, x.shape[1], x.shape[2])
    conv = shifted_conv3x3 if impl == "shifted" else xla_conv3x3
    y = conv(x, kernel)
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,),
                        self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


def max_pool_2x2(x_BxHxWxC: Array) -> Array:
  """2x2 stride-2 max pool as reshape + max.

  Same values and gradients as `nn.max_pool(x, (2, 2), strides=(2, 2))`
  (except how a tie shares its gradient), at about half the backward cost on
  XLA CPU, whose select-and-scatter is slow. An odd trailing row or column is
  cropped first, which is what VALID pooling does with it anyway.
  """
  batch, height, width, channels = x_BxHxWxC.shape
  out_h, out_w = height // 2, width // 2
  x = x_BxHxWxC[:, :2 * out_h, :2 * out_w, :]
  x = x.reshape(batch, out_h, 2, out_w, 2, channels)
  return jnp.max(x, axis=(2, 4))
