"""TFDS datasets (`tfds:NAME`), read whole into numpy arrays.

tensorflow-datasets is imported only when this source is used, so a machine
without TensorFlow can still import jaxcnn.data.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import numpy as np

from jaxcnn.data.dataset import SPLITS, DataError, Dataset, one_line

# tfds.load with batch_size=-1 kills the process under tfds.testing.mock_data;
# a fixed batch size works everywhere.
TFDS_BATCH_SIZE = 1024
# Official archives that TFDS builders accept in their manual dir.
TFDS_MANUAL_ARCHIVES = {
    "cifar10": "cifar-10-binary.tar.gz",
    "cifar100": "cifar-100-binary.tar.gz",
}


def load_tfds(name: str, data_dir: str | None) -> Dataset:
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

