"""jaxcnn.optim against formulas written out here with math / numpy (and TF).

Each reference is computed independently of the code under test: schedules
from their closed forms, the optimizer chain from a numpy loop of the update
rule, the EMA from TF's formula and from tf.train.ExponentialMovingAverage.

Most tests describe the optimizer in the old flat fields (optimizer,
learning_rate, weight_decay_filter, ...), which `optim_cfg` turns into
parameter groups with jaxcnn.legacy's translation: the formulas thus check
the translation of old configs as well. The tests of the groups themselves
come after them.
"""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import groups, legacy, optim
from jaxcnn.config import Config
from jaxcnn.defaults import base_config

STEPS_PER_EPOCH = 10
PATHS = ["conv1/bias", "conv1/kernel", "fc384/bias", "fc384/kernel"]


def optim_cfg(**fields):
  """The optim section with `fields`: run-level fields set as they are, the
  old flat optimizer fields translated to groups (legacy), for the
  parameters of make_params."""
  cfg = base_config().optim
  old = {}
  for key, value in fields.items():
    if key in legacy.OLD_OPTIM_DEFAULTS:
      old[key] = value
    else:
      assert key in cfg, key  # A typo here would silently test the default.
      cfg[key] = value
  cfg.groups = tuple(groups.complete(g)
                     for g in legacy.old_optim_to_groups(old, PATHS))
  return cfg


def make_params(dtype=np.float32):
  rng = np.random.default_rng(0)
  params = {
      "conv1": {"kernel": rng.normal(size=(3, 3)), "bias": rng.normal(size=3)},
      "fc384": {"kernel": rng.normal(size=(4, 2)), "bias": rng.normal(size=2)},
  }
  params["conv1"]["kernel"][0, 0] = 0.0  # sign(0) = 0 for L1.
  return jax.tree_util.tree_map(lambda x: np.asarray(x, dtype), params)


def make_grads(num_steps, seed=1):
  rng = np.random.default_rng(seed)
  shapes = jax.tree_util.tree_map(np.shape, make_params())
  return [jax.tree_util.tree_map(
      lambda s: rng.normal(size=s).astype(np.float32), shapes,
      is_leaf=lambda x: isinstance(x, tuple)) for _ in range(num_steps)]


def run_chain(tx, params, grads_list):
  """Applies `tx` for each gradient; returns (params, opt_state, history)."""
  @jax.jit
  def step(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  params = jax.tree_util.tree_map(jnp.asarray, params)
  opt_state = tx.init(params)
  history = [params]
  for grads in grads_list:
    params, opt_state = step(params, opt_state, grads)
    history.append(params)
  return params, opt_state, history


def is_kernel(path_tree, pattern="kernel"):
  """Written-out weight-decay mask: pattern searched in 'layer/name'."""
  return {layer: {name: bool(re.search(pattern, f"{layer}/{name}"))
                  for name in leaves}
          for layer, leaves in path_tree.items()}


def tree_allclose(actual, expected, rtol=1e-5, atol=1e-6):
  jax.tree_util.tree_map(
      lambda a, e: np.testing.assert_allclose(np.asarray(a), np.asarray(e),
                                              rtol=rtol, atol=atol),
      actual, expected)


# --- Schedules ----------------------------------------------------------------

PEAK = 0.05


def reference_lr(t, name, warmup_steps=0, staircase=False, total_steps=None,
                 decay_steps=30.0, decay_rate=0.5, boundaries=(30, 75),
                 factor=0.1, final=0.1):
  if t < warmup_steps:
    return PEAK * t / warmup_steps
  t -= warmup_steps
  p = t / decay_steps
  if staircase:
    p = math.floor(p)
  if name == "constant":
    return PEAK
  if name == "exponential":
    return PEAK * decay_rate ** p
  if name == "inverse_time":
    return PEAK / (1 + decay_rate * p)
  if name == "step":
    return PEAK * factor ** sum(1 for b in boundaries if t >= b)
  if name == "cosine":
    length = total_steps - warmup_steps
    return PEAK * (final + (1 - final) * 0.5 *
                   (1 + math.cos(math.pi * min(t, length) / length)))
  if name == "triangular":  # Defaults 0.2 -> 1 at 23% of the run -> 0.07.
    length = total_steps - warmup_steps
    top = int(0.23 * length)
    t = min(t, length)
    if t < top:
      return PEAK * (0.2 + 0.8 * t / top)
    return PEAK * (1 + (0.07 - 1) * (t - top) / (length - top))
  raise AssertionError(name)


def schedule_cfg(name, warmup_epochs, staircase):
  return optim_cfg(schedule=name, learning_rate=PEAK,
                   warmup_epochs=warmup_epochs, staircase=staircase,
                   decay_epochs=3.0, decay_rate=0.5,
                   step_boundaries_epochs=(3.0, 7.5), step_factor=0.1,
                   cosine_final_fraction=0.1)


@pytest.mark.parametrize("name", optim.SCHEDULES)
@pytest.mark.parametrize("warmup_epochs", [0.0, 2.0])
@pytest.mark.parametrize("staircase", [False, True])
def test_schedule_matches_formula(name, warmup_epochs, staircase):
  total_steps = 200
  cfg = schedule_cfg(name, warmup_epochs, staircase)
  schedule = optim.make_run_schedule(cfg, STEPS_PER_EPOCH, total_steps=total_steps)
  warmup = int(warmup_epochs * STEPS_PER_EPOCH)
  # Step boundaries 30 and 75 (7.5 epochs), decay periods of 30 steps, each
  # probed one step either side, shifted by the warmup.
  marks = [0, 1, 15, 29, 30, 31, 44, 45, 46, 59, 60, 61, 74, 75, 76, 89, 90,
           91, 100, 150, 190, 199, 200, 260, 1000, 10**5]
  steps = sorted({0, 1} | {warmup + m for m in marks} |
                 ({warmup - 1, warmup // 2} if warmup else set()))
  expected = [reference_lr(t, name, warmup, staircase, total_steps)
              for t in steps]
  actual = [float(schedule(t)) for t in steps]
  np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-9)
  # The same steps as one array (for plotting) and traced under jit.
  np.testing.assert_allclose(schedule(np.asarray(steps)), expected, rtol=1e-5,
                             atol=1e-9)
  jitted = jax.jit(schedule)
  np.testing.assert_allclose([float(jitted(jnp.int32(t))) for t in steps],
                             expected, rtol=1e-5, atol=1e-9)
  assert schedule(0).dtype == jnp.float32


def test_schedule_variation_is_real():
  # Guards the test above: staircase and warmup must change the numbers.
  smooth = optim.make_run_schedule(schedule_cfg("exponential", 0.0, False), 10)
  stairs = optim.make_run_schedule(schedule_cfg("exponential", 0.0, True), 10)
  warm = optim.make_run_schedule(schedule_cfg("exponential", 2.0, True), 10)
  assert float(smooth(45)) < float(stairs(45))
  assert float(warm(5)) == pytest.approx(PEAK * 5 / 20)
  assert float(warm(20)) == pytest.approx(PEAK)


def test_vgg_recipe_halves_every_25_epochs():
  cfg = optim_cfg(schedule="exponential", learning_rate=0.05, decay_rate=0.5,
                  decay_epochs=25.0, staircase=True, warmup_epochs=0.0)
  schedule = optim.make_run_schedule(cfg, 391)
  for epoch, lr in [(0, 0.05), (24.99, 0.05), (25, 0.025), (50, 0.0125),
                    (299, 0.05 * 0.5 ** 11)]:
    assert float(schedule(round(epoch * 391))) == pytest.approx(lr, rel=1e-6)


def test_fractional_decay_epochs_stay_fractional():
  cfg = optim_cfg(schedule="exponential", learning_rate=1.0, decay_rate=0.5,
                  decay_epochs=0.25, staircase=False, warmup_epochs=0.0)
  schedule = optim.make_run_schedule(cfg, 10)  # decay_steps = 2.5
  assert float(schedule(5)) == pytest.approx(0.25, rel=1e-6)
  assert float(schedule(1)) == pytest.approx(0.5 ** 0.4, rel=1e-6)


@pytest.mark.parametrize("name", ["exponential", "inverse_time"])
@pytest.mark.parametrize("staircase", [False, True])
def test_schedule_matches_tensorflow(name, staircase):
  tf = pytest.importorskip("tensorflow")
  decay_steps, decay_rate = 30, 0.5
  schedule = optim.make_run_schedule(schedule_cfg(name, 0.0, staircase), 10)
  tf_fn = getattr(tf.compat.v1.train, f"{name}_decay")
  for t in [0, 1, 29, 30, 31, 59, 60, 100, 1234, 100000]:
    lr = tf_fn(PEAK, tf.constant(t, tf.int64), decay_steps, decay_rate,
               staircase=staircase)
    lr = lr() if callable(lr) else lr  # Eager TF returns a callable.
    assert float(schedule(t)) == pytest.approx(float(lr), rel=1e-6), t


# --- EMA ----------------------------------------------------------------------


def test_ema_decay_at():
  for t in [1, 5, 20, 100, 10**6]:
    expected = min(0.999, (1 + t) / (10 + t))
    assert float(optim.ema_decay_at(t, 0.999, True)) == pytest.approx(expected)
    assert float(optim.ema_decay_at(t, 0.999, False)) == pytest.approx(0.999)
  ramped = jax.jit(lambda t: optim.ema_decay_at(t, 0.999, True))
  assert float(ramped(jnp.int32(8))) == pytest.approx(0.5)


LR, WD = 0.1, 0.01


def numpy_sgd_l2_trajectory(params, grads_list):
  """sgd with the L2 term on kernels only, as the TF code's loss gives."""
  mask = is_kernel(params)
  history = [params]
  for grads in grads_list:
    params = {layer: {name: w - LR * (grads[layer][name] +
                                      WD * w * mask[layer][name])
                      for name, w in leaves.items()}
              for layer, leaves in params.items()}
    history.append(params)
  return history


def numpy_ema(history, decay, ramp):
  ema = history[0]
  for t, params in enumerate(history[1:], start=1):
    d = min(decay, (1 + t) / (10 + t)) if ramp else decay
    ema = jax.tree_util.tree_map(lambda e, p: d * e + (1 - d) * p, ema, params)
  return ema


def ema_chain_cfg(ramp, decay=0.7, **fields):
  # decay 0.7 meets (1 + t) / (10 + t) at t = 20: 25 steps cover both regimes.
  return optim_cfg(**{**dict(
      optimizer="sgd", schedule="constant", learning_rate=LR,
      weight_decay=WD, weight_decay_mode="l2", l1=0.0, warmup_epochs=0.0,
      ema_decay=decay, ema_ramp=ramp), **fields})


@pytest.mark.parametrize("ramp", [True, False])
def test_ema_through_chain_matches_numpy(ramp):
  params, grads_list = make_params(), make_grads(25)
  tx = optim.make_optimizer(ema_chain_cfg(ramp), STEPS_PER_EPOCH)
  final, opt_state, _ = run_chain(tx, params, grads_list)
  history = numpy_sgd_l2_trajectory(params, grads_list)
  tree_allclose(final, history[-1])
  ema = optim.ema_params(opt_state)
  tree_allclose(ema, numpy_ema(history, 0.7, ramp))
  other = numpy_ema(history, 0.7, not ramp)
  assert not np.allclose(ema["fc384"]["kernel"], other["fc384"]["kernel"],
                         rtol=1e-3)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(ema))


def test_ema_matches_tensorflow_moving_average():
  tf = pytest.importorskip("tensorflow")
  decay = 0.7
  params, grads_list = make_params(), make_grads(25)
  tx = optim.make_optimizer(ema_chain_cfg(True, decay), STEPS_PER_EPOCH)
  _, opt_state, history = run_chain(tx, params, grads_list)

  step = tf.Variable(0, dtype=tf.int64)
  tf_ema = tf.train.ExponentialMovingAverage(decay, num_updates=step)
  variables = {(layer, name): tf.Variable(np.asarray(w))
               for layer, leaves in params.items()
               for name, w in leaves.items()}
  # In eager TF the first apply() creates the shadows from the current values;
  # calling it before training makes them start at the initial params, as
  # their initializers do in graph mode (that apply is a no-op: shadow == var).
  tf_ema.apply(list(variables.values()))
  for new_params in history[1:]:
    for (layer, name), var in variables.items():
      var.assign(np.asarray(new_params[layer][name]))
    step.assign_add(1)  # apply_gradients increments global_step first.
    tf_ema.apply(list(variables.values()))

  ema = optim.ema_params(opt_state)
  for (layer, name), var in variables.items():
    np.testing.assert_allclose(np.asarray(ema[layer][name]),
                               tf_ema.average(var).numpy(), rtol=1e-5,
                               atol=1e-6)


def test_ema_of_params_needs_params_and_keeps_float32():
  tx = optim.ema_of_params(0.9, True)
  params = make_params(np.float16)
  state = tx.init(params)
  assert all(x.dtype == jnp.float32
             for x in jax.tree_util.tree_leaves(state.ema))
  assert int(state.count) == 0
  with pytest.raises(ValueError, match="params"):
    tx.update(params, state)
  updates, state = tx.update(params, state, params)
  tree_allclose(updates, params)  # Passed through unchanged.
  assert int(state.count) == 1


def test_ema_params_is_the_last_link_of_the_chain():
  params = make_params()
  with pytest.raises(ValueError, match="no EmaParamsState"):
    optim.ema_params(optax.sgd(0.1).init(params))
  nested = optax.chain(optax.sgd(0.1),
                       optax.chain(optax.identity(),
                                   optim.ema_of_params(0.9, False)))
  tree_allclose(optim.ema_params(nested.init(params)), params)
  # The EMA must be the last link: earlier, its updates would not be final.
  ema_first = optax.chain(optim.ema_of_params(0.9, False), optax.sgd(0.1))
  with pytest.raises(ValueError, match="last link"):
    optim.ema_params(ema_first.init(params))


# --- Regularisation -----------------------------------------------------------


def one_update(cfg, params, grads):
  tx = optim.make_optimizer(cfg, STEPS_PER_EPOCH)
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates


def test_l2_term_only_on_filtered_params():
  params, (grads,) = make_params(), make_grads(1)
  for pattern in ["kernel", "conv1/kernel", "^fc"]:
    cfg = ema_chain_cfg(True, weight_decay_filter=pattern)
    mask = is_kernel(params, pattern)
    expected = {layer: {name: -LR * (grads[layer][name] +
                                     WD * w * mask[layer][name])
                        for name, w in leaves.items()}
                for layer, leaves in params.items()}
    tree_allclose(one_update(cfg, params, grads), expected)


def test_l1_adds_sign():
  params, (grads,) = make_params(), make_grads(1)
  l1 = 0.03
  cfg = ema_chain_cfg(True, weight_decay=0.0, l1=l1)
  mask = is_kernel(params)
  expected = {layer: {name: -LR * (grads[layer][name] +
                                   l1 * np.sign(w) * mask[layer][name])
                      for name, w in leaves.items()}
              for layer, leaves in params.items()}
  tree_allclose(one_update(cfg, params, grads), expected)
  assert params["conv1"]["kernel"][0, 0] == 0.0  # sign(0) = 0 is exercised.


def test_decoupled_decay_follows_schedule():
  params, grads_list = make_params(), make_grads(5)
  decay_steps, rate = 2.0, 0.5
  cfg = optim_cfg(optimizer="sgd", learning_rate=LR, weight_decay=0.1,
                  weight_decay_mode="decoupled", l1=0.0,
                  schedule="exponential", decay_epochs=decay_steps / 10,
                  decay_rate=rate, staircase=False, warmup_epochs=0.0)
  final, _, _ = run_chain(optim.make_optimizer(cfg, 10), params, grads_list)
  mask = is_kernel(params)
  expected = params
  for t, grads in enumerate(grads_list):
    lr = LR * rate ** (t / decay_steps)
    expected = {layer: {name: w - lr * grads[layer][name] -
                        lr * 0.1 * w * mask[layer][name]
                        for name, w in leaves.items()}
                for layer, leaves in expected.items()}
  tree_allclose(final, expected)


@pytest.mark.parametrize("mode", ["l2", "decoupled"])
def test_adamw_decays_once_decoupled(mode):
  params = make_params()
  zero = jax.tree_util.tree_map(np.zeros_like, params)
  cfg = optim_cfg(optimizer="adamw", learning_rate=LR, weight_decay=WD,
                  weight_decay_mode=mode, l1=0.0, schedule="constant",
                  warmup_epochs=0.0)
  # Zero gradients: adam's step is 0, so only lr * wd * w on kernels remains.
  # An L2 term added as well would reach adam and be normalised to ~lr.
  mask = is_kernel(params)
  expected = {layer: {name: -LR * WD * w * mask[layer][name]
                      for name, w in leaves.items()}
              for layer, leaves in params.items()}
  tree_allclose(one_update(cfg, params, zero), expected)


# --- Optimizers ---------------------------------------------------------------


def plain_cfg(name, **fields):
  base = dict(optimizer=name, learning_rate=LR, weight_decay=0.0, l1=0.0,
              schedule="constant", warmup_epochs=0.0)
  return optim_cfg(**{**base, **fields})


@pytest.mark.parametrize("name, reference", [
    ("momentum", optax.sgd(LR, momentum=0.9)),
    ("nesterov", optax.sgd(LR, momentum=0.9, nesterov=True)),
    ("adam", optax.adam(LR, b1=0.8, b2=0.99, eps=1e-6)),
    ("adamw", optax.adamw(LR, b1=0.8, b2=0.99, eps=1e-6, weight_decay=WD,
                          mask=lambda p: is_kernel(p))),
    ("rmsprop", optax.rmsprop(LR, decay=0.95, eps=1e-6, momentum=0.9)),
])
def test_optimizer_wiring_matches_optax(name, reference):
  params, grads_list = make_params(), make_grads(4)
  cfg = plain_cfg(name, momentum=0.9, b1=0.8, b2=0.99, eps=1e-6,
                  rmsprop_decay=0.95,
                  weight_decay=WD if name == "adamw" else 0.0)
  ours, _, _ = run_chain(optim.make_optimizer(cfg, 10), params, grads_list)
  theirs, _, _ = run_chain(reference, params, grads_list)
  tree_allclose(ours, theirs)


def test_momentum_is_heavy_ball():
  params, grads_list = make_params(), make_grads(4)
  ours, _, _ = run_chain(
      optim.make_optimizer(plain_cfg("momentum", momentum=0.9), 10),
      params, grads_list)
  w, acc = params["fc384"]["kernel"], 0.0
  for grads in grads_list:
    acc = 0.9 * acc + grads["fc384"]["kernel"]  # TF's MomentumOptimizer.
    w = w - LR * acc
  np.testing.assert_allclose(ours["fc384"]["kernel"], w, rtol=1e-5)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
@pytest.mark.parametrize("mode", ["l2", "decoupled"])
def test_every_optimizer_runs(name, mode):
  params, grads_list = make_params(), make_grads(2)
  cfg = optim_cfg(optimizer=name, weight_decay_mode=mode, l1=1e-4,
                  schedule="cosine", warmup_epochs=0.5)
  tx = optim.make_optimizer(cfg, 10, total_steps=100)
  final, opt_state, _ = run_chain(tx, params, grads_list)
  for before, after in zip(jax.tree_util.tree_leaves(params),
                           jax.tree_util.tree_leaves(final)):
    assert np.all(np.isfinite(after))
    assert not np.allclose(before, after)
  assert optim.ema_params(opt_state)["conv1"]["kernel"].shape == (3, 3)


# --- Config errors ------------------------------------------------------------


@pytest.mark.parametrize("fields, total_steps, match", [
    ({"schedule": "linear"}, None, "unknown optim.schedule 'linear'"),
    ({"schedule": "step", "step_boundaries_epochs": (5.0, 3.0)}, None,
     "increasing"),
    ({"schedule": "step", "step_boundaries_epochs": (0.0, 3.0)}, None,
     "positive"),
    ({"schedule": "cosine"}, None, "total_steps"),
    ({"schedule": "cosine", "warmup_epochs": 20.0}, 100, "total_steps"),
    ({"schedule": "exponential", "decay_epochs": 0.0}, None, "decay_epochs"),
    ({"ema_decay": 1.5}, None, "ema_decay"),
])
def test_config_errors(fields, total_steps, match):
  with pytest.raises(optim.OptimConfigError, match=match):
    optim.make_optimizer(optim_cfg(**fields), 10, total_steps=total_steps)


def test_bad_steps_per_epoch():
  with pytest.raises(optim.OptimConfigError, match="steps_per_epoch"):
    optim.make_run_schedule(optim_cfg(), 0)


# --- Parameter groups -----------------------------------------------------------


def groups_cfg(*groups_, **fields):
  cfg = base_config().optim
  cfg.groups = tuple(groups_)
  for key, value in {"schedule": "constant", "warmup_epochs": 0.0,
                     **fields}.items():
    cfg[key] = value
  return cfg


def test_two_groups_equal_the_two_optimizers_on_their_parameters():
  """A two-group chain (adam on the fc layer, nesterov with L2 on the rest)
  is the two optax optimizers, each applied to its own parameters alone."""
  params, grads_list = make_params(), make_grads(4)
  cfg = groups_cfg(
      groups.group("fc", r"^fc384/", "adam", 0.01, b1=0.8),
      groups.group("rest", r".*", "nesterov", 0.1, momentum=0.7,
                   weight_decay=0.01))
  ours, _, _ = run_chain(optim.make_optimizer(cfg, 10), params, grads_list)
  fc, _, _ = run_chain(optax.adam(0.01, b1=0.8), params["fc384"],
                       [g["fc384"] for g in grads_list])
  conv, _, _ = run_chain(
      optax.chain(optax.add_decayed_weights(0.01),
                  optax.sgd(0.1, momentum=0.7, nesterov=True)),
      params["conv1"], [g["conv1"] for g in grads_list])
  tree_allclose(ours["fc384"], fc)
  tree_allclose(ours["conv1"], conv)


def test_first_match_wins_and_labels():
  g = (groups.group("a", r"kernel", "sgd", 0.1),
       groups.group("b", r"^conv1/", "sgd", 0.2),
       groups.group("rest", r".*", "sgd", 0.3))
  assert optim.label_paths(g, PATHS) == {
      "conv1/bias": "b", "conv1/kernel": "a", "fc384/bias": "rest",
      "fc384/kernel": "a"}


def test_group_schedule_ends_early_and_frozen_from_epochs():
  """The whitening bias of airbench94_muon: its rate falls linearly to 0
  over its own 3 epochs (30 steps), then it is frozen; the other group's
  rate falls over the run (100 steps)."""
  wb = Config(schedule="triangular", triangle_start=1.0, triangle_peak=0.0,
              triangle_end=0.0, length_epochs=3.0)
  cfg = groups_cfg(
      groups.group("early", r"^conv1/bias$", "sgd", 1.0, schedule=wb,
                   frozen_from_epochs=3.0),
      groups.group("rest", r".*", "sgd", 1.0),
      schedule="triangular", triangle_start=1.0, triangle_peak=0.0,
      triangle_end=0.0)
  early = optim.make_group_schedule(cfg, cfg.groups[0], STEPS_PER_EPOCH,
                                    total_steps=100)
  rest = optim.make_group_schedule(cfg, cfg.groups[1], STEPS_PER_EPOCH,
                                   total_steps=100)
  for t in (0, 1, 10, 29, 30, 31, 60, 99):
    assert float(early(t)) == pytest.approx(max(0.0, 1 - t / 30), abs=1e-6)
    assert float(rest(t)) == pytest.approx(1 - t / 100, abs=1e-6)
  # sgd's update is -lr_t * g: the ramp, then nothing from step 30 on.
  params = make_params()
  ones = jax.tree_util.tree_map(np.ones_like, params)
  _, _, history = run_chain(optim.make_optimizer(cfg, STEPS_PER_EPOCH,
                                                 total_steps=100),
                            params, [ones] * 35)
  moves = [float(b["conv1"]["bias"][0] - a["conv1"]["bias"][0])
           for a, b in zip(history, history[1:])]
  np.testing.assert_allclose(moves[:30], [-(1 - t / 30) for t in range(30)],
                             rtol=1e-5, atol=1e-6)
  assert moves[30:] == [0.0] * 5
  other = [float(b["fc384"]["bias"][0] - a["fc384"]["bias"][0])
           for a, b in zip(history, history[1:])]
  np.testing.assert_allclose(other, [-(1 - t / 100) for t in range(35)],
                             rtol=1e-5, atol=1e-6)
  assert optim.frozen_from(cfg, ["conv1/bias"], STEPS_PER_EPOCH) == 30
  assert optim.frozen_from(cfg, ["conv1/bias", "conv1/kernel"],
                           STEPS_PER_EPOCH) is None


def test_group_frozen_from_the_start_is_never_updated_and_keeps_no_state():
  cfg = groups_cfg(
      groups.group("stem", r"^conv1/", "momentum", 0.1, frozen_from_epochs=0,
                   weight_decay=0.1),
      groups.group("rest", r".*", "momentum", 0.1))
  params, grads_list = make_params(), make_grads(3)
  final, state, _ = run_chain(optim.make_optimizer(cfg, 10), params,
                              grads_list)
  tree_allclose(final["conv1"], params["conv1"], rtol=0, atol=0)
  assert not np.allclose(final["fc384"]["kernel"], params["fc384"]["kernel"])
  traces = [jax.tree_util.keystr(p) for p, _ in
            jax.tree_util.tree_leaves_with_path(state[0])]
  assert not any("conv1" in t for t in traces) and any("fc384" in t
                                                       for t in traces)
  assert optim.frozen_from(cfg, ["conv1/kernel", "conv1/bias"], 10) == 0


@pytest.mark.parametrize("make, match", [
    (lambda: (groups.group("a", r"^conv1/", "sgd", 0.1),),
     "no group matches fc384/bias, fc384/kernel"),
    (lambda: (groups.group("a", r"^nosuch/", "sgd", 0.1),
              groups.group("rest", r".*", "sgd", 0.1)),
     "group 'a' matches no parameter"),
    (lambda: (groups.group("a", r".*", "sgd", 0.1),
              groups.group("b", r".*", "sgd", 0.1)),
     "groups 'a' and 'b' have the same match '.*'"),
    (lambda: (groups.group("a", r"^conv1/", "sgd", 0.1),
              groups.group("a", r".*", "sgd", 0.1)),
     "two groups named 'a'"),
    (lambda: (groups.group("a", r"ker(nel", "sgd", 0.1),),
     "optim.groups.a.match 'ker(nel' is not a valid regex"),
])
def test_group_errors(make, match):
  cfg = groups_cfg(*make())
  with pytest.raises(optim.OptimConfigError, match=re.escape(match)):
    optim.make_optimizer(cfg, 10).init(make_params())


@pytest.mark.parametrize("field, value, match", [
    ("optimizer", "lamb", "optim.groups.rest: unknown optimizer 'lamb'"),
    ("weight_decay_mode", "l3", "unknown weight_decay_mode 'l3'"),
    ("lr", -0.1, "optim.groups.rest.lr must be finite and >= 0"),
    ("weight_decay", -1e-4, "optim.groups.rest.weight_decay must be"),
    ("momentum", 1.5, "optim.groups.rest.momentum must be in [0, 1)"),
    ("units", "per_image", "unknown units 'per_image'"),
    ("b1", 0.9, "group 'rest': optimizer 'momentum' has no option 'b1'"),
    ("frozen_from_epochs", -1, "frozen_from_epochs must be None or >= 0"),
    ("schedule", Config(schedule="cosine", lenght_epochs=1.0),
     "optim.groups.rest.schedule has no field 'lenght_epochs'"),
])
def test_bad_group_fields(field, value, match):
  cfg = groups_cfg(groups.group("rest", r".*", "momentum", 0.1))
  cfg.groups[0][field] = value
  with pytest.raises(optim.OptimConfigError, match=re.escape(match)):
    optim.make_optimizer(cfg, 10, total_steps=100)
