"""Raw against EMA weights, per parameter tensor: the library behind
`python -m jaxcnn.inspect`. Returns plain data (dicts, lists, floats) that
prints as tables and dumps as JSON.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import state as state_lib
from jaxcnn.checkpoint import CheckpointError
from jaxcnn.config import ConfigError
from jaxcnn.evaluation import evaluate, load_eval_data, model_text
from jaxcnn.models import create_model
from jaxcnn.restore import LEGACY_IMAGE_SHAPE, key_name, open_reader
from jaxcnn.tables import percent

NEAR_ZERO = 1e-3


def _named_leaves(tree: Any) -> dict[str, np.ndarray]:
  return {"/".join(key_name(k) for k in path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def model_order(config) -> dict[str, list[str]]:
  """The model's tensor names per collection ('params', 'batch_stats'), in
  the order its layers create them: input to output, as the model's code
  reads. A restored state cannot tell this order (JAX flattens and rebuilds
  dicts sorted by key, so 'bn1' sorts before 'conv1' and 'conv10' before
  'conv2'), but the dicts `init` builds keep it; they are read here under
  eval_shape, so nothing is computed."""
  model = create_model(config.model)
  if hasattr(model, "conv_impl"):  # The CPU fast paths build the same tensors.
    model = model.clone(conv_impl="xla")
  shape = tuple(config.data.get("image_shape") or LEGACY_IMAGE_SHAPE)
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(0)}
  order = {}

  def names(tree, prefix=()):
    for key, value in tree.items():
      if hasattr(value, "items"):
        yield from names(value, prefix + (str(key),))
      else:
        yield "/".join(prefix + (str(key),))

  def init(x):
    variables = model.init(rngs, x, train=False)
    for collection, tree in variables.items():
      order[collection] = list(names(tree))
    return variables

  jax.eval_shape(init, jax.ShapeDtypeStruct((1,) + shape, jnp.float32))
  return {"params": order.get("params", []),
          "batch_stats": order.get("batch_stats", [])}


def _ordered(names, order: Sequence[str] | None) -> list[str]:
  """`names` in `order`; any it does not list after them, sorted."""
  if order is None:
    return sorted(names)
  listed = [n for n in order if n in names]
  return listed + sorted(set(names) - set(listed))


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
                    near_zero: float = NEAR_ZERO,
                    order: dict[str, Sequence[str]] | None = None
                    ) -> list[dict]:
  """One row per tensor, raw against EMA: parameters ('param'), then
  BatchNorm statistics ('batch_stats', raw running statistics against their
  EMA) where the model has them. Each group in the model's order where
  `order` gives it (`model_order`), else alphabetical.

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
    for name in _ordered(raw, order and order.get(key)):
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


def default_histogram_layer(rows: Sequence[dict]) -> str:
  """The weight matrix (not a bias or scale) that EMA moved most."""
  params = [r for r in rows if r["kind"] == "param"]
  matrices = [r for r in params if len(r["shape"]) >= 2] or params
  return max(matrices, key=lambda r: r["relative_difference"])["name"]


def histogram_layers(rows: Sequence[dict],
                     asked: str | Sequence[str] | None) -> list[str]:
  """The tensors to histogram: those `asked` (one name or several, each
  once, in the order given), else the one `default_histogram_layer` picks.
  Raises ConfigError naming every unknown one, with the model's parameter
  tensors (in the order of `rows`) to choose from."""
  if not asked:
    return [default_histogram_layer(rows)]
  asked = [asked] if isinstance(asked, str) else list(dict.fromkeys(asked))
  names = [r["name"] for r in rows if r["kind"] == "param"]
  unknown = [n for n in asked if n not in names]
  if unknown:
    which = "layer" if len(unknown) == 1 else "layers"
    raise ConfigError(f"unknown {which} {', '.join(map(repr, unknown))}; "
                      f"parameter tensors: {', '.join(names)}")
  return asked


def inspect_workdir(workdir, *, step: int | None = None,
                    near_zero: float = NEAR_ZERO, with_eval: bool = False,
                    histogram_layer: str | Sequence[str] | None = None,
                    histogram: bool = False,
                    source: str | None = None, data_dir: str | None = None,
                    split: str = "test", batch_size: int = 0,
                    num_devices: int = 0) -> dict:
  """What `python -m jaxcnn.inspect` computes, as plain data:

    {workdir, step, model, rows: compare_weights(...) in the model's order,
     summary: summarize_comparison(...), eval: {raw, ema, data, split}
     (with_eval), histograms: [weight_histogram(...), ...] (histogram or
     histogram_layer: one tensor name or several)}
  """
  reader, step = open_reader(workdir, step)
  with reader:
    config, state, step = reader.restore(step)
    rows = compare_weights(state, near_zero, model_order(config))
    report = {"workdir": str(workdir), "step": step,
              "model": model_text(config), "near_zero": near_zero,
              "rows": rows, "summary": summarize_comparison(rows)}
    if histogram or histogram_layer:
      report["histograms"] = [weight_histogram(state, name) for name in
                              histogram_layers(rows, histogram_layer)]
    if with_eval:
      dataset, _ = load_eval_data(config, source, data_dir)
      results = evaluate(config, state, dataset, split=split,
                         batch_size=batch_size, num_devices=num_devices)
      report["eval"] = {"data": dataset.source, "split": split, **results}
  return report

