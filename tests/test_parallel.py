"""jaxcnn/parallel.py: choosing devices, splitting batches over them, and
placing arrays for a pmap. Runs on the 4 fake CPU devices of conftest.py."""
import types

import jax
import numpy as np
import pytest

from jaxcnn import parallel


@pytest.fixture
def devices():
  local = jax.local_devices()
  if len(local) < 4:
    pytest.skip("needs the 4 fake CPU devices of conftest.py")
  return local[:4]


def shard_on(array, device):
  """The data of `array` that lives on `device`."""
  (piece,) = [s.data for s in array.addressable_shards if s.device == device]
  return np.asarray(piece)


# --- select_devices / per_device ----------------------------------------------------


def test_select_devices_counts(devices):
  local = jax.local_devices()
  assert parallel.select_devices(0) == local  # 0: all of them.
  assert parallel.select_devices(1) == local[:1]
  assert parallel.select_devices(3) == local[:3]
  assert parallel.select_devices(len(local)) == local


def test_select_devices_refuses_bad_counts(devices):
  n = jax.local_device_count()
  with pytest.raises(parallel.DeviceError) as e:
    parallel.select_devices(n + 1)
  message = str(e.value)
  assert f"train.num_devices={n + 1}" in message
  assert f"only {n} local devices" in message and "cpu" in message
  with pytest.raises(parallel.DeviceError, match="must be >= 0, got -1"):
    parallel.select_devices(-1)
  assert issubclass(parallel.DeviceError, ValueError)


def test_select_devices_with_several_processes(devices, monkeypatch):
  # Only 0 (all) is allowed, and it means every device of every process.
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  assert parallel.select_devices(0) == jax.devices()
  with pytest.raises(parallel.DeviceError,
                     match="must be 0 .all. when training with 2 processes"):
    parallel.select_devices(2)


def test_per_device_divides_or_says_why_not():
  assert parallel.per_device(128, 4, "train.batch_size") == 32
  assert parallel.per_device(3, 1, "x") == 3
  with pytest.raises(parallel.DeviceError) as e:
    parallel.per_device(10, 4, "train.batch_size")
  message = str(e.value)
  for part in ("train.batch_size=10", "4 devices", "10 % 4 = 2",
               "multiple of 4"):
    assert part in message
  for bad in (0, -8):
    with pytest.raises(parallel.DeviceError,
                       match=f"train.eval_batch_size must be positive, got "
                             f"{bad}"):
      parallel.per_device(bad, 4, "train.eval_batch_size")


# --- replicate / shard / unreplicate ---------------------------------------------------


def test_replicate_then_unreplicate_is_the_identity(devices):
  tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3),
          "step": np.int32(7),
          "nested": [jax.numpy.ones(4, jax.numpy.bfloat16)]}
  rep = parallel.replicate(tree, devices)
  assert jax.tree.structure(rep) == jax.tree.structure(tree)
  for original, copies in zip(jax.tree.leaves(tree), jax.tree.leaves(rep)):
    original = np.asarray(original)
    assert copies.shape == (4,) + original.shape
    assert copies.dtype == original.dtype
    # One whole copy on each device, in device order.
    assert [s.device for s in sorted(copies.addressable_shards,
                                     key=lambda s: s.index[0].start)] == devices
    for d in devices:
      np.testing.assert_array_equal(shard_on(copies, d), original[None])
  back = parallel.unreplicate(rep)
  assert jax.tree.structure(back) == jax.tree.structure(tree)
  for original, got in zip(jax.tree.leaves(tree), jax.tree.leaves(back)):
    assert got.shape == np.shape(original) and got.dtype == original.dtype
    np.testing.assert_array_equal(np.asarray(got), np.asarray(original))


def test_unreplicate_takes_the_first_devices_copy(devices):
  rows = np.arange(4 * 3, dtype=np.int32).reshape(4, 3)
  got = parallel.unreplicate(parallel.shard({"a": rows}, devices))
  np.testing.assert_array_equal(np.asarray(got["a"]), rows[0])


@pytest.mark.parametrize("order", ["forward", "reversed"])
def test_shard_puts_row_i_on_device_i(devices, order):
  devs = devices if order == "forward" else devices[::-1]
  x = np.arange(4 * 2 * 3, dtype=np.float32).reshape(4, 2, 3)
  tree = {"x": x, "y": np.array([10, 11, 12, 13])}
  out = parallel.shard(tree, devs)
  for i, d in enumerate(devs):
    np.testing.assert_array_equal(shard_on(out["x"], d), x[i:i + 1])
    np.testing.assert_array_equal(shard_on(out["y"], d), [10 + i])
  np.testing.assert_array_equal(np.asarray(out["x"]), x)


def test_pmap_sees_the_rows_in_device_order(devices):
  # Row i of a sharded or replicated input is what pmap index i gets.
  x = parallel.shard(np.arange(4, dtype=np.float32) * 10, devices)
  r = parallel.replicate(np.float32(1.0), devices)
  f = jax.pmap(lambda v, w: v + w * jax.lax.axis_index(parallel.AXIS),
               axis_name=parallel.AXIS, devices=devices)
  np.testing.assert_array_equal(np.asarray(f(x, r)), [0, 11, 22, 33])


def test_shard_refuses_a_leading_axis_that_is_not_the_device_count(devices):
  with pytest.raises(parallel.DeviceError,
                     match="leading axis 8 != number of devices 4"):
    parallel.shard(np.zeros((8, 2)), devices)
  with pytest.raises(parallel.DeviceError,
                     match="leading axis 4 != number of devices 2"):
    parallel.shard({"ok": np.zeros((4,))}, devices[:2])


def test_replicate_on_a_subset_of_devices(devices):
  rep = parallel.replicate(np.array([1.5, 2.5]), devices[2:])
  assert rep.shape == (2, 2)
  assert {s.device for s in rep.addressable_shards} == set(devices[2:])


# --- This process's devices ----------------------------------------------------------


def test_local_part_and_rows_with_one_process(devices):
  assert jax.process_count() == 1
  for devs in (devices, devices[::-1], devices[1:3]):
    assert parallel.local_part(devs) == list(devs)
    assert parallel.local_rows(devs) == list(range(len(devs)))
  assert parallel.local_part([]) == [] and parallel.local_rows([]) == []


def test_local_part_and_rows_pick_this_process(devices):
  # Devices of another process (stand-ins: only process_index matters) are
  # left out; the positions are those in the full list.
  me = jax.process_index()
  other = types.SimpleNamespace(process_index=me + 1)
  mixed = [other, devices[0], other, devices[1], devices[2], other]
  assert parallel.local_part(mixed) == devices[:3]
  assert parallel.local_rows(mixed) == [1, 3, 4]
