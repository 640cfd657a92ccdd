"""The input pipeline: the order of each epoch, and the on-device function
that turns it into one step's batch.

The whole uint8 training set sits on every device. The host computes each
epoch's permutation once (a pure function of seed and epoch, see
`epoch_permutation`; with data.prune_fraction, from the loss table too:
`pruned_permutation`) and sends it to the devices; inside the compiled step,
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


def pruned_permutation(seed: int, epoch: int, scores: np.ndarray, kept: int,
                       steps: int, batch_size: int) -> np.ndarray:
  """The example order of a pruned data epoch (data.prune_fraction): the
  `kept` examples of highest `scores` (each example's loss when it was last
  trained on; never-trained ones are inf and come first; ties broken at
  random, so a table of ties is a random subset, not the first indices),
  in an order that is a pure function of (seed, epoch, scores), cut to
  `steps` whole batches."""
  scores = np.asarray(scores, np.float32)
  n = len(scores)
  if not 0 < kept <= n or steps * batch_size > kept:
    raise ValueError(f"cannot keep {kept} of {n} examples for "
                     f"{steps} batches of {batch_size}")
  tiebreak = np.random.default_rng([seed, epoch, 1]).permutation(n)
  hardest = np.sort(np.lexsort((tiebreak, -scores))[:kept])
  rng = np.random.default_rng([seed, epoch])
  return hardest[rng.permutation(kept)[:steps * batch_size]].astype(np.int32)


def feed_permutations(setup, epoch: int, scores: np.ndarray | None = None
                      ) -> np.ndarray:
  """What a dispatch starting in data epoch `epoch` reads (perm2 of
  `train_batch`): that epoch's order and the next one's, end to end, always
  2 * steps_per_epoch batches long (one compiled shape). With data pruning
  a pruned epoch's order comes from `scores` (the loss table at its start)
  and the next one, not known yet, is zeros: a dispatch never runs past
  the end of a data epoch whose successor is pruned (see
  `RunSteps.dispatch_end`)."""
  steps, cfg = setup.steps, setup.config
  batch, n = cfg.train.batch_size, len(setup.data.train_labels)
  spe = steps.steps_per_epoch
  if not setup.pruning:
    return two_epochs(cfg.seed, epoch, n, spe, batch)
  parts = []
  for e in (epoch, epoch + 1):
    if not steps.pruned(e):
      parts.append(epoch_permutation(cfg.seed, e, n, spe, batch))
    elif e == epoch:
      if scores is None:
        raise ValueError(f"data epoch {epoch} is pruned: its order needs the "
                         "loss table")
      parts.append(pruned_permutation(cfg.seed, e, scores, steps.kept,
                                      steps.pruned_steps, batch))
  order = np.concatenate(parts)
  return np.concatenate([order, np.zeros(2 * spe * batch - len(order),
                                         np.int32)])


def flip_coins_key(seed: int) -> jax.Array:
  """The key of each image's own flip coin under flip_mode 'alternate' (a
  key no step key can equal: those are fold_ins of the seed key, this is a
  split). A constant of the compiled step: computed once, at trace time."""
  with jax.ensure_compile_time_eval():
    return jax.random.split(jax.random.PRNGKey(seed))[1]


def train_batch(setup, train_x, train_y, perm2, step, base, device,
                crop_size: int | None = None, with_ids: bool = False):
  """This device's shard of the augmented, normalized global batch of
  `step` (traced, inside the pmap'd step).

  train_x, train_y: the resident uint8 training set and its labels; perm2:
  `two_epochs(...)` of the epoch starting at step `base`; device: this
  device's index along the pmap axis; crop_size: the images' side (default
  the data's; data.small_crop_size in a run's early steps, made as
  data.small_crop_mode says). Returns (float images, int labels), and the
  examples' indices in the training set with `with_ids`.
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
  return (x, labels, idx) if with_ids else (x, labels)
