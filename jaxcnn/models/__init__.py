"""Models, built from the `model` section of a config by `create_model`.

Each model is one file here (alexnet.py, vgg.py, speednet.py, tiny.py) that
defines its Flax module and a `SPEC` (jaxcnn.models.spec.ModelSpec: its own
config section, norms, build function, description, statistics layers and
hooks); `REGISTRY` maps each `model.name` to its spec, filled below by
importing the model files. `register` adds one more (a new model file is
added to MODEL_FILES; a test registers a throwaway model). The config's
`model` section holds the common fields and one subsection per model with
fields of its own (`model.vgg.depth`), filled from the registry in
jaxcnn/defaults.py.

Every model is called as `model(x, train)` on float NHWC images (already
normalised, any square size; 32 for CIFAR-10) and returns float32 logits
[B, num_classes]. The trainer uses them as

  variables = model.init({'params': k1, 'dropout': k2}, x, train=False)
  logits, new_vars = model.apply(
      {'params': p, 'batch_stats': bs}, x, train=True,
      rngs={'dropout': key}, mutable=['batch_stats'])
  logits = model.apply(variables, x, train=False)

A model with BatchNorm has 'batch_stats' in `variables` and returns updated
ones in `new_vars['batch_stats']`. A model without BatchNorm (alexnet or tiny with
norm 'lrn' or 'none', any model with norm 'none') has only 'params'; given the
same calls with `bs = {}` it returns `new_vars == {'batch_stats': {}}`, so the
trainer needs no special case.

`dtype` is the compute dtype of convs and dense layers; parameters stay
float32, and BatchNorm statistics, LRN and the logits layer compute in float32.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxcnn.models import layers
from jaxcnn.models.spec import (Common, DataInit, ModelConfigError, ModelSpec,
                                check_choice)

# The model files registered at import, in the order `--help` lists them.
MODEL_FILES = ("alexnet", "vgg", "speednet", "convnet4", "tiny")
REGISTRY: dict[str, ModelSpec] = {}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The common fields of the `model` section (jaxcnn/defaults.py); every other
# key of the section is a registered model's own subsection.
COMMON_FIELDS = ("name", "width", "activation", "norm", "dropout",
                 "num_classes", "dtype", "conv_impl", "bn_momentum",
                 "bn_scale")


def register(spec: ModelSpec) -> ModelSpec:
  """Adds `spec` to REGISTRY under spec.name (replacing one of that name)."""
  if spec.name in COMMON_FIELDS:
    raise ValueError(f"a model may not be named after the common field "
                     f"model.{spec.name}")
  REGISTRY[spec.name] = spec
  return spec


def unregister(name: str) -> None:
  REGISTRY.pop(name, None)


for _file in MODEL_FILES:
  register(importlib.import_module(f"jaxcnn.models.{_file}").SPEC)
del _file


def model_names() -> tuple[str, ...]:
  return tuple(REGISTRY)


def __getattr__(attr: str):
  # MODEL_NAMES follows the registry (a model registered later included).
  if attr == "MODEL_NAMES":
    return model_names()
  raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def get_spec(name: str) -> ModelSpec:
  """The registered spec of `name`; an unknown name is a one-line
  ModelConfigError listing the registered ones (with a did-you-mean)."""
  spec = REGISTRY.get(name)
  if spec is None:
    near = difflib.get_close_matches(str(name), list(REGISTRY), n=1,
                                     cutoff=0.6)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    raise ModelConfigError(
        f"model.name={name!r} is not a registered model; choose one of "
        f"{', '.join(repr(n) for n in REGISTRY)}{hint}")
  return spec


def own_config_defaults() -> dict[str, dict]:
  """{model name: its own section's defaults} for every registered model
  with fields of its own (what jaxcnn/defaults.py adds to `model`)."""
  return {name: dict(spec.config) for name, spec in REGISTRY.items()
          if spec.config}


def own_section(model_cfg: Mapping[str, Any], name: str) -> dict:
  """The model's own section of `model_cfg`, its defaults under it."""
  spec = get_spec(name)
  given = model_cfg.get(name) or {}
  given = dict(given.items()) if hasattr(given, "items") else {}
  unknown = sorted(set(given) - set(spec.config))
  if unknown:
    near = difflib.get_close_matches(unknown[0], list(spec.config), n=1,
                                     cutoff=0.5)
    hint = f"; did you mean model.{name}.{near[0]}?" if near else ""
    raise ModelConfigError(
        f"model.{name}.{unknown[0]} is not a field of {name}"
        + (f" (its fields: {', '.join(spec.config)})" if spec.config else
           " (it has no fields of its own)") + hint)
  return {**spec.config, **given}


def create_model(model_cfg: Mapping[str, Any], *,
                 bn_axis_name: str | None = None) -> nn.Module:
  """Builds the model that `model_cfg` (the config's `model` section) names.

  `bn_axis_name`: the pmap axis over which BatchNorm averages its batch
  statistics (synchronised BN); None for a single device. The common fields
  are checked here; the model's own section (`model.<name>`) by its build
  function; the other models' sections are not read. Raises
  ModelConfigError for any value that does not exist.
  """
  # Fields the caller leaves out take their defaults (handy for a plain dict).
  from jaxcnn.defaults import base_config  # jaxcnn.defaults imports this.
  defaults = base_config().model
  cfg = {k: defaults[k] for k in COMMON_FIELDS}
  cfg.update((k, v) for k, v in model_cfg.items() if k in COMMON_FIELDS)
  name = cfg["name"]
  spec = get_spec(name)
  check_choice("activation", cfg["activation"], tuple(layers.ACTIVATIONS))
  check_choice("norm", cfg["norm"], spec.norms, f" by {name}")
  check_choice("dtype", cfg["dtype"], tuple(DTYPES))
  check_choice("conv_impl", cfg["conv_impl"], layers.CONV_IMPLS)
  if not cfg["width"] > 0:
    raise ModelConfigError(f"model.width={cfg['width']!r} must be > 0")
  if not 0 <= cfg["dropout"] < 1:
    raise ModelConfigError(
        f"model.dropout={cfg['dropout']!r} must be in [0, 1)")
  if not (isinstance(cfg["num_classes"], int) and cfg["num_classes"] >= 1):
    raise ModelConfigError(
        f"model.num_classes={cfg['num_classes']!r} must be an integer >= 1")
  if not 0 <= cfg["bn_momentum"] < 1:
    raise ModelConfigError(
        f"model.bn_momentum={cfg['bn_momentum']!r} must be in [0, 1)")
  common = Common(
      name=name, width=float(cfg["width"]), activation=cfg["activation"],
      norm=cfg["norm"], dropout=float(cfg["dropout"]),
      num_classes=cfg["num_classes"], dtype=DTYPES[cfg["dtype"]],
      conv_impl=cfg["conv_impl"], bn_axis_name=bn_axis_name,
      bn_momentum=float(cfg["bn_momentum"]), bn_scale=bool(cfg["bn_scale"]))
  return spec.build(common, own_section(model_cfg, name))



def check_overridden_sections(model_cfg: Mapping[str, Any], keys) -> None:
  """Refuses an override (`--set`) of another model's own field: with
  model.name 'tiny', `model.vgg.depth=11` would change nothing. `keys`:
  the overridden keys ('model.vgg.depth')."""
  name = model_cfg.get("name")
  for key in keys:
    parts = key.split(".")
    if (len(parts) >= 3 and parts[0] == "model" and parts[1] in REGISTRY
        and parts[1] != name):
      raise ModelConfigError(
          f"{key} is a field of model {parts[1]!r}, but model.name is "
          f"{name!r}: it would change nothing (set model.name={parts[1]} "
          "to use it)")


def model_text(model_cfg: Mapping[str, Any]) -> str:
  """The model's one-line description (eval, inspect and predict print it),
  written by the model's own `describe`; a section saved without the
  model's own fields takes their defaults."""
  name = model_cfg["name"]
  spec = get_spec(name)
  section = {k: v for k, v in model_cfg.items()}
  if spec.config:
    section[name] = own_section(model_cfg, name)
  return spec.describe(section)


def stem_params(model_cfg: Mapping[str, Any]) -> tuple[str, ...]:
  return get_spec(model_cfg["name"]).stem_params


def block_params(model_cfg: Mapping[str, Any]) -> tuple[str, ...]:
  return get_spec(model_cfg["name"]).block_params


def data_init(model_cfg: Mapping[str, Any]) -> tuple[DataInit, dict] | None:
  """(the model's data-dependent init, its own section), or None."""
  spec = get_spec(model_cfg["name"])
  if spec.data_init is None:
    return None
  return spec.data_init, own_section(model_cfg, spec.name)


def count_params(params) -> int:
  """Number of scalars in a pytree of arrays (or of jax.ShapeDtypeStruct, so
  `jax.eval_shape(model.init, ...)` can be counted without computing)."""
  leaves = jax.tree_util.tree_leaves(params)
  return sum(int(np.prod(leaf.shape)) for leaf in leaves)


def forward_flops(model, image_shape) -> float:
  """FLOPs of one forward pass per image: 2 * multiply-adds of every conv and
  dot in the model's jaxpr (elementwise work left out, as MFU conventions
  do). Traced with the plain conv so the CPU fast paths, which do the same
  products differently, count the same."""
  model = model.clone(conv_impl="xla") if hasattr(model, "conv_impl") else model
  x = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(0)}
  variables = jax.eval_shape(lambda x: model.init(rngs, x, train=False), x)
  jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(
      variables, x)
  return float(_count_flops(jaxpr.jaxpr))


def _count_flops(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      out = eqn.outvars[0].aval.shape
      rhs = eqn.invars[1].aval.shape
      dn = eqn.params["dimension_numbers"]
      # Per output element: one multiply-add per kernel tap and input
      # channel of its group.
      spatial = int(np.prod([rhs[d] for d in dn.rhs_spec[2:]]))
      in_per_group = rhs[dn.rhs_spec[1]]
      total += 2 * int(np.prod(out)) * spatial * in_per_group
    elif name == "dot_general":
      (lc, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      out = eqn.outvars[0].aval.shape
      total += 2 * int(np.prod(out)) * int(np.prod([lhs[d] for d in lc]))
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else (value,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          total += _count_flops(inner)
  return total
