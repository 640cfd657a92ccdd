"""Placing arrays on the devices of a `jax.pmap`.

pmap maps over the leading axis. Its inputs are created here already laid out
over the devices (a NamedSharding over a 1-D mesh named 'batch'), so pmap never
reshards or recompiles for them.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "batch"  # The pmap axis name; also BatchNorm's axis_name.


class DeviceError(ValueError):
  """Bad device count or a batch that does not split over the devices."""


def select_devices(num_devices: int) -> list:
  """The devices one pmap spans: the first `num_devices` local devices (all of
  them for 0), or, with several processes, every device of every process."""
  local = jax.local_devices()
  if jax.process_count() > 1:
    if num_devices:
      raise DeviceError("train.num_devices must be 0 (all) when training with "
                        f"{jax.process_count()} processes")
    return list(jax.devices())
  if num_devices < 0:
    raise DeviceError(f"train.num_devices must be >= 0, got {num_devices}")
  if num_devices > len(local):
    raise DeviceError(
        f"train.num_devices={num_devices} but only {len(local)} local devices "
        f"are available ({local[0].platform})")
  return local[:num_devices] if num_devices else list(local)


def per_device(total: int, num_devices: int, what: str) -> int:
  if total <= 0:
    raise DeviceError(f"{what} must be positive, got {total}")
  if total % num_devices:
    raise DeviceError(
        f"{what}={total} does not divide evenly over {num_devices} devices "
        f"({total} % {num_devices} = {total % num_devices}); use a multiple of "
        f"{num_devices}")
  return total // num_devices


def local_part(devices: Sequence) -> list:
  """This process's devices among `devices`, in order."""
  return [d for d in devices if d.process_index == jax.process_index()]


def local_rows(devices: Sequence) -> list[int]:
  """Positions of this process's devices in `devices` (their pmap indices)."""
  return [i for i, d in enumerate(devices)
          if d.process_index == jax.process_index()]


def _sharding(devices: Sequence) -> NamedSharding:
  return NamedSharding(Mesh(np.asarray(devices), (AXIS,)), P(AXIS))


def replicate(tree: Any, devices: Sequence) -> Any:
  """Gives every leaf a leading device axis: one copy per device.

  With several processes, pass this process's devices (`local_part`): a pmap
  takes process-local inputs and spans the devices of all processes."""
  sharding = _sharding(devices)

  def put(x):
    x = np.asarray(x) if not isinstance(x, jax.Array) else x
    pieces = [jax.device_put(x[None], d) for d in devices]
    return jax.make_array_from_single_device_arrays(
        (len(devices),) + tuple(x.shape), sharding, pieces)

  return jax.tree.map(put, tree)


def shard(tree: Any, devices: Sequence) -> Any:
  """Splits the leading axis (of size len(devices)) over the devices (this
  process's devices, with several processes)."""
  sharding = _sharding(devices)

  def put(x):
    x = np.asarray(x)
    if x.shape[0] != len(devices):
      raise DeviceError(
          f"leading axis {x.shape[0]} != number of devices {len(devices)}")
    return jax.device_put(x, sharding)

  return jax.tree.map(put, tree)


def unreplicate(tree: Any) -> Any:
  """The copy held by the first device (for pmap outputs that are replicated)."""
  return jax.tree.map(lambda x: x.addressable_data(0)[0], tree)
