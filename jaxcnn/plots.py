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


def _whole_ticks(axis) -> None:
  """Ticks only at integers on `axis` (steps, epochs, counts): a curve of
  three checkpoints (2, 4, 6) or a 3-epoch study would otherwise get ticks
  at 2.5 or 1.25. MaxNLocator falls back to fractional ticks when the view
  holds fewer than two integers, so a short span still gets ticks."""
  from matplotlib.ticker import MaxNLocator
  axis.set_major_locator(MaxNLocator(integer=True))


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
  ([{step, raw: {accuracy}, ema: {accuracy}, ensemble: {accuracy}}, ...],
  any of the three), ticks at whole steps."""
  fig = _figure(7.0, 4.5)
  ax = fig.add_subplot()
  steps = [r["step"] for r in records]
  for name, style in (("raw", "o-"), ("ema", "s-"), ("ensemble", "^-")):
    if all(name in r for r in records):
      ax.plot(steps, [100 * r[name]["accuracy"] for r in records], style,
              label=f"{name} weights" if name != "ensemble" else
              "raw + EMA ensemble")
  _whole_ticks(ax.xaxis)
  ax.set_xlabel("step")
  ax.set_ylabel("top-1 accuracy (%)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  return _save(fig, path)


# Bar colours of relative_difference, one per kind of row, each in its legend.
KIND_STYLES = {
    "param": ("tab:blue", "parameter: raw vs EMA"),
    "batch_stats": ("tab:orange", "BatchNorm running statistic: raw vs EMA"),
}


def layer_rows(rows: Sequence[dict]) -> list[dict]:
  """`rows` (compare_weights, in the model's order) regrouped per layer: a
  layer's BatchNorm statistics right after its parameters, so one layer's
  tensors read together from input (top) to output (bottom). Layers keep the
  order in which `rows` first names them."""
  position = {}
  for r in rows:
    position.setdefault(r["name"].rpartition("/")[0], len(position))
  return sorted(rows, key=lambda r: position[r["name"].rpartition("/")[0]])


def relative_difference(rows: Sequence[dict], path, *, title: str) -> str:
  """One horizontal bar per tensor, ||raw - ema|| / ||raw||, on a log scale
  where the values span decades: each name on its own row (seventy names
  under a vertical bar chart are unreadable however they are rotated), in
  `layer_rows` order, the first layer on top, the value beside its bar."""
  from matplotlib.patches import Patch
  from matplotlib.ticker import FuncFormatter, NullFormatter
  rows = layer_rows(rows)
  n = len(rows)
  values = np.asarray([r["relative_difference"] for r in rows], np.float64)
  finite = np.where(np.isfinite(values), values, np.nan)
  colors = [KIND_STYLES[r["kind"]][0] for r in rows]
  # Margins in inches, so the title, the legend and the top tick labels
  # stack above the bars the same way however tall the figure is.
  height = 1.6 + 0.2 * n
  fig = _figure(8.0, height)
  fig.subplots_adjust(left=0.2, right=0.97, top=1 - 0.95 / height,
                      bottom=0.6 / height)
  ax = fig.add_subplot()
  y = np.arange(n)
  ax.barh(y, finite, height=0.7, color=colors)
  ax.set_yticks(y, labels=[r["name"] for r in rows], fontsize=8)
  ax.set_ylim(n - 0.5, -0.5)  # The input layer on top.
  positive = values[(values > 0) & np.isfinite(values)]
  log = bool(len(positive)) and positive.max() / positive.min() > 100
  if log:
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
  for i, v in enumerate(values):  # The number itself, at the end of its bar.
    if v > 0 and np.isfinite(v):
      ax.text(v, i, f" {100 * v:.3g}%", va="center", fontsize=7)
    else:  # No bar to end: the words at the axis.
      ax.text(0.0, i, " identical" if v == 0 else " raw is all zeros",
              va="center", fontsize=7, transform=ax.get_yaxis_transform())
  if len(positive):  # Room for the numbers right of the longest bar.
    ax.set_xlim(right=positive.max() * (3.0 if log else 1.2))
  else:
    ax.set_xlim(0.0, 0.01)
  if not log:
    ax.set_xlim(left=0.0)
  # Significant digits, not PercentFormatter's fixed decimals: on a log axis
  # those print 0.001% and 0.01% both as 0.0%.
  ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{100 * x:.3g}%"))
  ax.tick_params(axis="x", labeltop=True, top=True)  # Readable at either end.
  ax.set_xlabel("relative L2 difference ||raw - EMA|| / ||raw||"
                + (" (log scale)" if log else ""))
  ax.grid(axis="x", alpha=0.3)
  kinds = [k for k in KIND_STYLES if any(r["kind"] == k for r in rows)]
  fig.legend(handles=[Patch(color=KIND_STYLES[k][0], label=KIND_STYLES[k][1])
                      for k in kinds], loc="upper center",
             bbox_to_anchor=(0.5, 1 - 0.35 / height),
             ncols=max(len(kinds), 1), fontsize=8, frameon=False)
  fig.suptitle(title, y=1 - 0.08 / height, va="top")
  return _save(fig, path)


def weight_histograms(histograms: Sequence[dict], path, *, title: str) -> str:
  """Raw and EMA histograms of one or more tensors ([{name, edges,
  raw_counts, ema_counts}, ...], inspection.weight_histogram): one panel per
  tensor, up to three a row (four as 2x2), each on its own bins and axes (a
  kernel and a bias have nothing in common to share a scale), one legend for
  the figure under its title."""
  if not histograms:
    raise ValueError("weight_histograms needs at least one histogram")
  n = len(histograms)
  cols = 2 if n == 4 else min(n, 3)  # Four as 2x2, not 3 and 1.
  rows = -(-n // cols)
  width, height = (7.0, 4.5) if n == 1 else (4.2 * cols, 0.8 + 3.1 * rows)
  fig = _figure(width, height)
  axes = fig.subplots(rows, cols, squeeze=False).ravel()
  for ax, histogram in zip(axes, histograms):
    edges = np.asarray(histogram["edges"])
    for key, label, color in (("raw_counts", "raw", "tab:blue"),
                              ("ema_counts", "EMA", "tab:orange")):
      ax.stairs(histogram[key], edges, label=label, color=color,
                linewidth=1.5)
    if n > 1:
      ax.set_title(histogram["name"], fontsize=10)
    ax.set_xlabel(f"{histogram['name']} value" if n == 1 else "value")
    ax.set_ylabel("count")
    _whole_ticks(ax.yaxis)  # Counts.
    ax.tick_params(labelsize=8)
  for ax in axes[n:]:
    ax.set_visible(False)
  handles, labels = axes[0].get_legend_handles_labels()
  fig.suptitle(title, y=1 - 0.08 / height, va="top")
  fig.legend(handles, labels, loc="upper center",
             bbox_to_anchor=(0.5, 1 - 0.38 / height), ncols=2, fontsize=9,
             frameon=False)
  fig.tight_layout(rect=(0, 0, 1, 1 - 0.55 / height))
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
    if x == "epochs":
      _whole_ticks(axes[0][col].xaxis)
      _whole_ticks(axes[1][col].xaxis)
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
  _whole_ticks(ax.xaxis)
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
    _whole_ticks(ax.xaxis)
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  return _save(fig, path)
