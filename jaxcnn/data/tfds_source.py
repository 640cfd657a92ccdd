"""TFDS datasets (`tfds:NAME`), read whole into numpy arrays.

tensorflow-datasets is imported only when this source is used, so a machine
without TensorFlow can still import jaxcnn.data.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import sys
import time
from typing import Any, Iterator

import numpy as np

from jaxcnn.data.dataset import SPLITS, DataError, Dataset, one_line

# tfds.load with batch_size=-1 kills the process under tfds.testing.mock_data;
# a fixed batch size works everywhere.
TFDS_BATCH_SIZE = 1024
# While TFDS prepares a dataset its output (progress bars, 'Downloading and
# preparing ...') is held back for this many seconds: an offline machine fails
# within them and shows only jaxcnn's one-line error; a real download outlives
# them and its progress shows from then on.
TFDS_QUIET_SECONDS = 10.0
# How deep under the data_dir a failed prepare's leftovers are looked for:
# NAME/VERSION.incomplete* and downloads/NAME/FILE.tmp.* lie within 3 levels.
_LEFTOVER_DEPTH = 3
# Official archives that TFDS builders accept in their manual dir.
TFDS_MANUAL_ARCHIVES = {
    "cifar10": "cifar-10-binary.tar.gz",
    "cifar100": "cifar-100-binary.tar.gz",
}


def load_tfds(name: str, data_dir: str | None) -> Dataset:
  """Loads TFDS dataset `name` (train and test splits) into numpy arrays."""
  tfds = _import_tfds(name)
  builder = _tfds_builder(tfds, name, data_dir)
  root = _data_dir_root(builder)
  before = _tree_snapshot(root)
  with _few_download_retries(), _quiet_prepare():
    try:
      builder.download_and_prepare()
      failure = None
    except Exception as e:  # noqa: BLE001  Any failure has the same remedy.
      failure = e
  if failure is not None:
    _remove_leftovers(root, before)
    raise DataError(_tfds_offline_message(name, builder, failure)) from None
  try:
    datasets = builder.as_dataset(split=list(SPLITS), as_supervised=True,
                                  batch_size=TFDS_BATCH_SIZE)
  except Exception as e:  # noqa: BLE001
    raise DataError(f"tfds:{name}: cannot open its train and test splits "
                    f"({one_line(e)})") from None
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
        f"be imported here ({one_line(e)}); install them or use "
        f"--data folder:PATH or --data synthetic") from None
  return tfds


def _tfds_builder(tfds: Any, name: str, data_dir: str | None) -> Any:
  try:
    return tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # noqa: BLE001  DatasetNotFoundError and friends.
    raise DataError(f"tfds:{name}: TFDS has no such dataset or cannot build "
                    f"it ({one_line(e)})") from None


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


class _HeldBackStream(io.TextIOBase):
  """A text stream that keeps what is written for its first `seconds`, then
  writes it, and everything after, to `target` (see TFDS_QUIET_SECONDS)."""

  def __init__(self, target: Any, seconds: float):
    super().__init__()
    self.target, self.deadline = target, time.monotonic() + seconds
    self.held: list[str] | None = []

  def write(self, text: str) -> int:
    if self.held is not None and time.monotonic() >= self.deadline:
      self.target.write("".join(self.held))
      self.held = None
    if self.held is None:
      self.target.write(text)
    else:
      self.held.append(text)
    return len(text)

  def flush(self) -> None:
    if self.held is None:
      self.target.flush()

  def isatty(self) -> bool:  # tqdm draws bars as for the real terminal.
    return bool(getattr(self.target, "isatty", lambda: False)())


@contextlib.contextmanager
def _quiet_prepare() -> Iterator[None]:
  """Holds back TFDS's prints and progress bars while it prepares (see
  TFDS_QUIET_SECONDS) and drops urllib3's retry warnings, so an offline
  machine prints only the one-line DataError: without this, about 13 lines
  of progress bars and retry warnings came first."""
  urllib3_log = logging.getLogger("urllib3")
  old_level = urllib3_log.level
  urllib3_log.setLevel(logging.ERROR)
  out = _HeldBackStream(sys.stdout, TFDS_QUIET_SECONDS)
  err = _HeldBackStream(sys.stderr, TFDS_QUIET_SECONDS)
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      yield
  finally:
    urllib3_log.setLevel(old_level)


def _data_dir_root(builder: Any) -> str:
  root = getattr(builder, "data_dir_root", None)
  return os.path.expanduser(str(root) if root is not None
                            else "~/tensorflow_datasets")


def _tree_snapshot(root: str) -> set[str] | None:
  """The paths under `root` down to _LEFTOVER_DEPTH levels (None: `root` did
  not exist), so that a failed prepare removes only what it created."""
  if not os.path.isdir(root):
    return None
  found = set()
  for top, dirs, files in os.walk(root):
    depth = os.path.relpath(top, root).count(os.sep) + (top != root)
    found.update(os.path.join(top, n) for n in dirs + files)
    if depth >= _LEFTOVER_DEPTH - 1:
      dirs[:] = []
  return found


def _remove_leftovers(root: str, before: set[str] | None) -> None:
  """Removes what a failed prepare created under `root`: its partial
  downloads and incomplete builds (a '.tmp.' or '.incomplete' name), then
  the directories it created that are left empty. Anything that existed
  before, and any new file outside those, is kept."""
  after = _tree_snapshot(root)
  if after is None:
    return
  new = sorted(after - (before or set()), key=len, reverse=True)
  for path in new:
    name = os.path.basename(path)
    if (".tmp." in name or ".incomplete" in name) and os.path.lexists(path):
      if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
      else:
        with contextlib.suppress(OSError):
          os.remove(path)
  for path in new + ([root] if before is None else []):
    if os.path.isdir(path) and not os.path.islink(path):
      with contextlib.suppress(OSError):
        os.rmdir(path)  # Only succeeds when empty: deepest paths come first.


def _tfds_offline_message(name: str, builder: Any, error: Exception) -> str:
  """One line: why preparing failed and the two ways to work offline."""
  root = getattr(builder, "data_dir_root", None)
  root = str(root) if root is not None else "~/tensorflow_datasets"
  manual = os.path.join(root, "downloads", "manual")
  archive = TFDS_MANUAL_ARCHIVES.get(name.split("/")[0].split(":")[0],
                                     "the dataset's official archive")
  return (f"tfds:{name} is not prepared under {root} and could not be "
          f"downloaded and prepared ({one_line(error)}). To work offline, "
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
                    f"({one_line(e)})") from None
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

