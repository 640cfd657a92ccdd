"""Configs saved by older jaxcnn, translated to today's schema.

A saved config (WORKDIR/config.json, or the config stored with each
checkpoint) goes through `upgrade` before today's defaults are laid over it
(defaults.with_defaults): each step of STEPS, in order, rewrites one thing
that the schema has changed since, and leaves a config that is already in
today's form as it is. A field that was only added since needs no step: it
takes its default, which is what the code did before the field existed.

Add a step for a change that moves, renames or re-means a field; never edit
an old step (workdirs of every age go through all of them, in order).
"""
from __future__ import annotations

import copy
from typing import Callable

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


# The translation steps, oldest first.
STEPS: tuple[Callable[[dict], dict], ...] = (
    _upgrade_model,
)


def upgrade(saved: dict) -> dict:
  """`saved` (a config as JSON data) in today's schema: a new dict, the
  steps of STEPS applied in order; the input is not changed."""
  out = copy.deepcopy(saved)
  if not isinstance(out, dict):
    return out
  for step in STEPS:
    out = step(out)
  return out
