"""jaxcnn/augment.py's normalizations and random crop / flip against what
they must do, worked out here in numpy.

The crop and flip tests use images whose pixels hold their own coordinates,
so the offset each example got can be read back from the output and the rest
of the output checked to be exactly that shift of the input. (The speed
recipe's parts, alternating flips, the reflect-padded crop as a re-derived
draw, and test-time augmentation, are in tests/test_speedrun.py.) Runs on the
4 fake CPU devices of conftest.py.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import augment, parallel


def coordinate_images(n, h, w):
  """uint8 [n, h, w, 3]: channel 0 is row + 1, channel 1 is column + 1 and
  channel 2 is 100 + the image's index, so no pixel is 0 (0 is zero fill)
  and every pixel says where it came from."""
  rows = np.broadcast_to(np.arange(h)[:, None], (h, w)) + 1
  cols = np.broadcast_to(np.arange(w)[None, :], (h, w)) + 1
  out = np.zeros((n, h, w, 3), np.uint8)
  out[..., 0] = rows
  out[..., 1] = cols
  out[..., 2] = (100 + np.arange(n))[:, None, None]
  return out


def shifted(image, dy, dx, pad_mode):
  """numpy: out[i, j] = image[i + dy, j + dx], outside the image 0 ('zeros')
  or the pixel mirrored about the edge row/column ('reflect', the edge not
  repeated)."""
  h, w, c = image.shape
  out = np.zeros_like(image)
  for i in range(h):
    for j in range(w):
      y, x = i + dy, j + dx
      if pad_mode == "reflect":
        y = -y if y < 0 else (2 * (h - 1) - y if y >= h else y)
        x = -x if x < 0 else (2 * (w - 1) - x if x >= w else x)
      if 0 <= y < h and 0 <= x < w:
        out[i, j] = image[y, x]
  return out


def crop_flip(images, key, **kw):
  kw.setdefault("crop", False)
  kw.setdefault("flip", False)
  kw.setdefault("padding", 0)
  return np.asarray(augment.random_crop_flip(
      jnp.asarray(images), key, global_batch=len(images), offset=0, **kw))


# --- Random crop -----------------------------------------------------------------


@pytest.mark.parametrize("pad_mode", ["zeros", "reflect"])
def test_crop_is_a_shift_by_an_offset_within_the_padding(pad_mode):
  n, h, w, pad = 128, 9, 11, 3  # h != w: rows and columns cannot be mixed up.
  images = coordinate_images(n, h, w)
  out = crop_flip(images, jax.random.key(0), crop=True, padding=pad,
                  pad_mode=pad_mode)
  assert out.shape == images.shape and out.dtype == np.uint8
  offsets = []
  for k in range(n):
    # Output pixel (pad, pad) comes from input (pad + dy, pad + dx), inside
    # the image for any offset in [-pad, pad]: the offset can be read there.
    dy = int(out[k, pad, pad, 0]) - 1 - pad
    dx = int(out[k, pad, pad, 1]) - 1 - pad
    assert -pad <= dy <= pad and -pad <= dx <= pad
    np.testing.assert_array_equal(out[k], shifted(images[k], dy, dx, pad_mode),
                                  err_msg=f"example {k}, offset {(dy, dx)}")
    offsets.append((dy, dx))
  offsets = np.array(offsets)
  # Every offset occurs, rows and columns drawn independently, and examples
  # get different ones.
  for axis in (0, 1):
    assert set(offsets[:, axis]) == set(range(-pad, pad + 1))
  assert np.mean(offsets[:, 0] == offsets[:, 1]) < 0.4
  if pad_mode == "zeros":
    # The fill is exactly the pixels that came from outside the image.
    for k, (dy, dx) in enumerate(offsets):
      outside = np.zeros((h, w), bool)
      outside[:max(0, -dy)] = outside[h - max(0, dy):] = True
      outside[:, :max(0, -dx)] = outside[:, w - max(0, dx):] = True
      np.testing.assert_array_equal(np.all(out[k] == 0, axis=-1), outside)


def test_no_crop_without_padding_or_when_off():
  images = coordinate_images(16, 6, 7)
  key = jax.random.key(1)
  np.testing.assert_array_equal(
      crop_flip(images, key, crop=True, padding=0), images)
  np.testing.assert_array_equal(
      crop_flip(images, key, crop=False, padding=4), images)
  # The same draw with the crop on does move them (so the above means it).
  assert not np.array_equal(crop_flip(images, key, crop=True, padding=4),
                            images)


# --- Random flip -----------------------------------------------------------------


def test_flip_mirrors_the_width_axis_only():
  n, h, w = 128, 5, 8
  images = coordinate_images(n, h, w)
  out = crop_flip(images, jax.random.key(2), flip=True)
  flipped = []
  for k in range(n):
    if np.array_equal(out[k], images[k]):
      flipped.append(False)
    else:
      flipped.append(True)
      # Columns reversed; rows and channels (each channel has its own
      # meaning here) where they were.
      np.testing.assert_array_equal(out[k, :, :, 1], w - images[k, :, :, 1] + 1)
      np.testing.assert_array_equal(out[k, :, :, 0], images[k, :, :, 0])
      np.testing.assert_array_equal(out[k, :, :, 2], images[k, :, :, 2])
      np.testing.assert_array_equal(out[k], images[k, :, ::-1, :])
  # A fair coin per example.
  assert 40 < sum(flipped) < 88


def test_crop_then_flip_is_the_mirror_image_of_the_same_crop():
  images = coordinate_images(64, 8, 8)
  key = jax.random.key(3)
  cropped = crop_flip(images, key, crop=True, padding=2)
  both = crop_flip(images, key, crop=True, padding=2, flip=True)
  mirrored = 0
  for k in range(len(images)):
    if np.array_equal(both[k], cropped[k]):
      continue
    np.testing.assert_array_equal(both[k], cropped[k, :, ::-1])
    mirrored += 1
  assert 0 < mirrored < len(images)


# --- One global draw, sliced per device --------------------------------------------


def test_each_device_gets_its_slice_of_one_global_draw():
  # As in the train step: each device augments its own rows of the global
  # batch from the same key; the result is the single-device augmentation.
  devices = jax.local_devices()[:4]
  assert len(devices) == 4  # conftest.py's fake devices.
  n, b = 32, 8
  images = np.random.default_rng(0).integers(0, 256, (n, 6, 6, 3), np.uint8)
  key = jax.random.key(4)
  options = dict(crop=True, padding=2, flip=True, pad_mode="zeros")
  whole = crop_flip(images, key, **options)

  def per_device(local):
    offset = jax.lax.axis_index(parallel.AXIS) * b
    return augment.random_crop_flip(local, key, global_batch=n, offset=offset,
                                    **options)

  split = jax.pmap(per_device, axis_name=parallel.AXIS, devices=devices)(
      images.reshape(4, b, 6, 6, 3))
  np.testing.assert_array_equal(np.asarray(split).reshape(whole.shape), whole)
  # And each slice differs from drawing that slice as a batch of its own.
  alone = crop_flip(images[b:2 * b], key, **options)
  assert not np.array_equal(alone, whole[b:2 * b])


# --- Color jitter ----------------------------------------------------------------


def test_color_jitter_is_one_brightness_shift_and_contrast_scale_per_example():
  # Each example is (x + u) * (1 + v) for one (u, v) of its own within the
  # ranges: read (u, v) back from two pixels and check every other pixel.
  n = 64
  x = np.random.default_rng(1).normal(size=(n, 5, 5, 3)).astype(np.float32)
  out = np.asarray(augment.color_jitter(
      jnp.asarray(x), jax.random.key(3), global_batch=n, offset=0,
      brightness=0.14, contrast=0.13), np.float64)
  x64 = x.astype(np.float64)
  a, b = (0, 0, 0, 0), (0, 1, 2, 1)  # Two pixels of each image.
  for i in range(n):
    # out = (x + u)(1 + v): (out_a - out_b) = (x_a - x_b)(1 + v).
    scale = (out[i][a[1:]] - out[i][b[1:]]) / (x64[i][a[1:]] - x64[i][b[1:]])
    u = out[i][a[1:]] / scale - x64[i][a[1:]]
    assert abs(scale - 1) <= 0.13 + 1e-5 and abs(u) <= 0.14 + 1e-5
    np.testing.assert_allclose(out[i], (x64[i] + u) * scale, atol=1e-5)
  scales = (out[:, 0, 0, 0] - out[:, 1, 2, 1]) / (
      x64[:, 0, 0, 0] - x64[:, 1, 2, 1])
  # Drawn per example, over most of the range.
  assert len(np.unique(np.round(scales, 6))) == n
  assert scales.min() < 0.93 and scales.max() > 1.07


def test_color_jitter_each_device_gets_its_slice_of_one_global_draw():
  devices = jax.local_devices()[:4]
  n, b = 32, 8
  x = np.random.default_rng(2).normal(size=(n, 4, 4, 3)).astype(np.float32)
  key = jax.random.key(5)
  options = dict(brightness=0.2, contrast=0.1)
  whole = np.asarray(augment.color_jitter(jnp.asarray(x), key, global_batch=n,
                                          offset=0, **options))

  def per_device(local):
    offset = jax.lax.axis_index(parallel.AXIS) * b
    return augment.color_jitter(local, key, global_batch=n, offset=offset,
                                **options)

  split = jax.pmap(per_device, axis_name=parallel.AXIS, devices=devices)(
      x.reshape(4, b, 4, 4, 3))
  np.testing.assert_allclose(np.asarray(split).reshape(whole.shape), whole,
                             rtol=1e-6, atol=1e-6)
  assert not np.allclose(whole, x)


# --- Normalization -----------------------------------------------------------------

MEAN = np.array([0.49, 0.48, 0.45])
STD = np.array([0.25, 0.24, 0.26])


def np_channel(x):
  return (x.astype(np.float64) / 255.0 - MEAN) / STD


def np_image(x):
  """tf.image.per_image_standardization of x / 255, per image: population
  std over all pixels and channels, floored at 1 / sqrt(pixels * channels)."""
  x = x.astype(np.float64) / 255.0
  out = np.empty_like(x)
  for idx in np.ndindex(x.shape[:-3]):
    img = x[idx]
    adjusted_std = max(img.std(), 1.0 / np.sqrt(img.size))
    out[idx] = (img - img.mean()) / adjusted_std
  return out


def np_none(x):
  return x.astype(np.float64) / 255.0


FORMULAS = {"channel": np_channel, "image": np_image, "none": np_none}


def test_every_normalization_has_a_formula_here():
  assert set(FORMULAS) == set(augment.NORMALIZATIONS)


@pytest.mark.parametrize("mode", sorted(FORMULAS))
def test_normalization_matches_its_formula(mode):
  rng = np.random.default_rng(5)
  # Images of different brightness and contrast, so per-image and per-batch
  # statistics differ; a leading [2, 3] batch shape ("..." in the docstring).
  scale = rng.uniform(0.1, 1.0, (2, 3, 1, 1, 1))
  base = rng.uniform(0, 255 * (1 - scale))
  x = (base + scale * rng.integers(0, 256, (2, 3, 6, 5, 3))).astype(np.uint8)
  got = augment.normalize(jnp.asarray(x), mode, MEAN, STD)
  assert got.dtype == jnp.float32 and got.shape == x.shape
  np.testing.assert_allclose(np.asarray(got), FORMULAS[mode](x), rtol=1e-5,
                             atol=1e-5)


def test_image_standardization_statistics_and_its_std_floor():
  rng = np.random.default_rng(6)
  x = rng.integers(0, 256, (4, 8, 8, 3), np.uint8)
  got = np.asarray(augment.normalize(jnp.asarray(x), "image", MEAN, STD))
  np.testing.assert_allclose(got.mean(axis=(1, 2, 3)), 0, atol=1e-5)
  np.testing.assert_allclose(got.std(axis=(1, 2, 3)), 1, rtol=1e-4)
  # A nearly flat image: its std (one pixel one level above black) is far
  # below 1/sqrt(N), so the floor divides, not the std (which would give the
  # bright pixel about 14, not 0.05).
  flat = np.zeros((1, 8, 8, 3), np.uint8)
  flat[0, 3, 4, 1] = 1
  n = flat.size
  centred = flat / 255.0 - (flat / 255.0).mean()
  assert centred.std() < 1 / np.sqrt(n) / 10
  got = np.asarray(augment.normalize(jnp.asarray(flat), "image", MEAN, STD))
  np.testing.assert_allclose(got, centred * np.sqrt(n), rtol=1e-4, atol=1e-6)
  # A constant image: zeros (up to float32 rounding of its mean), no
  # division by zero.
  const = np.full((1, 8, 8, 3), 77, np.uint8)
  got = np.asarray(augment.normalize(jnp.asarray(const), "image", MEAN, STD))
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, 0, atol=1e-5)


def test_channel_and_none_at_the_ends_of_the_range():
  x = jnp.asarray(np.array([[[[0, 255, 0]]], [[[255, 0, 255]]]], np.uint8))
  none = np.asarray(augment.normalize(x, "none", MEAN, STD))
  np.testing.assert_array_equal(none, np.asarray(x) / 255)
  channel = np.asarray(augment.normalize(x, "channel", MEAN, STD))
  np.testing.assert_allclose(channel[0, 0, 0], [-MEAN[0] / STD[0],
                                                (1 - MEAN[1]) / STD[1],
                                                -MEAN[2] / STD[2]], rtol=1e-6)


def test_unknown_normalization_is_an_error_naming_the_modes():
  with pytest.raises(ValueError) as e:
    augment.normalize(jnp.zeros((1, 2, 2, 3), jnp.uint8), "batch", MEAN, STD)
  assert "'batch'" in str(e.value)
  for mode in augment.NORMALIZATIONS:
    assert mode in str(e.value)
