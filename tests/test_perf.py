"""Performance work: the train step compiles once, the CPU fast paths equal
the plain ops they replace (values and gradients), and the benchmark runs.

The fast paths are checked against the plain XLA ops on the same inputs:
bit for bit where the arithmetic is the same (pool values and gradients,
conv values and input gradients), and against a float64 reference where only
the summation order differs (the conv kernel gradient).
"""
import contextlib
import dataclasses
import io
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax import lax

from jaxcnn import config as config_lib, parallel, steps, trainer
from jaxcnn.defaults import base_config
from jaxcnn.models import cpu_kernels, create_model, forward_flops, layers


def random_normal(seed, shape):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def model_config(**overrides):
  cfg = base_config().model
  for key, value in overrides.items():
    cfg[key] = value
  return cfg


@contextlib.contextmanager
def cpu_paths(enabled: bool):
  """Sets cpu_kernels.CPU_PATHS; it is read when a function is traced, so
  trace inside the block."""
  saved = cpu_kernels.CPU_PATHS
  cpu_kernels.CPU_PATHS = enabled
  try:
    yield
  finally:
    cpu_kernels.CPU_PATHS = saved


# --- No recompiles ------------------------------------------------------------


class CountingModel:
  """Counts calls of model.apply: one per trace of the train step."""

  def __init__(self, model):
    self.model = model
    self.traces = 0

  def apply(self, *args, **kwargs):
    self.traces += 1
    return self.model.apply(*args, **kwargs)


@contextlib.contextmanager
def count_backend_compiles():
  """Counts programs handed to XLA: compiled, or read back from the tests'
  persistent compilation cache (conftest.py), which a recompile of a
  program seen before would hit instead of compiling."""
  counter = {"compiles": 0}

  def on_duration(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      counter["compiles"] += 1

  def on_event(event, **kwargs):
    if event == "/jax/compilation_cache/cache_hits":
      counter["compiles"] += 1

  jax.monitoring.register_event_duration_secs_listener(on_duration)
  jax.monitoring.register_event_listener(on_event)
  try:
    yield counter
  finally:
    jax.monitoring.unregister_event_duration_listener(on_duration)
    jax.monitoring.unregister_event_listener(on_event)


@pytest.fixture(scope="module")
def tiny_setup():
  """The test experiment on two devices, and its initial state on the host
  (built once: initialisation compiles longer than the step)."""
  cfg = config_lib.apply_overrides(config_lib.load_experiment("test"),
                                   ["train.num_devices=2"])
  setup = trainer.build(cfg)
  state = jax.jit(lambda: trainer.create_train_state(setup))()
  return setup, jax.tree.map(np.asarray, state)


@pytest.mark.parametrize("steps_per_call", [1, 2])
def test_train_step_traces_and_compiles_once(tiny_setup, steps_per_call):
  setup, host_state = tiny_setup
  setup = dataclasses.replace(setup, model=CountingModel(setup.model))
  counting, devices = setup.model, setup.devices
  state = parallel.replicate(host_state, devices)
  feed = steps.TrainFeed.place(setup)
  acc = feed.accumulator()
  step_fn = steps.make_train_fn(setup, steps_per_call)

  state, acc = step_fn(state, acc, *feed.inputs())
  assert counting.traces == 1
  with count_backend_compiles() as compiles:
    for call in range(4):
      # As the loop does: a fresh accumulator after a log, the next epoch's
      # permutations; the donated state is rebound every call.
      if call == 2:
        acc = feed.accumulator()
        feed.at_epoch(1)
      state, acc = step_fn(state, acc, *feed.inputs())
    jax.block_until_ready(acc)
  assert counting.traces == 1
  assert compiles["compiles"] == 0
  assert int(parallel.unreplicate(state.step)) == 5 * steps_per_call

  # The counter does see a retrace: a permutation of another length is a new
  # input shape.
  perm = parallel.unreplicate(feed.perm2)
  longer = parallel.replicate(np.concatenate([perm, perm[:8]]), devices)
  lowered = step_fn.lower(state, acc, feed.train_x, feed.train_y, longer)
  assert counting.traces == 2

  if steps_per_call > 1 and jax.default_backend() == "cpu":
    # Inside the scan XLA CPU does not transpose a convolution into the
    # layout of its fast kernels: one left in another layout runs as a naive
    # loop nest (AlexNet: 18 s a step instead of 0.3 s). cpu_kernels.cpu_conv
    # writes the gradients in the canonical layout.
    hlo = lowered.compile().as_text()
    convs = [line for line in hlo.splitlines() if " convolution(" in line]
    assert convs
    for line in convs:
      assert "dim_labels=b01f_01io->b01f" in line, line


# --- Max pooling ----------------------------------------------------------------

# AlexNet's and VGG's pools, then odd windows, strides and paddings.
POOLS = [(3, 2, "SAME"), (2, 2, "VALID"), (3, 1, "SAME"), (3, 3, "VALID"),
         (2, 3, "SAME")]
POOL_SHAPES = [(2, 8, 8, 3), (3, 7, 5, 4), (2, 2, 3, 2)]


def pool_inputs(seed, shape):
  """Continuous values; ReLU'd ones (ties at 0 over whole windows); small
  integers (ties between real maxima)."""
  x = random_normal(seed, shape)
  ints = np.random.default_rng(seed).integers(0, 3, shape).astype(np.float32)
  return {"normal": x, "relu": np.maximum(x, 0), "ties": ints}


@pytest.mark.parametrize("window,stride,padding", POOLS)
def test_strided_max_pool_equals_flax_max_pool_bit_for_bit(window, stride,
                                                           padding):
  flax_pool = lambda x: nn.max_pool(x, (window, window), (stride, stride),
                                    padding)
  fast_pool = lambda x: cpu_kernels.strided_max_pool(x, window, stride,
                                                     padding)

  @jax.jit
  def values_and_grads(x, cotangent):
    (out, vjp), (want, want_vjp) = jax.vjp(fast_pool, x), jax.vjp(flax_pool, x)
    return out, vjp(cotangent)[0], want, want_vjp(cotangent)[0], fast_pool(x)

  for seed, shape in enumerate(POOL_SHAPES):
    out_shape = jax.eval_shape(flax_pool, jnp.zeros(shape)).shape
    if 0 in out_shape:
      continue
    cotangent = random_normal(seed + 100, out_shape)
    for kind, x in pool_inputs(seed, shape).items():
      out, grad, want, want_grad, primal = values_and_grads(x, cotangent)
      where = f"{kind} {shape}"
      np.testing.assert_array_equal(out, want, err_msg=where)
      np.testing.assert_array_equal(primal, want, err_msg=where)
      # Ties go to the first maximum and shared pixels sum in the same
      # order as select-and-scatter: equal bits, not just close.
      np.testing.assert_array_equal(grad, want_grad, err_msg=where)


def test_strided_max_pool_sums_overlaps_in_select_and_scatter_order():
  # AlexNet's pool on a realistic map: pixels shared by up to four windows,
  # where any other order of addition changes the last bits somewhere.
  x = np.maximum(random_normal(0, (8, 32, 32, 16)), 0)
  cotangent = random_normal(1, (8, 16, 16, 16))
  grads = [jax.jit(lambda x, c, f=f: jax.vjp(f, x)[1](c)[0])(x, cotangent)
           for f in (lambda x: cpu_kernels.strided_max_pool(x, 3, 2, "SAME"),
                     lambda x: nn.max_pool(x, (3, 3), (2, 2), "SAME"))]
  np.testing.assert_array_equal(grads[0], grads[1])


def test_max_pool_takes_the_strided_form_only_on_cpu_with_cpu_paths():
  x = jnp.zeros((1, 4, 4, 1))

  def uses_custom_vjp():
    jaxpr = jax.make_jaxpr(lambda x: layers.max_pool(x, 3, 2, "SAME"))(x)
    return "custom_vjp" in str(jaxpr)

  on_cpu = jax.default_backend() == "cpu"
  with cpu_paths(True):
    assert uses_custom_vjp() == on_cpu
  with cpu_paths(False):
    assert not uses_custom_vjp()


# --- Which XLA CPU kernels run the convolutions ----------------------------------

CONV_KERNELS_PROBE = (
    "import os, jaxcnn.models, jaxcnn.models.cpu_kernels as cpu_kernels; "
    "print(os.environ.get('XLA_FLAGS', '')); "
    "cpu_kernels.prefer_eigen_convolutions(); "
    "print(os.environ.get('XLA_FLAGS', '')); "
    "print(cpu_kernels.cpu_convs_use_ynnpack())")


@pytest.mark.parametrize("user_flags,eigen", [
    ("", True),
    ("--xla_cpu_experimental_ynn_fusion_type=+individual_convolution", False),
])
def test_convolutions_go_to_eigen_unless_the_user_says_otherwise(user_flags,
                                                                  eigen):
  # Importing the models leaves XLA_FLAGS alone; prefer_eigen_convolutions,
  # called as the entry points call it, before XLA starts, adds the Eigen
  # flag (on the jaxlib it was checked on); a YNNPACK flag of the user's own
  # wins. What the backend really does is read from the compiled HLO.
  import jaxlib.version
  if eigen and not jaxlib.version.__version__.startswith(
      cpu_kernels.EIGEN_CONV_JAXLIB_VERSIONS):
    pytest.skip("the Eigen flag is only set on jaxlib "
                f"{cpu_kernels.EIGEN_CONV_JAXLIB_VERSIONS}")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(XLA_FLAGS=user_flags, JAX_PLATFORMS="cpu",
             PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1]))
  out = subprocess.run([sys.executable, "-c", CONV_KERNELS_PROBE], env=env,
                       capture_output=True, text=True, timeout=120, check=True)
  after_import, flags, uses_ynnpack = out.stdout.splitlines()[-3:]
  assert after_import == user_flags
  assert (cpu_kernels.EIGEN_CONV_FLAG in flags) == eigen
  assert uses_ynnpack == str(not eigen)


# --- Convolution with a split kernel gradient -----------------------------------

# Every map size VGG-16 runs lax.conv at on CPU (2x2 and 1x1 go to 'shifted'),
# AlexNet's 5x5 kernels, and a non-square map.
SPLIT_CASES = [(8, 32, 32, 3, 4, 3), (8, 16, 16, 5, 6, 3), (8, 8, 8, 4, 6, 3),
               (8, 4, 4, 6, 5, 3), (8, 16, 16, 3, 4, 5), (6, 6, 10, 3, 2, 5)]


def kernel_grad_float64(x, cotangent, size):
  """d(sum(conv(x, k) * cotangent))/dk in float64: tap (dy, dx) is the
  shifted input's channels against the cotangent's, summed over positions."""
  _, height, width, _ = x.shape
  pad = size // 2
  x_pad = np.pad(np.asarray(x, np.float64),
                 ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  g = np.asarray(cotangent, np.float64)
  return np.stack([
      np.stack([np.einsum("bhwc,bhwd->cd",
                          x_pad[:, dy:dy + height, dx:dx + width], g)
                for dx in range(size)])
      for dy in range(size)])


@pytest.mark.parametrize("ynnpack", [True, False])
@pytest.mark.parametrize("batch,height,width,cin,cout,size", SPLIT_CASES)
def test_cpu_conv_equals_xla_conv(monkeypatch, ynnpack, batch, height, width,
                                  cin, cout, size):
  # ynnpack=True takes the path for YNNPACK convolutions (the kernel
  # gradient summed over batch chunks), False the one for Eigen's (one
  # piece), whichever kernels this process really runs: the arithmetic is
  # the same. Few output positions per chunk, so every case really sums
  # several chunks (VGG's own sizes give 1-16 chunks at batch 128).
  monkeypatch.setattr(cpu_kernels, "cpu_convs_use_ynnpack", lambda: ynnpack)
  monkeypatch.setattr(cpu_kernels, "KERNEL_GRAD_POSITIONS", 32)
  chunks = cpu_kernels.kernel_grad_chunks(batch, height, width)
  assert chunks > 1 or batch * height * width <= 32
  x = random_normal(1, (batch, height, width, cin))
  kernel = random_normal(2, (size, size, cin, cout))
  cotangent = random_normal(3, (batch, height, width, cout))

  @jax.jit
  def values_and_grads(x, kernel, cotangent):
    out = []
    for conv in (cpu_kernels.cpu_conv, cpu_kernels.xla_conv):
      y, vjp = jax.vjp(conv, x, kernel)
      out.append((y,) + vjp(cotangent))
    return out

  (y, dx, dk), (want_y, want_dx, want_dk) = values_and_grads(x, kernel,
                                                             cotangent)
  # The same XLA ops: equal bits.
  np.testing.assert_array_equal(y, want_y)
  np.testing.assert_array_equal(dx, want_dx)
  # The kernel gradient sums the same products in another order: as close to
  # the exact (float64) value as XLA's own.
  exact = kernel_grad_float64(x, cotangent, size)
  scale = np.abs(exact).max()
  err, xla_err = (np.abs(np.asarray(g, np.float64) - exact).max() / scale
                  for g in (dk, want_dk))
  assert err <= 2 * xla_err + 1e-6, (err, xla_err)


def test_cpu_conv_in_bfloat16_accumulates_in_float32(monkeypatch):
  monkeypatch.setattr(cpu_kernels, "cpu_convs_use_ynnpack", lambda: True)
  monkeypatch.setattr(cpu_kernels, "KERNEL_GRAD_POSITIONS", 16)
  x = jnp.asarray(random_normal(1, (8, 8, 8, 4))).astype(jnp.bfloat16)
  kernel = jnp.asarray(random_normal(2, (3, 3, 4, 6))).astype(jnp.bfloat16)
  cotangent = jnp.asarray(random_normal(3, (8, 8, 8, 6))).astype(jnp.bfloat16)
  grads = [jax.vjp(conv, x, kernel)[1](cotangent)
           for conv in (cpu_kernels.cpu_conv, cpu_kernels.xla_conv)]
  assert grads[0][1].dtype == jnp.bfloat16
  np.testing.assert_array_equal(grads[0][0], grads[1][0])
  np.testing.assert_allclose(np.asarray(grads[0][1], np.float32),
                             np.asarray(grads[1][1], np.float32), rtol=2e-2,
                             atol=2e-2 * float(jnp.abs(grads[1][1]).max()))


def test_kernel_grad_chunks_divide_the_batch():
  for batch in (1, 2, 6, 32, 100, 128, 512):
    for size in (1, 2, 4, 8, 16, 32):
      chunks = cpu_kernels.kernel_grad_chunks(batch, size, size)
      assert 1 <= chunks <= cpu_kernels.KERNEL_GRAD_MAX_CHUNKS
      assert batch % chunks == 0
  # VGG-16 at batch 128: at most ~1024 positions per chunk from 16x16 down.
  assert [cpu_kernels.kernel_grad_chunks(128, s, s)
          for s in (32, 16, 8, 4)] == [16, 16, 8, 2]


@pytest.mark.parametrize("size", [3, 5])
def test_conv_module_equals_flax_conv(size):
  x = jnp.asarray(random_normal(0, (4, 8, 8, 3)))
  ours = layers.Conv(6, size, impl="xla")
  flax_conv = nn.Conv(6, (size, size), padding="SAME")
  variables = jax.jit(flax_conv.init)(jax.random.key(0), x)
  ours_shapes = jax.eval_shape(ours.init, jax.random.key(0), x)
  assert (jax.tree.map(lambda a: a.shape, ours_shapes) ==
          jax.tree.map(lambda a: a.shape, variables))
  with cpu_paths(True):
    got = jax.jit(ours.apply)(variables, x)
  want = jax.jit(flax_conv.apply)(variables, x)
  np.testing.assert_array_equal(got, want)
  # The shifted form takes any odd kernel, with the same parameters.
  shifted = jax.jit(layers.Conv(6, size, impl="shifted").apply)(variables, x)
  np.testing.assert_allclose(shifted, want, rtol=1e-5,
                             atol=1e-5 * float(np.abs(want).max()))
  with pytest.raises(ValueError, match="odd"):
    layers.Conv(6, 4).init(jax.random.key(0), x)


# --- LRN ----------------------------------------------------------------------


def lrn_plain(x, radius, bias, alpha, beta):
  """The textbook formula, differentiated by JAX."""
  x32 = x.astype(jnp.float32)
  sqr_sum = lax.reduce_window(x32 * x32, 0.0, lax.add, (1, 1, 1, 2 * radius + 1),
                              (1, 1, 1, 1), ((0, 0),) * 3 + ((radius, radius),))
  return (x32 * (bias + alpha * sqr_sum) ** -beta).astype(x.dtype)


@pytest.mark.parametrize("settings", [(4, 1.0, 0.001 / 9.0, 0.75),
                                      (2, 2.0, 0.3, 0.5)])
def test_lrn_gradient_equals_autodiff_of_the_formula(settings):
  @jax.jit
  def values_and_grads(x, cotangent):
    out = []
    for lrn in (lambda x: layers.local_response_norm(x, *settings),
                lambda x: lrn_plain(x, *settings)):
      y, vjp = jax.vjp(lrn, x)
      out.append((y, vjp(cotangent)[0]))
    return out

  for seed, shape in enumerate([(2, 5, 5, 3), (3, 4, 6, 8), (2, 8, 8, 64)]):
    x = jnp.asarray(3 * random_normal(seed, shape))
    cotangent = jnp.asarray(random_normal(seed + 10, shape))
    (got, got_grad), (want, want_grad) = values_and_grads(x, cotangent)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-5, atol=1e-6)


# --- Whole models with and without the CPU paths ---------------------------------


@pytest.mark.parametrize("overrides", [
    dict(name="alexnet", width=0.25, norm="lrn", dropout=0.0),
    # VGG's layers (3x3 convs on every path, BatchNorm, 2x2 pools) at a
    # fraction of its compile time.
    dict(name="tiny", dropout=0.0)])
def test_model_gradients_agree_with_and_without_cpu_paths(overrides):
  model = create_model(model_config(**overrides))
  x = jnp.asarray(random_normal(0, (4, 32, 32, 3)))
  labels = jnp.arange(4)
  # Shapes from init, values from numpy: compiling init would cost more than
  # the rest of the test.
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x,
                                               train=False), x[:1])
  rng = np.random.default_rng(0)
  variables = jax.tree.map(
      lambda a: jnp.asarray(0.1 * rng.standard_normal(a.shape), a.dtype)
      if a.ndim > 1 else jnp.ones(a.shape, a.dtype), shapes)

  def loss(params):
    logits, _ = model.apply({**variables, "params": params}, x, train=True,
                            mutable=["batch_stats"])
    one_hot = jax.nn.one_hot(labels, 10)
    return -jnp.mean(jnp.sum(one_hot * jax.nn.log_softmax(logits), -1)), logits

  results = {}
  for enabled in (True, False):
    with cpu_paths(enabled):
      # A new function object each time, so each setting is traced afresh.
      results[enabled] = jax.jit(
          lambda p: jax.value_and_grad(loss, has_aux=True)(p))(
              variables["params"])
  (loss_fast, logits_fast), grads_fast = results[True]
  (loss_plain, logits_plain), grads_plain = results[False]
  np.testing.assert_array_equal(logits_fast, logits_plain)
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(grads_fast),
                          jax.tree.leaves(grads_plain)):
    scale = float(np.abs(w).max())
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * scale,
                               err_msg=jax.tree_util.keystr(path))


# --- The benchmark ------------------------------------------------------------


def test_conv_small_maps_benchmark_runs():
  from benchmarks import conv_small_maps
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    conv_small_maps.main(["--batch", "1", "--repeats", "1"])
  rows = out.getvalue().splitlines()[2:]
  assert len(rows) == len(conv_small_maps.CASES)
  for row, (side, channels, size) in zip(rows, conv_small_maps.CASES):
    # map, channels, kernel, two times (ms) and their ratio
    map_, ch, kernel, *numbers = row.split()
    assert (map_, ch, kernel) == (f"{side}x{side}", str(channels),
                                  f"{size}x{size}")
    assert len(numbers) == 3 and all(float(n) >= 0 for n in numbers)


def test_conv_backends_benchmark_runs_each_backend_in_its_own_process():
  # Eigen's flags keep the convolution out of YNNPACK, XLA's default puts it
  # in; both compute the same convolution (the checksum) in each dtype.
  from benchmarks import conv_backends
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    # Big enough for XLA to hand the convolution to YNNPACK (it keeps tiny
    # ones).
    conv_backends.main(["--batch", "8", "--side", "8", "--channels", "32",
                        "--repeats", "1", "--rounds", "1",
                        "--backends", "eigen,ynnpack"])
  rows = [r.split() for r in out.getvalue().splitlines()[2:]]
  assert [r[1:3] for r in rows] == [["eigen", "float32"], ["eigen", "bfloat16"],
                                    ["ynnpack", "float32"],
                                    ["ynnpack", "bfloat16"]], rows
  assert [r[-2] for r in rows] == ["False", "False", "True", "True"]
  sums = {(r[1], r[2]): float(r[-1]) for r in rows}
  for dtype, tol in (("float32", 1e-5), ("bfloat16", 1e-2)):
    assert sums[("eigen", dtype)] > 0
    np.testing.assert_allclose(sums[("ynnpack", dtype)],
                               sums[("eigen", dtype)], rtol=tol)
  with pytest.raises(SystemExit):
    conv_backends.main(["--backends", "eigen,mkl"])


def test_benchmark_runs_one_step_without_torch():
  from benchmarks import throughput
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    throughput.main(["--model", "tiny", "--batch", "32", "--steps", "1",
                     "--repeats", "1", "--warmup", "1", "--eval_calls", "1",
                     "--eval_batches", "1", "--no-torch", "--json"])
  result = json.loads(out.getvalue())
  assert result["model"] == "tiny" and result["batch"] == 32
  assert result["jax"]["train_images_per_s"]["median"] > 0
  assert result["jax"]["eval_images_per_s"] > 0
  assert 0 < result["jax"]["input_share_of_step"] < 1
  assert "torch" not in result
  text = throughput.report(result)
  assert "jax   train" in text and "ratio" not in text


def test_flops_count_matches_the_vgg16_arithmetic():
  from benchmarks import throughput
  # Multiply-adds of the convs, 9 * H * W * Cin * Cout per layer:
  #   32x32: 9*1024*(3*64 + 64*64)                     =  39,518,208
  #   16x16: 9*256*(64*128 + 128*128)                  =  56,623,104
  #   8x8:   9*64*(128*256 + 2*256*256)                =  94,371,840
  #   4x4:   9*16*(256*512 + 2*512*512)                =  94,371,840
  #   2x2:   9*4*(3*512*512)                           =  28,311,552
  # fc1, fc2, logits: 2*512*512 + 512*10               =     529,408
  #                                              total = 313,725,952
  model = create_model(model_config(name="vgg", depth=16))
  assert forward_flops(model, (32, 32, 3)) == 2 * 313_725_952
  # VGG-13, two 3x3 convs per block against one 5x5 (receptive_field study):
  #   3x3: 9 * (1024*(3*64 + 64*64) + 256*(64*128 + 128*128)
  #        + 64*(128*256 + 256*256) + 16*(256*512 + 512*512)
  #        + 4*(2*512*512))                          = 228,261,888
  #   5x5: 25 * (1024*3*64 + 256*64*128 + 64*128*256 + 16*256*512
  #        + 4*512*512)                              = 188,416,000
  # (the shifted form on tiny maps skips padding taps; the count is the
  # nominal one either way) plus the head's 529,408.
  for block, convs in (("3x3", 228_261_888), ("5x5", 188_416_000)):
    model = create_model(model_config(name="vgg",
                                      vgg=dict(depth=13, block=block)))
    assert forward_flops(model, (32, 32, 3)) == 2 * (convs + 529_408), block


def test_mfu_peaks_only_for_known_gpus():
  from benchmarks import throughput

  class Device:
    def __init__(self, platform, kind):
      self.platform, self.device_kind = platform, kind

  h100 = Device("gpu", "NVIDIA H100 80GB HBM3")
  assert throughput.peak_flops(h100, "bfloat16") == {"bfloat16": 989.0}
  assert throughput.peak_flops(h100, "float32")["tf32"] == 495.0
  assert throughput.peak_flops(Device("gpu", "NVIDIA H200"), "bfloat16") == {
      "bfloat16": 989.0}
  assert throughput.peak_flops(Device("cpu", "cpu"), "float32") is None


def test_torch_models_have_the_jax_parameter_counts():
  torch = pytest.importorskip("torch")
  from benchmarks import torch_models
  count = lambda m: sum(p.numel() for p in m.parameters())
  # The counts of tests/test_models.py: the same layers, so the same work.
  assert count(torch_models.create("vgg", depth=16)) == 15_249_354
  assert count(torch_models.create("alexnet")) == 1_756_426
  with torch.no_grad():
    logits = torch_models.create("alexnet")(torch.zeros(2, 3, 32, 32))
  assert logits.shape == (2, 10)
