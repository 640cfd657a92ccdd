"""The Dataset type every source returns, and what all sources share: the
error type, limits (class-balanced subsets) and per-channel statistics."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

SPLITS = ("train", "test")
# The splits a Dataset holds: the sources' two, and the validation images
# held out of the training ones (empty unless data.validation_size > 0).
ALL_SPLITS = ("train", "validation", "test")
# Limits pick the same images whatever the run's seed, so runs that differ
# only in seed are compared on the same data.
SUBSET_SEED = 0
# The validation split is seeded apart from the limits (and, like them, not
# by the run's seed): every seed of a study holds out the same images.
VALIDATION_SEED = (SUBSET_SEED, 1)
_STATS_CHUNK = 1 << 20  # pixels per chunk in channel_stats (cache-sized)


class DataError(Exception):
  """A data problem the user can fix: bad source, missing or bad files."""


# --- Dataset -----------------------------------------------------------------


@dataclasses.dataclass(eq=False, repr=False)
class Dataset:
  """Both splits of a dataset in host memory.

  Checked on construction, so a source that produced the wrong dtype or shape
  fails here and not deep inside a jitted train step.
  """
  train_images: np.ndarray  # uint8 [N, H, W, 3]
  train_labels: np.ndarray  # int32 [N]
  test_images: np.ndarray  # uint8 [M, H, W, 3]
  test_labels: np.ndarray  # int32 [M]
  class_names: tuple[str, ...]
  source: str  # The source string it came from.
  # Held out of the training images (hold_out_validation); None: empty.
  validation_images: np.ndarray | None = None  # uint8 [V, H, W, 3]
  validation_labels: np.ndarray | None = None  # int32 [V]

  def __post_init__(self):
    self.class_names = tuple(self.class_names)
    if self.validation_images is None:
      self.validation_images = np.zeros((0,) + self.train_images.shape[1:],
                                        np.uint8)
      self.validation_labels = np.zeros((0,), np.int32)
    for split in ALL_SPLITS:
      _check_split(split, getattr(self, f"{split}_images"),
                   getattr(self, f"{split}_labels"), len(self.class_names))
    if self.train_images.shape[1:] != self.test_images.shape[1:]:
      raise ValueError(
          f"train images are {self.train_images.shape[1:]} but test images "
          f"are {self.test_images.shape[1:]}")
    if self.validation_images.shape[1:] != self.train_images.shape[1:]:
      raise ValueError(
          f"train images are {self.train_images.shape[1:]} but validation "
          f"images are {self.validation_images.shape[1:]}")

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(int(d) for d in self.train_images.shape[1:])

  def __repr__(self) -> str:
    # The default dataclass repr would print every pixel.
    return (f"Dataset(source={self.source!r}, train={len(self.train_labels)}, "
            f"validation={len(self.validation_labels)}, "
            f"test={len(self.test_labels)}, image_shape={self.image_shape}, "
            f"classes={self.class_names})")


def _check_split(split: str, images: np.ndarray, labels: np.ndarray,
                 num_classes: int) -> None:
  """Raises ValueError unless one split has the layout Dataset promises."""
  if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
    raise ValueError(f"{split}_images must be a uint8 numpy array, got "
                     f"{getattr(images, 'dtype', type(images))}")
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"{split}_images must be [N, H, W, 3], got "
                     f"{images.shape}")
  if not isinstance(labels, np.ndarray) or labels.dtype != np.int32:
    raise ValueError(f"{split}_labels must be an int32 numpy array, got "
                     f"{getattr(labels, 'dtype', type(labels))}")
  if labels.shape != images.shape[:1]:
    raise ValueError(f"{split}: {len(images)} images but labels of shape "
                     f"{labels.shape}")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"{split}_labels outside [0, {num_classes}): "
                     f"min {labels.min()}, max {labels.max()}")



def check_count(name: str, value: Any) -> None:
  """Limits and sizes must be non-negative ints (bools are a typo here)."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise DataError(f"{name} must be an integer, got {value!r}")
  if value < 0:
    raise DataError(f"{name} must be >= 0, got {value}")


# --- Messages ----------------------------------------------------------------


def one_line(error: BaseException, limit: int = 300) -> str:
  """`Type: message` on one line, shortened: DataError messages stay short."""
  text = " ".join(str(error).split())
  if len(text) > limit:
    text = text[:limit - 3] + "..."
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


# --- Limits ------------------------------------------------------------------


def subset_indices(labels: np.ndarray, limit: int) -> np.ndarray:
  """Sorted indices of `limit` examples, class-balanced and seed-independent.

  Each class's examples get a random rank from a generator seeded with
  SUBSET_SEED; examples are then taken rank by rank (rank 0 of every class,
  then rank 1 of every class, ...), so the per-class counts differ by at most
  one. The first `limit` are kept, returned in their original order. A limit of
  0, or one at least the number of examples, keeps everything.
  """
  labels = np.asarray(labels)
  n = len(labels)
  if limit <= 0 or limit >= n:
    return np.arange(n)
  rng = np.random.default_rng(SUBSET_SEED)
  rank = np.empty(n, np.int64)
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    rank[members] = rng.permutation(len(members))
  order = np.lexsort((labels, rank))  # by rank, then by class
  return np.sort(order[:limit])


def apply_limits(dataset: Dataset, train_limit: int,
                  test_limit: int) -> Dataset:
  """Returns `dataset` with each split cut to its limit (0: unchanged)."""
  arrays = {}
  for split, limit in (("train", train_limit), ("test", test_limit)):
    images = getattr(dataset, f"{split}_images")
    labels = getattr(dataset, f"{split}_labels")
    if 0 < limit < len(labels):
      keep = subset_indices(labels, limit)
      images, labels = images[keep], labels[keep]
    arrays[f"{split}_images"] = np.ascontiguousarray(images)
    arrays[f"{split}_labels"] = np.ascontiguousarray(labels)
  return Dataset(class_names=dataset.class_names, source=dataset.source,
                 **arrays)


def validation_indices(labels: np.ndarray, size: int,
                       class_names: tuple[str, ...]) -> np.ndarray:
  """Sorted indices of `size` examples, size / classes of each class, drawn
  with VALIDATION_SEED: the validation split held out of the training set.

  Exactly balanced, so `size` must be a multiple of the class count, and
  every class must keep at least one training image. Raises DataError
  naming what does not fit.
  """
  labels = np.asarray(labels)
  k = len(class_names)
  n = len(labels)
  if size >= n:
    raise DataError(f"data.validation_size={size} is not smaller than the "
                    f"{n} training images (after data.train_limit) it is "
                    "held out of")
  if size % k:
    raise DataError(f"data.validation_size={size} is not a multiple of the "
                    f"{k} classes: the validation split takes the same "
                    f"number of each (e.g. {max(size // k, 1) * k})")
  per_class = size // k
  counts = np.bincount(labels, minlength=k)
  short = [c for c in range(k) if counts[c] <= per_class]
  if short:
    c = short[0]
    raise DataError(f"data.validation_size={size} takes {per_class} images "
                    f"of each class, but class {class_names[c]!r} has only "
                    f"{counts[c]} training images (it must keep at least "
                    "one)")
  rng = np.random.default_rng(VALIDATION_SEED)
  picked = [rng.permutation(np.flatnonzero(labels == c))[:per_class]
            for c in range(k)]
  return np.sort(np.concatenate(picked)) if picked else np.arange(0)


def hold_out_validation(dataset: Dataset, size: int) -> Dataset:
  """`dataset` with `size` class-balanced training images moved into its
  validation split (validation_indices); 0 leaves it as it is. Applied after
  the limits, so everything computed from the training images (their
  count, the steps per epoch, the channel statistics) sees only the images
  trained on."""
  check_count("validation_size", size)
  if size == 0:
    return dataset
  held = validation_indices(dataset.train_labels, size, dataset.class_names)
  keep = np.ones(len(dataset.train_labels), bool)
  keep[held] = False
  return Dataset(
      train_images=np.ascontiguousarray(dataset.train_images[keep]),
      train_labels=np.ascontiguousarray(dataset.train_labels[keep]),
      test_images=dataset.test_images, test_labels=dataset.test_labels,
      class_names=dataset.class_names, source=dataset.source,
      validation_images=np.ascontiguousarray(dataset.train_images[held]),
      validation_labels=np.ascontiguousarray(dataset.train_labels[held]))


# --- Statistics --------------------------------------------------------------


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and (population) std of uint8 images, in x/255 units.

  Works from exact per-channel histograms of 256 values, built chunk by
  chunk, so 50k CIFAR images never become a 1.2 GB float64 copy and the
  result matches a direct float64 computation to rounding (about 0.2 s for
  CIFAR-10's 50k training images).
  """
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(f"channel_stats needs uint8 images, got {images.dtype}")
  if images.ndim < 2 or images.size == 0:
    raise ValueError(f"channel_stats needs non-empty [..., C] images, got "
                     f"shape {images.shape}")
  flat = images.reshape(-1, images.shape[-1])
  counts = np.zeros((flat.shape[1], 256), np.int64)
  for start in range(0, len(flat), _STATS_CHUNK):
    chunk = flat[start:start + _STATS_CHUNK]
    for c in range(flat.shape[1]):
      counts[c] += np.bincount(chunk[:, c], minlength=256)
  values = np.arange(256, dtype=np.int64)
  n = float(len(flat))
  mean = (counts @ values).astype(np.float64) / n
  var = np.maximum((counts @ (values * values)) / n - mean * mean, 0.0)
  return ((mean / 255.0).astype(np.float32),
          (np.sqrt(var) / 255.0).astype(np.float32))

