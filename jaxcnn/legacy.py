"""Configs saved by older jaxcnn, translated to today's schema.

A saved config (WORKDIR/config.json, or the config stored with each
checkpoint) goes through `upgrade` before today's defaults are laid over it
(defaults.with_defaults): each step of STEPS, in order, rewrites one thing
that the schema has changed since, and leaves a config that is already in
today's form as it is. A field that was only added since needs no step: it
takes its default, which is what the code did before the field existed.
Add a step for a change that moves, renames or re-means a field; never edit
an old step (workdirs of every age go through all of them, in order).

The optimizer state of old checkpoints is converted in
checkpoint.restore_state (`convert_state` here): leaves are carried over by
(state field, parameter path).
"""
from __future__ import annotations

import copy
from typing import Any, Callable

# The flat optim fields of jaxcnn before parameter groups (2026-12-01), with
# the defaults they had then.
OLD_OPTIM_DEFAULTS: dict[str, Any] = {
    "optimizer": "momentum", "learning_rate": 0.05, "momentum": 0.9,
    "b1": 0.9, "b2": 0.999, "eps": 1e-8, "rmsprop_decay": 0.9,
    "muon_rest": "adam", "muon_rest_lr_scale": 0.1, "muon_rest_momentum": 0.9,
    "muon_filter": r"kernel$", "muon_ns_steps": 5, "muon_normalize": False,
    "hparam_units": "step", "weight_decay": 5e-4, "weight_decay_mode": "l2",
    "weight_decay_filter": r"kernel", "l1": 0.0, "bias_lr_scale": 1.0,
    "bias_lr_filter": r"(^|/)bn[^/]*/bias$", "freeze_filter": "",
    "freeze_after_filter": "", "freeze_after_epochs": 0.0,
}


def _options(opt: str, old: dict, *, rest: bool = False) -> dict:
  """The group options of optimizer `opt` from the old flat fields."""
  if opt in ("momentum", "nesterov"):
    return {"momentum": old["muon_rest_momentum"] if rest else old["momentum"]}
  if opt in ("adam", "adamw"):
    return {"b1": old["b1"], "b2": old["b2"], "eps": old["eps"]}
  if opt == "rmsprop":
    return {"decay": old["rmsprop_decay"], "momentum": old["momentum"],
            "eps": old["eps"]}
  if opt == "adagrad":
    return {"eps": old["eps"]}
  if opt == "muon":
    return {"momentum": old["momentum"], "ns_steps": old["muon_ns_steps"],
            "eps": old["eps"], "normalize": old["muon_normalize"]}
  return {}


def _match(patterns: list[str]) -> str:
  """A regex found in a path where every one of `patterns` is."""
  if not patterns:
    return ".*"
  if len(patterns) == 1:
    return patterns[0]
  return "^" + "".join(f"(?=.*(?:{p}))" for p in patterns)


def _name_of(pattern: str) -> str:
  """A group name read off a path regex: '^whiten/kernel$' -> 'whiten_kernel',
  '(^|/)bn[^/]*/bias$' -> 'bn_bias', 'kernel' -> 'kernel'."""
  import re
  text = pattern.replace("(^|/)", "").replace("[^/]*", "")
  words = re.findall(r"[A-Za-z0-9]+", text.replace("\\d", ""))
  return "_".join(words) or "group"


def old_optim_to_groups(optim: dict,
                        paths: list[str] | None = None) -> list[dict]:
  """The groups that train as the old flat fields did.

  Each old filter (freeze_after_filter, muon_filter, bias_lr_filter,
  weight_decay_filter, where they split the parameters) is a yes/no
  property; each combination is one group, matched by the filters it says
  yes to, ordered yes before no so that first match wins gives every
  parameter its own combination (freeze_filter's group comes first). With
  `paths` (the model's parameters), groups that match none are left out.

  The old bias_lr_scale s multiplied the gradient of its parameters; here
  it is s times the learning rate, with the weight decay and L1 divided by
  s (in 'step' units; in 'per_1024' units the decay is per 1024 examples
  and stays): the same updates for sgd, momentum, nesterov and Muon's
  Nesterov rest. (For adam-like optimizers, whose step hardly depends on
  the gradient's scale, the old factor was close to no change; here it
  scales the rate.) The old muon_rest 'adam' (optax.contrib.muon) becomes
  an adam group beside an airbench-form muon group.
  """
  import re
  old = {**OLD_OPTIM_DEFAULTS, **optim}
  opt = old["optimizer"]
  units = old["hparam_units"]
  lr = float(old["learning_rate"])
  wd = float(old["weight_decay"])
  l1 = float(old["l1"])
  mode = old["weight_decay_mode"]
  groups: list[dict] = []

  def common(**kw) -> dict:
    return {"units": units, "weight_decay_mode": mode, **kw}

  wd_filter = old["weight_decay_filter"]
  split_by_decay = (wd > 0 or l1 > 0) and bool(wd_filter)  # None, '': all.
  if old["freeze_filter"]:  # Never updated: its other fields do nothing.
    groups.append({"name": _name_of(old["freeze_filter"]),
                   "match": old["freeze_filter"],
                   "optimizer": opt, "lr": lr, "frozen_from_epochs": 0,
                   "weight_decay": 0.0 if split_by_decay else wd,
                   "l1": 0.0 if split_by_decay else l1,
                   **common(), **_options(opt, old)})
  # (tag, regex) of the properties that split the parameters.
  props = []
  if old["freeze_after_filter"]:
    props.append(("frozen_later", old["freeze_after_filter"]))
  if opt == "muon":
    props.append(("muon", old["muon_filter"] or ""))
  bias_scale = float(old["bias_lr_scale"])
  if bias_scale != 1.0:
    props.append(("bias", old["bias_lr_filter"] or ""))
  if split_by_decay:
    props.append(("decay", wd_filter))
  for n in range(2 ** len(props)):
    says = [not (n >> (len(props) - 1 - i)) & 1 for i in range(len(props))]
    yes = dict((tag, pattern) for (tag, pattern), s in zip(props, says) if s)
    decayed = "decay" in yes or not any(t == "decay" for t, _ in props)
    g_opt, g_lr, options = opt, lr, _options(opt, old)
    if opt == "muon" and "muon" not in yes:
      g_opt = old["muon_rest"]
      g_lr = lr * float(old["muon_rest_lr_scale"])
      options = _options(g_opt, old, rest=True)
    scale = bias_scale if "bias" in yes else 1.0
    g_wd = wd if decayed else 0.0
    g_l1 = l1 if decayed else 0.0
    if scale != 1.0:
      g_lr *= scale
      g_l1 /= scale
      if units == "step":
        g_wd /= scale
    g = {"name": "_".join(_name_of(p) for p in yes.values()) or "rest",
         "match": _match(list(yes.values())),
         "optimizer": g_opt, "lr": g_lr, "weight_decay": g_wd, "l1": g_l1,
         "frozen_from_epochs": (float(old["freeze_after_epochs"])
                                if "frozen_later" in yes else None),
         **common(), **options}
    groups.append(g)
  if paths is not None:
    kept, taken = [], set()
    for g in groups:
      regex = re.compile(g["match"])
      mine = {p for p in paths if p not in taken and regex.search(p)}
      if mine:
        kept.append(g)
        taken |= mine
    groups = kept
  seen: dict[str, int] = {}
  for g in groups:  # Names unique: a repeated one gets a number.
    n = seen[g["name"]] = seen.get(g["name"], 0) + 1
    if n > 1:
      g["name"] = f"{g['name']}_{n}"
  return groups


def _param_paths(saved: dict) -> list[str] | None:
  """The '/'-joined parameter paths of the saved config's model (None when
  it does not build here)."""
  try:
    import jax
    import jax.numpy as jnp
    from jaxcnn.config import Config
    from jaxcnn.defaults import base_config
    from jaxcnn.models import create_model
    from jaxcnn.optim import param_path
    model_cfg = base_config().model.to_dict()
    for key, value in saved.get("model", {}).items():
      if isinstance(value, dict) and isinstance(model_cfg.get(key), dict):
        model_cfg[key] = {**model_cfg[key], **value}
      else:
        model_cfg[key] = value
    model = create_model(Config(**model_cfg))
    shape = tuple(saved.get("data", {}).get("image_shape") or (32, 32, 3))
    x = jnp.zeros((1,) + tuple(int(d) for d in shape), jnp.float32)
    params = jax.eval_shape(
        lambda: model.init({"params": jax.random.PRNGKey(0),
                            "dropout": jax.random.PRNGKey(0)}, x,
                           train=False))["params"]
    return [param_path(p) for p, _ in
            jax.tree_util.tree_flatten_with_path(params)[0]]
  except Exception:  # noqa: BLE001 - keep every group; the build will say.
    return None


# Until 2026-12-01 the model section was flat: every model's own fields sat
# beside the common ones. Today each model's own fields are its section
# (jaxcnn/models/<model>.py CONFIG): old key -> (section, field).
_FLAT_MODEL_FIELDS = {
    "depth": ("vgg", "depth"),
    "vgg_block": ("vgg", "block"),
    "speednet_widths": ("speednet", "widths"),
    "logit_scale": ("speednet", "logit_scale"),
    "head_init_std": ("speednet", "head_init_std"),
    "whiten": ("speednet", "whiten"),
    "whiten_images": ("speednet", "whiten_images"),
}


def _upgrade_model(saved: dict) -> dict:
  """The flat model fields (model.depth, model.vgg_block,
  model.speednet_widths, ...) moved into their model's section
  (model.vgg.depth, model.vgg.block, model.speednet.widths, ...). The
  AlexNet-like net's LRN constants were fixed in its code then: their
  defaults (model.alexnet.lrn_*) are those constants."""
  model = saved.get("model")
  if not isinstance(model, dict):
    return saved
  for old, (section, field) in _FLAT_MODEL_FIELDS.items():
    if old not in model or isinstance(model[old], dict):
      continue
    value = model.pop(old)
    own = model.setdefault(section, {})
    if isinstance(own, dict):
      own.setdefault(field, value)
  return saved


# Override keys (`--set KEY=...`) of fields that moved, old -> new, so that
# an old command line gets told the new name.
RENAMED_KEYS = {f"model.{old}": f"model.{section}.{field}"
                for old, (section, field) in _FLAT_MODEL_FIELDS.items()}


def renamed_key(key: str) -> str | None:
  """Today's name of a config key that an older jaxcnn had, or None."""
  return RENAMED_KEYS.get(key)


def optim_groups(saved: dict) -> dict:
  """Parameter groups (2026-12): the flat optimizer fields of an older
  config become optim.groups; the run's schedule, EMA and lookahead fields
  stay."""
  optim = saved.get("optim")
  if not isinstance(optim, dict) or "groups" in optim:
    return saved
  saved = copy.deepcopy(saved)
  optim = saved["optim"]
  optim["groups"] = old_optim_to_groups(optim, _param_paths(saved))
  for key in OLD_OPTIM_DEFAULTS:
    optim.pop(key, None)
  return saved


# The translation steps, oldest first. The model's step comes first: the
# groups' step builds the saved model to name its parameters.
STEPS: tuple[Callable[[dict], dict], ...] = (_upgrade_model, optim_groups)


def upgrade(saved: dict) -> dict:
  """`saved` (a config as JSON data) in today's schema: a new dict, the
  steps of STEPS applied in order; the input is not changed."""
  out = copy.deepcopy(saved)
  if not isinstance(out, dict):
    return out
  for step in STEPS:
    out = step(out)
  return out


# --- The optimizer state of older checkpoints ----------------------------------


def _named_leaves(tree: Any) -> list[tuple[str, Any]]:
  """('/'-joined path, leaf) of every leaf: dict keys, indices and
  NamedTuple fields as plain names, so that a typed state and orbax's
  untyped one (dicts and lists) name their leaves alike."""
  import jax
  from jaxcnn.restore import key_name  # restore imports this module.
  return [("/".join(key_name(k) for k in path), leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]


def _field_and_param(name: str, params: set[str]) -> tuple[str, str] | None:
  """('trace', 'conv1/kernel') of an optimizer-state leaf named
  'opt_state/.../trace/conv1/kernel': the state field just before the
  longest parameter path the name ends with."""
  parts = name.split("/")
  for i in range(1, len(parts)):
    if "/".join(parts[i:]) in params:
      return parts[i - 1], "/".join(parts[i:])
  return None


def opt_state_names(state: Any) -> set[str]:
  return {n for n, _ in _named_leaves(state) if n.startswith("opt_state/")}


# How each optimizer-state field scales with the gradient: the old
# bias_lr_scale s multiplied the gradient, today's groups multiply the rate
# instead, so a carried-over trace is divided by s, a second moment by s^2.
_GRADIENT_POWER = {"trace": 1, "mu": 1, "nu": 2, "sum_of_squares": 2}


def gradient_scales(saved: dict, params: set[str]) -> dict[str, float]:
  """{parameter path: s} for the parameters whose gradient an old config's
  bias_lr_scale s multiplied (nothing for a config in today's schema)."""
  import re
  optim = saved.get("optim") if isinstance(saved, dict) else None
  if not isinstance(optim, dict) or "groups" in optim:
    return {}
  old = {**OLD_OPTIM_DEFAULTS, **optim}
  scale = float(old["bias_lr_scale"])
  if scale == 1.0:
    return {}
  regex = re.compile(old["bias_lr_filter"] or "")
  return {p: scale for p in params if regex.search(p)}


def convert_state(raw: dict, like: dict, saved_config: dict | None = None
                  ) -> dict:
  """An old checkpoint's state (`raw`, untyped, as orbax restores it without
  a target) in the structure of `like` (today's state for the same config;
  arrays or shapes). Everything but the optimizer state is taken by name.
  The optimizer state's per-parameter leaves (momentum traces, Adam
  moments, the EMA of the parameters) are carried over by (state field,
  parameter path), whatever chain held them; its counters (scalar
  integers) are the step, as every counter of the old chains counted the
  updates; a leaf the old state lacks starts at zero. `saved_config`: the
  config saved with the state, as saved (an old bias_lr_scale rescales the
  carried-over moments: gradient_scales)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  old = dict(_named_leaves(raw))
  params = {n[len("params/"):] for n in old if n.startswith("params/")}
  by_field: dict[tuple[str, str], Any] = {}
  for name, leaf in old.items():
    if name.startswith("opt_state/"):
      key = _field_and_param(name, params)
      if key is not None:
        by_field.setdefault(key, leaf)
  step = np.asarray(old["step"])
  scales = gradient_scales(saved_config or {}, params)
  leaves = []
  for name, spec in _named_leaves(like):
    shape, dtype = tuple(spec.shape), np.dtype(spec.dtype)
    if not name.startswith("opt_state/"):
      value = old.get(name)
      if value is None:
        raise ValueError(f"the checkpoint has no {name}")
    else:
      key = _field_and_param(name, params)
      if key is not None and key in by_field:
        value = by_field[key]
        power = _GRADIENT_POWER.get(key[0], 0)
        if key[1] in scales and power:
          value = np.asarray(value) / np.float32(scales[key[1]] ** power)
      elif shape == () and np.issubdtype(dtype, np.integer):
        value = step
      else:
        value = np.zeros(shape, dtype)
    value = np.asarray(value)
    if value.shape != shape:
      raise ValueError(f"{name}: the checkpoint's shape {value.shape} is "
                       f"not {shape}")
    leaves.append(jnp.asarray(value, dtype))
  return jax.tree.unflatten(jax.tree.structure(like), leaves)
