"""Datasets as host numpy arrays: TFDS, a folder of images, or synthetic.

Every source gives the same thing: uint8 NHWC images and int32 labels for a
train and a test split, held fully in host memory. CIFAR-sized data fits
easily, so the trainer can put it on the devices once and never stream.

Sources (the `source` string of `config.data`):
  tfds:NAME    a TFDS dataset, e.g. tfds:cifar10 (needs tensorflow-datasets,
               imported only when used, so a machine without TensorFlow can
               still import this module).
  folder:PATH  PATH/{train,test}/<class>/*.jpg|*.jpeg|*.png, read with PIL and
               cached as an .npz, because decoding 55k JPEGs on every run is
               the slow part of a small experiment.
  synthetic    seeded class patterns plus noise: learnable, for smoke runs and
               tests on machines with no data at all.

Every user-facing problem raises `DataError` with a one-line message that
names the file, directory or numbers involved.

One module per source, and this package's `load_dataset` picks one:
  dataset.py      the Dataset type, DataError, limits (class-balanced
                  subsets), the validation split, channel statistics
  tfds_source.py  tfds:NAME
  folder.py       folder:PATH, with its cache of decoded arrays
  synthetic.py    synthetic
Everything other modules use is importable from `jaxcnn.data` itself.
"""
from __future__ import annotations

from typing import Any

from jaxcnn.data.dataset import (ALL_SPLITS, SPLITS, SUBSET_SEED,
                                 VALIDATION_SEED, DataError, Dataset,
                                 apply_limits, channel_stats, check_count,
                                 hold_out_validation, subset_indices,
                                 validation_indices)
from jaxcnn.data.folder import (CACHE_DIR_ENV, CACHE_FORMAT, IMAGE_EXTENSIONS,
                                cache_dir, load_folder)
from jaxcnn.data.synthetic import make_synthetic
from jaxcnn.data.tfds_source import (TFDS_BATCH_SIZE, TFDS_MANUAL_ARCHIVES,
                                     load_tfds)

__all__ = [
    "ALL_SPLITS", "VALIDATION_SEED", "hold_out_validation",
    "validation_indices", "CACHE_DIR_ENV", "CACHE_FORMAT", "IMAGE_EXTENSIONS", "SOURCE_FORMS",
    "SPLITS", "SUBSET_SEED", "TFDS_BATCH_SIZE", "TFDS_MANUAL_ARCHIVES",
    "DataError", "Dataset", "cache_dir", "channel_stats", "load_dataset",
    "load_from_config", "make_synthetic", "subset_indices",
]

SOURCE_FORMS = ("'tfds:NAME' (e.g. tfds:cifar10), 'folder:PATH' "
                "(PATH/{train,test}/<class>/*.jpg|*.jpeg|*.png) or 'synthetic'")


def load_dataset(source: str, data_dir: str | None = None, *,
                 train_limit: int = 0, test_limit: int = 0,
                 synthetic_train_size: int = 5000,
                 synthetic_test_size: int = 1000, seed: int = 0,
                 validation_size: int = 0) -> Dataset:
  """Loads `source` ('tfds:NAME', 'folder:PATH' or 'synthetic').

  `data_dir` is TFDS's data_dir (None: TFDS's default); other sources ignore
  it. `train_limit` / `test_limit` > 0 keep only that many images of a split
  (all of them if the split is smaller), chosen by `subset_indices`: a
  class-balanced subset fixed by SUBSET_SEED, not by `seed`, so runs with
  different seeds train and test on the same images, and a smaller limit's
  subset lies inside a larger one's. `seed` only seeds the synthetic data.
  `validation_size` > 0 then moves that many of the (limited) training
  images, class-balanced, into the validation split (hold_out_validation).
  """
  check_count("train_limit", train_limit)
  check_count("test_limit", test_limit)
  check_count("validation_size", validation_size)
  kind, sep, arg = str(source).partition(":")
  if source == "synthetic":
    dataset = make_synthetic(synthetic_train_size, synthetic_test_size,
                             seed=seed)
    dataset.source = source
    dataset = apply_limits(dataset, train_limit, test_limit)
  elif sep and kind == "tfds" and arg:
    dataset = load_tfds(arg, data_dir)
    dataset.source = source
    dataset = apply_limits(dataset, train_limit, test_limit)
  elif sep and kind == "folder" and arg:
    dataset = load_folder(arg, train_limit, test_limit)
    dataset.source = source
  else:
    raise DataError(f"unknown data source {source!r}; use {SOURCE_FORMS}")
  return hold_out_validation(dataset, validation_size)


def load_from_config(data_cfg: Any, seed: int) -> Dataset:
  """Loads the dataset that `config.data` describes (see jaxcnn/defaults.py)."""
  return load_dataset(
      data_cfg["source"],
      data_cfg.get("data_dir"),
      train_limit=data_cfg.get("train_limit", 0),
      test_limit=data_cfg.get("test_limit", 0),
      synthetic_train_size=data_cfg.get("synthetic_train_size", 5000),
      synthetic_test_size=data_cfg.get("synthetic_test_size", 1000),
      seed=seed, validation_size=data_cfg.get("validation_size", 0))
