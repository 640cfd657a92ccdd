"""Normalization and augmentation of a whole batch on the device.

These run inside the compiled train step, so the host never touches a batch.
Random numbers are drawn for the GLOBAL batch from a key that depends only on
(seed, step), and each device takes its slice: the augmentation an example gets
does not depend on the number of devices, which is what lets a 4-device run
reproduce a 1-device run.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

NORMALIZATIONS = ("channel", "image", "none")


def normalize(images_u8, mode: str, mean, std):
  """uint8 [..., H, W, C] -> float32, by one of NORMALIZATIONS.

  channel: (x/255 - mean) / std with dataset per-channel statistics.
  image:   per-image standardization, as tf.image.per_image_standardization:
           (x - mean(x)) / max(std(x), 1/sqrt(num_pixels)).
  none:    x/255, in [0, 1] and not centred.
  """
  x = images_u8.astype(jnp.float32) / 255.0
  if mode == "channel":
    return (x - mean) / std
  if mode == "image":
    axes = (-3, -2, -1)
    n = x.shape[-3] * x.shape[-2] * x.shape[-1]
    m = jnp.mean(x, axis=axes, keepdims=True)
    s = jnp.std(x, axis=axes, keepdims=True)
    return (x - m) / jnp.maximum(s, 1.0 / jnp.sqrt(n))
  if mode == "none":
    return x
  raise ValueError(f"unknown normalization {mode!r}; use one of {NORMALIZATIONS}")


PAD_MODES = {"zeros": "constant", "reflect": "reflect"}
SMALL_CROP_MODES = ("center", "resize")
FLIP_MODES = ("random", "alternate")
TTA_MODES = ("none", "mirror", "mirror_translate", "mirror_translate_mean")


def random_crop_flip(images_u8, key, *, global_batch: int, offset,
                     crop: bool, padding: int, flip: bool,
                     pad_mode: str = "zeros", flip_mode: str = "random",
                     epoch=None, example_ids=None, seed_key=None,
                     size: int | None = None):
  """Random crop of the padded image and horizontal flip.

  images_u8: this device's [b, H, W, C] slice of a global batch, starting at
  example `offset` of that batch. Draws for the whole global batch, then slices.
  `pad_mode`: 'zeros' or 'reflect' (see PAD_MODES). `flip_mode` 'random'
  flips each example with probability 1/2 from `key`; 'alternate' flips an
  image iff its own fixed coin (from `seed_key` and its dataset index in
  `example_ids`) differs from the parity of `epoch`, so every odd epoch
  flips exactly the images an even epoch leaves, and the reverse.

  `size` (default None: the output is H x W): the output's side, for square
  images only. A smaller window is the middle size x size of the crop the
  full side would take (the same draws, so the same translations), cut
  before the flip: with H - size even it is exactly the centre of the
  full-size output
  (data.small_crop_size: the early, cheaper steps of a run).
  """
  b, h, w, _ = images_u8.shape
  if size is None:
    out_h, out_w = h, w
  elif h != w or not 0 < size <= h:
    raise ValueError(f"random_crop_flip: size {size} for {h}x{w} images "
                     "(square images, 0 < size <= side)")
  else:
    out_h = out_w = size
  margin_h, margin_w = (h - out_h) // 2, (w - out_w) // 2
  crop_key, flip_key = jax.random.split(key)
  out = images_u8
  if crop and padding > 0:
    shifts = jax.random.randint(crop_key, (global_batch, 2), 0, 2 * padding + 1)
    shifts = jax.lax.dynamic_slice_in_dim(shifts, offset, b, axis=0)
    padded = jnp.pad(out, ((0, 0), (padding, padding), (padding, padding),
                           (0, 0)), mode=PAD_MODES[pad_mode])

    def crop_one(img, shift):
      return jax.lax.dynamic_slice(
          img, (shift[0] + margin_h, shift[1] + margin_w, 0),
          (out_h, out_w, img.shape[-1]))

    out = jax.vmap(crop_one)(padded, shifts)
  elif (out_h, out_w) != (h, w):
    out = out[:, margin_h:margin_h + out_h, margin_w:margin_w + out_w, :]
  if flip:
    if flip_mode == "alternate":
      flips = alternating_flips(seed_key, example_ids, epoch)
    else:
      flips = jax.random.bernoulli(flip_key, 0.5, (global_batch,))
      flips = jax.lax.dynamic_slice_in_dim(flips, offset, b, axis=0)
    out = jnp.where(flips[:, None, None, None], out[:, :, ::-1, :], out)
  return out


def downscale(x, size: int):
  """A float batch x [b, H, W, C] scaled down to size x size: antialiased
  linear interpolation (each output pixel a weighted mean of the input
  pixels under it, the weights summing to 1, so it commutes with a
  per-channel affine normalization)."""
  b, _, _, c = x.shape
  return jax.image.resize(x, (b, size, size, c), method="linear",
                          antialias=True)


def color_jitter(x, key, *, global_batch: int, offset, brightness: float,
                 contrast: float):
  """(x + u) * (1 + v) per example of a normalized batch x [b, H, W, C]
  (this device's slice of a global batch, from example `offset`), with u ~
  U(-brightness, brightness) and v ~ U(-contrast, contrast) drawn for the
  whole global batch from `key`: hiverge's batch_color_jitter."""
  b = x.shape[0]
  draws = jax.random.uniform(key, (global_batch, 2), jnp.float32, -1.0, 1.0)
  draws = jax.lax.dynamic_slice_in_dim(draws, offset, b, axis=0)
  u = (draws[:, 0] * brightness).astype(x.dtype)[:, None, None, None]
  v = (draws[:, 1] * contrast).astype(x.dtype)[:, None, None, None]
  return (x + u) * (1 + v)


def alternating_flips(seed_key, example_ids, epoch):
  """Bool [len(example_ids)]: whether each image is flipped in `epoch`: its
  own fair coin (a pure function of `seed_key` and its index) XOR whether
  the epoch is odd."""
  coins = jax.vmap(lambda i: jax.random.bernoulli(
      jax.random.fold_in(seed_key, i)))(example_ids)
  return coins ^ (epoch % 2 == 1)


def _shift(x, dy: int, dx: int):
  """x [B, H, W, C] moved by (dy, dx) pixels, the border reflected: the
  window at (1 + dy, 1 + dx) of the 1-pixel reflect-padded image."""
  _, h, w, _ = x.shape
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  return padded[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w, :]


def tta_logits(apply_fn, x, mode: str):
  """Logits averaged over test-time augmentations of a normalized batch x.

  'none': apply_fn(x). 'mirror': the mean of x and its mirror image.
  'mirror_translate': half the 'mirror' logits plus half the mean of the
  'mirror' logits of x shifted one pixel up-left and one down-right (border
  reflected), airbench's TTA. 'mirror_translate_mean': the plain mean of
  the same six views' logits (the image and its two shifts, each with its
  mirror), hiverge's cifar10_speedrun TTA.
  """
  def mirror(x):
    return 0.5 * apply_fn(x) + 0.5 * apply_fn(x[:, :, ::-1, :])

  if mode == "none":
    return apply_fn(x)
  if mode == "mirror":
    return mirror(x)
  if mode == "mirror_translate":
    shifted = 0.5 * mirror(_shift(x, -1, -1)) + 0.5 * mirror(_shift(x, 1, 1))
    return 0.5 * mirror(x) + 0.5 * shifted
  if mode == "mirror_translate_mean":
    return (mirror(x) + mirror(_shift(x, -1, -1)) + mirror(_shift(x, 1, 1))
            ) / 3.0
  raise ValueError(f"unknown test-time augmentation {mode!r}; use one of "
                   f"{', '.join(TTA_MODES)}")
