"""jaxcnn.steps: the losses against a float64 numpy log-softmax (plain and
label-smoothed, with logits large enough to overflow a naive softmax); the
metric accumulator against numpy sums, its bad_step the first non-finite
step (1-based); and one pmap'd train step (`make_train_fn(setup, 1)`, two
devices, mid-run in the second epoch) against the same update computed by
hand on one device from the global batch: its examples taken from the
epoch's permutation by numpy, the loss written out, `jax.value_and_grad`,
`setup.tx.update`, and the BatchNorm statistics' EMA by its formula.
That k steps per call equal k single calls is in test_train.py.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import config as config_lib, parallel, pipeline, steps, trainer
from jaxcnn.models import create_model


def log_softmax64(logits):
  x = np.asarray(logits, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def smoothed_targets(labels, classes, smoothing):
  return ((1 - smoothing) * np.eye(classes)[labels] + smoothing / classes)


# --- Losses -------------------------------------------------------------------


@pytest.fixture(scope="module")
def logits_and_labels():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (16, 10)).astype(np.float32)
  logits[0] *= 400  # exp() of these overflows float32.
  return logits, rng.integers(0, 10, 16)


def test_cross_entropy_is_minus_the_log_softmax_of_the_label(logits_and_labels):
  logits, labels = logits_and_labels
  want = -log_softmax64(logits)[np.arange(16), labels]
  got = steps.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # bfloat16 logits: the loss of their float32 values, in float32.
  low = jnp.asarray(logits, jnp.bfloat16)
  got = steps.cross_entropy(low, jnp.asarray(labels))
  assert got.dtype == jnp.float32
  want = -log_softmax64(np.asarray(low, np.float32))[np.arange(16), labels]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("smoothing", [0.1, 0.3])
def test_smoothed_cross_entropy_is_against_the_smoothed_targets(
    logits_and_labels, smoothing):
  logits, labels = logits_and_labels
  targets = smoothed_targets(labels, 10, smoothing)
  want = -(targets * log_softmax64(logits)).sum(-1)
  got = steps.smoothed_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                     smoothing)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  # Smoothing adds the mean of -log p over the classes, weighted, to the
  # plain loss scaled by 1 - smoothing: it is not the plain loss.
  plain = -log_softmax64(logits)[np.arange(16), labels]
  assert np.abs(np.asarray(got) - plain).max() > 0.01


def test_no_smoothing_is_the_plain_cross_entropy(logits_and_labels):
  logits, labels = map(jnp.asarray, logits_and_labels)
  np.testing.assert_array_equal(
      steps.smoothed_cross_entropy(logits, labels, 0.0),
      steps.cross_entropy(logits, labels))
  # And the smoothed form's limit: the one-hot targets' loss.
  np.testing.assert_allclose(
      steps.smoothed_cross_entropy(logits, labels, 1e-7),
      steps.cross_entropy(logits, labels), rtol=1e-5, atol=1e-4)


# --- Accumulated metrics ------------------------------------------------------


def fake_metrics(rng, finite=True):
  return {"loss_sum": np.float32(rng.uniform(10, 80)),
          "correct": np.float32(rng.integers(0, 32)),
          "count": np.float32(32), "grad_norm": np.float32(rng.uniform(0, 3)),
          "finite": np.bool_(finite)}


@pytest.mark.parametrize("finite, first_bad", [
    ([True] * 5, None),
    ([True, False, True, False, True], 1),
    ([False, True, True, True, True], 0),
    ([True, True, True, True, False], 4),
])
def test_accumulate_sums_and_keeps_the_first_bad_step(finite, first_bad):
  rng = np.random.default_rng(len(finite) + (first_bad or 0))
  start = 40  # The state's step before the first of these updates.
  metrics = [fake_metrics(rng, f) for f in finite]
  acc = steps.new_accumulator()
  assert all(float(acc[k]) == 0 for k in acc if k != "bad_step")
  for i, m in enumerate(metrics):
    acc = steps.accumulate(acc, m, np.int32(start + i))
  for key, source in [("loss_sum", "loss_sum"), ("correct", "correct"),
                      ("count", "count"), ("grad_norm_sum", "grad_norm")]:
    np.testing.assert_allclose(
        float(acc[key]), sum(float(m[source]) for m in metrics), rtol=1e-6)
  assert float(acc["steps"]) == len(metrics)
  # 1-based: the update from state step s is step s + 1.
  want = steps.NO_BAD_STEP if first_bad is None else start + first_bad + 1
  assert int(acc["bad_step"]) == want
  assert np.asarray(acc["bad_step"]).dtype == np.int32


# --- One train step against the update written out ----------------------------


def test_one_train_step_is_the_update_computed_by_hand():
  smoothing, decay = 0.1, 0.99
  cfg = config_lib.apply_overrides(config_lib.load_experiment("test"), [
      "train.num_devices=2", "model.dropout=0.0", "data.random_crop=False",
      "data.random_flip=False", f"train.label_smoothing={smoothing}",
      f"optim.ema_decay={decay}", "optim.ema_ramp=True",
      "optim.warmup_epochs=0"])  # A warmup would start at rate 0.
  setup = trainer.build(cfg)
  cfg = setup.config
  spe, batch = setup.steps_per_epoch, cfg.train.batch_size
  assert (spe, setup.stem_frozen_from) == (16, None)
  # Mid-run: the second step of epoch 1. The step is a pure function of its
  # inputs, so the state need not be one a run reaches: the fresh state's
  # shapes (traced, not compiled) filled with random values, but the
  # optimizer's counts 0 and the key a key.
  step = spe + 1
  shapes = jax.eval_shape(lambda: trainer.create_train_state(setup))
  rng = np.random.default_rng(1)

  def fill(x):
    if jnp.issubdtype(x.dtype, jnp.floating):
      return (0.2 * rng.standard_normal(x.shape)).astype(x.dtype)
    return np.zeros(x.shape, x.dtype)

  host = jax.tree.map(fill, shapes).replace(
      step=np.int32(step), rng=np.asarray(jax.random.PRNGKey(5)))

  feed = steps.TrainFeed.place(setup, epoch=1)
  train_fn = steps.make_train_fn(setup, 1)
  new, acc = train_fn(parallel.replicate(host, setup.devices),
                      feed.accumulator(), *feed.inputs())
  # Both devices' copies are the same (read without compiling a program for
  # each leaf, as indexing the device arrays would).
  new, acc = jax.tree.map(np.asarray, (new, acc))
  for x in jax.tree.leaves((new, acc)):
    np.testing.assert_array_equal(x[0], x[1])
  new, acc = jax.tree.map(lambda x: x[0], (new, acc))

  # The global batch of that step, by numpy.
  n = len(setup.data.train_labels)
  ids = pipeline.epoch_permutation(cfg.seed, 1, n, spe, batch)[
      batch:2 * batch]
  mean, std = setup.mean_std
  images = (setup.data.train_images[ids].astype(np.float32) / 255.0
            - mean) / std
  labels = setup.data.train_labels[ids].astype(np.int32)
  targets = smoothed_targets(labels, cfg.model.num_classes,
                             smoothing).astype(np.float32)

  # One device, the whole batch: BatchNorm over it is the two devices'
  # synchronised BatchNorm, the gradient of its mean loss their averaged one.
  model = create_model(cfg.model, bn_axis_name=None)

  @jax.jit
  def by_hand(params, batch_stats, opt_state):
    def loss_fn(p):
      logits, new_vars = model.apply(
          {"params": p, "batch_stats": batch_stats}, images, train=True,
          mutable=["batch_stats"])
      loss = -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits), -1))
      return loss, (logits, new_vars["batch_stats"])

    (loss, (logits, stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params)
    updates, opt_state = setup.tx.update(grads, opt_state, params)
    return (loss, logits, stats, grads, optax.apply_updates(params, updates),
            opt_state)

  loss, logits, stats, grads, params, opt_state = jax.tree.map(
      np.asarray, by_hand(host.params, host.batch_stats, host.opt_state))

  tol = dict(rtol=2e-4, atol=2e-5)
  assert int(new.step) == step + 1
  for got, want in [(new.params, params), (new.batch_stats, stats),
                    (new.opt_state, opt_state)]:
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
      np.testing.assert_allclose(a, b, **tol)
  # The update was not nothing.
  moved = max(np.abs(a - b).max() for a, b in
              zip(jax.tree.leaves(new.params), jax.tree.leaves(host.params)))
  assert moved > 1e-4
  # TF's ramped decay for the update that makes step + 1 updates.
  d = min(decay, (1 + (step + 1)) / (10 + (step + 1)))
  for got, old, now in zip(jax.tree.leaves(new.ema_batch_stats),
                           jax.tree.leaves(host.ema_batch_stats),
                           jax.tree.leaves(stats), strict=True):
    np.testing.assert_allclose(got, d * old + (1 - d) * now, **tol)
  np.testing.assert_array_equal(new.rng, host.rng)

  # The accumulator after one step: the global batch's sums.
  grad_norm = np.sqrt(sum(np.sum(np.square(g.astype(np.float64)))
                          for g in jax.tree.leaves(grads)))
  np.testing.assert_allclose(acc["loss_sum"], loss * batch, rtol=1e-4)
  assert float(acc["correct"]) == np.sum(np.argmax(logits, -1) == labels)
  assert float(acc["count"]) == batch and float(acc["steps"]) == 1
  np.testing.assert_allclose(acc["grad_norm_sum"], grad_norm, rtol=1e-4)
  assert int(acc["bad_step"]) == steps.NO_BAD_STEP
