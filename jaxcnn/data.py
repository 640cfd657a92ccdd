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
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import io
import os
import pathlib
import tempfile
from typing import Any, Iterator, Sequence

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "test")
SOURCE_FORMS = ("'tfds:NAME' (e.g. tfds:cifar10), 'folder:PATH' "
                "(PATH/{train,test}/<class>/*.jpg|*.jpeg|*.png) or 'synthetic'")
# Limits pick the same images whatever the run's seed, so runs that differ
# only in seed are compared on the same data.
SUBSET_SEED = 0
# tfds.load with batch_size=-1 kills the process under tfds.testing.mock_data;
# a fixed batch size works everywhere.
TFDS_BATCH_SIZE = 1024
# Official archives that TFDS builders accept in their manual dir.
TFDS_MANUAL_ARCHIVES = {
    "cifar10": "cifar-10-binary.tar.gz",
    "cifar100": "cifar-100-binary.tar.gz",
}
# Bump when the decoded-array layout of the folder cache changes.
CACHE_FORMAT = 1
CACHE_DIR_ENV = "JAXCNN_CACHE_DIR"
_STATS_CHUNK = 1 << 20  # pixels per chunk in channel_stats (cache-sized)
_READ_CHUNK = 256  # files per read-ahead task when decoding a folder
_READ_THREADS = 4
_READ_AHEAD = 8  # chunks in flight (bounds the bytes held in memory)


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

  def __post_init__(self):
    self.class_names = tuple(self.class_names)
    for split in SPLITS:
      _check_split(split, getattr(self, f"{split}_images"),
                   getattr(self, f"{split}_labels"), len(self.class_names))
    if self.train_images.shape[1:] != self.test_images.shape[1:]:
      raise ValueError(
          f"train images are {self.train_images.shape[1:]} but test images "
          f"are {self.test_images.shape[1:]}")

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(int(d) for d in self.train_images.shape[1:])

  def __repr__(self) -> str:
    # The default dataclass repr would print every pixel.
    return (f"Dataset(source={self.source!r}, train={len(self.train_labels)}, "
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


# --- Entry points ------------------------------------------------------------


def load_dataset(source: str, data_dir: str | None = None, *,
                 train_limit: int = 0, test_limit: int = 0,
                 synthetic_train_size: int = 5000,
                 synthetic_test_size: int = 1000, seed: int = 0) -> Dataset:
  """Loads `source` ('tfds:NAME', 'folder:PATH' or 'synthetic').

  `data_dir` is TFDS's data_dir (None: TFDS's default); other sources ignore
  it. `train_limit` / `test_limit` > 0 keep only that many images of a split
  (all of them if the split is smaller), chosen by `subset_indices`: a
  class-balanced subset fixed by SUBSET_SEED, not by `seed`, so runs with
  different seeds train and test on the same images, and a smaller limit's
  subset lies inside a larger one's. `seed` only seeds the synthetic data.
  """
  _check_count("train_limit", train_limit)
  _check_count("test_limit", test_limit)
  kind, sep, arg = str(source).partition(":")
  if source == "synthetic":
    dataset = make_synthetic(synthetic_train_size, synthetic_test_size,
                             seed=seed)
    dataset.source = source
    return _apply_limits(dataset, train_limit, test_limit)
  if sep and kind == "tfds" and arg:
    dataset = _load_tfds(arg, data_dir)
    dataset.source = source
    return _apply_limits(dataset, train_limit, test_limit)
  if sep and kind == "folder" and arg:
    dataset = _load_folder(arg, train_limit, test_limit)
    dataset.source = source
    return dataset
  raise DataError(f"unknown data source {source!r}; use {SOURCE_FORMS}")


def load_from_config(data_cfg: Any, seed: int) -> Dataset:
  """Loads the dataset that `config.data` describes (see jaxcnn/defaults.py)."""
  return load_dataset(
      data_cfg["source"],
      data_cfg.get("data_dir"),
      train_limit=data_cfg.get("train_limit", 0),
      test_limit=data_cfg.get("test_limit", 0),
      synthetic_train_size=data_cfg.get("synthetic_train_size", 5000),
      synthetic_test_size=data_cfg.get("synthetic_test_size", 1000),
      seed=seed)


def _check_count(name: str, value: Any) -> None:
  """Limits and sizes must be non-negative ints (bools are a typo here)."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise DataError(f"{name} must be an integer, got {value!r}")
  if value < 0:
    raise DataError(f"{name} must be >= 0, got {value}")


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


def _apply_limits(dataset: Dataset, train_limit: int,
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


# --- Synthetic ---------------------------------------------------------------

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
  _check_count("num_train", num_train)
  _check_count("num_test", num_test)
  if num_classes < 1 or image_size < 1:
    raise DataError(f"make_synthetic needs num_classes >= 1 and image_size >= "
                    f"1, got {num_classes} and {image_size}")
  pattern_seq, train_seq, test_seq = np.random.SeedSequence(seed).spawn(3)
  patterns = _random_patterns(np.random.default_rng(pattern_seq), num_classes,
                              image_size)
  train_images, train_labels = _synthetic_split(
      np.random.default_rng(train_seq), patterns, num_train)
  test_images, test_labels = _synthetic_split(
      np.random.default_rng(test_seq), patterns, num_test)
  return Dataset(train_images, train_labels, test_images, test_labels,
                 tuple(f"class{i}" for i in range(num_classes)), "synthetic")


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


# --- TFDS --------------------------------------------------------------------


def _load_tfds(name: str, data_dir: str | None) -> Dataset:
  """Loads TFDS dataset `name` (train and test splits) into numpy arrays."""
  tfds = _import_tfds(name)
  builder = _tfds_builder(tfds, name, data_dir)
  with _few_download_retries():
    try:
      builder.download_and_prepare()
    except Exception as e:  # noqa: BLE001  Any failure has the same remedy.
      raise DataError(_tfds_offline_message(name, builder, e)) from None
  try:
    datasets = builder.as_dataset(split=list(SPLITS), as_supervised=True,
                                  batch_size=TFDS_BATCH_SIZE)
  except Exception as e:  # noqa: BLE001
    raise DataError(f"tfds:{name}: cannot open its train and test splits "
                    f"({_one_line(e)})") from None
  arrays = {}
  for split, ds in zip(SPLITS, datasets):
    images, labels = _tfds_to_numpy(tfds, ds, f"tfds:{name} {split}")
    arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
  class_names = _tfds_class_names(builder.info, arrays)
  return Dataset(class_names=class_names, source=f"tfds:{name}", **arrays)


def _import_tfds(name: str) -> Any:
  """Imports tensorflow_datasets only now: GPU machines may lack TensorFlow."""
  try:
    # pylint: disable-next=import-outside-toplevel
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise DataError(
        f"tfds:{name} needs tensorflow-datasets and tensorflow, which cannot "
        f"be imported here ({_one_line(e)}); install them or use "
        f"--data folder:PATH or --data synthetic") from None
  return tfds


def _tfds_builder(tfds: Any, name: str, data_dir: str | None) -> Any:
  try:
    return tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # noqa: BLE001  DatasetNotFoundError and friends.
    raise DataError(f"tfds:{name}: TFDS has no such dataset or cannot build "
                    f"it ({_one_line(e)})") from None


@contextlib.contextmanager
def _few_download_retries() -> Iterator[None]:
  """Cuts TFDS's download retries from 10 to 2 while in the block.

  With 10 retries and exponential backoff an offline machine waits about
  200 s before TFDS gives up; 2 retries still ride out a brief network blip
  and fail offline in about a second. Does nothing if TFDS changes the knob.
  """
  try:
    # pylint: disable-next=import-outside-toplevel
    from tensorflow_datasets.core.download import downloader
  except ImportError:
    yield
    return
  old = getattr(downloader, "MAX_RETRIES", None)
  if not isinstance(old, int):
    yield
    return
  downloader.MAX_RETRIES = min(old, 2)
  try:
    yield
  finally:
    downloader.MAX_RETRIES = old


def _tfds_offline_message(name: str, builder: Any, error: Exception) -> str:
  """One line: why preparing failed and the two ways to work offline."""
  root = getattr(builder, "data_dir_root", None)
  root = str(root) if root is not None else "~/tensorflow_datasets"
  manual = os.path.join(root, "downloads", "manual")
  archive = TFDS_MANUAL_ARCHIVES.get(name.split("/")[0].split(":")[0],
                                     "the dataset's official archive")
  return (f"tfds:{name} is not prepared under {root} and could not be "
          f"downloaded and prepared ({_one_line(error)}). To work offline, "
          f"put {archive} "
          f"into {manual}/ (TFDS builds from it without downloading), or use "
          f"--data folder:PATH with images in PATH/{{train,test}}/<class>/"
          f"*.jpg|*.png")


def _tfds_to_numpy(tfds: Any, ds: Any, what: str
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Concatenates a batched (image, label) tf.data pipeline into numpy."""
  images, labels = [], []
  try:
    for x, y in tfds.as_numpy(ds):
      images.append(x)
      labels.append(y)
  except Exception as e:  # noqa: BLE001  e.g. images of different sizes.
    raise DataError(f"{what}: reading the examples failed "
                    f"({_one_line(e)})") from None
  if not images:
    raise DataError(f"{what}: the split is empty")
  x = np.concatenate(images)
  if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
    raise DataError(f"{what}: images are {x.dtype} {x.shape[1:]}, jaxcnn "
                    f"needs uint8 RGB (H, W, 3)")
  return np.ascontiguousarray(x), np.concatenate(labels).astype(np.int32)


def _tfds_class_names(info: Any, arrays: dict[str, np.ndarray]
                      ) -> tuple[str, ...]:
  """Names of the label feature; numbers if the dataset has none."""
  label_key = (info.supervised_keys or (None, "label"))[1]
  try:
    names = tuple(info.features[label_key].names)
  except (AttributeError, KeyError, TypeError):
    names = ()
  if not names:
    top = max(int(arrays["train_labels"].max(initial=0)),
              int(arrays["test_labels"].max(initial=0)))
    names = tuple(str(i) for i in range(top + 1))
  return names


def _one_line(error: BaseException, limit: int = 300) -> str:
  """`Type: message` on one line, shortened: DataError messages stay short."""
  text = " ".join(str(error).split())
  if len(text) > limit:
    text = text[:limit - 3] + "..."
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


# --- Image folder ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ImageFile:
  """One listed image: where it is, what class, and what the cache keys on."""
  path: str  # absolute
  rel: str  # relative to the folder root, e.g. 'train/cat/0001.jpg'
  size: int
  mtime_ns: int
  label: int


@dataclasses.dataclass(frozen=True)
class _Reference:
  """The image every other must match in size: the first train image."""
  name: str
  width: int
  height: int


def _load_folder(path_text: str, train_limit: int,
                 test_limit: int) -> Dataset:
  """Reads PATH/{train,test}/<class>/*, decoding only the images kept."""
  root = _folder_root(path_text)
  split_dirs = [_split_dir(root, split) for split in SPLITS]
  class_names = _class_names(split_dirs[0])
  _check_same_classes(split_dirs[0], class_names, split_dirs[1])
  arrays, reference = {}, None
  for split, split_dir, limit in zip(SPLITS, split_dirs,
                                     (train_limit, test_limit)):
    files = _list_split(split_dir, class_names)
    labels = np.array([f.label for f in files], np.int32)
    keep = subset_indices(labels, limit)
    images, reference = _split_images(root, split, files, keep, reference)
    arrays[f"{split}_images"] = images
    arrays[f"{split}_labels"] = labels[keep]
  return Dataset(class_names=class_names, source=f"folder:{path_text}",
                 **arrays)


def _folder_root(path_text: str) -> pathlib.Path:
  root = pathlib.Path(os.path.abspath(os.path.expanduser(path_text)))
  if not root.exists():
    raise DataError(f"folder:{path_text}: directory {root} does not exist")
  if not root.is_dir():
    raise DataError(f"folder:{path_text}: {root} is not a directory")
  return root


def _split_dir(root: pathlib.Path, split: str) -> pathlib.Path:
  split_dir = root / split
  if not split_dir.is_dir():
    raise DataError(f"{split_dir} is missing: an image folder needs "
                    f"{root}/{{train,test}}/<class>/*.jpg|*.jpeg|*.png")
  return split_dir


def _visible_entries(directory: pathlib.Path) -> list[os.DirEntry]:
  """Entries of `directory` sorted by name, hidden ones ('.*') left out."""
  try:
    with os.scandir(directory) as it:
      entries = [e for e in it if not e.name.startswith(".")]
  except OSError as e:
    raise DataError(f"{directory}: cannot be listed ({_one_line(e)})") from None
  return sorted(entries, key=lambda e: e.name)


def _class_names(split_dir: pathlib.Path) -> tuple[str, ...]:
  """Sorted class directory names; any other visible entry is an error."""
  names = []
  for entry in _visible_entries(split_dir):
    if not entry.is_dir():
      raise DataError(f"{entry.path}: unexpected file in {split_dir}, which "
                      f"must hold only class directories")
    names.append(entry.name)
  if not names:
    raise DataError(f"{split_dir} has no class directories")
  return tuple(names)


def _check_same_classes(train_dir: pathlib.Path,
                        class_names: Sequence[str],
                        test_dir: pathlib.Path) -> None:
  test_names = _class_names(test_dir)
  if set(test_names) != set(class_names):
    only_train = sorted(set(class_names) - set(test_names))
    only_test = sorted(set(test_names) - set(class_names))
    raise DataError(f"class directories of {test_dir} differ from those of "
                    f"{train_dir}: only in train: {only_train}; only in "
                    f"test: {only_test}")


def _list_split(split_dir: pathlib.Path,
                class_names: Sequence[str]) -> list[_ImageFile]:
  files = []
  for label, name in enumerate(class_names):
    files.extend(_list_class(split_dir / name, label))
  return files


def _list_class(class_dir: pathlib.Path, label: int) -> list[_ImageFile]:
  """Image files of one class, by name. Strict: any other entry is an error.

  A stray file (a README, a .txt of labels, a .gif) is more likely a mistake
  in how the folder was made than something to skip silently; hidden files
  (editor and OS droppings such as .DS_Store) are the exception.
  """
  files = []
  rel_dir = f"{class_dir.parent.name}/{class_dir.name}/"
  for entry in _visible_entries(class_dir):
    if entry.is_dir():
      raise DataError(f"{entry.path}: unexpected directory inside class "
                      f"directory {class_dir}")
    if not entry.name.lower().endswith(IMAGE_EXTENSIONS):
      raise DataError(f"{entry.path}: not an image file (expected "
                      f"{', '.join(IMAGE_EXTENSIONS)}; hidden files are "
                      f"ignored)")
    try:
      stat = entry.stat()
    except OSError as e:  # e.g. a dangling symlink
      raise DataError(
          f"{entry.path}: cannot be read ({_one_line(e)})") from None
    files.append(_ImageFile(
        path=entry.path, rel=rel_dir + entry.name,
        size=stat.st_size, mtime_ns=stat.st_mtime_ns, label=label))
  if not files:
    raise DataError(f"{class_dir}: class directory has no images "
                    f"({', '.join(IMAGE_EXTENSIONS)})")
  return files


def _split_images(root: pathlib.Path, split: str, files: list[_ImageFile],
                  keep: np.ndarray, reference: _Reference | None
                  ) -> tuple[np.ndarray, _Reference]:
  """Images of files[keep], from the cache if it is current, else decoded."""
  images = _cached_images(root, split, files, keep)
  if images is None:
    images = _decode_files([files[i] for i in keep], reference)
    _cache_write(_cache_key(root, split, files, keep), images)
  if reference is None:
    first = files[int(keep[0])]
    reference = _Reference(first.path, images.shape[2], images.shape[1])
  _check_matches(images, reference, split)
  return images, reference


def _cached_images(root: pathlib.Path, split: str, files: list[_ImageFile],
                   keep: np.ndarray) -> np.ndarray | None:
  """files[keep] from the whole split's cache, else from the subset's own.

  A cache of the whole split serves every limit; a subset decoded on its own
  (cheap: only the kept files are read) is cached under its own key.
  """
  whole = _cache_read(_cache_key(root, split, files, None), len(files))
  if whole is not None:
    return whole if len(keep) == len(files) else np.ascontiguousarray(
        whole[keep])
  if len(keep) == len(files):
    return None
  return _cache_read(_cache_key(root, split, files, keep), len(keep))


def _check_matches(images: np.ndarray, reference: _Reference,
                   split: str) -> None:
  """Catches a cached split whose size differs from the reference image."""
  if images.shape[1:3] != (reference.height, reference.width):
    raise DataError(f"{split} images are {images.shape[2]}x{images.shape[1]}"
                    f" but {reference.name} is {reference.width}x"
                    f"{reference.height}; all images must share one size")


def _decode_files(files: list[_ImageFile],
                  reference: _Reference | None) -> np.ndarray:
  """Decodes `files` into one uint8 [N, H, W, 3] array, in order.

  Threads read the file bytes ahead (I/O releases the GIL, which matters on a
  cold disk); decoding stays on this thread, because for 32x32 images PIL's
  cost is mostly Python and decoding in 2 or 4 threads measured slower than
  in one. The first file fixes the size (unless a reference from the other
  split is given) so the output is allocated once and filled in place.
  """
  images = None
  for i, (file, blob) in enumerate(_prefetch_bytes(files)):
    image = _decode_image(file.path, blob, reference)
    if images is None:
      if reference is None:
        reference = _Reference(file.path, image.shape[1], image.shape[0])
      images = np.empty((len(files),) + image.shape, np.uint8)
    images[i] = image
  return images


def _prefetch_bytes(files: list[_ImageFile]
                    ) -> Iterator[tuple[_ImageFile, bytes]]:
  """Yields (file, its bytes) in order, reading a few chunks ahead."""
  chunks = [files[i:i + _READ_CHUNK] for i in range(0, len(files),
                                                     _READ_CHUNK)]
  with concurrent.futures.ThreadPoolExecutor(_READ_THREADS) as pool:
    pending = [pool.submit(_read_chunk, c) for c in chunks[:_READ_AHEAD]]
    for index, chunk in enumerate(chunks):
      blobs = pending.pop(0).result()
      if index + _READ_AHEAD < len(chunks):
        pending.append(pool.submit(_read_chunk, chunks[index + _READ_AHEAD]))
      yield from zip(chunk, blobs)


def _read_chunk(files: list[_ImageFile]) -> list[bytes]:
  blobs = []
  for file in files:
    try:
      with open(file.path, "rb") as f:
        blobs.append(f.read())
    except OSError as e:
      raise DataError(f"{file.path}: cannot be read ({_one_line(e)})") from None
  return blobs


def _decode_image(path: str, blob: bytes,
                  reference: _Reference | None) -> np.ndarray:
  """One RGB image as uint8 [H, W, 3]; other modes and sizes are errors.

  Grayscale, palette or RGBA images are not converted: a mixed folder is a
  sign that it was built wrongly, and a silent conversion would hide that.
  """
  # Imported here: only the folder source needs pillow.
  from PIL import Image  # pylint: disable=import-outside-toplevel
  try:
    with Image.open(io.BytesIO(blob), formats=("JPEG", "PNG")) as img:
      _check_image(path, img.mode, img.size, reference)
      return np.asarray(img, dtype=np.uint8)
  except DataError:
    raise
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise DataError(f"{path}: not a readable image ({_one_line(e)})") from None


def _check_image(path: str, mode: str, size: tuple[int, int],
                 reference: _Reference | None) -> None:
  if mode != "RGB":
    raise DataError(f"{path}: image mode is {mode}, expected RGB (grayscale "
                    f"and other modes are not converted)")
  if reference is not None and size != (reference.width, reference.height):
    raise DataError(f"{path}: image is {size[0]}x{size[1]} (WxH), expected "
                    f"{reference.width}x{reference.height} like "
                    f"{reference.name}")


# --- Folder cache ------------------------------------------------------------


def cache_dir() -> pathlib.Path:
  """Where decoded folders are cached: $JAXCNN_CACHE_DIR or ~/.cache/jaxcnn."""
  return pathlib.Path(os.path.expanduser(
      os.environ.get(CACHE_DIR_ENV) or "~/.cache/jaxcnn"))


def _cache_key(root: pathlib.Path, split: str, files: list[_ImageFile],
               keep: np.ndarray | None) -> str:
  """Hash of the folder, split, every file's (path, size, mtime), subset.

  Any added, removed, renamed, resized or touched file changes the key, so a
  changed tree is read again rather than served stale. `keep` (None or all
  indices: the whole split) keys a subset.
  """
  h = hashlib.sha256()
  h.update(f"jaxcnn-folder-cache v{CACHE_FORMAT}\0{root}\0{split}\0".encode())
  for f in files:
    h.update(f"{f.rel}\0{f.size}\0{f.mtime_ns}\0{f.label}\n".encode())
  if keep is not None and len(keep) < len(files):
    h.update(b"subset\0" + np.asarray(keep, np.int64).tobytes())
  return h.hexdigest()


def _cache_path(key: str) -> pathlib.Path:
  return cache_dir() / f"folder-{key}.npz"


def _cache_read(key: str, count: int) -> np.ndarray | None:
  """Cached images for `key`, or None if absent, unreadable or malformed."""
  path = _cache_path(key)
  if not path.is_file():
    return None
  try:
    with np.load(path, allow_pickle=False) as npz:
      images = npz["images"]
  except Exception:  # noqa: BLE001  A bad cache file is just a cache miss.
    return None
  if images.dtype != np.uint8 or images.ndim != 4 or len(images) != count:
    return None
  return images


def _cache_write(key: str, images: np.ndarray) -> None:
  """Writes the cache atomically (tmp file + rename); skips if it can't.

  Several runs may read the same folder at once; a rename means a reader sees
  either no file or a complete one. An unwritable cache dir only costs speed.
  """
  path = _cache_path(key)
  tmp_name = None
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-",
                                    suffix=".npz")
    with os.fdopen(fd, "wb") as f:
      np.savez(f, images=images)
    os.chmod(tmp_name, 0o644)  # mkstemp's 0600 would hide it from others
    os.replace(tmp_name, path)
    tmp_name = None
  except OSError:
    pass
  finally:
    if tmp_name is not None:
      with contextlib.suppress(OSError):
        os.unlink(tmp_name)
