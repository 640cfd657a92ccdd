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


def random_crop_flip(images_u8, key, *, global_batch: int, offset,
                     crop: bool, padding: int, flip: bool):
  """Random crop of the zero-padded image and horizontal flip.

  images_u8: this device's [b, H, W, C] slice of a global batch, starting at
  example `offset` of that batch. Draws for the whole global batch, then slices.
  """
  b, h, w, _ = images_u8.shape
  crop_key, flip_key = jax.random.split(key)
  out = images_u8
  if crop and padding > 0:
    shifts = jax.random.randint(crop_key, (global_batch, 2), 0, 2 * padding + 1)
    shifts = jax.lax.dynamic_slice_in_dim(shifts, offset, b, axis=0)
    padded = jnp.pad(out, ((0, 0), (padding, padding), (padding, padding),
                           (0, 0)))

    def crop_one(img, shift):
      return jax.lax.dynamic_slice(img, (shift[0], shift[1], 0),
                                   (h, w, img.shape[-1]))

    out = jax.vmap(crop_one)(padded, shifts)
  if flip:
    flips = jax.random.bernoulli(flip_key, 0.5, (global_batch,))
    flips = jax.lax.dynamic_slice_in_dim(flips, offset, b, axis=0)
    out = jnp.where(flips[:, None, None, None], out[:, :, ::-1, :], out)
  return out
