"""The best checkpoint (WORKDIR/best): chosen on the validation split, kept
beside the last train.keep_checkpoints through their rotation and across a
resume, and never what a run resumes from.

The validation accuracies are scripted (the real evaluation runs, then its
raw accuracy is replaced), so that the best is known to be an early step,
one that rotation removes from WORKDIR/checkpoints."""
import jax
import numpy as np

from jaxcnn import checkpoint, config as config_lib, reporting, restore
from jaxcnn import trainer

VALIDATION = 100  # Held out of the test experiment's 512: 6 steps an epoch.
RUN = ["optim.groups.*.optimizer=adam", "optim.groups.*.lr=0.01",
       f"data.validation_size={VALIDATION}", "train.eval_every_epochs=1",
       "train.checkpoint_every_steps=8", "train.keep_checkpoints=1",
       "train.batch_size=64",
       "train.num_devices=4"]
REAL_EVALUATE = trainer.Evaluator.__call__


def script_validation(monkeypatch, accuracies):
  """Makes the trainer's validation evaluations report `accuracies` (raw
  weights), in order; the test split's numbers are left as they are."""
  left = list(accuracies)

  def scripted(evaluator, *args, **kwargs):
    results = REAL_EVALUATE(evaluator, *args, **kwargs)
    if evaluator.count == VALIDATION:
      results["raw"]["accuracy"] = left.pop(0)
    return results

  monkeypatch.setattr(trainer.Evaluator, "__call__", scripted)
  return left


def train(workdir, steps):
  config = config_lib.apply_overrides(config_lib.load_experiment("test"),
                                      RUN + [f"train.num_steps={steps}"])
  return trainer.train_and_evaluate(config, workdir)


def test_best_checkpoint_survives_rotation_and_resume(tmp_path, monkeypatch):
  assert len(jax.local_devices()) == 4
  workdir = str(tmp_path / "run")
  # Evaluations at steps 6, 12, 18, 24: the best is step 12's.
  left = script_validation(monkeypatch, [0.3, 0.6, 0.5, 0.4])
  train(workdir, 24)
  assert not left
  assert checkpoint.saved_steps(workdir) == [24]  # keep_checkpoints=1
  assert checkpoint.saved_steps(workdir, checkpoint.BEST) == [12]
  assert checkpoint.best_values(workdir) == {12: 0.6}
  config, state, step = restore.load_checkpoint(workdir, "best")
  assert step == 12 and int(state.step) == 12
  # The best is the state of step 12: not that of the latest checkpoint.
  latest = restore.load_checkpoint(workdir)[1]
  assert not np.allclose(jax.tree.leaves(state.params)[0],
                         jax.tree.leaves(latest.params)[0])

  # Resumed, the run continues from the latest (24), and the best so far is
  # read back: step 30's 0.55 beats step 24's 0.4 but not step 12's 0.6.
  left = script_validation(monkeypatch, [0.55])
  train(workdir, 30)
  assert not left
  evals = [r["step"] for r in reporting.read_metrics(workdir)
           if r["kind"] == "eval"]
  assert evals == [6, 12, 18, 24, 30]  # Nothing before 24 trained again.
  assert checkpoint.saved_steps(workdir) == [30]
  assert checkpoint.saved_steps(workdir, checkpoint.BEST) == [12]

  # A better evaluation replaces the best, once the new one is written.
  left = script_validation(monkeypatch, [0.7])
  train(workdir, 36)
  assert checkpoint.saved_steps(workdir, checkpoint.BEST) == [36]
  assert checkpoint.best_values(workdir) == {36: 0.7}
  assert restore.load_checkpoint(workdir, "best")[2] == 36


def test_no_validation_split_writes_no_best(tmp_path):
  workdir = str(tmp_path / "run")
  config = config_lib.apply_overrides(
      config_lib.load_experiment("test"),
      ["train.num_steps=16", "train.num_devices=4"])
  trainer.train_and_evaluate(config, workdir)
  assert checkpoint.saved_steps(workdir, checkpoint.BEST) == []
  assert not (tmp_path / "run" / "best").exists()
  assert restore.load_checkpoint(workdir, "best")[2] == 16
