"""The train loop end to end on tiny configs: data parallelism, resume, TFDS,
errors. Runs on 4 fake CPU devices (see conftest.py)."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxcnn import (checkpoint, config as config_lib, eval_step, reporting,
                    trainer)
from jaxcnn.parallel import DeviceError

from conftest import checkpoint_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(*overrides):
  c = config_lib.load_experiment("test")
  return config_lib.apply_overrides(c, list(overrides))


def assert_trees_close(a, b, **tol):
  flat_a = jax.tree_util.tree_leaves_with_path(a)
  flat_b = jax.tree.leaves(b)
  assert len(flat_a) == len(flat_b)
  for (path, x), y in zip(flat_a, flat_b):
    np.testing.assert_allclose(x, y, err_msg=jax.tree_util.keystr(path), **tol)


def test_loop_queues_at_most_a_few_calls(tmp_path, monkeypatch):
  # With JAX's asynchronous dispatch a loop that never waits runs ahead to
  # its next log, and a SIGTERM then waits for every queued step: the loop
  # must wait for its calls at least every MAX_CALLS_IN_FLIGHT of them.
  events = []
  real_make, real_block = trainer.make_train_fn, jax.block_until_ready

  def make(*args):
    fn = real_make(*args)
    def counted(*inputs):
      events.append("call")
      return fn(*inputs)
    return counted

  def block(x):
    events.append("wait")
    return real_block(x)

  monkeypatch.setattr(trainer, "make_train_fn", make)
  monkeypatch.setattr(jax, "block_until_ready", block)
  trainer.train_and_evaluate(
      tiny_config("train.num_devices=1", "train.num_steps=12",
                  "train.log_every_steps=100", "train.eval_every_epochs=0",
                  "train.checkpoint_every_steps=100"), str(tmp_path / "run"))
  assert events.count("call") == 12
  runs = "".join("c" if e == "call" else " " for e in events).split()
  assert max(len(r) for r in runs) <= trainer.MAX_CALLS_IN_FLIGHT, events


def test_four_devices_equal_one_device(tmp_path):
  # Same global batches, augmentation on; dropout off, since its masks are
  # drawn per device. Gradients and BatchNorm statistics must be averaged over
  # the devices for the two to agree.
  common = ["model.dropout=0.0", "train.num_steps=6", "train.eval_every_epochs=0"]
  r4 = trainer.train_and_evaluate(
      tiny_config(*common, "train.num_devices=4"), str(tmp_path / "d4"))
  r1 = trainer.train_and_evaluate(
      tiny_config(*common, "train.num_devices=1"), str(tmp_path / "d1"))
  s4, s1 = checkpoint_state(tmp_path / "d4"), checkpoint_state(tmp_path / "d1")
  assert int(s4["step"]) == int(s1["step"]) == 6
  assert_trees_close(s4["params"], s1["params"], rtol=2e-4, atol=2e-5)
  assert_trees_close(s4["batch_stats"], s1["batch_stats"], rtol=2e-4, atol=2e-5)
  assert_trees_close(s4["opt_state"], s1["opt_state"], rtol=2e-4, atol=2e-5)
  # The parameters really moved (the comparison is not of two initial states).
  s0 = jax.tree.map(np.asarray, trainer.create_train_state(
      trainer.build(tiny_config(*common))).params)
  moved = max(float(np.max(np.abs(a - b))) for a, b in
              zip(jax.tree.leaves(s4["params"]), jax.tree.leaves(s0)))
  assert moved > 1e-3
  assert abs(r4["raw"]["accuracy"] - r1["raw"]["accuracy"]) <= 0.01


def test_resumed_run_equals_uninterrupted_run(tmp_path):
  # Exponential decay does not depend on the run length, so stopping at step 10
  # (the first command) and going on to 24 (the second) must match one run to
  # 24 exactly: data order, crops, flips and dropout are functions of the step.
  common = ["optim.schedule=exponential", "optim.warmup_epochs=0",
            "train.eval_every_epochs=0", "train.checkpoint_every_steps=1000"]
  trainer.train_and_evaluate(tiny_config(*common, "train.num_steps=24"),
                             str(tmp_path / "full"))
  part = str(tmp_path / "part")
  trainer.train_and_evaluate(tiny_config(*common, "train.num_steps=10"), part)
  assert checkpoint.saved_steps(part) == [10]
  # As if saved before the config held the data's size and image shape: a
  # run of an older jaxcnn resumes (those fields take the current values).
  path = os.path.join(part, "checkpoints", "10", "config", "metadata")
  saved = json.loads(open(path).read())
  del saved["data"]["train_size"], saved["data"]["image_shape"]
  open(path, "w").write(json.dumps(saved))
  trainer.train_and_evaluate(tiny_config(*common, "train.num_steps=24"), part)
  assert checkpoint.saved_steps(part)[-1] == 24
  full, resumed = checkpoint_state(tmp_path / "full"), checkpoint_state(part)
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)


def test_steps_per_dispatch_matches_single_steps(tmp_path):
  # 16 steps per epoch; chunks of 3 cross the epoch boundary at step 16.
  common = ["train.num_steps=21", "train.eval_every_epochs=0"]
  trainer.train_and_evaluate(tiny_config(*common, "train.steps_per_dispatch=3"),
                             str(tmp_path / "k3"))
  trainer.train_and_evaluate(tiny_config(*common), str(tmp_path / "k1"))
  assert_trees_close(checkpoint_state(tmp_path / "k3")["params"],
                     checkpoint_state(tmp_path / "k1")["params"],
                     rtol=1e-5, atol=1e-6)


def test_outputs_metrics_and_eval_counts_every_image(tmp_path):
  workdir = str(tmp_path / "run")
  # 200 test images over 4 devices in batches of 64: the last batch is padded.
  result = trainer.train_and_evaluate(tiny_config("train.num_epochs=2"), workdir)
  train = reporting.read_metrics(workdir, "train")
  evals = reporting.read_metrics(workdir, "eval")
  assert [r["step"] for r in evals] == [16, 32]
  assert train[-1]["step"] == 32
  for key in ("loss", "accuracy", "learning_rate", "examples_per_sec",
              "sec_per_batch"):
    assert np.isfinite(train[-1][key]), key
  assert result["raw"]["count"] == result["ema"]["count"] == 200
  assert result["raw"]["confusion"].sum() == 200
  assert evals[-1]["test_accuracy_raw"] == pytest.approx(
      result["raw"]["accuracy"])
  saved = json.loads(open(os.path.join(workdir, "config.json")).read())
  assert len(saved["data"]["channel_mean"]) == 3
  assert os.listdir(os.path.join(workdir, "tensorboard"))


def test_batch_not_divisible_by_devices():
  with pytest.raises(DeviceError, match="batch_size=30 does not divide evenly "
                     "over 4 devices"):
    trainer.build(tiny_config("train.batch_size=30"))


def test_incompatible_workdir_is_refused_and_kept(tmp_path):
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(tiny_config("train.num_steps=8"), workdir)
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  with pytest.raises(trainer.TrainingError, match="model.activation"):
    trainer.train_and_evaluate(
        tiny_config("train.num_steps=12", "model.activation=tanh"), workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


def run_cli(*args, cwd=REPO):
  env = dict(os.environ)
  return subprocess.run([sys.executable, "-m", "jaxcnn.train", *args],
                        capture_output=True, text=True, cwd=cwd, env=env,
                        timeout=300)


def test_cli_trains_and_reports(tmp_path):
  # The real command line, in a process of its own: it trains and reports,
  # and a bad input ends in one line and exit 2 without a traceback (every
  # bad input's message is checked in-process by tests/test_bad_inputs.py).
  out = run_cli("--exp", "test", "--workdir", str(tmp_path / "w"),
                "--set", "train.num_steps=8")
  assert out.returncode == 0, out.stderr
  assert "final: step 8, test accuracy raw" in out.stderr
  bad = run_cli("--exp", "test", "--set", "train.bogus=1", "--workdir",
                str(tmp_path / "bad"))
  assert bad.returncode == 2
  lines = bad.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(
      "error: unknown config key 'train.bogus'"), bad.stderr
  assert not (tmp_path / "bad").exists()


def test_rerun_of_a_saved_config_trains_that_config(tmp_path, capsys):
  # --exp WORKDIR/config.json trains the saved run's config again: the same
  # resolved config and, the run being deterministic, the same weights;
  # --set applies on top, and the data's fields are filled in afresh.
  from jaxcnn import train
  first = str(tmp_path / "first")
  common = ["--set", "train.num_steps=8", "--set", "train.eval_every_epochs=0",
            "--set", "model.activation=tanh"]
  assert train.main(["--exp", "test", "--workdir", first] + common) == 0
  saved = os.path.join(first, "config.json")
  # The saved config names the classes (python -m jaxcnn.predict says them).
  assert json.loads(open(saved).read())["data"]["class_names"] == [
      f"class{i}" for i in range(10)]
  again = str(tmp_path / "again")
  assert train.main(["--exp", saved, "--workdir", again]) == 0
  assert (open(os.path.join(again, "config.json")).read()
          == open(saved).read())
  a, b = checkpoint_state(first), checkpoint_state(again)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  capsys.readouterr()
  assert train.main(["--exp", saved, "--print_config",
                     "--set", "train.num_steps=5",
                     "--set", "data.train_limit=256"]) == 0
  printed = json.loads(capsys.readouterr().out)
  assert printed["train"]["num_steps"] == 5
  assert printed["model"]["activation"] == "tanh"
  assert printed["data"]["train_size"] == 0  # Filled in from the data.
  # A run saved before the config named its classes still resumes.
  meta = os.path.join(first, "checkpoints", "8", "config", "metadata")
  old = json.loads(open(meta).read())
  del old["data"]["class_names"]
  open(meta, "w").write(json.dumps(old))
  longer = common[2:] + ["--set", "train.num_steps=12"]
  assert train.main(["--exp", "test", "--workdir", first] + longer) == 0
  assert checkpoint.saved_steps(first)[-1] == 12
  assert train.default_workdir(saved) == os.path.join("runs", "first_rerun")
  assert train.default_workdir("vgg") == os.path.join("runs", "vgg")


def test_train_help_lists_experiments_and_where_keys_are(capsys):
  from jaxcnn import train
  with pytest.raises(SystemExit):
    train.parse_args(["--help"])
  out = capsys.readouterr().out
  for name in config_lib.known_experiments():
    assert f"\n  {name} " in out
  assert "VGG-16 with BatchNorm on CIFAR-10: the seed recipe." in out
  assert "jaxcnn/defaults.py" in out and "--print_config" in out
  assert "config.json" in out
  # The registered models, each with its own one line.
  from jaxcnn import models
  for name, spec in models.REGISTRY.items():
    assert f"\n  {name:<8}  {spec.summary}" in out


def workdir_snapshot(workdir) -> dict:
  """Every file of a workdir with its bytes (the lock file aside)."""
  root = os.path.abspath(workdir)
  out = {}
  for dirpath, _, names in os.walk(root):
    for name in names:
      path = os.path.join(dirpath, name)
      if name != ".lock":
        out[os.path.relpath(path, root)] = open(path, "rb").read()
  return out


def test_refused_resume_names_what_changed_before_derived_fields(tmp_path):
  # data.train_limit changes the data, so the channel statistics and
  # train_size (filled in from the data) differ too: the change the user made
  # must come first, the derived fields after, labelled as such.
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(
      tiny_config("train.num_steps=8", "data.train_limit=256"), workdir)
  before = workdir_snapshot(workdir)
  with pytest.raises(trainer.TrainingError) as info:
    trainer.train_and_evaluate(tiny_config("train.num_steps=8"), workdir)
  message = str(info.value)
  assert message.index("data.train_limit: 256 -> 0") < message.index(
      "derived from the data") < message.index("data.channel_mean")
  assert "data.train_size: 256 -> 512" in message
  assert message.endswith(f"--workdir {workdir}_2")
  assert workdir_snapshot(workdir) == before


def test_resume_with_a_shorter_run_is_refused_and_changes_nothing(tmp_path):
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(tiny_config("train.num_steps=16"), workdir)
  before = workdir_snapshot(workdir)
  with pytest.raises(trainer.TrainingError,
                     match=r"is at step 16, past this run's end at step 8 "
                     r"\(train.num_steps=8\).*python -m jaxcnn.eval --workdir "):
    trainer.train_and_evaluate(tiny_config("train.num_steps=8"), workdir)
  assert workdir_snapshot(workdir) == before
  # The same length (a finished run run again) still evaluates it.
  assert trainer.train_and_evaluate(
      tiny_config("train.num_steps=16"), workdir)["step"] == 16


@pytest.mark.parametrize("tta, signum", [
    ("mirror_translate", "SIGINT"), ("none", "SIGTERM")])
def test_signal_during_the_final_evaluation_stops_it(tmp_path, monkeypatch,
                                                     capsys, tta, signum):
  # The signal arrives at the second batch of the last evaluation after
  # training (train.final_tta's, else the final raw/EMA one): the run stops
  # there, with 128 + signal, saying that its final checkpoint is written
  # and how to evaluate it.
  import signal as signal_lib
  from jaxcnn import cli, train
  sig = getattr(signal_lib, signum)
  batches = []

  real_call = eval_step.Evaluator.__call__

  def signalled_call(self, state, *args, tta=None, before_batch=None, **kw):
    def hook(name, done, total):
      if (tta or "none") == wanted_tta and trainer_step[0] == 16:
        batches.append(done)
        if done == 1:
          os.kill(os.getpid(), sig)
      before_batch(name, done, total)
    return real_call(self, state, *args, tta=tta, before_batch=hook, **kw)

  trainer_step = [0]
  real_evaluate = trainer._Loop.evaluate

  def evaluate(self, at_end):
    trainer_step[0] = self.step if at_end else 0
    return real_evaluate(self, at_end)

  wanted_tta = tta
  monkeypatch.setattr(eval_step.Evaluator, "__call__", signalled_call)
  monkeypatch.setattr(trainer._Loop, "evaluate", evaluate)
  workdir = str(tmp_path / "run")
  argv = ["--exp", "test", "--workdir", workdir, "--set", "train.num_steps=16",
          "--set", f"train.final_tta={tta}", "--set", "train.eval_every_epochs=0"]
  with pytest.raises(SystemExit) as exit_info:
    cli.run_main(lambda: train.main(argv))
  err = capsys.readouterr().err
  assert exit_info.value.code == 128 + sig, err
  assert batches == [0, 1], batches  # Stopped at the next batch.
  assert checkpoint.saved_steps(workdir) == [16]
  assert checkpoint_state(workdir)["step"] == 16
  assert (f"stopped: {signum}: training is complete and its final checkpoint "
          f"(step 16) is saved in {workdir}") in err
  assert f"`python -m jaxcnn.eval --workdir {workdir}`" in err
  if tta != "none":
    assert f"--workdir {workdir} --tta {tta}`" in err
  assert not reporting.read_metrics(workdir, "eval_tta")
  assert "final: step" not in err


def test_progress_bar_times_steps_only_and_status_lines_go_above_it(
    tmp_path, monkeypatch, capsys):
  # Evaluations made slow on purpose: the bar's final rate must still be the
  # training steps' (compile and evaluation excluded), each evaluation shows
  # its batches, and status lines start lines of their own instead of being
  # printed onto the bar's.
  import re
  import time as time_lib
  real_run_eval = trainer._Loop.run_eval

  def slow_run_eval(self, *args):
    time_lib.sleep(1.5)
    return real_run_eval(self, *args)

  monkeypatch.setattr(trainer._Loop, "run_eval", slow_run_eval)
  result = trainer.train_and_evaluate(
      tiny_config("train.num_steps=32", "train.progress_bar=true",
                  "train.log_every_steps=8"), str(tmp_path / "run"))
  err = capsys.readouterr().err
  value, unit = re.findall(r"(\d+(?:\.\d+)?)(s/step|step/s)", err)[-1]
  sec_per_step = float(value) if unit == "s/step" else 1 / float(value)
  # Two evaluations (steps 16 and 32) took 3 s; the training far less.
  assert sec_per_step < (result["train_seconds"] + 1.0) / 32, (
      sec_per_step, result["train_seconds"])
  assert "evaluating step 16" in err and "batch" in err
  for status in ("training tiny on synthetic", "compiled and ran",
                 "step 16 (epoch 1.0): test accuracy", "final: step 32"):
    at = err.index(status)
    assert at == 0 or err[at - 1] in "\r\n", repr(err[max(0, at - 60):at + 20])


def test_a_run_builds_its_setup_once(tmp_path, count_calls):
  # A training run, its evaluations and statistics included: the config is
  # checked once, the setup built once, and each group's schedule built once
  # (the test experiment's two groups).
  from jaxcnn import optim, state as state_lib
  count_calls(state_lib, "check_config", "build_from_config")
  calls = count_calls(optim, "make_schedule")
  config = tiny_config("train.num_steps=6", "train.num_devices=1",
                       "train.collect_stats=true",
                       "optim.groups.kernel.frozen_from_epochs=0.2")
  assert len(config.optim.groups) == 2
  trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert calls == {"check_config": 1, "make_schedule": 2,
                   "build_from_config": 1}

def test_groups_that_differ_only_in_their_names_resume():
  # A group's name is a label: a workdir whose groups are today's but for
  # their names (older code's, named by legacy.upgrade after their regexes)
  # resumes; any other difference in a group is still refused.
  saved = tiny_config()
  current = config_lib.apply_overrides(saved, [
      "optim.groups.0.name=decayed_kernels", "optim.groups.1.name=others"])
  assert trainer.incompatible_changes(saved, current) == ([], [])
  changed, _ = trainer.incompatible_changes(saved, config_lib.apply_overrides(
      current, ["optim.groups.others.lr=0.1"]))
  assert changed == ["optim.groups.others.lr: 0.05 -> 0.1"], changed


def test_stop_at_train_error_ends_the_run_at_the_first_log_under_it(tmp_path):
  # The same run without the target is the reference: the stopped run logs
  # exactly its records up to the first log whose training error is at most
  # the target, and ends there (final checkpoint, evaluation, 'target'
  # record); run again it trains nothing, and a study counts it done.
  from jaxcnn import study_runner
  over = ("train.num_devices=1", "train.num_epochs=6", "train.log_every_steps=4",
          "train.eval_every_epochs=0", "train.checkpoint_every_steps=1000",
          "optim.schedule=constant", "model.dropout=0.0")
  full = tmp_path / "full"
  trainer.train_and_evaluate(tiny_config(*over), str(full))
  logged = reporting.read_metrics(full, "train")
  errors = [1 - r["accuracy"] for r in logged]
  # A target the run passes half-way (between the first and last errors).
  target = sorted(errors)[len(errors) // 2] + 1e-6
  stop = next(r["step"] for r, e in zip(logged, errors) if e <= target)
  assert stop < logged[-1]["step"]

  stopped = tmp_path / "stopped"
  config = tiny_config(*over, f"train.stop_at_train_error={target}")
  result = trainer.train_and_evaluate(config, str(stopped))
  assert result["step"] == stop
  key = lambda r: (r["step"], r["loss"], r["accuracy"])
  assert [key(r) for r in reporting.read_metrics(stopped, "train")] == [
      key(r) for r in logged if r["step"] <= stop]
  assert checkpoint.saved_steps(stopped)[-1] == stop
  [record] = reporting.read_metrics(stopped, "target")
  assert record["step"] == stop and record["train_error"] <= target
  assert reporting.read_metrics(stopped, "eval")[-1]["step"] == stop
  total = 6 * 512 // 32
  assert study_runner.member_status(stopped, total) == "done"
  assert study_runner.member_status(full, total) == "done"

  metrics_before = (stopped / "metrics.jsonl").read_text()
  again = trainer.train_and_evaluate(config, str(stopped))
  assert again["step"] == stop
  assert checkpoint.saved_steps(stopped)[-1] == stop
  assert not [r for r in reporting.read_metrics(stopped)
              if r["kind"] == "train" and r["step"] > stop]
  assert (stopped / "metrics.jsonl").read_text().startswith(metrics_before)


def test_seeds_trains_each_seed_once_and_reports_their_mean(tmp_path,
                                                            count_calls,
                                                            capsys):
  # --seeds 2 with --set seed=3: seeds 3 and 4, each a run of its own whose
  # config says its seed; the table's numbers are each run's own final
  # evaluation, and its last row their mean and sample std. Run again,
  # nothing trains and the same table comes back.
  from jaxcnn import train
  root = tmp_path / "seeds"
  argv = ["--exp", "test", "--seeds", "2", "--workdir", str(root),
          "--set", "seed=3", "--set", "train.num_epochs=1",
          "--set", "train.final_tta=mirror", "--set", "train.num_devices=1"]
  calls = count_calls(trainer, "train_and_evaluate")
  assert train.main(argv) == 0
  assert calls["train_and_evaluate"] == 2
  first = capsys.readouterr().out
  saved = json.loads((root / "seeds.json").read_text())
  assert saved["seeds"] == [3, 4]
  for row in saved["rows"]:
    workdir = root / f"seed{row['seed']}"
    assert json.loads((workdir / "config.json").read_text())["seed"] == \
        row["seed"]
    [last] = reporting.read_metrics(workdir, "eval")[-1:]
    [tta] = reporting.read_metrics(workdir, "eval_tta")
    assert row["test_accuracy_ema"] == last["test_accuracy_ema"]
    assert row["tta_accuracy_raw"] == tta["test_accuracy_raw"]
    assert row["train_seconds"] > 0 and not row["resumed"]
  raw = [r["test_accuracy_raw"] for r in saved["rows"]]
  assert saved["summary"]["test_accuracy_raw"]["mean"] == pytest.approx(
      sum(raw) / 2)
  assert saved["summary"]["test_accuracy_raw"]["std"] == pytest.approx(
      abs(raw[0] - raw[1]) / 2 ** 0.5)
  assert "mean ± std (n=2)" in first
  assert train.main(argv) == 0
  assert calls["train_and_evaluate"] == 2
  assert capsys.readouterr().out == first
