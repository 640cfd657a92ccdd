"""What a model file declares about its model (`ModelSpec`), read by the
registry in jaxcnn/models/__init__.py and, through it, by the config
defaults, the statistics, the eval/inspect/predict text and the trainer.

A model file defines its Flax module and one `SPEC = ModelSpec(...)`; the
registry imports the file and registers `SPEC` under `SPEC.name`. Nothing
else in jaxcnn names the model.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from flax import linen as nn


class ModelConfigError(ValueError):
  """A `model` config field names something that does not exist."""


def check_choice(field: str, value: Any, choices, context: str = "") -> None:
  """Raises ModelConfigError, one line, unless `value` is in `choices`.
  `field` is the key under `model.` (e.g. 'vgg.depth')."""
  if value not in choices:
    listed = ", ".join(repr(c) for c in choices)
    raise ModelConfigError(
        f"model.{field}={value!r} is not supported{context}; "
        f"choose one of {listed}")


def check_positive_int(field: str, value: Any) -> None:
  if not (isinstance(value, int) and not isinstance(value, bool)
          and value > 0):
    raise ModelConfigError(
        f"model.{field}={value!r} must be a positive integer")


def check_finite(field: str, value: Any, minimum: float | None = None,
                 hint: str = "") -> float:
  try:
    number = float(value)
  except (TypeError, ValueError):
    number = math.nan
  if not math.isfinite(number) or (minimum is not None and number < minimum):
    bound = f" >= {minimum:g}" if minimum is not None else " a finite number"
    raise ModelConfigError(f"model.{field}={value!r} must be{bound}{hint}")
  return number


@dataclasses.dataclass(frozen=True)
class Common:
  """The common fields of the `model` section, checked, as the build
  function receives them. `module_kwargs` are the ModelBase fields every
  module takes (layers.ModelBase)."""
  name: str
  width: float
  activation: str
  norm: str
  dropout: float
  num_classes: int
  dtype: Any  # The jnp dtype.
  conv_impl: str
  bn_axis_name: str | None
  bn_momentum: float
  bn_scale: bool

  @property
  def module_kwargs(self) -> dict:
    return dict(num_classes=self.num_classes, width=self.width,
                dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                bn_momentum=self.bn_momentum, bn_scale=self.bn_scale)


@dataclasses.dataclass(frozen=True)
class DataInit:
  """A data-dependent init (speednet's whitening filters): after the plain
  init, `apply(model, params, images)` returns the params computed from
  `num_images(own)` seeded, normalised training images (own: the model's
  own config section)."""
  num_images: Callable[[Mapping[str, Any]], int]
  apply: Callable[[nn.Module, dict, np.ndarray], dict]


def conv_then_bn_layers(module_names: Sequence[str]
                        ) -> list[tuple[str, str]]:
  """The usual statistics layers: every conv* and fc* module, in layer
  order, whose pre-activation is its BatchNorm's output (conv1_2 ->
  bn1_2) when the model has that BatchNorm, else its own output."""
  names = set(module_names)
  out = []
  for name in sorted(names, key=numbered_order):
    if not re.fullmatch(r"(conv\S*|fc\S*)", name):
      continue
    bn = "bn" + name[len("conv"):] if name.startswith("conv") else None
    out.append((name, bn if bn in names else name))
  return out


def numbered_order(name: str):
  """conv before fc, then by the numbers in the name (conv2_10 after
  conv2_9)."""
  kind = 0 if name.startswith("conv") else 1 if name.startswith("fc") else 2
  numbers = tuple(int(n) for n in re.findall(r"\d+", name))
  return kind, numbers, name


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Everything jaxcnn needs to know about one model.

  name: the value of config `model.name`.
  summary: what the model is, one line (`python -m jaxcnn.train --help`).
  norms: the `model.norm` values it supports, its default first.
  config: its own fields with their defaults, the section `model.<name>`
    of the config (empty: no section). Values are plain config data
    (bool, int, float, str, tuples).
  build(common, own) -> nn.Module: checks its own fields (`own`, the
    section as a dict; raise ModelConfigError with one line naming
    `model.<name>.<field>`) and returns the module. `common` holds the
    checked common fields (`Common`).
  describe(model_section) -> str: the one line eval, inspect and predict
    print for the model (model_section: the whole `model` section).
  stats_layers(module_names) -> [(label, module)]: for each layer followed
    by the activation, in layer order, its label and the module whose
    output is the pre-activation (jaxcnn/stats.py); module_names are the
    top-level modules of one traced forward pass.
  layer_order: labels whose order is not that of the numbers in their
    names (alexnet's fc384 before fc192), in order; the tables of
    per-layer statistics sort by it.
  data_init: a data-dependent init (DataInit), or None.
  stem_params: the parameter paths before the first trainable block; when
    the optimizer has frozen all of them the train step calls the model
    with `stem_frozen=True` (which `__call__` must then accept) so no
    gradient flows into the stem. () : no stem.
  block_params: the blocks after the stem, in order, each a regex found in
    the paths of its parameters; when the optimizer has frozen the stem and
    every parameter of the first k blocks the train step calls the model
    with `stem_frozen=True, frozen_blocks=k` (which `__call__` must then
    accept) so their backward pass is skipped. () : none.
  """
  name: str
  summary: str
  norms: tuple[str, ...]
  build: Callable[[Common, dict], nn.Module]
  describe: Callable[[Any], str]
  config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  stats_layers: Callable[[Sequence[str]], list[tuple[str, str]]] = (
      conv_then_bn_layers)
  layer_order: tuple[str, ...] = ()
  data_init: DataInit | None = None
  stem_params: tuple[str, ...] = ()
  block_params: tuple[str, ...] = ()


def width_text(model_section) -> str:
  """' x0.5' for a width multiplier other than 1 (for `describe`)."""
  width = float(model_section["width"])
  return f" x{width:g}" if width != 1.0 else ""
