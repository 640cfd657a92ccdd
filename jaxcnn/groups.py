"""Parameter groups of the optimizer (`optim.groups`): their fields, their
defaults, and `group(...)` to write one. No jax here: config.py and the
experiment files use it.

A run's `optim.groups` is an ordered tuple of group Configs. Each parameter
belongs to the first group whose `match` regex is found in its '/'-joined
path ('conv1/kernel'); the last group is by convention the catch-all
`match='.*'`. Every parameter must be matched and every group must match
some parameter (optim.check_groups says which do not).

Fields of every group (COMMON_FIELDS):
  name                unique label (letters, digits, '_'): `--set
                      optim.groups.<name>.<field>=...`
  match               regex searched in each parameter's path
  optimizer           sgd|momentum|nesterov|adam|adamw|rmsprop|adagrad|muon
  lr                  peak learning rate
  units               'step' (lr and weight_decay as used per step) |
                      'per_1024' (momentum/nesterov only: airbench's decoupled
                      units, see schedules.step_hparams)
  weight_decay        >= 0
  weight_decay_mode   'l2' (wd * w added to the gradient) | 'decoupled'
                      (lr_t * wd * w subtracted after the optimizer; adamw
                      always decays this way)
  l1                  l1 * sign(w) added to the gradient
  frozen_from_epochs  None: never frozen; 0: never updated; x > 0: trained for
                      the first x epochs, then frozen
  schedule            None: the run's schedule (optim.schedule etc.); or a
                      Config of schedule fields laid over the run's, e.g.
                      Config(schedule='triangular', triangle_start=1.0,
                      triangle_peak=0.0, triangle_end=0.0, length_epochs=3.0)
and the options of its optimizer, exactly those (OPTIONS): momentum and
nesterov {momentum}; adam, adamw {b1, b2, eps}; rmsprop {decay, momentum,
eps}; adagrad {eps}; muon {momentum, ns_steps, eps, normalize,
normalize_every, normalize_every_rise} (muon: airbench94_muon's form,
PyTorch-style Nesterov momentum then Newton-Schulz; normalize rescales each
kernel to norm sqrt(output channels) before its step, on every step by
default; at step s (1-based) of T only once every + int(rise * s / T) steps
have passed since the last rescaling: hiverge's Muon is every=2, rise=15;
its parameters must all be 2-D or 4-D).

Giving a group another optimizer (`--set optim.groups.head.optimizer=adam`,
or `with_optimizer`) gives it that optimizer's options: an option both
optimizers have keeps its value, the others take their defaults.
"""
from __future__ import annotations

import difflib
import re
from typing import Any

from jaxcnn.config import Config, ConfigError

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop",
              "adagrad", "muon")
UNITS = ("step", "per_1024")
WEIGHT_DECAY_MODES = ("l2", "decoupled")

# Each optimizer's own options with their defaults.
OPTIONS: dict[str, dict[str, Any]] = {
    "sgd": {},
    "momentum": {"momentum": 0.9},
    "nesterov": {"momentum": 0.9},
    "adam": {"b1": 0.9, "b2": 0.999, "eps": 1e-8},
    "adamw": {"b1": 0.9, "b2": 0.999, "eps": 1e-8},
    # eps inside the sqrt; momentum on the lr-scaled step (0: none).
    "rmsprop": {"decay": 0.9, "momentum": 0.9, "eps": 1e-8},
    "adagrad": {"eps": 1e-8},
    "muon": {"momentum": 0.9, "ns_steps": 5, "eps": 1e-8, "normalize": False,
             "normalize_every": 1, "normalize_every_rise": 0},
}

# The fields every group has, with their defaults (name, match, optimizer
# and lr have none).
COMMON_DEFAULTS: dict[str, Any] = {
    "units": "step",
    "weight_decay": 0.0,
    "weight_decay_mode": "l2",
    "l1": 0.0,
    "frozen_from_epochs": None,
    "schedule": None,
}
COMMON_FIELDS = ("name", "match", "optimizer", "lr") + tuple(COMMON_DEFAULTS)
ALL_OPTIONS = sorted({k for opts in OPTIONS.values() for k in opts})
NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")


def _label(name: Any) -> str:
  return f"group {name!r}"


def check_optimizer(name: Any, optimizer: Any) -> None:
  if optimizer not in OPTIMIZERS:
    raise ConfigError(f"{_label(name)}: unknown optimizer {optimizer!r}; "
                      f"known: {', '.join(OPTIMIZERS)}")


def check_option(name: Any, optimizer: str, key: str) -> None:
  """Refuses a field that is neither a group field nor an option of the
  group's optimizer."""
  if key in COMMON_FIELDS or key in OPTIONS[optimizer]:
    return
  if key in ALL_OPTIONS:
    raise ConfigError(f"{_label(name)}: optimizer {optimizer!r} has no "
                      f"option {key!r}")
  near = difflib.get_close_matches(
      key, list(COMMON_FIELDS) + list(OPTIONS[optimizer]), n=3, cutoff=0.5)
  hint = f"; did you mean {', '.join(near)}?" if near else ""
  raise ConfigError(f"{_label(name)}: no field {key!r} (group fields: "
                    f"{', '.join(COMMON_FIELDS)}; {optimizer} options: "
                    f"{', '.join(OPTIONS[optimizer]) or 'none'}){hint}")


def group(name: str, match: str, optimizer: str, lr: float,
          **fields: Any) -> Config:
  """One group Config with every field: the given ones, the defaults of the
  others and of the optimizer's options. An option the optimizer does not
  have is an error."""
  if not (isinstance(name, str) and NAME_RE.match(name)):
    raise ConfigError(f"group name {name!r}: use letters, digits and '_'")
  check_optimizer(name, optimizer)
  for key in fields:
    check_option(name, optimizer, key)
  out = Config(name=name, match=match, optimizer=optimizer, lr=float(lr))
  for key, default in COMMON_DEFAULTS.items():
    out[key] = fields.get(key, default)
  for key, default in OPTIONS[optimizer].items():
    out[key] = fields.get(key, default)
  for key in ("weight_decay", "l1"):
    out[key] = float(out[key])
  if isinstance(out.schedule, dict):
    out.schedule = Config(**out.schedule)
  return out


def muon_record_groups(*, bias_lr: float, head_lr: float, wd: float,
                       sgd_momentum: float, whiten_bias_epochs: float,
                       **filters: Any) -> tuple:
  """The five groups of the Muon speed records (airbench94_muon's
  param_configs, which hiverge's cifar10_speedrun keeps) on speednet's
  names: the whitening kernel never updated; its bias Nesterov SGD at
  `bias_lr` falling linearly to 0 over `whiten_bias_epochs`, then frozen;
  the BatchNorm biases at `bias_lr` and the head at `head_lr`, the same SGD
  (`sgd_momentum`), each with L2 coefficient wd / lr; the conv filters
  Muon with `filters` (lr, momentum, ns_steps, ...)."""
  sgd = dict(momentum=sgd_momentum)
  return (
      group("whiten_kernel", r"^whiten/kernel$", "nesterov", bias_lr,
            frozen_from_epochs=0, **sgd),
      group("whiten_bias", r"^whiten/bias$", "nesterov", bias_lr,
            weight_decay=wd / bias_lr, frozen_from_epochs=whiten_bias_epochs,
            schedule=Config(schedule="triangular", triangle_start=1.0,
                            triangle_peak=0.0, triangle_end=0.0,
                            length_epochs=whiten_bias_epochs), **sgd),
      group("bn_bias", r"(^|/)bn[^/]*/bias$", "nesterov", bias_lr,
            weight_decay=wd / bias_lr, **sgd),
      group("head", r"^head/kernel$", "nesterov", head_lr,
            weight_decay=wd / head_lr, **sgd),
      group("filters", r"(^|/)conv\d+/kernel$", "muon", **filters),
  )


def complete(g: Any) -> Config:
  """A group (Config or dict, e.g. from a saved config.json) with every
  field: missing ones take their defaults; a field its optimizer does not
  have is an error."""
  d = dict(g.items()) if hasattr(g, "items") else {}
  missing = [k for k in ("name", "match", "optimizer", "lr") if k not in d]
  if missing:
    raise ConfigError(f"{_label(d.get('name', '?'))} has no "
                      f"{', '.join(missing)}")
  rest = {k: v for k, v in d.items()
          if k not in ("name", "match", "optimizer", "lr")}
  return group(d["name"], d["match"], d["optimizer"], d["lr"], **rest)


def with_optimizer(g: Config, optimizer: str) -> Config:
  """`g` with another optimizer: its options replace the old ones, an option
  both have keeps its value."""
  check_optimizer(g.name, optimizer)
  fields = {k: g[k] for k in COMMON_DEFAULTS}
  fields.update({k: g[k] for k in OPTIONS[optimizer] if k in g})
  return group(g.name, g.match, optimizer, g.lr, **fields)


def find(groups: tuple, selector: str) -> list[Config]:
  """The groups `selector` names in `--set optim.groups.<selector>.x=v`: an
  index, a name, or '*' (every group)."""
  if selector == "*":
    return list(groups)
  if selector.lstrip("-").isdigit():
    i = int(selector)
    if -len(groups) <= i < len(groups):
      return [groups[i]]
  for g in groups:
    if g.get("name") == selector:
      return [g]
  names = ", ".join(f"{i}: {g.get('name')}" for i, g in enumerate(groups))
  near = difflib.get_close_matches(
      selector, [str(g.get("name")) for g in groups], n=1, cutoff=0.5)
  hint = f"; did you mean {near[0]}?" if near else ""
  raise ConfigError(f"no group {selector!r} in optim.groups (the groups: "
                    f"{names}; or '*' for all){hint}")


def override(groups: Any) -> str:
  """The `--set` item that replaces every group: 'optim.groups=[...]' (for
  studies whose members train with other groups)."""
  return "optim.groups=" + repr([g.to_dict() for g in groups])
