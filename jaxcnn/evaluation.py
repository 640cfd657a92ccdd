"""Evaluating a workdir's checkpoints (restored by jaxcnn.restore) on any
split and source, on any number of devices: the library behind
`python -m jaxcnn.eval` (jaxcnn.inspection is the one behind inspect).

The functions return plain data (dicts, lists, floats) that prints as tables
and dumps as JSON; the commands write plots from it only after everything
has succeeded. Problems raise CheckpointError (workdir, step, incompatible
model, damaged files) or DataError (evaluation data), each with one
readable line.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np

from jaxcnn import augment, models, parallel
from jaxcnn import state as state_lib
from jaxcnn.eval_step import (ALL_WEIGHTS, ENSEMBLE, WEIGHTS, Evaluator,
                              check_tta_fraction)
from jaxcnn.config import Config, ConfigError
from jaxcnn.data import (ALL_SPLITS, DataError, Dataset, load_dataset,
                         load_from_config)
from jaxcnn.models import create_model
from jaxcnn.restore import CheckpointReader, open_reader, pick_step

# The splits eval and inspect evaluate: 'validation' is the run's own held-out
# training images (data.validation_size), rebuilt from the saved config.
EVAL_SPLITS = ("test", "validation", "train")

# 'both': raw and EMA; 'ensemble': their predictions averaged; 'all': the
# three.
WEIGHT_CHOICES = ("raw", "ema", "both", ENSEMBLE, "all")


def weights_list(weights: str | Sequence[str]) -> tuple[str, ...]:
  """One of WEIGHT_CHOICES (or a sequence of names) -> names in
  ALL_WEIGHTS."""
  if isinstance(weights, str):
    if weights not in WEIGHT_CHOICES:
      raise ValueError(f"weights must be one of {', '.join(WEIGHT_CHOICES)}, "
                       f"got {weights!r}")
    return {"both": WEIGHTS, "all": ALL_WEIGHTS}.get(weights, (weights,))
  out = tuple(weights)
  bad = [w for w in out if w not in ALL_WEIGHTS]
  if bad or not out:
    raise ValueError(f"weights must be among {ALL_WEIGHTS}, got {out}")
  return out


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
  if split not in ALL_SPLITS:
    raise DataError(f"unknown split {split!r}; use one of "
                    f"{', '.join(EVAL_SPLITS)}")
  if split == "validation" and not len(dataset.validation_labels):
    raise DataError(
        f"{dataset.source} has no validation split here: the run was "
        "trained with data.validation_size=0, or --data names another "
        "source (a validation split is the run's own held-out training "
        "images)")
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


def make_evaluator(config: Config, images: np.ndarray, labels: np.ndarray,
                   *, batch_size: int = 0, num_devices: int = 0,
                   tta: str = "none", tta_fraction: float = 1.0) -> Evaluator:
  """The trainer's evaluator (eval_step.Evaluator) for states of `config` on
  one split, data-parallel over `num_devices` local devices (0: all) in
  batches of `batch_size` (0: train.eval_batch_size): the figures training
  logged, on any device count; `tta_fraction` of the images, the least
  confident, get the test-time augmentation `tta`."""
  available = len(jax.local_devices())
  if num_devices > available:  # select_devices would blame train.num_devices.
    raise parallel.DeviceError(
        f"asked to evaluate on {num_devices} devices but only {available} "
        f"local devices are available")
  devices = parallel.select_devices(num_devices)
  batch_size = int(batch_size or config.train.eval_batch_size)
  if batch_size <= 0:
    raise DataError(f"batch size must be positive, got {batch_size}")
  model = create_model(config.model, bn_axis_name=parallel.AXIS)
  return Evaluator(model, config, devices, images, labels,
                   batch_size=batch_size, tta=tta, tta_fraction=tta_fraction)


def run_evaluator(evaluator: Evaluator, state: state_lib.TrainState,
                  weights: str | Sequence[str] = "both") -> dict[str, dict]:
  """{weights: {loss, accuracy, top5_accuracy, count, per_class_accuracy,
  confusion}} of one (unreplicated) state, as plain Python data."""
  return {name: _plain(summary) for name, summary in
          evaluator(state, weights_list(weights)).items()}


def evaluate(config: Config, state: state_lib.TrainState, dataset: Dataset, *,
             split: str = "test", batch_size: int = 0,
             weights: str | Sequence[str] = "both",
             num_devices: int = 0, tta: str = "none",
             tta_fraction: float = 1.0) -> dict[str, dict]:
  """Evaluates one state on a split of `dataset` (see make_evaluator)."""
  images, labels = split_arrays(dataset, split)
  evaluator = make_evaluator(config, images, labels, batch_size=batch_size,
                             num_devices=num_devices, tta=tta,
                             tta_fraction=tta_fraction)
  return run_evaluator(evaluator, state, weights)


def eval_workdir(workdir, *, step: int | None = None, all_steps: bool = False,
                 weights: str = "both", source: str | None = None,
                 data_dir: str | None = None, split: str = "test",
                 batch_size: int = 0, num_devices: int = 0, tta: str = "none",
                 tta_fraction: float = 1.0,
                 log: Callable[[str], None] | None = None) -> dict:
  """What `python -m jaxcnn.eval` computes: one step (default the latest), or
  every kept step with `all_steps`, with test-time augmentation `tta` (one
  of augment.TTA_MODES) on the `tta_fraction` least confident images. Plain
  data:

    {workdir, model, data, split, class_names, count, num_devices, batch_size,
     weights, tta, tta_fraction, step (the last evaluated), results:
     {raw|ema: {...}} of that step, steps: [{step, raw|ema: {...}}, ...]}
  """
  chosen = weights_list(weights)
  if split not in EVAL_SPLITS:
    raise DataError(f"unknown split {split!r}; use one of "
                    f"{', '.join(EVAL_SPLITS)}")
  if tta not in augment.TTA_MODES:
    raise ConfigError(f"unknown --tta {tta!r}; use one of "
                      f"{', '.join(augment.TTA_MODES)}")
  tta_fraction = check_tta_fraction(tta_fraction, "--tta_fraction")
  reader, step = (CheckpointReader(workdir), None) if all_steps else \
      open_reader(workdir, step)
  with reader:
    steps = list(reader.steps) if all_steps else [
        pick_step(workdir, reader.steps, step)]
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
        evaluator = make_evaluator(config, images, labels,
                                   batch_size=batch_size,
                                   num_devices=num_devices, tta=tta,
                                   tta_fraction=tta_fraction)
      results = run_evaluator(evaluator, state, chosen)
      records.append({"step": s, **results})
  last = records[-1]
  return {
      "workdir": str(workdir),
      "model": model_text(config),
      "data": dataset.source,
      "split": split,
      "class_names": list(dataset.class_names),
      "count": evaluator.count,
      "num_devices": len(evaluator.devices),
      "platform": evaluator.devices[0].platform,
      "batch_size": evaluator.batch_size,
      "weights": list(chosen),
      "tta": tta,
      "tta_fraction": tta_fraction,
      "step": last["step"],
      "results": {w: last[w] for w in chosen},
      "steps": records,
  }


def model_text(config: Config) -> str:
  """The model's one line, as its own file describes it (its spec's
  `describe`: jaxcnn/models/)."""
  return models.model_text(config.model)
