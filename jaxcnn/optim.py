"""The optimizer chain, built from the parameter groups of `optim.groups`
(jaxcnn/groups.py). Its schedules are in schedules.py, the EMA of the
parameters (its last link) and lookahead in averaging.py; their public names
are importable from here too.

The chain built by `make_optimizer` is optax.partition over the groups
(each parameter in the first group whose `match` is found in its path),
then `ema_of_params`. Each group's own chain is, in order:
  1. L2 weight decay as a gradient term `wd * w` (mode 'l2'; the TF code's
     `wd * tf.nn.l2_loss(w)` has exactly this gradient);
  2. L1: `l1 * sign(w)` added to the gradient;
  3. the group's optimizer, with the group's schedule as its learning rate;
     in mode 'decoupled' (any optimizer but adamw) `lr_t * wd * w` is then
     subtracted from the weights, so decoupled decay follows the schedule
     as in AdamW;
  3b. muon with `normalize`: each kernel rescaled to norm sqrt(output
     channels) (airbench94_muon), on every update, or (normalize_every,
     normalize_every_rise) on hiverge's rising intervals (normalize_steps);
  4. with frozen_from_epochs x > 0: zero updates from the step x epochs end
     on (`freeze_after`); a group with frozen_from_epochs 0 is never updated
     and keeps no optimizer state (optax.set_to_zero).
With `optim.freeze` rules (regex, epochs), `freeze_by_path` then zeroes the
updates of each parameter a rule matches from that rule's step on.
Last, `ema_of_params`: updates pass through unchanged and the state keeps an
EMA of the post-step parameters (TF ExponentialMovingAverage).

A group's schedule is the run's (optim.schedule, decay_epochs, ...,
warmup_epochs) with the group's own `schedule` fields laid over it, at the
group's peak `lr`; with units 'per_1024' its lr and weight decay are
airbench's decoupled ones, converted by `step_hparams`. Lookahead
(`lookahead`) is not a link of the chain: it also moves the BatchNorm
statistics, which optax never sees, so the train step applies it.

'adamw' always decays through optax.adamw's own decoupled weight decay
whatever `weight_decay_mode` says, and never adds the L2 gradient term as
well: adding both would decay twice.

The trainer gets the learning rate it logs (that of the last group, by
convention the catch-all) from `make_run_schedule`; a schedule is a few jnp
ops, cheap inside a jitted step.
"""
from __future__ import annotations

import math
import re
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn.averaging import (EmaParamsState, ema_decay_at,  # noqa: F401
                              ema_of_params, ema_params, ema_update, lookahead)
from jaxcnn.schedules import (HPARAM_UNITS, SCHEDULES,  # noqa: F401
                              OptimConfigError, check, check_fraction,
                              epochs_to_steps, config_field, make_schedule,
                              step_hparams)
from jaxcnn.groups import (OPTIMIZERS, OPTIONS, UNITS,  # noqa: F401
                           WEIGHT_DECAY_MODES)


# --- Parameter paths ------------------------------------------------------------


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


# --- Freezing -------------------------------------------------------------------


class FreezeState(NamedTuple):
  count: jax.Array  # int32 scalar: updates done so far.


def freeze_after(after_steps: int) -> optax.GradientTransformation:
  """Zeroes the final update from update number `after_steps` on (0-based:
  updates 0 .. after_steps - 1 still apply). Momentum and weight decay of a
  frozen parameter thus never reach it."""

  def init_fn(params):
    del params
    return FreezeState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    training = state.count < after_steps
    updates = jax.tree_util.tree_map(
        lambda u: jnp.where(training, u, jnp.zeros_like(u)), updates)
    return updates, FreezeState(count=state.count + 1)

  return optax.GradientTransformation(init_fn, update_fn)


def freeze_rules(optim_cfg: Any) -> list[tuple[str, float]]:
  """optim.freeze as checked (regex, epochs) pairs; [] when the field is
  absent (configs saved before it) or empty."""
  rules = optim_cfg.get("freeze", ()) if hasattr(optim_cfg, "get") else ()
  out = []
  check(isinstance(rules, (list, tuple)),
        f"optim.freeze must be a list of [regex, epochs] pairs, got {rules!r}")
  for i, rule in enumerate(rules):
    ok = (isinstance(rule, (list, tuple)) and len(rule) == 2
          and isinstance(rule[0], str) and isinstance(rule[1], (int, float))
          and not isinstance(rule[1], bool) and math.isfinite(rule[1])
          and rule[1] >= 0)
    check(ok, f"optim.freeze[{i}] must be a pair [regex, epochs >= 0], got "
          f"{rule!r}")
    try:
      re.compile(rule[0])
    except re.error as e:
      raise OptimConfigError(
          f"optim.freeze[{i}]: bad regex {rule[0]!r}: {e}") from None
    out.append((rule[0], float(rule[1])))
  return out


def _rule_step(rules: Sequence[tuple[str, float]], path: str,
               steps_per_epoch: int) -> Optional[int]:
  """The first update a freeze rule zeroes for `path`; None: no rule
  matches it."""
  steps = [epochs_to_steps(e, steps_per_epoch) for regex, e in rules
           if re.search(regex, path)]
  return min(steps) if steps else None


def freeze_by_path(rules: Sequence[tuple[str, float]], steps_per_epoch: int
                   ) -> optax.GradientTransformation:
  """Zeroes the update of each parameter from update number (0-based) its
  earliest matching rule's step on; the others pass unchanged."""

  def init_fn(params):
    del params
    return FreezeState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    del params

    def one(path, u):
      step = _rule_step(rules, param_path(path), steps_per_epoch)
      if step is None:
        return u
      return jnp.where(state.count < step, u, jnp.zeros_like(u))

    updates = jax.tree_util.tree_map_with_path(one, updates)
    return updates, FreezeState(count=state.count + 1)

  return optax.GradientTransformation(init_fn, update_fn)


# --- Groups ---------------------------------------------------------------------


def _where(g: Any) -> str:
  return f"optim.groups.{g.get('name')}"


def path_tree(paths: Sequence[str]) -> dict:
  """A nested dict with a 0 leaf at each '/'-joined path."""
  tree: dict = {}
  for path in paths:
    *parents, leaf = path.split("/")
    node = tree
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = 0
  return tree


def _compiled(groups: Sequence[Any]) -> list:
  """[(group, compiled match)]; refuses bad names, regexes and duplicates."""
  seen_names, seen_patterns, out = {}, {}, []
  check(len(groups) > 0, "optim.groups is empty: give at least one group "
        "(the catch-all match='.*')")
  for i, g in enumerate(groups):
    name, pattern = g.get("name"), g.get("match")
    check(isinstance(name, str) and re.match(r"^[A-Za-z0-9_]+$", name)
          is not None, f"optim.groups.{i}: name {name!r}: use letters, "
          "digits and '_'")
    check(name not in seen_names, f"optim.groups: two groups named {name!r} "
          f"(groups {seen_names.get(name)} and {i})")
    check(isinstance(pattern, str), f"{_where(g)}.match must be a regex "
          f"string, got {pattern!r}")
    check(pattern not in seen_patterns,
          f"optim.groups: groups {seen_patterns.get(pattern)!r} and {name!r} "
          f"have the same match {pattern!r}")
    seen_names[name], seen_patterns[pattern] = i, name
    try:
      regex = re.compile(pattern)
    except re.error as e:
      raise OptimConfigError(
          f"{_where(g)}.match {pattern!r} is not a valid regex: {e}") from None
    out.append((g, regex))
  return out


def label_paths(groups: Sequence[Any], paths: Sequence[str]) -> dict:
  """{path: group name}: the first group whose match is found in the path.
  Refuses a parameter no group matches and a group that matches none."""
  compiled = _compiled(groups)
  labels, unmatched = {}, []
  for path in paths:
    name = next((g.name for g, regex in compiled if regex.search(path)), None)
    if name is None:
      unmatched.append(path)
    labels[path] = name
  if unmatched:
    raise OptimConfigError(
        f"optim.groups: no group matches {', '.join(unmatched)} (add a "
        "catch-all group match='.*' last)")
  used = set(labels.values())
  idle = [g.name for g, _ in compiled if g.name not in used]
  if idle and paths:
    raise OptimConfigError(
        f"optim.groups: group{'s' if len(idle) > 1 else ''} "
        f"{', '.join(repr(n) for n in idle)} match{'' if len(idle) > 1 else 'es'}"
        f" no parameter (the parameters: {', '.join(paths[:12])}"
        f"{' ...' if len(paths) > 12 else ''})")
  return labels


def _leaf_paths(params: Any) -> list[str]:
  return [param_path(p) for p, _ in
          jax.tree_util.tree_flatten_with_path(params)[0]]


def check_groups(optim_cfg: Any, params: Any) -> dict:
  """Checks the groups against the parameters (arrays or shapes): every
  parameter matched, every group used, a muon group's parameters 2-D or
  4-D. Returns {path: group name}."""
  groups = config_field(optim_cfg, "groups")
  paths = _leaf_paths(params)
  labels = label_paths(groups, paths)
  idle = [regex for regex, _ in freeze_rules(optim_cfg)
          if not any(re.search(regex, p) for p in paths)]
  check(not idle, f"optim.freeze: {', '.join(map(repr, idle))} matches no "
        f"parameter (the parameters: {', '.join(paths)})")
  by_name = {g.name: g for g in groups}
  bad = [f"{path} {tuple(x.shape)}" for (path, x) in zip(
      paths, jax.tree_util.tree_leaves(params))
         if by_name[labels[path]].optimizer == "muon"
         and len(x.shape) not in (2, 4)]
  check(not bad, "optim.groups: muon trains 2-D and 4-D parameters only, "
        f"not {', '.join(bad)} (give them another group)")
  return labels


def frozen_from(optim_cfg: Any, paths: Sequence[str],
                steps_per_epoch: int) -> Optional[int]:
  """The first update from which the chain zeroes the updates of every
  parameter in `paths` ('/'-joined names): 0 when all their groups have
  frozen_from_epochs 0, else the latest of their freezing steps (each
  parameter's the earliest of its group's and of its optim.freeze rules');
  None when one stays trainable (or `paths` is empty)."""
  if not paths:
    return None
  groups = config_field(optim_cfg, "groups")
  rules = freeze_rules(optim_cfg)
  labels = {}
  for g, regex in _compiled(groups):
    for path in paths:
      if path not in labels and regex.search(path):
        labels[path] = g
  steps = []
  for path in paths:
    g = labels.get(path)
    own = [s for s in (
        None if g is None or g.frozen_from_epochs is None
        else epochs_to_steps(float(g.frozen_from_epochs), steps_per_epoch),
        _rule_step(rules, path, steps_per_epoch)) if s is not None]
    if not own:
      return None
    steps.append(min(own))
  return max(steps)


SCHEDULE_FIELDS = ("schedule", "decay_epochs", "decay_rate", "staircase",
                   "step_boundaries_epochs", "step_factor",
                   "cosine_final_fraction", "triangle_start", "triangle_peak",
                   "triangle_end", "length_epochs", "warmup_epochs")


def group_schedule_config(optim_cfg: Any, g: Any) -> dict:
  """The fields make_schedule and step_hparams read, for group `g`: the
  run's schedule with the group's `schedule` laid over it, and the group's
  peak rate, units, optimizer, momentum and weight decay."""
  out = {k: optim_cfg[k] for k in SCHEDULE_FIELDS if k in optim_cfg}
  own = g.get("schedule")
  if own is not None:
    check(hasattr(own, "items"), f"{_where(g)}.schedule must be None or a "
          f"Config of schedule fields, got {own!r}")
    for k, v in own.items():
      check(k in SCHEDULE_FIELDS, f"{_where(g)}.schedule has no field {k!r}; "
            f"schedule fields: {', '.join(SCHEDULE_FIELDS)}")
      out[k] = v
  out.update(learning_rate=g.lr, hparam_units=g.units, optimizer=g.optimizer,
             momentum=g.get("momentum", 0.0), weight_decay=g.weight_decay,
             where=_where(g))
  return out


def make_group_schedule(optim_cfg: Any, g: Any, steps_per_epoch: int, *,
                        total_steps: Optional[int] = None,
                        batch_size: Optional[int] = None) -> optax.Schedule:
  """Step -> learning rate of group `g` (see group_schedule_config)."""
  return make_schedule(group_schedule_config(optim_cfg, g), steps_per_epoch,
                       total_steps=total_steps, batch_size=batch_size)


def make_group_schedules(optim_cfg: Any, steps_per_epoch: int, *,
                         total_steps: Optional[int] = None,
                         batch_size: Optional[int] = None) -> dict:
  """{group name: its schedule}, each built once: the optimizer's
  (make_optimizer(schedules=...)) and, the last group's, the rate the
  trainer logs."""
  return {g.name: make_group_schedule(optim_cfg, g, steps_per_epoch,
                                      total_steps=total_steps,
                                      batch_size=batch_size)
          for g in config_field(optim_cfg, "groups")}


def make_run_schedule(optim_cfg: Any, steps_per_epoch: int, *,
                      total_steps: Optional[int] = None,
                      batch_size: Optional[int] = None) -> optax.Schedule:
  """The rate the trainer logs: that of the last group (the catch-all)."""
  return make_group_schedule(optim_cfg, config_field(optim_cfg, "groups")[-1],
                             steps_per_epoch, total_steps=total_steps,
                             batch_size=batch_size)

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


class NormalizeState(NamedTuple):
  count: jax.Array  # int32 scalar: updates done so far.


def normalize_steps(every: int, rise: int, total_steps: int) -> np.ndarray:
  """Which of the updates 0 .. total_steps - 1 renormalise (a bool array):
  hiverge's cifar10_speedrun rule, with update k as its step s = k + 1. The
  interval at step s is `every + int(rise * s / total_steps)`, and a step
  renormalises once that many steps have passed since the last one that
  did (none before: step 0). With rise 0 that is every `every`-th update
  (every = 1: all of them); hiverge's Muon is every=2, rise=15."""
  out = np.zeros(total_steps, bool)
  last = 0
  for s in range(1, total_steps + 1):
    if s - last >= every + int(rise * (s / total_steps)):
      out[s - 1] = True
      last = s
  return out


def _normalize_kernels(every: int = 1, rise: int = 0,
                       total_steps: Optional[int] = None
                       ) -> optax.GradientTransformation:
  """airbench94_muon's weight normalization: the update also rescales each
  kernel to Frobenius norm sqrt(output channels) (its last axis) before the
  step, w_new = w * sqrt(Cout) / |w| + u. Every update by default; with
  `every` > 1 or `rise` > 0 only on the updates `normalize_steps` picks
  (the others pass through unchanged; the state counts updates), past
  `total_steps` as on the last one."""
  def rescaled(u, w, on):
    factor = jnp.sqrt(jnp.float32(w.shape[-1])) / jnp.linalg.norm(w)
    if on is not None:
      factor = jnp.where(on, factor, jnp.float32(1.0))
    return u + (w * (factor - 1.0)).astype(u.dtype)

  def need(params):
    if params is None:
      raise ValueError("muon_normalize needs params: call "
                       "optimizer.update(grads, opt_state, params)")

  if every == 1 and rise == 0:
    def update_fn(updates, state, params=None):
      need(params)
      return jax.tree_util.tree_map(
          lambda u, w: rescaled(u, w, None), updates, params), state
    return optax.GradientTransformation(lambda params: optax.EmptyState(),
                                        update_fn)

  if rise > 0:
    check(total_steps is not None and total_steps >= 1,
          "normalize_every_rise needs the run's total steps")
    table = normalize_steps(every, rise, total_steps)
    picked = lambda count: jnp.asarray(table)[
        jnp.minimum(count, total_steps - 1)]
  else:
    picked = lambda count: (count + 1) % every == 0

  def init_fn(params):
    del params
    return NormalizeState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    need(params)
    on = picked(state.count)
    updates = jax.tree_util.tree_map(lambda u, w: rescaled(u, w, on),
                                     updates, params)
    return updates, NormalizeState(count=state.count + 1)
  return optax.GradientTransformation(init_fn, update_fn)


def _fraction(g: Any, key: str) -> float:
  value = float(g[key])
  check(0.0 <= value < 1.0, f"{_where(g)}.{key} must be in [0, 1), got {value}")
  return value


def _integer(g: Any, key: str, low: int) -> int:
  value = g[key]
  check(isinstance(value, int) and not isinstance(value, bool)
        and value >= low, f"{_where(g)}.{key} must be an integer >= {low}, "
        f"got {value!r}")
  return value


def _eps(g: Any) -> float:
  eps = float(g["eps"])
  check(eps >= 0, f"{_where(g)}.eps must be >= 0, got {eps}")
  return eps


def _base_optimizer(g: Any, schedule: optax.Schedule,
                    weight_decay: float) -> optax.GradientTransformation:
  name = g.optimizer
  if name == "sgd":
    return optax.sgd(schedule)
  if name in ("momentum", "nesterov"):
    # optax's trace is TF's MomentumOptimizer: acc = m * acc + g, w -= lr * acc.
    return optax.sgd(schedule, momentum=_fraction(g, "momentum"),
                     nesterov=(name == "nesterov"))
  if name == "adam":
    return optax.adam(schedule, b1=_fraction(g, "b1"), b2=_fraction(g, "b2"),
                      eps=_eps(g))
  if name == "adamw":
    # optax.adamw subtracts lr_t * wd * w: decay scaled by the schedule.
    return optax.adamw(schedule, b1=_fraction(g, "b1"), b2=_fraction(g, "b2"),
                       eps=_eps(g), weight_decay=weight_decay)
  if name == "rmsprop":
    decay = float(g.decay)
    check(0.0 <= decay <= 1.0,
          f"{_where(g)}.decay must be in [0, 1], got {decay}")
    momentum = _fraction(g, "momentum")
    # eps inside the sqrt, momentum on the lr-scaled step: TF's RMSProp,
    # except that the mean square starts at 0 (TF1 starts it at 1).
    return optax.rmsprop(schedule, decay=decay, eps=_eps(g),
                         momentum=momentum if momentum > 0 else None)
  if name == "adagrad":
    # Accumulator starts at 0.1 as in TF's AdagradOptimizer.
    return optax.adagrad(schedule, initial_accumulator_value=0.1, eps=_eps(g))
  if name == "muon":
    ns_steps = _integer(g, "ns_steps", 1)
    # Checked whether or not normalize is on; group_chain reads them.
    _integer(g, "normalize_every", 1)
    _integer(g, "normalize_every_rise", 0)
    # airbench94_muon's Muon: PyTorch-style Nesterov momentum, then
    # Newton-Schulz (no width factor).
    return optax.chain(optax.trace(decay=_fraction(g, "momentum"),
                                   nesterov=True),
                       orthogonalize(ns_steps, _eps(g)),
                       optax.scale_by_learning_rate(schedule))
  raise OptimConfigError(
      f"{_where(g)}: unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")


def _check_group(g: Any) -> None:
  """The group's fields, before anything is built (the options of its
  optimizer: groups.check_option)."""
  from jaxcnn import groups as groups_lib
  from jaxcnn.config import ConfigError
  check(g.get("optimizer") in OPTIMIZERS,
        f"{_where(g)}: unknown optimizer {g.get('optimizer')!r}; known: "
        f"{', '.join(OPTIMIZERS)}")
  for key in groups_lib.COMMON_FIELDS + tuple(OPTIONS[g.optimizer]):
    check(key in g, f"{_where(g)} has no field {key!r}")
  for key in g:
    try:
      groups_lib.check_option(g.name, g.optimizer, key)
    except ConfigError as e:
      raise OptimConfigError(str(e)) from None
  check(g.units in UNITS, f"{_where(g)}: unknown units {g.units!r}; known: "
        f"{', '.join(UNITS)}")
  check(g.weight_decay_mode in WEIGHT_DECAY_MODES,
        f"{_where(g)}: unknown weight_decay_mode {g.weight_decay_mode!r}; "
        f"known: {', '.join(WEIGHT_DECAY_MODES)}")
  for key in ("lr", "weight_decay", "l1"):
    value = float(g[key])
    check(math.isfinite(value) and value >= 0,
          f"{_where(g)}.{key} must be finite and >= 0, got {value}")
  frozen = g.frozen_from_epochs
  check(frozen is None or (isinstance(frozen, (int, float))
                           and not isinstance(frozen, bool) and frozen >= 0),
        f"{_where(g)}.frozen_from_epochs must be None or >= 0, got {frozen!r}")


def group_chain(optim_cfg: Any, g: Any, steps_per_epoch: int, *,
                total_steps: Optional[int] = None,
                batch_size: Optional[int] = None,
                schedule: Optional[optax.Schedule] = None
                ) -> optax.GradientTransformation:
  """One group's chain (see the module docstring). `schedule`: the group's
  (make_group_schedule), when the caller has built it already."""
  _check_group(g)
  sched_cfg = group_schedule_config(optim_cfg, g)
  if schedule is None:
    schedule = make_schedule(sched_cfg, steps_per_epoch,
                             total_steps=total_steps, batch_size=batch_size)
  _, weight_decay = step_hparams(sched_cfg, batch_size)
  if g.frozen_from_epochs is not None and float(g.frozen_from_epochs) == 0:
    return optax.set_to_zero()
  name = g.optimizer
  decoupled = name == "adamw" or g.weight_decay_mode == "decoupled"
  l1 = float(g.l1)
  links = []
  # Terms that are zero are left out, so they cost no state and no compute.
  if weight_decay > 0 and not decoupled:
    links.append(optax.add_decayed_weights(weight_decay))
  if l1 > 0:
    links.append(_add_l1_sign(l1))
  links.append(_base_optimizer(g, schedule, weight_decay))
  if weight_decay > 0 and decoupled and name != "adamw":
    links.append(_scheduled_decoupled_decay(weight_decay, schedule))
  if name == "muon" and bool(g.normalize):
    links.append(_normalize_kernels(g.normalize_every, g.normalize_every_rise,
                                    total_steps))
  if g.frozen_from_epochs is not None:
    links.append(freeze_after(epochs_to_steps(float(g.frozen_from_epochs),
                                              steps_per_epoch)))
  return links[0] if len(links) == 1 else optax.chain(*links)


def make_optimizer(optim_cfg: Any, steps_per_epoch: int, *,
                   total_steps: Optional[int] = None,
                   batch_size: Optional[int] = None,
                   schedules: Optional[dict] = None
                   ) -> optax.GradientTransformation:
  """The full chain (see the module docstring) for an `optim` config section.

  `update` must be given the params. `total_steps` is needed by the cosine
  and triangular schedules only, `batch_size` by units 'per_1024';
  `schedules` ({group name: schedule}, make_group_schedules) when the caller
  has built them already. The groups are checked against the parameters at
  `init` (check_groups); the state is optax.partition's, then the EMA's.
  """
  groups = config_field(optim_cfg, "groups")
  _compiled(groups)  # Names, regexes, duplicates: before anything else.
  rules = freeze_rules(optim_cfg)
  schedules = schedules or {}
  chains = {g.name: group_chain(optim_cfg, g, steps_per_epoch,
                                total_steps=total_steps,
                                batch_size=batch_size,
                                schedule=schedules.get(g.name))
            for g in groups}

  def labels(params):
    names = check_groups(optim_cfg, params)
    return jax.tree_util.tree_map_with_path(
        lambda path, _: names[param_path(path)], params)

  # The freeze link only where rules are given: a run without them keeps
  # the optimizer state of the checkpoints written before optim.freeze.
  freeze = [freeze_by_path(rules, steps_per_epoch)] if rules else []
  return optax.chain(
      optax.partition(chains, labels), *freeze,
      ema_of_params(float(config_field(optim_cfg, "ema_decay")),
                    bool(config_field(optim_cfg, "ema_ramp"))))
