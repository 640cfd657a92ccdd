"""optim.freeze: parameters frozen late in training by path (FreezeOut), and
the train step that then skips the frozen blocks' backward pass
(Setup.frozen_blocks_from, the model's frozen_blocks)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import config as config_lib, optim, restore, trainer
from jaxcnn.models import create_model

from test_optim import STEPS_PER_EPOCH, make_grads, make_params, optim_cfg
from test_optim import run_chain
from test_small_crop import record_train_calls, speednet_config


def test_freeze_rule_stops_matched_parameters_from_its_step():
  # conv1/* frozen from 1.5 epochs (15 updates); the rest trains on. Up to
  # update 15 the chain equals the one without the rule, bitwise; after it
  # conv1 stays where update 15 left it while fc384 still follows the
  # rule-free chain (its updates do not depend on conv1's here).
  grads = make_grads(20)
  cfg = optim_cfg(learning_rate=0.1, momentum=0.9, ema_decay=0.5)
  free = optim.make_optimizer(cfg, STEPS_PER_EPOCH, total_steps=20)
  cfg.freeze = (("^conv1/", 1.5),)
  frozen = optim.make_optimizer(cfg, STEPS_PER_EPOCH, total_steps=20)
  _, _, h_free = run_chain(free, make_params(), grads)
  _, _, h_frozen = run_chain(frozen, make_params(), grads)
  for t in range(16):
    for a, b in zip(jax.tree.leaves(h_free[t]), jax.tree.leaves(h_frozen[t])):
      np.testing.assert_array_equal(a, b)
  for t in range(16, 21):
    for name in ("kernel", "bias"):
      np.testing.assert_array_equal(h_frozen[t]["conv1"][name],
                                    h_frozen[15]["conv1"][name])
      np.testing.assert_array_equal(h_frozen[t]["fc384"][name],
                                    h_free[t]["fc384"][name])
  # Without the rule conv1 does move after update 15.
  assert not np.array_equal(h_free[20]["conv1"]["kernel"],
                            h_free[15]["conv1"]["kernel"])


def test_frozen_from_takes_the_earlier_of_group_and_rule():
  cfg = optim_cfg(learning_rate=0.1, momentum=0.9)
  paths = ["conv1/kernel", "conv1/bias"]
  assert optim.frozen_from(cfg, paths, STEPS_PER_EPOCH) is None
  cfg.freeze = (("^conv1/kernel", 2.0),)
  assert optim.frozen_from(cfg, paths, STEPS_PER_EPOCH) is None  # bias free
  cfg.freeze = (("^conv1/kernel", 2.0), ("bias$", 3.0))
  assert optim.frozen_from(cfg, paths, STEPS_PER_EPOCH) == 30
  cfg.freeze = (("^conv1/", 2.5), ("bias$", 0.5))
  assert optim.frozen_from(cfg, paths, STEPS_PER_EPOCH) == 25
  for g in cfg.groups:
    g.frozen_from_epochs = 1.0
  # Each parameter: the earlier of its group's step (10) and its rules'.
  assert optim.frozen_from(cfg, paths, STEPS_PER_EPOCH) == 10


@pytest.mark.parametrize("freeze, message", [
    ("'^group1/'", r"optim.freeze\[0\] must be a pair"),
    ('[["^group1/"]]', r"optim.freeze\[0\] must be a pair"),
    ('[["^group1/", -1.0]]', r"optim.freeze\[0\] must be a pair"),
    ('[[3, 1.0]]', r"optim.freeze\[0\] must be a pair"),
    ('[["^group1/", 1.0], ["(", 1.0]]', r"optim.freeze\[1\]: bad regex"),
    ('[["^group9/", 1.0]]', "'\\^group9/' matches no parameter"),
])
def test_bad_freeze_rules_are_refused(freeze, message):
  with pytest.raises(optim.OptimConfigError, match=message):
    trainer.build(speednet_config(f"optim.freeze={freeze}"))


def test_setup_frozen_blocks_from_follows_the_rules():
  # 4 steps an epoch; the whitening bias freezes after 1 step (0.19 epochs).
  setup = trainer.build(speednet_config(
      "train.num_steps=8", 'optim.freeze=[["^group1/", 0.75], '
      '["^group2/", 1.5]]'))
  assert setup.stem_frozen_from == 1
  assert setup.frozen_blocks_from == (3, 6)
  assert [setup.frozen_blocks_at(s) for s in range(8)] == [0, 0, 0, 1, 1, 1,
                                                           2, 2]
  # Group 2 alone frozen: nothing is skipped (group 1 still needs its
  # gradient, which flows through group 2).
  alone = trainer.build(speednet_config('optim.freeze=[["^group2/", 1.0]]'))
  assert alone.frozen_blocks_from == ()
  # A block counts only once every parameter of it is frozen.
  part = trainer.build(speednet_config(
      'optim.freeze=[["^group1/conv", 1.0]]'))
  assert part.frozen_blocks_from == ()
  # The stem frozen later than the block: the block waits for it.
  late = trainer.build(speednet_config(
      "train.num_steps=8", 'optim.freeze=[["^group1/", 0.25]]',
      "optim.groups.whiten_bias.frozen_from_epochs=1.0"))
  assert late.stem_frozen_from == 4 and late.frozen_blocks_from == (4,)


def test_frozen_blocks_take_no_gradient_and_leave_the_rest_unchanged():
  # Loss, BatchNorm statistics and the gradients of the blocks above equal
  # the full backward pass's; the frozen blocks' gradients are zero.
  model = create_model(speednet_config().model)
  x = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
  y = jnp.arange(8) % 10
  variables = model.init(jax.random.key(1), x, train=False)

  def loss_and_grads(**kw):
    def loss(p):
      logits, new = model.apply(
          {"params": p, "batch_stats": variables["batch_stats"]}, x,
          train=True, mutable=["batch_stats"], **kw)
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, y).mean(), new
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(
        variables["params"])

  (l0, stats0), g0 = loss_and_grads(stem_frozen=True)
  for k in (1, 2):
    (lk, statsk), gk = loss_and_grads(stem_frozen=True, frozen_blocks=k)
    # One forward pass, compiled with another backward: equal up to XLA's
    # fusion choices.
    np.testing.assert_allclose(lk, l0, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(statsk), jax.tree.leaves(stats0)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for g in range(1, 4):
      for a, b in zip(jax.tree.leaves(gk[f"group{g}"]),
                      jax.tree.leaves(g0[f"group{g}"])):
        if g <= k:
          assert not np.any(np.asarray(a))
        else:
          np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gk["head"]["kernel"], g0["head"]["kernel"],
                               rtol=1e-5, atol=1e-7)
    assert np.any(np.asarray(g0["group1"]["conv1"]["kernel"]))
  with pytest.raises(ValueError, match="needs stem_frozen"):
    loss_and_grads(frozen_blocks=1)


def test_runs_with_and_without_the_skipped_backward_agree(tmp_path,
                                                          monkeypatch):
  # The dispatches split where each block freezes and run the step that
  # stops the gradient there; the same run with the full backward pass
  # (Setup.frozen_blocks_from emptied: the optimizer alone freezes) ends with
  # the same parameters and statistics, and the frozen block's parameters
  # are those of the step it froze at.
  calls = record_train_calls(monkeypatch, "frozen_blocks")
  rules = ("train.num_steps=8", "train.steps_per_dispatch=2",
           'optim.freeze=[["^group1/", 0.75], ["^group2/", 1.5]]',
           "train.checkpoint_every_steps=3", "train.keep_checkpoints=10")
  trainer.train_and_evaluate(speednet_config(*rules), str(tmp_path / "skip"))
  # Splits at 1 (the stem freezes), 3 and 6 (the blocks).
  assert calls == [(0, 1, 0), (1, 2, 0), (3, 2, 1), (5, 1, 1), (6, 2, 2)]
  real_build = trainer.build

  def full_backward(*args, **kwargs):
    import dataclasses
    return dataclasses.replace(real_build(*args, **kwargs),
                               frozen_blocks_from=())

  monkeypatch.setattr(trainer, "build", full_backward)
  calls.clear()
  trainer.train_and_evaluate(speednet_config(*rules), str(tmp_path / "full"))
  assert {c[2] for c in calls} == {0}

  def state(name, step=None):
    _, st, _ = restore.load_checkpoint(str(tmp_path / name), step)
    return jax.tree.map(np.asarray, st)

  skip, full = state("skip"), state("full")
  for part in ("params", "batch_stats", "ema_batch_stats"):
    for a, b in zip(jax.tree.leaves(getattr(skip, part)),
                    jax.tree.leaves(getattr(full, part))):
      np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
  # Group 1 froze at step 3 (its parameters as checkpointed there), group 2
  # at step 6; group 3 trained on to the end.
  at3, at6 = state("skip", 3), state("skip", 6)
  for g, then in (("group1", at3), ("group2", at6)):
    for a, b in zip(jax.tree.leaves(skip.params[g]),
                    jax.tree.leaves(then.params[g])):
      np.testing.assert_array_equal(a, b)
  assert not np.array_equal(skip.params["group3"]["conv2"]["kernel"],
                            at6.params["group3"]["conv2"]["kernel"])


def test_speedrun_freeze_is_speedrun_pruned_with_group1_frozen_late():
  # The recipe file is the command its numbers were measured with:
  # speedrun_pruned plus group 1 frozen from step 194 (6.0625 epochs of 32).
  recipe = config_lib.load_experiment("speedrun_freeze")
  by_hand = config_lib.apply_overrides(
      config_lib.load_experiment("speedrun_pruned"),
      ['optim.freeze=[["^group1/", 6.0625]]'])
  assert recipe == by_hand
  setup = trainer.build(config_lib.apply_overrides(recipe, [
      "data.source=synthetic", "data.synthetic_train_size=12288",
      "data.synthetic_test_size=64", "model.width=0.125",
      "train.eval_batch_size=64", "train.progress_bar=false",
      "model.speednet.whiten_images=64"]))
  # On CIFAR-10's 50,000 images (32 steps an epoch) that is step 194 of
  # 277; on these 12,288 synthetic ones (8 an epoch), step 48.
  assert round(6.0625 * 32) == 194
  assert setup.total_steps == 277 and setup.steps_per_epoch == 8
  assert setup.small_crop_until == 166 and setup.stem_frozen_from == 2
  assert setup.frozen_blocks_from == (48,)
  assert [setup.frozen_blocks_at(s) for s in (0, 47, 48, 276)] == [0, 0, 1, 1]
