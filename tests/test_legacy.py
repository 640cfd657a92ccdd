"""Old runs keep working (issue #19 item 4): configs and workdirs saved by
the code of 2026-12-01 (tests/fixtures/legacy_2026-12-01: the flat `model`
section and the flat optimizer fields of that day) translate to today's
schema (jaxcnn/legacy.py): they build the same models, their optimizer
fields become groups that give the same updates, and the workdirs evaluate,
inspect and resume as before. The fixtures are copied before use, never
written."""
from __future__ import annotations

import copy
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import augment, checkpoint, config as config_lib, \
    data as data_lib, eval as eval_cli, evaluation, inspection, legacy, \
    optim, restore, state as state_lib, trainer
from jaxcnn.config import Config
from jaxcnn.defaults import base_config, with_defaults
from jaxcnn.models import DTYPES, create_model
from jaxcnn.models.alexnet import AlexNetLike
from jaxcnn.models.speednet import SpeedNet
from jaxcnn.models.tiny import TinyCNN
from jaxcnn.models.vgg import VGG
from tests import test_golden

# With the golden runs on one worker (see tests/test_golden.py).
pytestmark = pytest.mark.xdist_group("golden")

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / \
    "legacy_2026-12-01"
CONFIGS = sorted((FIXTURES / "configs").glob("*.json"))
FLAT_FIELDS = ("depth", "vgg_block", "speednet_widths", "logit_scale",
               "head_init_std", "whiten", "whiten_images")


def saved(path) -> dict:
  return json.loads(pathlib.Path(path).read_text())


def old_create_model(m: dict):
  """The module the code of 2026-12-01 built from its flat model section
  (its create_model, without the checks)."""
  bn = dict(bn_axis_name=None, bn_momentum=float(m["bn_momentum"]),
            bn_scale=bool(m["bn_scale"]))
  if m["name"] == "speednet":
    return SpeedNet(num_classes=m["num_classes"], width=float(m["width"]),
                    widths=tuple(m["speednet_widths"]),
                    logit_scale=float(m["logit_scale"]),
                    head_init_std=float(m["head_init_std"]),
                    whiten=bool(m["whiten"]), dtype=DTYPES[m["dtype"]],
                    conv_impl=m["conv_impl"], **bn)
  common = dict(num_classes=m["num_classes"], width=float(m["width"]),
                activation=m["activation"], norm=m["norm"],
                dropout=float(m["dropout"]), dtype=DTYPES[m["dtype"]], **bn)
  if m["name"] == "alexnet":
    return AlexNetLike(**common)
  if m["name"] == "vgg":
    return VGG(depth=m["depth"], block=m["vgg_block"],
               conv_impl=m["conv_impl"], **common)
  return TinyCNN(conv_impl=m["conv_impl"], **common)


def test_fixtures_are_in_the_old_schema():
  # One per experiment of the day they were saved (convnet4,
  # speedrun_hiverge, speedrun_small_crops, speedrun_pruned,
  # speedrun_progressive and speedrun_freeze came later).
  assert {p.stem for p in CONFIGS} == set(
      config_lib.known_experiments()) - {"convnet4", "speedrun_hiverge",
                                         "speedrun_small_crops",
                                         "speedrun_pruned",
                                         "speedrun_progressive",
                                         "speedrun_freeze"}
  for path in CONFIGS + [FIXTURES / "tiny" / "config.json",
                         FIXTURES / "speednet" / "config.json"]:
    assert set(FLAT_FIELDS) <= set(saved(path)["model"]), path


def test_upgrade_moves_the_flat_model_fields_into_their_sections():
  old = {"model": {"name": "vgg", "width": 0.5, "depth": 13,
                   "vgg_block": "5x5", "speednet_widths": [8, 16, 32],
                   "logit_scale": 0.5, "head_init_std": 1.0, "whiten": False,
                   "whiten_images": 64}, "train": {"num_steps": 3}}
  before = copy.deepcopy(old)
  new = legacy.upgrade(old)
  assert old == before  # The input is left as it was.
  assert new == {"model": {"name": "vgg", "width": 0.5,
                           "vgg": {"depth": 13, "block": "5x5"},
                           "speednet": {"widths": [8, 16, 32],
                                        "logit_scale": 0.5,
                                        "head_init_std": 1.0,
                                        "whiten": False,
                                        "whiten_images": 64}},
                 "train": {"num_steps": 3}}


def test_upgrade_leaves_todays_config_as_it_is():
  today = base_config().to_dict()
  assert legacy.upgrade(today) == today
  assert legacy.upgrade(legacy.upgrade(today)) == today


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_old_config_translates_to_todays_model_section(path):
  old = saved(path)
  config = with_defaults(config_lib.Config.from_dict(legacy.upgrade(old)))
  # Nothing of the flat fields is left, and the section is the one the
  # experiment gives today.
  assert not set(FLAT_FIELDS) & set(config.model.to_dict())
  assert config.model == config_lib.load_experiment(path.stem).model
  # Loading the file as `--exp CONFIG.json` does the same.
  assert config_lib.load_saved_config(path).model == config.model


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_old_config_builds_the_same_model(path):
  old = saved(path)["model"]
  config = config_lib.load_saved_config(path)
  new_model = create_model(config.model)
  old_model = old_create_model(old)
  # The same module with the same fields (LRN constants: the tutorial's).
  assert new_model == old_model
  # The same parameter tree (names, shapes, dtypes) ...
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)),
                  jnp.float32)
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  shapes = [jax.eval_shape(lambda x, m=m: m.init(rngs, x, train=False), x)
            for m in (new_model, old_model)]
  assert jax.tree.structure(shapes[0]) == jax.tree.structure(shapes[1])
  assert ([(a.shape, a.dtype) for a in jax.tree.leaves(shapes[0])]
          == [(a.shape, a.dtype) for a in jax.tree.leaves(shapes[1])])
  # ... and the same output from the same variables (seeded normals in the
  # init's shapes: a real init of VGG-16 compiles for seconds).
  rng = np.random.default_rng(1)
  variables = jax.tree.map(
      lambda a: jnp.asarray(0.05 * rng.standard_normal(a.shape) + 0.5,
                            a.dtype), shapes[1])
  out_new, out_old = (jax.jit(lambda v, x, m=m: m.apply(v, x, train=False))(
      variables, x) for m in (new_model, old_model))
  np.testing.assert_array_equal(out_new, out_old)


def direct_figures(workdir) -> dict:
  """Loss and accuracy of each weight set of the latest checkpoint on the
  run's test images, by applying the model directly (no evaluator)."""
  config, state, step = restore.load_checkpoint(workdir)
  model = create_model(config.model)
  dataset = data_lib.load_from_config(config.data, config.seed)
  mean = np.asarray(config.data.channel_mean, np.float32)
  std = np.asarray(config.data.channel_std, np.float32)
  x = augment.normalize(jnp.asarray(dataset.test_images),
                        config.data.normalization, mean, std)
  y = np.asarray(dataset.test_labels)
  out = {"step": step}
  for weights in ("raw", "ema"):
    logits = np.asarray(model.apply(state_lib.variables_of(state, weights), x,
                                    train=False), np.float64)
    loss = optax.softmax_cross_entropy_with_integer_labels(
        jnp.asarray(logits), jnp.asarray(y))
    out[weights] = {"accuracy": float(np.mean(np.argmax(logits, -1) == y)),
                    "loss": float(np.mean(loss)), "count": len(y)}
  return out


@pytest.mark.parametrize("name,step", [("tiny", 16), ("speednet", 6)])
def test_old_workdir_evaluates_as_the_model_applied_directly(name, step,
                                                             tmp_path,
                                                             capsys):
  workdir = tmp_path / name
  shutil.copytree(FIXTURES / name, workdir)
  with pytest.raises(SystemExit) as exit_info:
    from jaxcnn import cli
    cli.run_main(lambda: eval_cli.main(["--workdir", str(workdir), "--json",
                                        "--num_devices", "1"]))
  printed = capsys.readouterr().out
  assert exit_info.value.code == 0, printed
  report = json.loads(printed)
  want = direct_figures(workdir)
  assert report["step"] == want["step"] == step
  for weights in ("raw", "ema"):
    got = report["results"][weights]
    assert got["count"] == want[weights]["count"]
    assert got["accuracy"] == want[weights]["accuracy"]
    assert got["loss"] == pytest.approx(want[weights]["loss"], rel=1e-5)
  # The model line comes from the translated section.
  assert report["model"] == {
      "tiny": "tiny (batchnorm, relu)",
      "speednet": "speednet 64/256/256 x0.125 (batchnorm, gelu)"}[name]


def test_old_workdir_trains_on_from_its_checkpoint(tmp_path, capsys):
  # `--exp WORKDIR/config.json` into the same workdir: the saved config and
  # the checkpoint's, both translated, agree, so the run resumes at step 16
  # and finishes the epochs it was given (2 epochs of 16 steps).
  from jaxcnn import cli, reporting, train
  workdir = tmp_path / "tiny"
  shutil.copytree(FIXTURES / "tiny", workdir)
  with pytest.raises(SystemExit) as exit_info:
    cli.run_main(lambda: train.main(["--exp", str(workdir / "config.json"),
                                     "--workdir", str(workdir)]))
  err = capsys.readouterr().err
  assert exit_info.value.code == 0, err
  assert "steps 16->32" in err
  assert reporting.read_metrics(workdir, "eval")[-1]["step"] == 32


@pytest.mark.parametrize("old,new", sorted(legacy.RENAMED_KEYS.items()))
def test_an_old_override_key_names_its_new_one(old, new):
  config = config_lib.load_experiment("test")
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.apply_overrides(config, [f"{old}=1"])
  assert str(error.value) == f"unknown config key {old!r}; it is now {new}"
  assert new in dict(config.flat_items())


def test_an_experiment_file_setting_an_old_field_names_its_new_one(tmp_path):
  path = tmp_path / "old_style.py"
  path.write_text("from jaxcnn.config import load_experiment\n"
                  "def get_config():\n  c = load_experiment('vgg')\n"
                  "  c.model.depth = 11\n  return c\n")
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.load_experiment(str(path))
  assert str(error.value) == (
      f"{path}: get_config() sets 'model.depth', which is not a config field "
      "(see jaxcnn/defaults.py); it is now model.vgg.depth")


# --- The optimizer: flat fields to groups, old optimizer state ---------------


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
