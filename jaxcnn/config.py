"""Experiment configs: nested attribute dicts, loaded from `experiments/<name>.py`.

An experiment file defines `get_config() -> Config`. Command-line overrides
(`--set train.num_epochs=2`) are parsed against the type of the value they
replace, so a typo or a wrong type is an error, not a silently new field.
"""
from __future__ import annotations

import ast
import contextlib
import copy
import difflib
import importlib.util
import json
import os
import pathlib
import traceback
from typing import Any, Iterable

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _experiments_dir() -> pathlib.Path:
  """experiments/ beside the package in a checkout (an editable install
  too); in an installed copy (`pip install .`) the same files are the
  package jaxcnn.experiments (pyproject.toml)."""
  checkout = REPO_ROOT / "experiments"
  if checkout.is_dir():
    return checkout
  return pathlib.Path(__file__).resolve().parent / "experiments"


EXPERIMENTS_DIR = _experiments_dir()


class ConfigError(ValueError):
  """Bad experiment name, override key or override value."""


class Config:
  """A dict with attribute access whose keys are fixed once built.

  Values are plain Python data (bool, int, float, str, None, tuples, nested
  Config), so a config round-trips through JSON.
  """

  def __init__(self, **fields: Any):
    object.__setattr__(self, "_fields", {})
    for k, v in fields.items():
      self[k] = v

  # Mapping protocol.
  def __getitem__(self, key: str) -> Any:
    return self._fields[key]

  def __setitem__(self, key: str, value: Any) -> None:
    if isinstance(value, dict):
      value = Config(**value)
    elif isinstance(value, (list, tuple)):
      # A tuple of sections (optim.groups) holds Configs too.
      value = tuple(Config(**v) if isinstance(v, dict) else v for v in value)
    self._fields[key] = value

  def __contains__(self, key: str) -> bool:
    return key in self._fields

  def __iter__(self):
    return iter(self._fields)

  def keys(self):
    return self._fields.keys()

  def items(self):
    return self._fields.items()

  def get(self, key: str, default: Any = None) -> Any:
    return self._fields.get(key, default)

  # Attribute access.
  def __getattr__(self, key: str) -> Any:
    try:
      return self._fields[key]
    except KeyError:
      raise AttributeError(f"config has no field {key!r}") from None

  def __setattr__(self, key: str, value: Any) -> None:
    self[key] = value

  def __deepcopy__(self, memo):
    return Config(**copy.deepcopy(self.to_dict(), memo))

  def __eq__(self, other: Any) -> bool:
    return isinstance(other, Config) and self.to_dict() == other.to_dict()

  def __repr__(self) -> str:
    return f"Config({json.dumps(self.to_dict(), indent=1)})"

  def copy(self) -> "Config":
    return copy.deepcopy(self)

  def to_dict(self) -> dict:
    out = {}
    for k, v in self._fields.items():
      if isinstance(v, Config):
        v = v.to_dict()
      elif isinstance(v, tuple):
        v = [x.to_dict() if isinstance(x, Config) else x for x in v]
      out[k] = v
    return out

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, d: dict) -> "Config":
    return cls(**d)

  def flat_items(self, prefix: str = "") -> Iterable[tuple[str, Any]]:
    """(dotted key, value) of every field. A tuple of sections (the
    optimizer's groups) names each by its `name` field (its index if it has
    none): 'optim.groups.head.lr'."""
    for k, v in self._fields.items():
      if isinstance(v, Config):
        yield from v.flat_items(prefix + k + ".")
      elif is_sections(v):
        for i, item in enumerate(v):
          label = item.get("name", i) if isinstance(item, Config) else i
          if isinstance(item, Config):
            yield from item.flat_items(f"{prefix}{k}.{label}.")
          else:
            yield f"{prefix}{k}.{label}", item
      else:
        yield prefix + k, v


def is_sections(value: Any) -> bool:
  """A non-empty tuple of Configs (optim.groups)."""
  return (isinstance(value, tuple) and bool(value)
          and all(isinstance(v, Config) for v in value))


def known_experiments() -> list[str]:
  return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.py")
                if not p.stem.startswith("_"))


@contextlib.contextmanager
def _errors_in_experiment_file(path: pathlib.Path, when: str):
  """An error raised by the user's own experiment file (a syntax error, an
  exception in get_config(), a bad field name) becomes one ConfigError
  naming the file and the line: the traceback would point into jaxcnn.
  A ConfigError from inside (a variant's base experiment that does not
  exist, a bad override) passes through as it is."""
  try:
    yield
  except ConfigError:
    raise
  except SyntaxError as e:
    where = f"{e.filename or path}:{e.lineno}" if e.lineno else str(path)
    raise ConfigError(f"{where}: syntax error: {e.msg}") from None
  except Exception as e:  # noqa: BLE001 - anything the user's code raised.
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if pathlib.Path(f.filename).name.endswith(".py")
              and not pathlib.Path(f.filename).resolve().is_relative_to(
                  pathlib.Path(__file__).resolve().parent)]
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else \
        str(path)
    raise ConfigError(f"{where}: {type(e).__name__} {when}: {e}") from None


def experiment_summaries() -> dict[str, str]:
  """{name: the first paragraph of its docstring, as one line} for every
  experiment, read without running the files (for --help)."""
  out = {}
  for name in known_experiments():
    try:
      tree = ast.parse((EXPERIMENTS_DIR / f"{name}.py").read_text())
      doc = ast.get_docstring(tree) or ""
    except (OSError, SyntaxError, ValueError):
      doc = ""
    words = []
    for line in doc.strip().splitlines():
      if not line.strip() or line.lstrip().startswith("- "):
        break  # The paragraph ends at a blank line or a list.
      words.append(line.strip())
    out[name] = " ".join(words).rstrip(":")  # Its list is left out.
  return out


# The sections every config saved by jaxcnn has.
SAVED_SECTIONS = ("data", "model", "optim", "train")
# Fields the trainer fills in from the data at every start (see
# state.resolve_with_data). A saved config's are cleared, so that a rerun
# on other data (--set data.train_limit=1000) fills them in afresh; on the
# same data they come back as saved. The channel statistics stay: they are
# what the saved run normalized with (--set data.channel_mean=() and
# data.channel_std=() computes them again).
FILLED_FROM_DATA = ("train_size", "image_shape", "class_names")


def load_saved_config(path: str | os.PathLike) -> Config:
  """A config that jaxcnn saved (WORKDIR/config.json), to train again: the
  saved fields, translated from an older schema (legacy.upgrade), over
  today's defaults (a field added since takes its
  default), the data's fields cleared (FILLED_FROM_DATA). Raises
  ConfigError, naming the file, when it cannot be read or is no such
  config."""
  # jaxcnn.defaults imports this module.
  from jaxcnn.defaults import base_config, with_defaults
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConfigError(f"config file {path} does not exist")
  try:
    saved = json.loads(path.read_text())
  except OSError as e:
    raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
  except (ValueError, UnicodeDecodeError) as e:
    raise ConfigError(f"config file {path} is not valid JSON: {e}") from e
  missing = [k for k in SAVED_SECTIONS
             if not (isinstance(saved, dict) and isinstance(saved.get(k), dict))]
  if missing:
    raise ConfigError(
        f"{path} is not a config saved by jaxcnn (it has no "
        f"{', '.join(missing)} section); give an experiment name or a "
        "WORKDIR/config.json")
  # An older schema's fields translated to today's (jaxcnn/legacy.py).
  config = with_defaults(Config.from_dict(saved))  # legacy.upgrade inside.
  defaults = base_config().data
  for key in FILLED_FROM_DATA:
    config.data[key] = defaults[key]
  return config


def load_experiment(name_or_path: str) -> Config:
  """Returns `get_config()` of `experiments/<name>.py` or of a .py file path,
  or the config of a .json file saved by jaxcnn (`load_saved_config`).

  A variant builds on another experiment by calling this in its own
  `get_config()`: `c = load_experiment("vgg")`, then changes a few fields. The
  name resolves in `experiments/` wherever the variant's file lies, and
  nothing is added to `sys.path`.
  """
  path = pathlib.Path(name_or_path)
  if path.suffix == ".json":
    return load_saved_config(path)
  if path.suffix != ".py":
    path = EXPERIMENTS_DIR / f"{name_or_path}.py"
  if not path.is_file():
    raise ConfigError(
        f"unknown experiment {name_or_path!r}; known experiments: "
        f"{', '.join(known_experiments())} (or give a path to a .py file, "
        "or a config.json that jaxcnn saved)")
  spec = importlib.util.spec_from_file_location(
      f"jaxcnn_experiment_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  with _errors_in_experiment_file(path, "loading it"):
    spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"experiment file {path} defines no get_config()")
  with _errors_in_experiment_file(path, "in get_config()"):
    config = module.get_config()
  if not isinstance(config, Config):
    raise ConfigError(f"{path}: get_config() must return a jaxcnn Config")
  _check_known_fields(config, path)
  return config


def _check_known_fields(config: Config, path: pathlib.Path) -> None:
  """Refuses a field that jaxcnn does not have (`c.model.widht = 2` in an
  experiment file adds a new field, which nothing would read)."""
  from jaxcnn.defaults import base_config
  known = [k for k, _ in base_config().flat_items()]
  for key, _ in config.flat_items():
    if key.startswith("optim.groups."):
      continue  # Each group's fields are checked by groups.complete.
    if key not in known and not any(key.startswith(k + ".") for k in known):
      from jaxcnn.legacy import renamed_key
      near = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
      hint = f"; did you mean {', '.join(near)}?" if near else ""
      if renamed_key(key) in known:
        hint = f"; it is now {renamed_key(key)}"
      raise ConfigError(f"{path}: get_config() sets {key!r}, which is not a "
                        f"config field (see jaxcnn/defaults.py){hint}")


def _parse_value(key: str, text: str, current: Any) -> Any:
  """Parses `text` as a value of the same type as `current`."""
  def bad(expected: str):
    return ConfigError(
        f"override {key}={text!r}: expected {expected} (current value "
        f"{current!r})")

  if isinstance(current, bool):
    low = text.strip().lower()
    if low in ("true", "1", "yes", "on"):
      return True
    if low in ("false", "0", "no", "off"):
      return False
    raise bad("a boolean (true/false)")
  if isinstance(current, int):
    try:
      return int(text)
    except ValueError:
      raise bad("an integer") from None
  if isinstance(current, float):
    try:
      return float(text)
    except ValueError:
      raise bad("a number") from None
  if isinstance(current, str):
    return text
  if is_sections(current):  # optim.groups=[{...}, ...]: every group anew.
    from jaxcnn import groups as groups_lib
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      raise bad("a list of groups, e.g. [{'name': 'all', 'match': '.*', "
                "'optimizer': 'sgd', 'lr': 0.1}]") from None
    if not (isinstance(value, (list, tuple)) and value
            and all(isinstance(v, dict) for v in value)):
      raise bad("a non-empty list of groups (dicts)")
    return tuple(groups_lib.complete(v) for v in value)
  if isinstance(current, tuple):
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = tuple(x.strip() for x in text.split(",") if x.strip())
    if not isinstance(value, (tuple, list)):
      value = (value,)
    value = tuple(value)
    if current and value:
      kind = type(current[0])
      try:
        value = tuple(kind(v) if not (kind is float and isinstance(v, int))
                      else float(v) for v in value)
      except (TypeError, ValueError):
        raise bad(f"a tuple of {kind.__name__}") from None
    return value
  if current is None:
    if text.strip().lower() in ("none", "null", ""):
      return None
    try:
      return ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return text
  if isinstance(current, Config):
    raise bad("a single field, not a whole section; set its fields one by one")
  raise bad(type(current).__name__)


# The two ways to give a run's length; `num_steps` > 0 wins in the trainer.
EPOCHS_KEY, STEPS_KEY = "train.num_epochs", "train.num_steps"


def apply_overrides(config: Config, overrides: Iterable[str]) -> Config:
  """Returns a copy of `config` with `a.b=value` overrides applied.

  A run length given here is the one used: overriding `train.num_epochs`
  without `train.num_steps` sets `train.num_steps` to 0, so the experiment's
  own step count (which would win in the trainer) cannot silently replace
  it. Overriding both, each above 0, is refused: only one can be the length.
  """
  config = config.copy()
  overrides = list(overrides)
  flat_keys = [k for k, _ in config.flat_items()]
  given = set()
  for item in overrides:
    if "=" not in item:
      raise ConfigError(f"override {item!r} is not of the form key=value")
    key, text = item.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts):
      if not isinstance(node, Config) or part not in node:
        from jaxcnn.legacy import renamed_key
        new = renamed_key(key)  # A key older jaxcnn had.
        near = difflib.get_close_matches(key, flat_keys, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        moved = _MOVED_TO_GROUPS.get(key)
        if new in flat_keys:
          hint = f"; it is now {new}"
        elif moved:
          hint = (f"; the optimizer's fields are per parameter group now: "
                  f"set optim.groups.<index, name or *>.{moved} (see "
                  "jaxcnn/defaults.py)")
        raise ConfigError(f"unknown config key {key!r}{hint}")
      if i < len(parts) - 1:
        node = node[part]
        if is_sections(node):
          _set_in_groups(node, key, parts[i + 1:], text)
          break
    else:
      node[parts[-1]] = _parse_value(key, text, node[parts[-1]])
    given.add(key)
  _resolve_run_length(config, given)
  return config


# The flat optimizer fields that became group fields (jaxcnn/legacy.py
# translates saved configs): old key -> the group field.
_MOVED_TO_GROUPS = {
    "optim.optimizer": "optimizer", "optim.learning_rate": "lr",
    "optim.momentum": "momentum", "optim.b1": "b1", "optim.b2": "b2",
    "optim.eps": "eps", "optim.rmsprop_decay": "decay",
    "optim.hparam_units": "units", "optim.weight_decay": "weight_decay",
    "optim.weight_decay_mode": "weight_decay_mode", "optim.l1": "l1",
    "optim.weight_decay_filter": "match", "optim.bias_lr_filter": "match",
    "optim.bias_lr_scale": "lr", "optim.muon_filter": "match",
    "optim.muon_ns_steps": "ns_steps", "optim.muon_normalize": "normalize",
    "optim.muon_rest": "optimizer", "optim.muon_rest_lr_scale": "lr",
    "optim.muon_rest_momentum": "momentum",
    "optim.freeze_filter": "frozen_from_epochs",
    "optim.freeze_after_filter": "frozen_from_epochs",
    "optim.freeze_after_epochs": "frozen_from_epochs",
}


def _set_in_groups(groups: tuple, key: str, rest: list[str],
                   text: str) -> None:
  """`--set optim.groups.<index|name|*>.<field>[.<field>]=text`: sets the
  field in the selected groups (in place). Setting `optimizer` gives the
  group that optimizer's options (those both have keep their values)."""
  from jaxcnn import groups as groups_lib
  if len(rest) < 2:
    raise ConfigError(
        f"override {key}: name a group and its field, as "
        f"optim.groups.<index, name or *>.<field>=value (the groups: "
        f"{', '.join(str(g.get('name')) for g in groups)})")
  selected = groups_lib.find(groups, rest[0])
  index = {id(g): i for i, g in enumerate(groups)}
  for g in selected:
    field, *sub = rest[1:]
    if field == "optimizer" and not sub:
      new = groups_lib.with_optimizer(g, _parse_value(key, text, g.optimizer))
      g._fields.clear()
      g._fields.update(new._fields)
      continue
    if field not in g:
      groups_lib.check_option(g.get("name"), g.get("optimizer"), field)
    node, name = g, field
    for j, part in enumerate(sub):
      node = node[name]
      if not isinstance(node, Config) or part not in node:
        raise ConfigError(
            f"unknown config key {key!r}: group {g.get('name')!r} "
            f"(optim.groups.{index[id(g)]}) has no "
            f"{'.'.join([field] + sub[:j + 1])}")
      name = part
    current = node[name]
    if (node is g and groups_lib.COMMON_DEFAULTS.get(name, 0) is None
        and text.strip().lower() in ("none", "null")):
      node[name] = None  # frozen_from_epochs / schedule back to None.
    elif node is g and name == "frozen_from_epochs" and current is not None:
      node[name] = _parse_value(key, text, float(current))
    else:
      node[name] = _parse_value(key, text, current)


def _resolve_run_length(config: Config, given: set[str]) -> None:
  """Makes an overridden `train.num_epochs` the run length (see
  `apply_overrides`)."""
  if EPOCHS_KEY not in given:
    return
  train = config.get("train")
  if STEPS_KEY not in given:
    if isinstance(train, Config) and "num_steps" in train:
      train.num_steps = 0
    return
  epochs, steps = train.num_epochs, train.num_steps
  if epochs > 0 and steps > 0:
    raise ConfigError(
        f"both {EPOCHS_KEY}={epochs} and {STEPS_KEY}={steps} are set: give "
        f"one run length (set the other to 0)")


def config_from_json_file(path: str | os.PathLike) -> Config:
  with open(path) as f:
    return Config.from_dict(json.load(f))


def diff(a: Config, b: Config) -> list[str]:
  """Lines `key: a -> b` for every field that differs between two configs."""
  fa, fb = dict(a.flat_items()), dict(b.flat_items())
  out = []
  for key in sorted(set(fa) | set(fb)):
    va, vb = fa.get(key, "<absent>"), fb.get(key, "<absent>")
    if va != vb:
      out.append(f"{key}: {va!r} -> {vb!r}")
  return out
