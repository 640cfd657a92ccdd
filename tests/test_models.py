"""Models: shapes, parameter counts, LRN against TF, fast paths against the
plain ops they replace, config errors, and synchronised BatchNorm."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxcnn.defaults import base_config
from jaxcnn.models import (MODEL_NAMES, ModelConfigError, count_params,
                           cpu_kernels, create_model, layers)


def model_config(**overrides):
  cfg = base_config().model
  for key, value in overrides.items():
    cfg[key] = value
  return cfg


def init_shapes(model, size=32):
  """Variable shapes from `model.init`, traced without computing anything."""
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  return jax.eval_shape(lambda x: model.init(rngs, x, train=False), x)


def init_variables(model, x):
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  return jax.jit(lambda rngs, x: model.init(rngs, x, train=False))(rngs, x)


def synthetic_variables(model, size=32, seed=0):
  """Variables shaped like `model.init`'s, filled from numpy.

  Compiling a real init costs more than everything else these tests run
  (VGG-16: 6-12 s on the 2-core CPU, its forward pass under 1 s), and only
  test_alexnet_uses_the_tutorial_init cares about the init itself. The BN
  statistics get non-trivial values so the eval path really uses them.
  """
  rng = np.random.default_rng(seed)
  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      value = rng.standard_normal(leaf.shape) * np.sqrt(2 / fan_in)
    elif name == "var":
      value = rng.uniform(0.5, 1.5, leaf.shape)
    elif name == "scale":
      value = 1 + 0.1 * rng.standard_normal(leaf.shape)
    else:  # bias, mean
      value = 0.1 * rng.standard_normal(leaf.shape)
    return jnp.asarray(value, leaf.dtype)
  return jax.tree_util.tree_map_with_path(fill, init_shapes(model, size))


def random_normal(seed, shape):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --- Local response normalisation ---------------------------------------------

def lrn_by_loops(x, depth_radius, bias, alpha, beta):
  """The definition in the tf.nn.lrn docs, written as plainly as possible."""
  out = np.empty_like(x, dtype=np.float64)
  channels = x.shape[-1]
  for c in range(channels):
    lo, hi = max(0, c - depth_radius), min(channels, c + depth_radius + 1)
    sqr_sum = np.sum(x[..., lo:hi].astype(np.float64) ** 2, axis=-1)
    out[..., c] = x[..., c] / (bias + alpha * sqr_sum) ** beta
  return out


# The tutorial's settings hardly change their input (alpha*sqr_sum ~ 1e-3), so
# a strong setting is checked too, where a wrong window would show.
LRN_SETTINGS = [dict(depth_radius=4, bias=1.0, alpha=0.001 / 9.0, beta=0.75),
                dict(depth_radius=2, bias=2.0, alpha=0.3, beta=0.5)]
LRN_SHAPES = [(2, 5, 5, 3), (3, 4, 6, 8), (2, 8, 8, 64)]


@pytest.mark.parametrize("settings", LRN_SETTINGS)
def test_lrn_matches_loop_formula(settings):
  for seed, shape in enumerate(LRN_SHAPES):
    x = 3 * random_normal(seed, shape)
    got = layers.LocalResponseNorm(**settings).apply({}, jnp.asarray(x))
    np.testing.assert_allclose(got, lrn_by_loops(x, **settings),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("settings", LRN_SETTINGS)
def test_lrn_matches_tensorflow(settings):
  tf = pytest.importorskip("tensorflow")
  for seed, shape in enumerate(LRN_SHAPES):
    x = 3 * random_normal(seed, shape)
    got = layers.LocalResponseNorm(**settings).apply({}, jnp.asarray(x))
    want = tf.nn.lrn(x, **settings).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_lrn_computes_in_float32_and_keeps_dtype():
  x = jnp.asarray(random_normal(0, (2, 4, 4, 8))).astype(jnp.bfloat16)
  got = layers.LocalResponseNorm(alpha=0.3).apply({}, x)
  assert got.dtype == jnp.bfloat16
  want = lrn_by_loops(np.asarray(x, np.float32), 4, 1.0, 0.3, 0.75)
  np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=1e-2)


# --- Parameter counts ---------------------------------------------------------

def test_alexnet_param_count():
  # conv1  5*5*3*64 + 64        =     4,864
  # conv2  5*5*64*64 + 64       =   102,464
  # fc384  (8*8*64)*384 + 384   = 1,573,248  (32 -> pool 16 -> pool 8)
  # fc192  384*192 + 192        =    73,920
  # logits 192*10 + 10          =     1,930
  #                       total = 1,756,426
  model = create_model(model_config(name="alexnet", norm="lrn"))
  variables = init_shapes(model)
  assert set(variables) == {"params"}
  assert count_params(variables["params"]) == 1_756_426


def test_convnet4_shapes_are_cuda_convnets_80sec_net():
  # layers-80sec.cfg: three 5x5 convs padded 2 (32, 32, 64 filters), each
  # pooled 3/2 over the whole image (32 -> 16 -> 8 -> 4), then the logits.
  # conv1  5*5*3*32 + 32    =  2,432
  # conv2  5*5*32*32 + 32   = 25,632
  # conv3  5*5*32*64 + 64   = 51,264
  # logits 4*4*64*10 + 10   = 10,250  (the 4x4 maps after the third pool)
  #                   total = 89,578
  from jaxcnn.models import forward_flops
  model = create_model(model_config(name="convnet4", norm="none",
                                    dropout=0.0))
  params = init_shapes(model)["params"]
  assert {k: v["kernel"].shape for k, v in params.items()} == {
      "conv1": (5, 5, 3, 32), "conv2": (5, 5, 32, 32),
      "conv3": (5, 5, 32, 64), "logits": (1024, 10)}
  assert count_params(params) == 89_578
  # 2 * multiply-adds: 32*32*75*32 + 16*16*800*32 + 8*8*800*64 + 1024*10.
  assert forward_flops(model, (32, 32, 3)) == 2 * (
      32 * 32 * 75 * 32 + 16 * 16 * 800 * 32 + 8 * 8 * 800 * 64 + 1024 * 10)
  # The file's fc64 hidden layer, on request: + 1024*64+64 + (64-1024)*10.
  wide = create_model(model_config(name="convnet4", norm="none", dropout=0.0,
                                   convnet4=dict(hidden=64)))
  assert count_params(init_shapes(wide)["params"]) == 145_578


def test_convnet4_pools_max_then_average_inside_the_image():
  # The first pool takes the max of its 3x3 window, the others the mean of
  # the pixels of the window inside the image: checked on a one-channel
  # layer against numpy loops.
  from jaxcnn.models import convnet4
  x = random_normal(1, (2, 7, 7, 3))
  got = np.asarray(convnet4.avg_pool_3x3_s2(jnp.asarray(x)))
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)),
                  constant_values=np.nan)
  want = np.stack([np.stack([np.nanmean(padded[:, 2 * i:2 * i + 3,
                                               2 * j:2 * j + 3], axis=(1, 2))
                             for j in range(4)], 1) for i in range(4)], 1)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_alexnet_param_count_on_tutorial_crops():
  # The TF tutorial's 24x24 crops: fc384 is (6*6*64)*384 + 384 = 885,120, so
  # 4,864 + 102,464 + 885,120 + 73,920 + 1,930 = 1,068,298.
  model = create_model(model_config(name="alexnet", norm="lrn"))
  assert count_params(init_shapes(model, size=24)["params"]) == 1_068_298


def test_vgg16_bn_param_count():
  # Convs (no bias before BN), 9 * sum(Cin*Cout):
  #   3*64 + 64*64 + 64*128 + 128*128 + 128*256 + 2*256*256 + 256*512
  #   + 5*512*512 = 1,634,496; * 9                         = 14,710,464
  # BN scale+bias: 2 * (2*64 + 2*128 + 3*256 + 6*512)      =      8,448
  # fc1, fc2: 2 * (512*512 + 512)                           =    525,312
  # logits: 512*10 + 10                                     =      5,130
  #                                                   total = 15,249,354
  model = create_model(model_config(name="vgg", vgg=dict(depth=16),
                                    norm="batchnorm"))
  variables = init_shapes(model)
  assert count_params(variables["params"]) == 15_249_354
  # Running mean and variance, one per channel each.
  assert count_params(variables["batch_stats"]) == 8_448


def test_vgg11_bn_param_count():
  # Convs: 9 * (3*64 + 64*128 + 128*256 + 256*256 + 256*512 + 3*512*512)
  #        = 9 * 1,024,192                                  =  9,217,728
  # BN: 2 * (64 + 128 + 2*256 + 4*512)                      =      5,504
  # fc1, fc2, logits as VGG-16                              =    530,442
  #                                                   total =  9,753,674
  model = create_model(model_config(name="vgg", vgg=dict(depth=11),
                                    norm="batchnorm"))
  assert count_params(init_shapes(model)["params"]) == 9_753_674


def test_vgg13_5x5_block_param_count_and_shapes():
  # VGG-13 has two 3x3 convs per block; '5x5' makes each pair one 5x5 conv
  # with the pair's output width:
  #   25 * (3*64 + 64*128 + 128*256 + 256*512 + 512*512) = 25 * 434,368
  #                                                       = 10,859,200
  # BN: 2 * (64 + 128 + 256 + 512 + 512)                  =      2,944
  # fc1, fc2, logits as VGG-16                            =    530,442
  #                                                 total = 11,392,586
  model = create_model(model_config(name="vgg",
                                    vgg=dict(depth=13, block="5x5")))
  variables = init_shapes(model)
  assert count_params(variables["params"]) == 11_392_586
  kernels = {name: leaf["kernel"].shape
             for name, leaf in variables["params"].items()
             if name.startswith("conv")}
  assert kernels == {"conv1_1": (5, 5, 3, 64), "conv2_1": (5, 5, 64, 128),
                     "conv3_1": (5, 5, 128, 256), "conv4_1": (5, 5, 256, 512),
                     "conv5_1": (5, 5, 512, 512)}
  # The 3x3 VGG-13 it replaces: 9 * (3*64 + 64*64 + 64*128 + 128*128
  # + 128*256 + 256*256 + 256*512 + 3*512*512) = 9 * 1,044,672 = 9,402,048
  # conv weights, i.e. 18C^2 against 25C^2 per block.
  plain = create_model(model_config(name="vgg", vgg=dict(depth=13)))
  plain_convs = sum(int(np.prod(leaf["kernel"].shape))
                    for name, leaf in init_shapes(plain)["params"].items()
                    if name.startswith("conv"))
  assert plain_convs == 9_402_048


def test_vgg_5x5_block_keeps_an_odd_conv_as_3x3():
  from jaxcnn.models.vgg import POOL, conv_plan
  # VGG-16's blocks hold 2, 2, 3, 3, 3 convs.
  assert conv_plan(16, "5x5") == [
      (5, 64), POOL, (5, 128), POOL, (5, 256), (3, 256), POOL,
      (5, 512), (3, 512), POOL, (5, 512), (3, 512), POOL]
  assert conv_plan(11, "3x3") == [
      (3, 64), POOL, (3, 128), POOL, (3, 256), (3, 256), POOL,
      (3, 512), (3, 512), POOL, (3, 512), (3, 512), POOL]
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)),
                  jnp.float32)
  model = create_model(model_config(name="vgg",
                                    vgg=dict(depth=16, block="5x5"),
                                    width=0.125))
  variables = synthetic_variables(model)
  logits = model.apply(variables, x, train=False)
  assert logits.shape == (2, 10) and np.all(np.isfinite(logits))


def test_vgg16_without_bn_has_conv_biases():
  # BN's scale+bias (2 per channel) become one conv bias per channel:
  # 15,249,354 - 4,224 = 15,245,130.
  model = create_model(model_config(name="vgg", vgg=dict(depth=16),
                                    norm="none"))
  variables = init_shapes(model)
  assert set(variables) == {"params"}
  assert count_params(variables["params"]) == 15_245_130


def test_param_names_for_weight_decay_regexes():
  def paths(model):
    flat = jax.tree_util.tree_flatten_with_path(init_shapes(model)["params"])[0]
    return {"/".join(k.key for k in path) for path, _ in flat}
  alexnet = paths(create_model(model_config(name="alexnet", norm="batchnorm")))
  assert alexnet == {
      f"{layer}/{p}" for layer in ("conv1", "conv2", "fc384", "fc192", "logits")
      for p in ("kernel", "bias")} | {
      f"bn{i}/{p}" for i in (1, 2) for p in ("scale", "bias")}
  vgg = paths(create_model(model_config(name="vgg", vgg=dict(depth=16))))
  assert {"conv1_1/kernel", "bn1_1/scale", "conv5_3/kernel", "bn5_3/bias",
          "fc1/kernel", "fc2/bias", "logits/kernel"} <= vgg
  assert "conv1_1/bias" not in vgg  # BN follows, so no conv bias.


# --- Forward passes -----------------------------------------------------------

SMALL_CONFIGS = {
    "alexnet": dict(name="alexnet", width=0.25, norm="lrn", dropout=0.5),
    "vgg": dict(name="vgg", vgg=dict(depth=16), width=0.125),
    "tiny": dict(name="tiny", dropout=0.5),
    "speednet": dict(name="speednet", width=0.125, bn_scale=False),
    "convnet4": dict(name="convnet4", norm="none", dropout=0.0,
                     convnet4=dict(hidden=64)),
}
SMALL_INPUT = jnp.asarray(random_normal(0, (3, 32, 32, 3)))


@functools.lru_cache(maxsize=None)
def small_variables(name):
  """Variables of SMALL_CONFIGS[name], the same for either compute dtype."""
  return synthetic_variables(create_model(model_config(**SMALL_CONFIGS[name])))


def test_small_configs_cover_every_model():
  assert set(SMALL_CONFIGS) == set(MODEL_NAMES)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_shapes_and_dtypes(name, dtype):
  model = create_model(model_config(**SMALL_CONFIGS[name], dtype=dtype))
  variables = small_variables(name)
  for leaf in jax.tree_util.tree_leaves(variables):
    assert leaf.dtype == jnp.float32  # Parameters stay float32.

  # The trainer's calls, identical for models with and without BatchNorm.
  @jax.jit
  def eval_and_train_apply(variables, x):
    eval_logits = model.apply(variables, x, train=False)
    train_logits, new_vars = model.apply(
        {"params": variables["params"],
         "batch_stats": variables.get("batch_stats", {})},
        x, train=True, rngs={"dropout": jax.random.key(3)},
        mutable=["batch_stats"])
    return eval_logits, train_logits, new_vars
  eval_logits, train_logits, new_vars = eval_and_train_apply(variables,
                                                             SMALL_INPUT)
  for logits in (eval_logits, train_logits):
    assert logits.shape == (3, 10) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))
  if "batch_stats" in variables:
    assert (jax.tree_util.tree_structure(new_vars["batch_stats"]) ==
            jax.tree_util.tree_structure(variables["batch_stats"]))
    for leaf in jax.tree_util.tree_leaves(new_vars["batch_stats"]):
      assert leaf.dtype == jnp.float32
  else:
    assert new_vars == {"batch_stats": {}}


def test_dropout_only_in_training():
  model = create_model(model_config(**SMALL_CONFIGS["tiny"]))
  variables = small_variables("tiny")
  apply = jax.jit(lambda seed, train: model.apply(
      variables, SMALL_INPUT, train=train,
      rngs={"dropout": jax.random.key(seed)}, mutable=["batch_stats"])[0],
      static_argnums=1)
  assert not np.allclose(apply(0, True), apply(1, True))
  np.testing.assert_array_equal(apply(0, False), apply(1, False))


def test_alexnet_uses_the_tutorial_init():
  model = create_model(model_config(**SMALL_CONFIGS["alexnet"]))
  params = init_variables(model, SMALL_INPUT)["params"]
  # Truncated normals, cut at two standard deviations.
  assert np.abs(params["conv1"]["kernel"]).max() <= 2 * 5e-2
  assert np.abs(params["fc384"]["kernel"]).max() <= 2 * 0.04
  assert np.abs(params["logits"]["kernel"]).max() <= 2 / 192.0
  # A normal cut at +-2 std keeps 0.88 of its std.
  np.testing.assert_allclose(np.std(params["fc384"]["kernel"]), 0.04 * 0.88,
                             rtol=0.02)
  assert np.all(params["conv2"]["bias"] == np.float32(0.1))
  assert np.all(params["conv1"]["bias"] == 0)


# --- Fast paths against the ops they replace ----------------------------------

def value_and_grads(conv, x, kernel, cotangent):
  """Output and d(sum(out * cotangent))/d(x, kernel)."""
  out, vjp = jax.vjp(conv, x, kernel)
  return (out,) + vjp(cotangent)


# Every map size VGG-16 convolves at, plus non-square maps.
CONV_SHAPES = [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1), (2, 1),
               (1, 3)]


@pytest.mark.parametrize("size", [3, 5])
@pytest.mark.parametrize("height,width", CONV_SHAPES)
def test_shifted_conv_matches_xla_conv(height, width, size):
  x = jnp.asarray(random_normal(1, (3, height, width, 5)))
  kernel = jnp.asarray(random_normal(2, (size, size, 5, 7)))
  cotangent = jnp.asarray(random_normal(3, (3, height, width, 7)))
  got = jax.jit(lambda *a: value_and_grads(cpu_kernels.shifted_conv, *a))(
      x, kernel, cotangent)
  want = jax.jit(lambda *a: value_and_grads(cpu_kernels.xla_conv, *a))(
      x, kernel, cotangent)
  for what, g, w in zip(("output", "d/dx", "d/dkernel"), got, want):
    scale = float(np.abs(w).max())
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * scale,
                               err_msg=what)


def test_conv3x3_params_do_not_depend_on_impl():
  x = jnp.ones((2, 2, 2, 4))
  def param_shapes(module):
    shapes = jax.eval_shape(module.init, jax.random.key(0), x)
    return jax.tree_util.tree_map(lambda a: a.shape, shapes)
  shapes = {impl: param_shapes(layers.Conv3x3(6, impl=impl))
            for impl in layers.CONV_IMPLS}
  assert shapes["xla"] == shapes["shifted"] == shapes["auto"] == {
      "params": {"kernel": (3, 3, 4, 6), "bias": (6,)}}
  # And the same as nn.Conv's, so checkpoints carry over from it too.
  assert shapes["xla"] == param_shapes(nn.Conv(6, (3, 3)))


def test_auto_impl_picks_shifted_only_for_tiny_maps_on_cpu():
  on_cpu = jax.default_backend() == "cpu"
  expected = "shifted" if on_cpu else "xla"
  for size in (1, 2):
    assert layers.resolve_conv_impl("auto", size, size) == expected
  assert layers.resolve_conv_impl("auto", 4, 4) == "xla"
  # Kernels larger than the map: 5x5 on 4x4 and below.
  assert layers.resolve_conv_impl("auto", 4, 4, 5) == expected
  assert layers.resolve_conv_impl("auto", 2, 1, 5) == expected
  assert layers.resolve_conv_impl("auto", 8, 8, 5) == "xla"
  assert layers.resolve_conv_impl("shifted", 32, 32) == "shifted"
  assert layers.resolve_conv_impl("xla", 1, 1) == "xla"


def test_vgg16_same_output_with_every_conv_impl():
  variables = small_variables("vgg")
  logits = {}
  for impl in layers.CONV_IMPLS:
    model = create_model(model_config(**SMALL_CONFIGS["vgg"], conv_impl=impl))
    logits[impl] = jax.jit(lambda v, x: model.apply(v, x, train=False))(
        variables, SMALL_INPUT)
  scale = float(np.abs(logits["xla"]).max())
  for impl in ("shifted", "auto"):
    np.testing.assert_allclose(logits[impl], logits["xla"], rtol=1e-4,
                               atol=1e-4 * scale, err_msg=impl)


def test_vgg_5x5_block_same_output_with_every_conv_impl():
  # Its 5x5 convs on 4x4 maps and below go to the shifted form on CPU.
  cfg = dict(SMALL_CONFIGS["vgg"], vgg=dict(depth=13, block="5x5"))
  variables = synthetic_variables(create_model(model_config(**cfg)))
  logits = {impl: jax.jit(lambda v, x, m=create_model(
                model_config(**cfg, conv_impl=impl)): m.apply(
                    v, x, train=False))(variables, SMALL_INPUT)
            for impl in layers.CONV_IMPLS}
  scale = float(np.abs(logits["xla"]).max())
  for impl in ("shifted", "auto"):
    np.testing.assert_allclose(logits[impl], logits["xla"], rtol=1e-4,
                               atol=1e-4 * scale, err_msg=impl)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (3, 2, 2, 4), (2, 5, 7, 2)])
def test_max_pool_2x2_matches_flax_max_pool(shape):
  # Continuous random input has no ties, where the two may split the
  # gradient differently.
  x = jnp.asarray(random_normal(0, shape))
  cotangent = jnp.asarray(random_normal(
      1, (shape[0], shape[1] // 2, shape[2] // 2, shape[3])))
  flax_pool = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))
  got, got_vjp = jax.vjp(layers.max_pool_2x2, x)
  want, want_vjp = jax.vjp(flax_pool, x)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(got_vjp(cotangent)[0], want_vjp(cotangent)[0])


# --- Config errors ------------------------------------------------------------

@pytest.mark.parametrize("overrides,mentions", [
    (dict(name="resnet"), "model.name='resnet'"),
    (dict(activation="swish"), "model.activation='swish'"),
    (dict(name="vgg", vgg=dict(depth=17)), "model.vgg.depth=17"),
    (dict(name="vgg", norm="lrn"), "model.norm='lrn'"),
    (dict(name="alexnet", norm="layernorm"), "model.norm='layernorm'"),
    (dict(name="convnet4", norm="batchnorm"), "model.norm='batchnorm'"),
    (dict(name="convnet4", norm="none", dropout=0.5), "model.dropout=0.5"),
    (dict(name="convnet4", norm="none", convnet4=dict(hidden=-1)),
     "model.convnet4.hidden=-1"),
    (dict(dtype="float16"), "model.dtype='float16'"),
    (dict(conv_impl="winograd"), "model.conv_impl='winograd'"),
    (dict(name="vgg", vgg=dict(block="7x7")), "model.vgg.block='7x7'"),
    (dict(width=0.0), "model.width=0.0"),
    (dict(dropout=1.0), "model.dropout=1.0"),
])
def test_bad_config_raises_model_config_error(overrides, mentions):
  with pytest.raises(ModelConfigError) as error:
    create_model(model_config(**overrides))
  message = str(error.value)
  assert mentions in message and "\n" not in message


def test_alexnet_ignores_vgg_depth():
  # A depth vgg would refuse (and a vgg block kind) leaves alexnet as it is:
  # built, with exactly the default alexnet's variables.
  with pytest.raises(ModelConfigError, match="model.vgg.depth=17"):
    create_model(model_config(name="vgg", vgg=dict(depth=17)))
  odd = create_model(model_config(name="alexnet",
                                  vgg=dict(depth=17, block="5x5")))
  plain = create_model(model_config(name="alexnet"))
  assert type(odd) is type(plain)
  odd_shapes, plain_shapes = init_shapes(odd), init_shapes(plain)
  assert jax.tree.structure(odd_shapes) == jax.tree.structure(plain_shapes)
  assert ([(a.shape, a.dtype) for a in jax.tree.leaves(odd_shapes)]
          == [(a.shape, a.dtype) for a in jax.tree.leaves(plain_shapes)])


# --- Synchronised BatchNorm ---------------------------------------------------

def test_batchnorm_under_pmap_matches_one_device_on_whole_batch():
  num_devices = 4
  if jax.local_device_count() < num_devices:
    pytest.skip(f"needs {num_devices} devices (see conftest.py)")
  cfg = model_config(**SMALL_CONFIGS["tiny"])
  cfg.dropout = 0.0  # Same variables; no dropout to line up across devices.
  synced = create_model(cfg, bn_axis_name="batch")
  single = create_model(cfg)
  variables = small_variables("tiny")
  # Shifted means per shard, so unsynchronised stats would clearly differ.
  x = random_normal(0, (num_devices * 3, 8, 8, 3))
  x += np.arange(num_devices).repeat(3)[:, None, None, None]

  def train_apply(model, variables, x):
    return model.apply(variables, x, train=True, mutable=["batch_stats"])
  def per_device(model):
    return jax.pmap(lambda v, x: train_apply(model, v, x), axis_name="batch",
                    in_axes=(None, 0))
  x_per_device = x.reshape(num_devices, 3, 8, 8, 3)
  logits, new_vars = per_device(synced)(variables, x_per_device)
  want_logits, want_vars = jax.jit(lambda v, x: train_apply(single, v, x))(
      variables, x)

  np.testing.assert_allclose(logits.reshape(-1, 10), want_logits,
                             rtol=1e-5, atol=1e-5)
  for device in range(num_devices):
    got = jax.tree_util.tree_map(lambda a: a[device], new_vars["batch_stats"])
    jax.tree_util.tree_map(
        lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6),
        got, want_vars["batch_stats"])
  # Without the axis name each device keeps its own shard's statistics, which
  # this input makes clearly different: the comparison above can fail.
  _, unsynced_vars = per_device(single)(variables, x_per_device)
  assert not np.allclose(unsynced_vars["batch_stats"]["bn1"]["mean"][0],
                         want_vars["batch_stats"]["bn1"]["mean"], atol=1e-3)


# --- The registry: what each model file declares ------------------------------

from jaxcnn import models as models_lib  # noqa: E402
from jaxcnn import stats  # noqa: E402


def test_registry_holds_every_model_file():
  assert tuple(models_lib.REGISTRY) == models_lib.MODEL_FILES == MODEL_NAMES
  for name, spec in models_lib.REGISTRY.items():
    assert spec.name == name and spec.norms and spec.summary
    assert "\n" not in spec.summary


def test_config_has_common_fields_and_one_section_per_model_with_own_fields():
  model = base_config().model
  common = [k for k in model if not isinstance(model[k], type(model))]
  assert tuple(common) == models_lib.COMMON_FIELDS
  sections = {k: model[k].to_dict() for k in model if k not in common}
  # tiny has no fields of its own, so no section.
  assert set(sections) == {"alexnet", "vgg", "speednet", "convnet4"}
  assert sections["vgg"] == {"depth": 16, "block": "3x3"}
  assert sections["convnet4"] == {"hidden": 0}
  assert sections["speednet"] == {
      "widths": [64, 256, 256], "logit_scale": 1.0 / 9.0,
      "head_init_std": 0.0, "whiten": True, "whiten_images": 5000,
      "group_activation": "gelu"}
  # The TF tutorial's tf.nn.lrn(x, 4, bias=1.0, alpha=0.001 / 9.0, beta=0.75).
  assert sections["alexnet"] == {"lrn_depth_radius": 4, "lrn_bias": 1.0,
                                 "lrn_alpha": 0.001 / 9.0, "lrn_beta": 0.75}
  for name, section in sections.items():
    assert section == {k: list(v) if isinstance(v, tuple) else v
                       for k, v in models_lib.REGISTRY[name].config.items()}


def test_unknown_model_name_lists_the_registered_ones():
  with pytest.raises(ModelConfigError) as error:
    create_model(model_config(name="vg"))
  assert str(error.value) == (
      "model.name='vg' is not a registered model; choose one of 'alexnet', "
      "'vgg', 'speednet', 'convnet4', 'tiny'; did you mean 'vgg'?")


def test_unknown_field_of_a_models_section_is_refused():
  with pytest.raises(ModelConfigError) as error:
    create_model(model_config(name="vgg", vgg=dict(dept=11)))
  message = str(error.value)
  assert "model.vgg.dept is not a field of vgg" in message
  assert "did you mean model.vgg.depth?" in message and "\n" not in message


def test_alexnet_lrn_constants_come_from_its_section():
  default = create_model(model_config(**SMALL_CONFIGS["alexnet"]))
  assert (default.lrn_depth_radius, default.lrn_bias, default.lrn_alpha,
          default.lrn_beta) == (4, 1.0, 0.001 / 9.0, 0.75)
  other = create_model(model_config(
      **SMALL_CONFIGS["alexnet"],
      alexnet=dict(lrn_depth_radius=2, lrn_alpha=0.3)))
  assert (other.lrn_depth_radius, other.lrn_alpha) == (2, 0.3)
  variables = small_variables("alexnet")
  a = default.apply(variables, SMALL_INPUT, train=False)
  b = other.apply(variables, SMALL_INPUT, train=False)
  assert not np.allclose(a, b)  # LRN really reads them.
  with pytest.raises(ModelConfigError, match="model.alexnet.lrn_bias=0.0"):
    create_model(model_config(name="alexnet", alexnet=dict(lrn_bias=0.0)))


def module_names(model):
  """The top-level modules of one traced forward pass (what the statistics
  collector reads)."""
  x = jnp.zeros((1, 32, 32, 3), jnp.float32)
  variables = init_shapes(model)
  _, captured = jax.eval_shape(
      lambda v: model.apply(v, x, train=False, capture_intermediates=True,
                            mutable=["intermediates"]), variables)
  return list(captured["intermediates"].keys())


VGG11_CONVS = ["conv1_1", "conv2_1", "conv3_1", "conv3_2", "conv4_1",
               "conv4_2", "conv5_1", "conv5_2"]


@pytest.mark.parametrize("cfg,want", [
    # BatchNorm after the activation and the pooling: the layer's own output.
    (dict(name="alexnet", norm="lrn"),
     [(n, n) for n in ("conv1", "conv2", "fc384", "fc192")]),
    (dict(name="alexnet", norm="batchnorm"),
     [(n, n) for n in ("conv1", "conv2", "fc384", "fc192")]),
    # conv -> BatchNorm -> activation: the BatchNorm's output.
    (dict(name="vgg", vgg=dict(depth=11), width=0.125),
     [(c, "bn" + c[4:]) for c in VGG11_CONVS] + [("fc1", "fc1"),
                                                  ("fc2", "fc2")]),
    (dict(name="vgg", vgg=dict(depth=11), width=0.125, norm="none"),
     [(c, c) for c in VGG11_CONVS] + [("fc1", "fc1"), ("fc2", "fc2")]),
    (dict(name="tiny"), [("conv1", "bn1"), ("conv2", "bn2")]),
    (dict(name="tiny", norm="lrn"), [("conv1", "conv1"), ("conv2", "conv2")]),
    (dict(name="convnet4", norm="none", dropout=0.0, convnet4=dict(hidden=64)),
     [(n, n) for n in ("conv1", "conv2", "conv3", "fc1")]),
    # Its convs sit inside the groups: no top-level layer to look at.
    (dict(name="speednet", width=0.125), []),
])
def test_stats_layers_are_listed_by_the_model(cfg, want):
  model = create_model(model_config(**cfg))
  names = module_names(model)
  assert stats.activation_layers(cfg["name"], names) == want
  # In the order of the layers, as the per-layer tables sort them.
  labels = [label for label, _ in want]
  assert sorted(reversed(labels), key=stats.layer_order) == labels


@pytest.mark.parametrize("cfg,want", [
    (dict(name="vgg"), "vgg-16 (batchnorm, relu)"),
    (dict(name="vgg", vgg=dict(depth=13, block="5x5"), width=0.5),
     "vgg-13 5x5 x0.5 (batchnorm, relu)"),
    (dict(name="alexnet", norm="lrn", activation="tanh"),
     "alexnet (lrn, tanh)"),
    (dict(name="speednet", width=0.125, activation="relu"),
     "speednet 64/256/256 x0.125 (batchnorm, gelu)"),
    (dict(name="tiny", norm="none"), "tiny (none, relu)"),
    (dict(name="convnet4", norm="none", activation="tanh"),
     "convnet4 (tanh)"),
])
def test_model_text_is_the_models_own_line(cfg, want):
  from jaxcnn import evaluation
  config = base_config()
  for key, value in cfg.items():
    config.model[key] = value
  assert models_lib.model_text(config.model) == want
  assert evaluation.model_text(config) == want


def test_hooks_are_declared_by_the_model():
  speednet_spec = models_lib.REGISTRY["speednet"]
  assert speednet_spec.stem_params == ("whiten/kernel", "whiten/bias")
  assert speednet_spec.data_init.num_images({"whiten_images": 7}) == 7
  for name in ("alexnet", "vgg", "tiny"):
    spec = models_lib.REGISTRY[name]
    assert spec.stem_params == () and spec.data_init is None
  assert models_lib.stem_params({"name": "tiny"}) == ()


# --- Adding a model: one file and its registration ----------------------------


class Throwaway(layers.ModelBase):
  """A model defined here only: conv -> relu -> mean -> logits."""
  features: int = 4

  @nn.compact
  def __call__(self, x, train: bool, stem_frozen: bool = False):
    x = nn.relu(nn.Conv(layers.scaled(self.features, self.width), (3, 3),
                        name="conv1")(x))
    if stem_frozen:
      x = jax.lax.stop_gradient(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="logits")(x)


SEEN_BY_INIT = []


def _throwaway_init(model, params, images):
  # A data-dependent init: conv1's bias starts at minus the images' mean.
  SEEN_BY_INIT.append(images.shape)
  bias = jnp.full_like(params["conv1"]["bias"], -float(np.mean(images)))
  return {**params, "conv1": {**params["conv1"], "bias": bias}}


def _build_throwaway(common, own):
  if own["features"] < 1:
    raise ModelConfigError(
        f"model.throwaway.features={own['features']!r} must be >= 1")
  return Throwaway(features=own["features"], **common.module_kwargs)


THROWAWAY = models_lib.ModelSpec(
    name="throwaway", summary="a model defined in a test",
    norms=("none",), build=_build_throwaway,
    describe=lambda m: f"throwaway {m['throwaway']['features']}",
    config=dict(features=4, init_images=32),
    data_init=models_lib.DataInit(
        num_images=lambda own: own["init_images"], apply=_throwaway_init),
    stem_params=("conv1/kernel", "conv1/bias"))


@pytest.fixture
def throwaway():
  models_lib.register(THROWAWAY)
  SEEN_BY_INIT.clear()
  try:
    yield THROWAWAY
  finally:
    models_lib.unregister("throwaway")


def test_a_registered_model_trains_through_the_normal_path(throwaway,
                                                           tmp_path):
  from jaxcnn import config as config_lib, evaluation, reporting, trainer
  assert "throwaway" in models_lib.MODEL_NAMES
  # Its section is in the defaults, so --set reaches it, typed.
  config = config_lib.apply_overrides(config_lib.load_experiment("test"), [
      "model.name=throwaway", "model.norm=none", "model.throwaway.features=6",
      "train.num_steps=6", "train.log_every_steps=3",
      "train.collect_stats=true", "train.progress_bar=false"])
  assert config.model.throwaway.to_dict() == {"features": 6,
                                              "init_images": 32}
  with pytest.raises(config_lib.ConfigError, match="expected an integer"):
    config_lib.apply_overrides(config, ["model.throwaway.features=many"])
  setup = trainer.build(config)
  assert isinstance(setup.model, Throwaway) and setup.model.features == 6
  # conv1 3*3*3*6 + 6 = 168; logits 6*10 + 10 = 70.
  state = trainer.create_train_state(setup)
  assert count_params(state.params) == 238
  assert SEEN_BY_INIT == [(32, 32, 32, 3)]
  np.testing.assert_allclose(
      state.params["conv1"]["bias"],
      -np.mean(state_lib_init_sample(setup, 32)), rtol=1e-6)
  assert models_lib.stem_params(config.model) == THROWAWAY.stem_params

  result = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert int(result["step"]) == 6
  assert evaluation.model_text(config) == "throwaway 6"
  # The statistics found its layer through the registry.
  record = reporting.read_metrics(tmp_path / "run", "stats")[-1]
  assert "dead_fraction/conv1" in record and "grad_norm/logits" in record
  # Its own checks are one line too.
  with pytest.raises(ModelConfigError, match="model.throwaway.features=0"):
    create_model(model_config(name="throwaway", norm="none",
                              throwaway=dict(features=0)))


def state_lib_init_sample(setup, count):
  from jaxcnn import state as state_lib
  return state_lib.init_sample(setup, count)
