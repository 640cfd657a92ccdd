"""CPU kernels for XLA CPU: the same values as the plain XLA ops, computed
faster on this backend. `layers.Conv` and `layers.max_pool` take them when the
backend is CPU and CPU_PATHS is on; GPUs run the plain ops.

- Convolutions go to XLA's Eigen kernels rather than YNNPACK
  (`prefer_eigen_convolutions`, an XLA_FLAGS entry that each entry point and
  the tests' conftest add before XLA starts; importing this module changes
  nothing): 1.3-2x faster on the 2-core machine, kernel gradients included.
  An XLA_FLAGS entry of the user's own for YNNPACK keeps it out. The
  gradients are written out as canonical convolutions (`cpu_conv`), which
  keeps them fast inside lax.scan (several steps per dispatch), and where
  YNNPACK still runs them, its slow kernel gradient is summed over batch
  chunks.
- Convs whose kernel is larger than the map (3x3 on 2x2 and 1x1) use the
  shifted-matmul form (`shifted_conv`; `layers.resolve_conv_impl` decides).
- Max pools keep reduce-window's forward pass and replace its gradient,
  select-and-scatter, which XLA CPU expands into iotas, a variadic reduce-
  window and a scatter, with strided slices and pads (`strided_max_pool`).

Measurements behind each, and the shifted conv's table: docs/performance.md.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax
from jaxlib.version import __version__ as jaxlib_version

Array = jax.Array

# The CPU-only paths with the same values but cheaper gradients
# (`cpu_conv`, `strided_max_pool`) are taken when the backend is CPU and
# this is True; set it False to time or test the plain XLA ops.
CPU_PATHS = True
# `cpu_conv` under YNNPACK: output positions per batch chunk of the kernel
# gradient, and the most chunks (each is one more convolution to compile).
KERNEL_GRAD_POSITIONS = 1024
KERNEL_GRAD_MAX_CHUNKS = 16

# XLA CPU flag that gives convolutions back to Eigen, and the jaxlib versions
# it was checked on (an XLA_FLAGS entry a jaxlib does not know is fatal, so
# others are left alone).
EIGEN_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
EIGEN_CONV_JAXLIB_VERSIONS = ("0.10.",)


def prefer_eigen_convolutions() -> bool:
  """Adds EIGEN_CONV_FLAG to XLA_FLAGS, before XLA reads it, unless the user
  set a YNNPACK flag or this jaxlib is not one it was checked on. Returns
  whether the flag is set.

  On the 2-core AMD EPYC machine (jax 0.10.2, batch 128) XLA's YNNPACK
  convolutions ran VGG-16's at 70-200 GFLOP/s forward and their kernel
  gradients 2-5x slower still; Eigen's ran 145-210 GFLOP/s with kernel
  gradients about as fast as the forward pass (docs/performance.md). XLA reads
  XLA_FLAGS once, when the CPU backend starts, so each entry point
  (`python -m jaxcnn.train`, eval, inspect, study, the benchmarks) and the
  tests' conftest call it first, before any array exists; later it changes
  nothing, and `cpu_convs_use_ynnpack` still sees what the backend really
  does. It is a call, not an import side effect: importing a model leaves
  the environment alone.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if "ynn_fusion_type" in flags:
    return EIGEN_CONV_FLAG in flags
  if not jaxlib_version.startswith(EIGEN_CONV_JAXLIB_VERSIONS):
    return False
  os.environ["XLA_FLAGS"] = f"{flags} {EIGEN_CONV_FLAG}".strip()
  return True


@functools.lru_cache(maxsize=None)
def cpu_convs_use_ynnpack() -> bool:
  """Whether XLA CPU runs convolutions through YNNPACK in this process.

  Only YNNPACK's kernel gradient is slow enough for `cpu_conv` to split;
  XLA's Eigen convolutions (see `prefer_eigen_convolutions`) compute it as
  fast as the forward pass, and splitting only adds work. Decided once, by
  compiling a small kernel-gradient convolution and reading its HLO.
  """
  # Big enough for XLA to hand it to YNNPACK (it keeps tiny ones).
  x = jax.ShapeDtypeStruct((8, 8, 8, 64), jnp.float32)
  kernel = jax.ShapeDtypeStruct((3, 3, 64, 64), jnp.float32)
  kernel_grad = jax.jit(lambda x, k: jax.grad(
      lambda k: jnp.sum(xla_conv(x, k)))(k))
  return "__ynn_fusion" in kernel_grad.lower(x, kernel).compile().as_text()


def shifted_conv(x_BxHxWxC: Array, kernel_KxKxCxD: Array) -> Array:
  """KxK SAME conv (stride 1, K odd) as one matmul over shifted views.

  Equal to the sum over taps (dy, dx) of x_pad[:, dy:dy+H, dx:dx+W] @
  kernel[dy, dx]; stacking the views along channels makes it a single matmul
  of depth taps*C, which measured a little faster than separate ones (3x3,
  2x2, 512 ch: 31 vs 33 ms; 4x4: 127 vs 144 ms). Taps that would only read
  zero padding (offsets of H or more rows, W or more columns) are left out:
  a 1x1 map costs one matmul with the centre tap, a 5x5 kernel on a 2x2 map
  nine.
  """
  _, height, width, _ = x_BxHxWxC.shape
  size = kernel_KxKxCxD.shape[0]
  radius = size // 2
  # Offsets -pad..pad reach real pixels; the padding is only what they read.
  pad_y, pad_x = min(radius, height - 1), min(radius, width - 1)
  x_pad = jnp.pad(x_BxHxWxC, ((0, 0), (pad_y, pad_y), (pad_x, pad_x), (0, 0)))
  offsets = [(oy, ox) for oy in range(-pad_y, pad_y + 1)
             for ox in range(-pad_x, pad_x + 1)]
  views = [x_pad[:, oy + pad_y:oy + pad_y + height,
                 ox + pad_x:ox + pad_x + width, :] for oy, ox in offsets]
  taps = [kernel_KxKxCxD[oy + radius, ox + radius] for oy, ox in offsets]
  stacked_x = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
  stacked_kernel = jnp.concatenate(taps, axis=0)
  return stacked_x @ stacked_kernel


def xla_conv(x_BxHxWxC: Array, kernel_KxKxCxD: Array) -> Array:
  """Plain SAME stride-1 convolution: lax.conv_general_dilated."""
  return lax.conv_general_dilated(
      x_BxHxWxC, kernel_KxKxCxD, window_strides=(1, 1), padding="SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def kernel_grad_chunks(batch: int, height: int, width: int) -> int:
  """Batch chunks that `cpu_conv` sums its kernel gradient over when
  YNNPACK runs the convolutions: about KERNEL_GRAD_POSITIONS output
  positions each, at most KERNEL_GRAD_MAX_CHUNKS, and a divisor of the
  batch."""
  per_chunk = max(1, -(-KERNEL_GRAD_POSITIONS // (height * width)))
  chunks = max(1, min(batch // per_chunk, KERNEL_GRAD_MAX_CHUNKS))
  while batch % chunks:
    chunks -= 1
  return chunks


def _input_grad(g: Array, kernel: Array) -> Array:
  """d(sum(conv(x, k) * g))/dx: g convolved with the kernel flipped in space
  and with its channel axes swapped, given to XLA in the canonical layout."""
  flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
  return lax.conv_general_dilated(
      g, flipped, window_strides=(1, 1), padding="SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _kernel_grad(x: Array, g: Array, size: int, chunks: int) -> Array:
  """d(sum(conv(x, k) * g))/dk, summed over `chunks` batch chunks in
  float32: per chunk, x with images as channels convolved with g as a
  kernel as big as the map, in the canonical layout."""
  batch, height, width, channels = x.shape
  n = batch // chunks
  pad = (size - 1) // 2
  # [chunk, Cin, H, W, image] and [chunk, H, W, image, Cout]: one transpose
  # each, whatever the number of chunks.
  x_t = x.reshape(chunks, n, height, width, channels).transpose(0, 4, 2, 3, 1)
  g_t = g.reshape(chunks, n, height, width, -1).transpose(0, 2, 3, 1, 4)
  total = None
  for i in range(chunks):
    part = lax.conv_general_dilated(
        x_t[i], g_t[i], window_strides=(1, 1),
        padding=((pad, size - 1 - pad), (pad, size - 1 - pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        preferred_element_type=jnp.float32)  # [Cin, kh, kw, Cout]
    total = part if total is None else total + part
  return total.transpose(1, 2, 0, 3)


@jax.custom_vjp
def cpu_conv(x_BxHxWxC: Array, kernel_KxKxCxD: Array) -> Array:
  """`xla_conv`, with its two gradient convolutions written out for XLA CPU.

  The forward pass is `xla_conv` itself. Autodiff leaves the gradient
  convolutions in non-canonical layouts that XLA CPU transposes before its
  fast kernels, but not inside a loop: in the lax.scan of several train
  steps per dispatch they fell to a naive loop nest, 50x slower (AlexNet:
  18 s per step). Here they are canonical convolutions with the transposes
  explicit, fast inside loops and out. Where YNNPACK runs the convolutions
  (`cpu_convs_use_ynnpack`), the kernel gradient is summed over batch chunks
  (`kernel_grad_chunks`): YNNPACK computed it 2-5x slower than the forward
  conv in one piece (VGG-16: half the train step), and about as fast as the
  forward in chunks of about 1024 output positions. Square odd kernels;
  the same sums as autodiff's, the kernel gradient's in another order.
  """
  return xla_conv(x_BxHxWxC, kernel_KxKxCxD)


def _cpu_conv_fwd(x, kernel):
  return xla_conv(x, kernel), (x, kernel)


def _cpu_conv_bwd(residuals, g):
  x, kernel = residuals
  chunks = (kernel_grad_chunks(*x.shape[:3]) if cpu_convs_use_ynnpack()
            else 1)
  grad_kernel = _kernel_grad(x, g, kernel.shape[0], chunks)
  return _input_grad(g, kernel), grad_kernel.astype(kernel.dtype)


cpu_conv.defvjp(_cpu_conv_fwd, _cpu_conv_bwd)


def _pool_geometry(size: int, window: int, stride: int,
                   padding: str) -> tuple[int, int, int]:
  """(output size, padding before, padding after) along one axis, as
  lax.reduce_window / TensorFlow define SAME and VALID."""
  if padding == "SAME":
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return out, total // 2, total - total // 2
  if padding == "VALID":
    return (size - window) // stride + 1, 0, 0
  raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def strided_max_pool(x_BxHxWxC: Array, window: int, stride: int,
                     padding: str) -> Array:
  """Square max pool written with strided slices, and its gradient with pads.

  Same values and the same gradient, bit for bit, as
  `nn.max_pool(x, (window, window), (stride, stride), padding)`, ties
  included: each window's gradient goes to its first maximum in row-major
  order (select-and-scatter's choice), and a pixel shared by several windows
  sums their gradients in the order select-and-scatter does. XLA CPU expands
  select-and-scatter into iotas, a variadic reduce-window and a scatter; for
  AlexNet's 3x3/2 pools at batch 128 that cost 260-360 ms fwd+bwd at 32x32
  and 60-90 ms at 16x16, against 65-90 and 5-15 ms here
  (docs/performance.md).
  """
  # Without differentiation (eval) reduce-window itself is as fast or faster.
  return nn.max_pool(x_BxHxWxC, (window, window), strides=(stride, stride),
                     padding=padding)


def _pool_view(x: Array, dy: int, dx: int, stride: int, out_h: int, out_w: int,
               top: int, left: int) -> Array:
  """view[b, i, j] = x[b, stride*i + dy - top, stride*j + dx - left], -inf
  outside x (reduce-window's padding; it never wins a max against a real
  value). Only the view is padded, never the whole input."""
  _, height, width, _ = x.shape

  def axis_range(offset, size, out):
    # Window indices i with 0 <= stride * i + offset < size.
    first = max(0, -(-(-offset) // stride))
    last = min(out - 1, (size - 1 - offset) // stride)
    return first, last

  i0, i1 = axis_range(dy - top, height, out_h)
  j0, j1 = axis_range(dx - left, width, out_w)
  y0, x0 = stride * i0 + dy - top, stride * j0 + dx - left
  view = x[:, y0:y0 + stride * (i1 - i0) + 1:stride,
           x0:x0 + stride * (j1 - j0) + 1:stride, :]
  if i0 or j0 or i1 < out_h - 1 or j1 < out_w - 1:
    view = jnp.pad(view, ((0, 0), (i0, out_h - 1 - i1), (j0, out_w - 1 - j1),
                          (0, 0)), constant_values=-jnp.inf)
  return view


def _strided_max_pool_fwd(x, window, stride, padding):
  _, height, width, _ = x.shape
  out_h, top, _ = _pool_geometry(height, window, stride, padding)
  out_w, left, _ = _pool_geometry(width, window, stride, padding)
  taps = [_pool_view(x, dy, dx, stride, out_h, out_w, top, left)
          for dy in range(window) for dx in range(window)]
  # Max is exact, so these are reduce-window's values (NaN included).
  out = functools.reduce(jnp.maximum, taps)
  # The tap each window's gradient goes to: its first maximum in row-major
  # order, select-and-scatter's choice. Kept instead of x, so the backward
  # pass reads one small int8 array and none of the input.
  if len(taps) > 127:
    raise ValueError(f"window {window} is too large for an int8 tap index")
  first = jnp.full(out.shape, len(taps) - 1, jnp.int8)
  for k in reversed(range(len(taps) - 1)):
    first = jnp.where(taps[k] == out, jnp.int8(k), first)
  return out, (first, x.shape)


def _strided_max_pool_bwd(window, stride, padding, residuals, g):
  first, x_shape = residuals
  batch, height, width, channels = x_shape
  out_h, top, bottom = _pool_geometry(height, window, stride, padding)
  out_w, left, right = _pool_geometry(width, window, stride, padding)
  # The padded input split into stride x stride interleaved planes: plane
  # (py, px) holds padded pixels (stride*q + py, stride*q' + px). Tap
  # (dy, dx) of window (i, j) lands in plane (dy % s, dx % s) at
  # (i + dy // s, j + dx // s): a shifted copy of the window grid, so each
  # plane is a sum of shifted, masked copies of g. (The plain transpose of the
  # strided slices, interior-padded pads of the full input, had XLA write
  # window**2 input-sized arrays; these planes add up to one.)
  rows = -(-(height + top + bottom) // stride)
  cols = -(-(width + left + right) // stride)
  zero = jnp.zeros((), g.dtype)
  taps = [(dy, dx) for dy in range(window) for dx in range(window)]
  planes = {}
  # A pixel gets one term from every window covering it; taking the taps in
  # reverse order adds those terms in the windows' row-major order, which is
  # select-and-scatter's order, so the sums agree bit for bit.
  for k in reversed(range(len(taps))):
    dy, dx = taps[k]
    my, mx = dy // stride, dx // stride
    part = jnp.where(first == k, g, zero)
    part = jnp.pad(part, ((0, 0), (my, rows - out_h - my),
                          (mx, cols - out_w - mx), (0, 0)))
    key = (dy % stride, dx % stride)
    planes[key] = part if key not in planes else planes[key] + part
  empty = jnp.zeros((batch, rows, cols, channels), g.dtype)
  grid = jnp.stack([
      jnp.stack([planes.get((py, px), empty) for px in range(stride)], axis=3)
      for py in range(stride)], axis=2)  # [b, rows, s, cols, s, c]
  grad = grid.reshape(batch, rows * stride, cols * stride, channels)
  return (grad[:, top:top + height, left:left + width, :],)


strided_max_pool.defvjp(_strided_max_pool_fwd, _strided_max_pool_bwd)
