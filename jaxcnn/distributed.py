"""Multi-process training with JAX's own runtime (`jax.distributed`).

One process per host (or per GPU group); together they form one pmap over the
devices of all processes: gradients and BatchNorm statistics are averaged
globally by the same `pmean` that averages them over local devices.
"""
from __future__ import annotations

import os

import jax


def maybe_initialize(coordinator: str | None = None,
                     num_processes: int | None = None,
                     process_id: int | None = None) -> bool:
  """Starts the distributed runtime when this is one of several processes.

  Explicit flags win; otherwise JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
  JAX_PROCESS_ID; otherwise a SLURM job step with more than one task, which
  `jax.distributed.initialize()` detects by itself. Returns True if it started.
  """
  coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
    num_processes = int(os.environ["JAX_NUM_PROCESSES"])
  if process_id is None and os.environ.get("JAX_PROCESS_ID"):
    process_id = int(os.environ["JAX_PROCESS_ID"])
  if coordinator or num_processes or process_id is not None:
    missing = [name for name, v in (("--coordinator", coordinator),
                                    ("--num_processes", num_processes),
                                    ("--process_id", process_id)) if v is None]
    if missing:
      raise ValueError("multi-process training needs --coordinator, "
                       "--num_processes and --process_id; missing "
                       + ", ".join(missing))
    if not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id={process_id} must be in "
                       f"[0, {num_processes})")
    if num_processes == 1:
      return False
    jax.distributed.initialize(coordinator_address=coordinator,
                               num_processes=num_processes,
                               process_id=process_id)
    return True
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and \
      "SLURM_STEP_ID" in os.environ:
    jax.distributed.initialize()
    return True
  return False
