"""The speed recipe's parts against formulas written out here, and a
CPU-sized speedrun that learns. Runs on 4 fake CPU devices (conftest.py)."""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import (augment, config as config_lib, optim, parallel, steps,
                    trainer)
from jaxcnn import groups
from jaxcnn.defaults import base_config
from jaxcnn.groups import group
from jaxcnn.models import count_params, create_model, speednet


def correlated_images(n=64, size=12, seed=0):
  """Normalised-looking images with strongly correlated neighbouring pixels
  and channels (a smoothed random field plus a shared colour component)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, size + 2, size + 2, 3))
  x = (x[:, 1:-1, 1:-1] + x[:, :-2, 1:-1] + x[:, 2:, 1:-1] + x[:, 1:-1, :-2]
       + x[:, 1:-1, 2:]) / 5
  x = x + x.mean(axis=-1, keepdims=True) * 2
  return x.astype(np.float32)


def patch_moment_of_output(images, kernel):
  """Second moment over positions of a VALID conv's output channels,
  computed with lax.conv (not the code under test's patch extraction)."""
  y = jax.lax.conv_general_dilated(
      jnp.asarray(images), jnp.asarray(kernel), (1, 1), "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST)
  flat = np.asarray(y, np.float64).reshape(-1, kernel.shape[-1])
  return flat.T @ flat / len(flat)


# --- The whitening layer ------------------------------------------------------


def test_whitening_kernel_whitens_its_data():
  images = correlated_images()
  # Without eps the first 12 output channels are exactly white: identity
  # second moment; the other 12 are their negatives.
  kernel = speednet.whitening_kernel(images, eps=0.0)
  assert kernel.shape == (2, 2, 3, 24)
  moment = patch_moment_of_output(images, kernel)
  np.testing.assert_allclose(moment[:12, :12], np.eye(12), atol=2e-3)
  np.testing.assert_allclose(kernel[..., 12:], -kernel[..., :12])
  # With eps each channel's variance is lambda / (lambda + eps) (the input's
  # patch moment eigenvalues, from numpy here), still uncorrelated.
  views = [images[:, dy:images.shape[1] - 1 + dy, dx:images.shape[2] - 1 + dx]
           for dy in (0, 1) for dx in (0, 1)]
  patches = np.stack(views, axis=3).reshape(-1, 12).astype(np.float64)
  eigenvalues = np.sort(np.linalg.eigvalsh(patches.T @ patches
                                           / len(patches)))[::-1]
  eps = 0.05
  moment = patch_moment_of_output(images, speednet.whitening_kernel(images,
                                                                    eps=eps))
  np.testing.assert_allclose(np.diag(moment)[:12],
                             eigenvalues / (eigenvalues + eps), rtol=5e-3)
  off = moment[:12, :12] - np.diag(np.diag(moment[:12, :12]))
  assert np.max(np.abs(off)) < 2e-3
  # The input itself is far from white (so the check above means something).
  assert np.max(eigenvalues) / np.min(eigenvalues) > 20


def test_speednet_init_from_data_sets_the_frozen_whitening_layer():
  model = create_model({"name": "speednet", "width": 0.125,
                        "bn_scale": False})
  images = correlated_images(n=16, size=32)
  # Jitted: op by op, init and gradient take tens of seconds on the CPU.
  init = jax.jit(lambda x: model.init({"params": jax.random.key(0)}, x,
                                      train=False))
  variables = init(images[:2])
  params = model.init_from_data(variables["params"], images)
  np.testing.assert_array_equal(params["whiten"]["kernel"],
                                speednet.whitening_kernel(images))
  # The kernel gets no gradient; its bias does.

  def loss(p):
    out, _ = model.apply({"params": p, "batch_stats": variables["batch_stats"]},
                         images, train=True, mutable=["batch_stats"])
    return jnp.sum(out ** 2)

  grads = jax.jit(jax.grad(loss))(params)
  assert np.all(np.asarray(grads["whiten"]["kernel"]) == 0)
  assert np.any(np.asarray(grads["whiten"]["bias"]) != 0)
  # whiten=False: an ordinary trainable first layer, untouched by the data.
  plain = create_model({"name": "speednet", "width": 0.125,
                        "speednet": {"whiten": False}})
  p2 = jax.eval_shape(lambda x: plain.init({"params": jax.random.key(0)}, x,
                                           train=False), images[:2])["params"]
  assert plain.init_from_data(p2, images) is p2


def test_speednet_shapes_and_parameter_count():
  model = create_model({"name": "speednet", "bn_scale": False})
  x = jnp.zeros((2, 32, 32, 3))
  variables = jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0)}, x, train=False))
  # whiten 2*2*3*24 + 24 = 312; group1 3*3*24*64 + 64 + 3*3*64*64 + 64 =
  # 50,816; group2 3*3*64*256 + 256 + 3*3*256*256 + 256 = 737,792; group3
  # 2 * (3*3*256*256 + 256) = 1,180,160; head 256*10 = 2,560 (no bias).
  assert count_params(variables["params"]) == 1_971_640
  assert "scale" not in variables["params"]["group1"]["bn1"]
  out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert out.shape == (2, 10)
  with_scale = create_model({"name": "speednet", "bn_scale": True})
  v2 = jax.eval_shape(
      lambda: with_scale.init({"params": jax.random.key(0)}, x, train=False))
  assert count_params(v2["params"]) == 1_971_640 + 64 * 2 + 256 * 4


def test_dirac_init_passes_the_input_through():
  kernel = speednet.dirac_init(jax.random.key(0), (3, 3, 4, 6))
  x = jax.random.normal(jax.random.key(1), (2, 5, 5, 4))
  y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(y[..., :4], x, atol=1e-6)
  assert not np.allclose(kernel[..., 4:], 0)  # The rest: the default init.


def test_bn_momentum_reaches_the_running_statistics():
  model = create_model({"name": "tiny", "bn_momentum": 0.4})
  x = jax.random.normal(jax.random.key(0), (8, 8, 8, 3))
  # Jitted: op by op, the init and apply compiled a program per op.
  v = jax.jit(lambda x: model.init({"params": jax.random.key(1)}, x,
                                   train=False))(x)
  _, new = jax.jit(lambda v, x: model.apply(
      v, x, train=True, mutable=["batch_stats"],
      rngs={"dropout": jax.random.key(2)}))(v, x)
  pre = jax.lax.conv_general_dilated(
      x, v["params"]["conv1"]["kernel"], (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  batch_mean = np.asarray(pre.mean(axis=(0, 1, 2)))
  # running = 0.4 * old (0) + 0.6 * batch mean.
  np.testing.assert_allclose(new["batch_stats"]["bn1"]["mean"],
                             0.6 * batch_mean, rtol=1e-4, atol=1e-6)


# --- Augmentation and TTA ------------------------------------------------------


def test_alternating_flip_flips_exactly_the_odd_epochs():
  key = jax.random.key(3)
  ids = jnp.arange(1000)
  base = np.asarray(augment.alternating_flips(key, ids, 0))
  assert 400 < base.sum() < 600  # A fair coin per image.
  for epoch in range(1, 6):
    flips = np.asarray(augment.alternating_flips(key, ids, epoch))
    np.testing.assert_array_equal(flips, base ^ (epoch % 2 == 1))
  # Through the crop-and-flip function: an image is mirrored iff its flag.
  images = jax.random.randint(jax.random.key(4), (6, 4, 5, 3), 0, 255
                              ).astype(jnp.uint8)
  ids6 = jnp.array([5, 17, 2, 900, 33, 41])
  for epoch in (2, 3):
    out = augment.random_crop_flip(
        images, jax.random.key(5), global_batch=6, offset=0, crop=False,
        padding=0, flip=True, flip_mode="alternate", epoch=epoch,
        example_ids=ids6, seed_key=key)
    expect = np.asarray(augment.alternating_flips(key, ids6, epoch))
    for i in range(6):
      want = images[i, :, ::-1] if expect[i] else images[i]
      np.testing.assert_array_equal(out[i], want)


def test_reflect_padded_crop_is_a_shift_of_the_reflected_image():
  images = jax.random.randint(jax.random.key(0), (32, 6, 6, 1), 0, 255
                              ).astype(jnp.uint8)
  key = jax.random.key(7)
  out = augment.random_crop_flip(images, key, global_batch=32, offset=0,
                                 crop=True, padding=2, flip=False,
                                 pad_mode="reflect")
  shifts = jax.random.randint(jax.random.split(key)[0], (32, 2), 0, 5)
  padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)),
                  mode="reflect")
  for i in range(32):
    dy, dx = np.asarray(shifts[i])
    np.testing.assert_array_equal(out[i], padded[i, dy:dy + 6, dx:dx + 6])


def test_tta_of_a_flip_invariant_model_equals_no_tta():
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
  w = jax.random.normal(jax.random.key(1), (3, 10))

  def symmetric(x):  # Sum over columns: the mirror image gives the same.
    return jnp.einsum("bhwc,ck->bk", x + x[:, :, ::-1], w)

  def asymmetric(x):
    return jnp.einsum("bhwc,ck->bk", x * jnp.arange(8.0)[:, None], w)

  np.testing.assert_allclose(augment.tta_logits(symmetric, x, "mirror"),
                             symmetric(x), rtol=1e-6)
  assert not np.allclose(augment.tta_logits(asymmetric, x, "mirror"),
                         asymmetric(x))
  # mirror_translate against numpy: half the mirror logits plus half the mean
  # of the mirror logits of the two reflect-padded one-pixel shifts.
  xp = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  mirror = lambda v: 0.5 * asymmetric(v) + 0.5 * asymmetric(v[:, :, ::-1])
  expect = 0.5 * mirror(x) + 0.25 * (mirror(xp[:, :8, :8])
                                     + mirror(xp[:, 2:, 2:]))
  np.testing.assert_allclose(
      augment.tta_logits(asymmetric, x, "mirror_translate"), expect,
      rtol=1e-5, atol=1e-5)
  # hiverge's: the six views (x, its top-left and bottom-right crops of the
  # padded image, and their mirrors) averaged alike.
  views = [np.asarray(x), xp[:, :8, :8], xp[:, 2:, 2:]]
  views += [v[:, :, ::-1] for v in views]
  np.testing.assert_allclose(
      augment.tta_logits(asymmetric, x, "mirror_translate_mean"),
      np.mean([asymmetric(v) for v in views], axis=0), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="test-time augmentation"):
    augment.tta_logits(symmetric, x, "rotate")


# --- Loss, schedule, optimizer parts --------------------------------------------


def test_label_smoothing_matches_formula():
  logits = jax.random.normal(jax.random.key(0), (5, 10))
  labels = jnp.array([0, 3, 9, 2, 2])
  a = 0.2
  logp = np.asarray(jax.nn.log_softmax(logits))
  expect = -((1 - a) * logp[np.arange(5), np.asarray(labels)]
             + a * logp.mean(axis=1))
  np.testing.assert_allclose(
      steps.smoothed_cross_entropy(logits, labels, a), expect, rtol=1e-5)
  np.testing.assert_array_equal(
      steps.smoothed_cross_entropy(logits, labels, 0.0),
      steps.cross_entropy(logits, labels))


def one_group_cfg(optimizer="sgd", lr=2.0, **fields):
  cfg = base_config().optim
  cfg.groups = (group("all", r".*", optimizer, lr, **fields),)
  return cfg


def test_triangular_schedule_matches_airbench_interpolation():
  cfg = one_group_cfg()
  cfg.schedule = "triangular"
  schedule = optim.make_run_schedule(cfg, 48, total_steps=476)
  top = int(0.23 * 476)
  steps = np.arange(477)
  expect = 2.0 * np.interp(steps, [0, top, 476], [0.2, 1.0, 0.07])
  np.testing.assert_allclose(schedule(jnp.asarray(steps)), expect, rtol=1e-5)


def test_per_1024_units():
  cfg = config_lib.load_experiment("speedrun_airbench94").optim
  rest = cfg.groups[-1]
  lr, l2 = optim.step_hparams(optim.group_schedule_config(cfg, rest), 1024)
  # airbench: lr 11.5 / (1024 * (1 + 1 / 0.15)) per example of a summed loss,
  # times 1024 for our mean loss; L2 coefficient wd / lr.
  assert math.isclose(lr, 11.5 * 1024 / (1024 * (1 + 1 / 0.15)), rel_tol=1e-9)
  assert math.isclose(l2, 0.0153 / 11.5, rel_tol=1e-9)
  lr512, l2_512 = optim.step_hparams(optim.group_schedule_config(cfg, rest),
                                     512)
  assert math.isclose(lr512, lr / 2) and l2_512 == l2
  # The BatchNorm biases: 64x the rate, the L2 coefficient / 64 (airbench's
  # lr_biases = 64 lr, weight_decay = wd / lr_biases), exactly.
  bias = next(g for g in cfg.groups if g.name == "bn_bias")
  lr_b, l2_b = optim.step_hparams(optim.group_schedule_config(cfg, bias), 1024)
  assert (lr_b, l2_b) == (64 * lr, l2 / 64)
  adam = groups.with_optimizer(rest, "adam")
  with pytest.raises(optim.OptimConfigError, match="per_1024"):
    optim.step_hparams(optim.group_schedule_config(cfg, adam), 1024)


def test_bias_group_and_freezing_in_the_chain():
  params = {"bn1": {"bias": jnp.ones(3)}, "conv": {"kernel": jnp.ones(3)},
            "whiten": {"kernel": jnp.ones(3), "bias": jnp.ones(3)}}
  cfg = base_config().optim
  cfg.schedule = "constant"
  cfg.groups = (
      group("whiten_kernel", r"^whiten/kernel$", "sgd", 0.1,
            frozen_from_epochs=0),
      # 2 of the 10 steps an epoch.
      group("whiten_bias", r"^whiten/bias$", "sgd", 0.1, weight_decay=0.01,
            frozen_from_epochs=0.2),
      group("bn_bias", r"(^|/)bn[^/]*/bias$", "sgd", 6.4,
            weight_decay=0.01 / 64),
      group("rest", r".*", "sgd", 0.1, weight_decay=0.01))
  tx = optim.make_optimizer(cfg, 10)
  state = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  for step in range(3):
    updates, state = tx.update(grads, state, params)
    # BN bias: 64 lr * (g + wd / 64 w) = lr * (64 g + wd w); others:
    # lr * (g + wd w).
    np.testing.assert_allclose(updates["bn1"]["bias"], -0.1 * (64 * 0.5 + 0.01),
                               rtol=1e-6)
    np.testing.assert_allclose(updates["conv"]["kernel"], -0.1 * (0.5 + 0.01),
                               rtol=1e-6)
    np.testing.assert_array_equal(updates["whiten"]["kernel"], 0.0)
    bias = -0.1 * (0.5 + 0.01) if step < 2 else 0.0
    np.testing.assert_allclose(updates["whiten"]["bias"], bias, rtol=1e-6)


def test_muon_orthogonalizes_conv_kernels():
  params = {"conv": {"kernel": jnp.ones((3, 3, 4, 8)) * 0.1},
            "bn": {"bias": jnp.zeros(8)}}
  assert optim._muon_spec(params["conv"]["kernel"]).reduction_axis == (0, 1, 2)
  cfg = base_config().optim
  cfg.schedule = "constant"
  cfg.groups = (group("filters", r"kernel$", "muon", 0.02),
                group("rest", r".*", "adam", 0.002))
  tx = optim.make_optimizer(cfg, 10)
  grads = {"conv": {"kernel": jax.random.normal(jax.random.key(0),
                                                (3, 3, 4, 8))},
           "bn": {"bias": jnp.ones(8)}}
  updates, _ = tx.update(grads, tx.init(params), params)
  u = np.asarray(updates["conv"]["kernel"]).reshape(36, 8)
  # Newton-Schulz leaves the singular values near one (scaled by lr): far
  # closer to each other than the gradient's.
  sv = np.linalg.svd(u, compute_uv=False)
  g_sv = np.linalg.svd(np.asarray(grads["conv"]["kernel"]).reshape(36, 8),
                       compute_uv=False)
  assert sv.max() / sv.min() < 2.0 < g_sv.max() / g_sv.min()
  # Adam's first step: lr * sign(g) for the bias.
  np.testing.assert_allclose(updates["bn"]["bias"], -0.002, rtol=1e-4)


def _numpy_newton_schulz(m, steps):
  a, b, c = 3.4445, -4.7750, 2.0315
  x = m / (np.linalg.norm(m) + 1e-7)
  tall = x.shape[0] > x.shape[1]
  x = x.T if tall else x
  for _ in range(steps):
    gram = x @ x.T
    x = a * x + (b * gram + c * gram @ gram) @ x
  return x.T if tall else x


def test_muon_nesterov_equals_airbench94_muon_loop():
  # airbench94_muon's optimizers replayed in numpy on PyTorch's layouts: for
  # a conv kernel [Cout, Cin, K, K], buf = m buf + g, g' = g + m buf, the
  # weight rescaled to norm sqrt(Cout), then w -= lr NS(g' as Cout x rest);
  # every other parameter PyTorch's Nesterov SGD with L2 (the bias at a
  # tenth of the head's rate, with ten times its L2 coefficient).
  cfg = base_config().optim
  cfg.schedule = "constant"
  cfg.groups = (
      group("filters", r"conv\d/kernel$", "muon", 0.24, momentum=0.6,
            ns_steps=3, normalize=True),
      group("bias", r"bias$", "nesterov", 0.24 * 5.0 * 0.1, momentum=0.85,
            weight_decay=0.01 / 0.1),
      group("head", r"^head/", "nesterov", 0.24 * 5.0, momentum=0.85,
            weight_decay=0.01))
  tx = optim.make_optimizer(cfg, 10)
  rng = np.random.default_rng(0)
  shapes = {"g1": {"conv1": {"kernel": (3, 3, 4, 8)}, "bn1": {"bias": (8,)}},
            "head": {"kernel": (8, 10)}}
  is_shape = lambda x: isinstance(x, tuple) and all(isinstance(i, int)
                                                    for i in x)
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32),
                        shapes, is_leaf=is_shape)
  state = tx.init(params)
  ref = {k: np.asarray(v, np.float64) for k, v in
         [("k", params["g1"]["conv1"]["kernel"]),
          ("b", params["g1"]["bn1"]["bias"]), ("h", params["head"]["kernel"])]}
  buf = {k: np.zeros_like(v) for k, v in ref.items()}
  buf["k"] = buf["k"].transpose(3, 2, 0, 1)
  for _ in range(3):
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape),
                                               jnp.float32), params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    g = np.asarray(grads["g1"]["conv1"]["kernel"], np.float64)
    g = g.transpose(3, 2, 0, 1)  # HWIO -> PyTorch's OIHW.
    buf["k"] = 0.6 * buf["k"] + g
    step = _numpy_newton_schulz((g + 0.6 * buf["k"]).reshape(8, -1), 3)
    w = ref["k"].transpose(3, 2, 0, 1)
    w = w * np.sqrt(8) / np.linalg.norm(w) - 0.24 * step.reshape(w.shape)
    ref["k"] = w.transpose(2, 3, 1, 0)
    for key, grad, factor in (("b", grads["g1"]["bn1"]["bias"], 0.1),
                              ("h", grads["head"]["kernel"], 1.0)):
      d = factor * np.asarray(grad, np.float64) + 0.01 * ref[key]
      buf[key] = 0.85 * buf[key] + d
      ref[key] = ref[key] - 0.24 * 5.0 * (d + 0.85 * buf[key])
    np.testing.assert_allclose(params["g1"]["conv1"]["kernel"], ref["k"],
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(params["g1"]["bn1"]["bias"], ref["b"],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(params["head"]["kernel"], ref["h"],
                               rtol=1e-5, atol=1e-6)
  assert np.linalg.norm(params["g1"]["conv1"]["kernel"]) != pytest.approx(
      np.sqrt(8), rel=1e-3)  # The step moved it off the normalized sphere.


class _HivergeNormClock:
  """hiverge's Muon.step bookkeeping (cifar10_speedrun.py, lines 149-195),
  transcribed: which of its steps rescale the kernels."""

  def __init__(self, total_train_steps):
    self.step_count, self.last_norm_step = 0, 0
    self.total_train_steps = total_train_steps

  def step(self):
    self.step_count += 1
    progress = self.step_count / self.total_train_steps
    norm_freq = 2 + int(15 * progress)
    do_norm_scaling = self.step_count - self.last_norm_step >= norm_freq
    if do_norm_scaling:
      self.last_norm_step = self.step_count
    return do_norm_scaling


def test_normalize_steps_are_hiverges_rising_intervals():
  # By hand, T = 8, every 1, rise 3: the interval at s is 1 + int(3 s / 8):
  # 1, 1, 2, 2, 2, 3, 3, 4; s = 1, 2 rescale, then 4 (2 after 2), 7 (3 after
  # 4); updates 0, 1, 3, 6.
  np.testing.assert_array_equal(
      np.flatnonzero(optim.normalize_steps(1, 3, 8)), [0, 1, 3, 6])
  # Without a rise: every `every`-th update.
  np.testing.assert_array_equal(
      np.flatnonzero(optim.normalize_steps(3, 0, 10)), [2, 5, 8])
  assert optim.normalize_steps(1, 0, 5).all()
  # hiverge's own numbers: its 243 steps, every 2, rise 15.
  clock = _HivergeNormClock(243)
  theirs = [clock.step() for _ in range(243)]
  ours = optim.normalize_steps(2, 15, 243)
  np.testing.assert_array_equal(ours, theirs)
  gaps = np.diff(np.flatnonzero(ours))
  assert gaps[0] == 2 and gaps[-1] >= 16 and (np.diff(gaps) >= 0).all()


@pytest.mark.parametrize("every,rise,picked", [(1, 3, [0, 1, 3, 6]),
                                               (3, 0, [2, 5])])
def test_muon_rescales_only_on_the_picked_updates(every, rise, picked):
  # A kernel replayed in numpy over 8 updates: buf = m buf + g, then the
  # weight rescaled to norm sqrt(Cout) on the picked updates only, then
  # w -= lr NS(g + m buf).
  cfg = base_config().optim
  cfg.schedule = "constant"
  cfg.groups = (group("filters", r"kernel$", "muon", 0.1, momentum=0.5,
                      ns_steps=3, normalize=True, normalize_every=every,
                      normalize_every_rise=rise),)
  tx = optim.make_optimizer(cfg, 4, total_steps=8)
  rng = np.random.default_rng(1)
  params = {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)),
                                           jnp.float32)}}
  state = tx.init(params)
  w = np.asarray(params["conv"]["kernel"], np.float64)
  buf = np.zeros_like(w)
  for k in range(8):
    g = rng.normal(size=w.shape)
    updates, state = tx.update({"conv": {"kernel": jnp.asarray(g, jnp.float32)}},
                               state, params)
    params = optax.apply_updates(params, updates)
    buf = 0.5 * buf + g
    step = _numpy_newton_schulz((g + 0.5 * buf).reshape(-1, 4), 3)
    # sqrt(Cout) = 2.
    scale = 2.0 / np.linalg.norm(w) if k in picked else 1.0
    w = w * scale - 0.1 * step.reshape(w.shape)
    np.testing.assert_allclose(params["conv"]["kernel"], w, rtol=1e-4,
                               atol=1e-5, err_msg=f"update {k}")
  # The default (every update) keeps no count: its checkpoints keep their
  # layout.
  cfg.groups = (group("filters", r"kernel$", "muon", 0.1, normalize=True),)
  default = optim.make_optimizer(cfg, 4, total_steps=8).init(params)
  assert len(jax.tree.leaves(state)) == len(jax.tree.leaves(default)) + 1
  # A rising interval needs the run's length.
  cfg.groups = (group("filters", r"kernel$", "muon", 0.1, normalize=True,
                      normalize_every_rise=2),)
  with pytest.raises(optim.OptimConfigError, match="needs the run's total"):
    optim.make_optimizer(cfg, 4)


def test_muon_options_reject_bad_values():
  params = {"conv": {"kernel": jnp.zeros((3, 3, 2, 4))},
            "bn": {"bias": jnp.zeros(4)}}
  for groups_, message in (
      ((group("filters", r"kernel$", "muon", 0.1, ns_steps=0),
        group("rest", r".*", "sgd", 0.1)),
       "optim.groups.filters.ns_steps must be an integer >= 1"),
      ((group("filters", r"kernel$", "muon", 0.1, normalize_every=0),
        group("rest", r".*", "sgd", 0.1)),
       "optim.groups.filters.normalize_every must be an integer >= 1, got 0"),
      ((group("filters", r"kernel$", "muon", 0.1, normalize_every_rise=1.5),
        group("rest", r".*", "sgd", 0.1)),
       "optim.groups.filters.normalize_every_rise must be an integer >= 0"),
      ((group("filters", r".*", "muon", 0.1),),
       "muon trains 2-D and 4-D parameters only, not bn/bias (4,)"),
      ((group("filters", r"(", "muon", 0.1),),
       "optim.groups.filters.match '(' is not a valid regex")):
    cfg = base_config().optim
    cfg.groups = groups_
    with pytest.raises(optim.OptimConfigError, match=re.escape(message)):
      optim.make_optimizer(cfg, 10).init(params)


def test_speedrun_groups_are_airbench94_muons_param_configs():
  # airbench94_muon (lines 340-405 of its file): batch 2000, wd 2e-6 * 2000,
  # param_configs [whiten.bias: lr 0.053, wd / 0.053; norm biases: lr 0.053,
  # wd / 0.053; head.weight: lr 0.67, wd / 0.67] in SGD(momentum 0.85,
  # nesterov); Muon(filters, lr 0.24, momentum 0.6); its loss summed over
  # the batch (jaxcnn's is the mean: SGD rates times the batch). The
  # whitening bias's rate falls to 0 over 3 epochs, the others' over 8
  # (here 9); whiten.weight has requires_grad=False.
  config = config_lib.load_experiment("speedrun")
  o = config.optim
  g = {x.name: x for x in o.groups}
  assert list(g) == ["whiten_kernel", "whiten_bias", "bn_bias", "head",
                     "filters"]
  wd = 2e-6 * 2000
  for name, lr in (("whiten_bias", 0.053), ("bn_bias", 0.053), ("head", 0.67)):
    assert (g[name].optimizer, g[name].momentum) == ("nesterov", 0.85)
    assert g[name].lr == pytest.approx(lr * 2000)
    assert g[name].weight_decay == pytest.approx(wd / (lr * 2000))
    assert (g[name].weight_decay_mode, g[name].units) == ("l2", "step")
  f = g["filters"]
  assert (f.optimizer, f.lr, f.momentum, f.ns_steps, f.normalize,
          f.weight_decay) == ("muon", 0.24, 0.6, 3, True, 0.0)
  assert g["whiten_kernel"].frozen_from_epochs == 0
  assert g["whiten_bias"].frozen_from_epochs == 3.0
  # Which parameter is in which group, on speednet's own names.
  model = create_model(config.model)
  params = jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0)}, jnp.zeros((1, 32, 32, 3)),
      train=False))["params"]
  labels = optim.check_groups(o, params)
  assert labels["whiten/kernel"] == "whiten_kernel"
  assert labels["whiten/bias"] == "whiten_bias"
  assert labels["head/kernel"] == "head"
  assert {labels[p] for p in labels if "/bn" in p} == {"bn_bias"}
  assert {labels[p] for p in labels if "/conv" in p} == {"filters"}
  # Schedules: 25 steps an epoch, 225 in all; the whitening bias's over 75.
  wb = optim.make_group_schedule(o, g["whiten_bias"], 25, total_steps=225)
  np.testing.assert_allclose([wb(t) for t in (0, 30, 75, 100)],
                             [0.053 * 2000 * r for r in (1, 1 - 30 / 75, 0, 0)],
                             rtol=1e-6, atol=1e-6)
  for name, peak in (("filters", 0.24), ("head", 0.67 * 2000)):
    s = optim.make_group_schedule(o, g[name], 25, total_steps=225)
    np.testing.assert_allclose([s(t) for t in (0, 90, 225)],
                               [peak, peak * 0.6, 0.0], rtol=1e-6, atol=1e-6)
  assert optim.frozen_from(o, ["whiten/kernel", "whiten/bias"], 25) == 75


def test_speedrun_hiverge_is_hiverges_numbers():
  # hiverge's cifar10_speedrun main(): batch 1536, ceil(7.59 * 32) steps,
  # whitening bias for ceil(0.19 * 32), bias_lr 0.0573, head_lr 0.5415, wd
  # 1.0418e-6 * 1536 (L2 wd / lr on the SGD groups, decoupled on Muon's),
  # SGD momentum 0.825 (Nesterov), Muon lr 0.205 momentum 0.655, label
  # smoothing 0.09, jitter 0.1399 / 0.1308, SiLU, BatchNorm momentum 0.5566,
  # whitening from 960 images, TTA on the 25% least confident.
  config = config_lib.load_experiment("speedrun_hiverge")
  o, batch = config.optim, 1536
  g = {x.name: x for x in o.groups}
  wd = 1.0418e-6 * batch
  assert config.train.batch_size == batch and config.train.num_steps == 243
  for name, lr in (("whiten_bias", 0.0573), ("bn_bias", 0.0573),
                   ("head", 0.5415)):
    assert (g[name].optimizer, g[name].momentum) == ("nesterov", 0.825)
    assert g[name].lr == pytest.approx(lr * batch)
    assert g[name].weight_decay == pytest.approx(wd / (lr * batch))
  f = g["filters"]
  assert (f.optimizer, f.lr, f.momentum, f.ns_steps, f.normalize,
          f.weight_decay_mode) == ("muon", 0.205, 0.655, 3, True, "decoupled")
  assert f.weight_decay == pytest.approx(wd)
  assert optim.frozen_from(o, ["whiten/kernel", "whiten/bias"], 32) == 7
  wb = optim.make_group_schedule(o, g["whiten_bias"], 32, total_steps=243)
  np.testing.assert_allclose([wb(t) for t in (0, 3, 7)],
                             [0.0573 * batch * r for r in (1, 1 - 3 / 7, 0)],
                             rtol=1e-6, atol=1e-6)
  s = optim.make_group_schedule(o, f, 32, total_steps=243)
  np.testing.assert_allclose([s(t) for t in (0, 81, 243)],
                             [0.205, 0.205 * 162 / 243, 0.0], rtol=1e-6,
                             atol=1e-6)
  d, m = config.data, config.model
  assert (d.jitter_brightness, d.jitter_contrast) == (0.1399, 0.1308)
  assert (m.speednet.group_activation, m.bn_momentum,
          m.speednet.whiten_images) == ("silu", 0.5566, 960)
  assert (config.train.label_smoothing, config.train.final_tta,
          config.train.final_tta_fraction) == (0.09, "mirror_translate", 0.25)


@pytest.mark.parametrize("activation", ["gelu", "silu"])
def test_speednet_group_activation_is_its_formula(activation):
  # One conv group in eval mode (running statistics 0 and 1, no scale):
  # conv -> 2x2 max-pool -> BN -> act -> conv -> BN -> act, in numpy.
  group = speednet.ConvGroup(4, bn_scale=False, activation=activation)
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
  v = jax.jit(lambda x: group.init({"params": jax.random.key(1)}, x,
                                   train=False))(x)
  got = np.asarray(jax.jit(lambda v, x: group.apply(v, x, train=False))(v, x))

  def conv(x, k):
    return np.asarray(jax.lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST), np.float64)

  act = {"gelu": lambda z: 0.5 * z * (1 + np.vectorize(math.erf)(z / 2 ** 0.5)),
         "silu": lambda z: z / (1 + np.exp(-z))}[activation]
  bn = 1 / math.sqrt(1 + 1e-5)
  p = v["params"]
  y = conv(np.asarray(x), p["conv1"]["kernel"])
  y = y.reshape(2, 3, 2, 3, 2, 4).max(axis=(2, 4))
  y = act(y * bn)
  y = act(conv(y.astype(np.float32), p["conv2"]["kernel"]) * bn)
  np.testing.assert_allclose(got, y, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="model.speednet.group_activation"):
    create_model({"name": "speednet",
                  "speednet": {"group_activation": "swish"}})


def test_speednet_head_init_std():
  model = create_model({"name": "speednet", "width": 0.125,
                        "speednet": {"head_init_std": 1.0}})
  head = jax.jit(lambda: model.init({"params": jax.random.key(1)},
                                    jnp.zeros((1, 32, 32, 3)), train=False)
                 )()["params"]["head"]["kernel"]
  assert float(jnp.std(head)) == pytest.approx(1.0, rel=1e-5)
  key = jax.random.key(2)
  scaled = speednet.unit_std_head_init(0.3)(key, (256, 10))
  default = speednet.torch_default_init(key, (256, 10))
  assert float(jnp.std(scaled)) == pytest.approx(0.3, rel=1e-5)
  # The same draw, rescaled; PyTorch's default: uniform(+-1/16), std 1/sqrt(768).
  np.testing.assert_allclose(scaled / 0.3 * jnp.std(default), default,
                             rtol=1e-5, atol=1e-7)
  assert float(jnp.std(default)) == pytest.approx(1 / math.sqrt(768), rel=0.1)
  with pytest.raises(ValueError, match="model.speednet.head_init_std"):
    create_model({"name": "speednet", "speednet": {"head_init_std": -1.0}})


def test_lookahead_equals_its_formula():
  # The optimizer moves the live weight by a fixed increment each step; the
  # reference replays those increments through airbench's loop.
  increments = np.random.default_rng(0).normal(size=40)
  every, decay, start, spe, total = 5, 0.95 ** 5, 12, 16, 40
  live = jnp.float32(1.0)
  slow = jnp.float32(1.0)
  ours = []
  for t in range(1, total + 1):
    live = live + increments[t - 1]
    new_live, slow = optim.lookahead(t, {"w": live}, {"w": slow}, every=every,
                                     decay=decay, start_step=start,
                                     steps_per_epoch=spe, total_steps=total)
    live, slow = new_live["w"], slow["w"]
    ours.append(float(live))
  # Reference, step by step.
  ref, slow_r, w = [], None, 1.0
  for t in range(1, total + 1):
    w = w + increments[t - 1]
    if t > start and t % every == 0:
      if slow_r is None:
        slow_r = w
      else:
        rho = decay * (t / total) ** 3
        slow_r = rho * slow_r + (1 - rho) * w
        w = slow_r
    if slow_r is not None and (t % spe == 0 or t == total):
      w = slow_r
    ref.append(w)
  np.testing.assert_allclose(ours, ref, rtol=1e-5)
  # Lookahead really changed the trajectory (not the identity).
  assert not np.allclose(ours, 1.0 + np.cumsum(increments), rtol=1e-3)


# --- End to end ------------------------------------------------------------------


def speedrun_small(*overrides, base="speedrun_airbench94"):
  c = config_lib.load_experiment(base)
  return config_lib.apply_overrides(c, [
      "model.width=0.125", "train.batch_size=128", "train.num_steps=0",
      "train.num_epochs=6", "train.eval_batch_size=250",
      "train.log_every_steps=8", "train.progress_bar=false",
      "model.speednet.whiten_images=500", "optim.lookahead_start_epochs=2",
      "optim.groups.whiten_bias.frozen_from_epochs=1", *overrides])


@pytest.mark.slow  # A minute on the 2-core CPU.
def test_cpu_sized_speedrun_learns(tmp_path, real_data_dir):
  # The recipe `--exp speedrun` trains (Muon), its SGD rates scaled to the
  # batch of 128 as its docstring says.
  config = speedrun_small(f"data.source=folder:{real_data_dir}",
                          "data.train_limit=1024", "data.test_limit=500",
                          f"optim.groups.head.lr={0.67 * 128}",
                          f"optim.groups.whiten_bias.lr={0.053 * 128}",
                          f"optim.groups.bn_bias.lr={0.053 * 128}",
                          base="speedrun")
  result = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  # 1,024 real images, 48 steps of a 1/8-width net: chance is 10%.
  assert result["raw"]["accuracy"] > 0.25, result["raw"]
  assert result["tta"]["mode"] == "mirror_translate"
  assert result["tta"]["raw"]["accuracy"] > 0.25
  assert result["train_seconds"] > 0 and result["compile_seconds"] >= 0


def test_frozen_stem_step_equals_the_full_step():
  # Once the optimizer has frozen the whitening layer, the step stops the
  # gradient at its output (no input gradient for the first conv). What it
  # trains is unchanged: parameters, statistics, EMA and loss equal the full
  # step's.
  config = speedrun_small(
      "data.source=synthetic", "data.synthetic_train_size=256",
      "data.synthetic_test_size=64", "train.batch_size=64",
      "model.speednet.whiten_images=64",
      "optim.groups.whiten_bias.frozen_from_epochs=0")
  setup = trainer.build(config)
  assert setup.stem_frozen_from == 0
  later = trainer.build(config_lib.apply_overrides(
      config, ["optim.groups.whiten_bias.frozen_from_epochs=2"]))
  assert later.stem_frozen_from == 2 * later.steps_per_epoch == 8
  assert trainer.build(config_lib.apply_overrides(
      config, ["model.speednet.whiten=false",
               "optim.groups.whiten_kernel.frozen_from_epochs=none",
               "optim.groups.whiten_bias.frozen_from_epochs=none"])
      ).stem_frozen_from is None
  state = jax.tree.map(np.asarray,
                       jax.jit(lambda: trainer.create_train_state(setup))())
  feed = steps.TrainFeed.place(setup)
  out = {}
  for frozen in (False, True):
    fn = steps.make_train_fn(setup, 2, stem_frozen=frozen)
    s, acc = fn(parallel.replicate(state, setup.local_devices),
                feed.accumulator(), *feed.inputs())
    out[frozen] = (jax.tree.map(np.asarray, parallel.unreplicate(s)),
                   jax.tree.map(np.asarray, parallel.unreplicate(acc)))
  (full, acc_full), (skip, acc_skip) = out[False], out[True]
  for part in ("params", "batch_stats", "ema_batch_stats", "lookahead"):
    for a, b in zip(jax.tree.leaves(getattr(full, part)),
                    jax.tree.leaves(getattr(skip, part))):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(
      optim.ema_params(full.opt_state)["group1"]["conv1"]["kernel"],
      optim.ema_params(skip.opt_state)["group1"]["conv1"]["kernel"],
      rtol=1e-6, atol=1e-7)
  assert acc_full["loss_sum"] == pytest.approx(acc_skip["loss_sum"], rel=1e-6)
  # A group frozen from the start keeps no optimizer state
  # (optax.set_to_zero), so the gradient the full step computes for the
  # whitening layer goes nowhere: the optimizer states agree as well.
  for a, b in zip(jax.tree.leaves(full.opt_state),
                  jax.tree.leaves(skip.opt_state)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
