"""Loss-based data pruning (data.prune_fraction, data.prune_from_epochs):
the data epochs' lengths, the choice of each pruned epoch's images, the
loss table the train step keeps (against a reference forward pass, on 1 and
4 devices), and a pruned run end to end: it trains exactly the chosen
images, resumes bitwise, and dispatches several steps like single ones."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import (checkpoint, config as config_lib, parallel, pipeline,
                    steps)
from jaxcnn import trainer
from jaxcnn.state import run_steps

from conftest import checkpoint_state

PRUNE = ["data.prune_fraction=0.3", "data.prune_from_epochs=1",
         "model.dropout=0.0"]


def tiny_config(*overrides):
  c = config_lib.load_experiment("test")
  return config_lib.apply_overrides(c, PRUNE + list(overrides))


def test_data_epochs_after_pruning_are_the_kept_images_whole_batches():
  c = tiny_config("data.prune_from_epochs=1.5")
  c.data.train_size = 512
  rs = run_steps(c)
  # 512 - int(0.3 * 512) = 359 images kept, 11 whole batches of 32; the
  # first pruned epoch is the first whole one from epoch 1.5.
  assert (rs.steps_per_epoch, rs.prune_from, rs.kept, rs.pruned_steps) == (
      16, 2, 359, 11)
  lengths = [16, 16] + [11] * 10
  starts = np.concatenate([[0], np.cumsum(lengths)])
  epoch_of = np.repeat(np.arange(len(lengths)), lengths)
  traced_of = jax.jit(rs.data_epoch_of)
  traced_start = jax.jit(rs.data_epoch_start)
  for step, epoch in enumerate(epoch_of):
    assert rs.data_epoch_of(step) == epoch
    assert int(traced_of(jnp.int32(step))) == epoch
    # The nominal epoch (schedules, evaluations) still counts 16 steps.
    assert rs.epoch_of(step) == step // 16
  for epoch, start in enumerate(starts[:-1]):
    assert rs.data_epoch_start(epoch) == start
    assert int(traced_start(jnp.int32(epoch))) == start
    assert rs.data_epoch_steps(epoch) == lengths[epoch]
  # A dispatch stops at the end of a data epoch whose successor is pruned.
  assert rs.dispatch_end(5) is None
  assert rs.dispatch_end(16) == rs.dispatch_end(31) == 32
  assert rs.dispatch_end(32) == rs.dispatch_end(42) == 43
  off = tiny_config("data.prune_fraction=0")
  off.data.train_size = 512
  rs_off = run_steps(off)
  assert rs_off.prune_from is None and rs_off.dispatch_end(40) is None
  assert [rs_off.data_epoch_of(s) for s in (0, 15, 16, 47)] == [0, 0, 1, 2]


def test_pruned_permutation_keeps_the_examples_of_highest_loss():
  rng = np.random.default_rng(0)
  scores = rng.uniform(0, 3, 100).astype(np.float32)
  scores[[7, 50, 93]] = np.inf  # never trained on: kept first
  kept, steps_, batch = 70, 2, 32
  # Reference: the scores at or above the 70th highest, in plain Python.
  cut = sorted(scores.tolist(), reverse=True)[kept - 1]
  top = {i for i in range(100) if scores[i] >= cut}
  assert len(top) == kept
  perm = pipeline.pruned_permutation(5, 3, scores, kept, steps_, batch)
  assert perm.dtype == np.int32 and len(perm) == steps_ * batch
  assert len(set(perm.tolist())) == len(perm)
  assert set(perm.tolist()) <= top
  assert {7, 50, 93} <= top
  np.testing.assert_array_equal(
      perm, pipeline.pruned_permutation(5, 3, scores, kept, steps_, batch))
  other = pipeline.pruned_permutation(5, 4, scores, kept, steps_, batch)
  assert set(other.tolist()) <= top and not np.array_equal(perm, other)
  with pytest.raises(ValueError, match="cannot keep"):
    pipeline.pruned_permutation(5, 3, scores, 50, 2, 32)
  # A table of ties (nothing trained yet: data.prune_from_epochs=0) keeps a
  # seeded random subset, not the first 70 indices.
  never = np.full(100, np.inf, np.float32)
  first = pipeline.pruned_permutation(5, 0, never, kept, steps_, batch)
  assert len(set(first.tolist())) == 64 and first.max() >= kept
  np.testing.assert_array_equal(
      first, pipeline.pruned_permutation(5, 0, never, kept, steps_, batch))


def test_loss_table_holds_the_global_batch_losses_on_1_and_4_devices():
  # One step of the pmap'd train fn: every device's table must hold the
  # loss of every example of the global batch (all devices' shards), equal
  # to a reference forward pass over the whole batch on one device, and
  # nothing for the examples not trained on.
  tables = {}
  for d in (1, 4):
    setup = trainer.build(tiny_config(f"train.num_devices={d}"))
    state = trainer.create_train_state(setup)
    feed = steps.TrainFeed.place(setup)
    fn = steps.make_train_fn(setup, 1)
    state_r = parallel.replicate(state, setup.local_devices)
    state_r, _ = fn(state_r, feed.accumulator(), *feed.inputs())
    loss_r = np.asarray(state_r.example_loss["loss"])
    for copy in loss_r[1:]:  # replicated: the same on every device
      np.testing.assert_array_equal(copy, loss_r[0])
    tables[d] = loss_r[0]
    if d == 1:
      images, labels, ids = jax.jit(lambda: pipeline.train_batch(
          setup, feed.train_x[0], feed.train_y[0], feed.perm2[0],
          jnp.int32(0), 0, 0, with_ids=True))()
      # BatchNorm averages over the pmap axis: a vmap of one names it.
      logits, _ = jax.vmap(lambda x: setup.model.apply(
          {"params": state.params, "batch_stats": state.batch_stats}, x,
          train=True, mutable=["batch_stats"]), axis_name=parallel.AXIS)(
              images[None])
      logits = logits[0]
      ref = -np.take_along_axis(
          np.asarray(jax.nn.log_softmax(logits)), np.asarray(labels)[:, None],
          1)[:, 0]
      ids = np.asarray(ids)
  assert len(set(ids.tolist())) == 32
  for d in (1, 4):
    np.testing.assert_allclose(tables[d][ids], ref, rtol=1e-4, atol=1e-5)
    rest = np.setdiff1d(np.arange(512), ids)
    assert np.all(np.isinf(tables[d][rest]))


def test_pruned_epochs_train_exactly_the_images_of_highest_loss(tmp_path):
  # 16 steps of whole epochs, then data epochs of 11 steps on 359 of the
  # 512 images: steps 16, 27, 38 and 49 start one, and the run ends with
  # the one of step 49, at step 60.
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(
      tiny_config("train.num_steps=60", "train.eval_every_epochs=0"), workdir)
  records = [json.loads(line) for line in
             open(f"{workdir}/metrics.jsonl") if '"prune"' in line]
  assert [(r["step"], r["data_epoch"], r["kept"], r["steps"])
          for r in records] == [(16, 1, 359, 11), (27, 2, 359, 11),
                                (38, 3, 359, 11), (49, 4, 359, 11)]
  table = checkpoint_state(workdir)["example_loss"]
  loss, scores = table["loss"], table["scores"]
  assert np.all(np.isfinite(scores))  # epoch 0 trained every image
  # The last epoch changed the losses of 11 * 32 images, all among the 359
  # highest scores; the other 153 and the 7 left over kept theirs.
  trained = np.flatnonzero(loss != scores)
  assert len(trained) == 352
  assert scores[trained].min() >= np.sort(scores)[512 - 359]
  np.testing.assert_array_equal(
      np.sort(trained),
      np.sort(pipeline.pruned_permutation(0, 4, scores, 359, 11, 32)))


def test_resumed_pruned_run_equals_uninterrupted_run(tmp_path):
  # Stopped at step 30, inside data epoch 2 (steps 27-37): the resumed run
  # must train on the images that epoch chose from the table at step 27,
  # so the table's snapshot is in the checkpoint. Exponential decay: the
  # schedule does not depend on the run's length.
  common = ["optim.schedule=exponential", "optim.warmup_epochs=0",
            "train.eval_every_epochs=0", "train.checkpoint_every_steps=1000"]
  trainer.train_and_evaluate(tiny_config(*common, "train.num_steps=45"),
                             str(tmp_path / "full"))
  part = str(tmp_path / "part")
  for stop in (27, 30, 45):
    trainer.train_and_evaluate(tiny_config(*common, f"train.num_steps={stop}"),
                               part)
    assert checkpoint.saved_steps(part)[-1] == stop
  full, resumed = checkpoint_state(tmp_path / "full"), checkpoint_state(part)
  leaves_full = jax.tree_util.tree_leaves_with_path(full)
  for (path, a), b in zip(leaves_full, jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def test_several_steps_per_dispatch_stop_at_pruned_epochs(tmp_path):
  # Dispatches of 5 steps would cross the starts of pruned data epochs
  # (16, 27, 38); they must stop there and match single steps.
  common = ["train.num_steps=40", "train.eval_every_epochs=0"]
  trainer.train_and_evaluate(
      tiny_config(*common, "train.steps_per_dispatch=5"), str(tmp_path / "k5"))
  trainer.train_and_evaluate(tiny_config(*common), str(tmp_path / "k1"))
  k5, k1 = checkpoint_state(tmp_path / "k5"), checkpoint_state(tmp_path / "k1")
  for a, b in zip(jax.tree.leaves(k5["params"]), jax.tree.leaves(k1["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # The same images were trained on, in the same epochs.
  np.testing.assert_array_equal(np.isinf(k5["example_loss"]["loss"]),
                                np.isinf(k1["example_loss"]["loss"]))
  np.testing.assert_allclose(k5["example_loss"]["scores"],
                             k1["example_loss"]["scores"], rtol=1e-4,
                             atol=1e-5)


def test_speedrun_pruned_is_speedrun_small_crops_with_pruning():
  # The recipe file is the command its numbers were measured with.
  recipe = config_lib.load_experiment("speedrun_pruned")
  by_hand = config_lib.apply_overrides(
      config_lib.load_experiment("speedrun_small_crops"),
      ["data.prune_fraction=0.25", "data.prune_from_epochs=2"])
  assert recipe == by_hand
  # At full scale: 32 batches of 1,536 a whole epoch, then data epochs of
  # 24 batches on 37,500 images from step 64 on; 277 steps in all.
  full = recipe.copy()
  full.data.train_size = 50000
  rs = run_steps(full)
  assert (rs.steps_per_epoch, rs.prune_from, rs.kept, rs.pruned_steps,
          rs.total_steps) == (32, 2, 37500, 24, 277)
  assert rs.data_epoch_start(3) == 88 and rs.data_epoch_of(276) == 10
