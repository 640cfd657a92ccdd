"""The input pipeline: the order of each epoch, and the on-device function
that turns it into one step's batch.

The whole uint8 training set sits on every device. The host computes each
epoch's permutation once (a pure function of seed and epoch, see
`epoch_permutation`) and sends it to the devices; inside the compiled step,
`train_batch` picks this device's examples from it by the step counter,
crops, flips, normalizes and (data.jitter_*) color-jitters them. Nothing crosses from the host per step,
and every random choice is a pure function of (seed, step), so a resumed run
repeats an uninterrupted one.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import augment


def epoch_permutation(seed: int, epoch: int, n: int, steps_per_epoch: int,
                      batch_size: int) -> np.ndarray:
  """The example order of one epoch: a pure function of (seed, epoch)."""
  rng = np.random.default_rng([seed, epoch])
  return rng.permutation(n)[:steps_per_epoch * batch_size].astype(np.int32)


def two_epochs(seed: int, epoch: int, n: int, steps_per_epoch: int,
               batch_size: int) -> np.ndarray:
  """The permutations of `epoch` and the next, end to end: what a dispatch
  of several steps reads (it may cross one epoch boundary)."""
  return np.concatenate([
      epoch_permutation(seed, e, n, steps_per_epoch, batch_size)
      for e in (epoch, epoch + 1)])


def flip_coins_key(seed: int) -> jax.Array:
  """The key of each image's own flip coin under flip_mode 'alternate' (a
  key no step key can equal: those are fold_ins of the seed key, this is a
  split). A constant of the compiled step: computed once, at trace time."""
  with jax.ensure_compile_time_eval():
    return jax.random.split(jax.random.PRNGKey(seed))[1]


def train_batch(setup, train_x, train_y, perm2, step, base, device,
                crop_size: int | None = None):
  """This device's shard of the augmented, normalized global batch of
  `step` (traced, inside the pmap'd step).

  train_x, train_y: the resident uint8 training set and its labels; perm2:
  `two_epochs(...)` of the epoch starting at step `base`; device: this
  device's index along the pmap axis; crop_size: the images' side (default
  the data's; data.small_crop_size in a run's early steps, made as
  data.small_crop_mode says). Returns (float images, int labels).
  """
  cfg = setup.config
  global_batch = cfg.train.batch_size
  local_batch = global_batch // setup.num_devices
  offset = device * local_batch
  pos = (step - base) * global_batch + offset
  idx = jax.lax.dynamic_slice_in_dim(perm2, pos, local_batch)
  images = jnp.take(train_x, idx, axis=0)
  labels = jnp.take(train_y, idx, axis=0)
  step_key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), step)
  resize = crop_size is not None and cfg.data.small_crop_mode == "resize"
  images = augment.random_crop_flip(
      images, jax.random.fold_in(step_key, 0), global_batch=global_batch,
      offset=offset, crop=cfg.data.random_crop, padding=cfg.data.crop_padding,
      flip=cfg.data.random_flip, pad_mode=cfg.data.crop_pad_mode,
      flip_mode=cfg.data.flip_mode, epoch=setup.epoch_of(step),
      example_ids=idx, seed_key=flip_coins_key(cfg.seed),
      size=None if resize else crop_size)
  mean, std = setup.mean_std
  x = augment.normalize(images, cfg.data.normalization, mean, std)
  if resize:
    x = augment.downscale(x, crop_size)
  if cfg.data.jitter_brightness or cfg.data.jitter_contrast:
    x = augment.color_jitter(
        x, jax.random.fold_in(step_key, 2), global_batch=global_batch,
        offset=offset, brightness=cfg.data.jitter_brightness,
        contrast=cfg.data.jitter_contrast)
  return x, labels
