"""Tests for jaxcnn.data: synthetic, folder (with its cache), TFDS, limits."""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxcnn import data
from jaxcnn.data import dataset as data_dataset, folder as data_folder
from jaxcnn.defaults import base_config

CLASSES = ("dog", "ant", "cat")  # written unsorted on purpose
PER_CLASS = 4
SIZE = (8, 6)  # (width, height) as PIL counts
_USER_CACHE_DIR = os.environ.get(data.CACHE_DIR_ENV)  # before any fixture


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
  """Every test caches under its own tmp dir, never in ~/.cache."""
  monkeypatch.setenv(data.CACHE_DIR_ENV, str(tmp_path / "cache"))


def _write(path: pathlib.Path, pixels: np.ndarray, mode: str = "RGB") -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
  Image.fromarray(pixels, mode=mode if mode != "RGB" else None).save(
      path, format=fmt)


def _pixels(rng: np.random.Generator, size=SIZE) -> np.ndarray:
  return rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)


@pytest.fixture
def tree(tmp_path) -> tuple[pathlib.Path, dict[str, np.ndarray]]:
  """root/{train,test}/<class>/NNNN.png with known pixels."""
  rng = np.random.default_rng(0)
  root = tmp_path / "images"
  pixels = {}
  for split in ("train", "test"):
    for name in CLASSES:
      for i in range(PER_CLASS):
        rel = f"{split}/{name}/{i:04d}.png"
        pixels[rel] = _pixels(rng)
        _write(root / rel, pixels[rel])
  return root, pixels


def _load(root: pathlib.Path, **kwargs) -> data.Dataset:
  return data.load_dataset(f"folder:{root}", **kwargs)


# --- Synthetic ---------------------------------------------------------------


def test_synthetic_is_deterministic_and_seeded():
  a = data.make_synthetic(60, 20, seed=0)
  b = data.make_synthetic(60, 20, seed=0)
  c = data.make_synthetic(60, 20, seed=1)
  np.testing.assert_array_equal(a.train_images, b.train_images)
  np.testing.assert_array_equal(a.test_labels, b.test_labels)
  assert not np.array_equal(a.train_images, c.train_images)
  # Train and test come from different sub-seeds.
  assert not np.array_equal(a.train_images[:20], a.test_images)


def test_synthetic_generation_is_cached_but_each_call_gets_its_own_arrays():
  from jaxcnn.data import synthetic
  synthetic._generate.cache_clear()
  a = data.make_synthetic(40, 10, seed=5)
  fresh = synthetic._generate.__wrapped__(40, 10, 10, 32, 5)  # Uncached.
  before = a.train_images.copy()
  a.train_images[:] = 0  # A caller writing into its arrays...
  a.train_labels[:] = -1
  b = data.make_synthetic(40, 10, seed=5)  # ...leaves the next call's alone.
  assert synthetic._generate.cache_info().hits == 1
  np.testing.assert_array_equal(b.train_images, before)
  for got, want in zip((b.train_images, b.train_labels, b.test_images,
                        b.test_labels), fresh):
    np.testing.assert_array_equal(got, want)
    assert got.flags.writeable
  assert not np.shares_memory(a.train_images, b.train_images)


def test_synthetic_shapes_dtypes_and_balance():
  ds = data.make_synthetic(100, 30, seed=3)
  assert ds.train_images.shape == (100, 32, 32, 3)
  assert ds.test_images.shape == (30, 32, 32, 3)
  assert ds.train_images.dtype == np.uint8
  assert ds.train_labels.dtype == np.int32
  assert ds.train_images.flags.c_contiguous
  assert ds.class_names == tuple(f"class{i}" for i in range(10))
  assert ds.num_classes == 10 and ds.image_shape == (32, 32, 3)
  np.testing.assert_array_equal(np.bincount(ds.train_labels), [10] * 10)
  np.testing.assert_array_equal(np.bincount(ds.test_labels), [3] * 10)
  small = data.make_synthetic(8, 4, num_classes=4, image_size=16)
  assert small.train_images.shape == (8, 16, 16, 3)
  assert small.class_names == ("class0", "class1", "class2", "class3")


def test_synthetic_classes_share_mean_colour():
  """The class is in the spatial pattern, not in a colour shortcut."""
  ds = data.make_synthetic(1000, 0, seed=0)
  means = np.stack([ds.train_images[ds.train_labels == c].mean(axis=(0, 1, 2))
                    for c in range(10)])
  assert np.ptp(means, axis=0).max() < 3.0  # pixel units
  # ... while the images are far from flat grey.
  assert ds.train_images.std() > 20


def test_synthetic_through_load_dataset_and_config():
  cfg = base_config().data
  cfg.source = "synthetic"
  cfg.synthetic_train_size = 40
  cfg.synthetic_test_size = 10
  cfg.train_limit = 20
  ds = data.load_from_config(cfg, seed=5)
  assert ds.source == "synthetic"
  assert len(ds.train_labels) == 20 and len(ds.test_labels) == 10
  np.testing.assert_array_equal(np.bincount(ds.train_labels), [2] * 10)
  full = data.make_synthetic(40, 10, seed=5)
  np.testing.assert_array_equal(ds.test_images, full.test_images)


# --- channel_stats -----------------------------------------------------------


def test_channel_stats_matches_float64(monkeypatch):
  monkeypatch.setattr(data_dataset, "_STATS_CHUNK", 37)  # many uneven chunks
  images = np.random.default_rng(0).integers(0, 256, size=(9, 5, 7, 3),
                                              dtype=np.uint8)
  images[..., 2] //= 4  # channels with different statistics
  mean, std = data.channel_stats(images)
  x = images.astype(np.float64) / 255.0
  assert mean.dtype == np.float32 and mean.shape == (3,)
  assert std.dtype == np.float32 and std.shape == (3,)
  np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-6)
  np.testing.assert_allclose(std, x.std(axis=(0, 1, 2)), rtol=1e-6)


def test_channel_stats_rejects_float_images():
  with pytest.raises(ValueError, match="uint8"):
    data.channel_stats(np.zeros((2, 4, 4, 3), np.float32))


# --- Limits ------------------------------------------------------------------


def test_subset_indices_balanced_nested_and_fixed():
  labels = np.repeat(np.arange(5), 20)
  np.random.default_rng(1).shuffle(labels)
  small = data.subset_indices(labels, 10)
  large = data.subset_indices(labels, 37)
  np.testing.assert_array_equal(np.bincount(labels[small]), [2] * 5)
  assert np.ptp(np.bincount(labels[large], minlength=5)) <= 1
  assert set(small) <= set(large)
  assert np.all(np.diff(large) > 0)  # original order
  np.testing.assert_array_equal(small, data.subset_indices(labels, 10))
  np.testing.assert_array_equal(data.subset_indices(labels, 0),
                                np.arange(100))
  np.testing.assert_array_equal(data.subset_indices(labels, 500),
                                np.arange(100))


@pytest.mark.parametrize("kwargs", [{"train_limit": -1}, {"test_limit": -3},
                                    {"train_limit": 1.5}])
def test_bad_limit_is_an_error(kwargs):
  key = next(iter(kwargs))
  with pytest.raises(data.DataError, match=key):
    data.load_dataset("synthetic", **kwargs)


# --- Source strings ----------------------------------------------------------


@pytest.mark.parametrize("source", ["cifar10", "tfds:", "folder:", "synth",
                                    "imagenet:foo"])
def test_unknown_source_is_an_error(source):
  with pytest.raises(data.DataError) as e:
    data.load_dataset(source)
  message = str(e.value)
  assert repr(source) in message
  for form in ("tfds:NAME", "folder:PATH", "synthetic"):
    assert form in message


def test_import_does_not_pull_in_tensorflow():
  code = ("import json, sys, jaxcnn.data; "
          "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] "
          "in ('jaxcnn', 'tensorflow', 'tensorflow_datasets'))))")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True,
                          cwd=pathlib.Path(__file__).resolve().parent.parent)
  assert result.returncode == 0, result.stderr
  imported = json.loads(result.stdout.strip().splitlines()[-1])
  assert "jaxcnn.data" in imported  # The check sees what the import loaded.
  assert [m for m in imported if m.startswith("tensorflow")] == []


def test_dataset_checks_its_arrays():
  images = np.zeros((2, 4, 4, 3), np.uint8)
  labels = np.zeros(2, np.int32)
  with pytest.raises(ValueError, match="uint8"):
    data.Dataset(images.astype(np.float32), labels, images, labels, ("a",),
                 "x")
  with pytest.raises(ValueError, match="int32"):
    data.Dataset(images, labels.astype(np.int64), images, labels, ("a",), "x")
  with pytest.raises(ValueError, match="outside"):
    data.Dataset(images, labels + 1, images, labels, ("a",), "x")
  ds = data.Dataset(images, labels, images, labels, ["a"], "x")
  assert "train=2" in repr(ds) and len(repr(ds)) < 200


# --- Folder ------------------------------------------------------------------


def test_folder_reads_labels_and_pixels(tree):
  root, pixels = tree
  ds = _load(root)
  assert ds.class_names == ("ant", "cat", "dog")  # sorted
  assert ds.source == f"folder:{root}"
  assert ds.train_images.shape == (12, SIZE[1], SIZE[0], 3)
  assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
  np.testing.assert_array_equal(ds.train_labels, np.repeat([0, 1, 2], 4))
  for split in ("train", "test"):
    images = getattr(ds, f"{split}_images")
    for index, rel in enumerate(f"{split}/{name}/{i:04d}.png"
                                for name in ds.class_names
                                for i in range(PER_CLASS)):
      np.testing.assert_array_equal(images[index], pixels[rel], err_msg=rel)


def test_folder_reads_jpeg_and_ignores_hidden_files(tree):
  root, _ = tree
  rng = np.random.default_rng(1)
  _write(root / "train" / "ant" / "0100.jpg", _pixels(rng))
  _write(root / "train" / "ant" / "0101.JPEG", _pixels(rng))
  (root / "train" / "ant" / ".DS_Store").write_bytes(b"\0junk")
  (root / "test" / ".hidden_dir").mkdir()
  ds = _load(root)
  assert len(ds.train_labels) == 14
  np.testing.assert_array_equal(np.bincount(ds.train_labels), [6, 4, 4])


def test_folder_limits_pick_the_same_images_as_a_full_load(tree):
  root, _ = tree
  limited = _load(root, train_limit=6, test_limit=3)
  np.testing.assert_array_equal(np.bincount(limited.train_labels), [2, 2, 2])
  np.testing.assert_array_equal(np.bincount(limited.test_labels), [1, 1, 1])
  full = _load(root)
  keep = data.subset_indices(full.train_labels, 6)
  np.testing.assert_array_equal(limited.train_images, full.train_images[keep])
  # Now served from the full cache: same subset again.
  again = _load(root, train_limit=6, test_limit=3)
  np.testing.assert_array_equal(again.train_images, limited.train_images)
  np.testing.assert_array_equal(again.test_images, limited.test_images)


def _set_file(path: pathlib.Path, content) -> None:
  if isinstance(content, bytes):
    path.write_bytes(content)
  else:
    pixels, mode = content
    _write(path, pixels, mode)


@pytest.mark.parametrize("case", [
    "missing_split", "empty_class", "corrupt", "truncated", "wrong_size",
    "test_wrong_size", "grayscale", "rgba", "unknown_extension",
    "stray_file_in_split", "dir_in_class"])
def test_folder_errors_name_the_offending_path(tree, case):
  root, _ = tree
  rng = np.random.default_rng(2)
  cat = root / "train" / "cat"
  if case == "missing_split":
    shutil.rmtree(root / "test")
    culprit, words = root / "test", "missing"
  elif case == "empty_class":
    for f in cat.iterdir():
      f.unlink()
    culprit, words = cat, "no images"
  elif case == "corrupt":
    culprit, words = cat / "0001.jpg", "not a readable image"
    culprit.write_bytes(b"this is not a jpeg at all" * 10)
  elif case == "truncated":
    culprit, words = cat / "0001.png", "not a readable image"
    culprit.write_bytes(culprit.read_bytes()[:60])
  elif case == "wrong_size":
    culprit, words = cat / "0002.png", "9x9"
    _write(culprit, _pixels(rng, (9, 9)))
  elif case == "test_wrong_size":
    culprit, words = root / "test" / "dog" / "0003.png", "9x7"
    _write(culprit, _pixels(rng, (9, 7)))
  elif case == "grayscale":
    culprit, words = cat / "0002.png", "mode is L"
    _write(culprit, _pixels(rng)[..., 0], mode="L")
  elif case == "rgba":
    culprit, words = cat / "0002.png", "mode is RGBA"
    rgba = np.concatenate([_pixels(rng), _pixels(rng)[..., :1]], axis=-1)
    _write(culprit, rgba, mode="RGBA")
  elif case == "unknown_extension":
    culprit, words = cat / "README.txt", "not an image file"
    culprit.write_text("hello")
  elif case == "stray_file_in_split":
    culprit, words = root / "train" / "labels.csv", "unexpected file"
    culprit.write_text("a,b")
  else:  # dir_in_class
    culprit, words = cat / "more", "unexpected directory"
    culprit.mkdir()
  with pytest.raises(data.DataError) as e:
    _load(root)
  message = str(e.value)
  assert str(culprit) in message
  assert words in message
  assert "\n" not in message


def test_folder_missing_path(tmp_path):
  with pytest.raises(data.DataError, match="does not exist") as e:
    _load(tmp_path / "nowhere")
  assert str(tmp_path / "nowhere") in str(e.value)


def test_folder_class_set_mismatch(tree):
  root, _ = tree
  (root / "test" / "dog").rename(root / "test" / "dogs")
  with pytest.raises(data.DataError) as e:
    _load(root)
  message = str(e.value)
  assert "only in train: ['dog']" in message
  assert "only in test: ['dogs']" in message
  assert str(root / "test") in message


def test_folder_cache_is_hit_then_invalidated(tree, tmp_path, monkeypatch):
  root, pixels = tree
  first = _load(root)
  cached = list((tmp_path / "cache").glob("folder-*.npz"))
  assert len(cached) == 2  # train and test
  assert not list((tmp_path / "cache").glob(".tmp-*"))  # no leftovers

  real_decode = data_folder._decode_image

  def no_decoding(*args, **kwargs):
    raise AssertionError("decoded although the cache is current")

  monkeypatch.setattr(data_folder, "_decode_image", no_decoding)
  second = _load(root)
  for split in ("train", "test"):
    np.testing.assert_array_equal(getattr(first, f"{split}_images"),
                                  getattr(second, f"{split}_images"))
    np.testing.assert_array_equal(getattr(first, f"{split}_labels"),
                                  getattr(second, f"{split}_labels"))

  # Change one training image: the train split must be read again.
  changed = root / "train" / "cat" / "0002.png"
  new_pixels = 255 - pixels["train/cat/0002.png"]
  _write(changed, new_pixels)
  stat = changed.stat()
  os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  with pytest.raises(AssertionError, match="decoded although"):
    _load(root)
  monkeypatch.setattr(data_folder, "_decode_image", real_decode)
  third = _load(root)
  index = 1 * PER_CLASS + 2  # class 'cat' (1), file 0002
  np.testing.assert_array_equal(third.train_images[index], new_pixels)
  np.testing.assert_array_equal(third.test_images, first.test_images)


def test_folder_works_when_cache_dir_is_unwritable(tree, tmp_path,
                                                   monkeypatch):
  root, _ = tree
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  monkeypatch.setenv(data.CACHE_DIR_ENV, str(blocker / "cache"))
  ds = _load(root)
  assert len(ds.train_labels) == 12


def test_folder_ignores_a_corrupt_cache_file(tree, tmp_path):
  root, _ = tree
  first = _load(root)
  for f in (tmp_path / "cache").glob("folder-*.npz"):
    f.write_bytes(b"garbage")
  second = _load(root)
  np.testing.assert_array_equal(first.train_images, second.train_images)


# --- TFDS --------------------------------------------------------------------


def test_tfds_under_mock_data(tmp_path):
  # The TFDS path without network: what the loader returns, then the same
  # source trained end to end (2 epochs of 48 images at batch 16).
  tfds = pytest.importorskip("tensorflow_datasets")
  from jaxcnn import checkpoint, config as config_lib, trainer
  with tfds.testing.mock_data(num_examples=12):
    ds = data.load_dataset("tfds:cifar10", test_limit=5)
  assert ds.source == "tfds:cifar10"
  assert ds.train_images.shape == (12, 32, 32, 3)
  assert ds.test_images.shape == (5, 32, 32, 3)
  assert ds.train_images.dtype == np.uint8
  assert ds.train_labels.dtype == np.int32
  assert ds.num_classes == 10
  assert 0 <= ds.train_labels.min() and ds.train_labels.max() < 10
  cfg = config_lib.apply_overrides(config_lib.load_experiment("test"), [
      "data.source=tfds:cifar10", "train.batch_size=16", "train.num_epochs=2",
      "train.log_every_steps=2"])
  with tfds.testing.mock_data(num_examples=48):
    result = trainer.train_and_evaluate(cfg, str(tmp_path / "tfds"))
  assert result["step"] == 6
  assert result["raw"]["count"] == 48
  assert checkpoint.saved_steps(tmp_path / "tfds")[-1] == 6


def test_tfds_prepare_failure_names_offline_options(tmp_path, monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  from tensorflow_datasets.core.download import downloader

  retries_seen = []

  def offline(self, *args, **kwargs):
    retries_seen.append(downloader.MAX_RETRIES)
    raise ConnectionError("Failed to resolve 'www.cs.toronto.edu'\n(details)")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                      offline)
  before = downloader.MAX_RETRIES
  with pytest.raises(data.DataError) as e:
    data.load_dataset("tfds:cifar10", str(tmp_path))
  message = str(e.value)
  assert "\n" not in message
  assert "cifar-10-binary.tar.gz" in message
  assert str(tmp_path / "downloads" / "manual") in message
  assert "folder:PATH" in message and "ConnectionError" in message
  assert e.value.__cause__ is None and e.value.__suppress_context__
  assert retries_seen == [min(before, 2)]
  assert downloader.MAX_RETRIES == before


def test_tfds_unknown_dataset():
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(data.DataError, match="no_such_dataset_xyz"):
    data.load_dataset("tfds:no_such_dataset_xyz")


# --- Real data ---------------------------------------------------------------


def test_real_folder_with_limits(real_data_dir, monkeypatch):
  # The shared default cache, so repeated runs are warm (or no cache at all
  # where the home dir is read-only: limits keep the cold load small).
  if _USER_CACHE_DIR:
    monkeypatch.setenv(data.CACHE_DIR_ENV, _USER_CACHE_DIR)
  else:
    monkeypatch.delenv(data.CACHE_DIR_ENV, raising=False)
  ds = data.load_dataset(f"folder:{real_data_dir}", train_limit=200,
                         test_limit=50)
  assert ds.class_names == ("airplane", "automobile", "bird", "cat", "deer",
                            "dog", "frog", "horse", "ship", "truck")
  assert ds.train_images.shape == (200, 32, 32, 3)
  assert ds.test_images.shape == (50, 32, 32, 3)
  assert ds.image_shape == (32, 32, 3)
  np.testing.assert_array_equal(np.bincount(ds.train_labels), [20] * 10)
  np.testing.assert_array_equal(np.bincount(ds.test_labels), [5] * 10)
  mean, std = data.channel_stats(ds.train_images)
  assert np.all((mean > 0.3) & (mean < 0.7)) and np.all(std > 0.15)


def test_public_names_are_importable_from_the_package():
  # The package split by source keeps `from jaxcnn.data import X` working
  # for every name the other modules, benchmarks and tests use.
  for name in data.__all__:
    assert getattr(data, name) is not None, name
  assert {"Dataset", "DataError", "SPLITS", "load_dataset", "load_from_config",
          "channel_stats", "make_synthetic", "subset_indices",
          "CACHE_DIR_ENV"} <= set(data.__all__)
  # Each source lives in its own module.
  assert data.make_synthetic.__module__ == "jaxcnn.data.synthetic"
  assert data.cache_dir.__module__ == "jaxcnn.data.folder"
  assert data.Dataset.__module__ == "jaxcnn.data.dataset"


def test_tfds_offline_fails_quietly_and_leaves_nothing_behind(
    tmp_path, monkeypatch, capfd):
  # TFDS's real download path, with name resolution made to fail the way an
  # offline machine's does (no network call is made, so nothing can hang).
  tfds = pytest.importorskip("tensorflow_datasets")
  import socket

  def offline(*args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

  monkeypatch.setattr(socket, "getaddrinfo", offline)
  root = tmp_path / "tfds"
  (root / "mine").mkdir(parents=True)
  (root / "mine" / "keep.txt").write_text("not TFDS's")
  before = sorted(str(p) for p in root.rglob("*"))
  capfd.readouterr()
  import time
  t0 = time.monotonic()
  with pytest.raises(data.DataError) as e:
    data.load_dataset("tfds:cifar10", str(root))
  assert time.monotonic() - t0 < 60  # Two quick retries, not ten backoffs.
  out, err = capfd.readouterr()
  assert out == "" and err == "", (out, err)  # The error is the only output.
  message = str(e.value)
  assert "\n" not in message
  assert "cifar-10-binary.tar.gz" in message and "folder:PATH" in message
  assert str(root / "downloads" / "manual") in message
  # No '.tmp.*' download folder, no empty dataset or download directories;
  # what was there before is kept.
  assert sorted(str(p) for p in root.rglob("*")) == before
  # A data_dir that did not exist is not left behind either.
  fresh = tmp_path / "fresh"
  with pytest.raises(data.DataError):
    data.load_dataset("tfds:cifar10", str(fresh))
  assert not fresh.exists()
  del tfds


# --- The validation split ------------------------------------------------------


def _reference_validation(labels, per_class, num_classes):
  """The validation split's indices computed directly: per class, the first
  `per_class` of a permutation drawn with VALIDATION_SEED."""
  rng = np.random.default_rng(data.VALIDATION_SEED)
  return np.sort(np.concatenate([
      rng.permutation(np.flatnonzero(labels == c))[:per_class]
      for c in range(num_classes)]))


def test_validation_split_is_held_out_of_the_limited_training_set():
  full = data.load_dataset("synthetic", synthetic_train_size=600,
                           synthetic_test_size=50, seed=3)
  limited = data.load_dataset("synthetic", synthetic_train_size=600,
                              synthetic_test_size=50, seed=3, train_limit=400)
  ds = data.load_dataset("synthetic", synthetic_train_size=600,
                         synthetic_test_size=50, seed=3, train_limit=400,
                         validation_size=100)
  del full
  # The reference: hold 10 of each class out of the 400 limited images.
  held = _reference_validation(limited.train_labels, 10, 10)
  keep = np.setdiff1d(np.arange(400), held)
  np.testing.assert_array_equal(ds.validation_images,
                                limited.train_images[held])
  np.testing.assert_array_equal(ds.validation_labels,
                                limited.train_labels[held])
  np.testing.assert_array_equal(ds.train_images, limited.train_images[keep])
  np.testing.assert_array_equal(ds.train_labels, limited.train_labels[keep])
  np.testing.assert_array_equal(np.bincount(ds.validation_labels), [10] * 10)
  np.testing.assert_array_equal(ds.test_images, limited.test_images)
  assert len(ds.train_labels) == 300
  # Fixed, not drawn from the run's seed: the same labels give the same split.
  np.testing.assert_array_equal(
      data.validation_indices(limited.train_labels, 100, ds.class_names), held)


def test_validation_split_leaves_the_trained_part_to_the_config():
  from jaxcnn import config as config_lib, state
  cfg = config_lib.apply_overrides(config_lib.load_experiment("test"), [
      "data.validation_size=120", "train.num_steps=4", "train.num_devices=1"])
  setup = state.build(cfg)
  trained = data.load_dataset("synthetic", synthetic_train_size=512,
                              synthetic_test_size=200, validation_size=120)
  assert setup.config.data.train_size == 512 - 120
  assert setup.config.data.validation_size == 120
  assert setup.steps_per_epoch == (512 - 120) // 32
  mean, std = data.channel_stats(trained.train_images)
  np.testing.assert_allclose(setup.config.data.channel_mean, mean, atol=1e-6)
  np.testing.assert_allclose(setup.config.data.channel_std, std, atol=1e-6)
  whole_mean, _ = data.channel_stats(np.concatenate(
      [trained.train_images, trained.validation_images]))
  assert np.abs(np.asarray(setup.config.data.channel_mean)
                - whole_mean).max() > 1e-5  # Not the statistics of all 512.


@pytest.mark.parametrize("size, message", [
    (512, "is not smaller than the 512 training images"),
    (105, "is not a multiple of the 10 classes"),
    (-10, "validation_size must be >= 0"),
])
def test_bad_validation_size_is_an_error(size, message):
  with pytest.raises(data.DataError, match=message):
    data.load_dataset("synthetic", synthetic_train_size=512,
                      validation_size=size)


def test_validation_size_a_class_cannot_spare(tree):
  root, _ = tree
  for path in sorted((root / "train" / CLASSES[0]).iterdir())[1:]:
    path.unlink()  # That class keeps one training image.
  ds = _load(root)
  assert np.bincount(ds.train_labels).min() == 1
  size = ds.num_classes  # One of each class: the first class has none left.
  with pytest.raises(data.DataError, match=r"class '.*' has only \d+ training"):
    _load(root, validation_size=size)
