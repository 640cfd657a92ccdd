"""Fault injection: SIGKILL at random points, SIGTERM, corrupt checkpoints,
two trainers on one workdir, non-finite loss, a full disk."""
import asyncio
import gc
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxcnn import checkpoint, config as config_lib, restore, trainer
from jaxcnn.workdir_lock import WorkdirBusy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Long enough to kill mid-run, short enough for CI.
RUN = ["train.num_steps=160", "train.checkpoint_every_steps=8",
       "train.eval_every_epochs=0", "train.log_every_steps=8",
       "optim.schedule=exponential"]


def tiny_config(*overrides):
  return config_lib.apply_overrides(config_lib.load_experiment("test"),
                                    list(overrides))


def start_cli(workdir, *overrides):
  args = [sys.executable, "-m", "jaxcnn.train", "--exp", "test",
          "--workdir", str(workdir)]
  for o in overrides:
    args += ["--set", o]
  return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(workdir, proc, timeout=120, after=-1):
  """Waits until a checkpoint newer than step `after` exists."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    steps = checkpoint.saved_steps(workdir)
    if steps and steps[-1] > after:
      return
    if proc.poll() is not None:
      raise AssertionError(f"trainer exited early: {proc.stderr.read()}")
    time.sleep(0.05)
  raise AssertionError("no checkpoint appeared")


def state_leaves(workdir):
  """(step, leaves) of the latest checkpoint, read without moving anything."""
  restored = checkpoint.restore_latest_good(
      workdir,
      restore.build_target)
  return restored.step, [np.asarray(x) for x in jax.tree.leaves(restored.state)]


def test_sigkill_at_random_points_then_resume_is_exact(tmp_path):
  # The reference saves only at its end: where a run checkpoints must not
  # change what it computes.
  trainer.train_and_evaluate(
      tiny_config(*RUN, "train.checkpoint_every_steps=1000"),
      str(tmp_path / "full"))
  _, reference = state_leaves(tmp_path / "full")
  rng = random.Random(1234)
  workdir = tmp_path / "killed"
  killed_at = []
  # Kill the same run three times at random moments; each restart resumes
  # from whatever the last kill left (a stale lock, maybe a half-written
  # checkpoint) and must carry on as if nothing happened.
  for _ in range(3):
    seen = checkpoint.saved_steps(workdir)
    proc = start_cli(workdir, *RUN)
    wait_for_checkpoint(workdir, proc, after=seen[-1] if seen else -1)
    time.sleep(rng.uniform(0.0, 0.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at.append(checkpoint.saved_steps(workdir)[-1])
  trainer.train_and_evaluate(tiny_config(*RUN), str(workdir))
  step, resumed = state_leaves(workdir)
  assert step == 160, killed_at
  assert killed_at[-1] < 160, killed_at  # Really killed before the end.
  for a, b in zip(reference, resumed):
    np.testing.assert_array_equal(a, b)


def test_second_trainer_refused_and_sigterm_checkpoints(tmp_path):
  workdir = tmp_path / "run"
  proc = start_cli(workdir, "train.num_steps=100000",
                   "train.checkpoint_every_steps=50", "train.log_every_steps=50",
                   "train.eval_every_epochs=0")
  try:
    wait_for_checkpoint(workdir, proc)
    with pytest.raises(WorkdirBusy, match=f"in use by pid {proc.pid}"):
      trainer.train_and_evaluate(tiny_config("train.num_steps=8"), str(workdir))
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert time.time() - t0 < 30
  assert proc.returncode == 128 + signal.SIGTERM, err
  last = checkpoint.saved_steps(workdir)[-1]
  # The checkpoint is written at the step where the signal arrived.
  assert f"SIGTERM: stopped at step {last} after writing a checkpoint" in err


def test_corrupt_latest_checkpoint_falls_back_and_keeps_good_ones(tmp_path):
  workdir = str(tmp_path / "run")
  run = ["train.num_steps=32", "train.checkpoint_every_steps=16",
         "train.eval_every_epochs=0", "optim.schedule=exponential"]
  trainer.train_and_evaluate(tiny_config(*run), workdir)
  assert checkpoint.saved_steps(workdir) == [16, 32]
  data_files = sorted((checkpoint.checkpoint_dir(workdir) / "32" / "state")
                      .rglob("d/*"), key=lambda p: p.stat().st_size)
  with open(data_files[-1], "r+b") as f:  # Truncate the largest data file.
    f.truncate(10)
  result = trainer.train_and_evaluate(tiny_config(*run), workdir)
  assert result["step"] == 32
  assert checkpoint.saved_steps(workdir) == [16, 32]
  names = os.listdir(checkpoint.checkpoint_dir(workdir))
  assert any(n.startswith("unreadable_32_") for n in names)
  # Retraining 16 -> 32 from the good checkpoint reproduces the lost one.
  trainer.train_and_evaluate(tiny_config(*run), str(tmp_path / "clean"))
  for a, b in zip(state_leaves(workdir)[1], state_leaves(tmp_path / "clean")[1]):
    np.testing.assert_array_equal(a, b)


def test_all_checkpoints_corrupt_is_an_error_that_deletes_nothing(tmp_path):
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(
      tiny_config("train.num_steps=16", "train.eval_every_epochs=0"), workdir)
  for p in (checkpoint.checkpoint_dir(workdir) / "16" / "state").rglob("d/*"):
    p.write_bytes(b"garbage")
  before = sorted(str(p) for p in checkpoint.checkpoint_dir(workdir).rglob("*"))
  with pytest.raises(checkpoint.CheckpointError, match="no checkpoint .* can be read"):
    trainer.train_and_evaluate(tiny_config("train.num_steps=24"), workdir)
  after = sorted(str(p) for p in checkpoint.checkpoint_dir(workdir).rglob("*"))
  assert before == after


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path / "run")
  cfg = tiny_config("optim.groups.*.lr=1e30", "optim.schedule=constant",
                    "optim.warmup_epochs=0", "train.checkpoint_every_steps=1",
                    "train.num_steps=8")
  with pytest.raises(trainer.TrainingError,
                     match=r"non-finite loss or gradient at step \d"):
    trainer.train_and_evaluate(cfg, workdir)
  steps = checkpoint.saved_steps(workdir)
  assert steps and steps[-1] < 8
  _, leaves = state_leaves(workdir)
  assert all(np.all(np.isfinite(x)) for x in leaves
             if np.issubdtype(x.dtype, np.floating))


def test_full_disk_while_saving_keeps_previous_checkpoint(tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  real_save = ocp.CheckpointManager.save
  calls = []

  def failing_save(self, step, *args, **kwargs):
    calls.append(step)
    if len(calls) >= 2:
      raise OSError(28, "No space left on device")
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", failing_save)
  with pytest.raises(checkpoint.CheckpointError,
                     match="No space left on device.*earlier checkpoints are intact"):
    trainer.train_and_evaluate(
        tiny_config("train.num_steps=32", "train.checkpoint_every_steps=8",
                    "train.eval_every_epochs=0"), workdir)
  monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
  assert checkpoint.saved_steps(workdir) == [8]
  step, leaves = state_leaves(workdir)
  assert step == 8


def test_unretrieved_read_task_errors_are_dropped_and_others_kept(caplog):
  # A failed restore's background read tasks, collected before anyone awaited
  # them, make asyncio log "Task exception was never retrieved" with the
  # tensorstore error: dropped once a checkpoint manager was made. Another
  # task's unretrieved error still reaches the log.
  checkpoint.QuietOrbaxLeftovers.install()

  async def fails(message):
    raise ValueError(message)

  def unretrieved(message):
    loop = asyncio.new_event_loop()
    task = loop.create_task(fails(message))
    loop.run_until_complete(asyncio.sleep(0))
    assert task.done()
    loop.close()
    del task
    gc.collect()

  with caplog.at_level("ERROR", logger="asyncio"):
    unretrieved('OUT_OF_RANGE: Error reading "step/.zarray" '
                '[tensorstore_spec=\'{"driver":"zarr"}\']')
    assert not caplog.records
    unretrieved("some other failure")
  assert len(caplog.records) == 1
  assert "never retrieved" in caplog.records[0].getMessage()
  assert "some other failure" in str(caplog.records[0].exc_info[1])
