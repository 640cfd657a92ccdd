"""Learning-rate schedules, the optimizer chain, and an EMA of the parameters.

The chain built by `make_optimizer` is, in order:
  0. the gradient of parameters matching `bias_lr_filter` times
     `bias_lr_scale` (a higher learning rate that leaves their weight decay
     as it is);
  1. L2 weight decay as a gradient term `wd * w` (mode 'l2'; the TF code's
     `wd * tf.nn.l2_loss(w)` has exactly this gradient), on parameters whose
     '/'-joined path matches `weight_decay_filter`;
  2. L1: `l1 * sign(w)` added to the gradient, same filter;
  3. the optimizer, with the schedule as its learning rate; in mode
     'decoupled' (any optimizer but adamw) `lr_t * wd * w` is then subtracted
     from the weights, so decoupled decay follows the schedule as in AdamW;
  4. `freeze`: zero updates for parameters matching `freeze_filter`, and for
     those matching `freeze_after_filter` once `freeze_after_epochs` are done;
  5. last, `ema_of_params`: updates pass through unchanged and the state keeps
     an EMA of the post-step parameters (TF ExponentialMovingAverage).

With `hparam_units='per_1024'` the learning rate and weight decay of the
config are airbench's decoupled ones and are converted by `step_hparams`.
Lookahead (`lookahead`) is not a link of the chain: it also moves the
BatchNorm statistics, which optax never sees, so the train step applies it.

'adamw' always decays through optax.adamw's own decoupled weight decay
(masked by the same filter) whatever `weight_decay_mode` says, and never adds
the L2 gradient term as well: adding both would decay twice.

The trainer gets the learning rate for logging by calling `make_schedule`
itself; the schedule is a few jnp ops, cheap inside a jitted step.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop",
              "adagrad", "muon")
SCHEDULES = ("constant", "exponential", "step", "inverse_time", "cosine",
             "triangular")
WEIGHT_DECAY_MODES = ("l2", "decoupled")
HPARAM_UNITS = ("step", "per_1024")


class OptimConfigError(ValueError):
  """An optim config field that cannot give a valid schedule or optimizer."""


def _field(optim_cfg: Any, key: str) -> Any:
  # Config and plain dicts both support item access; a missing field is a
  # config error rather than a KeyError deep inside optax.
  try:
    return optim_cfg[key]
  except (KeyError, TypeError):
    raise OptimConfigError(f"optim config has no field {key!r}") from None


def _check(ok: bool, message: str) -> None:
  if not ok:
    raise OptimConfigError(message)


# --- Schedules ----------------------------------------------------------------


def _epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
  return int(round(float(epochs) * steps_per_epoch))


def _decay_schedule(optim_cfg: Any, steps_per_epoch: int,
                    total_steps: Optional[int],
                    warmup_steps: int) -> Callable[[jax.Array], jax.Array]:
  """The schedule after warmup, as a function of float32 steps since warmup."""
  name = _field(optim_cfg, "schedule")
  peak = float(_field(optim_cfg, "learning_rate"))

  if name == "constant":
    return lambda t: jnp.full_like(t, peak)

  if name in ("exponential", "inverse_time"):
    decay_epochs = float(_field(optim_cfg, "decay_epochs"))
    decay_rate = float(_field(optim_cfg, "decay_rate"))
    staircase = bool(_field(optim_cfg, "staircase"))
    _check(decay_epochs > 0,
           f"optim.decay_epochs must be > 0 for schedule {name!r}, got "
           f"{decay_epochs}")
    # Kept fractional, as tf.train.exponential_decay takes decay_steps: a
    # period of 0.5 epochs at 391 steps per epoch is 195.5 steps.
    decay_steps = decay_epochs * steps_per_epoch

    def periods(t: jax.Array) -> jax.Array:
      p = t / decay_steps
      return jnp.floor(p) if staircase else p

    if name == "exponential":
      _check(decay_rate > 0,
             f"optim.decay_rate must be > 0 for schedule 'exponential', got "
             f"{decay_rate}")
      return lambda t: peak * jnp.power(jnp.float32(decay_rate), periods(t))
    _check(decay_rate >= 0,
           f"optim.decay_rate must be >= 0 for schedule 'inverse_time', got "
           f"{decay_rate}")
    return lambda t: peak / (1.0 + decay_rate * periods(t))

  if name == "step":
    epochs = tuple(
        float(e) for e in _field(optim_cfg, "step_boundaries_epochs"))
    factor = float(_field(optim_cfg, "step_factor"))
    _check(factor >= 0, f"optim.step_factor must be >= 0, got {factor}")
    boundaries = [_epochs_to_steps(e, steps_per_epoch) for e in epochs]
    _check(all(b > 0 for b in boundaries),
           f"optim.step_boundaries_epochs must be positive and at least one "
           f"step long, got {epochs} epochs = {tuple(boundaries)} steps at "
           f"{steps_per_epoch} steps per epoch")
    _check(all(a < b for a, b in zip(boundaries, boundaries[1:])),
           f"optim.step_boundaries_epochs must be strictly increasing (in "
           f"whole steps), got {epochs} epochs = {tuple(boundaries)} steps")
    if not boundaries:
      return lambda t: jnp.full_like(t, peak)
    boundaries_arr = jnp.asarray(boundaries, jnp.float32)

    def step_schedule(t: jax.Array) -> jax.Array:
      # Broadcast against the boundaries so an array of steps works too.
      passed = jnp.sum(t[..., None] >= boundaries_arr, axis=-1)
      return peak * jnp.power(jnp.float32(factor), passed.astype(jnp.float32))
    return step_schedule

  if name == "cosine":
    final = float(_field(optim_cfg, "cosine_final_fraction"))
    _check(0.0 <= final <= 1.0,
           f"optim.cosine_final_fraction must be in [0, 1], got {final}")
    _check(total_steps is not None,
           "schedule 'cosine' needs total_steps (the run's training steps): "
           "pass make_schedule(..., total_steps=N)")
    decay_steps = int(total_steps) - warmup_steps
    _check(decay_steps > 0,
           f"schedule 'cosine' needs total_steps > warmup steps, got "
           f"total_steps={total_steps}, warmup steps={warmup_steps}")

    def cosine_schedule(t: jax.Array) -> jax.Array:
      progress = jnp.minimum(t, decay_steps) / decay_steps
      return peak * (final + (1.0 - final) * 0.5 *
                     (1.0 + jnp.cos(jnp.pi * progress)))
    return cosine_schedule

  if name == "triangular":
    start = float(_field(optim_cfg, "triangle_start"))
    peak_at = float(_field(optim_cfg, "triangle_peak"))
    end = float(_field(optim_cfg, "triangle_end"))
    _check(start >= 0 and end >= 0,
           f"optim.triangle_start and triangle_end must be >= 0, got {start} "
           f"and {end}")
    _check(0.0 <= peak_at < 1.0,
           f"optim.triangle_peak must be in [0, 1), got {peak_at}")
    _check(total_steps is not None,
           "schedule 'triangular' needs total_steps (the run's training "
           "steps): pass make_schedule(..., total_steps=N)")
    length = int(total_steps) - warmup_steps
    _check(length > 0,
           f"schedule 'triangular' needs total_steps > warmup steps, got "
           f"total_steps={total_steps}, warmup steps={warmup_steps}")
    top = int(peak_at * length)  # The step at the peak, as airbench rounds.

    def triangular_schedule(t: jax.Array) -> jax.Array:
      t = jnp.minimum(t, length)
      up = start + (1.0 - start) * t / max(top, 1)
      down = 1.0 + (end - 1.0) * (t - top) / (length - top)
      return peak * jnp.where(t < top, up, down)
    return triangular_schedule

  raise OptimConfigError(
      f"unknown optim.schedule {name!r}; known: {', '.join(SCHEDULES)}")


def step_hparams(optim_cfg: Any, batch_size: Optional[int]
                 ) -> tuple[float, float]:
  """(learning rate, weight decay) as the chain uses them per step.

  'step' units: the config's values. 'per_1024' (airbench's decoupled form,
  momentum and nesterov only): the config's learning_rate is the step size
  per 1024 examples once momentum has built up and its weight_decay the decay
  per 1024 examples. With a mean loss over the batch the step's rate is
  learning_rate * batch / kilostep_scale, kilostep_scale = 1024 * (1 + 1 /
  (1 - momentum)) (airbench's estimate of how much Nesterov momentum enlarges
  a step, so changing the momentum leaves the step size alone), and the L2
  coefficient that gives the decay per 1024 examples (with the step's rate)
  is weight_decay / learning_rate.
  """
  units = _field(optim_cfg, "hparam_units")
  _check(units in HPARAM_UNITS,
         f"unknown optim.hparam_units {units!r}; known: "
         f"{', '.join(HPARAM_UNITS)}")
  lr = float(_field(optim_cfg, "learning_rate"))
  wd = float(_field(optim_cfg, "weight_decay"))
  if units == "step":
    return lr, wd
  name = _field(optim_cfg, "optimizer")
  _check(name in ("momentum", "nesterov"),
         f"optim.hparam_units='per_1024' is defined for momentum and "
         f"nesterov, not {name!r}")
  _check(batch_size is not None and batch_size > 0,
         "optim.hparam_units='per_1024' needs the batch size")
  _check(lr > 0, f"optim.learning_rate must be > 0 with hparam_units="
         f"'per_1024', got {lr}")
  momentum = _check_fraction(optim_cfg, "momentum")
  kilostep_scale = 1024.0 * (1.0 + 1.0 / (1.0 - momentum))
  return lr * batch_size / kilostep_scale, wd / lr


def make_schedule(optim_cfg: Any, steps_per_epoch: int, *,
                  total_steps: Optional[int] = None,
                  batch_size: Optional[int] = None) -> optax.Schedule:
  """Returns step -> learning rate (float32), jit-able and cheap.

  Epoch fields are turned into steps with `steps_per_epoch`. With warmup the
  rate climbs linearly, `peak * t / warmup_steps` for t < warmup_steps (0 at
  the very first step), and the schedule then runs on the shifted clock
  `t - warmup_steps`: every decay period, step boundary and cosine length is
  counted from the end of warmup. `total_steps` is required for 'cosine' and
  'triangular' (which last total_steps - warmup_steps) and ignored otherwise;
  `batch_size` only for hparam_units 'per_1024' (see `step_hparams`).
  """
  _check(isinstance(steps_per_epoch, int) and steps_per_epoch > 0,
         f"steps_per_epoch must be a positive integer, got {steps_per_epoch!r}")
  peak = float(_field(optim_cfg, "learning_rate"))
  _check(math.isfinite(peak) and peak >= 0,
         f"optim.learning_rate must be finite and >= 0, got {peak}")
  if _field(optim_cfg, "hparam_units") != "step":
    peak, _ = step_hparams(optim_cfg, batch_size)
    optim_cfg = {**dict(optim_cfg.items()), "learning_rate": peak}
  warmup_epochs = float(_field(optim_cfg, "warmup_epochs"))
  _check(warmup_epochs >= 0,
         f"optim.warmup_epochs must be >= 0, got {warmup_epochs}")
  warmup_steps = _epochs_to_steps(warmup_epochs, steps_per_epoch)
  decay = _decay_schedule(optim_cfg, steps_per_epoch, total_steps,
                          warmup_steps)

  def schedule(step) -> jax.Array:
    t = jnp.asarray(step, jnp.float32)
    if warmup_steps == 0:
      return decay(t).astype(jnp.float32)
    after = decay(jnp.maximum(t - warmup_steps, 0.0))
    ramp = peak * t / warmup_steps
    return jnp.where(t < warmup_steps, ramp, after).astype(jnp.float32)

  return schedule


# --- Weight decay filter ------------------------------------------------------


def param_path(path: tuple) -> str:
  """'/'-joined name of a key path from jax.tree_util: 'conv1/kernel'."""
  parts = []
  for key in path:
    if isinstance(key, jax.tree_util.DictKey):
      parts.append(str(key.key))
    elif isinstance(key, jax.tree_util.GetAttrKey):
      parts.append(key.name)
    elif isinstance(key, jax.tree_util.SequenceKey):
      parts.append(str(key.idx))
    elif isinstance(key, jax.tree_util.FlattenedIndexKey):
      parts.append(str(key.key))
    else:
      parts.append(str(key))
  return "/".join(parts)


def make_param_mask(pattern: Optional[str],
                    field: str = "optim.weight_decay_filter", *,
                    empty: bool = True) -> Callable[[Any], Any]:
  """Returns params -> bool pytree: True where `re.search(pattern, path)`.

  The mask is a function because make_optimizer never sees the params; optax
  calls it on the params at init and on the updates (same tree) each step.
  None selects every parameter (`empty=False`: none). `field` names the
  config field in the error for a bad regex.
  """
  if pattern is None:
    return lambda tree: jax.tree_util.tree_map(lambda _: empty, tree)
  try:
    regex = re.compile(pattern)
  except re.error as e:
    raise OptimConfigError(
        f"{field} {pattern!r} is not a valid regex: {e}") from None
  return lambda tree: jax.tree_util.tree_map_with_path(
      lambda path, _: regex.search(param_path(path)) is not None, tree)


# --- Gradient terms and decoupled decay ---------------------------------------


def _add_l1_sign(l1: float) -> optax.GradientTransformation:
  """Adds `l1 * sign(w)`, the (sub)gradient of `l1 * |w|` (0 at w = 0)."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("L1 regularisation needs params: call "
                       "optimizer.update(grads, opt_state, params)")
    updates = jax.tree_util.tree_map(
        lambda g, w: g + l1 * jnp.sign(w).astype(g.dtype), updates, params)
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)


class ScheduledDecayState(NamedTuple):
  count: jax.Array  # int32 scalar: updates done so far.


def _scheduled_decoupled_decay(
    weight_decay: float,
    schedule: optax.Schedule) -> optax.GradientTransformation:
  """Subtracts `schedule(t) * wd * w` from the update (after the optimizer).

  Its own counter runs in step with the optimizer's, so step t decays with
  the same learning rate the optimizer used at step t.
  """

  def init_fn(params):
    del params
    return ScheduledDecayState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("decoupled weight decay needs params: call "
                       "optimizer.update(grads, opt_state, params)")
    scale = schedule(state.count) * weight_decay
    updates = jax.tree_util.tree_map(
        lambda u, w: u - (scale * w).astype(u.dtype), updates, params)
    return updates, ScheduledDecayState(count=state.count + 1)

  return optax.GradientTransformation(init_fn, update_fn)


# --- Per-parameter learning-rate factor and freezing ----------------------------


def _scale_gradient(factor: float) -> optax.GradientTransformation:
  """Multiplies the gradient by `factor` (used under optax.masked)."""
  return optax.stateless(
      lambda updates, params=None: jax.tree_util.tree_map(
          lambda g: g * jnp.asarray(factor, g.dtype), updates))


class FreezeState(NamedTuple):
  count: jax.Array  # int32 scalar: updates done so far.


def freeze(always: Callable[[Any], Any], after: Callable[[Any], Any],
           after_steps: int) -> optax.GradientTransformation:
  """Zeroes the final update of parameters where `always(params)` is True,
  and where `after(params)` is True from update number `after_steps` on
  (0-based: updates 0 .. after_steps - 1 still apply). Momentum and weight
  decay of a frozen parameter thus never reach it."""

  def init_fn(params):
    del params
    return FreezeState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    training = state.count < after_steps
    updates = jax.tree_util.tree_map(
        lambda u, a, b: jnp.where(a | (b & ~training), jnp.zeros_like(u), u),
        updates, always(updates), after(updates))
    return updates, FreezeState(count=state.count + 1)

  return optax.GradientTransformation(init_fn, update_fn)


# --- Lookahead --------------------------------------------------------------------


def lookahead(step: jax.Array, live: Any, slow: Any, *, every: int,
              decay: float, start_step: int, steps_per_epoch: int,
              total_steps: int) -> tuple[Any, Any]:
  """One lookahead update after the update that made `step` updates in all:
  (live, slow) -> (live, slow), for pytrees of the weights and BatchNorm
  statistics (airbench's LookaheadState, with its schedule).

  Sync steps are the multiples of `every` after `start_step`. The first one
  only copies the live weights into `slow`; each later one sets
  slow = rho * slow + (1 - rho) * live with rho = decay * (step / total)^3
  and writes `slow` back into `live`. Once `slow` exists, the live weights
  also become `slow` at every epoch end and at the last step.
  """
  t = jnp.asarray(step, jnp.int32)
  first = (start_step // every + 1) * every
  sync = (t % every == 0) & (t >= first)
  frac = t.astype(jnp.float32) / float(total_steps)
  rho = jnp.where(t > first, jnp.float32(decay) * frac ** 3, 0.0)
  slow = jax.tree_util.tree_map(
      lambda s, w: jnp.where(sync, rho * s + (1.0 - rho) * w, s), slow, live)
  copy_back = sync | (((t % steps_per_epoch == 0) | (t >= total_steps))
                      & (t >= first))
  live = jax.tree_util.tree_map(lambda w, s: jnp.where(copy_back, s, w),
                                live, slow)
  return live, slow


# --- EMA of parameters --------------------------------------------------------


def ema_decay_at(step, decay: float, ramp: bool) -> jax.Array:
  """Decay used for the EMA update that makes `step` updates in total.

  With `ramp`, TF's ExponentialMovingAverage(decay, num_updates=step):
  min(decay, (1 + t) / (10 + t)), where t counts the updates INCLUDING the
  current one (the TF code reads global_step after apply_gradients has
  incremented it). Early averages thus forget the random init quickly.
  """
  if not ramp:
    return jnp.asarray(decay, jnp.float32)
  t = jnp.asarray(step, jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + t) / (10.0 + t))


def ema_update(ema: Any, value: Any, decay_t: jax.Array) -> Any:
  """`decay_t * ema + (1 - decay_t) * value`, leafwise, in float32.

  The one EMA rule: `ema_of_params` averages the parameters with it, and the
  train step (`steps.train_step`) the BatchNorm statistics.
  """
  return jax.tree_util.tree_map(
      lambda e, v: decay_t * e + (1.0 - decay_t) * v.astype(jnp.float32),
      ema, value)


class EmaParamsState(NamedTuple):
  count: jax.Array  # int32 scalar: updates averaged so far.
  ema: Any  # float32 pytree shaped like the params.


def ema_of_params(decay: float, ramp: bool) -> optax.GradientTransformation:
  """Passes updates through and keeps an EMA of the post-update params.

  Must be the last link of a chain, so the updates it sees are final and
  `params + updates` is what the trainer will apply. Starts from the
  initial params, as TF's shadow variables do.
  """
  _check(0.0 <= decay <= 1.0, f"optim.ema_decay must be in [0, 1], got {decay}")

  def init_fn(params):
    # A copy, so the EMA never aliases a params buffer the trainer donates.
    ema = jax.tree_util.tree_map(
        lambda p: jnp.array(p, dtype=jnp.float32, copy=True), params)
    return EmaParamsState(count=jnp.zeros([], jnp.int32), ema=ema)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("ema_of_params needs the params: call "
                       "optimizer.update(grads, opt_state, params)")
    new_params = optax.apply_updates(params, updates)
    count = state.count + 1
    ema = ema_update(state.ema, new_params, ema_decay_at(count, decay, ramp))
    return updates, EmaParamsState(count=count, ema=ema)

  return optax.GradientTransformation(init_fn, update_fn)


def ema_params(opt_state: Any) -> Any:
  """The EMA of the parameters kept by the state of a chain whose last link
  is `ema_of_params` (as `make_optimizer` builds it); a nested chain is
  followed through its last link. The one accessor of the EMA parameters."""
  last = opt_state
  while not isinstance(last, EmaParamsState):
    # optax.chain's state is a tuple of its links' states; other NamedTuple
    # states are tuples too, but their last field is never an EMA state.
    if not isinstance(last, tuple) or not last:
      raise ValueError("no EmaParamsState as the last link of this optimizer "
                       "state: was it built by jaxcnn.optim.make_optimizer "
                       "(or with ema_of_params last)?")
    last = last[-1]
  return last.ema


# --- The optimizer ------------------------------------------------------------


def _check_fraction(optim_cfg: Any, key: str) -> float:
  value = float(_field(optim_cfg, key))
  _check(0.0 <= value < 1.0, f"optim.{key} must be in [0, 1), got {value}")
  return value


def _base_optimizer(optim_cfg: Any, schedule: optax.Schedule,
                    mask: Callable[[Any], Any]) -> optax.GradientTransformation:
  name = _field(optim_cfg, "optimizer")
  if name == "sgd":
    return optax.sgd(schedule)
  if name in ("momentum", "nesterov"):
    # optax's trace is TF's MomentumOptimizer: acc = m * acc + g, w -= lr * acc.
    momentum = _check_fraction(optim_cfg, "momentum")
    return optax.sgd(schedule, momentum=momentum,
                     nesterov=(name == "nesterov"))
  if name in ("adam", "adamw"):
    b1 = _check_fraction(optim_cfg, "b1")
    b2 = _check_fraction(optim_cfg, "b2")
    eps = float(_field(optim_cfg, "eps"))
    _check(eps >= 0, f"optim.eps must be >= 0, got {eps}")
    if name == "adam":
      return optax.adam(schedule, b1=b1, b2=b2, eps=eps)
    # optax.adamw subtracts lr_t * wd * w: decay scaled by the schedule.
    return optax.adamw(schedule, b1=b1, b2=b2, eps=eps,
                       weight_decay=float(_field(optim_cfg, "weight_decay")),
                       mask=mask)
  if name == "rmsprop":
    decay = float(_field(optim_cfg, "rmsprop_decay"))
    _check(0.0 <= decay <= 1.0,
           f"optim.rmsprop_decay must be in [0, 1], got {decay}")
    momentum = _check_fraction(optim_cfg, "momentum")
    eps = float(_field(optim_cfg, "eps"))
    _check(eps >= 0, f"optim.eps must be >= 0, got {eps}")
    # eps inside the sqrt, momentum on the lr-scaled step: TF's RMSProp,
    # except that the mean square starts at 0 (TF1 starts it at 1).
    return optax.rmsprop(schedule, decay=decay, eps=eps,
                         momentum=momentum if momentum > 0 else None)
  if name == "adagrad":
    eps = float(_field(optim_cfg, "eps"))
    _check(eps >= 0, f"optim.eps must be >= 0, got {eps}")
    # Accumulator starts at 0.1 as in TF's AdagradOptimizer.
    return optax.adagrad(schedule, initial_accumulator_value=0.1, eps=eps)
  if name == "muon":
    b1 = _check_fraction(optim_cfg, "b1")
    b2 = _check_fraction(optim_cfg, "b2")
    momentum = _check_fraction(optim_cfg, "momentum")
    eps = float(_field(optim_cfg, "eps"))
    adam_scale = float(_field(optim_cfg, "muon_adam_lr_scale"))
    _check(adam_scale > 0,
           f"optim.muon_adam_lr_scale must be > 0, got {adam_scale}")
    return optax.contrib.muon(
        schedule, beta=momentum, nesterov=True, adam_b1=b1, adam_b2=b2,
        eps=eps, adam_learning_rate=lambda t: schedule(t) * adam_scale,
        muon_weight_dimension_numbers=muon_dimensions)
  raise OptimConfigError(
      f"unknown optim.optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")


def muon_dimensions(params: Any) -> Any:
  """Which parameters Muon orthogonalizes, and as what matrix: a conv kernel
  [K, K, Cin, Cout] as a (K*K*Cin) x Cout matrix, a dense kernel as itself;
  None (Adam) for everything else (biases, BatchNorm, 1-D)."""
  def spec(x):
    if x.ndim == 4:
      return optax.contrib.MuonDimensionNumbers(reduction_axis=(0, 1, 2),
                                                output_axis=3)
    if x.ndim == 2:
      return optax.contrib.MuonDimensionNumbers(reduction_axis=0,
                                                output_axis=1)
    return None
  return jax.tree_util.tree_map(spec, params)


def make_optimizer(optim_cfg: Any, steps_per_epoch: int, *,
                   total_steps: Optional[int] = None,
                   batch_size: Optional[int] = None
                   ) -> optax.GradientTransformation:
  """The full chain (see the module docstring) for an `optim` config section.

  `update` must be given the params. `total_steps` is needed by the cosine
  and triangular schedules only, `batch_size` by hparam_units 'per_1024'.
  """
  schedule = make_schedule(optim_cfg, steps_per_epoch, total_steps=total_steps,
                           batch_size=batch_size)
  name = _field(optim_cfg, "optimizer")
  _check(name in OPTIMIZERS,
         f"unknown optim.optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
  mode = _field(optim_cfg, "weight_decay_mode")
  _check(mode in WEIGHT_DECAY_MODES,
         f"unknown optim.weight_decay_mode {mode!r}; known: "
         f"{', '.join(WEIGHT_DECAY_MODES)}")
  _check(float(_field(optim_cfg, "weight_decay")) >= 0,
         f"optim.weight_decay must be >= 0, got "
         f"{_field(optim_cfg, 'weight_decay')}")
  _, weight_decay = step_hparams(optim_cfg, batch_size)
  bias_scale = float(_field(optim_cfg, "bias_lr_scale"))
  _check(math.isfinite(bias_scale) and bias_scale > 0,
         f"optim.bias_lr_scale must be > 0, got {bias_scale}")
  freeze_epochs = float(_field(optim_cfg, "freeze_after_epochs"))
  _check(freeze_epochs >= 0,
         f"optim.freeze_after_epochs must be >= 0, got {freeze_epochs}")
  l1 = float(_field(optim_cfg, "l1"))
  _check(l1 >= 0, f"optim.l1 must be >= 0, got {l1}")
  mask = make_param_mask(_field(optim_cfg, "weight_decay_filter"))
  decoupled = name == "adamw" or mode == "decoupled"

  links = []
  # Terms that are zero are left out, so they cost no state and no compute.
  if bias_scale != 1.0:
    links.append(optax.masked(
        _scale_gradient(bias_scale),
        make_param_mask(_field(optim_cfg, "bias_lr_filter"),
                        "optim.bias_lr_filter")))
  if weight_decay > 0 and not decoupled:
    links.append(optax.add_decayed_weights(weight_decay, mask=mask))
  if l1 > 0:
    links.append(optax.masked(_add_l1_sign(l1), mask))
  links.append(_base_optimizer(optim_cfg, schedule, mask))
  if weight_decay > 0 and decoupled and name != "adamw":
    links.append(optax.masked(
        _scheduled_decoupled_decay(weight_decay, schedule), mask))
  frozen = _field(optim_cfg, "freeze_filter")
  frozen_later = _field(optim_cfg, "freeze_after_filter")
  if frozen or frozen_later:
    links.append(freeze(
        make_param_mask(frozen or None, "optim.freeze_filter", empty=False),
        make_param_mask(frozen_later or None, "optim.freeze_after_filter",
                        empty=False),
        _epochs_to_steps(freeze_epochs, steps_per_epoch)))
  links.append(ema_of_params(float(_field(optim_cfg, "ema_decay")),
                             bool(_field(optim_cfg, "ema_ramp"))))
  return optax.chain(*links)
