"""Image folders (`folder:PATH`): PATH/{train,test}/<class>/*.jpg|*.jpeg|*.png,
read with PIL and cached as an .npz, because decoding 55k JPEGs on every run
is the slow part of a small experiment."""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import io
import os
import pathlib
import tempfile
from typing import Iterator, Sequence

import numpy as np

from jaxcnn.data.dataset import (SPLITS, DataError, Dataset, one_line,
                                 subset_indices)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Bump when the decoded-array layout of the folder cache changes.
CACHE_FORMAT = 1
CACHE_DIR_ENV = "JAXCNN_CACHE_DIR"
_READ_CHUNK = 256  # files per read-ahead task when decoding a folder
_READ_THREADS = 4
_READ_AHEAD = 8  # chunks in flight (bounds the bytes held in memory)


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


def load_folder(path_text: str, train_limit: int,
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
    raise DataError(f"{directory}: cannot be listed ({one_line(e)})") from None
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
          f"{entry.path}: cannot be read ({one_line(e)})") from None
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
      raise DataError(f"{file.path}: cannot be read ({one_line(e)})") from None
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
    raise DataError(f"{path}: not a readable image ({one_line(e)})") from None


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
