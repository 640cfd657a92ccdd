"""Building blocks shared by the models: activations, LRN, BatchNorm, the
SAME convolution (`Conv`) and max pooling.

`Conv` and `max_pool` take the CPU kernels of `cpu_kernels` on XLA CPU (same
values, faster there) and the plain XLA ops anywhere else. LRN's gradient is
written out rather than differentiated (any backend).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from jaxcnn.models import cpu_kernels

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
    "silu": nn.silu,
}

CONV_IMPLS = ("auto", "xla", "shifted")


def scaled(channels: int, width: float) -> int:
  """A layer's channel count under the model's width multiplier (>= 1)."""
  return max(1, int(round(channels * width)))


def _channel_window_sum(x: Array, radius: int) -> Array:
  """sum(x[..., c - radius : c + radius + 1]), clipped at both ends."""
  window = (1,) * (x.ndim - 1) + (2 * radius + 1,)
  padding = ((0, 0),) * (x.ndim - 1) + ((radius, radius),)
  return lax.reduce_window(x, 0.0, lax.add, window, (1,) * x.ndim, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def local_response_norm(x: Array, radius: int, bias: float, alpha: float,
                        beta: float) -> Array:
  """`tf.nn.lrn` over the last axis, in float32 (see LocalResponseNorm)."""
  return _lrn_fwd(x, radius, bias, alpha, beta)[0]


def _lrn_fwd(x, radius, bias, alpha, beta):
  x32 = x.astype(jnp.float32)
  base = bias + alpha * _channel_window_sum(x32 * x32, radius)
  # base ** -beta as exp(-beta * log(base)) (base >= bias > 0): within an
  # ulp of XLA CPU's pow, which handles negative bases and integer powers
  # too and took 4x as long here.
  scale = jnp.exp(-beta * jnp.log(base))
  return (x32 * scale).astype(x.dtype), (x, base, scale)


def _lrn_bwd(radius, bias, alpha, beta, residuals, g):
  # out_c = x_c * base_c^-beta with base_c = bias + alpha * sum over c' near
  # c of x_c'^2, so d out_c / d x_m = [c = m] * scale_c
  #   - 2 * alpha * beta * x_c * x_m * scale_c / base_c   (m near c),
  # and "m near c" is symmetric: the second term is the same window sum
  # again. Written out, it reuses the forward pass's base and scale where
  # autodiff would take another power.
  x, base, scale = residuals
  x32, g32 = x.astype(jnp.float32), g.astype(jnp.float32)
  near = _channel_window_sum(g32 * x32 * scale / base, radius)
  grad = g32 * scale - (2.0 * alpha * beta) * x32 * near
  return (grad.astype(x.dtype),)


local_response_norm.defvjp(_lrn_fwd, _lrn_bwd)


def batch_norm(x: Array, *, train: bool, axis_name: str | None, name: str,
               dtype: Any, momentum: float = 0.9,
               use_scale: bool = True) -> Array:
  """The BatchNorm every model uses: PyTorch's eps and default momentum (0.9
  in Flax's convention, the weight of the old running statistics),
  statistics in float32, synchronised over `axis_name` under pmap; the
  output goes back to the compute `dtype`. `use_scale=False` learns only a
  bias (config `model.bn_scale`). Call inside a compact module."""
  return nn.BatchNorm(
      use_running_average=not train, momentum=momentum, epsilon=1e-5,
      use_scale=use_scale, axis_name=axis_name, dtype=jnp.float32,
      name=name)(x).astype(dtype)


class ModelBase(nn.Module):
  """The fields every model has (each adds its own after them) and its
  BatchNorm, `batch_norm` with these fields."""
  num_classes: int = 10
  width: float = 1.0  # Multiplies every layer's channels (`scaled`).
  dtype: Any = jnp.float32  # Compute dtype of convs and dense layers.
  bn_axis_name: str | None = None  # The pmap axis of synchronised BatchNorm.
  bn_momentum: float = 0.9
  bn_scale: bool = True

  def bn(self, x: Array, train: bool, name: str) -> Array:
    """`batch_norm` with the model's settings; call inside its compact
    `__call__`."""
    return batch_norm(x, train=train, axis_name=self.bn_axis_name, name=name,
                      dtype=self.dtype, momentum=self.bn_momentum,
                      use_scale=self.bn_scale)


class LocalResponseNorm(nn.Module):
  """Local response normalisation across channels, exactly as `tf.nn.lrn`.

    sqr_sum[b, h, w, c] = sum(x[b, h, w, c - r : c + r + 1] ** 2)
    out = x / (bias + alpha * sqr_sum) ** beta

  The window is clipped at the first and last channel. The windowed sum is one
  `reduce_window` over the channel axis: on CPU it was the fastest of the forms
  tried (fwd+bwd at 128x16x16x64: reduce_window 24 ms, a banded matmul 28 ms,
  a cumulative sum 56 ms, nine shifted slices 171 ms), and unlike a cumulative
  sum it has no cancellation error. The gradient is written out
  (`local_response_norm`), which halves the backward cost. Computed in
  float32 whatever the input dtype; the output has the input's dtype. No
  parameters.
  """
  depth_radius: int = 4
  bias: float = 1.0
  alpha: float = 0.001 / 9.0
  beta: float = 0.75

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return local_response_norm(x, self.depth_radius, self.bias, self.alpha,
                               self.beta)


def resolve_conv_impl(impl: str, height: int, width: int,
                      kernel_size: int = 3) -> str:
  """'auto' -> 'shifted' on CPU where the kernel is larger than the map
  (3x3 on 2x2 and 1x1, 5x5 on 4x4 and below), else 'xla': the timings in
  docs/performance.md ("Shifted convolutions on small maps")."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"conv impl {impl!r} is not one of {CONV_IMPLS}")
  if impl != "auto":
    return impl
  small_map = kernel_size > max(height, width)
  return "shifted" if small_map and jax.default_backend() == "cpu" else "xla"


def conv_fn(impl: str, height: int, width: int,
            kernel_size: int = 3) -> Callable[[Array, Array], Array]:
  """The function computing a SAME conv for `impl` on this backend.

  'xla' is XLA's convolution; on CPU its gradients go through
  `cpu_kernels.cpu_conv` (unless `cpu_kernels.CPU_PATHS` is off), elsewhere
  it is plain.
  """
  impl = resolve_conv_impl(impl, height, width, kernel_size)
  if impl == "shifted":
    return cpu_kernels.shifted_conv
  if jax.default_backend() == "cpu" and cpu_kernels.CPU_PATHS:
    return cpu_kernels.cpu_conv
  return cpu_kernels.xla_conv


class Conv(nn.Module):
  """SAME stride-1 convolution with a square odd kernel and a choice of
  implementation (`conv_fn`).

  Parameters are 'kernel' [K, K, Cin, Cout] and optional 'bias' [Cout], the
  names and shapes of `nn.Conv(features, (K, K))`, whichever `impl` runs, so
  checkpoints move freely between impls (and from nn.Conv). Inputs and kernel
  are cast to `dtype` for the compute; parameters are stored in `param_dtype`.
  """
  features: int
  kernel_size: int = 3
  use_bias: bool = True
  impl: str = "auto"  # 'auto' | 'xla' | 'shifted'
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    size = self.kernel_size
    if size % 2 != 1:
      raise ValueError(f"kernel_size must be odd, got {size}")
    in_features = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init,
                        (size, size, in_features, self.features),
                        self.param_dtype)
    x = x.astype(self.dtype)
    kernel = kernel.astype(self.dtype)
    y = conv_fn(self.impl, x.shape[1], x.shape[2], size)(x, kernel)
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,),
                        self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class Conv3x3(Conv):
  """`Conv` with a 3x3 kernel (VGG's and the tiny model's convs)."""
  kernel_size: int = 3


def max_pool(x_BxHxWxC: Array, window: int, stride: int,
             padding: str = "VALID") -> Array:
  """`nn.max_pool` with a square window, through
  `cpu_kernels.strided_max_pool` on CPU.

  Elsewhere the native reduce-window and select-and-scatter are the fast
  path (a GPU has a real kernel for them), so the switch is by backend.
  """
  if jax.default_backend() == "cpu" and cpu_kernels.CPU_PATHS:
    return cpu_kernels.strided_max_pool(x_BxHxWxC, window, stride, padding)
  return nn.max_pool(x_BxHxWxC, (window, window), strides=(stride, stride),
                     padding=padding)


def max_pool_2x2(x_BxHxWxC: Array) -> Array:
  """2x2 stride-2 max pool: `max_pool(x, 2, 2)`. An odd trailing row or
  column is left out, as VALID pooling does."""
  return max_pool(x_BxHxWxC, 2, 2, "VALID")

