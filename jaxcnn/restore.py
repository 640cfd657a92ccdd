"""Finding and restoring a workdir's checkpoints, read-only: what eval and
inspect restore through.

The state is rebuilt from the checkpoint alone: its `config` item (the
resolved config, with the data's channel statistics, training-set size and
image shape) names the model, optimizer and schedule, so no data is read to
restore a state, and an edited or deleted experiment file does not matter.
The state was saved unreplicated, so it restores onto any number of devices.
Reading never writes: the checkpoint manager is opened with `create=False`
and keeps every step. Problems raise CheckpointError with one readable line.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Sequence

import jax
import numpy as np

from jaxcnn import checkpoint
from jaxcnn import state as state_lib
from jaxcnn.checkpoint import CheckpointError, UnreadableCheckpoint
from jaxcnn.config import Config

# What a config saved before data.image_shape and data.train_size existed
# is taken to have had (see _legacy_data_fields).
LEGACY_IMAGE_SHAPE = (32, 32, 3)
LEGACY_TRAIN_SIZE = 50_000


def _steps_text(steps: Sequence[int]) -> str:
  return ", ".join(str(s) for s in steps)


# The --step of eval and inspect that names the best checkpoint.
BEST = "best"


def _inside_checkpoints(path: pathlib.Path
                        ) -> tuple[pathlib.Path, str | None] | None:
  """(workdir, step folder name or None) when `path` is a run's checkpoints
  folder or lies inside it (a step folder, or a folder of a step), else
  None. Tried as written first, so the advice repeats the user's own
  (relative) path, then resolved (for '.' and '..')."""
  for candidate in (path, path.resolve()):
    parts = candidate.parts
    if "checkpoints" not in parts:
      continue
    i = len(parts) - 1 - parts[::-1].index("checkpoints")
    workdir = pathlib.Path(*parts[:i]) if i else pathlib.Path(".")
    step_name = parts[i + 1] if i + 1 < len(parts) else None
    # A workdir that merely lies under a folder named 'checkpoints' has no
    # step folders above it.
    if checkpoint.saved_steps(workdir) or (step_name or "").isdigit():
      return workdir, step_name
  return None


def _not_a_workdir(path: pathlib.Path) -> CheckpointError | None:
  """The error for a checkpoint folder given as the workdir, with the
  --workdir (and --step) to give instead; None when `path` is not one."""
  inside = _inside_checkpoints(path)
  if inside is None:
    return None
  workdir, step_name = inside
  steps = checkpoint.saved_steps(workdir)
  what = "a checkpoint folder" if step_name else "the checkpoints folder"
  use = f"--workdir {workdir}"
  if step_name and step_name.isdigit() and int(step_name) in steps:
    use += f" --step {int(step_name)}"
  elif steps:
    use += f" (saved steps: {_steps_text(steps)})"
  return CheckpointError(f"{path} is {what} of the run in {workdir}, not a "
                         f"workdir: use {use}")


def available_steps(workdir, subdir: str = checkpoint.CHECKPOINTS
                    ) -> list[int]:
  """The complete checkpoint steps of `workdir`; raises CheckpointError when
  there are none (with what was found instead, or the --workdir and --step
  to give when `workdir` is a run's checkpoints folder or one of its
  steps)."""
  path = pathlib.Path(workdir)
  if not path.is_dir():
    raise CheckpointError(f"workdir {workdir} does not exist")
  steps = checkpoint.saved_steps(workdir, subdir)
  if steps:
    return steps
  mistaken = _not_a_workdir(path)
  if mistaken is not None:
    raise mistaken
  directory = checkpoint.checkpoint_dir(workdir, subdir)
  if not directory.is_dir():
    raise CheckpointError(
        f"no checkpoints in {workdir} ({directory} does not exist); train "
        f"first: python -m jaxcnn.train --exp NAME --workdir {workdir}")
  unfinished = sorted(p.name for p in directory.iterdir())
  extra = (f"; unfinished or foreign entries there: {', '.join(unfinished)}"
           if unfinished else "")
  raise CheckpointError(f"no complete checkpoints in {directory}{extra}")


def pick_step(workdir, steps: Sequence[int], step: int | None) -> int:
  if step is None:
    return steps[-1]
  if step not in steps:
    raise CheckpointError(
        f"no checkpoint for step {step} in {workdir}; saved steps: "
        f"{_steps_text(steps)}")
  return step


def key_name(key: Any) -> str:
  """A tree path entry as a plain name (dict key, index or field)."""
  for attr in ("key", "idx", "name"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _leaf_specs(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """'/'-joined path -> (shape, dtype) for every array leaf. Dict keys,
  sequence indices and NamedTuple fields all become plain names, so the
  typed target and orbax's stored tree (dicts and lists) compare."""
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    name = "/".join(key_name(k) for k in path)
    out[name] = (tuple(int(d) for d in leaf.shape), str(np.dtype(leaf.dtype)))
  return out


def _stored_specs(step_dir: pathlib.Path, workdir, step: int) -> dict:
  import orbax.checkpoint as ocp
  try:
    metadata = ocp.StandardCheckpointHandler().metadata(step_dir / "state")
    return _leaf_specs(metadata)
  except Exception as e:  # orbax raises many kinds; report one line.
    raise UnreadableCheckpoint(
        f"checkpoint step {step} in {workdir} is truncated or corrupted: "
        f"{checkpoint.damage_report(e, step_dir, workdir)}") from e


def _mismatch(stored: dict, built: dict) -> list[str]:
  """What differs between the checkpoint's arrays and the model's."""
  def listed(names: list[str]) -> str:
    more = f" and {len(names) - 4} more" if len(names) > 4 else ""
    return ", ".join(names[:4]) + more

  def order(names) -> list[str]:  # The model's own parameters first.
    return sorted(names, key=lambda k: (not k.startswith("params/"), k))

  out = []
  missing = order(set(built) - set(stored))
  extra = order(set(stored) - set(built))
  differ = order(k for k in set(built) & set(stored) if built[k] != stored[k])
  if missing:
    out.append(f"not in the checkpoint: {listed(missing)}")
  if extra:
    out.append(f"not in the model: {listed(extra)}")
  if differ:
    out.append("different shapes: " + listed(
        [f"{k} {stored[k][0]} {stored[k][1]} saved vs {built[k][0]} "
         f"{built[k][1]} built" for k in differ]))
  return out


def _legacy_data_fields(config: Config) -> Config:
  """A config saved before data.train_size and data.image_shape were: those
  fields as the run most likely had them (CIFAR-sized images; the training
  set of its limit or synthetic size, else 50,000). Only the schedule's
  step counts depend on the size, never a shape of the state."""
  config = config.copy()
  if not config.data.get("image_shape"):
    config.data.image_shape = LEGACY_IMAGE_SHAPE
  if not config.data.get("train_size"):
    if config.data.get("train_limit", 0) > 0:
      n = int(config.data.train_limit)
    elif config.data.get("source") == "synthetic":
      n = int(config.data.get("synthetic_train_size", LEGACY_TRAIN_SIZE))
    else:
      n = LEGACY_TRAIN_SIZE
    config.data.train_size = max(n, int(config.train.batch_size)
                                 * int(config.train.steps_per_dispatch))
  return config


def build_target(config: Config) -> dict:
  """The abstract unreplicated state that training created for `config`,
  from the config alone (state.build_from_config)."""
  single = _legacy_data_fields(config)
  # The target is unreplicated, so the device count the run trained on (which
  # this machine may not have) plays no part.
  single.train.num_devices = 1
  setup = state_lib.build_from_config(single)
  return jax.eval_shape(lambda: state_lib.create_train_state(setup).to_dict())


def _incompatible(workdir, step: int, config: Config, why: str) -> CheckpointError:
  model = config.get("model", {})
  name = model.get("name", "?") if hasattr(model, "get") else "?"
  return CheckpointError(
      f"checkpoint step {step} in {workdir} was written by an incompatible "
      f"model or config (model.name={name!r}): {why}")


def _restore_target(workdir, step: int, config: Config, stored: dict) -> dict:
  """The restore target, checked against the stored arrays."""
  try:
    target = build_target(config)
  except Exception as e:  # Any failure to build is a config this code rejects.
    raise _incompatible(workdir, step, config,
                        f"it does not build: {type(e).__name__}: {e}") from e
  built = _leaf_specs(target)
  if ({k for k in stored if k.startswith("opt_state/")}
      != {k for k in built if k.startswith("opt_state/")}):
    # An older chain's optimizer state: converted by parameter on restore
    # (legacy.convert_state); the rest must match.
    stored = {k: v for k, v in stored.items() if not k.startswith("opt_state/")}
    built = {k: v for k, v in built.items() if not k.startswith("opt_state/")}
  problems = _mismatch(stored, built)
  if problems:
    raise _incompatible(workdir, step, config, "; ".join(problems))
  return target


class CheckpointReader:
  """Restores the checkpoints of one workdir, read-only.

  Builds the restore target once and reuses it for every step whose config
  agrees (all steps of a run do: resuming refuses incompatible changes).
  """

  def __init__(self, workdir, subdir: str = checkpoint.CHECKPOINTS):
    self.workdir = str(workdir)
    self.subdir = subdir
    self.steps = available_steps(workdir, subdir)
    self._target: dict | None = None
    self._target_key: str | None = None
    self._manager = None

  def _open(self):
    if self._manager is None:
      self._manager = checkpoint.open_for_reading(self.workdir, self.subdir)
    return self._manager

  def step_dir(self, step: int) -> pathlib.Path:
    return checkpoint.checkpoint_dir(self.workdir, self.subdir) / str(step)

  def config(self, step: int | None = None) -> tuple[Config, int]:
    step = pick_step(self.workdir, self.steps, step)
    try:
      return checkpoint.restore_config(self._open(), step), step
    except UnreadableCheckpoint as e:
      raise self._with_readable_step(e, step) from e.__cause__

  def _readable(self, step: int) -> bool:
    try:
      self._restore(step)
      return True
    except CheckpointError:
      return False

  def _with_readable_step(self, error: CheckpointError, bad: int
                          ) -> CheckpointError:
    """`error` (step `bad` cannot be read) with the newest step that can be:
    the --step to give instead. Probing reads each older step in full, as
    evaluating it would."""
    older = [s for s in reversed(self.steps) if s != bad]
    good = next((s for s in older if self._readable(s)), None)
    if good is None:
      hint = ("no other checkpoint here can be read" if older
              else "it is the only checkpoint here")
    else:
      hint = (f"the newest readable checkpoint is step {good}: use "
              f"--workdir {self.workdir} --step {good}")
    return type(error)(f"{error}; {hint}")

  def _target_for(self, config: Config, step: int) -> dict:
    step_dir = self.step_dir(step)
    stored = _stored_specs(step_dir, self.workdir, step)
    # What the target depends on; train.* may change between the steps of a
    # resumed run without changing any shape.
    key = json.dumps([config.model.to_dict(), config.optim.to_dict(),
                      sorted(stored.items())], sort_keys=True)
    if self._target is None or key != self._target_key:
      self._target = _restore_target(self.workdir, step, config, stored)
      self._target_key = key
    return self._target

  def restore(self, step: int | None = None
              ) -> tuple[Config, state_lib.TrainState, int]:
    """(config, unreplicated state, step) of `step` (None: the newest). An
    unreadable step's error names the newest readable one."""
    step = pick_step(self.workdir, self.steps, step)
    try:
      return self._restore(step)
    except UnreadableCheckpoint as e:
      raise self._with_readable_step(e, step) from e.__cause__

  def _restore(self, step: int) -> tuple[Config, state_lib.TrainState, int]:
    # Read-only: an unreadable step is an error, never moved aside.
    restored = checkpoint.restore_latest_good(
        self.workdir, lambda config: self._target_for(config, step), step=step,
        manager=self._open())
    state = state_lib.TrainState.from_dict(restored.state)
    restored_step = int(state.step)
    if restored_step != step:
      step_dir = self.step_dir(step)
      raise CheckpointError(
          f"checkpoint directory {checkpoint.relative_to_workdir(step_dir, self.workdir)} holds "
          f"the state of step {restored_step}, not {step}")
    return restored.config, state, step

  def close(self) -> None:
    if self._manager is not None:
      self._manager.close()
      self._manager = None

  def __enter__(self) -> "CheckpointReader":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def open_reader(workdir, step: int | str | None
                ) -> tuple[CheckpointReader, int | None]:
  """A reader for `step` and the step to ask it for: a number or None (the
  latest) read WORKDIR/checkpoints; 'best' reads WORKDIR/best, the
  checkpoint of the best validation accuracy (checkpoint.BEST_METRIC), or,
  for a run without a validation split, the latest checkpoint."""
  if step != BEST:
    return CheckpointReader(workdir), step
  best = checkpoint.best_step(workdir) if pathlib.Path(
      workdir).is_dir() else None
  if best is not None:
    return CheckpointReader(workdir, checkpoint.BEST), best
  reader = CheckpointReader(workdir)
  try:
    config, latest = reader.config(None)
  except BaseException:
    reader.close()
    raise
  if config.data.get("validation_size", 0):
    reader.close()
    raise CheckpointError(
        f"no best checkpoint in {checkpoint.checkpoint_dir(workdir, BEST)} "
        f"yet (the run has data.validation_size="
        f"{config.data.validation_size}, and the best is saved at its "
        f"evaluations); use --step N or the latest (step {latest})")
  return reader, latest


def load_checkpoint(workdir, step: int | str | None = None
                    ) -> tuple[Config, state_lib.TrainState, int]:
  """(config, unreplicated TrainState, step) of `step` (None: the latest;
  'best': see open_reader), rebuilt from the checkpoint's config alone: no
  data is read."""
  reader, step = open_reader(workdir, step)
  with reader:
    return reader.restore(step)
