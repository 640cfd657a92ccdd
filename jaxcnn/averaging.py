"""Averages of the weights: the EMA of the parameters (the last link of the
optax chain, `ema_of_params`, read back with `ema_params`), the same EMA
rule for the BatchNorm statistics (`ema_update`, applied by the train step),
and lookahead, which writes a slow average back into the weights.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxcnn.schedules import check


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
  check(0.0 <= decay <= 1.0, f"optim.ema_decay must be in [0, 1], got {decay}")

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


