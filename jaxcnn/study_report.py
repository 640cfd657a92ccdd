"""A study's report: the members' numbers (`jaxcnn.study_metrics`) written as
report.md (Markdown tables of mean ± std over seeds), summary.json (the same
numbers, unrounded) and PNG plots (`jaxcnn.plots`).

Optional sections, named by a study's `extras`: 'dead', 'saturated',
'sparsity' (per-layer statistics of `train.collect_stats`), 'grads'
(gradient norms per layer, first and last log step), 'flops' (parameters and
forward FLOPs per member), 'ema' (raw against EMA test accuracy at each
evaluation), 'best_lr' (members named GROUP@LR: the best LR of each group),
'paired' (each member minus the first, seed by seed: an ablation's table).

Anything the report picks as best is picked on the validation split
(data.validation_size, which the small and full scales set), never on the
test split; at a scale without one nothing is picked.
"""
from __future__ import annotations

import functools
import json
import math
import os
import pathlib
import platform
from typing import Sequence

from jaxcnn import plots
from jaxcnn.config import Config
from jaxcnn.studies import THRESHOLDS, Study, scale_of
from jaxcnn.study_metrics import (best_of_groups, collect, epoch_of_stats,
                                  layers_of, mean_curve, mean_std,
                                  paired_differences, seed0_of, t_quantile)
from jaxcnn.tables import format_table

# Markdown tables for report.md, through the formatter the CLIs use.
_markdown = functools.partial(format_table, markdown=True)


# --- Numbers as text -----------------------------------------------------------


def fmt(values: Sequence[float | None], *, scale: float = 1.0,
        digits: int = 2, unit: str = "") -> str:
  """'mean ± std' over seeds ('mean' for one seed); 'never' if no seed got a
  value; '(k/n)' appended when only k of n seeds did."""
  mean, std, k = mean_std(values)
  n = len(values)
  if k == 0:
    return "never" if n else "-"
  text = f"{mean * scale:.{digits}f}{unit}"
  if n > 1:
    text += f" ± {std * scale:.{digits}f}"
  if k < n:
    text += f" ({k}/{n})"
  return text


def model_cost(config: Config, flops: bool = False) -> dict:
  """Parameters (and nominal forward FLOPs per image: 2 x the multiply-adds
  of every conv and dense layer, `models.forward_flops`) of a config's
  model, without training it."""
  import jax
  import jax.numpy as jnp
  from jaxcnn.models import count_params, create_model, forward_flops
  model = create_model(config.model)
  x = jnp.zeros((1, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(
      lambda: model.init({"params": jax.random.PRNGKey(0),
                          "dropout": jax.random.PRNGKey(0)}, x, train=False))
  out = {"params": count_params(variables["params"])}
  if flops:
    out["flops"] = forward_flops(model, (32, 32, 3))
  return out


# --- Tables -----------------------------------------------------------------------


def _main_rows(entries: list[dict], thresholds: Sequence[float]
               ) -> tuple[list[str], list[list[str]]]:
  header = ["member", "overrides", "seeds", "test acc raw %", "test acc EMA %",
            "final train loss"]
  for t in thresholds:
    tag = round(t * 100)
    header += [f"epochs to {tag}% train err", f"s to {tag}% train err"]
  header += ["train s"]
  with_tta = any(s.get("test_accuracy_tta_raw") is not None
                 for e in entries for s in e["seeds"])
  if with_tta:
    header[5:5] = ["TTA raw %", "TTA EMA %"]
  with_val = _has_validation(entries)
  if with_val:
    header[3:3] = ["val acc raw %"]
  rows = []
  for e in entries:
    ss = e["seeds"]
    get = lambda key: [s[key] for s in ss]
    row = [e["name"], " ".join(f"`{o}`" for o in e["overrides"]) or "-",
           str(len(ss)) + (" (failed: " + str(sum(1 for s in ss
                                                   if s["failed"])) + ")"
                           if any(s["failed"] for s in ss) else ""),
           fmt(get("test_accuracy_raw"), scale=100),
           fmt(get("test_accuracy_ema"), scale=100),
           fmt(get("final_train_loss"), digits=3)]
    for t in thresholds:
      tag = round(t * 100)
      row += [fmt(get(f"epochs_to_{tag}"), digits=2),
              fmt(get(f"seconds_to_{tag}"), digits=0)]
    row += [fmt(get("train_seconds"), digits=0)]
    if with_tta:
      row[5:5] = [fmt([s.get("test_accuracy_tta_raw") for s in ss], scale=100),
                  fmt([s.get("test_accuracy_tta_ema") for s in ss], scale=100)]
    if with_val:
      row[3:3] = [fmt([s.get("validation_accuracy_raw") for s in ss],
                      scale=100)]
    rows.append(row)
  return header, rows


def _per_layer_table(entries: list[dict], prefix: str, *,
                     scale: float = 100.0, digits: int = 1,
                     which: str = "final_stats") -> str | None:
  layers = layers_of([s for e in entries for s in e["seeds"]], prefix)
  if not layers:
    return None
  rows = []
  for e in entries:
    row = [e["name"]]
    for layer in layers:
      vals = [s[which].get(f"{prefix}/{layer}") for s in e["seeds"]]
      row.append("-" if all(v is None for v in vals)
                 else fmt(vals, scale=scale, digits=digits))
    rows.append(row)
  unit = " %" if scale == 100.0 else ""
  return _markdown(["member"] + [f"{layer}{unit}" for layer in layers], rows)


def _ema_table(entries: list[dict]) -> str:
  """Raw and EMA test accuracy at each evaluation (mean over seeds)."""
  epochs = sorted({round(r["epoch"], 2) for e in entries for s in e["seeds"]
                   for r in s["eval"]})
  rows = []
  for e in entries:
    row = [e["name"]]
    for ep in epochs:
      def at(key):
        return [next((r[key] for r in s["eval"]
                      if round(r["epoch"], 2) == ep), None) for s in e["seeds"]]
      raw, ema = at("test_accuracy_raw"), at("test_accuracy_ema")
      row.append(f"{fmt(raw, scale=100, digits=1)} / "
                 f"{fmt(ema, scale=100, digits=1)}")
    rows.append(row)
  return _markdown(["member (raw / EMA %)"] + [f"ep {ep:g}" for ep in epochs],
                rows)


def _paired_cell(diff: tuple[float | None, float | None, int], *,
                 scale: float = 100.0, digits: int = 2,
                 ratio: bool = False) -> str:
  """'+0.42 ± 0.18' (mean ± standard error), with ' *' where the 95%
  Student-t interval of the mean leaves out no change; one seed: the
  difference alone."""
  mean, se, n = diff
  if n == 0:
    return "-"
  if ratio:
    text = f"{mean:.{digits}f}x"
    centre = 1.0
  else:
    text = f"{mean * scale:+.{digits}f}"
    centre = 0.0
  if se is None:
    return text
  text += f" ± {se * (1.0 if ratio else scale):.{digits}f}"
  if abs(mean - centre) > t_quantile(n) * se:
    text += " *"
  return text


def _paired_table(entries: list[dict]) -> str:
  """Every member but the first against the first, seed by seed."""
  keys = [("test_accuracy_raw", "test raw"),
          ("test_accuracy_tta_raw", "TTA raw"),
          ("test_accuracy_tta_ema", "TTA EMA")]
  if _has_validation(entries):
    keys.insert(0, ("validation_accuracy_raw", "val raw"))
  keys = [(k, label) for k, label in keys
          if any(s.get(k) is not None for e in entries for s in e["seeds"])]
  diffs = {k: paired_differences(entries, k) for k, _ in keys}
  seconds = paired_differences(entries, "train_seconds", ratio=True)
  header = (["member", "seeds paired"]
            + [f"Δ {label} (points)" for _, label in keys] + ["train s ratio"])
  rows = []
  for e in entries[1:]:
    n = max([diffs[k][e["name"]][2] for k, _ in keys]
            + [seconds[e["name"]][2]])
    rows.append([e["name"], str(n)]
                + [_paired_cell(diffs[k][e["name"]]) for k, _ in keys]
                + [_paired_cell(seconds[e["name"]], ratio=True)])
  return _markdown(header, rows)


def _has_validation(entries: list[dict]) -> bool:
  return any(s.get("validation_accuracy_raw") is not None
             for e in entries for s in e["seeds"])


def best_lr_choices(entries: list[dict], on: str = "validation"
                    ) -> dict[str, dict | None]:
  """Members named GROUP@LR: {group: the best member, chosen `on`
  (study_metrics.best_of_groups)}."""
  return best_of_groups(entries, on)


def _best_lr_table(entries: list[dict], threshold: float,
                   on: str = "validation") -> str:
  """The best LR of each GROUP@LR group (best_lr_choices), chosen on the
  validation split or on the epochs to a training error (`on`), with what
  it then gets."""
  if on.startswith("epochs_to_"):
    return _fastest_lr_table(entries, on)
  tag = round(threshold * 100)
  rows = []
  for group, best in best_lr_choices(entries).items():
    tried = ", ".join(e["name"].split("@", 1)[-1] for e in entries
                      if e["name"].split("@")[0] == group)
    if best is None:
      rows.append([group, "- (no validation split)", tried, "-", "-", "-"])
      continue
    rows.append([group, best["name"].split("@", 1)[-1], tried,
                 fmt([s["validation_accuracy_raw"] for s in best["seeds"]],
                     scale=100),
                 fmt([s["test_accuracy_raw"] for s in best["seeds"]],
                     scale=100),
                 fmt([s[f"epochs_to_{tag}"] for s in best["seeds"]])])
  return _markdown(["optimizer", "best lr (on validation)", "lrs tried",
                    "val acc raw %", "test acc raw %",
                    f"epochs to {tag}% train err"], rows)


def _cap_epochs(entry: dict) -> float:
  """The epochs a member may train (its config's num_epochs or steps)."""
  train = entry["config"].train
  if train.num_steps:
    size = entry["config"].data.train_size
    return train.num_steps * train.batch_size / size if size else math.inf
  return float(train.num_epochs)


def _fastest_lr_table(entries: list[dict], on: str) -> str:
  """The sweep chosen on the epochs to T% training error ('epochs_to_T'):
  per group the rates tried with seed 0's epochs, the best one's epochs and
  seconds over its seeds, and each group's epochs as a multiple of the
  first group's (a lower bound, '>', where the group never got there: its
  cap over the first group's epochs)."""
  tag = on[len("epochs_to_"):]
  rows, first = [], None
  choices = best_lr_choices(entries, on)
  for group, best in choices.items():
    tried = []
    for e in entries:
      if e["name"].split("@")[0] != group:
        continue
      seed0 = seed0_of(e)
      epochs = None if seed0 is None else seed0.get(on)
      cap = _cap_epochs(e)
      at = (seed0 or {}).get("final_epoch") or 0
      tried.append(f"{e['name'].split('@', 1)[-1]}: " + (
          "-" if seed0 is None else "failed" if seed0["failed"] else
          f"{epochs:.2f}" if epochs is not None else
          f"never in {cap:g}" if at >= cap else
          f"not yet (running, at epoch {at:g})"))
    if best is None:
      rows.append([group, "-", "; ".join(tried)] + ["-"] * 5)
      continue
    seeds = best["seeds"]
    mean = mean_std([x.get(on) for x in seeds])[0]
    if first is None:
      first = mean
    if mean is None:
      ratio = f"> {_cap_epochs(best) / first:.1f}" if first else "-"
    else:
      ratio = f"{mean / first:.2f}" if first else "-"
    rows.append([group, best["name"].split("@", 1)[-1], "; ".join(tried),
                 str(len(seeds)), fmt([x.get(on) for x in seeds]),
                 fmt([x.get(f"seconds_to_{tag}") for x in seeds], digits=0),
                 ratio,
                 fmt([x["test_accuracy_raw"] for x in seeds], scale=100)])
  firsts = next(iter(choices), "the first")
  return _markdown(
      ["activation", f"best lr (fewest epochs to {tag}%, seed 0)",
       f"lrs tried: epochs to {tag}% train err (seed 0)", "seeds",
       f"epochs to {tag}% train err", f"s to {tag}% train err",
       f"epochs as a multiple of {firsts}'s", "test acc raw % (at the end)"],
      rows)


def _cost_table(entries: list[dict]) -> str:
  rows = []
  for e in entries:
    cost = model_cost(e["config"], flops=True)
    rows.append([e["name"], f"{cost['params']:,}",
                 f"{cost['flops'] / 1e6:.1f}",
                 fmt([s["test_accuracy_raw"] for s in e["seeds"]], scale=100)])
  return _markdown(["member", "params", "forward MFLOPs / image",
                 "test acc raw %"], rows)


# --- Plots -------------------------------------------------------------------------


def write_plots(entries: list[dict], out: pathlib.Path, extras: Sequence[str],
                thresholds: Sequence[float] = THRESHOLDS,
                best: Sequence[dict] = ()) -> list[str]:
  """PNG plots into `out`; returns their file names. `best`: the entries
  chosen as each group's best rate, plotted alone too."""
  def error(curve):
    return curve[0], [1 - a for a in curve[1]]

  lines = [{"name": e["name"], **{
      f"{what}_vs_{x}": curve for x in ("epoch", "seconds")
      for what, curve in (
          ("loss", mean_curve(e["seeds"], "train", "loss", x)),
          ("error", error(mean_curve(e["seeds"], "train", "accuracy", x))))}}
           for e in entries]
  plots.training_curves(
      lines, out / "curves.png", thresholds=thresholds,
      title="Training loss and error of the training batches (mean over "
            "seeds; averages over each log interval)")
  written = ["curves.png"]
  if best:
    # The best rate of each group alone (the AlexNet paper's figure 1 is
    # this plot of ReLU against tanh).
    names = {e["name"] for e in best}
    plots.training_curves(
        [line for line in lines if line["name"] in names],
        out / "best_lr_curves.png", thresholds=thresholds,
        title="Each group at its best learning rate: training loss and "
              "error of the training batches (mean over seeds)")
    written.append("best_lr_curves.png")

  def percent(curve):
    return curve[0], [100 * a for a in curve[1]]

  plots.raw_and_ema_curves(
      [{"name": e["name"],
        "raw": percent(mean_curve(e["seeds"], "eval", "test_accuracy_raw",
                                   "epoch")),
        "ema": percent(mean_curve(e["seeds"], "eval", "test_accuracy_ema",
                                   "epoch"))} for e in entries],
      out / "test_accuracy.png",
      ylabel="test accuracy % (solid raw, dashed EMA)")
  written.append("test_accuracy.png")

  for prefix, wanted in (("dead_fraction", "dead"),
                         ("saturated_fraction", "saturated"),
                         ("zero_fraction", "sparsity")):
    if wanted not in extras:
      continue
    for e in entries:
      for s in e["seeds"]:
        epoch_of_stats(s)
    layers = layers_of([s for e in entries for s in e["seeds"]], prefix)
    if not layers:
      continue
    panels = {}
    for layer in layers:
      curves = [(e["name"], mean_curve(e["seeds"], "stats",
                                        f"{prefix}/{layer}", "epoch"))
                for e in entries]
      panels[layer] = [(name, percent(c)) for name, c in curves if c[0]]
    name = f"{prefix}.png"
    plots.per_layer_curves(panels, out / name, ylabel=f"{prefix} %")
    written.append(name)
  return written


# --- The report --------------------------------------------------------------------


def _probe_size() -> int:
  from jaxcnn import stats
  return stats.PROBE_SIZE


def machine_line() -> str:
  import jax
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  return (f"{platform.node()}: {os.cpu_count()} CPU cores, "
          f"{platform.processor() or platform.machine()}, jax {jax.__version__} "
          f"on {jax.devices()[0].platform} ({len(jax.devices())} device(s)); "
          f"load average {load:.1f} when the report was written (the machine "
          "is shared, so seconds are noisy)")


def _median(values: list[float]) -> float:
  return sorted(values)[len(values) // 2]


def _how_it_was_run(study: Study, scale: str, seeds: int, entries: list[dict],
                    only: Sequence[str] | None, command: str,
                    run_seconds: float | None) -> list[str]:
  """The report's 'How it was run' lines: command, machine, scale, seeds,
  wall time, members not run yet, and the cost of the statistics."""
  s = scale_of(study, scale)
  ran = {e["name"] for e in entries}
  wall = sum(x["wall_seconds"] or 0 for e in entries for x in e["seeds"])
  command = command or (f"python -m jaxcnn.study {study.name} --scale {scale} "
                        f"--seeds {seeds}")
  bases = ", ".join(f"`{b}`" for b in dict.fromkeys(
      m.exp or study.base for m in study.members(s)))
  parts = ["## How it was run", "",
           f"- command: `{command}`",
           f"- machine: {machine_line()}",
           f"- scale `{scale}`: {s.epochs} epochs; overrides for every "
           f"member: {' '.join(f'`{o}`' for o in s.overrides)}; base "
           f"experiment {bases}",
           (f"- seeds: a sweep: every member with seed 0, then the best "
            f"member of each group (chosen on seed 0) with seeds "
            f"0..{seeds - 1}" if scale in study.sweep and seeds > 1 else
            f"- seeds: {seeds} (0..{seeds - 1})")
           + "; 'mean ± std' is over seeds (sample std), a single number "
           "means one seed",
           f"- wall time of the member runs (compile, training, evaluation, "
           f"statistics): {wall / 60:.1f} min"
           + (f"; this invocation: {run_seconds / 60:.1f} min"
              if run_seconds is not None else "")]
  missing = [m.name for m in study.members(s) if m.name not in ran
             and (not only or m.name in only)]
  if missing:
    parts.append(f"- not run (yet): {', '.join(missing)}")
  runs = [x for e in entries for x in e["seeds"]]
  stats_s = [t for x in runs for t in x["stats_seconds"][1:]]
  first_s = [x["stats_seconds"][0] for x in runs if x["stats_seconds"]]
  step_s = [t for x in runs for t in x["sec_per_batch"]]
  if stats_s and step_s:
    parts.append(
        f"- cost of `train.collect_stats` (probe batch of "
        f"{_probe_size()} images, forward and backward): median "
        f"{_median(stats_s):.2f} s per log step (first call, with "
        f"its compile: median {_median(first_s):.1f} s), against a "
        f"median train step of {_median(step_s):.2f} s; with it off "
        "nothing is built or run")
  return parts


def _result_tables(study: Study, entries: list[dict],
                   scale: str) -> list[str]:
  """The main table, then the sections the study's extras ask for."""
  header, rows = _main_rows(entries, study.thresholds)
  parts = [_markdown(header, rows), ""]
  on = study.sweep.get(scale, "validation")
  if "best_lr" in study.extras and any("@" in e["name"] for e in entries):
    if on == "validation":
      parts += ["### Best learning rate per optimizer", "",
                "Chosen on the validation split (the held-out training "
                "images of `data.validation_size`), never on the test split: "
                "the test accuracy beside it is an unbiased estimate of the "
                "choice. At a scale without a validation split no choice is "
                "made.", ""]
    else:
      parts += ["### Best learning rate per group", "",
                f"Chosen on seed 0's {on.replace('_', ' ')}% training error "
                "(the sweep trains seed 0 of every rate; the other seeds "
                "train only the chosen one, so they cannot change the "
                "choice); the test split plays no part. 'never in N' = not "
                "reached inside the N epochs of its cap.", ""]
    parts += [_best_lr_table(entries, study.thresholds[0], on), ""]
  if "flops" in study.extras:
    parts += ["### Cost", "", _cost_table(entries), ""]
  for prefix, wanted, title in (
      ("dead_fraction", "dead",
       "Dead units at the end (channels never > 0 on the probe batch)"),
      ("saturated_fraction", "saturated",
       "Saturated activations at the end (tanh |y|>0.99, sigmoid y<0.01 or "
       ">0.99)"),
      ("zero_fraction", "sparsity",
       "Activation sparsity at the end (|y| < 1e-6)"),
      ("weight_zero_fraction", "sparsity",
       "Weight sparsity at the end (|w| < 1e-3)")):
    if wanted in study.extras:
      table = _per_layer_table(entries, prefix)
      if table:
        parts += [f"### {title}", "", table, ""]
  if "grads" in study.extras:
    for which, when in (("first_stats", "at the first log step"),
                        ("final_stats", "at the end")):
      table = _per_layer_table(entries, "grad_norm", scale=1.0, digits=4,
                               which=which)
      if table:
        parts += [f"### Gradient norm per layer {when} (probe batch, "
                  "inference mode)", "", table, ""]
  if "paired" in study.extras and len(entries) > 1:
    parts += [f"### Against `{entries[0]['name']}`, seed by seed", "",
              f"Each member's final accuracy minus `{entries[0]['name']}`'s "
              "on the same seed, in points, and its training seconds over "
              f"`{entries[0]['name']}`'s: mean ± standard error over the "
              "seeds both ran (the differences' sample std over √n; one "
              "seed: the difference alone). Pairing takes out what runs of "
              "one seed share. '*': the 95% Student-t interval of the mean "
              "leaves out no change (it is mean ± t·SE, t = 12.7, 4.3, 3.2, "
              "2.8 at 2, 3, 4, 5 seeds). Seconds compare only when the "
              "runs shared the machine alike.", "",
              _paired_table(entries), ""]
  if "ema" in study.extras:
    parts += ["### Raw vs EMA test accuracy during training", "",
              _ema_table(entries), ""]
  failed = [(e["name"], x["failed"]) for e in entries for x in e["seeds"]
            if x["failed"]]
  if failed:
    parts += ["### Failed runs", ""]
    parts += [f"- {name}: {why}" for name, why in failed] + [""]
  return parts


def write_report(study: Study, scale: str, seeds: int, root, out=None, *,
                 only: Sequence[str] | None = None, command: str = "",
                 run_seconds: float | None = None) -> pathlib.Path:
  """report.md, summary.json and the plots for whatever has been run."""
  out = pathlib.Path(out or pathlib.Path(root) / f"study_{study.name}")
  out.mkdir(parents=True, exist_ok=True)
  entries = collect(study, scale, seeds, root, only)
  parts = [f"# Study `{study.name}` ({scale} scale)", "",
           f"**Question.** {study.question}", "",
           f"**Literature.** {study.paper}", ""]
  parts += _how_it_was_run(study, scale, seeds, entries, only, command,
                           run_seconds)
  if study.notes:
    parts += ["", study.notes]
  parts += ["", "## Results", "",
            "Training error is the running average over each log interval of "
            "the training batches (augmented if the config augments, dropout "
            "on), as the trainer logs it. Seconds are training seconds: "
            "compile, evaluation and the statistics collection are left out. "
            "'never' = not reached in the run; (k/n) = reached by k of n "
            "seeds, the mean is over those.", ""]
  if _has_validation(entries):
    parts += ["'val acc' is the final accuracy on the validation split: "
              "training images held out (`data.validation_size`, the same "
              "number of each class, the same images for every seed) and "
              "never trained on. Choices are made on it, never on the test "
              "split.", ""]
  parts += _result_tables(study, entries, scale)
  best = [e for e in best_lr_choices(entries, study.sweep.get(
      scale, "validation")).values() if e is not None]
  written = write_plots(entries, out, study.extras, study.thresholds,
                        best=best)
  parts += ["## Plots", ""] + [f"![{p}]({p})" for p in written] + [""]
  (out / "report.md").write_text("\n".join(parts))
  summary = [{"name": e["name"], "overrides": e["overrides"],
              "seeds": [{k: v for k, v in x.items()
                         if k not in ("train", "eval", "stats")}
                        for x in e["seeds"]]} for e in entries]
  (out / "summary.json").write_text(json.dumps(
      {"study": study.name, "scale": scale, "seeds": seeds, "command": command,
       "members": summary}, indent=1))
  return out / "report.md"
