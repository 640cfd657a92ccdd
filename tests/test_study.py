"""The statistics collector against numpy, and one tiny study end to end on
synthetic data (runs on the 4 fake CPU devices of conftest.py)."""
import json
import re
import sys

import jax
import numpy as np
import optax
import pytest

from jaxcnn import config as config_lib, parallel, reporting, stats, studies, \
    study, study_report, study_runner, trainer
from jaxcnn import state as state_lib


def tiny_setup(*overrides):
  c = config_lib.apply_overrides(config_lib.load_experiment("test"), [
      "model.norm=none", "data.synthetic_train_size=96", *overrides])
  return trainer.build(c)


def np_conv3x3(x, kernel, bias):
  h, w = x.shape[1:3]
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = sum(np.einsum("nhwc,cd->nhwd", xp[:, dy:dy + h, dx:dx + w],
                      kernel[dy, dx]) for dy in range(3) for dx in range(3))
  return out + bias


def np_pool2x2(x):
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def np_activations(setup, params, act):
  """Post-activation outputs of conv1 and conv2 of the tiny net (norm none)
  on the probe batch, computed in numpy from the raw uint8 images."""
  mean, std = setup.mean_std
  n = min(stats.PROBE_SIZE, len(setup.data.train_labels))
  n -= n % setup.num_devices
  x = (setup.data.train_images[:n].astype(np.float64) / 255.0 - mean) / std
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  y1 = act(np_conv3x3(x, p["conv1"]["kernel"], p["conv1"]["bias"]))
  y2 = act(np_conv3x3(np_pool2x2(y1), p["conv2"]["kernel"],
                      p["conv2"]["bias"]))
  return {"conv1": y1, "conv2": y2}


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_stats_match_numpy(activation):
  setup = tiny_setup(f"model.activation={activation}")
  assert setup.num_devices == 4  # The probe is split: checks psum/pmax.
  state = trainer.create_train_state(setup)
  params = jax.tree.map(np.array, state.params)
  # Known outcomes: three conv1 channels pushed far negative (dead ReLUs,
  # saturated tanh/sigmoid), conv2 scaled up so many units saturate.
  params["conv1"]["bias"][:3] = -50.0
  params["conv2"]["kernel"] *= 20.0
  flat = params["conv1"]["kernel"].reshape(-1)  # A view: zeroes half of it.
  flat[:flat.size // 2] = 0.0
  state = state.replace(params=params)
  got = stats.StatsCollector(setup)(parallel.replicate(state,
                                                       setup.local_devices))

  acts = {"relu": lambda v: np.maximum(v, 0), "tanh": np.tanh,
          "sigmoid": lambda v: 1 / (1 + np.exp(-v))}[activation]
  ys = np_activations(setup, params, acts)
  for layer, y in ys.items():
    dead = np.mean(np.all(y.reshape(-1, y.shape[-1]) <= 0, axis=0))
    assert got[f"dead_fraction/{layer}"] == pytest.approx(dead, abs=1e-6)
    assert got[f"zero_fraction/{layer}"] == pytest.approx(
        np.mean(np.abs(y) < 1e-6), abs=2e-3)
    if activation == "tanh":
      sat = np.mean(np.abs(y) > 0.99)
    elif activation == "sigmoid":
      sat = np.mean((y < 0.01) | (y > 0.99))
    if activation == "relu":
      assert f"saturated_fraction/{layer}" not in got
    else:
      assert got[f"saturated_fraction/{layer}"] == pytest.approx(sat, abs=2e-3)
  if activation == "relu":
    assert got["dead_fraction/conv1"] >= 3 / 8
  else:
    assert got["dead_fraction/conv1"] == (3 / 8 if activation == "tanh"
                                          else 0.0)
    assert got["saturated_fraction/conv1"] > 0.3

  # Weight sparsity: |w| < 1e-3 over every kernel.
  kernels = [params[m]["kernel"] for m in params]
  expected = (sum(np.sum(np.abs(k) < 1e-3) for k in kernels)
              / sum(k.size for k in kernels))
  assert got["weight_zero_fraction"] == pytest.approx(expected, rel=1e-6)
  assert got["weight_zero_fraction/conv1"] >= 0.5

  # Gradient norms: the gradient of the mean loss over the whole probe batch
  # in one piece (no devices), per module.
  x, y = stats.probe_batch(setup)

  def loss(p):
    logits = setup.model.apply({"params": p}, x, train=False)
    return np.float32(0) + optax.softmax_cross_entropy_with_integer_labels(
        logits, y).mean()

  grads = jax.grad(loss)(params)
  for module in params:
    norm = np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64)))
                       for g in jax.tree.leaves(grads[module])))
    assert got[f"grad_norm/{module}"] == pytest.approx(norm, rel=1e-3,
                                                       abs=1e-6)


def _row(report: str, member: str, after: str = "") -> list[str]:
  """The cells of `member`'s row in the first table after the line that
  starts with `after`."""
  lines = report.splitlines()
  if after:
    lines = lines[next(i for i, line in enumerate(lines)
                       if line.startswith(after)):]
  for line in lines:
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if cells and cells[0] == member:
      return cells
  raise AssertionError(f"no row for {member} in the report")


def test_tiny_study_end_to_end(tmp_path):
  # Two members with known outcomes: one learns the synthetic classes (beyond
  # chance within a few steps: train error below 85%), one has a zero
  # learning rate and so keeps its initial weights (never below 85%, raw and
  # EMA weights equal).
  s = studies.Study(
      "toy", question="q", paper="p", base="test",
      members=lambda scale: [
          studies.Member("learns", ("optim.groups.*.lr=0.1",)),
          studies.Member("frozen", ("optim.groups.*.lr=0.0",))],
      scale_overrides={"tiny": ("optim.groups.*.optimizer=momentum",
                                "optim.schedule=constant",
                                "data.synthetic_train_size=256")},
      epochs={"tiny": 3}, extras=("dead", "ema", "paired"),
      thresholds=(0.85,))
  root = tmp_path / "runs"
  status = study_runner.run_study(s, "tiny", 1, root)
  assert sorted(status.values()) == ["done", "done"]
  path = study_report.write_report(s, "tiny", 1, root, command="toy")
  report = path.read_text()
  out = path.parent
  for png in ("curves.png", "test_accuracy.png", "dead_fraction.png"):
    assert (out / png).stat().st_size > 1000

  header = _row(report, "member")
  for member in ("learns", "frozen"):
    workdir = root / "study_toy" / f"{member}_seed0"
    evals = reporting.read_metrics(workdir, "eval")
    train = reporting.read_metrics(workdir, "train")
    row = dict(zip(header, _row(report, member)))
    assert row["test acc raw %"] == f"{100 * evals[-1]['test_accuracy_raw']:.2f}"
    assert row["test acc EMA %"] == f"{100 * evals[-1]['test_accuracy_ema']:.2f}"
    assert row["final train loss"] == f"{train[-1]['loss']:.3f}"
    hit = next((r for r in train if r["accuracy"] >= 0.15), None)
    assert row["epochs to 85% train err"] == (
        f"{hit['epoch']:.2f}" if hit else "never")
    if member == "frozen":
      assert row["epochs to 85% train err"] == "never"
      assert row["test acc raw %"] == row["test acc EMA %"]
      stats_records = reporting.read_metrics(workdir, "stats")
      assert len({r["weight_zero_fraction"] for r in stats_records}) == 1
    else:
      assert hit is not None  # The learning member does learn.

  # 'paired': the frozen member minus the learning one, on seed 0.
  final = {m: reporting.read_metrics(root / "study_toy" / f"{m}_seed0",
                                     "eval")[-1]["test_accuracy_raw"]
           for m in ("learns", "frozen")}
  assert "### Against `learns`, seed by seed" in report
  paired = _row(report, "member", after="### Against")
  row = dict(zip(paired, _row(report, "frozen", after="### Against")))
  assert row["seeds paired"] == "1"
  assert row["Δ test raw (points)"] == (
      f"{100 * (final['frozen'] - final['learns']):+.2f}")

  # A re-run trains nothing: the metrics files are not appended to.
  sizes = {p: p.stat().st_size for p in root.glob("study_toy/*/metrics.jsonl")}
  assert len(sizes) == 2
  status = study_runner.run_study(s, "tiny", 1, root)
  assert sorted(status.values()) == ["done", "done"]
  assert {p: p.stat().st_size for p in sizes} == sizes
  summary = json.loads((out / "summary.json").read_text())
  assert [m["name"] for m in summary["members"]] == ["learns", "frozen"]


def steps_of(config):
  """(steps_per_epoch, total_steps) of a run on synthetic data: state.
  run_steps, given the training set's size without loading it."""
  n_train = config.data.synthetic_train_size
  if config.data.train_limit:
    n_train = min(n_train, config.data.train_limit)
  sized = config.copy()
  sized.data.train_size = n_train
  steps = state_lib.run_steps(sized)
  return steps.steps_per_epoch, steps.total_steps


def test_study_command_defaults_to_the_training_data(monkeypatch, tmp_path):
  # Without --data the members train on their experiment's data, as
  # `python -m jaxcnn.train` does (tfds:cifar10), never on a folder outside
  # the repository; --data replaces it. Loading is where the run would start.
  from jaxcnn import data

  class Loaded(Exception):
    pass

  sources = []

  def load_from_config(data_cfg, seed):
    sources.append(data_cfg.source)
    raise Loaded

  monkeypatch.setattr(data, "load_from_config", load_from_config)
  root = str(tmp_path / "runs")
  with pytest.raises(Loaded):
    study.main(["lrn", "--root", root])
  assert sources == ["tfds:cifar10"]
  assert config_lib.load_experiment("alexnet").data.source == "tfds:cifar10"
  with pytest.raises(Loaded):
    study.main(["lrn", "--root", root, "--data", "folder:/some/images"])
  assert sources[-1] == "folder:/some/images"
  assert not (tmp_path / "runs").exists()


def test_library_code_names_no_path_outside_the_repository():
  package = config_lib.REPO_ROOT / "jaxcnn"
  for path in package.rglob("*.py"):
    text = path.read_text()
    for outside in ("REPO_ROOT.parent", "../shared", '"shared"'):
      assert outside not in text, f"{path} names {outside}"


def test_a_study_is_one_file(monkeypatch, tmp_path, capsys):
  # Dropping one file into the studies package is all it takes: listed,
  # loaded by name, resolved into configs.
  (tmp_path / "toy_norms.py").write_text(
      "from jaxcnn.studies import Member, Study\n"
      "STUDY = Study('toy_norms', question='which norm?', paper='-',\n"
      "              base='test', members=lambda scale: [\n"
      "                  Member(n, (f'model.norm={n}',))\n"
      "                  for n in ('none', 'batchnorm')])\n")
  (tmp_path / "misnamed.py").write_text(
      "from jaxcnn.studies import Study\n"
      "STUDY = Study('other', question='', paper='', base='test',\n"
      "              members=lambda scale: [])\n")
  monkeypatch.setattr(studies, "__path__", [*studies.__path__, str(tmp_path)])
  for module in ("toy_norms", "misnamed"):
    monkeypatch.delitem(sys.modules, f"jaxcnn.studies.{module}",
                        raising=False)
  assert {"toy_norms", "misnamed", "lrn"} <= set(studies.names())
  assert not any(n.startswith("_") for n in studies.names())
  toy = studies.load("toy_norms")
  runs = studies.member_configs(toy, "small", 1)
  assert [c.model.norm for _, _, c in runs] == ["none", "batchnorm"]
  with pytest.raises(config_lib.ConfigError, match="name it after its file"):
    studies.load("misnamed")
  with pytest.raises(config_lib.ConfigError, match="unknown study 'nosuch'"):
    studies.load("nosuch")
  monkeypatch.setattr(studies, "__path__", [*studies.__path__[:-1]])
  assert "toy_norms" not in studies.names()
  for module in ("toy_norms", "misnamed"):
    sys.modules.pop(f"jaxcnn.studies.{module}", None)


def test_markdown_table_escapes_pipes_in_cells():
  # A member's override such as `optim.weight_decay_filter=bias$|^head/`
  # must stay in its cell.
  from jaxcnn.tables import format_table
  lines = format_table(["member", "acc"], [["`a=bias$|^head/`", 1]],
                       markdown=True).splitlines()
  assert lines[2] == "| `a=bias$\\|^head/` | 1 |"
  separators = lambda line: len(re.findall(r"(?<!\\)\|", line))
  assert separators(lines[2]) == separators(lines[0]) == 3


def _lr_entry(name, val, test):
  seed = {"validation_accuracy_raw": val, "test_accuracy_raw": test,
          "epochs_to_60": 1.0}
  return {"name": name, "seeds": [seed]}


def test_best_lr_is_chosen_on_validation_never_on_test():
  # sgd@0.1 is the best on test, sgd@0.01 on validation: the choice is the
  # validation one, and the table reports the test accuracy it then gets.
  entries = [_lr_entry("sgd@0.1", 0.50, 0.70), _lr_entry("sgd@0.01", 0.60, 0.65),
             _lr_entry("adam@1e-3", 0.40, 0.41),
             _lr_entry("adam@1e-4", 0.45, 0.30)]
  chosen = study_report.best_lr_choices(entries)
  assert {g: e["name"] for g, e in chosen.items()} == {
      "sgd": "sgd@0.01", "adam": "adam@1e-4"}
  table = study_report._best_lr_table(entries, 0.6)
  rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
          for line in table.splitlines()[2:]}
  assert rows["sgd"][1] == "0.01" and rows["sgd"][3:5] == ["60.00", "65.00"]
  assert rows["adam"][1] == "1e-4" and rows["adam"][4] == "30.00"
  # Without a validation split nothing is chosen (the test split is not a
  # stand-in).
  blind = [_lr_entry("sgd@0.1", None, 0.7), _lr_entry("sgd@0.01", None, 0.6)]
  assert study_report.best_lr_choices(blind) == {"sgd": None}
  assert "no validation split" in study_report._best_lr_table(blind, 0.6)


def test_small_and_full_scales_hold_out_a_validation_split():
  from jaxcnn import studies as studies_lib
  study = studies_lib.load("optimizers")
  for scale, size in (("small", 500), ("full", 5000)):
    for _, _, config in studies_lib.member_configs(study, scale, 1):
      assert config.data.validation_size == size
  small = studies_lib.member_configs(study, "small", 1)[0][2]
  assert small.data.train_limit == 5000


def test_every_study_builds_at_every_scale():
  # The check a study makes before it trains its first member, at every
  # scale: every member resolves, its data fields fill in, and its model,
  # optimizer and initial state build (shapes only, jax.eval_shape). The
  # tiny scale swaps in the tiny model, so each study's model overrides
  # must make sense there too (the lrn study's norm did not, once).
  datasets = {}
  for name, s in studies.all_studies().items():
    for scale in studies.SCALES:
      runs = studies.member_configs(s, scale, 1, data="synthetic")
      assert all(re.fullmatch(r"[\w.@-]+", m.name) for m, _, _ in runs)
      if scale == "small":
        # Statistics are on unless a study turns them off itself
        # (speedrun_ablation reads only accuracies).
        off = "train.collect_stats=false" in s.scale_overrides.get("small",
                                                                    ())
        assert all(c.train.collect_stats != off for _, _, c in runs), name
      # Room for the full scale's 5,000 held out, and for 3 batches of 1,536
      # an epoch (speedrun_hiverge trains its whitening bias 0.22 epochs).
      for _, _, config in runs:
        config.data.synthetic_train_size = 10000
      resolved = study_runner.check_runs(s, scale, runs, datasets)
      assert len(resolved) == len(runs) > 0, (name, scale)
      for (member, _, config), full in zip(runs, resolved):
        assert state_lib.run_steps(full).total_steps > 0, (
            name, scale, member.name)
        if scale == "tiny":
          assert full.model.name == "tiny"
  lrn = studies.member_configs(studies.load("lrn"), "tiny", 1)
  assert [c.model.norm for _, _, c in lrn] == ["lrn", "none", "batchnorm"]


def test_a_study_checks_every_member_before_training_any(tmp_path):
  # The second member cannot be built (VGG has no LRN): the study stops
  # before the first, good member trains, naming the bad one.
  s = studies.Study(
      "toy", question="q", paper="p", base="test",
      members=lambda scale: [
          studies.Member("good", ()),
          studies.Member("bad", ("model.name=vgg", "model.norm=lrn"))])
  with pytest.raises(config_lib.ConfigError) as e:
    study_runner.run_study(s, "tiny", 1, tmp_path / "runs")
  assert "member bad cannot run, so nothing was trained" in str(e.value)
  assert "model.norm='lrn' is not supported by vgg" in str(e.value)
  assert not (tmp_path / "runs").exists()


def test_study_help_explains_the_options_and_lists_the_studies(capsys):
  with pytest.raises(SystemExit):
    study.parse_args(["--help"])
  out = " ".join(capsys.readouterr().out.split())  # Unwrapped.
  assert "(default: small): tiny = the tiny model on synthetic data" in out
  assert "seeds 0..N-1 (default: 1)" in out
  assert "(default: runs): ROOT/study_NAME/<member>_seed<k>" in out
  for s in studies.all_studies().values():
    assert f"{s.name}: {' '.join(s.question.split())}" in out
