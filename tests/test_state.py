"""jaxcnn.state: the step counts derived from a config (run_steps, the one
place), and a run's setup built once: check_config, the schedule and the
freeze rule each made one time per build."""
import pytest

from jaxcnn import config as config_lib, optim, trainer
from jaxcnn import state as state_lib
from jaxcnn.config import ConfigError


def resolved(train_size, batch, num_epochs=0, num_steps=0):
  c = config_lib.load_experiment("test")
  c.data.train_size = train_size
  c.train.batch_size = batch
  c.train.num_epochs = num_epochs
  c.train.num_steps = num_steps
  return c


@pytest.mark.parametrize("train_size, batch, epochs, steps, spe, total", [
    (512, 32, 2, 0, 16, 32),     # Whole epochs.
    (500, 32, 3, 0, 15, 45),     # The last partial batch is dropped.
    (500, 32, 3, 7, 15, 7),      # num_steps overrides num_epochs,
    (500, 32, 0, 100, 15, 100),  # and may end mid-epoch or run past it.
    (64, 64, 1, 0, 1, 1),
])
def test_run_steps_is_the_arithmetic(train_size, batch, epochs, steps, spe,
                                     total):
  got = state_lib.run_steps(resolved(train_size, batch, epochs, steps))
  assert (got.steps_per_epoch, got.total_steps) == (spe, total)
  assert spe == train_size // batch
  assert total == (steps or epochs * (train_size // batch))


def test_epoch_of_a_step():
  steps = state_lib.run_steps(resolved(500, 32, 3))  # 15 steps an epoch.
  assert [steps.epoch_of(s) for s in (0, 1, 14, 15, 16, 29, 30, 44, 45)] == \
      [0, 0, 0, 1, 1, 1, 2, 2, 3]
  import jax.numpy as jnp  # Under a trace too: the train step's epoch.
  assert int(steps.epoch_of(jnp.int32(31))) == 2


def test_run_steps_refuses_a_config_without_a_whole_batch():
  with pytest.raises(ConfigError, match="not filled in"):
    state_lib.run_steps(resolved(0, 32, 1))
  with pytest.raises(ConfigError, match="no whole batch"):
    state_lib.run_steps(resolved(31, 32, 1))


def test_setup_counts_are_run_steps():
  setup = trainer.build(config_lib.apply_overrides(
      config_lib.load_experiment("test"), ["train.num_epochs=3"]))
  steps = state_lib.run_steps(setup.config)
  assert setup.steps == steps
  assert (setup.steps_per_epoch, setup.total_steps) == (
      steps.steps_per_epoch, 3 * steps.steps_per_epoch)
  assert setup.epoch_of(2 * steps.steps_per_epoch) == 2


def test_setup_is_built_once(count_calls):
  # One build: the config checked once, and each parameter group's schedule
  # built once (the optimizer's; the last group's is also the trainer's, for
  # its logged learning rate).
  count_calls(state_lib, "check_config")
  calls = count_calls(optim, "make_schedule")
  # The toy speednet: a stem to freeze and a group frozen after epoch 1.
  config = config_lib.apply_overrides(
      config_lib.load_experiment("speedrun_airbench94"), [
          "model.width=0.125", "data.source=synthetic",
          "data.synthetic_train_size=512", "data.synthetic_test_size=64",
          "train.batch_size=64", "train.num_epochs=0", "train.num_steps=12",
          "train.eval_batch_size=64", "model.speednet.whiten_images=256",
          "optim.groups.whiten_bias.frozen_from_epochs=1"])
  groups = len(config.optim.groups)
  assert groups > 1
  setup = trainer.build(config)
  assert calls == {"check_config": 1, "make_schedule": groups}
  assert setup.stem_frozen_from == setup.steps_per_epoch
  # From the config alone (eval, inspect): the same, once each.
  for key in calls:
    calls[key] = 0
  state_lib.build_from_config(setup.config)
  assert calls == {"check_config": 1, "make_schedule": groups}