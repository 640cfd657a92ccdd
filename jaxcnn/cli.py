"""Shared command-line plumbing: one clear line and a non-zero exit for
every user mistake, instead of a traceback."""
from __future__ import annotations

import os
import sys
from typing import Callable

# TensorFlow (pulled in by tensorflow-datasets) is chatty on import.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

EXIT_USAGE = 2


def run_main(main: Callable[[], int | None]) -> None:
  """Runs `main`, mapping known errors to `error: ...` and an exit code."""
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
    sys.exit(128 + e.signum)
  except (ConfigError, DataError, ModelConfigError, OptimConfigError,
          DeviceError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(EXIT_USAGE)
  except (CheckpointError, TrainingError, WorkdirBusy) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)
  sys.exit(code or 0)
