"""Models, built from the `model` section of a config by `create_model`.

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

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxcnn.defaults import base_config
from jaxcnn.models import layers
from jaxcnn.models.alexnet import AlexNetLike
from jaxcnn.models.speednet import SpeedNet
from jaxcnn.models.tiny import TinyCNN
from jaxcnn.models.vgg import BLOCK_KINDS, LAYERS_BY_DEPTH, VGG

MODEL_NAMES = ("alexnet", "vgg", "speednet", "tiny")
NORMS_BY_MODEL = {
    "alexnet": ("lrn", "batchnorm", "none"),
    "vgg": ("batchnorm", "none"),
    "speednet": ("batchnorm",),
    "tiny": ("batchnorm", "lrn", "none"),
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class ModelConfigError(ValueError):
  """A `model` config field names something that does not exist."""


def _check_choice(field: str, value: Any, choices, context: str = "") -> None:
  if value not in choices:
    listed = ", ".join(repr(c) for c in choices)
    raise ModelConfigError(
        f"model.{field}={value!r} is not supported{context}; "
        f"choose one of {listed}")


def create_model(model_cfg: Mapping[str, Any], *,
                 bn_axis_name: str | None = None) -> nn.Module:
  """Builds the model that `model_cfg` (the config's `model` section) names.

  `bn_axis_name`: the pmap axis over which BatchNorm averages its batch
  statistics (synchronised BN); None for a single device. `depth` and
  `vgg_block` matter only to vgg and `conv_impl` only to the convs of vgg and
  tiny; alexnet ignores all three. Raises ModelConfigError for any value that
  does not exist.
  """
  # Fields the caller leaves out take their defaults (handy for a plain dict).
  cfg = {**base_config().model.to_dict(), **dict(model_cfg.items())}
  name = cfg["name"]
  _check_choice("name", name, MODEL_NAMES)
  _check_choice("activation", cfg["activation"], tuple(layers.ACTIVATIONS))
  _check_choice("norm", cfg["norm"], NORMS_BY_MODEL[name], f" by {name}")
  _check_choice("dtype", cfg["dtype"], tuple(DTYPES))
  _check_choice("conv_impl", cfg["conv_impl"], layers.CONV_IMPLS)
  if name == "vgg":
    _check_choice("depth", cfg["depth"], tuple(LAYERS_BY_DEPTH), " by vgg")
    _check_choice("vgg_block", cfg["vgg_block"], BLOCK_KINDS)
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

  bn = dict(bn_axis_name=bn_axis_name, bn_momentum=float(cfg["bn_momentum"]),
            bn_scale=bool(cfg["bn_scale"]))
  if name == "speednet":
    widths = tuple(cfg["speednet_widths"])
    if len(widths) != 3 or not all(isinstance(w, int) and w > 0
                                   for w in widths):
      raise ModelConfigError(
          f"model.speednet_widths={widths!r} must be three positive integers")
    if not (isinstance(cfg["whiten_images"], int) and cfg["whiten_images"] > 0):
      raise ModelConfigError(
          f"model.whiten_images={cfg['whiten_images']!r} must be a positive "
          "integer")
    head_std = float(cfg["head_init_std"])
    if not (math.isfinite(head_std) and head_std >= 0):
      raise ModelConfigError(
          f"model.head_init_std={cfg['head_init_std']!r} must be >= 0 (0: "
          "PyTorch's default init)")
    return SpeedNet(num_classes=cfg["num_classes"], width=float(cfg["width"]),
                    widths=widths, logit_scale=float(cfg["logit_scale"]),
                    head_init_std=head_std,
                    whiten=bool(cfg["whiten"]),
                    dtype=DTYPES[cfg["dtype"]], conv_impl=cfg["conv_impl"],
                    **bn)
  common = dict(num_classes=cfg["num_classes"], width=float(cfg["width"]),
                activation=cfg["activation"], norm=cfg["norm"],
                dropout=float(cfg["dropout"]), dtype=DTYPES[cfg["dtype"]],
                **bn)
  if name == "alexnet":
    return AlexNetLike(**common)
  if name == "vgg":
    return VGG(depth=cfg["depth"], block=cfg["vgg_block"],
               conv_impl=cfg["conv_impl"], **common)
  return TinyCNN(conv_impl=cfg["conv_impl"], **common)


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
