"""data.small_crop_size / small_crop_fraction (and the earlier stage,
data.first_crop_size / first_crop_fraction): the early steps of a run train
on smaller windows of the usual crop (cheaper steps), the rest and every
evaluation on whole images."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import (augment, checkpoint, config as config_lib, pipeline,
                    restore, steps, trainer)
from jaxcnn.config import ConfigError


def _images(n=16, side=12, seed=0):
  return jax.random.randint(jax.random.key(seed), (n, side, side, 3), 0, 255
                            ).astype(jnp.uint8)


@pytest.mark.parametrize("flip_mode", ["random", "alternate"])
@pytest.mark.parametrize("pad_mode", ["zeros", "reflect"])
def test_small_crop_is_the_middle_of_the_full_crop(flip_mode, pad_mode):
  # Same draws: the small window is the centre of the full-size crop, the
  # flip included (12 - 8 is even: the centre is exact).
  images, key = _images(), jax.random.key(3)
  kw = dict(global_batch=16, offset=0, crop=True, padding=2, flip=True,
            pad_mode=pad_mode, flip_mode=flip_mode, epoch=1,
            example_ids=jnp.arange(16), seed_key=jax.random.key(9))
  full = np.asarray(augment.random_crop_flip(images, key, **kw))
  small = np.asarray(augment.random_crop_flip(images, key, size=8, **kw))
  assert small.shape == (16, 8, 8, 3)
  np.testing.assert_array_equal(small, full[:, 2:10, 2:10])
  # Not a constant window: the translations vary per image.
  assert len({small[i].tobytes() for i in range(16)}) == 16


def test_small_crop_of_an_odd_margin_and_without_translation():
  images, key = _images(), jax.random.key(5)
  kw = dict(global_batch=16, offset=0, padding=2, flip=False)
  # 12 -> 9: the window starts floor(3 / 2) = 1 into the full crop's.
  full = np.asarray(augment.random_crop_flip(images, key, crop=True, **kw))
  small = np.asarray(augment.random_crop_flip(images, key, crop=True, size=9,
                                              **kw))
  np.testing.assert_array_equal(small, full[:, 1:10, 1:10])
  # Without the random crop: the centre of the image itself.
  plain = augment.random_crop_flip(images, key, crop=False, size=8, **kw)
  np.testing.assert_array_equal(plain, np.asarray(images)[:, 2:10, 2:10])
  with pytest.raises(ValueError, match="size 13"):
    augment.random_crop_flip(images, key, crop=True, size=13, **kw)


def speednet_config(*overrides):
  c = config_lib.load_experiment("speedrun_hiverge")
  return config_lib.apply_overrides(c, [
      "data.source=synthetic", "data.synthetic_train_size=256",
      "data.synthetic_test_size=64", "model.width=0.125",
      "train.batch_size=64", "train.num_steps=10", "train.eval_batch_size=64",
      "train.log_every_steps=4", "train.progress_bar=false",
      "train.final_tta=none", "model.speednet.whiten_images=64",
      *overrides])


def full_and_small_batches(setup, size):
  """Device 0's (images, labels) of step 3 at the data's side and at
  `size`, as the pipeline makes them inside the train step."""
  feed = steps.TrainFeed.place(setup)
  x, y = (np.asarray(a[0]) for a in feed.inputs()[:2])
  perm2 = np.asarray(feed.inputs()[2][0])

  def batch(crop_size):
    return jax.jit(lambda: pipeline.train_batch(
        setup, x, y, perm2, 3, 0, 0, crop_size=crop_size))()

  return batch(None), batch(size)


def test_pipeline_batch_of_the_early_steps_is_the_centre():
  setup = trainer.build(speednet_config(
      "data.small_crop_size=28", "data.small_crop_fraction=0.5"))
  assert setup.small_crop_until == 5  # round(0.5 * 10)
  (full, labels_full), (small, labels_small) = full_and_small_batches(setup,
                                                                      28)
  b = 64 // setup.num_devices  # Device 0's shard.
  assert full.shape == (b, 32, 32, 3) and small.shape == (b, 28, 28, 3)
  # Normalization and the per-example colour jitter commute with the window.
  np.testing.assert_allclose(small, full[:, 2:30, 2:30], rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(labels_small, labels_full)


def record_train_calls(monkeypatch, field: str) -> list:
  """Spies on the trainer's compiled train_fns: the returned list gets
  (first step, steps in the call, the make_train_fn argument `field`) for
  every call the trainer makes."""
  calls = []
  real = trainer.make_train_fn

  def spy(setup, n, stem_frozen=False, crop_size=None, frozen_blocks=0):
    fn = real(setup, n, stem_frozen, crop_size, frozen_blocks)
    picked = dict(stem_frozen=stem_frozen, crop_size=crop_size,
                  frozen_blocks=frozen_blocks)[field]

    def run(state, *args):
      calls.append((int(np.asarray(state.step)[0]), n, picked))
      return fn(state, *args)
    return run

  monkeypatch.setattr(trainer, "make_train_fn", spy)
  return calls


def test_three_stages_first_crops_then_small_crops_then_whole_images(
    tmp_path, monkeypatch):
  # 8 steps: round(0.25 * 8) = 2 on 20x20 crops (data.first_crop_*), then
  # up to round(0.625 * 8) = 5 on 28x28 (data.small_crop_*), then whole
  # images: the small step runs exactly steps 2-4. Every call of the trained step is
  # recorded with its side; in chunks of 2 the dispatches split at both
  # switches (and at step 1, where the whitening bias freezes), and the run
  # equals one of single steps.
  calls = record_train_calls(monkeypatch, "crop_size")
  stages = ["train.num_steps=8", "data.small_crop_size=28",
            "data.small_crop_fraction=0.625", "data.first_crop_size=20",
            "data.first_crop_fraction=0.25"]
  setup = trainer.build(speednet_config(*stages))
  assert (setup.first_crop_until, setup.small_crop_until) == (2, 5)
  assert [setup.crop_size_at(s) for s in range(8)] == [20, 20, 28, 28, 28,
                                                       None, None, None]
  trainer.train_and_evaluate(
      speednet_config(*stages, "train.steps_per_dispatch=2"),
      str(tmp_path / "k2"))
  assert calls == [(0, 1, 20), (1, 1, 20), (2, 2, 28), (4, 1, 28),
                   (5, 2, None), (7, 1, None)]
  calls.clear()
  trainer.train_and_evaluate(speednet_config(*stages), str(tmp_path / "k1"))
  assert [c[2] for c in calls] == [20, 20, 28, 28, 28, None, None, None]

  def params(name):
    return jax.tree.map(np.asarray, checkpoint.restore_latest_good(
        str(tmp_path / name), restore.build_target).state["params"])

  for a, b in zip(jax.tree.leaves(params("k1")), jax.tree.leaves(params("k2"))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_first_stage_batch_is_the_centre_of_the_full_crop():
  setup = trainer.build(speednet_config(
      "data.small_crop_size=28", "data.small_crop_fraction=0.5",
      "data.first_crop_size=20", "data.first_crop_fraction=0.2"))
  (full, labels_full), (small, labels_small) = full_and_small_batches(setup,
                                                                      20)
  np.testing.assert_allclose(small, full[:, 6:26, 6:26], rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(labels_small, labels_full)


def triangle_downscale(x, size):
  """Reference: antialiased linear downscaling of [b, H, W, C] to size x
  size, one axis at a time. Output pixel i is centred at (i + 0.5) / s in
  input pixels (s = size / side); input pixel j weighs max(0, 1 - s |j +
  0.5 - centre|) (a triangle as wide as an output pixel each side), the
  weights renormalised over the pixels inside the image."""
  def axis_weights(side):
    s = size / side
    centres = (np.arange(size) + 0.5) / s
    w = np.maximum(0.0, 1.0 - s * np.abs(np.arange(side)[None, :] + 0.5
                                         - centres[:, None]))
    return w / w.sum(axis=1, keepdims=True)  # [size, side]
  x = np.asarray(x, np.float64)
  wh, ww = axis_weights(x.shape[1]), axis_weights(x.shape[2])
  return np.einsum("ih,jw,bhwc->bijc", wh, ww, x)


@pytest.mark.parametrize("side,size", [(32, 24), (32, 16), (12, 9)])
def test_downscale_is_the_triangle_filter(side, size):
  x = jax.random.normal(jax.random.key(1), (3, side, side, 2))
  np.testing.assert_allclose(augment.downscale(x, size),
                             triangle_downscale(x, size), rtol=1e-5,
                             atol=1e-5)
  # 32 -> 16: output row i weighs input rows 2i - 1 .. 2i + 2 by 1/8, 3/8,
  # 3/8, 1/8, so input row 9 is in output rows 4 (3/8) and 5 (1/8).
  if (side, size) == (32, 16):
    row = np.zeros((1, 32, 1, 1), np.float32)
    row[0, 9] = 8.0
    out = np.asarray(augment.downscale(jnp.asarray(row).repeat(32, 2), 16))
    np.testing.assert_allclose(out[0, :, 0, 0], [0] * 4 + [3, 1] + [0] * 10,
                               atol=1e-6)


def test_resized_early_batch_is_the_whole_crop_scaled_down():
  # data.small_crop_mode=resize: the same translations, flips, labels and
  # colour jitter as the full-size batch of that step, then all of it
  # scaled down (the per-example jitter is affine, so it commutes).
  setup = trainer.build(speednet_config(
      "data.small_crop_size=24", "data.small_crop_fraction=0.5",
      "data.small_crop_mode=resize"))
  (full, labels_full), (small, labels_small) = full_and_small_batches(setup,
                                                                      24)
  assert small.shape == (full.shape[0], 24, 24, 3)
  np.testing.assert_allclose(small, triangle_downscale(full, 24), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_array_equal(labels_small, labels_full)
  # Not the centre window of the center mode.
  assert not np.allclose(small, full[:, 4:28, 4:28], atol=1e-2)


@pytest.mark.parametrize("overrides,match", [
    (["data.small_crop_size=24", "data.small_crop_fraction=0.5",
      "data.small_crop_mode=crop"], "use one of center, resize"),
    (["data.small_crop_size=28"], "go together"),
    (["data.small_crop_fraction=0.5"], "go together"),
    (["data.small_crop_size=28", "data.small_crop_fraction=1.5"],
     r"must be in \[0, 1\]"),
    (["data.small_crop_size=32", "data.small_crop_fraction=0.5"],
     "larger than it"),
    (["data.small_crop_size=-2", "data.small_crop_fraction=0.5"], ">= 0"),
    # At 8 the whitening conv and three 2x2 pools leave no pixel
    # (8 -> 7 -> 3 -> 1 -> 0); 9 still leaves one.
    (["data.small_crop_size=8", "data.small_crop_fraction=0.5"],
     "cannot train 8x8"),
    (["data.small_crop_size=24", "data.small_crop_fraction=0.5",
      "data.first_crop_size=16"], "go together"),
    (["data.small_crop_size=24", "data.small_crop_fraction=0.5",
      "data.first_crop_size=16", "data.first_crop_fraction=-0.1"],
     r"must be in \[0, 1\]"),
    (["data.first_crop_size=16", "data.first_crop_fraction=0.2"],
     "needs the small crops on"),
    (["data.small_crop_size=24", "data.small_crop_fraction=0.5",
      "data.first_crop_size=24", "data.first_crop_fraction=0.2"],
     "a smaller side"),
    (["data.small_crop_size=24", "data.small_crop_fraction=0.5",
      "data.first_crop_size=16", "data.first_crop_fraction=0.6"],
     "first_crop_fraction <="),
    (["data.small_crop_size=24", "data.small_crop_fraction=0.5",
      "data.first_crop_size=8", "data.first_crop_fraction=0.2"],
     "first_crop_size=8: model 'speednet' cannot train 8x8"),
])
def test_bad_small_crop_settings_are_refused(overrides, match):
  with pytest.raises(ConfigError, match=match):
    trainer.build(speednet_config(*overrides))


def test_a_model_whose_head_depends_on_the_side_is_refused():
  # The AlexNet-like model flattens its last map into fc384: another side,
  # other parameters.
  c = config_lib.apply_overrides(config_lib.load_experiment("alexnet"), [
      "data.source=synthetic", "data.small_crop_size=24",
      "data.small_crop_fraction=0.5"])
  with pytest.raises(ConfigError, match="cannot train 24x24"):
    trainer.build(c)
  # The tiny test model pools globally: any side, the same parameters.
  tiny = trainer.build(config_lib.apply_overrides(
      config_lib.load_experiment("test"),
      ["data.small_crop_size=20", "data.small_crop_fraction=0.25"]))
  assert tiny.small_crop_until == round(0.25 * tiny.total_steps) > 0
  assert trainer.build(config_lib.load_experiment("test")
                       ).small_crop_until is None


def test_speedrun_small_crops_is_speedrun_hiverge_with_its_four_changes():
  # The recipe file is the command its numbers were measured with:
  # speedrun_hiverge plus 24x24 crops for 60% of 277 steps and label
  # smoothing 0.2; nothing else differs.
  from jaxcnn import optim
  recipe = config_lib.load_experiment("speedrun_small_crops")
  by_hand = config_lib.apply_overrides(
      config_lib.load_experiment("speedrun_hiverge"), [
          "data.small_crop_size=24", "data.small_crop_fraction=0.6",
          "train.label_smoothing=0.2", "train.num_steps=277"])
  assert recipe == by_hand
  assert recipe != config_lib.load_experiment("speedrun_hiverge")
  # 166 steps on 24x24 crops, the last 111 on whole images. (Eight
  # batches an epoch: the whitening bias's 0.22 epochs must be a step.)
  setup = trainer.build(config_lib.apply_overrides(recipe, [
      "data.source=synthetic", "data.synthetic_train_size=12288",
      "data.synthetic_test_size=64", "model.width=0.125",
      "train.eval_batch_size=64", "train.progress_bar=false",
      "model.speednet.whiten_images=64"]))
  assert (setup.small_crop_until, setup.total_steps) == (166, 277)
  # Every rate falls linearly to 0 over the 277 steps.
  filters = {g.name: g for g in recipe.optim.groups}["filters"]
  s = optim.make_group_schedule(recipe.optim, filters, 32, total_steps=277)
  np.testing.assert_allclose([s(0), s(277)], [0.205, 0.0], atol=1e-6)


def test_speedrun_progressive_is_speedrun_pruned_with_a_first_stage():
  # The recipe file is the command its numbers were measured with:
  # speedrun_pruned plus 20x20 crops for the first 30% of 266 steps.
  from jaxcnn import optim
  recipe = config_lib.load_experiment("speedrun_progressive")
  by_hand = config_lib.apply_overrides(
      config_lib.load_experiment("speedrun_pruned"), [
          "data.first_crop_size=20", "data.first_crop_fraction=0.3",
          "train.num_steps=266"])
  assert recipe == by_hand
  # 80 steps on 20x20, 80 on 24x24, the last 106 on whole images.
  setup = trainer.build(config_lib.apply_overrides(recipe, [
      "data.source=synthetic", "data.synthetic_train_size=12288",
      "data.synthetic_test_size=64", "model.width=0.125",
      "train.eval_batch_size=64", "train.progress_bar=false",
      "model.speednet.whiten_images=64"]))
  assert (setup.first_crop_until, setup.small_crop_until,
          setup.total_steps) == (80, 160, 266)
  assert [setup.crop_size_at(s) for s in (0, 79, 80, 159, 160, 265)] == [
      20, 20, 24, 24, None, None]
  # Every rate falls linearly to 0 over the 266 steps.
  filters = {g.name: g for g in recipe.optim.groups}["filters"]
  s = optim.make_group_schedule(recipe.optim, filters, 32, total_steps=266)
  np.testing.assert_allclose([s(0), s(266)], [0.205, 0.0], atol=1e-6)
