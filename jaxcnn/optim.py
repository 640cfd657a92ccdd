"""The optimizer chain. Its schedules are in schedules.py, the EMA of the
parameters (its last link) and lookahead in averaging.py; their public names
are importable from here too.

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
  3b. with optimizer 'muon' and muon_normalize: each Muon-trained kernel
     rescaled to norm sqrt(output channels) (airbench94_muon);
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

import functools
import math
import re
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from jaxcnn.averaging import (EmaParamsState, ema_decay_at,  # noqa: F401
                              ema_of_params, ema_params, ema_update, lookahead)
from jaxcnn.schedules import (HPARAM_UNITS, SCHEDULES,  # noqa: F401
                              OptimConfigError, check, check_fraction,
                              epochs_to_steps, config_field, make_schedule,
                              step_hparams)

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop",
              "adagrad", "muon")
WEIGHT_DECAY_MODES = ("l2", "decoupled")
MUON_RESTS = ("adam", "nesterov")


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


def freeze_rule(optim_cfg: Any, steps_per_epoch: int
                ) -> tuple[Callable[[Any], Any], Callable[[Any], Any], int]:
  """`freeze`'s arguments from the config: the masks of freeze_filter and
  freeze_after_filter (an empty filter matches nothing) and the step
  freeze_after_epochs ends on."""
  always = config_field(optim_cfg, "freeze_filter")
  later = config_field(optim_cfg, "freeze_after_filter")
  return (make_param_mask(always or None, "optim.freeze_filter", empty=False),
          make_param_mask(later or None, "optim.freeze_after_filter",
                          empty=False),
          epochs_to_steps(float(config_field(optim_cfg, "freeze_after_epochs")),
                          steps_per_epoch))


def frozen_from(optim_cfg: Any, paths: Sequence[str],
                steps_per_epoch: int, rule: Optional[tuple] = None
                ) -> Optional[int]:
  """The first update from which `freeze` zeroes the updates of every
  parameter in `paths` ('/'-joined names): 0 when freeze_filter matches
  them all, the freeze_after_epochs step when each is matched by one of the
  two filters; None when some stays trainable (or `paths` is empty). Asks
  the optimizer's own masks (freeze_rule, or `rule`: one it built), on a
  tree of those names."""
  if not paths:
    return None
  tree: dict = {}
  for path in paths:
    *parents, leaf = path.split("/")
    node = tree
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = 0
  always, after, after_steps = rule or freeze_rule(optim_cfg, steps_per_epoch)
  always = jax.tree.leaves(always(tree))
  after = jax.tree.leaves(after(tree))
  if all(always):
    return 0
  if all(a or b for a, b in zip(always, after)):
    return after_steps
  return None


# --- The optimizer ------------------------------------------------------------


def _base_optimizer(optim_cfg: Any, schedule: optax.Schedule,
                    mask: Callable[[Any], Any]) -> optax.GradientTransformation:
  name = config_field(optim_cfg, "optimizer")
  if name == "sgd":
    return optax.sgd(schedule)
  if name in ("momentum", "nesterov"):
    # optax's trace is TF's MomentumOptimizer: acc = m * acc + g, w -= lr * acc.
    momentum = check_fraction(optim_cfg, "momentum")
    return optax.sgd(schedule, momentum=momentum,
                     nesterov=(name == "nesterov"))
  if name in ("adam", "adamw"):
    b1 = check_fraction(optim_cfg, "b1")
    b2 = check_fraction(optim_cfg, "b2")
    eps = float(config_field(optim_cfg, "eps"))
    check(eps >= 0, f"optim.eps must be >= 0, got {eps}")
    if name == "adam":
      return optax.adam(schedule, b1=b1, b2=b2, eps=eps)
    # optax.adamw subtracts lr_t * wd * w: decay scaled by the schedule.
    return optax.adamw(schedule, b1=b1, b2=b2, eps=eps,
                       weight_decay=float(config_field(optim_cfg, "weight_decay")),
                       mask=mask)
  if name == "rmsprop":
    decay = float(config_field(optim_cfg, "rmsprop_decay"))
    check(0.0 <= decay <= 1.0,
           f"optim.rmsprop_decay must be in [0, 1], got {decay}")
    momentum = check_fraction(optim_cfg, "momentum")
    eps = float(config_field(optim_cfg, "eps"))
    check(eps >= 0, f"optim.eps must be >= 0, got {eps}")
    # eps inside the sqrt, momentum on the lr-scaled step: TF's RMSProp,
    # except that the mean square starts at 0 (TF1 starts it at 1).
    return optax.rmsprop(schedule, decay=decay, eps=eps,
                         momentum=momentum if momentum > 0 else None)
  if name == "adagrad":
    eps = float(config_field(optim_cfg, "eps"))
    check(eps >= 0, f"optim.eps must be >= 0, got {eps}")
    # Accumulator starts at 0.1 as in TF's AdagradOptimizer.
    return optax.adagrad(schedule, initial_accumulator_value=0.1, eps=eps)
  if name == "muon":
    momentum = check_fraction(optim_cfg, "momentum")
    eps = float(config_field(optim_cfg, "eps"))
    check(eps >= 0, f"optim.eps must be >= 0, got {eps}")
    rest = config_field(optim_cfg, "muon_rest")
    check(rest in MUON_RESTS, f"unknown optim.muon_rest {rest!r}; known: "
           f"{', '.join(MUON_RESTS)}")
    rest_scale = float(config_field(optim_cfg, "muon_rest_lr_scale"))
    check(math.isfinite(rest_scale) and rest_scale > 0,
           f"optim.muon_rest_lr_scale must be > 0, got {rest_scale}")
    ns_steps = config_field(optim_cfg, "muon_ns_steps")
    check(isinstance(ns_steps, int) and ns_steps >= 1,
           f"optim.muon_ns_steps must be an integer >= 1, got {ns_steps!r}")
    pattern = config_field(optim_cfg, "muon_filter")
    make_param_mask(pattern, "optim.muon_filter")  # A bad regex fails here.
    rest_schedule = lambda t: schedule(t) * rest_scale
    if rest == "adam":
      b1 = check_fraction(optim_cfg, "b1")
      b2 = check_fraction(optim_cfg, "b2")
      return optax.contrib.muon(
          schedule, ns_steps=ns_steps, beta=momentum, nesterov=True,
          adam_b1=b1, adam_b2=b2, eps=eps, adam_learning_rate=rest_schedule,
          muon_weight_dimension_numbers=functools.partial(
              muon_dimensions, pattern=pattern))
    # airbench94_muon's split: Muon (PyTorch-style Nesterov momentum, then
    # Newton-Schulz; no width factor) for the kernels, Nesterov SGD for
    # everything else.
    return optax.partition(
        {"muon": optax.chain(optax.trace(decay=momentum, nesterov=True),
                             orthogonalize(ns_steps, eps),
                             optax.scale_by_learning_rate(schedule)),
         "rest": optax.sgd(rest_schedule, momentum=check_fraction(
             optim_cfg, "muon_rest_momentum"), nesterov=True)},
        lambda params: jax.tree.map(lambda m: "muon" if m else "rest",
                                    muon_mask(params, pattern)))
  raise OptimConfigError(
      f"unknown optim.optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")


def _muon_spec(x: Any) -> Any:
  """A conv kernel [K, K, Cin, Cout] as a (K*K*Cin) x Cout matrix, a dense
  kernel as itself; None for any other rank."""
  if x.ndim == 4:
    return optax.contrib.MuonDimensionNumbers(reduction_axis=(0, 1, 2),
                                              output_axis=3)
  if x.ndim == 2:
    return optax.contrib.MuonDimensionNumbers(reduction_axis=0, output_axis=1)
  return None


# Newton-Schulz quintic coefficients of Muon (Jordan et al. 2024), chosen for
# speed over exactness: a few steps leave the singular values spread around
# 1 (roughly 0.5-1.5), which trains as well as an exact U V^T.
NEWTON_SCHULZ_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(matrix: jax.Array, steps: int, eps: float = 1e-7
                  ) -> jax.Array:
  """About U V^T of `matrix` = U S V^T: `steps` quintic iterations on the
  matrix over its Frobenius norm, computed on the wide orientation."""
  a, b, c = NEWTON_SCHULZ_COEFFS
  x = matrix / (jnp.linalg.norm(matrix) + eps)
  tall = x.shape[0] > x.shape[1]
  if tall:
    x = x.T
  for _ in range(steps):
    gram = x @ x.T
    x = a * x + (b * gram + c * gram @ gram) @ x
  return x.T if tall else x


def orthogonalize(steps: int, eps: float = 1e-7
                  ) -> optax.GradientTransformation:
  """Replaces each update by `newton_schulz` of it as a matrix (`_muon_spec`:
  a conv kernel as (K*K*Cin) x Cout). Every leaf must be 2-D or 4-D."""
  def one(u):
    flat = u.reshape(-1, u.shape[-1])
    return newton_schulz(flat.astype(jnp.float32), steps, eps
                         ).reshape(u.shape).astype(u.dtype)
  return optax.stateless(
      lambda updates, params=None: jax.tree_util.tree_map(one, updates))


def muon_mask(params: Any, pattern: str = r"kernel$") -> Any:
  """True for the parameters Muon trains: 2-D and 4-D kernels whose path
  matches `pattern` (optim.muon_filter)."""
  chosen = make_param_mask(pattern, "optim.muon_filter")(params)
  return jax.tree_util.tree_map(
      lambda x, c: bool(c) and _muon_spec(x) is not None, params, chosen)


def muon_dimensions(params: Any, pattern: str = r"kernel$") -> Any:
  """Which parameters Muon orthogonalizes, and as what matrix (`_muon_spec`):
  those of `muon_mask`; None (muon_rest) for everything else."""
  return jax.tree_util.tree_map(
      lambda x, m: _muon_spec(x) if m else None, params,
      muon_mask(params, pattern))


def _normalize_kernels() -> optax.GradientTransformation:
  """airbench94_muon's weight normalization: the update also rescales each
  kernel to Frobenius norm sqrt(output channels) (its last axis) before the
  step, w_new = w * sqrt(Cout) / |w| + u. Used under optax.masked."""
  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("muon_normalize needs params: call "
                       "optimizer.update(grads, opt_state, params)")
    def one(u, w):
      factor = jnp.sqrt(jnp.float32(w.shape[-1])) / jnp.linalg.norm(w)
      return u + (w * (factor - 1.0)).astype(u.dtype)
    return jax.tree_util.tree_map(one, updates, params), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(),
                                      update_fn)


def make_optimizer(optim_cfg: Any, steps_per_epoch: int, *,
                   total_steps: Optional[int] = None,
                   batch_size: Optional[int] = None,
                   schedule: Optional[optax.Schedule] = None,
                   rule: Optional[tuple] = None
                   ) -> optax.GradientTransformation:
  """The full chain (see the module docstring) for an `optim` config section.

  `update` must be given the params. `total_steps` is needed by the cosine
  and triangular schedules only, `batch_size` by hparam_units 'per_1024'.
  `schedule` and `rule`: the ones make_schedule and freeze_rule build from
  these arguments, when the caller has built them already.
  """
  if schedule is None:
    schedule = make_schedule(optim_cfg, steps_per_epoch,
                             total_steps=total_steps, batch_size=batch_size)
  name = config_field(optim_cfg, "optimizer")
  check(name in OPTIMIZERS,
         f"unknown optim.optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
  mode = config_field(optim_cfg, "weight_decay_mode")
  check(mode in WEIGHT_DECAY_MODES,
         f"unknown optim.weight_decay_mode {mode!r}; known: "
         f"{', '.join(WEIGHT_DECAY_MODES)}")
  check(float(config_field(optim_cfg, "weight_decay")) >= 0,
         f"optim.weight_decay must be >= 0, got "
         f"{config_field(optim_cfg, 'weight_decay')}")
  _, weight_decay = step_hparams(optim_cfg, batch_size)
  bias_scale = float(config_field(optim_cfg, "bias_lr_scale"))
  check(math.isfinite(bias_scale) and bias_scale > 0,
         f"optim.bias_lr_scale must be > 0, got {bias_scale}")
  freeze_epochs = float(config_field(optim_cfg, "freeze_after_epochs"))
  check(freeze_epochs >= 0,
         f"optim.freeze_after_epochs must be >= 0, got {freeze_epochs}")
  l1 = float(config_field(optim_cfg, "l1"))
  check(l1 >= 0, f"optim.l1 must be >= 0, got {l1}")
  mask = make_param_mask(config_field(optim_cfg, "weight_decay_filter"))
  decoupled = name == "adamw" or mode == "decoupled"

  links = []
  # Terms that are zero are left out, so they cost no state and no compute.
  if bias_scale != 1.0:
    links.append(optax.masked(
        _scale_gradient(bias_scale),
        make_param_mask(config_field(optim_cfg, "bias_lr_filter"),
                        "optim.bias_lr_filter")))
  if weight_decay > 0 and not decoupled:
    links.append(optax.add_decayed_weights(weight_decay, mask=mask))
  if l1 > 0:
    links.append(optax.masked(_add_l1_sign(l1), mask))
  links.append(_base_optimizer(optim_cfg, schedule, mask))
  if weight_decay > 0 and decoupled and name != "adamw":
    links.append(optax.masked(
        _scheduled_decoupled_decay(weight_decay, schedule), mask))
  if name == "muon" and bool(config_field(optim_cfg, "muon_normalize")):
    pattern = config_field(optim_cfg, "muon_filter")
    links.append(optax.masked(_normalize_kernels(),
                              lambda tree: muon_mask(tree, pattern)))
  if (config_field(optim_cfg, "freeze_filter")
      or config_field(optim_cfg, "freeze_after_filter")):
    links.append(freeze(*(rule or freeze_rule(optim_cfg, steps_per_epoch))))
  links.append(ema_of_params(float(config_field(optim_cfg, "ema_decay")),
                             bool(config_field(optim_cfg, "ema_ramp"))))
  return optax.chain(*links)
