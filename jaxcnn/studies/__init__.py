"""The studies: one file per study in this package, like `experiments/`.

Adding a study is adding one file, `jaxcnn/studies/<name>.py`, that defines
`STUDY`, a `Study` whose `name` is the file's name. Nothing else changes:
`python -m jaxcnn.study <name>` finds it, `--list` lists it, and the tests
resolve every member of every study. For example:

    from jaxcnn.studies import ALEX_SMALL, Member, Study


    def _members(scale):
      return [Member(n, (f"model.norm={n}",)) for n in ("lrn", "none")]


    STUDY = Study(
        "my_study", question="...", paper="...", base="alexnet",
        members=_members, scale_overrides={"small": ALEX_SMALL},
        epochs={"small": 15})

A member is a name plus `--set`-style overrides of the base experiment (or of
its own `exp`); `members(scale)` gets the resolved `Scale`, so a member can
place e.g. a schedule boundary at a fraction of the run. Each scale adds its
generic overrides first (`scale_of`: tiny is the tiny model on synthetic
data, small a 5000-image subset for a few epochs, full all of CIFAR-10),
then the study's `scale_overrides`, then the member's. `extras` names the
optional report sections (see `jaxcnn.study_report`).

Files whose name starts with '_' are not studies: `_spec.py` holds the types,
the scale policy and the override presets shared by several studies.
"""
from __future__ import annotations

import importlib
import pkgutil

from jaxcnn.config import ConfigError
from jaxcnn.studies._spec import (ALEX_SMALL, EXTRAS, SCALES, THRESHOLDS,
                                  TINY_FAST, Member, Scale, Study,
                                  member_configs, scale_of)

__all__ = ["ALEX_SMALL", "EXTRAS", "SCALES", "THRESHOLDS", "TINY_FAST",
           "Member", "Scale", "Study", "all_studies", "load", "member_configs",
           "names", "scale_of"]


def names() -> list[str]:
  """The studies there are: every module of this package not named '_*'."""
  return sorted(m.name for m in pkgutil.iter_modules(__path__)
                if not m.name.startswith("_"))


def load(name: str) -> Study:
  """The `STUDY` of `jaxcnn/studies/<name>.py`."""
  known = names()
  if name not in known:
    raise ConfigError(f"unknown study {name!r}; known: {', '.join(known)}")
  module = importlib.import_module(f"{__name__}.{name}")
  study = getattr(module, "STUDY", None)
  if not isinstance(study, Study):
    raise ConfigError(f"{module.__file__} defines no STUDY = Study(...)")
  if study.name != name:
    raise ConfigError(f"{module.__file__}: STUDY is named {study.name!r}; "
                      f"name it after its file, {name!r}")
  return study


def all_studies() -> dict[str, Study]:
  return {name: load(name) for name in names()}
