"""Checkpoints in WORKDIR/checkpoints, written with orbax.

Each step directory holds two items: `state` (the UNREPLICATED train state, so
a checkpoint written by N devices restores onto any device count) and `config`
(the resolved config as JSON, so evaluation needs nothing but the workdir).
`restore_latest_good` is how the trainer resumes and how eval, inspect and
the tests read a workdir.

WORKDIR/best holds one more checkpoint of the same form, with a third item
`best` ({metric, value}): the state whose evaluation had the best
validation accuracy so far (BEST_METRIC). Rotation (train.keep_checkpoints)
never touches it and resuming never reads it: a run resumes from its latest
checkpoint. Without a validation split nothing is written there and "the
best" is the latest checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import re
import sys
import threading
import time
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from jaxcnn.config import Config
from jaxcnn import legacy
from jaxcnn.defaults import with_defaults


class CheckpointError(RuntimeError):
  """A missing, incompatible or unreadable checkpoint."""


class UnreadableCheckpoint(CheckpointError):
  """A step whose files are truncated, missing or corrupted (not one that
  reads but does not fit the model): another step may still be readable."""


# The subdirectories of a workdir that hold checkpoints: the last
# train.keep_checkpoints, and the best one.
CHECKPOINTS = "checkpoints"
BEST = "best"
# What the best checkpoint is the best by: the raw weights' accuracy on the
# validation split (the studies' tables also compare raw accuracies).
BEST_METRIC = "validation_accuracy_raw"


def checkpoint_dir(workdir: str | os.PathLike,
                   subdir: str = CHECKPOINTS) -> pathlib.Path:
  return pathlib.Path(workdir).resolve() / subdir


def make_manager(workdir, *, keep: int | None = 3, create: bool = True,
                 async_save: bool = True,
                 subdir: str = CHECKPOINTS) -> ocp.CheckpointManager:
  """A manager for WORKDIR/checkpoints (or WORKDIR/`subdir`);
  `create=False` never creates it."""
  QuietOrbaxLeftovers.install()
  directory = checkpoint_dir(workdir, subdir)
  if not create and not directory.is_dir():
    raise CheckpointError(f"no checkpoints in {workdir} ({directory} does not "
                          "exist)")
  # The last `keep` steps (None: every step) through a preservation policy;
  # orbax documents max_to_keep as deprecated in its favour.
  policy = None if keep is None else ocp.checkpoint_managers.LatestN(n=keep)
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policy, create=create,
      enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(directory, options=options)


def open_for_reading(workdir, subdir: str = CHECKPOINTS
                     ) -> ocp.CheckpointManager:
  """A manager that reads WORKDIR/checkpoints (or `subdir`) and never
  changes it: it does not create the directory, and keep=None leaves every
  step alone."""
  return make_manager(workdir, keep=None, create=False, async_save=False,
                      subdir=subdir)


def saved_steps(workdir, subdir: str = CHECKPOINTS) -> list[int]:
  """Steps of the complete checkpoints in WORKDIR (orbax skips unfinished)."""
  directory = checkpoint_dir(workdir, subdir)
  if not directory.is_dir():
    return []
  return sorted(ocp.utils.checkpoint_steps(directory))


def save(manager: ocp.CheckpointManager, step: int, state: dict,
         config: Config, *, force: bool = True) -> bool:
  """Starts an (asynchronous) save. Orbax writes into a temporary directory
  and renames it when complete, so a failed or killed save never replaces a
  good checkpoint."""
  try:
    return manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                config=ocp.args.JsonSave(config.to_dict())),
        force=force)
  except Exception as e:
    raise CheckpointError(
        f"could not write checkpoint step {step} in {manager.directory}: "
        f"{type(e).__name__}: {_first_line(e)}; earlier checkpoints are "
        "intact") from e


def wait(manager: ocp.CheckpointManager) -> None:
  """Waits for asynchronous saves; a failure in one becomes CheckpointError."""
  try:
    manager.wait_until_finished()
  except Exception as e:
    raise CheckpointError(
        f"a checkpoint write in {manager.directory} failed: "
        f"{type(e).__name__}: {_first_line(e)}; earlier checkpoints are "
        "intact") from e


# --- The best checkpoint ------------------------------------------------------


def make_best_manager(workdir) -> ocp.CheckpointManager:
  """The writer of WORKDIR/best: synchronous, and it deletes nothing itself
  (save_best removes a superseded best only once the new one is complete)."""
  return make_manager(workdir, keep=None, async_save=False, subdir=BEST)


def best_values(workdir) -> dict[int, float]:
  """{step: BEST_METRIC value} of the complete checkpoints in WORKDIR/best;
  a step whose record cannot be read is left out."""
  steps = saved_steps(workdir, BEST)
  if not steps:
    return {}
  out = {}
  manager = open_for_reading(workdir, BEST)
  try:
    for step in steps:
      try:
        record = manager.restore(
            step, args=ocp.args.Composite(best=ocp.args.JsonRestore())).best
        out[step] = float(record["value"])
      except Exception:  # noqa: BLE001  Unreadable: not a candidate.
        continue
  finally:
    manager.close()
  return out


def best_step(workdir) -> int | None:
  """The step of WORKDIR/best's checkpoint (the highest value if a crash
  left two); None when there is none."""
  values = best_values(workdir)
  if not values:
    return None
  return max(values, key=lambda step: (values[step], step))


def save_best(manager: ocp.CheckpointManager, step: int, state: dict,
              config: Config, value: float) -> bool:
  """Writes `state` as the best checkpoint (BEST_METRIC = `value`), then
  removes the best it supersedes: only after the new one is complete, so a
  failed or killed save leaves the previous best in place. A step already
  there (a resumed run evaluating a step again) is kept as it is."""
  existing = set(ocp.utils.checkpoint_steps(manager.directory))
  if step in existing:
    return False
  try:
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            config=ocp.args.JsonSave(config.to_dict()),
            best=ocp.args.JsonSave({"metric": BEST_METRIC,
                                    "value": float(value)})),
        force=True)
    manager.wait_until_finished()
  except Exception as e:
    raise CheckpointError(
        f"could not write the best checkpoint (step {step}) in "
        f"{manager.directory}: {type(e).__name__}: {_first_line(e)}; the "
        "previous best is intact") from e
  for old in sorted(existing):
    manager.delete(old)
  return True


def move_aside(workdir, step: int) -> pathlib.Path:
  """Renames an unreadable step directory out of the way (never deletes it)."""
  src = checkpoint_dir(workdir) / str(step)
  dst = src.with_name(f"unreadable_{step}_{time.strftime('%Y%m%d-%H%M%S')}")
  src.rename(dst)
  return dst


def step_files(workdir, step: int) -> list[str]:
  """The files of one step directory, relative to it (for error messages)."""
  root = checkpoint_dir(workdir) / str(step)
  return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _abstract(tree: Any) -> Any:
  device = jax.local_devices()[0]
  sharding = jax.sharding.SingleDeviceSharding(device)
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def restore_config(manager: ocp.CheckpointManager, step: int) -> Config:
  """The config saved with `step`, translated from an older schema
  (legacy.upgrade); a field added to jaxcnn since takes its default."""
  step_dir, workdir = _step_dir(manager, step)
  check_step_files(step_dir, workdir, step)
  try:
    restored = manager.restore(
        step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  except Exception as e:  # orbax raises many kinds; report one line.
    raise UnreadableCheckpoint(
        f"cannot read the config of checkpoint step {step} in "
        f"{manager.directory}: {type(e).__name__}: {_first_line(e)}") from e
  return with_defaults(Config.from_dict(restored.config))


def _step_dir(manager: ocp.CheckpointManager, step: int):
  directory = pathlib.Path(manager.directory)
  return directory / str(step), directory.parent


def stored_opt_names(manager: ocp.CheckpointManager, step: int) -> set[str]:
  """The '/'-joined names of the optimizer-state arrays stored at `step`
  (from the checkpoint's metadata)."""
  step_dir, _ = _step_dir(manager, step)
  metadata = ocp.StandardCheckpointHandler().metadata(
      pathlib.Path(step_dir).resolve() / "state")
  return legacy.opt_state_names(metadata)


def restore_state(manager: ocp.CheckpointManager, step: int,
                  like_state: dict) -> dict:
  """Restores `state` of `step` into the structure, shapes and dtypes of
  `like_state` (concrete arrays or ShapeDtypeStructs). A failure names the
  damaged files."""
  try:
    if stored_opt_names(manager, step) != legacy.opt_state_names(like_state):
      # Written by an older chain (before parameter groups): restored
      # untyped, its optimizer state carried over by parameter.
      raw = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(),
          config=ocp.args.JsonRestore()))
      return legacy.convert_state(raw.state, like_state, raw.config)
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(like_state))))
  except Exception as e:
    step_dir, workdir = _step_dir(manager, step)
    raise UnreadableCheckpoint(
        f"checkpoint step {step} in {workdir} is truncated or corrupted: "
        f"{damage_report(e, step_dir, workdir)}") from e
  return restored.state


@dataclasses.dataclass
class Restored:
  step: int
  config: Config  # As saved, with the defaults of fields added since.
  state: dict  # Unreplicated, in the structure of the restore target.


def restore_latest_good(
    workdir, target: dict | Callable[[Config], dict], *,
    step: int | None = None, skip_unreadable: bool = False,
    manager: ocp.CheckpointManager | None = None,
    say: Callable[[str], None] = lambda text: None) -> Restored | None:
  """Restores the newest checkpoint of WORKDIR that can be read (or `step`).

  `target` is the state's structure, shapes and dtypes, or a function of the
  saved config that builds it; anything it raises but CheckpointError (a
  refused config, say) propagates. `manager`: an open one to read through
  (else a read-only one is opened and closed here).

  Resume order: (1) the newest complete step in WORKDIR/checkpoints (orbax
  skips unfinished saves) whose config and state both restore. With
  `skip_unreadable` (training), newer steps that do not are then moved aside,
  renamed unreadable_<step>_<time>, never deleted, so that new checkpoints
  can take their step numbers, each with a warning through `say`; if no step
  restores, nothing is moved and that is an error. Without it (eval, inspect,
  tests: reading changes nothing), an unreadable newest step is the error.
  (2) None: no checkpoint at all; the caller starts from config.seed.
  """
  steps = saved_steps(workdir) if step is None else [step]
  if not steps:
    return None
  own_manager = manager is None
  if own_manager:
    manager = open_for_reading(workdir)
  unreadable, restored = [], None
  try:
    for candidate in reversed(steps):
      try:
        config = restore_config(manager, candidate)
        like = target(config) if callable(target) else target
        restored = Restored(candidate, config,
                            restore_state(manager, candidate, like))
        break
      except CheckpointError as e:
        if not skip_unreadable:
          raise
        unreadable.append((candidate, str(e)))
  finally:
    if own_manager:
      manager.close()
  if restored is None:
    raise CheckpointError(
        f"no checkpoint in {checkpoint_dir(workdir)} can be read (steps "
        f"{', '.join(str(s) for s, _ in unreadable)}; newest: "
        f"{unreadable[0][1]}); nothing was changed: use another --workdir to "
        "start afresh")
  if jax.process_index() == 0:  # Processes of one run share the workdir.
    for bad_step, why in unreadable:
      say(f"warning: {why}; moved it to {move_aside(workdir, bad_step)}")
  return restored


# --- Naming the damage in an unreadable checkpoint ---------------------------


def relative_to_workdir(path: pathlib.Path, workdir) -> str:
  try:
    return str(pathlib.Path(path).relative_to(pathlib.Path(workdir).resolve()))
  except ValueError:
    return str(path)


def check_step_files(step_dir: pathlib.Path, workdir, step: int) -> None:
  """Names missing or unparsable metadata files before orbax trips on them
  with a message that names none."""
  problems = []
  state_dir = step_dir / "state"
  required = ["state/_METADATA", "config/metadata"]
  if (state_dir / "d").is_dir() or any(state_dir.glob("ocdbt.process_*")):
    required.append("state/manifest.ocdbt")  # The OCDBT database's root.
  for rel in required:
    if not (step_dir / rel).is_file():
      problems.append(f"{relative_to_workdir(step_dir / rel, workdir)} is missing")
  json_files = [step_dir / "state/_METADATA", step_dir / "config/metadata"]
  json_files += sorted((state_dir / "array_metadatas").glob("*"))
  for path in json_files:
    if not path.is_file():
      continue
    try:
      json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
      size = path.stat().st_size
      why = "is empty" if size == 0 else f"is not valid JSON ({e})"
      problems.append(f"{relative_to_workdir(path, workdir)} {why}")
  if problems:
    raise UnreadableCheckpoint(
        f"checkpoint step {step} in {workdir} is truncated or corrupted: "
        + "; ".join(problems))


# How TensorStore ('local file "PATH"') and orbax ('File PATH not found')
# name the file they failed on, and how TensorStore names the array.
_FILE_IN_MESSAGE = re.compile(r'local file "([^"]+)"|File (\S+) not found')
_ARRAY_IN_MESSAGE = re.compile(r'Error reading "([^"/]+)/')
_VALUE_SIZE = re.compile(r"value of size (\d+)")
_STATUS = re.compile(r"\b(DATA_LOSS|OUT_OF_RANGE|NOT_FOUND|INVALID_ARGUMENT|"
                     r"FAILED_PRECONDITION|UNKNOWN|INTERNAL):")


def _chain(error: BaseException) -> list[BaseException]:
  out, seen = [], set()
  e: BaseException | None = error
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    out.append(e)
    e = e.__cause__ or e.__context__
  return out


def damage_report(error: BaseException, step_dir: pathlib.Path,
                  workdir) -> str:
  """'FILES (array NAME): REASON' from an orbax/TensorStore error chain,
  whose messages run to pages of TensorStore specs.

  Files are those the messages name; else, when TensorStore says a value is
  shorter than the bytes it needs ('value of size N'), the state's files of
  exactly N bytes; else every file of the state item.
  """
  texts = [str(e) for e in _chain(error)]
  state_dir = step_dir / "state"
  files: list[pathlib.Path] = []
  arrays: list[str] = []
  for text in texts:
    for match in _FILE_IN_MESSAGE.finditer(text):
      found = match.group(1) or match.group(2)
      path = pathlib.Path(found)
      if found.endswith("/") or path.is_dir() or path in files:
        continue  # The database directory itself says nothing.
      if path.resolve().is_relative_to(step_dir.resolve()):
        files.append(path)
    for name in _ARRAY_IN_MESSAGE.findall(text):
      if name not in arrays:
        arrays.append(name)
  all_files = sorted(p for p in state_dir.rglob("*") if p.is_file())
  if not files:
    sizes = {int(n) for t in texts for n in _VALUE_SIZE.findall(t)}
    files = [p for p in all_files if p.stat().st_size in sizes]
  if not files:
    files = all_files
  shown = [relative_to_workdir(p, workdir) for p in files[:6]]
  if len(files) > 6:
    shown.append(f"and {len(files) - 6} more")
  where = ", ".join(shown)
  if arrays:
    where += f" (array {', '.join(arrays[:3])})"
  # The most specific reason is the deepest message with a status code.
  reason = ""
  for text in reversed(texts):
    match = _STATUS.search(text)
    if match:
      reason = text[match.start():].strip().splitlines()[0]
      reason = re.sub(r"Error opening \"\w+\" driver: ", "", reason)
      reason = re.sub(r" \[tensorstore_spec.*$", "", reason)
      reason = re.sub(r' in OCDBT database at local file "[^"]*"', "", reason)
      reason = reason.replace(
          str(pathlib.Path(workdir).resolve()) + "/", "")
      break
  if not reason:
    last = texts[-1].strip()
    reason = (last.splitlines()[0] if last else type(error).__name__)
  return f"{where}: {reason[:240]}"


class QuietOrbaxLeftovers:
  """After a failed restore, orbax's background reads finish on a closed
  event loop and print dozens of tracebacks, through the unraisable hook, the
  excepthook (PyErr_Print from a callback), a thread's excepthook or, when a
  read task is collected before anyone awaited it, asyncio's "Task exception
  was never retrieved" log record. These hooks drop exactly those and pass
  everything else on."""
  installed = False

  @staticmethod
  def _is_leftover(exc: BaseException | None, obj: Any = None) -> bool:
    text = str(exc)
    return ((isinstance(exc, RuntimeError) and "Event loop is closed" in text)
            or "error while reading array index" in text
            or "_read_array_index" in getattr(obj, "__qualname__", ""))

  @staticmethod
  def _is_leftover_read_task(record: logging.LogRecord) -> bool:
    # The failed read's error itself: tensorstore's, naming its spec.
    exc = record.exc_info[1] if record.exc_info else None
    return (str(record.msg).startswith("Task exception was never retrieved")
            and exc is not None and "tensorstore_spec" in str(exc))

  @classmethod
  def install(cls) -> None:
    if cls.installed:
      return
    previous_unraisable = sys.unraisablehook
    previous_except = sys.excepthook
    previous_thread = threading.excepthook

    def unraisable_hook(unraisable):
      if not cls._is_leftover(unraisable.exc_value, unraisable.object):
        previous_unraisable(unraisable)

    def except_hook(exc_type, exc, tb):
      if not cls._is_leftover(exc):
        previous_except(exc_type, exc, tb)

    def thread_hook(args):
      if not cls._is_leftover(args.exc_value):
        previous_thread(args)

    sys.unraisablehook = unraisable_hook
    sys.excepthook = except_hook
    threading.excepthook = thread_hook
    logging.getLogger("asyncio").addFilter(
        lambda record: not cls._is_leftover_read_task(record))
    cls.installed = True


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0][:300] if text else ""
