"""Learning-rate schedules: step -> rate, jit-able and cheap.

`make_schedule(optim_cfg, steps_per_epoch, total_steps=, batch_size=)` builds
the one the config names (SCHEDULES), after an optional linear warmup, in the
config's units (`step_hparams`: per step, or airbench's per 1024 examples).
The optimizer chain (optim.py) uses it, one per parameter group (the run's
schedule fields with the group's laid over them), as its learning rate, and the trainer
calls it for the rate it logs.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "exponential", "step", "inverse_time", "cosine",
             "triangular")
HPARAM_UNITS = ("step", "per_1024")


class OptimConfigError(ValueError):
  """An optim config field that cannot give a valid schedule or optimizer."""


def config_field(optim_cfg: Any, key: str) -> Any:
  """optim_cfg[key]; OptimConfigError when the field is missing."""
  # Config and plain dicts both support item access; a missing field is a
  # config error rather than a KeyError deep inside optax.
  try:
    return optim_cfg[key]
  except (KeyError, TypeError):
    raise OptimConfigError(f"optim config has no field {key!r}") from None


def check(ok: bool, message: str) -> None:
  """Raises OptimConfigError(message) unless `ok`."""
  if not ok:
    raise OptimConfigError(message)


def check_fraction(optim_cfg: Any, key: str) -> float:
  value = float(config_field(optim_cfg, key))
  check(0.0 <= value < 1.0, f"optim.{key} must be in [0, 1), got {value}")
  return value



def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
  return int(round(float(epochs) * steps_per_epoch))


Schedule = Callable[[jax.Array], jax.Array]


def _constant(cfg: Any, peak: float, steps_per_epoch: int,
              length: Optional[int]) -> Schedule:
  return lambda t: jnp.full_like(t, peak)


def _exponential_or_inverse_time(cfg: Any, peak: float, steps_per_epoch: int,
                                 length: Optional[int]) -> Schedule:
  name = config_field(cfg, "schedule")
  decay_epochs = float(config_field(cfg, "decay_epochs"))
  decay_rate = float(config_field(cfg, "decay_rate"))
  staircase = bool(config_field(cfg, "staircase"))
  check(decay_epochs > 0,
         f"optim.decay_epochs must be > 0 for schedule {name!r}, got "
         f"{decay_epochs}")
  # Kept fractional, as tf.train.exponential_decay takes decay_steps: a
  # period of 0.5 epochs at 391 steps per epoch is 195.5 steps.
  decay_steps = decay_epochs * steps_per_epoch

  def periods(t: jax.Array) -> jax.Array:
    p = t / decay_steps
    return jnp.floor(p) if staircase else p

  if name == "exponential":
    check(decay_rate > 0,
           f"optim.decay_rate must be > 0 for schedule 'exponential', got "
           f"{decay_rate}")
    return lambda t: peak * jnp.power(jnp.float32(decay_rate), periods(t))
  check(decay_rate >= 0,
         f"optim.decay_rate must be >= 0 for schedule 'inverse_time', got "
         f"{decay_rate}")
  return lambda t: peak / (1.0 + decay_rate * periods(t))


def _step(cfg: Any, peak: float, steps_per_epoch: int,
          length: Optional[int]) -> Schedule:
  epochs = tuple(float(e) for e in config_field(cfg, "step_boundaries_epochs"))
  factor = float(config_field(cfg, "step_factor"))
  check(factor >= 0, f"optim.step_factor must be >= 0, got {factor}")
  boundaries = [epochs_to_steps(e, steps_per_epoch) for e in epochs]
  check(all(b > 0 for b in boundaries),
         f"optim.step_boundaries_epochs must be positive and at least one "
         f"step long, got {epochs} epochs = {tuple(boundaries)} steps at "
         f"{steps_per_epoch} steps per epoch")
  check(all(a < b for a, b in zip(boundaries, boundaries[1:])),
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


def _cosine(cfg: Any, peak: float, steps_per_epoch: int,
            length: Optional[int]) -> Schedule:
  final = float(config_field(cfg, "cosine_final_fraction"))
  check(0.0 <= final <= 1.0,
         f"optim.cosine_final_fraction must be in [0, 1], got {final}")
  length = _length_after_warmup("cosine", length)

  def cosine_schedule(t: jax.Array) -> jax.Array:
    progress = jnp.minimum(t, length) / length
    return peak * (final + (1.0 - final) * 0.5 *
                   (1.0 + jnp.cos(jnp.pi * progress)))
  return cosine_schedule


def _triangular(cfg: Any, peak: float, steps_per_epoch: int,
                length: Optional[int]) -> Schedule:
  start = float(config_field(cfg, "triangle_start"))
  peak_at = float(config_field(cfg, "triangle_peak"))
  end = float(config_field(cfg, "triangle_end"))
  check(start >= 0 and end >= 0,
         f"optim.triangle_start and triangle_end must be >= 0, got {start} "
         f"and {end}")
  check(0.0 <= peak_at < 1.0,
         f"optim.triangle_peak must be in [0, 1), got {peak_at}")
  length = _length_after_warmup("triangular", length)
  top = int(peak_at * length)  # The step at the peak, as airbench rounds.

  def triangular_schedule(t: jax.Array) -> jax.Array:
    t = jnp.minimum(t, length)
    up = start + (1.0 - start) * t / max(top, 1)
    down = 1.0 + (end - 1.0) * (t - top) / (length - top)
    return peak * jnp.where(t < top, up, down)
  return triangular_schedule


def _length_after_warmup(name: str, length) -> int:
  """The steps a schedule that needs the run's length runs for (total
  steps less warmup): (None, warmup_steps) when total_steps was not given."""
  total, warmup_steps = length
  check(total is not None,
         f"schedule {name!r} needs total_steps (the run's training steps): "
         "pass make_schedule(..., total_steps=N)")
  check(int(total) - warmup_steps > 0,
         f"schedule {name!r} needs total_steps > warmup steps, got "
         f"total_steps={total}, warmup steps={warmup_steps}")
  return int(total) - warmup_steps


_BUILDERS = {"constant": _constant, "exponential": _exponential_or_inverse_time,
             "inverse_time": _exponential_or_inverse_time, "step": _step,
             "cosine": _cosine, "triangular": _triangular}


def _decay_schedule(optim_cfg: Any, steps_per_epoch: int,
                    total_steps: Optional[int],
                    warmup_steps: int) -> Schedule:
  """The schedule after warmup, as a function of float32 steps since warmup."""
  name = config_field(optim_cfg, "schedule")
  if name not in _BUILDERS:
    raise OptimConfigError(
        f"unknown optim.schedule {name!r}; known: {', '.join(SCHEDULES)}")
  peak = float(config_field(optim_cfg, "learning_rate"))
  return _BUILDERS[name](optim_cfg, peak, steps_per_epoch,
                         (total_steps, warmup_steps))


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
  units = config_field(optim_cfg, "hparam_units")
  check(units in HPARAM_UNITS,
         f"unknown optim.hparam_units {units!r}; known: "
         f"{', '.join(HPARAM_UNITS)}")
  lr = float(config_field(optim_cfg, "learning_rate"))
  wd = float(config_field(optim_cfg, "weight_decay"))
  if units == "step":
    return lr, wd
  name = config_field(optim_cfg, "optimizer")
  where = optim_cfg.get("where", "optim") if hasattr(optim_cfg, "get") \
      else "optim"
  check(name in ("momentum", "nesterov"),
         f"{where}: units 'per_1024' are defined for momentum and "
         f"nesterov, not {name!r}")
  check(batch_size is not None and batch_size > 0,
         "optim.hparam_units='per_1024' needs the batch size")
  check(lr > 0, f"optim.learning_rate must be > 0 with hparam_units="
         f"'per_1024', got {lr}")
  momentum = check_fraction(optim_cfg, "momentum")
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
  'triangular' (which last total_steps - warmup_steps, or length_epochs
  less warmup when that field is > 0) and ignored otherwise;
  `batch_size` only for hparam_units 'per_1024' (see `step_hparams`).
  """
  check(isinstance(steps_per_epoch, int) and steps_per_epoch > 0,
         f"steps_per_epoch must be a positive integer, got {steps_per_epoch!r}")
  peak = float(config_field(optim_cfg, "learning_rate"))
  check(math.isfinite(peak) and peak >= 0,
         f"optim.learning_rate must be finite and >= 0, got {peak}")
  if config_field(optim_cfg, "hparam_units") != "step":
    peak, _ = step_hparams(optim_cfg, batch_size)
    optim_cfg = {**dict(optim_cfg.items()), "learning_rate": peak}
  warmup_epochs = float(config_field(optim_cfg, "warmup_epochs"))
  check(warmup_epochs >= 0,
         f"optim.warmup_epochs must be >= 0, got {warmup_epochs}")
  warmup_steps = epochs_to_steps(warmup_epochs, steps_per_epoch)
  length_epochs = float(optim_cfg.get("length_epochs", 0.0)
                        if hasattr(optim_cfg, "get") else 0.0)
  check(length_epochs >= 0,
         f"optim.length_epochs must be >= 0, got {length_epochs}")
  if length_epochs > 0:  # The schedule ends before the run does.
    total_steps = epochs_to_steps(length_epochs, steps_per_epoch)
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


