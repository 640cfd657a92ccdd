"""PNG figures for `jaxcnn.eval`, `jaxcnn.inspect` and the study reports,
drawn from the plain data the evaluation library and `jaxcnn.study_report`
return.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas, never
through pyplot: no display, no global figure state, the same output on a
headless machine. Each file is written under a temporary name and renamed,
so an interrupted run never leaves half a PNG behind.
"""
from __future__ import annotations

import os
import pathlib
from typing import Sequence

import numpy as np


def _figure(width: float, height: float, dpi: int = 100):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width, height), dpi=dpi)
  FigureCanvasAgg(fig)
  return fig


def _save(fig, path: str | os.PathLike) -> str:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  try:
    fig.savefig(tmp, format="png", bbox_inches="tight")
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()
  return str(path)


def confusion_matrix(confusion: Sequence[Sequence[int]],
                     class_names: Sequence[str], path, *, title: str) -> str:
  """Row-normalised colours (a class's recall pattern), raw counts as text."""
  counts = np.asarray(confusion, np.int64)
  n = len(counts)
  rows = counts.sum(axis=1, keepdims=True)
  fraction = np.divide(counts, rows, out=np.zeros(counts.shape, np.float64),
                       where=rows > 0)
  size = max(4.0, 0.55 * n + 2.0)
  fig = _figure(size + 1.0, size)
  ax = fig.add_subplot()
  image = ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0)
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
               label="fraction of the true class")
  ax.set_xticks(range(n), labels=class_names, rotation=45, ha="right")
  ax.set_yticks(range(n), labels=class_names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title)
  if n <= 20:  # Beyond that the numbers would not be readable.
    for i in range(n):
      for j in range(n):
        ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                color="white" if fraction[i, j] > 0.5 else "black")
  return _save(fig, path)


def accuracy_curve(records: Sequence[dict], path, *, title: str) -> str:
  """Top-1 accuracy against step for each weight set in `records`
  ([{step, raw: {accuracy}, ema: {accuracy}}, ...])."""
  fig = _figure(7.0, 4.5)
  ax = fig.add_subplot()
  steps = [r["step"] for r in records]
  for name, style in (("raw", "o-"), ("ema", "s-")):
    if all(name in r for r in records):
      ax.plot(steps, [100 * r[name]["accuracy"] for r in records], style,
              label=f"{name} weights")
  ax.set_xlabel("step")
  ax.set_ylabel("top-1 accuracy (%)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  return _save(fig, path)


def relative_difference(rows: Sequence[dict], path, *, title: str) -> str:
  """One bar per tensor: ||raw - ema|| / ||raw||, on a log scale where the
  values span decades."""
  names = [r["name"] + ("" if r["kind"] == "param" else " (bn stat)")
           for r in rows]
  values = np.asarray([r["relative_difference"] for r in rows], np.float64)
  colors = ["tab:blue" if r["kind"] == "param" else "tab:orange" for r in rows]
  fig = _figure(max(6.0, 0.35 * len(rows) + 2.0), 4.5)
  ax = fig.add_subplot()
  ax.bar(range(len(rows)), values, color=colors)
  ax.set_xticks(range(len(rows)), labels=names, rotation=70, ha="right",
                fontsize=8)
  positive = values[(values > 0) & np.isfinite(values)]
  if len(positive) and positive.max() / positive.min() > 100:
    ax.set_yscale("log")
  ax.set_ylabel("relative L2 difference, EMA vs raw")
  ax.set_title(title)
  ax.grid(axis="y", alpha=0.3)
  return _save(fig, path)


def weight_histogram(histogram: dict, path, *, title: str) -> str:
  """Raw and EMA histograms of one tensor ({edges, raw_counts, ema_counts})."""
  edges = np.asarray(histogram["edges"])
  fig = _figure(7.0, 4.5)
  ax = fig.add_subplot()
  for key, label, color in (("raw_counts", "raw", "tab:blue"),
                            ("ema_counts", "EMA", "tab:orange")):
    ax.stairs(histogram[key], edges, label=label, color=color, linewidth=1.5)
  ax.set_xlabel(f"{histogram['name']} value")
  ax.set_ylabel("count")
  ax.set_title(title)
  ax.legend()
  return _save(fig, path)


# --- Studies: one line per member (means over seeds) -------------------------

Curve = tuple[Sequence[float], Sequence[float]]  # (xs, ys)
STUDY_DPI = 90  # Several panels per figure: smaller files, still readable.


def training_curves(lines: Sequence[dict], path, *,
                    thresholds: Sequence[float], title: str) -> str:
  """Training loss (log scale) and training error against epochs and
  against training seconds. Each line: {name, loss_vs_epoch,
  loss_vs_seconds, error_vs_epoch, error_vs_seconds}, each a Curve; the
  error panels mark `thresholds`."""
  fig = _figure(11.0, 8.0, STUDY_DPI)
  axes = fig.subplots(2, 2)
  for line in lines:
    for col, x in enumerate(("epoch", "seconds")):
      axes[0][col].plot(*line[f"loss_vs_{x}"], label=line["name"])
      axes[1][col].plot(*line[f"error_vs_{x}"], label=line["name"])
  for col, x in enumerate(("epochs", "training seconds")):
    axes[0][col].set(xlabel=x, ylabel="training loss", yscale="log")
    axes[1][col].set(xlabel=x, ylabel="training error")
    for t in thresholds:
      axes[1][col].axhline(t, color="grey", lw=0.5, ls=":")
  axes[0][0].legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  return _save(fig, path)


def raw_and_ema_curves(lines: Sequence[dict], path, *, ylabel: str) -> str:
  """One colour per line ({name, raw, ema}, Curves): raw solid, EMA
  dashed."""
  fig = _figure(7.0, 4.5, STUDY_DPI)
  ax = fig.add_subplot()
  for i, line in enumerate(lines):
    color = f"C{i % 10}"
    ax.plot(*line["raw"], color=color, label=f"{line['name']} raw")
    ax.plot(*line["ema"], color=color, ls="--", label=f"{line['name']} EMA")
  ax.set(xlabel="epochs", ylabel=ylabel)
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  return _save(fig, path)


def per_layer_curves(panels: dict[str, Sequence[tuple[str, Curve]]], path, *,
                     ylabel: str) -> str:
  """One panel per layer ({layer: [(name, Curve), ...]}), against epochs."""
  fig = _figure(3.2 * len(panels), 3.4, STUDY_DPI)
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  for ax, (layer, lines) in zip(axes, panels.items()):
    for name, curve in lines:
      ax.plot(*curve, label=name)
    ax.set(title=layer, xlabel="epochs", ylabel=ylabel)
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  return _save(fig, path)
