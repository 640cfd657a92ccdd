"""`jaxcnn.eval` and `jaxcnn.inspect`: restoring a trained workdir on another
device count, raw-vs-EMA numbers with known answers, every kept step, and
every error leaving the workdir as it was (the evaluator against training's
log and a direct model apply: tests/test_eval_step.py). One tiny run (4 fake devices) is shared by the whole module."""
import glob
import json
import math
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from jaxcnn import augment, checkpoint, cli, config as config_lib, evaluation
from jaxcnn import inspection, plots, restore
from jaxcnn import eval as eval_cli
from jaxcnn import inspect as inspect_cli
from jaxcnn import optim, trainer
from jaxcnn.data import load_from_config
from jaxcnn.models import create_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Adam at 1e-2 gets the tiny model well off chance level within 48 steps, so
# the comparisons below are not of two constant predictors.
RUN = ["optim.groups.*.optimizer=adam", "optim.groups.*.lr=0.01",
       "train.num_steps=48", "train.checkpoint_every_steps=16",
       "train.eval_every_epochs=0", "train.num_devices=4"]
STEPS = [16, 32, 48]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(workdir, final result of training) of a run on 4 devices."""
  assert len(jax.local_devices()) == 4
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  config = config_lib.apply_overrides(config_lib.load_experiment("test"), RUN)
  result = trainer.train_and_evaluate(config, workdir)
  assert checkpoint.saved_steps(workdir) == STEPS
  return workdir, result


@pytest.fixture
def copy_of(trained, tmp_path):
  """A private copy of the trained workdir, for tests that damage it."""
  dst = str(tmp_path / "copy")
  shutil.copytree(trained[0], dst)
  return dst


def snapshot(path) -> dict:
  """Every file and directory under `path` with size and mtime."""
  out = {}
  for root, dirs, files in os.walk(path):
    for name in dirs + files:
      full = os.path.join(root, name)
      st = os.stat(full)
      out[os.path.relpath(full, path)] = (os.path.isdir(full), st.st_size,
                                          st.st_mtime_ns)
  return out


def run_command(module, argv, capsys):
  """Runs a command's main through cli.run_main: (exit code, stdout, stderr)."""
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    cli.run_main(lambda: module.main(argv))
  out = capsys.readouterr()
  return exit_info.value.code, out.out, out.err


def with_ema(state: trainer.TrainState, ema_params) -> trainer.TrainState:
  """`state` with its optimizer's EMA of the params replaced."""
  def swap(s):
    return s._replace(ema=ema_params) if isinstance(
        s, optim.EmaParamsState) else s
  opt_state = jax.tree.map(swap, state.opt_state,
                           is_leaf=lambda s: isinstance(s, optim.EmaParamsState))
  return state.replace(opt_state=opt_state)


# --- Evaluation ---------------------------------------------------------------


def test_one_device_reproduces_training_on_four(trained):
  workdir, result = trained
  report = evaluation.eval_workdir(workdir, num_devices=1)
  assert report["num_devices"] == 1 and report["step"] == 48
  for w in ("raw", "ema"):
    got = report["results"][w]
    assert got["count"] == 200
    assert got["accuracy"] == result[w]["accuracy"]
    assert got["top5_accuracy"] == result[w]["top5_accuracy"]
    assert got["confusion"] == result[w]["confusion"].tolist()
    assert got["loss"] == pytest.approx(result[w]["loss"], rel=1e-5)
  # Well off chance, so equal counts mean something.
  assert result["ema"]["accuracy"] > 0.15


def test_train_split_is_the_training_images(trained):
  report = evaluation.eval_workdir(trained[0], split="train", weights="ema")
  assert list(report["results"]) == ["ema"]
  assert report["count"] == 512  # synthetic_train_size of the test experiment


def test_all_steps_evaluates_every_kept_step(trained, tmp_path, capsys):
  workdir, result = trained
  out_dir = tmp_path / "out"
  code, out, _ = run_command(eval_cli, ["--workdir", workdir, "--all_steps",
                                        "--json", "--out_dir", str(out_dir)],
                             capsys)
  assert code == 0
  report = json.loads(out)
  assert [r["step"] for r in report["steps"]] == STEPS
  last = report["steps"][-1]
  assert last["raw"]["accuracy"] == result["raw"]["accuracy"]
  assert last["ema"]["accuracy"] == result["ema"]["accuracy"]
  # An earlier step evaluates as it would on its own.
  config, state, _ = restore.load_checkpoint(workdir, 16)
  alone = evaluation.evaluate(config, state,
                              load_from_config(config.data, config.seed))
  assert report["steps"][0]["ema"]["accuracy"] == alone["ema"]["accuracy"]
  assert report["steps"][0]["raw"]["loss"] == pytest.approx(
      alone["raw"]["loss"], rel=1e-6)
  curve = json.loads((out_dir / "accuracy_vs_step.json").read_text())
  assert [r["step"] for r in curve["steps"]] == STEPS
  assert curve["steps"][1]["raw"]["accuracy"] == \
      report["steps"][1]["raw"]["accuracy"]
  for name in ("accuracy_vs_step.png", "confusion_step48_raw.png",
               "confusion_step48_ema.png"):
    assert (out_dir / name).stat().st_size > 1000, name
  text = eval_cli.format_report(report)
  assert "all kept steps" in text and "confusion matrix, ema weights" in text


def test_cli_on_a_one_device_machine(trained):
  # A fresh process that sees one CPU device, as another machine would.
  workdir, result = trained
  before = snapshot(os.path.join(workdir, "checkpoints"))
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "jaxcnn.eval", "--workdir", workdir],
      capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert "1 cpu device(s)" in proc.stdout
  for w in ("raw", "ema"):
    line = next(l for l in proc.stdout.splitlines() if l.startswith(w + " "))
    assert f"{100 * result[w]['accuracy']:.2f}%" in line
  assert "per-class top-1 accuracy" in proc.stdout
  for w in ("raw", "ema"):
    assert os.path.getsize(
        os.path.join(workdir, "eval", f"confusion_step48_{w}.png")) > 1000
  assert snapshot(os.path.join(workdir, "checkpoints")) == before


# --- Raw against EMA ----------------------------------------------------------


def test_identical_ema_gives_zero_distance_and_cosine_one(trained):
  _, state, _ = restore.load_checkpoint(trained[0])
  same = with_ema(state, jax.tree.map(np.array, state.params)).replace(
      ema_batch_stats=jax.tree.map(np.array, state.batch_stats))
  rows = inspection.compare_weights(same)
  assert {r["kind"] for r in rows} == {"param", "batch_stats"}
  for r in rows:
    assert r["distance"] == 0.0 and r["relative_difference"] == 0.0, r["name"]
    assert r["cosine"] == pytest.approx(1.0, abs=1e-12), r["name"]
    assert r["raw_norm"] == r["ema_norm"] > 0
  summary = inspection.summarize_comparison(rows)
  assert summary["relative_difference"] == 0.0
  assert summary["most_different"] == []
  assert summary["param_count"] == sum(
      x.size for x in jax.tree.leaves(state.params))


def test_perturbed_ema_gives_the_known_distance(trained):
  _, state, _ = restore.load_checkpoint(trained[0])
  params = jax.tree.map(np.array, state.params)
  # Half the entries of conv2/kernel exactly zero: near-zero fraction 1/2.
  kernel = params["conv2"]["kernel"]
  flat = kernel.reshape(-1)
  flat[: flat.size // 2] = 0.0
  flat[flat.size // 2:] = 1.0
  ema = jax.tree.map(np.array, params)
  delta = 0.01
  ema["conv1"]["kernel"] = ema["conv1"]["kernel"] + delta
  perturbed = with_ema(state.replace(params=params), ema).replace(
      ema_batch_stats=jax.tree.map(np.array, state.batch_stats))
  rows = {r["name"]: r for r in inspection.compare_weights(perturbed)
          if r["kind"] == "param"}
  raw = np.asarray(params["conv1"]["kernel"], np.float64).ravel()
  moved = np.asarray(ema["conv1"]["kernel"], np.float64).ravel()
  r = rows["conv1/kernel"]
  assert r["count"] == 3 * 3 * 3 * 8 and r["shape"] == [3, 3, 3, 8]
  assert r["distance"] == pytest.approx(delta * math.sqrt(216), rel=1e-5)
  assert r["relative_difference"] == pytest.approx(
      r["distance"] / np.linalg.norm(raw), rel=1e-9)
  assert r["cosine"] == pytest.approx(
      raw @ moved / (np.linalg.norm(raw) * np.linalg.norm(moved)), rel=1e-9)
  assert r["cosine"] < 1.0
  assert rows["conv2/kernel"]["near_zero_raw"] == 0.5
  assert rows["conv2/kernel"]["near_zero_ema"] == 0.5
  for name, row in rows.items():
    if name != "conv1/kernel":
      assert row["distance"] == 0.0, name
  summary = inspection.summarize_comparison(list(rows.values()))
  assert summary["most_different"] == [
      {"name": "conv1/kernel", "relative_difference": r["relative_difference"]}]


def test_inspect_cli_tables_plots_and_eval(trained, tmp_path, capsys):
  workdir, result = trained
  out_dir = tmp_path / "inspect"
  code, out, _ = run_command(
      inspect_cli, ["--workdir", workdir, "--json", "--plot", "--eval",
                    "--out_dir", str(out_dir)], capsys)
  assert code == 0
  report = json.loads(out)
  config, state, _ = restore.load_checkpoint(workdir)
  assert report["rows"] == json.loads(json.dumps(
      inspection.compare_weights(state, order=inspection.model_order(config))))
  assert report["eval"]["raw"]["accuracy"] == result["raw"]["accuracy"]
  assert report["eval"]["ema"]["accuracy"] == result["ema"]["accuracy"]
  [hist] = report["histograms"]
  assert sum(hist["raw_counts"]) == sum(hist["ema_counts"]) == math.prod(
      next(r["shape"] for r in report["rows"] if r["name"] == hist["name"]))
  assert (out_dir / "relative_difference_step48.png").stat().st_size > 1000
  safe = hist["name"].replace("/", "_")
  assert (out_dir / f"histogram_step48_{safe}.png").stat().st_size > 1000

  code, out, _ = run_command(
      inspect_cli, ["--workdir", workdir, "--step", "16", "--plot", "--layer",
                    "conv1/kernel", "--out_dir", str(out_dir)], capsys)
  assert code == 0
  assert "step 16" in out and "BatchNorm running statistics" in out
  assert out.splitlines()[-3].startswith("summary: 8 parameter tensors")
  assert (out_dir / "histogram_step16_conv1_kernel.png").exists()


# --- Errors -------------------------------------------------------------------


def _truncate(path, size=100):
  with open(path, "r+b") as f:
    f.truncate(size)


def _edit_saved_config(workdir, **model_fields):
  path = os.path.join(workdir, "checkpoints", "48", "config", "metadata")
  saved = json.loads(open(path).read())
  saved["model"].update(model_fields)
  open(path, "w").write(json.dumps(saved))


ERRORS = {
    # name: (damage(workdir, tmp_path) -> extra argv, command, exit code,
    #        fragments of the message)
    "no checkpoints": (
        lambda w, t: shutil.rmtree(os.path.join(w, "checkpoints")) or [],
        eval_cli, 1, ["no checkpoints in", "train first"]),
    "no workdir": (
        lambda w, t: shutil.rmtree(w) or [], inspect_cli, 1,
        ["does not exist"]),
    "unknown step": (
        lambda w, t: ["--step", "7"], inspect_cli, 1,
        ["no checkpoint for step 7", "saved steps: 16, 32, 48"]),
    "model that does not build": (
        lambda w, t: _edit_saved_config(w, name="resnet") or [], eval_cli, 1,
        ["step 48", "incompatible model or config", "model.name='resnet'",
         "does not build"]),
    "model of other shapes": (
        lambda w, t: _edit_saved_config(w, width=2.0) or [], inspect_cli, 1,
        ["step 48", "incompatible model or config", "different shapes",
         "params/bn1/bias (8,) float32 saved vs (16,) float32 built"]),
    "truncated data file": (
        lambda w, t: [_truncate(p) for p in glob.glob(
            os.path.join(w, "checkpoints/48/state/d/*"))] and [],
        eval_cli, 1, ["step 48", "truncated or corrupted",
                      "checkpoints/48/state/d/"]),
    "truncated process files": (
        lambda w, t: [_truncate(p) for p in glob.glob(
            os.path.join(w, "checkpoints/48/state/ocdbt.process_0/d/*"))]
        and [], inspect_cli, 1,
        ["step 48", "truncated or corrupted",
         "checkpoints/48/state/ocdbt.process_0/d/"]),
    "garbled metadata": (
        lambda w, t: open(os.path.join(w, "checkpoints/32/state/_METADATA"),
                          "w").write('{"tree_metadata": {') and
        ["--step", "32"], eval_cli, 1,
        ["step 32", "checkpoints/32/state/_METADATA is not valid JSON"]),
    "missing manifest": (
        lambda w, t: os.remove(os.path.join(
            w, "checkpoints/48/state/manifest.ocdbt")) or [], eval_cli, 1,
        ["checkpoints/48/state/manifest.ocdbt is missing"]),
    "data with other classes": (
        lambda w, t: _folder(str(t / "two"), ["a", "b"], per_class=2) or [
            "--data", f"folder:{t / 'two'}"], eval_cli, 2,
        ["has 2 classes", "predicts 10"]),
    "unknown layer": (
        lambda w, t: ["--plot", "--layer", "conv9/kernel"], inspect_cli, 2,
        ["unknown layer 'conv9/kernel'", "conv1/kernel"]),
    "unknown layers among several": (
        lambda w, t: ["--plot", "--layer", "conv1/kernel", "conv9/kernel",
                      "fc/bias"], inspect_cli, 2,
        ["unknown layers 'conv9/kernel', 'fc/bias'; parameter tensors: "
         "conv1/kernel, bn1/scale, bn1/bias, conv2/kernel"]),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_are_one_line_and_change_nothing(case, copy_of, tmp_path,
                                               capsys, monkeypatch):
  monkeypatch.setenv("JAXCNN_CACHE_DIR", str(tmp_path / "cache"))
  damage, module, want_code, fragments = ERRORS[case]
  extra = damage(copy_of, tmp_path)
  before = snapshot(copy_of) if os.path.exists(copy_of) else None
  code, out, err = run_command(module, ["--workdir", copy_of, *extra], capsys)
  assert code == want_code, err
  assert out == ""
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  for fragment in fragments:
    assert fragment in lines[0]
  after = snapshot(copy_of) if os.path.exists(copy_of) else None
  assert after == before


def test_corrupt_checkpoint_cli_prints_one_line(copy_of):
  # orbax's failed background reads print pages of tracebacks unless silenced.
  for path in glob.glob(os.path.join(copy_of, "checkpoints/48/state/d/*")):
    _truncate(path)
  before = snapshot(copy_of)
  proc = subprocess.run(
      [sys.executable, "-m", "jaxcnn.eval", "--workdir", copy_of],
      capture_output=True, text=True, cwd=REPO, timeout=300)
  assert proc.returncode == 1
  assert proc.stdout == ""
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert "truncated or corrupted" in lines[0]
  assert snapshot(copy_of) == before


def _folder(root, classes, size=32, per_class=1):
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    for name in classes:
      os.makedirs(os.path.join(root, split, name))
      for i in range(per_class):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), np.uint8)).save(
            os.path.join(root, split, name, f"{i}.png"))


def test_other_source_with_the_same_classes(trained, tmp_path, monkeypatch):
  monkeypatch.setenv("JAXCNN_CACHE_DIR", str(tmp_path / "cache"))
  _folder(str(tmp_path / "ten"), [f"k{i}" for i in range(10)], per_class=3)
  report = evaluation.eval_workdir(trained[0], source=f"folder:{tmp_path / 'ten'}",
                                   num_devices=4)
  assert report["count"] == 30 and report["class_names"][0] == "k0"
  assert sum(map(sum, report["results"]["ema"]["confusion"])) == 30


def test_saved_config_missing_a_newer_field_still_restores(copy_of):
  # A run saved before model.conv_impl existed: the default fills it in.
  path = os.path.join(copy_of, "checkpoints", "48", "config", "metadata")
  saved = json.loads(open(path).read())
  del saved["model"]["conv_impl"]
  open(path, "w").write(json.dumps(saved))
  config, state, step = restore.load_checkpoint(copy_of)
  assert step == 48 and config.model.conv_impl == "auto"


def test_restoring_reads_no_data(trained, monkeypatch):
  # The saved config holds the data's fields (train_size, image_shape): the
  # state and schedule are rebuilt from it alone, so a run whose data is
  # gone still restores (evaluating it needs data; inspecting does not).
  from jaxcnn import data, state as state_lib

  def no_data(*args, **kwargs):
    raise AssertionError("restoring a checkpoint must not load data")

  monkeypatch.setattr(data, "load_from_config", no_data)
  monkeypatch.setattr(state_lib, "load_from_config", no_data)
  monkeypatch.setattr(evaluation, "load_from_config", no_data)
  monkeypatch.setattr(evaluation, "load_dataset", no_data)
  config, state, _ = restore.load_checkpoint(trained[0])
  assert config.data.train_size == 512
  assert tuple(config.data.image_shape) == (32, 32, 3)
  setup = state_lib.build_from_config(config)
  assert (setup.steps_per_epoch, setup.total_steps) == (16, 48)
  report = inspection.inspect_workdir(trained[0])
  assert report["step"] == 48 and report["rows"]


def test_workdir_saved_before_the_data_fields_still_evaluates(trained,
                                                              copy_of):
  # A run saved before data.train_size and data.image_shape existed: they
  # are taken as CIFAR-sized images and the run's training-set size, and the
  # evaluation is the one training reported.
  path = os.path.join(copy_of, "checkpoints", "48", "config", "metadata")
  saved = json.loads(open(path).read())
  del saved["data"]["train_size"], saved["data"]["image_shape"]
  open(path, "w").write(json.dumps(saved))
  report = evaluation.eval_workdir(copy_of, num_devices=4)
  for w in ("raw", "ema"):
    assert report["results"][w]["accuracy"] == trained[1][w]["accuracy"]


def test_resolved_data_fields_must_match_the_data():
  config = config_lib.apply_overrides(config_lib.load_experiment("test"),
                                      ["data.train_size=100"])
  with pytest.raises(config_lib.ConfigError,
                     match="data.train_size=100 but the data has 512"):
    trainer.build(config)


# --- Plots --------------------------------------------------------------------

TINY_PARAMS = ["conv1/kernel", "bn1/scale", "bn1/bias", "conv2/kernel",
               "bn2/scale", "bn2/bias", "logits/kernel", "logits/bias"]
TINY_STATS = ["bn1/mean", "bn1/var", "bn2/mean", "bn2/var"]


@pytest.fixture
def figures(monkeypatch):
  """The figures the plots module saves, kept for their Axes (no PNG is
  written)."""
  saved = []

  def keep(fig, path):
    saved.append(fig)
    return str(path)

  monkeypatch.setattr(plots, "_save", keep)
  return saved


def test_model_order_is_the_order_of_the_layers():
  # The order of the models' code, input to output: sorted names (what a
  # restored state gives) would put bn1 before conv1 and every bn before
  # every conv, and logits before nothing.
  test = config_lib.load_experiment("test")
  order = inspection.model_order(test)
  assert order == {"params": TINY_PARAMS, "batch_stats": TINY_STATS}
  vgg = config_lib.apply_overrides(config_lib.load_experiment("vgg"),
                                   ["model.width=0.125"])
  params = inspection.model_order(vgg)["params"]
  layers = list(dict.fromkeys(n.rpartition("/")[0] for n in params))
  convs = [f"conv{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
           for i in range(1, n + 1)]
  want = [name for conv in convs for name in (conv, "bn" + conv[4:])]
  assert layers == want + ["fc1", "fc2", "logits"]
  assert params[:3] == ["conv1_1/kernel", "bn1_1/scale", "bn1_1/bias"]
  assert params[-2:] == ["logits/kernel", "logits/bias"]
  assert inspection.model_order(vgg)["batch_stats"][:2] == [
      "bn1_1/mean", "bn1_1/var"]


def test_relative_difference_plot_in_layer_order(trained, figures):
  report = inspection.inspect_workdir(trained[0])
  assert [r["name"] for r in report["rows"]] == TINY_PARAMS + TINY_STATS
  plots.relative_difference(report["rows"], "unused.png", title="t")
  [fig] = figures
  ax = fig.axes[0]
  labels = [t.get_text() for t in ax.get_yticklabels()]
  # Each layer's BatchNorm statistics right after its parameters.
  assert labels == ["conv1/kernel", "bn1/scale", "bn1/bias", "bn1/mean",
                    "bn1/var", "conv2/kernel", "bn2/scale", "bn2/bias",
                    "bn2/mean", "bn2/var", "logits/kernel", "logits/bias"]
  bottom, top = ax.get_ylim()
  assert bottom > top  # The first layer at the top.
  by_name = {r["name"]: r for r in report["rows"]}
  bars = ax.patches
  assert len(bars) == len(labels)
  for bar, name in zip(bars, labels):  # Horizontal: the value is the width.
    assert bar.get_width() == pytest.approx(
        by_name[name]["relative_difference"])
    assert bar.get_y() + bar.get_height() / 2 == pytest.approx(
        labels.index(name))
  # Every colour of a bar has its legend entry.
  [legend] = fig.legends
  entries = {tuple(h.get_facecolor()): t.get_text()
             for h, t in zip(legend.legend_handles, legend.get_texts())}
  assert {tuple(b.get_facecolor()) for b in bars} == set(entries)
  assert sorted(entries.values()) == [
      "BatchNorm running statistic: raw vs EMA", "parameter: raw vs EMA"]


def test_histograms_of_several_tensors(trained, tmp_path, capsys, figures):
  workdir, _ = trained
  names = ["logits/kernel", "conv1/kernel", "bn2/scale", "conv2/kernel"]
  code, out, _ = run_command(
      inspect_cli, ["--workdir", workdir, "--json", "--plot", "--layer",
                    *names[:2], "--layer", *names[2:], "conv1/kernel",
                    "--out_dir", str(tmp_path)], capsys)
  assert code == 0
  report = json.loads(out)
  shapes = {r["name"]: r["shape"] for r in report["rows"]}
  hists = report["histograms"]
  assert [h["name"] for h in hists] == names  # As asked, each once.
  for h in hists:
    assert sum(h["raw_counts"]) == sum(h["ema_counts"]) == math.prod(
        shapes[h["name"]])
  assert report["files"][-1].endswith("histograms_step48.png")
  fig = figures[-1]
  shown = [ax for ax in fig.axes if ax.get_visible()]
  assert [ax.get_title() for ax in shown] == names  # A 2x2 grid.
  assert len(fig.axes) == 4  # Nothing hidden.
  for ax in shown:
    assert [line.get_label() for line in ax.patches] == ["raw", "EMA"]
    assert all(t == int(t) for t in ax.get_yticks())  # Counts.


def test_several_histograms_fill_a_grid_three_wide(figures):
  hists = [{"name": f"t{i}", "edges": [0.0, 0.5, 1.0],
            "raw_counts": [1, 2], "ema_counts": [2, 1]} for i in range(5)]
  plots.weight_histograms(hists, "unused.png", title="five")
  axes = figures[0].axes
  assert len(axes) == 6  # 2 rows of 3, the last one hidden.
  assert [ax.get_title() for ax in axes if ax.get_visible()] == [
      "t0", "t1", "t2", "t3", "t4"]
  with pytest.raises(ValueError, match="at least one"):
    plots.weight_histograms([], "unused.png", title="none")


def _in_view(ax, ticks):
  lo, hi = ax.get_xlim()
  return [t for t in ticks if lo <= t <= hi]


def test_step_and_epoch_axes_tick_at_whole_numbers(figures):
  # Three checkpoints 2 steps apart: matplotlib's default ticks 2, 2.5, 3...
  records = [{"step": s, "raw": {"accuracy": 0.1 * s},
              "ema": {"accuracy": 0.1 * s + 0.01}} for s in (2, 4, 6)]
  plots.accuracy_curve(records, "unused.png", title="t")
  curve = ([1.0, 2.0, 3.0], [40.0, 50.0, 55.0])
  plots.raw_and_ema_curves([{"name": "a", "raw": curve, "ema": curve}],
                           "unused.png", ylabel="%")
  plots.per_layer_curves({"conv1": [("a", curve)]}, "unused.png", ylabel="%")
  plots.training_curves(
      [{"name": "a", **{f"{w}_vs_{x}": curve for w in ("loss", "error")
                        for x in ("epoch", "seconds")}}],
      "unused.png", thresholds=[0.5], title="t")
  accuracy, test_accuracy, per_layer, training = figures
  axes = [accuracy.axes[0], test_accuracy.axes[0], per_layer.axes[0],
          training.axes[0], training.axes[2]]  # Not the seconds panels.
  for ax in axes:
    ax.figure.canvas.draw()
    ticks = _in_view(ax, ax.get_xticks())
    assert len(ticks) >= 3, ticks
    assert all(t == round(t) for t in ticks), ticks
  assert _in_view(accuracy.axes[0], accuracy.axes[0].get_xticks()) == [
      2, 3, 4, 5, 6]


# --- The validation split and the best checkpoint -------------------------------

VALIDATED = RUN + ["data.validation_size=100", "train.eval_every_epochs=1"]


@pytest.fixture(scope="module")
def validated(tmp_path_factory):
  """(workdir, final result) of a run holding out 100 validation images:
  412 trained on, 12 steps an epoch, evaluations at steps 12, 24, 36, 48."""
  workdir = str(tmp_path_factory.mktemp("validated") / "run")
  config = config_lib.apply_overrides(config_lib.load_experiment("test"),
                                      VALIDATED)
  result = trainer.train_and_evaluate(config, workdir)
  return workdir, result


def _evals(workdir):
  from jaxcnn import reporting
  return [r for r in reporting.read_metrics(workdir) if r["kind"] == "eval"]


def _direct_accuracy(config, state, images, labels, weights):
  model = create_model(config.model)
  x = augment.normalize(images, config.data.normalization,
                        np.asarray(config.data.channel_mean, np.float32),
                        np.asarray(config.data.channel_std, np.float32))
  logits = np.asarray(model.apply(trainer.variables_of(state, weights), x,
                                  train=False))
  return float(np.mean(logits.argmax(-1) == labels))


def test_validation_split_is_evaluated_beside_the_test_split(validated):
  from jaxcnn import data as data_lib
  workdir, result = validated
  evals = _evals(workdir)
  assert [r["step"] for r in evals] == [12, 24, 36, 48]
  for r in evals:
    for split in ("test", "validation"):
      for w in ("raw", "ema"):
        assert 0 <= r[f"{split}_accuracy_{w}"] <= 1
  config, state, step = restore.load_checkpoint(workdir)
  assert step == 48
  assert config.data.validation_size == 100 and config.data.train_size == 412
  # The reference: the held-out images rebuilt by hand, the model applied.
  whole = data_lib.make_synthetic(512, 200, seed=config.seed)
  held = data_lib.validation_indices(whole.train_labels, 100,
                                     whole.class_names)
  images, labels = whole.train_images[held], whole.train_labels[held]
  for w in ("raw", "ema"):
    want = _direct_accuracy(config, state, images, labels, w)
    assert evals[-1][f"validation_accuracy_{w}"] == pytest.approx(want)
    assert result["validation"][w]["accuracy"] == pytest.approx(want)
  report = evaluation.eval_workdir(workdir, split="validation")
  assert report["split"] == "validation" and report["count"] == 100
  for w in ("raw", "ema"):
    assert report["results"][w]["accuracy"] == pytest.approx(
        _direct_accuracy(config, state, images, labels, w))
  test = evaluation.eval_workdir(workdir)  # Default: the test split.
  assert test["count"] == 200
  assert test["results"]["raw"]["accuracy"] == pytest.approx(
      evals[-1]["test_accuracy_raw"])


def test_step_best_is_the_best_validation_evaluation(validated, capsys):
  workdir, _ = validated
  evals = _evals(workdir)
  best, value = None, -1.0
  for r in evals:  # The first evaluation of the highest accuracy.
    if r["validation_accuracy_raw"] > value:
      best, value = r["step"], r["validation_accuracy_raw"]
  assert checkpoint.saved_steps(workdir, checkpoint.BEST) == [best]
  report = evaluation.eval_workdir(workdir, step="best", split="validation",
                                   weights="raw")
  assert report["step"] == best
  assert report["results"]["raw"]["accuracy"] == pytest.approx(value)
  assert inspection.inspect_workdir(workdir, step="best")["step"] == best
  code, out, err = run_command(
      eval_cli, ["--workdir", workdir, "--step", "best", "--split",
                 "validation", "--json", "--no_plots"], capsys)
  assert code == 0 and json.loads(out)["step"] == best
  # Resuming reads the latest checkpoint, never the best.
  assert restore.load_checkpoint(workdir)[2] == 48


def test_step_best_without_a_validation_split_is_the_latest(trained):
  workdir, _ = trained
  assert evaluation.eval_workdir(workdir, step="best")["step"] == 48
  assert inspection.inspect_workdir(workdir, step="best")["step"] == 48
  assert not os.path.exists(os.path.join(workdir, "best"))


def test_validation_split_of_a_run_without_one_is_an_error(copy_of, capsys):
  before = snapshot(copy_of)
  code, out, err = run_command(
      eval_cli, ["--workdir", copy_of, "--split", "validation"], capsys)
  lines = [l for l in err.splitlines() if l.strip()]
  assert code != 0 and len(lines) == 1 and lines[0].startswith("error:")
  assert "no validation split" in lines[0]
  code, out, err = run_command(
      eval_cli, ["--workdir", copy_of, "--step", "last"], capsys)
  assert code == 2 and "expected a step number or 'best'" in err
  assert snapshot(copy_of) == before


@pytest.mark.parametrize("module", [eval_cli, inspect_cli])
def test_a_checkpoint_folder_given_as_workdir_names_workdir_and_step(
    module, copy_of, capsys):
  # A step folder, a folder inside one, or the checkpoints folder itself:
  # one line with the --workdir (and --step) to give instead.
  before = snapshot(copy_of)
  for given, use in (
      ("checkpoints/32", f"use --workdir {copy_of} --step 32"),
      ("checkpoints/48/state", f"use --workdir {copy_of} --step 48"),
      ("checkpoints", f"use --workdir {copy_of} (saved steps: 16, 32, 48)")):
    code, out, err = run_command(
        module, ["--workdir", os.path.join(copy_of, given)], capsys)
    lines = err.strip().splitlines()
    assert code == 1 and out == "" and len(lines) == 1, err
    assert lines[0].startswith(f"error: {os.path.join(copy_of, given)} is ")
    assert "not a workdir" in lines[0] and lines[0].endswith(use), lines[0]
  # Relative, as typed: the advice repeats the relative path.
  os.chdir(os.path.dirname(copy_of))
  try:
    code, _, err = run_command(module, ["--workdir", "copy/checkpoints/16"],
                               capsys)
  finally:
    os.chdir(REPO)
  assert code == 1 and err.strip().endswith("use --workdir copy --step 16")
  assert snapshot(copy_of) == before


def test_unreadable_newest_step_names_the_newest_readable_one(copy_of, capsys):
  def truncate_step(step):
    for path in glob.glob(os.path.join(copy_of, f"checkpoints/{step}/state/d/*")):
      _truncate(path)

  truncate_step(48)
  before = snapshot(copy_of)
  for module in (eval_cli, inspect_cli):
    code, out, err = run_command(module, ["--workdir", copy_of], capsys)
    lines = err.strip().splitlines()
    assert code == 1 and out == "" and len(lines) == 1, err
    assert "step 48" in lines[0] and "truncated or corrupted" in lines[0]
    assert lines[0].endswith("the newest readable checkpoint is step 32: use "
                             f"--workdir {copy_of} --step 32"), lines[0]
  # The step it names does evaluate.
  code, out, err = run_command(eval_cli, ["--workdir", copy_of, "--step", "32",
                                          "--json", "--no_plots"], capsys)
  assert code == 0 and json.loads(out)["step"] == 32
  truncate_step(32)
  code, _, err = run_command(eval_cli, ["--workdir", copy_of], capsys)
  assert code == 1 and err.strip().endswith("--step 16"), err
  truncate_step(16)
  code, _, err = run_command(eval_cli, ["--workdir", copy_of], capsys)
  assert code == 1 and err.strip().endswith(
      "no other checkpoint here can be read"), err
  assert snapshot(copy_of)["checkpoints"] == before["checkpoints"]


def test_eval_offers_every_tta_mode():
  # The CLI spells the modes out (its --help imports no jax): the same list.
  for mode in augment.TTA_MODES:
    assert eval_cli.parse_args(["--workdir", "w", "--tta", mode]).tta == mode
  with pytest.raises(SystemExit):
    eval_cli.parse_args(["--workdir", "w", "--tta", "rotate"])
