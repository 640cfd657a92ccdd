"""Experiments load, overrides parse against the field's type, errors are clear."""
import json

import pytest

from jaxcnn import config as config_lib
from jaxcnn.config import ConfigError


def test_known_experiments_load_and_round_trip_json():
  names = config_lib.known_experiments()
  assert {"alexnet", "vgg", "test"} <= set(names)
  for name in names:
    c = config_lib.load_experiment(name)
    again = config_lib.Config.from_dict(__import__("json").loads(c.to_json()))
    assert again == c, name


def test_vgg_recipe_is_the_seed_recipe():
  c = config_lib.load_experiment("vgg")
  kernel, rest = c.optim.groups
  assert (c.train.batch_size, kernel.momentum, kernel.lr) == (128, 0.9, 0.05)
  assert (rest.optimizer, rest.momentum, rest.lr) == ("momentum", 0.9, 0.05)
  assert (c.optim.decay_rate, c.optim.decay_epochs, kernel.weight_decay,
          rest.weight_decay, kernel.match) == (0.5, 25.0, 5e-4, 0.0, "kernel")
  assert (c.optim.ema_decay, c.model.dropout, c.train.num_epochs) == (
      0.9999, 0.5, 300)


def test_overrides_parse_by_type():
  c = config_lib.load_experiment("vgg")
  out = config_lib.apply_overrides(c, [
      "train.num_epochs=2", "optim.groups.*.lr=1e-3", "data.random_flip=false",
      "model.activation=tanh", "optim.step_boundaries_epochs=10,20",
      "data.data_dir=/tmp/x"])
  assert out.train.num_epochs == 2 and isinstance(out.train.num_epochs, int)
  assert [g.lr for g in out.optim.groups] == [1e-3, 1e-3]
  assert out.data.random_flip is False
  assert out.model.activation == "tanh"
  assert out.optim.step_boundaries_epochs == (10, 20)
  assert out.data.data_dir == "/tmp/x"
  assert c.train.num_epochs == 300  # The original is untouched.


@pytest.mark.parametrize("override, message", [
    ("train.num_epoch=2", "unknown config key 'train.num_epoch'; did you mean"),
    ("nosuch=1", "unknown config key 'nosuch'"),
    ("train.num_epochs=two", "expected an integer"),
    ("data.random_flip=maybe", "expected a boolean"),
    ("optim.groups.rest.lr=fast", "expected a number"),
    ("optim.groups.rest.lrr=0.1", "group 'rest': no field 'lrr' .*did you mean lr"),
    ("optim.groups.kernel.b1=0.9", "optimizer 'momentum' has no option 'b1'"),
    ("optim.groups.head.lr=0.1", "no group 'head' in optim.groups \\(the "
     "groups: 0: kernel, 1: rest"),
    ("optim.groups.7.lr=0.1", "no group '7'"),
    ("optim.groups.kernel=1", "name a group and its field"),
    ("optim.learning_rate=0.1", "unknown config key 'optim.learning_rate'; "
     "the optimizer's fields are per parameter group now: set "
     "optim.groups.<index, name or \\*>.lr"),
    ("train=3", "not a whole section"),
    ("train.num_epochs", "not of the form key=value"),
])
def test_bad_overrides_are_clear_errors(override, message):
  if "\\" not in message:
    message = message.replace("(", r"\(")
  with pytest.raises(ConfigError, match=message):
    config_lib.apply_overrides(config_lib.load_experiment("vgg"), [override])


def test_unknown_experiment_lists_known_ones():
  with pytest.raises(ConfigError, match="known experiments: .*alexnet.*vgg"):
    config_lib.load_experiment("vgg17")


def test_experiment_by_path(tmp_path):
  path = tmp_path / "mine.py"
  path.write_text("from jaxcnn.defaults import base_config\n"
                  "def get_config():\n  c = base_config()\n"
                  "  c.train.num_epochs = 7\n  return c\n")
  assert config_lib.load_experiment(str(path)).train.num_epochs == 7


def test_diff_names_changed_fields():
  a = config_lib.load_experiment("vgg")
  b = config_lib.apply_overrides(a, ["model.vgg.depth=11"])
  assert config_lib.diff(a, b) == ["model.vgg.depth: 16 -> 11"]


def test_epochs_override_replaces_the_experiments_step_count():
  # alexnet trains 100k steps; an override of the epochs alone must set the
  # run length, not be ignored because num_steps > 0 wins in the trainer.
  alexnet = config_lib.load_experiment("alexnet")
  assert alexnet.train.num_steps == 100_000
  out = config_lib.apply_overrides(alexnet, ["train.num_epochs=2"])
  assert (out.train.num_epochs, out.train.num_steps) == (2, 0)
  # The step count the trainer derives: epochs x steps per epoch (500
  # images at batch 128: 3 full batches an epoch), so 6, not 100,000.
  from jaxcnn import trainer
  from jaxcnn.data import make_synthetic
  setup = trainer.build(out, make_synthetic(500, 10))
  assert (setup.steps_per_epoch, setup.total_steps) == (3, 6)
  # Steps alone, or both with one of them 0, are taken as given.
  out = config_lib.apply_overrides(alexnet, ["train.num_steps=50"])
  assert (out.train.num_epochs, out.train.num_steps) == (
      alexnet.train.num_epochs, 50)
  out = config_lib.apply_overrides(alexnet, ["train.num_epochs=3",
                                             "train.num_steps=0"])
  assert (out.train.num_epochs, out.train.num_steps) == (3, 0)


def test_epochs_and_steps_both_overridden_is_refused():
  with pytest.raises(ConfigError) as e:
    config_lib.apply_overrides(config_lib.load_experiment("vgg"), [
        "train.num_epochs=2", "train.num_steps=500"])
  assert "train.num_epochs=2" in str(e.value)
  assert "train.num_steps=500" in str(e.value)


def test_variant_experiment_loads_its_base_without_sys_path(tmp_path):
  import pathlib
  import sys
  before = list(sys.path)
  short = config_lib.load_experiment("vgg_short")
  assert sys.path == before
  vgg = config_lib.load_experiment("vgg")
  assert (short.model.to_dict(), short.train.batch_size) == (
      vgg.model.to_dict(), vgg.train.batch_size)
  assert (short.train.num_epochs, short.optim.schedule) == (30, "cosine")
  # The same file given as a path, from another directory, still finds its
  # base in experiments/.
  copy = tmp_path / "my_short.py"
  copy.write_text((config_lib.EXPERIMENTS_DIR / "vgg_short.py").read_text())
  assert config_lib.load_experiment(str(copy)) == short
  for path in pathlib.Path(config_lib.EXPERIMENTS_DIR).glob("*.py"):
    assert "sys.path" not in path.read_text(), path


def test_saved_config_json_loads_as_saved(tmp_path):
  # A WORKDIR/config.json as training writes it (the resolved config): it
  # loads with every saved field, the data's own fields cleared (they are
  # filled in again from the data), and newer fields at their defaults.
  saved = config_lib.apply_overrides(config_lib.load_experiment("test"), [
      "model.activation=tanh", "data.train_size=512",
      "data.image_shape=32,32,3", "data.class_names=a,b",
      "data.channel_mean=0.5,0.5,0.5", "data.channel_std=0.2,0.2,0.2"])
  as_dict = saved.to_dict()
  del as_dict["model"]["conv_impl"]  # As if saved before it existed.
  path = tmp_path / "run" / "config.json"
  path.parent.mkdir()
  path.write_text(json.dumps(as_dict))
  got = config_lib.load_experiment(str(path))
  assert got.model.activation == "tanh" and got.model.conv_impl == "auto"
  assert tuple(got.data.channel_mean) == (0.5, 0.5, 0.5)
  assert (got.data.train_size, got.data.image_shape,
          got.data.class_names) == (0, (), ())
  expected = saved.copy()
  expected.data.train_size, expected.data.image_shape = 0, ()
  expected.data.class_names = ()
  assert config_lib.diff(got, expected) == []
  over = config_lib.apply_overrides(got, ["train.num_steps=3"])
  assert over.train.num_steps == 3


@pytest.mark.parametrize("text, message", [
    ('{"model": {', "is not valid JSON"),
    ("[1, 2]", "is not a config saved by jaxcnn (it has no data, model, "
               "optim, train section)"),
    ('{"model": {}, "data": {}}', "it has no optim, train section"),
])
def test_broken_config_json_is_one_clear_error(tmp_path, text, message):
  path = tmp_path / "config.json"
  path.write_text(text)
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.load_experiment(str(path))
  assert str(path) in str(e.value) and message in str(e.value)
  with pytest.raises(config_lib.ConfigError, match="does not exist"):
    config_lib.load_experiment(str(tmp_path / "nowhere.json"))


def test_experiment_summaries_are_each_files_first_paragraph():
  summaries = config_lib.experiment_summaries()
  assert list(summaries) == config_lib.known_experiments()
  assert summaries["vgg"] == "VGG-16 with BatchNorm on CIFAR-10: the seed recipe."
  assert summaries["test"].startswith("A seconds-long run")
  assert all(summaries.values())


# --- Parameter groups (optim.groups) -----------------------------------------


def test_group_overrides_by_index_name_and_star():
  c = config_lib.load_experiment("speedrun")
  out = config_lib.apply_overrides(c, [
      "optim.groups.head.lr=0.5", "optim.groups.0.lr=7",
      "optim.groups.*.weight_decay=0.25",
      "optim.groups.whiten_bias.schedule.length_epochs=2",
      "optim.groups.bn_bias.frozen_from_epochs=4",
      "optim.groups.whiten_kernel.frozen_from_epochs=none"])
  g = {x.name: x for x in out.optim.groups}
  assert g["head"].lr == 0.5 and g["whiten_kernel"].lr == 7.0
  assert {x.weight_decay for x in out.optim.groups} == {0.25}
  assert g["whiten_bias"].schedule.length_epochs == 2.0
  assert g["bn_bias"].frozen_from_epochs == 4.0
  assert g["whiten_kernel"].frozen_from_epochs is None
  # The original is untouched.
  assert {x.name: x for x in c.optim.groups}["head"].lr == 0.67 * 2000


def test_setting_a_groups_optimizer_gives_it_that_optimizers_options():
  c = config_lib.load_experiment("speedrun")
  out = config_lib.apply_overrides(c, ["optim.groups.head.optimizer=adam",
                                       "optim.groups.filters.optimizer=rmsprop"])
  g = {x.name: x for x in out.optim.groups}
  assert (g["head"].b1, g["head"].b2, g["head"].eps) == (0.9, 0.999, 1e-8)
  assert "momentum" not in g["head"]
  # rmsprop has momentum and eps too: muon's values are kept.
  assert (g["filters"].momentum, g["filters"].decay) == (0.6, 0.9)
  assert "ns_steps" not in g["filters"]
  # Then the new options can be set, the old ones are gone.
  config_lib.apply_overrides(out, ["optim.groups.head.b1=0.8"])
  with pytest.raises(ConfigError, match="'adam' has no option 'momentum'"):
    config_lib.apply_overrides(out, ["optim.groups.head.momentum=0.8"])


def test_whole_groups_override_and_json_round_trip():
  from jaxcnn import groups
  c = config_lib.load_experiment("test")
  item = groups.override([groups.group("all", ".*", "adam", 1e-3)])
  out = config_lib.apply_overrides(c, [item])
  assert [g.name for g in out.optim.groups] == ["all"]
  assert out.optim.groups[0].b2 == 0.999
  again = config_lib.Config.from_dict(json.loads(out.to_json()))
  assert again == out and isinstance(again.optim.groups[0], config_lib.Config)
  assert out.copy() == out and out.copy().optim.groups[0] is not \
      out.optim.groups[0]


def test_flat_items_and_diff_name_groups_by_name():
  a = config_lib.load_experiment("speedrun")
  b = config_lib.apply_overrides(a, ["optim.groups.head.lr=0.5"])
  flat = dict(a.flat_items())
  assert flat["optim.groups.head.optimizer"] == "nesterov"
  assert flat["optim.groups.filters.ns_steps"] == 3
  assert flat["optim.groups.whiten_bias.schedule.length_epochs"] == 3.0
  assert config_lib.diff(a, b) == [
      f"optim.groups.head.lr: {0.67 * 2000!r} -> 0.5"]


def test_group_helper_fills_defaults_and_refuses_foreign_options():
  from jaxcnn import groups
  g = groups.group("head", "^head/", "nesterov", 0.1)
  assert (g.momentum, g.units, g.weight_decay, g.frozen_from_epochs,
          g.schedule) == (0.9, "step", 0.0, None, None)
  assert list(g)[:4] == ["name", "match", "optimizer", "lr"]
  with pytest.raises(ConfigError,
                     match="group 'head': optimizer 'sgd' has no option 'b1'"):
    groups.group("head", "^head/", "sgd", 0.1, b1=0.9)
  with pytest.raises(ConfigError, match="did you mean weight_decay"):
    groups.group("head", "^head/", "sgd", 0.1, weight_decy=0.9)
  with pytest.raises(ConfigError, match="use letters, digits and '_'"):
    groups.group("the head", "^head/", "sgd", 0.1)
