"""Shared command-line plumbing: one clear line and a non-zero exit for
every user mistake, instead of a traceback."""
from __future__ import annotations

import os
import sys
from typing import Callable

# TensorFlow (pulled in by tensorflow-datasets) is chatty on import.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

EXIT_USAGE = 2


def step_arg(text: str) -> int | str:
  """argparse type of eval's and inspect's --step: a step number or 'best'
  (jaxcnn.restore.open_reader); here so parsing imports no JAX."""
  if text == "best":
    return text
  try:
    return int(text)
  except ValueError:
    import argparse  # pylint: disable=import-outside-toplevel
    raise argparse.ArgumentTypeError(
        f"expected a step number or 'best', got {text!r}") from None


def _exit(code: int, hard: bool) -> None:
  if hard and code:
    # After a failed checkpoint read, orbax's reader threads can still be
    # failing while the interpreter shuts down, printing tracebacks after our
    # one-line message. Everything was flushed and closed; skip finalization.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  sys.exit(code)


def run_main(main: Callable[[], int | None], *, hard_exit: bool = False
             ) -> None:
  """Runs `main`, mapping known errors to `error: ...` and an exit code.

  `hard_exit` (for `__main__` only; tests want SystemExit) ends a failed
  command without interpreter finalization."""
  from jaxcnn.checkpoint import CheckpointError
  from jaxcnn.config import ConfigError
  from jaxcnn.data import DataError
  from jaxcnn.models import ModelConfigError
  from jaxcnn.optim import OptimConfigError
  from jaxcnn.parallel import DeviceError
  from jaxcnn.trainer import Interrupted, TrainingError
  from jaxcnn.workdir_lock import WorkdirBusy

  try:
    code = main()
  except Interrupted as e:
    print(f"stopped: {e}", file=sys.stderr)
    _exit(128 + e.signum, hard_exit)
  except (ConfigError, DataError, ModelConfigError, OptimConfigError,
          DeviceError) as e:
    print(f"error: {e}", file=sys.stderr)
    _exit(EXIT_USAGE, hard_exit)
  except (CheckpointError, TrainingError, WorkdirBusy) as e:
    print(f"error: {e}", file=sys.stderr)
    _exit(1, hard_exit)
  except OSError as e:
    # A path the user gave that the file system refuses (a file where a
    # folder is expected, no permission, a full disk): the path and why.
    where = f"{e.filename}: " if e.filename else ""
    print(f"error: {where}{e.strerror or e}", file=sys.stderr)
    _exit(1, hard_exit)
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    _exit(130, hard_exit)
  sys.exit(code or 0)


def print_report(report: dict, files: list[str], as_json: bool,
                 format_report: Callable[[dict], str]) -> None:
  """Prints a command's report: one JSON object (with the files written) or
  its text form followed by the files written."""
  if as_json:
    import json
    print(json.dumps({**report, "files": files}))
    return
  print(format_report(report))
  if files:
    print("\nwrote " + ", ".join(files))
