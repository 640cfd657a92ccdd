"""Synthetic data: seeded class patterns plus noise, learnable, for smoke runs
and tests on machines with no data at all."""
from __future__ import annotations

import functools

import numpy as np

from jaxcnn.data.dataset import DataError, Dataset, check_count

_SYN_WAVES = 3  # cosine waves per class pattern and channel
_SYN_MAX_FREQ = 2  # highest spatial frequency (cycles per image)
_SYN_SIGNAL = 24.0  # class pattern amplitude (pixel units, per unit std)
_SYN_CLUTTER = 24.0  # amplitude of the per-example random low-freq pattern
_SYN_NOISE = 24.0  # std of per-pixel white noise
_SYN_CHUNK = 1000  # examples generated at once (bounds float32 temporaries)


def make_synthetic(num_train: int, num_test: int, num_classes: int = 10,
                   image_size: int = 32, seed: int = 0) -> Dataset:
  """A seeded, learnable image classification problem.

  Each class has a fixed smooth colour pattern: a sum of low-frequency cosine
  waves per channel, zero-mean so that the average colour says nothing about
  the class. An example is its class pattern, cyclically shifted by a random
  offset and scaled by a random contrast, plus a random low-frequency clutter
  pattern of the same kind, plus white noise, around grey 128, clipped to
  uint8. A small convnet learns it well above chance in a few hundred steps,
  but not in ten. Train and test come from different sub-seeds of `seed`;
  the patterns are shared. Labels are balanced (equal counts when the size
  is a multiple of `num_classes`).
  """
  check_count("num_train", num_train)
  check_count("num_test", num_test)
  if num_classes < 1 or image_size < 1:
    raise DataError(f"make_synthetic needs num_classes >= 1 and image_size >= "
                    f"1, got {num_classes} and {image_size}")
  # Fresh arrays each call (a caller may write into them); the generation,
  # seconds for tens of thousands of images, is done once per argument set.
  arrays = _generate(int(num_train), int(num_test), int(num_classes),
                     int(image_size), int(seed))
  return Dataset(*(a.copy() for a in arrays),
                 tuple(f"class{i}" for i in range(num_classes)), "synthetic")


@functools.lru_cache(maxsize=4)
def _generate(num_train: int, num_test: int, num_classes: int,
              image_size: int, seed: int) -> tuple[np.ndarray, ...]:
  """make_synthetic's (train images, train labels, test images, test
  labels), read-only: a pure function of its arguments, so it is cached."""
  pattern_seq, train_seq, test_seq = np.random.SeedSequence(seed).spawn(3)
  patterns = _random_patterns(np.random.default_rng(pattern_seq), num_classes,
                              image_size)
  train_images, train_labels = _synthetic_split(
      np.random.default_rng(train_seq), patterns, num_train)
  test_images, test_labels = _synthetic_split(
      np.random.default_rng(test_seq), patterns, num_test)
  arrays = (train_images, train_labels, test_images, test_labels)
  for a in arrays:
    a.flags.writeable = False
  return arrays


def _random_patterns(rng: np.random.Generator, count: int,
                     size: int) -> np.ndarray:
  """`count` smooth zero-mean patterns [count, S, S, 3] of unit std each.

  Each channel is a sum of cosine waves with whole periods across the image:
  zero-mean, and seamless under a cyclic shift. A wave cos(u + v), u from the
  row and v from the column, is cos u cos v - sin u sin v, so a pattern is one
  small matrix product instead of S*S cosines per wave.
  """
  shape = (count, 3, _SYN_WAVES)
  freqs = rng.integers(-_SYN_MAX_FREQ, _SYN_MAX_FREQ + 1, size=shape + (2,))
  zero = (freqs == 0).all(-1)
  freqs[zero, 0] = 1  # a (0, 0) wave would be a constant colour
  phases = rng.uniform(0, 2 * np.pi, size=shape)
  amps = rng.uniform(0.5, 1.0, size=shape)
  coords = 2 * np.pi * np.arange(size) / size
  u = freqs[..., 0, None] * coords + phases[..., None]  # [n, 3, W, S] rows
  v = freqs[..., 1, None] * coords  # [n, 3, W, S] columns
  rows = np.concatenate([np.cos(u), -np.sin(u)], axis=2) * np.concatenate(
      [amps, amps], axis=2)[..., None]
  cols = np.concatenate([np.cos(v), np.sin(v)], axis=2)
  pattern = np.matmul(rows.swapaxes(2, 3), cols)  # [n, 3, S(y), S(x)]
  pattern = pattern.transpose(0, 2, 3, 1)
  std = pattern.reshape(count, -1).std(axis=1)
  return (pattern / std[:, None, None, None]).astype(np.float32)


def _synthetic_split(rng: np.random.Generator, patterns: np.ndarray,
                     count: int) -> tuple[np.ndarray, np.ndarray]:
  """`count` examples with balanced labels drawn from `patterns`."""
  num_classes, size = patterns.shape[0], patterns.shape[1]
  labels = rng.permutation(np.arange(count) % num_classes).astype(np.int32)
  images = np.empty((count, size, size, 3), np.uint8)
  pixels = np.arange(size)
  for start in range(0, count, _SYN_CHUNK):
    y = labels[start:start + _SYN_CHUNK]
    n = len(y)
    shift = rng.integers(0, size, size=(2, n, 1))
    rows = ((pixels - shift[0]) % size)[:, :, None]
    cols = ((pixels - shift[1]) % size)[:, None, :]
    signal = patterns[y[:, None, None], rows, cols]  # cyclic shift per example
    contrast = rng.uniform(0.6, 1.4, size=(n, 1, 1, 1)).astype(np.float32)
    clutter = _random_patterns(rng, n, size)
    noise = rng.standard_normal((n, size, size, 3), dtype=np.float32)
    x = (128.0 + _SYN_SIGNAL * contrast * signal + _SYN_CLUTTER * clutter +
         _SYN_NOISE * noise)
    images[start:start + n] = np.clip(np.rint(x), 0, 255).astype(np.uint8)
  return images, labels

