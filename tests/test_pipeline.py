"""jaxcnn.pipeline: each epoch's example order is a seeded permutation prefix
(a pure function of seed and epoch, checked against its definition: unique
indices of range(n), the remainder dropped, a different order and a
different dropped remainder each epoch), `two_epochs` is two of them end to
end, and `train_batch` (run under jit with a traced step and device, as in
the pmap'd step) picks each device's shard of a step's global batch from
those permutations, checked against numpy indexing and normalization of the
training set; with crop and flip on, the shards of four devices are the
one-device batch cut in four. `flip_coins_key` is a trace-time constant of
the seed; that no step key equals it, as its docstring says, is marked a
strict xfail: under JAX's partitionable threefry it equals step 1's key.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import config as config_lib, pipeline, trainer


# --- The order of an epoch ----------------------------------------------------


@pytest.mark.parametrize("n, steps_per_epoch, batch", [
    (96, 3, 32),    # The whole set, in whole batches.
    (100, 3, 32),   # 4 examples dropped each epoch.
    (50, 1, 7),
])
def test_epoch_permutation_is_a_seeded_permutation_prefix(n, steps_per_epoch,
                                                          batch):
  perm = pipeline.epoch_permutation(3, 5, n, steps_per_epoch, batch)
  assert perm.dtype == np.int32
  assert perm.shape == (steps_per_epoch * batch,)
  assert len(np.unique(perm)) == len(perm)
  assert perm.min() >= 0 and perm.max() < n
  # A pure function of (seed, epoch): the same again, another for either.
  np.testing.assert_array_equal(
      perm, pipeline.epoch_permutation(3, 5, n, steps_per_epoch, batch))
  for other in [(3, 6), (4, 5)]:
    assert not np.array_equal(
        perm, pipeline.epoch_permutation(*other, n, steps_per_epoch, batch))


def test_the_dropped_remainder_changes_from_epoch_to_epoch():
  # 100 examples, 96 used an epoch: over 20 epochs every example is used, and
  # the 4 left out are not always the same.
  used = [set(pipeline.epoch_permutation(0, e, 100, 3, 32)) for e in range(20)]
  assert set().union(*used) == set(range(100))
  left_out = {frozenset(set(range(100)) - u) for u in used}
  assert len(left_out) > 1


def test_two_epochs_is_epoch_and_next_end_to_end():
  n, spe, batch = 100, 3, 32
  both = pipeline.two_epochs(7, 4, n, spe, batch)
  np.testing.assert_array_equal(both[:spe * batch],
                                pipeline.epoch_permutation(7, 4, n, spe, batch))
  np.testing.assert_array_equal(both[spe * batch:],
                                pipeline.epoch_permutation(7, 5, n, spe, batch))
  assert both.dtype == np.int32 and both.shape == (2 * spe * batch,)


# --- One step's batch ---------------------------------------------------------


@pytest.fixture(scope="module")
def setup4():
  """The test experiment's setup on 4 devices (512 synthetic images, batch
  32, 16 steps an epoch), crop and flip on as configured."""
  cfg = config_lib.apply_overrides(config_lib.load_experiment("test"),
                                   ["train.num_devices=4"])
  setup = trainer.build(cfg)
  assert setup.config.data.random_crop and setup.config.data.random_flip
  return setup


def with_data(setup, **fields):
  """`setup` with config.data fields changed (they are read at trace time)."""
  config = setup.config.copy()
  for key, value in fields.items():
    config.data[key] = value
  return dataclasses.replace(setup, config=config)


def batch_fn(setup):
  """train_batch of `setup` under jit, step, base and device traced."""
  return jax.jit(lambda x, y, perm2, step, base, device: pipeline.train_batch(
      setup, x, y, perm2, step, base, device))


def inputs(setup, epoch):
  cfg = setup.config
  perm2 = pipeline.two_epochs(cfg.seed, epoch, len(setup.data.train_labels),
                              setup.steps_per_epoch, cfg.train.batch_size)
  return (jnp.asarray(setup.data.train_images),
          jnp.asarray(setup.data.train_labels.astype(np.int32)),
          jnp.asarray(perm2))


def test_train_batch_takes_each_devices_shard_of_the_permutation(setup4):
  setup = with_data(setup4, random_crop=False, random_flip=False)
  cfg = setup.config
  assert cfg.data.normalization == "channel"
  fn = batch_fn(setup)
  spe, batch = setup.steps_per_epoch, cfg.train.batch_size
  local = batch // setup.num_devices
  epoch = 2
  base = epoch * spe
  x, y, perm2 = inputs(setup, epoch)
  mean, std = setup.mean_std
  n = len(setup.data.train_labels)
  this_epoch = pipeline.epoch_permutation(cfg.seed, epoch, n, spe, batch)
  next_epoch = pipeline.epoch_permutation(cfg.seed, epoch + 1, n, spe, batch)
  # Steps of this epoch, and one of the next (a dispatch of several steps
  # may cross the boundary: it reads the second half of perm2).
  for step, order, k in [(base, this_epoch, 0), (base + 5, this_epoch, 5),
                         (base + spe + 1, next_epoch, 1)]:
    global_ids = order[k * batch:(k + 1) * batch]
    shards = []
    for device in range(setup.num_devices):
      images, labels = fn(x, y, perm2, step, base, device)
      ids = global_ids[device * local:(device + 1) * local]
      want = (setup.data.train_images[ids].astype(np.float32) / 255.0
              - mean) / std
      np.testing.assert_allclose(np.asarray(images), want, rtol=1e-5,
                                 atol=1e-5)
      np.testing.assert_array_equal(np.asarray(labels),
                                    setup.data.train_labels[ids])
      assert images.dtype == jnp.float32
      shards.append(ids)
    # The shards are disjoint and together the whole global batch.
    together = np.concatenate(shards)
    assert len(np.unique(together)) == batch
    np.testing.assert_array_equal(together, global_ids)


def test_augmented_shards_are_the_one_device_batch_cut_in_four(setup4):
  # Crops and flips are drawn for the whole global batch from the step, then
  # sliced: the device count changes nothing.
  one = dataclasses.replace(setup4, devices=setup4.devices[:1])
  step = 3
  x, y, perm2 = inputs(setup4, 0)
  whole, whole_labels = batch_fn(one)(x, y, perm2, step, 0, 0)
  fn4 = batch_fn(setup4)
  shards = [fn4(x, y, perm2, step, 0, d) for d in range(4)]
  # The same arithmetic, compiled for other shapes: equal to float rounding.
  np.testing.assert_allclose(np.concatenate([s[0] for s in shards]), whole,
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(np.concatenate([s[1] for s in shards]),
                                whole_labels)
  # And the augmentation did something: not the plain normalized images.
  ids = perm2[step * 32:(step + 1) * 32]
  mean, std = setup4.mean_std
  plain = (setup4.data.train_images[np.asarray(ids)] / 255.0 - mean) / std
  differs = np.abs(np.asarray(whole) - plain).max(axis=(1, 2, 3)) > 1e-3
  assert differs.sum() > 16


def test_flips_alone_mirror_some_images_of_the_plain_batch(setup4):
  setup = with_data(setup4, random_crop=False)
  x, y, perm2 = inputs(setup, 0)
  fn = batch_fn(setup)
  ids = np.asarray(perm2)[32:64]  # Step 1.
  mean, std = setup.mean_std
  plain = (setup.data.train_images[ids] / 255.0 - mean) / std
  images = np.concatenate([fn(x, y, perm2, 1, 0, d)[0] for d in range(4)])
  same = np.isclose(images, plain, atol=1e-5).all(axis=(1, 2, 3))
  mirrored = np.isclose(images, plain[:, :, ::-1], atol=1e-5).all(
      axis=(1, 2, 3))
  assert (same | mirrored).all()
  assert (same & ~mirrored).any() and (mirrored & ~same).any()


def test_color_jitter_after_normalization_and_only_when_on(setup4):
  # data.jitter_*: the plain (no crop, no flip) batch of each device, each
  # example shifted and scaled by its own (u, v) within the ranges; the
  # crops and flips of the same step are those without jitter.
  plain_setup = with_data(setup4, random_crop=False, random_flip=False)
  jitter_setup = with_data(plain_setup, jitter_brightness=0.3,
                           jitter_contrast=0.2)
  x, y, perm2 = inputs(setup4, 0)
  step = 2
  plain = np.concatenate([batch_fn(plain_setup)(x, y, perm2, step, 0, d)[0]
                          for d in range(4)]).astype(np.float64)
  jittered = np.concatenate([batch_fn(jitter_setup)(x, y, perm2, step, 0, d)[0]
                             for d in range(4)]).astype(np.float64)
  flat_p, flat_j = plain.reshape(32, -1), jittered.reshape(32, -1)
  for p, j in zip(flat_p, flat_j):
    scale, shift = np.polyfit(p, j, 1)  # j = (p + u)(1 + v) = scale p + shift.
    np.testing.assert_allclose(j, scale * p + shift, atol=1e-4)
    assert abs(scale - 1) <= 0.2 + 1e-5 and abs(shift / scale) <= 0.3 + 1e-5
  assert np.abs(flat_j - flat_p).max() > 0.05
  # With crops and flips on too, jitter changes nothing but the colours.
  both = with_data(setup4, jitter_brightness=0.3, jitter_contrast=0.2)
  augmented = np.asarray(batch_fn(setup4)(x, y, perm2, step, 0, 1)[0])
  with_jitter = np.asarray(batch_fn(both)(x, y, perm2, step, 0, 1)[0])
  for a, j in zip(augmented.reshape(8, -1), with_jitter.reshape(8, -1)):
    scale, shift = np.polyfit(a, j, 1)
    np.testing.assert_allclose(j, scale * a + shift, atol=1e-4)


# --- Keys ---------------------------------------------------------------------


def test_flip_coins_key_is_a_function_of_the_seed():
  coins = np.asarray(pipeline.flip_coins_key(11))
  np.testing.assert_array_equal(coins, pipeline.flip_coins_key(11))
  assert not np.array_equal(coins, pipeline.flip_coins_key(12))


@pytest.mark.xfail(strict=True, reason=(
    "with jax_threefry_partitionable (JAX's default), split(key)[i] equals "
    "fold_in(key, i): flip_coins_key(seed) is the key of step 1"))
def test_flip_coins_key_is_no_step_key():
  # As its docstring says: no fold_in of the seed key by a step, nor the
  # crop/flip key train_batch makes from one, equals it.
  seed = 11
  root = jax.random.PRNGKey(seed)
  step_keys = jax.vmap(lambda s: jax.random.fold_in(root, s))(
      jnp.arange(4096))
  augment_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(step_keys)
  coins = np.asarray(pipeline.flip_coins_key(seed))
  for keys in (step_keys, augment_keys):
    assert not (np.asarray(keys) == coins).all(axis=-1).any()


def test_flip_coins_key_is_a_constant_under_a_trace():
  seen = []

  def f(x):
    key = pipeline.flip_coins_key(0)
    seen.append(isinstance(key, jax.core.Tracer))
    return x + key[0]

  jax.jit(f)(jnp.uint32(0))
  assert seen == [False]
