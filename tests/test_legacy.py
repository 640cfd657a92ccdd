"""Old runs keep working (issue #19 item 4): workdirs and configs written by
jaxcnn before parameter groups (tests/fixtures/legacy_2026-12-01, written
by that code) evaluate, inspect and resume, and their flat optimizer fields
translate (jaxcnn/legacy.py) to groups that give the same updates."""
from __future__ import annotations

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import checkpoint, config as config_lib, evaluation, inspection
from jaxcnn import legacy, optim, restore, state as state_lib, trainer
from jaxcnn.config import Config
from jaxcnn.models import create_model
from tests import test_golden

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / \
    "legacy_2026-12-01"
RESUMED_TO = {"tiny": (16, 32), "speednet": (6, 12)}


def copy_fixture(name: str, tmp_path) -> str:
  workdir = tmp_path / name
  shutil.copytree(FIXTURES / name, workdir)
  return str(workdir)


@pytest.mark.parametrize("name", sorted(RESUMED_TO))
def test_old_workdir_resumes_to_the_golden_end(name, tmp_path):
  """The old checkpoint (saved mid-run by the old chain) resumes under
  today's code to the golden run's end and its final state is the golden
  state: its optimizer state was carried over, not started afresh."""
  test_golden._skip_elsewhere()
  workdir = copy_fixture(name, tmp_path)
  start, end = RESUMED_TO[name]
  assert checkpoint.saved_steps(workdir) == [start]
  exp, overrides = test_golden.RUNS[name]
  result = trainer.train_and_evaluate(config_lib.apply_overrides(
      config_lib.load_experiment(exp), overrides), workdir)
  assert int(result["step"]) == end
  assert checkpoint.saved_steps(workdir)[-1] == end
  want = test_golden.golden(name)
  assert test_golden.compare_states(test_golden.state_summary(workdir),
                                    want["state"]) == []
  for w in ("raw", "ema"):
    assert abs(float(result[w]["accuracy"]) - want[f"{w}_accuracy"]) <= \
        want["one_image"] * (1 + 1e-6)


def test_old_workdir_evaluates_and_inspects(tmp_path):
  workdir = copy_fixture("tiny", tmp_path)
  config, state, step = restore.load_checkpoint(workdir)
  assert step == 16
  # The saved flat fields became groups; the EMA came over from the old
  # chain's state.
  assert [g.name for g in config.optim.groups] == ["kernel", "rest"]
  raw = json.loads((FIXTURES / "tiny" / "config.json").read_text())
  assert "learning_rate" in raw["optim"]  # The fixture is of the old schema.
  ema = optim.ema_params(state.opt_state)
  assert not np.allclose(ema["conv1"]["kernel"], state.params["conv1"]["kernel"])
  report = evaluation.eval_workdir(workdir)
  assert report["step"] == 16
  assert 0 <= report["results"]["ema"]["accuracy"] <= 1
  assert inspection.inspect_workdir(workdir)["rows"]


# --- Old experiment configs --------------------------------------------------


def _trajectory(config: Config, params, grads, steps_per_epoch=5,
                total_steps=20):
  tx = optim.make_optimizer(config.optim, steps_per_epoch,
                            total_steps=total_steps,
                            batch_size=config.train.batch_size)

  @jax.jit
  def run(params):
    state = tx.init(params)
    out = []
    for g in grads:
      updates, state = tx.update(g, state, params)
      params = optax.apply_updates(params, updates)
      out.append(params)
    return out
  return run(params)


@pytest.mark.parametrize("exp", ["alexnet", "speedrun", "speedrun_airbench94",
                                 "test", "vgg", "vgg_short"])
def test_old_experiment_config_gives_the_same_updates(exp):
  """Each experiment's config as the old code saved it, translated, trains
  as today's experiment does (a few steps on random gradients, at a
  quarter width); speedrun's whitening bias aside, which now has its own
  ramp (the only change of that recipe), equal at the first step."""
  old = config_lib.load_saved_config(FIXTURES / "configs" / f"{exp}.json")
  new = config_lib.load_experiment(exp)
  for c in (old, new):
    c.model.width = 0.25
    c.data.image_shape = (32, 32, 3)
  model = create_model(new.model, bn_axis_name=None)
  shapes = state_lib.param_shapes(model, new)
  rng = np.random.default_rng(0)
  params = jax.tree.map(
      lambda s: jnp.asarray(rng.normal(size=s.shape), jnp.float32), shapes)
  grads = [jax.tree.map(
      lambda s: jnp.asarray(rng.normal(size=s.shape), jnp.float32), shapes)
           for _ in range(2)]
  a = _trajectory(old, params, grads)
  b = _trajectory(new, params, grads)
  for t, (pa, pb) in enumerate(zip(a, b)):
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(pa)[0],
                            jax.tree.leaves(pb)):
      name = optim.param_path(path)
      if exp == "speedrun" and name == "whiten/bias" and t > 0:
        assert not np.allclose(x, y)  # The ramp is really there.
        continue
      np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-6,
                                 err_msg=f"{exp} step {t} {name}")


def test_translation_of_the_speed_recipe_reads_like_its_groups():
  old = config_lib.load_saved_config(
      FIXTURES / "configs" / "speedrun_airbench94.json")
  new = config_lib.load_experiment("speedrun_airbench94")
  assert old.optim == new.optim  # Names, matches, rates and all.
  assert [g.name for g in old.optim.groups] == [
      "whiten_kernel", "whiten_bias", "bn_bias", "rest"]


def test_upgrade_leaves_todays_configs_alone():
  today = config_lib.load_experiment("speedrun").to_dict()
  assert legacy.upgrade(today) == today


def test_gradient_scale_of_old_bias_rate():
  saved = {"optim": {"bias_lr_scale": 64.0}}
  assert legacy.gradient_scales(saved, {"bn1/bias", "conv1/kernel"}) == {
      "bn1/bias": 64.0}
  assert legacy.gradient_scales({"optim": {"groups": []}}, {"bn1/bias"}) == {}
