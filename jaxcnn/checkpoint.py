"""Checkpoints in WORKDIR/checkpoints, written with orbax.

Each step directory holds two items: `state` (the UNREPLICATED train state, so
a checkpoint written by N devices restores onto any device count) and `config`
(the resolved config as JSON, so evaluation needs nothing but the workdir).
"""
from __future__ import annotations

import os
import pathlib
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxcnn.config import Config


class CheckpointError(RuntimeError):
  """A missing, incompatible or unreadable checkpoint."""


def checkpoint_dir(workdir: str | os.PathLike) -> pathlib.Path:
  return pathlib.Path(workdir).resolve() / "checkpoints"


def make_manager(workdir, *, keep: int = 3, create: bool = True,
                 async_save: bool = True) -> ocp.CheckpointManager:
  """A manager for WORKDIR/checkpoints; `create=False` never creates it."""
  directory = checkpoint_dir(workdir)
  if not create and not directory.is_dir():
    raise CheckpointError(f"no checkpoints in {workdir} ({directory} does not "
                          "exist)")
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=create,
      enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(directory, options=options)


def saved_steps(workdir) -> list[int]:
  """Steps of the complete checkpoints in WORKDIR (orbax skips unfinished)."""
  directory = checkpoint_dir(workdir)
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
  try:
    restored = manager.restore(
        step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  except Exception as e:  # orbax raises many kinds; report one line.
    raise CheckpointError(
        f"cannot read the config of checkpoint step {step} in "
        f"{manager.directory}: {type(e).__name__}: {_first_line(e)}") from e
  return Config.from_dict(restored.config)


def restore_state(manager: ocp.CheckpointManager, step: int,
                  like_state: dict) -> dict:
  """Restores `state` of `step` into the structure, shapes and dtypes of
  `like_state` (concrete arrays or ShapeDtypeStructs)."""
  try:
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(like_state))))
  except Exception as e:
    raise CheckpointError(
        f"cannot restore checkpoint step {step} from {manager.directory}: "
        f"{type(e).__name__}: {_first_line(e)}") from e
  return restored.state


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0][:300] if text else ""
