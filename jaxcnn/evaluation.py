"""Restoring a workdir's checkpoints, evaluating them, and comparing raw with
EMA weights: the library behind `python -m jaxcnn.eval` and
`python -m jaxcnn.inspect`.

Everything is rebuilt from the checkpoint alone: its `config` item (the
resolved config, with the data's channel statistics, training-set size and
image shape) names the model, optimizer, schedule and normalization, so no
data is read to restore a state, and an edited or deleted experiment file
does not matter. The
state was saved unreplicated, so it restores onto any number of devices.

Reading never writes: the checkpoint manager is opened with `create=False`
and keeps every step. The functions return plain data (dicts, lists, floats)
that prints as tables and dumps as JSON; the commands write plots from it
only after everything has succeeded.

Problems raise CheckpointError (workdir, step, incompatible model, damaged
files) or DataError (evaluation data), each with one readable line.
"""
from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Callable, Sequence

import jax
import numpy as np

from jaxcnn import augment, checkpoint, parallel
from jaxcnn import state as state_lib
from jaxcnn.eval_step import make_eval_fn, place_eval_data, summarize_eval
from jaxcnn.checkpoint import CheckpointError
from jaxcnn.config import Config, ConfigError
from jaxcnn.data import SPLITS, DataError, Dataset, load_dataset, load_from_config
from jaxcnn.models import create_model
# format_table is imported from here by eval.py; both live in jaxcnn.tables.
from jaxcnn.tables import format_table, percent  # noqa: F401

WEIGHTS = ("raw", "ema")
WEIGHT_CHOICES = ("raw", "ema", "both")
# What a config saved before data.image_shape and data.train_size existed
# is taken to have had (see _legacy_data_fields).
LEGACY_IMAGE_SHAPE = (32, 32, 3)
LEGACY_TRAIN_SIZE = 50_000
NEAR_ZERO = 1e-3


def weights_list(weights: str | Sequence[str]) -> tuple[str, ...]:
  """'both' | 'raw' | 'ema' (or a sequence of them) -> names in WEIGHTS."""
  if isinstance(weights, str):
    if weights not in WEIGHT_CHOICES:
      raise ValueError(f"weights must be one of {', '.join(WEIGHT_CHOICES)}, "
                       f"got {weights!r}")
    return WEIGHTS if weights == "both" else (weights,)
  out = tuple(weights)
  bad = [w for w in out if w not in WEIGHTS]
  if bad or not out:
    raise ValueError(f"weights must be among {WEIGHTS}, got {out}")
  return out


# --- Finding and restoring checkpoints ----------------------------------------


def _steps_text(steps: Sequence[int]) -> str:
  return ", ".join(str(s) for s in steps)


def available_steps(workdir) -> list[int]:
  """The complete checkpoint steps of `workdir`; raises CheckpointError when
  there are none (with what was found instead)."""
  path = pathlib.Path(workdir)
  if not path.is_dir():
    raise CheckpointError(f"workdir {workdir} does not exist")
  steps = checkpoint.saved_steps(workdir)
  if steps:
    return steps
  directory = checkpoint.checkpoint_dir(workdir)
  if not directory.is_dir():
    raise CheckpointError(
        f"no checkpoints in {workdir} ({directory} does not exist); train "
        f"first: python -m jaxcnn.train --exp NAME --workdir {workdir}")
  unfinished = sorted(p.name for p in directory.iterdir())
  extra = (f"; unfinished or foreign entries there: {', '.join(unfinished)}"
           if unfinished else "")
  raise CheckpointError(f"no complete checkpoints in {directory}{extra}")


def _pick_step(workdir, steps: Sequence[int], step: int | None) -> int:
  if step is None:
    return steps[-1]
  if step not in steps:
    raise CheckpointError(
        f"no checkpoint for step {step} in {workdir}; saved steps: "
        f"{_steps_text(steps)}")
  return step


def _key_name(key: Any) -> str:
  for attr in ("key", "idx", "name"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _leaf_specs(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """'/'-joined path -> (shape, dtype) for every array leaf. Dict keys,
  sequence indices and NamedTuple fields all become plain names, so the
  typed target and orbax's stored tree (dicts and lists) compare."""
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    name = "/".join(_key_name(k) for k in path)
    out[name] = (tuple(int(d) for d in leaf.shape), str(np.dtype(leaf.dtype)))
  return out


def _stored_specs(step_dir: pathlib.Path, workdir, step: int) -> dict:
  import orbax.checkpoint as ocp
  try:
    metadata = ocp.StandardCheckpointHandler().metadata(step_dir / "state")
    return _leaf_specs(metadata)
  except Exception as e:  # orbax raises many kinds; report one line.
    raise CheckpointError(
        f"checkpoint step {step} in {workdir} is truncated or corrupted: "
        f"{checkpoint.damage_report(e, step_dir, workdir)}") from e


def _mismatch(stored: dict, built: dict) -> list[str]:
  """What differs between the checkpoint's arrays and the model's."""
  def listed(names: list[str]) -> str:
    more = f" and {len(names) - 4} more" if len(names) > 4 else ""
    return ", ".join(names[:4]) + more

  def order(names) -> list[str]:  # The model's own parameters first.
    return sorted(names, key=lambda k: (not k.startswith("params/"), k))

  out = []
  missing = order(set(built) - set(stored))
  extra = order(set(stored) - set(built))
  differ = order(k for k in set(built) & set(stored) if built[k] != stored[k])
  if missing:
    out.append(f"not in the checkpoint: {listed(missing)}")
  if extra:
    out.append(f"not in the model: {listed(extra)}")
  if differ:
    out.append("different shapes: " + listed(
        [f"{k} {stored[k][0]} {stored[k][1]} saved vs {built[k][0]} "
         f"{built[k][1]} built" for k in differ]))
  return out


def _legacy_data_fields(config: Config) -> Config:
  """A config saved before data.train_size and data.image_shape were: those
  fields as the run most likely had them (CIFAR-sized images; the training
  set of its limit or synthetic size, else 50,000). Only the schedule's
  step counts depend on the size, never a shape of the state."""
  config = config.copy()
  if not config.data.get("image_shape"):
    config.data.image_shape = LEGACY_IMAGE_SHAPE
  if not config.data.get("train_size"):
    if config.data.get("train_limit", 0) > 0:
      n = int(config.data.train_limit)
    elif config.data.get("source") == "synthetic":
      n = int(config.data.get("synthetic_train_size", LEGACY_TRAIN_SIZE))
    else:
      n = LEGACY_TRAIN_SIZE
    config.data.train_size = max(n, int(config.train.batch_size)
                                 * int(config.train.steps_per_dispatch))
  return config


def _build_target(config: Config) -> dict:
  """The abstract unreplicated state that training created for `config`,
  from the config alone (state.build_from_config)."""
  single = _legacy_data_fields(config)
  # The target is unreplicated, so the device count the run trained on (which
  # this machine may not have) plays no part.
  single.train.num_devices = 1
  setup = state_lib.build_from_config(single)
  return jax.eval_shape(lambda: state_lib.create_train_state(setup).to_dict())


def _incompatible(workdir, step: int, config: Config, why: str) -> CheckpointError:
  model = config.get("model", {})
  name = model.get("name", "?") if hasattr(model, "get") else "?"
  return CheckpointError(
      f"checkpoint step {step} in {workdir} was written by an incompatible "
      f"model or config (model.name={name!r}): {why}")


def _restore_target(workdir, step: int, config: Config, stored: dict) -> dict:
  """The restore target, checked against the stored arrays."""
  try:
    target = _build_target(config)
  except Exception as e:  # Any failure to build is a config this code rejects.
    raise _incompatible(workdir, step, config,
                        f"it does not build: {type(e).__name__}: {e}") from e
  problems = _mismatch(stored, _leaf_specs(target))
  if problems:
    raise _incompatible(workdir, step, config, "; ".join(problems))
  return target


class CheckpointReader:
  """Restores the checkpoints of one workdir, read-only.

  Builds the restore target once and reuses it for every step whose config
  agrees (all steps of a run do: resuming refuses incompatible changes).
  """

  def __init__(self, workdir):
    self.workdir = str(workdir)
    self.steps = available_steps(workdir)
    self._target: dict | None = None
    self._target_key: str | None = None
    self._manager = None

  def _open(self):
    if self._manager is None:
      self._manager = checkpoint.open_for_reading(self.workdir)
    return self._manager

  def step_dir(self, step: int) -> pathlib.Path:
    return checkpoint.checkpoint_dir(self.workdir) / str(step)

  def config(self, step: int | None = None) -> tuple[Config, int]:
    step = _pick_step(self.workdir, self.steps, step)
    return checkpoint.restore_config(self._open(), step), step

  def _target_for(self, config: Config, step: int) -> dict:
    step_dir = self.step_dir(step)
    stored = _stored_specs(step_dir, self.workdir, step)
    # What the target depends on; train.* may change between the steps of a
    # resumed run without changing any shape.
    key = json.dumps([config.model.to_dict(), config.optim.to_dict(),
                      sorted(stored.items())], sort_keys=True)
    if self._target is None or key != self._target_key:
      self._target = _restore_target(self.workdir, step, config, stored)
      self._target_key = key
    return self._target

  def restore(self, step: int | None = None
              ) -> tuple[Config, state_lib.TrainState, int]:
    step = _pick_step(self.workdir, self.steps, step)
    # Read-only: an unreadable step is an error, never moved aside.
    restored = checkpoint.restore_latest_good(
        self.workdir, lambda config: self._target_for(config, step), step=step,
        manager=self._open())
    state = state_lib.TrainState.from_dict(restored.state)
    restored_step = int(state.step)
    if restored_step != step:
      step_dir = self.step_dir(step)
      raise CheckpointError(
          f"checkpoint directory {checkpoint.relative_to_workdir(step_dir, self.workdir)} holds "
          f"the state of step {restored_step}, not {step}")
    return restored.config, state, step

  def close(self) -> None:
    if self._manager is not None:
      self._manager.close()
      self._manager = None

  def __enter__(self) -> "CheckpointReader":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def load_checkpoint(workdir, step: int | None = None
                    ) -> tuple[Config, state_lib.TrainState, int]:
  """(config, unreplicated TrainState, step) of `step` (None: the latest),
  rebuilt from the checkpoint's config alone: no data is read."""
  with CheckpointReader(workdir) as reader:
    return reader.restore(step)


# --- Evaluation ---------------------------------------------------------------


def load_eval_data(config: Config, source: str | None = None,
                   data_dir: str | None = None) -> tuple[Dataset, bool]:
  """The dataset to evaluate on and whether it is the run's own.

  The run's own source comes with its train/test limits, so the numbers match
  the ones training reported; another source is used whole, and must have as
  many classes as the model.
  """
  own = source is None or source == config.data.source
  if own:
    data_cfg = config.data.copy()
    if data_dir is not None:
      data_cfg.data_dir = data_dir
    return load_from_config(data_cfg, config.seed), True
  dataset = load_dataset(source, data_dir)
  if dataset.num_classes != config.model.num_classes:
    raise DataError(
        f"{source} has {dataset.num_classes} classes but the checkpoint's "
        f"model predicts {config.model.num_classes}")
  return dataset, False


def split_arrays(dataset: Dataset, split: str) -> tuple[np.ndarray, np.ndarray]:
  if split not in SPLITS:
    raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
  return (getattr(dataset, f"{split}_images"),
          getattr(dataset, f"{split}_labels"))


def per_class_accuracy(confusion: np.ndarray) -> list[float | None]:
  """Diagonal over row sums of a [true, predicted] confusion matrix; None
  for a class with no examples."""
  confusion = np.asarray(confusion)
  rows = confusion.sum(axis=1)
  return [float(confusion[i, i] / rows[i]) if rows[i] else None
          for i in range(len(rows))]


def _plain(summary: dict) -> dict:
  confusion = np.asarray(summary["confusion"], np.int64)
  return {
      "loss": float(summary["loss"]),
      "accuracy": float(summary["accuracy"]),
      "top5_accuracy": float(summary["top5_accuracy"]),
      "count": int(summary["count"]),
      "per_class_accuracy": per_class_accuracy(confusion),
      "confusion": confusion.tolist(),
  }


class Evaluator:
  """Evaluates states of one config on one split, data-parallel over the
  local devices like training; the split is placed on the devices and the
  eval step compiled once, then reused for every state (as `--all_steps`
  needs). Each image counts exactly once: padding is masked out."""

  def __init__(self, config: Config, images: np.ndarray, labels: np.ndarray,
               *, batch_size: int = 0, num_devices: int = 0,
               tta: str = "none"):
    self.config = config
    available = len(jax.local_devices())
    if num_devices > available:  # select_devices would blame train.num_devices.
      raise parallel.DeviceError(
          f"asked to evaluate on {num_devices} devices but only {available} "
          f"local devices are available")
    self.devices = parallel.select_devices(num_devices)
    self.batch_size = int(batch_size or config.train.eval_batch_size)
    if self.batch_size <= 0:
      raise DataError(f"batch size must be positive, got {self.batch_size}")
    self.model = create_model(config.model, bn_axis_name=parallel.AXIS)
    self.image_shape = tuple(int(d) for d in images.shape[1:])
    self.count = int(len(labels))
    self._data = place_eval_data(images, labels.astype(np.int32),
                                         self.devices, self.batch_size)
    self._fn = make_eval_fn(self.model, config, self.devices, tta)
    self._checked = False

  def _check_fits(self, variables: dict) -> None:
    # A wrong image size would otherwise fail inside the compiled step with a
    # shape error about some matmul.
    x = jax.ShapeDtypeStruct((1,) + self.image_shape, np.float32)
    try:
      jax.eval_shape(lambda v, x: self.model.apply(v, x, train=False),
                     variables, x)
    except Exception as e:
      why = str(e).strip().splitlines()[0].split(" (https://")[0][:240]
      raise DataError(
          f"images of shape {self.image_shape} do not fit this checkpoint's "
          f"model: {type(e).__name__}: {why}") from e
    self._checked = True

  def __call__(self, state: state_lib.TrainState,
               weights: str | Sequence[str] = "both") -> dict[str, dict]:
    """{weights: {loss, accuracy, top5_accuracy, count, per_class_accuracy,
    confusion}} as plain Python data."""
    out = {}
    for name in weights_list(weights):
      variables = state_lib.variables_of(state, name)
      if not self._checked:
        self._check_fits(variables)
      d = self._data
      totals = self._fn(parallel.replicate(variables, self.devices),
                        d.images, d.labels, d.mask)
      out[name] = _plain(summarize_eval(totals))
    return out


def evaluate(config: Config, state: state_lib.TrainState, dataset: Dataset, *,
             split: str = "test", batch_size: int = 0,
             weights: str | Sequence[str] = "both",
             num_devices: int = 0, tta: str = "none") -> dict[str, dict]:
  """Evaluates one state on a split of `dataset` (see Evaluator)."""
  images, labels = split_arrays(dataset, split)
  evaluator = Evaluator(config, images, labels, batch_size=batch_size,
                        num_devices=num_devices, tta=tta)
  return evaluator(state, weights)


def eval_workdir(workdir, *, step: int | None = None, all_steps: bool = False,
                 weights: str = "both", source: str | None = None,
                 data_dir: str | None = None, split: str = "test",
                 batch_size: int = 0, num_devices: int = 0, tta: str = "none",
                 log: Callable[[str], None] | None = None) -> dict:
  """What `python -m jaxcnn.eval` computes: one step (default the latest), or
  every kept step with `all_steps`, with test-time augmentation `tta` (one
  of augment.TTA_MODES). Plain data:

    {workdir, model, data, split, class_names, count, num_devices, batch_size,
     weights, tta, step (the last evaluated), results: {raw|ema: {...}} of
     that step, steps: [{step, raw|ema: {...}}, ...]}
  """
  chosen = weights_list(weights)
  if split not in SPLITS:
    raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
  if tta not in augment.TTA_MODES:
    raise ConfigError(f"unknown --tta {tta!r}; use one of "
                      f"{', '.join(augment.TTA_MODES)}")
  with CheckpointReader(workdir) as reader:
    steps = list(reader.steps) if all_steps else [
        _pick_step(workdir, reader.steps, step)]
    config, _ = reader.config(steps[-1])
    dataset, _ = load_eval_data(config, source, data_dir)
    images, labels = split_arrays(dataset, split)
    evaluator = None
    records = []
    for s in steps:
      config, state, s = reader.restore(s)
      if log and all_steps:
        log(f"evaluating step {s} on {dataset.source} ({split})")
      if evaluator is None:
        evaluator = Evaluator(config, images, labels, batch_size=batch_size,
                              num_devices=num_devices, tta=tta)
      results = evaluator(state, chosen)
      records.append({"step": s, **results})
  last = records[-1]
  return {
      "workdir": str(workdir),
      "model": _model_text(config),
      "data": dataset.source,
      "split": split,
      "class_names": list(dataset.class_names),
      "count": evaluator.count,
      "num_devices": len(evaluator.devices),
      "platform": evaluator.devices[0].platform,
      "batch_size": evaluator.batch_size,
      "weights": list(chosen),
      "tta": tta,
      "step": last["step"],
      "results": {w: last[w] for w in chosen},
      "steps": records,
  }


def _model_text(config: Config) -> str:
  m = config.model
  extra = f"-{m.depth}" if m.name == "vgg" else ""
  width = f" x{m.width:g}" if float(m.width) != 1.0 else ""
  if m.name == "speednet":  # Its activation is GELU whatever the config says.
    widths = "/".join(str(w) for w in m.get("speednet_widths", ()))
    return f"speednet {widths}{width} (batchnorm, gelu)"
  return f"{m.name}{extra}{width} ({m.norm}, {m.activation})"


# --- Raw against EMA weights --------------------------------------------------


def _named_leaves(tree: Any) -> dict[str, np.ndarray]:
  return {"/".join(_key_name(k) for k in path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _compare(name: str, kind: str, raw: np.ndarray, ema: np.ndarray,
             near_zero: float) -> dict:
  raw64 = np.asarray(raw, np.float64).ravel()
  ema64 = np.asarray(ema, np.float64).ravel()
  raw_norm = float(np.linalg.norm(raw64))
  ema_norm = float(np.linalg.norm(ema64))
  distance = float(np.linalg.norm(raw64 - ema64))
  if raw_norm > 0:
    relative = distance / raw_norm
  else:
    relative = 0.0 if distance == 0 else math.inf
  if raw_norm > 0 and ema_norm > 0:
    cosine = float(np.dot(raw64, ema64) / (raw_norm * ema_norm))
  else:  # Two zero tensors point the same way; one zero tensor has no angle.
    cosine = 1.0 if raw_norm == ema_norm else 0.0
  count = int(raw64.size)
  return {
      "name": name,
      "kind": kind,
      "shape": list(np.shape(raw)),
      "count": count,
      "raw_norm": raw_norm,
      "ema_norm": ema_norm,
      "distance": distance,
      "relative_difference": relative,
      "cosine": cosine,
      "near_zero_raw": float(np.mean(np.abs(raw64) < near_zero)) if count else 0.0,
      "near_zero_ema": float(np.mean(np.abs(ema64) < near_zero)) if count else 0.0,
  }


def compare_weights(state: state_lib.TrainState,
                    near_zero: float = NEAR_ZERO) -> list[dict]:
  """One row per tensor, raw against EMA: parameters ('param'), then
  BatchNorm statistics ('batch_stats', raw running statistics against their
  EMA) where the model has them.

  Row: name ('conv1/kernel'), kind, shape, count, raw_norm, ema_norm
  (L2), distance (L2 of the difference), relative_difference (distance /
  raw_norm), cosine, near_zero_raw / near_zero_ema (fraction of entries with
  |w| < near_zero).
  """
  rows = []
  raw_vars = state_lib.variables_of(state, "raw")
  ema_vars = state_lib.variables_of(state, "ema")
  for kind, key in (("param", "params"), ("batch_stats", "batch_stats")):
    raw, ema = _named_leaves(raw_vars[key]), _named_leaves(ema_vars[key])
    if set(raw) != set(ema):
      raise CheckpointError(
          f"raw and EMA {kind} have different tensors: "
          f"{sorted(set(raw) ^ set(ema))[:4]}")
    for name in sorted(raw):
      rows.append(_compare(name, kind, raw[name], ema[name], near_zero))
  return rows


def summarize_comparison(rows: Sequence[dict], top: int = 3) -> dict:
  """Totals over the parameter rows, the parameter tensors that differ most,
  and the BatchNorm statistic that differs most (if any)."""
  params = [r for r in rows if r["kind"] == "param"]
  stats = [r for r in rows if r["kind"] != "param"]
  raw_sq = sum(r["raw_norm"] ** 2 for r in params)
  dist_sq = sum(r["distance"] ** 2 for r in params)
  total = sum(r["count"] for r in params)
  relative = math.sqrt(dist_sq / raw_sq) if raw_sq > 0 else (
      0.0 if dist_sq == 0 else math.inf)

  def ranked(subset: Sequence[dict], n: int) -> list[dict]:
    order = sorted(subset, key=lambda r: r["relative_difference"], reverse=True)
    return [{"name": r["name"], "relative_difference": r["relative_difference"]}
            for r in order[:n] if r["relative_difference"] > 0]

  def named(items: list[dict]) -> str:
    return ", ".join(f"{m['name']} {percent(m['relative_difference'])}"
                     for m in items)

  most, most_stats = ranked(params, top), ranked(stats, 1)
  near_raw = (sum(r["near_zero_raw"] * r["count"] for r in params) / total
              if total else 0.0)
  near_ema = (sum(r["near_zero_ema"] * r["count"] for r in params) / total
              if total else 0.0)
  parts = [f"{len(params)} parameter tensors, {total:,} weights: EMA differs "
           f"from raw by {percent(relative)} (relative L2)"]
  parts.append(f"most different: {named(most)}" if most
               else "EMA and raw parameters are identical")
  if most_stats:
    parts.append(f"BatchNorm statistics: {named(most_stats)}")
  parts.append(f"near-zero weights raw {percent(near_raw)}, EMA "
               f"{percent(near_ema)}")
  return {"param_tensors": len(params), "param_count": total,
          "relative_difference": relative, "near_zero_raw": near_raw,
          "near_zero_ema": near_ema, "most_different": most,
          "most_different_batch_stats": most_stats, "line": "; ".join(parts)}


def weight_histogram(state: state_lib.TrainState, name: str,
                     bins: int = 80) -> dict:
  """Histograms of one parameter tensor, raw and EMA, on shared bins."""
  raw = _named_leaves(state.params)
  ema = _named_leaves(state_lib.variables_of(state, "ema")["params"])
  if name not in raw:
    raise KeyError(name)
  r = raw[name].astype(np.float64).ravel()
  e = ema[name].astype(np.float64).ravel()
  lo, hi = float(min(r.min(), e.min())), float(max(r.max(), e.max()))
  if lo == hi:
    lo, hi = lo - 0.5, hi + 0.5
  edges = np.linspace(lo, hi, bins + 1)
  return {"name": name, "edges": edges.tolist(),
          "raw_counts": np.histogram(r, edges)[0].tolist(),
          "ema_counts": np.histogram(e, edges)[0].tolist()}


def param_names(state: state_lib.TrainState) -> list[str]:
  return sorted(_named_leaves(state.params))


def default_histogram_layer(rows: Sequence[dict]) -> str:
  """The weight matrix (not a bias or scale) that EMA moved most."""
  params = [r for r in rows if r["kind"] == "param"]
  matrices = [r for r in params if len(r["shape"]) >= 2] or params
  return max(matrices, key=lambda r: r["relative_difference"])["name"]


def inspect_workdir(workdir, *, step: int | None = None,
                    near_zero: float = NEAR_ZERO, with_eval: bool = False,
                    histogram_layer: str | None = None, histogram: bool = False,
                    source: str | None = None, data_dir: str | None = None,
                    split: str = "test", batch_size: int = 0,
                    num_devices: int = 0) -> dict:
  """What `python -m jaxcnn.inspect` computes, as plain data:

    {workdir, step, model, rows: compare_weights(...), summary:
     summarize_comparison(...), eval: {raw, ema, data, split} (with_eval),
     histogram: weight_histogram(...) (histogram or histogram_layer)}
  """
  with CheckpointReader(workdir) as reader:
    config, state, step = reader.restore(step)
    rows = compare_weights(state, near_zero)
    report = {"workdir": str(workdir), "step": step,
              "model": _model_text(config), "near_zero": near_zero,
              "rows": rows, "summary": summarize_comparison(rows)}
    if histogram or histogram_layer:
      layer = histogram_layer or default_histogram_layer(rows)
      names = param_names(state)
      if layer not in names:
        raise ConfigError(f"unknown layer {layer!r}; parameter tensors: "
                        f"{', '.join(names)}")
      report["histogram"] = weight_histogram(state, layer)
    if with_eval:
      dataset, _ = load_eval_data(config, source, data_dir)
      results = evaluate(config, state, dataset, split=split,
                         batch_size=batch_size, num_devices=num_devices)
      report["eval"] = {"data": dataset.source, "split": split, **results}
  return report

