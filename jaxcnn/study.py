"""Studies: sets of ordinary training runs, compared in one report.

    python -m jaxcnn.study NAME [--scale tiny|small|full] [--seeds N]
        [--data SOURCE] [--members a,b] [--root runs] [--out DIR]
        [--report_only] [--list]

A study is a list of members (a base experiment of `experiments/` plus
`--set`-style overrides) run for seeds 0..N-1. Each (member, seed) trains with
`trainer.train_and_evaluate` in ROOT/study_NAME/<member>_seed<k>; re-running
the command skips finished members (final checkpoint at the last step and a
final eval record) and resumes unfinished ones from their checkpoints. Then
the report is written to OUT (default ROOT/study_NAME): report.md (tables of
mean ± std over seeds, read back from each member's metrics.jsonl),
summary.json (the same numbers, unrounded) and PNG plots.

Scales: 'tiny' (the tiny model on synthetic data, seconds: for tests),
'small' (a 5000-image subset of CIFAR-10 for a few epochs: minutes per member
on a 2-core CPU), 'full' (all of CIFAR-10, tens of epochs: a GPU).

The study definitions are in STUDIES at the end of this file.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import platform
import sys
import time
from typing import Any, Callable, Sequence

from jaxcnn.config import REPO_ROOT, Config, ConfigError, apply_overrides, \
    load_experiment

SCALES = ("tiny", "small", "full")
DEFAULT_REAL_DATA = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg"
# Training-error thresholds whose time-to-reach the tables give. 25% is the
# AlexNet paper's (figure 1); 60% and 50% are reachable in the few epochs of
# the small scale, which makes the comparison possible there.
THRESHOLDS = (0.6, 0.5, 0.25)
STATUS_FILE = "study_status.json"


# --- Definitions ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Member:
  name: str  # Also the workdir prefix: letters, digits, '_', '-', '.'.
  overrides: tuple[str, ...] = ()
  exp: str | None = None  # None: the study's base experiment.


@dataclasses.dataclass(frozen=True)
class Scale:
  """What a scale means for a study: the epochs, plus overrides for all."""
  name: str
  epochs: int
  overrides: tuple[str, ...]


@dataclasses.dataclass
class Study:
  name: str
  question: str  # The seed question the study answers.
  paper: str  # What the literature says, for the README / report.
  base: str  # Base experiment.
  # members(scale) -> the members; the scale is passed so that a member can
  # place e.g. a step boundary at a fraction of the run.
  members: Callable[[Scale], list[Member]]
  # Overrides for every member at a scale, after the scale's generic ones.
  scale_overrides: dict[str, tuple[str, ...]] = dataclasses.field(
      default_factory=dict)
  epochs: dict[str, int] = dataclasses.field(default_factory=dict)
  # Extra report parts: 'dead', 'saturated', 'sparsity', 'flops', 'ema',
  # 'best_lr' (group members name@lr and pick the best lr per group).
  extras: tuple[str, ...] = ()
  notes: str = ""
  # Training errors whose time-to-reach the main table gives.
  thresholds: tuple[float, ...] = THRESHOLDS


def _generic_scale(study: Study, scale: str) -> Scale:
  """The overrides every study gets at a scale, before its own."""
  if scale == "tiny":
    epochs = study.epochs.get("tiny", 2)
    # 256 synthetic images at batch 32: 8 steps an epoch.
    over = ("data.source=synthetic", "data.synthetic_train_size=256",
            "data.synthetic_test_size=128", "model.name=tiny",
            "model.norm=batchnorm", "model.dropout=0.0",
            "train.batch_size=32", "train.eval_batch_size=64",
            "train.log_every_steps=4", "train.checkpoint_every_steps=8")
  elif scale == "small":
    epochs = study.epochs.get("small", 6)
    # 5000 training images: 39 steps an epoch at batch 128; logs about twice
    # an epoch (each log also runs the statistics on the probe batch). Half
    # width: on the shared 2-core CPU the full-width AlexNet-like net ran at
    # 1-3 s a step, the half-width one (3.5x fewer multiply-adds) fits a
    # member in a few minutes. Studies of the VGG net set their own width.
    over = ("data.train_limit=5000", "data.test_limit=1000",
            "model.width=0.5",
            "train.batch_size=128", "train.eval_batch_size=500",
            "train.log_every_steps=20", "train.checkpoint_every_steps=78")
  elif scale == "full":
    epochs = study.epochs.get("full", 30)
    over = ("train.log_every_steps=100", "train.checkpoint_every_steps=2000")
  else:
    raise ConfigError(f"unknown scale {scale!r}; use one of {SCALES}")
  over += ("train.num_steps=0", f"train.num_epochs={epochs}",
           "train.eval_every_epochs=1", "train.collect_stats=true",
           "train.progress_bar=false", "train.keep_checkpoints=1")
  return Scale(scale, epochs, over + study.scale_overrides.get(scale, ()))


def member_configs(study: Study, scale: str, seeds: int,
                   data: str | None = None,
                   only: Sequence[str] | None = None
                   ) -> list[tuple[Member, int, Config]]:
  """(member, seed, config) for every run of the study, in run order."""
  s = _generic_scale(study, scale)
  members = study.members(s)
  if only:
    unknown = set(only) - {m.name for m in members}
    if unknown:
      raise ConfigError(
          f"study {study.name} has no member(s) {', '.join(sorted(unknown))}; "
          f"its members: {', '.join(m.name for m in members)}")
    members = [m for m in members if m.name in only]
  out = []
  for m in members:
    base = load_experiment(m.exp or study.base)
    for seed in range(seeds):
      over = list(s.overrides) + list(m.overrides) + [f"seed={seed}"]
      if data is not None and scale != "tiny":
        over.append(f"data.source={data}")
      out.append((m, seed, apply_overrides(base, over)))
  return out


def workdir_of(root, study: Study, member: Member, seed: int) -> pathlib.Path:
  return pathlib.Path(root) / f"study_{study.name}" / f"{member.name}_seed{seed}"


# --- Running ----------------------------------------------------------------------


def _data_key(config: Config) -> str:
  d = config.data
  return json.dumps([d.source, d.data_dir, d.train_limit, d.test_limit,
                     d.synthetic_train_size, d.synthetic_test_size,
                     config.seed if d.source == "synthetic" else 0])


def member_status(workdir, total_steps: int) -> str:
  """'done' | 'failed' | 'partial' | 'new'."""
  from jaxcnn import checkpoint, reporting
  workdir = pathlib.Path(workdir)
  status = workdir / STATUS_FILE
  if status.exists() and json.loads(status.read_text()).get("failed"):
    return "failed"
  steps = checkpoint.saved_steps(workdir)
  if steps and steps[-1] == total_steps and any(
      r["step"] == total_steps for r in reporting.read_metrics(workdir, "eval")):
    return "done"
  return "partial" if steps else "new"


def run_study(study: Study, scale: str, seeds: int, root, *,
              data: str | None = None, only: Sequence[str] | None = None,
              retry_failed: bool = False, say=None) -> dict:
  """Trains every unfinished (member, seed). Returns {workdir: status}."""
  from jaxcnn import trainer
  from jaxcnn.data import load_from_config
  say = say or (lambda text: print(text, file=sys.stderr, flush=True))
  runs = member_configs(study, scale, seeds, data, only)
  datasets: dict[str, Any] = {}
  out = {}
  for i, (member, seed, config) in enumerate(runs, 1):
    workdir = workdir_of(root, study, member, seed)
    key = _data_key(config)
    if key not in datasets:
      datasets[key] = load_from_config(config.data, config.seed)
    setup = trainer.build(config, datasets[key])
    status = member_status(workdir, setup.total_steps)
    label = f"[{i}/{len(runs)}] {member.name} seed {seed}"
    if status == "done" or (status == "failed" and not retry_failed):
      say(f"{label}: {status}, skipped")
      out[str(workdir)] = status
      continue
    say(f"{label}: training in {workdir} ({status})")
    t0 = time.time()
    try:
      trainer.train_and_evaluate(config, str(workdir), data=datasets[key])
      status = "done"
    except trainer.TrainingError as e:
      # A diverging member (e.g. too high a learning rate for its
      # activation) is a result, not a reason to stop the study.
      say(f"{label}: failed: {e}")
      workdir.mkdir(parents=True, exist_ok=True)
      status = "failed"
      _write_status(workdir, failed=str(e))
    _add_wall_time(workdir, time.time() - t0)
    out[str(workdir)] = status
  return out


def _write_status(workdir: pathlib.Path, **fields) -> None:
  path = workdir / STATUS_FILE
  old = json.loads(path.read_text()) if path.exists() else {}
  old.update(fields)
  path.write_text(json.dumps(old, indent=1))


def _add_wall_time(workdir: pathlib.Path, seconds: float) -> None:
  path = workdir / STATUS_FILE
  old = json.loads(path.read_text()) if path.exists() else {}
  _write_status(workdir, wall_seconds=old.get("wall_seconds", 0.0) + seconds)


# --- Reading a member's metrics ---------------------------------------------------


def train_seconds(train: list[dict]) -> list[float]:
  """Cumulative training seconds at each train record.

  Each train record's sec_per_batch covers the steps since the previous log,
  with the compile of the first step, evaluations and the statistics
  collection already left out by the trainer.
  """
  out, total, prev_step = [], 0.0, None
  for r in train:
    if prev_step is None:
      # The first interval starts after the first step (and its compile).
      steps = max(r["step"] - 1, 1)
    elif r["step"] > prev_step:
      steps = r["step"] - prev_step
    else:
      # A resumed run logging a step again: its interval's start is not in
      # the records; count one step (resumes are rare; an underestimate).
      steps = 1
    total += r["sec_per_batch"] * steps
    out.append(total)
    prev_step = r["step"]
  return out


def _dedupe(records: list[dict]) -> list[dict]:
  """Keeps the last record of each step (a resumed run may re-log a step)."""
  by_step = {}
  for r in records:
    by_step[r["step"]] = r
  return [by_step[s] for s in sorted(by_step)]


def member_summary(workdir, thresholds: Sequence[float] = THRESHOLDS) -> dict:
  """The numbers the tables use, from one run's metrics.jsonl."""
  from jaxcnn import reporting
  workdir = pathlib.Path(workdir)
  records = reporting.read_metrics(workdir)
  train = [r for r in records if r["kind"] == "train"]
  seconds = train_seconds(train)
  for r, s in zip(train, seconds):
    r["seconds"] = s
  train = _dedupe(train)
  evals = _dedupe([r for r in records if r["kind"] == "eval"])
  stats = _dedupe([r for r in records if r["kind"] == "stats"])
  status_path = workdir / STATUS_FILE
  status = json.loads(status_path.read_text()) if status_path.exists() else {}
  out = {"workdir": str(workdir), "failed": status.get("failed"),
         "wall_seconds": status.get("wall_seconds"),
         "train": train, "eval": evals, "stats": stats}
  final_eval = evals[-1] if evals else {}
  out["final_step"] = final_eval.get("step")
  out["final_epoch"] = final_eval.get("epoch")
  out["test_accuracy_raw"] = final_eval.get("test_accuracy_raw")
  out["test_accuracy_ema"] = final_eval.get("test_accuracy_ema")
  out["final_train_loss"] = train[-1]["loss"] if train else None
  out["train_seconds"] = train[-1]["seconds"] if train else None
  for threshold in thresholds:
    hit = next((r for r in train if 1.0 - r["accuracy"] <= threshold), None)
    tag = f"{round(threshold * 100)}"
    out[f"steps_to_{tag}"] = hit["step"] if hit else None
    out[f"epochs_to_{tag}"] = hit["epoch"] if hit else None
    out[f"seconds_to_{tag}"] = hit["seconds"] if hit else None
  # What collecting the statistics costs: the gap between a train record and
  # the stats record of the same step (the first one includes the compile).
  times = {r["step"]: r["time"] for r in reversed(
      [r for r in records if r["kind"] == "train"])}
  out["stats_seconds"] = [round(r["time"] - times[r["step"]], 3)
                          for r in [r for r in records if r["kind"] == "stats"]
                          if r["step"] in times]
  out["sec_per_batch"] = [r["sec_per_batch"] for r in train]
  keep = lambda r: {k: v for k, v in r.items()
                    if "/" in k or k == "weight_zero_fraction"}
  out["first_stats"] = keep(stats[0]) if stats else {}
  out["final_stats"] = keep(stats[-1]) if stats else {}
  return out


# --- Aggregating ------------------------------------------------------------------


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None,
                                                      int]:
  """(mean, sample std, count) of the values that are not None."""
  got = [float(v) for v in values if v is not None]
  if not got:
    return None, None, 0
  mean = sum(got) / len(got)
  std = (math.sqrt(sum((v - mean) ** 2 for v in got) / (len(got) - 1))
         if len(got) > 1 else 0.0)
  return mean, std, len(got)


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


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def _layers_of(summaries: list[dict], prefix: str) -> list[str]:
  seen = []
  for s in summaries:
    for key in s["final_stats"]:
      if key.startswith(prefix + "/"):
        layer = key.split("/", 1)[1]
        if layer not in seen:
          seen.append(layer)
  from jaxcnn.stats import layer_order
  return sorted(seen, key=layer_order)


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


# --- The report -------------------------------------------------------------------


def collect(study: Study, scale: str, seeds: int, root,
            only: Sequence[str] | None = None) -> list[dict]:
  """One entry per member: its name, overrides, config and per-seed summaries
  (members with no metrics yet are left out)."""
  runs = member_configs(study, scale, seeds, None, only)
  by_member: dict[str, dict] = {}
  for member, seed, config in runs:
    workdir = workdir_of(root, study, member, seed)
    entry = by_member.setdefault(member.name, {
        "name": member.name, "overrides": list(member.overrides),
        "config": config, "seeds": []})
    if (workdir / "metrics.jsonl").exists():
      entry["seeds"].append(member_summary(workdir, study.thresholds))
  return [e for e in by_member.values() if e["seeds"]]


def _main_rows(entries: list[dict], thresholds: Sequence[float]
               ) -> tuple[list[str], list[list[str]]]:
  header = ["member", "overrides", "seeds", "test acc raw %", "test acc EMA %",
            "final train loss"]
  for t in thresholds:
    tag = round(t * 100)
    header += [f"epochs to {tag}% train err", f"s to {tag}% train err"]
  header += ["train s"]
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
    rows.append(row)
  return header, rows


def _per_layer_table(entries: list[dict], prefix: str, *,
                     scale: float = 100.0, digits: int = 1,
                     which: str = "final_stats") -> str | None:
  layers = _layers_of([s for e in entries for s in e["seeds"]], prefix)
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
  return _table(["member"] + [f"{layer}{unit}" for layer in layers], rows)


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
  return _table(["member (raw / EMA %)"] + [f"ep {ep:g}" for ep in epochs],
                rows)


def _best_lr_table(entries: list[dict], threshold: float) -> str:
  """Members named GROUP@LR: the best LR of each group by mean final raw test
  accuracy. (Chosen on the test split: there is no validation split at this
  scale; the choice is optimistic for every optimizer alike.)"""
  tag = round(threshold * 100)
  groups: dict[str, list] = {}
  for e in entries:
    group = e["name"].split("@")[0]
    acc = mean_std([s["test_accuracy_raw"] for s in e["seeds"]])[0]
    groups.setdefault(group, []).append((acc if acc is not None else -1, e))
  rows = []
  for group, items in groups.items():
    acc, best = max(items, key=lambda item: item[0])
    tried = ", ".join(e["name"].split("@", 1)[-1] for _, e in items)
    rows.append([group, best["name"].split("@", 1)[-1], tried,
                 fmt([s["test_accuracy_raw"] for s in best["seeds"]],
                     scale=100),
                 fmt([s[f"epochs_to_{tag}"] for s in best["seeds"]])])
  return _table(["optimizer", "best lr", "lrs tried", "test acc raw %",
                 f"epochs to {tag}% train err"], rows)


def _cost_table(entries: list[dict]) -> str:
  rows = []
  for e in entries:
    cost = model_cost(e["config"], flops=True)
    rows.append([e["name"], f"{cost['params']:,}",
                 f"{cost['flops'] / 1e6:.1f}",
                 fmt([s["test_accuracy_raw"] for s in e["seeds"]], scale=100)])
  return _table(["member", "params", "forward MFLOPs / image",
                 "test acc raw %"], rows)


def _mean_curve(seeds: list[dict], kind: str, key: str, x: str):
  """Mean over seeds of `key` against `x`, on the steps every seed logged."""
  series = [{r["step"]: (r[x], r[key]) for r in s[kind] if key in r}
            for s in seeds]
  steps = sorted(set.intersection(*(set(d) for d in series))) if series else []
  xs = [sum(d[st][0] for d in series) / len(series) for st in steps]
  ys = [sum(d[st][1] for d in series) / len(series) for st in steps]
  return xs, ys


def _epoch_of_stats(entry_seed: dict) -> dict:
  """stats records carry no epoch: take it from the train record of the same
  step."""
  epochs = {r["step"]: r["epoch"] for r in entry_seed["train"]}
  for r in entry_seed["stats"]:
    r.setdefault("epoch", epochs.get(r["step"], float("nan")))
  return entry_seed


def write_plots(entries: list[dict], out: pathlib.Path, extras: Sequence[str],
                thresholds: Sequence[float] = THRESHOLDS) -> list[str]:
  """PNG plots into `out`; returns their file names."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  written = []
  fig, axes = plt.subplots(2, 2, figsize=(11, 8))
  for e in entries:
    for col, x in enumerate(("epoch", "seconds")):
      xs, loss = _mean_curve(e["seeds"], "train", "loss", x)
      axes[0][col].plot(xs, loss, label=e["name"])
      xs, acc = _mean_curve(e["seeds"], "train", "accuracy", x)
      axes[1][col].plot(xs, [1 - a for a in acc], label=e["name"])
  for col, x in enumerate(("epochs", "training seconds")):
    axes[0][col].set(xlabel=x, ylabel="training loss", yscale="log")
    axes[1][col].set(xlabel=x, ylabel="training error")
    for t in thresholds:
      axes[1][col].axhline(t, color="grey", lw=0.5, ls=":")
  axes[0][0].legend(fontsize=8)
  fig.suptitle("Training loss and error of the training batches (mean over "
               "seeds; averages over each log interval)")
  fig.tight_layout()
  fig.savefig(out / "curves.png", dpi=90)
  plt.close(fig)
  written.append("curves.png")

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for i, e in enumerate(entries):
    color = f"C{i % 10}"
    xs, raw = _mean_curve(e["seeds"], "eval", "test_accuracy_raw", "epoch")
    ax.plot(xs, [100 * a for a in raw], color=color, label=f"{e['name']} raw")
    xs, ema = _mean_curve(e["seeds"], "eval", "test_accuracy_ema", "epoch")
    ax.plot(xs, [100 * a for a in ema], color=color, ls="--",
            label=f"{e['name']} EMA")
  ax.set(xlabel="epochs", ylabel="test accuracy % (solid raw, dashed EMA)")
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(out / "test_accuracy.png", dpi=90)
  plt.close(fig)
  written.append("test_accuracy.png")

  for prefix, wanted in (("dead_fraction", "dead"),
                         ("saturated_fraction", "saturated"),
                         ("zero_fraction", "sparsity")):
    if wanted not in extras:
      continue
    for e in entries:
      for s in e["seeds"]:
        _epoch_of_stats(s)
    layers = _layers_of([s for e in entries for s in e["seeds"]], prefix)
    if not layers:
      continue
    fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers), 3.4),
                             squeeze=False)
    for ax, layer in zip(axes[0], layers):
      for e in entries:
        xs, ys = _mean_curve(e["seeds"], "stats", f"{prefix}/{layer}", "epoch")
        if xs:
          ax.plot(xs, [100 * y for y in ys], label=e["name"])
      ax.set(title=layer, xlabel="epochs", ylabel=f"{prefix} %")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    name = f"{prefix}.png"
    fig.savefig(out / name, dpi=90)
    plt.close(fig)
    written.append(name)
  return written


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


def write_report(study: Study, scale: str, seeds: int, root, out=None, *,
                 only: Sequence[str] | None = None, command: str = "",
                 run_seconds: float | None = None) -> pathlib.Path:
  """report.md, summary.json and the plots for whatever has been run."""
  out = pathlib.Path(out or pathlib.Path(root) / f"study_{study.name}")
  out.mkdir(parents=True, exist_ok=True)
  entries = collect(study, scale, seeds, root, only)
  s = _generic_scale(study, scale)
  all_members = study.members(s)
  ran = {e["name"] for e in entries}
  wall = sum(x["wall_seconds"] or 0 for e in entries for x in e["seeds"])

  parts = [f"# Study `{study.name}` ({scale} scale)", "",
           f"**Question.** {study.question}", "",
           f"**Literature.** {study.paper}", ""]
  parts += ["## How it was run", "",
            f"- command: `{command or f'python -m jaxcnn.study {study.name} --scale {scale} --seeds {seeds}'}`",
            f"- machine: {machine_line()}",
            f"- scale `{scale}`: {s.epochs} epochs; overrides for every "
            f"member: {' '.join(f'`{o}`' for o in s.overrides)}; base "
            f"experiment `{study.base}`",
            f"- seeds: {seeds} (0..{seeds - 1}); 'mean ± std' is over seeds "
            "(sample std), a single number means one seed",
            f"- wall time of the member runs (compile, training, evaluation, "
            f"statistics): {wall / 60:.1f} min"
            + (f"; this invocation: {run_seconds / 60:.1f} min"
               if run_seconds is not None else "")]
  missing = [m.name for m in all_members if m.name not in ran
             and (not only or m.name in only)]
  if missing:
    parts.append(f"- not run (yet): {', '.join(missing)}")
  stats_s = sorted(t for e in entries for x in e["seeds"]
                   for t in x["stats_seconds"][1:])
  first_s = sorted(x["stats_seconds"][0] for e in entries for x in e["seeds"]
                   if x["stats_seconds"])
  step_s = sorted(t for e in entries for x in e["seeds"]
                  for t in x["sec_per_batch"])
  if stats_s and step_s:
    parts.append(
        f"- cost of `train.collect_stats` (probe batch of "
        f"{_probe_size()} images, forward and backward): median "
        f"{stats_s[len(stats_s) // 2]:.2f} s per log step (first call, with "
        f"its compile: median {first_s[len(first_s) // 2]:.1f} s), against a "
        f"median train step of {step_s[len(step_s) // 2]:.2f} s; with it off "
        "nothing is built or run")
  if study.notes:
    parts += ["", study.notes]
  parts += ["", "## Results", "",
            "Training error is the running average over each log interval of "
            "the training batches (augmented if the config augments, dropout "
            "on), as the trainer logs it. Seconds are training seconds: "
            "compile, evaluation and the statistics collection are left out. "
            "'never' = not reached in the run; (k/n) = reached by k of n "
            "seeds, the mean is over those.", ""]
  header, rows = _main_rows(entries, study.thresholds)
  parts += [_table(header, rows), ""]
  if "best_lr" in study.extras:
    parts += ["### Best learning rate per optimizer", "",
              _best_lr_table(entries, study.thresholds[0]), ""]
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
  if "ema" in study.extras:
    parts += ["### Raw vs EMA test accuracy during training", "",
              _ema_table(entries), ""]
  failed = [(e["name"], x["failed"]) for e in entries for x in e["seeds"]
            if x["failed"]]
  if failed:
    parts += ["### Failed runs", ""]
    parts += [f"- {name}: {why}" for name, why in failed] + [""]
  plots = write_plots(entries, out, study.extras, study.thresholds)
  parts += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
  (out / "report.md").write_text("\n".join(parts))
  summary = [{"name": e["name"], "overrides": e["overrides"],
              "seeds": [{k: v for k, v in x.items()
                         if k not in ("train", "eval", "stats")}
                        for x in e["seeds"]]} for e in entries]
  (out / "summary.json").write_text(json.dumps(
      {"study": study.name, "scale": scale, "seeds": seeds, "command": command,
       "members": summary}, indent=1))
  return out / "report.md"


# --- The studies ------------------------------------------------------------------

# At the small scale the AlexNet-like studies share one optimizer setting that
# every member can train with: momentum 0.9 at lr 0.01 (the recipe's plain SGD
# at 0.1 has the same effective step but leaves sigmoid nearly still in a few
# epochs), constant (the recipe's decay starts at epoch 350 anyway).
ALEX_SMALL = ("optim.optimizer=momentum", "optim.learning_rate=0.01",
              "optim.schedule=constant")


def _activations(s: Scale) -> list[Member]:
  return [Member(a, (f"model.activation={a}",))
          for a in ("relu", "leaky_relu", "elu", "tanh", "sigmoid")]


def _lrn(s: Scale) -> list[Member]:
  return [Member(n, (f"model.norm={n}",)) for n in ("lrn", "none", "batchnorm")]


def _input_norm(s: Scale) -> list[Member]:
  return [Member(f"{a}_{n}", (f"model.activation={a}",
                              f"data.normalization={n}"))
          for a in ("relu", "tanh") for n in ("none", "channel", "image")]


def _receptive_field(s: Scale) -> list[Member]:
  # VGG-13 has exactly two 3x3 convs in each of its five blocks; the other
  # member replaces each pair by one 5x5 conv (same receptive field).
  return [Member("two_3x3", ("model.depth=13",)),
          Member("one_5x5", ("model.depth=13", "model.vgg_block=5x5"))]


def _schedules(s: Scale) -> list[Member]:
  e = s.epochs
  return [
      Member("constant", ("optim.schedule=constant",)),
      Member("step", ("optim.schedule=step",
                      f"optim.step_boundaries_epochs=({e * 0.5},{e * 0.75})",
                      "optim.step_factor=0.1")),
      # Ends at a tenth of the peak, like the step schedule.
      Member("exponential", ("optim.schedule=exponential",
                             "optim.staircase=false", "optim.decay_rate=0.1",
                             f"optim.decay_epochs={float(e)}")),
      # 1/(1 + 9 t/T): also a tenth at the end.
      Member("inverse_time", ("optim.schedule=inverse_time",
                              "optim.staircase=false", "optim.decay_rate=9.0",
                              f"optim.decay_epochs={float(e)}")),
      Member("cosine_warmup", ("optim.schedule=cosine",
                               f"optim.warmup_epochs={max(e / 10, 0.5)}")),
  ]


# Half-decade steps around each optimizer's usual learning rate; the sweep
# reaches one step past the best of a first, three-point run (whose best lay
# at its top end for every optimizer but SGD), so the best is bracketed.
OPTIMIZER_LRS = {
    "sgd": (0.03, 0.1, 0.3),
    "momentum": (0.003, 0.01, 0.03, 0.1),
    "nesterov": (0.003, 0.01, 0.03, 0.1),
    "adam": (1e-4, 3e-4, 1e-3, 3e-3),
    "adamw": (1e-4, 3e-4, 1e-3, 3e-3),
    "rmsprop": (1e-4, 3e-4, 1e-3, 3e-3),
}


def _optimizers(s: Scale) -> list[Member]:
  out = []
  for opt, lrs in OPTIMIZER_LRS.items():
    for lr in lrs:
      over = (f"optim.optimizer={opt}", f"optim.learning_rate={lr}")
      if opt == "rmsprop":
        over += ("optim.momentum=0.0",)
      if opt == "adamw":
        # Decoupled decay, scaled by the schedule in optax.adamw: 0.004 * lr
        # would be negligible, so AdamW gets its customary 0.05.
        over += ("optim.weight_decay=0.05",)
      out.append(Member(f"{opt}@{lr:g}", over))
  return out


def _ema(s: Scale) -> list[Member]:
  return [Member(f"d{d}_{'ramp' if ramp else 'noramp'}",
                 (f"optim.ema_decay={d}", f"optim.ema_ramp={str(ramp).lower()}"))
          for d in (0.99, 0.999, 0.9999) for ramp in (True, False)]


def _sparsity(s: Scale) -> list[Member]:
  # L1 on every conv/fc kernel (the decay filter is widened to all kernels).
  return [Member(f"l1_{l1:g}", (f"optim.l1={l1}",
                                "optim.weight_decay_filter=kernel"))
          for l1 in (0.0, 1e-5, 1e-4, 1e-3)]


_TINY_FAST = ("optim.optimizer=momentum", "optim.learning_rate=0.05",
              "optim.schedule=constant")

STUDIES: dict[str, Study] = {s.name: s for s in [
    Study(
        "activations",
        question="How fast does each activation reach 25% (and 50%) training "
                 "error, how accurate is it at the end, how many ReLU units "
                 "die and how many tanh/sigmoid units saturate?",
        paper="AlexNet paper, figure 1: a four-layer CNN with ReLUs reaches "
              "25% training error on CIFAR-10 six times faster than with "
              "tanh.",
        base="alexnet", members=_activations,
        # No crop/flip: the question is how fast the training set is fitted,
        # as in the paper's figure 1, and without augmentation 25% training
        # error is within reach of a short run.
        scale_overrides={"small": ALEX_SMALL + ("data.random_crop=false",
                                                "data.random_flip=false"),
                         "full": ALEX_SMALL + ("data.random_crop=false",
                                               "data.random_flip=false"),
                         "tiny": _TINY_FAST},
        epochs={"small": 15, "full": 30, "tiny": 2},
        extras=("dead", "saturated", "grads")),
    Study(
        "lrn",
        question="Does local response normalization help the AlexNet-like "
                 "net, and how does BatchNorm in its place compare?",
        paper="AlexNet paper, section 3.3: LRN lowers the test error of a "
              "four-layer CNN on CIFAR-10 from 13% to 11%.",
        base="alexnet", members=_lrn,
        scale_overrides={"small": ALEX_SMALL, "full": ALEX_SMALL},
        epochs={"small": 15, "full": 30}),
    Study(
        "input_norm",
        question="Does the input normalization matter: none (pixels in "
                 "[0, 1]), per-channel dataset mean/std, per-image "
                 "standardization; with ReLU and with tanh?",
        paper="LeCun et al., Efficient BackProp (1998): inputs should be "
              "centred and scaled; the TF tutorial uses per-image "
              "standardization.",
        base="alexnet", members=_input_norm,
        scale_overrides={"small": ALEX_SMALL, "full": ALEX_SMALL},
        epochs={"small": 6, "full": 30},
        extras=("dead", "saturated", "grads")),
    Study(
        "receptive_field",
        question="Two stacked 3x3 convs against one 5x5 conv per block: "
                 "parameters, FLOPs, accuracy.",
        paper="VGG paper (Simonyan & Zisserman 2014), section 2.3: two 3x3 "
              "convs see 5x5 with 18C^2 instead of 25C^2 weights and an extra "
              "non-linearity.",
        base="vgg", members=_receptive_field,
        scale_overrides={"small": ("model.width=0.25", "model.dropout=0.0",
                                   "optim.schedule=constant"),
                         "full": ("optim.schedule=cosine",)},
        epochs={"small": 15, "full": 30}, extras=("flops",)),
    Study(
        "schedules",
        question="Constant, step, exponential, 1/t and cosine-with-warmup "
                 "learning rates on the same budget.",
        paper="Loshchilov & Hutter, SGDR (2017): cosine annealing; Goyal et "
              "al. (2017): warmup.",
        base="alexnet", members=_schedules,
        scale_overrides={"small": ("optim.optimizer=momentum",
                                   "optim.learning_rate=0.02"),
                         "full": ("optim.optimizer=momentum",
                                  "optim.learning_rate=0.02"),
                         "tiny": _TINY_FAST},
        epochs={"small": 6, "full": 30}),
    Study(
        "optimizers",
        question="SGD, momentum, Nesterov, Adam, AdamW and RMSProp, each at "
                 "its best learning rate of a three- or four-point sweep.",
        paper="Wilson et al. (2017): adaptive methods generalize worse than "
              "SGD with momentum on CIFAR-10.",
        base="alexnet", members=_optimizers,
        scale_overrides={"small": ("optim.schedule=constant",),
                         "full": ("optim.schedule=cosine",)},
        epochs={"small": 6, "full": 30}, extras=("best_lr",)),
    Study(
        "ema",
        question="Raw against EMA test accuracy across training for several "
                 "decays, with and without the (1+t)/(10+t) ramp.",
        paper="TF ExponentialMovingAverage(num_updates=step); the TF CIFAR-10 "
              "tutorial evaluates EMA 0.9999 weights.",
        base="alexnet", members=_ema,
        scale_overrides={"small": ALEX_SMALL, "full": ALEX_SMALL,
                         "tiny": _TINY_FAST},
        epochs={"small": 6, "full": 30}, extras=("ema",),
        notes="The EMA does not feed back into training: with the same seed "
              "every member trains the same raw weights (the raw column must "
              "agree across members, which checks determinism); only the EMA "
              "column differs."),
    Study(
        "sparsity",
        question="L1 strength against weight sparsity, activation sparsity "
                 "and accuracy.",
        paper="Han et al. (2015): most weights can be pruned; L1 drives "
              "weights to zero.",
        base="alexnet", members=_sparsity,
        scale_overrides={"small": ALEX_SMALL, "full": ALEX_SMALL,
                         "tiny": _TINY_FAST},
        epochs={"small": 6, "full": 30}, extras=("sparsity", "dead")),
]}


# --- Command line -----------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m jaxcnn.study", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("name", nargs="?", help=f"one of {', '.join(STUDIES)}")
  p.add_argument("--scale", default="small", choices=SCALES)
  p.add_argument("--seeds", type=int, default=1)
  p.add_argument("--data", default=None,
                 help="data source for small/full (default: folder:"
                 f"{DEFAULT_REAL_DATA} when it exists); tiny is synthetic")
  p.add_argument("--members", default=None,
                 help="comma-separated subset of the members to run")
  p.add_argument("--root", default="runs",
                 help="where the member workdirs go (ROOT/study_NAME/...)")
  p.add_argument("--out", default=None,
                 help="where report.md and plots go (default ROOT/study_NAME)")
  p.add_argument("--report_only", action="store_true",
                 help="write the report from the runs there are; train nothing")
  p.add_argument("--retry_failed", action="store_true",
                 help="train again members that failed (e.g. diverged)")
  p.add_argument("--list", action="store_true", help="list the studies")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.list or not args.name:
    for s in STUDIES.values():
      print(f"{s.name}: {s.question}")
    return 0
  if args.name not in STUDIES:
    raise ConfigError(f"unknown study {args.name!r}; known: "
                      f"{', '.join(STUDIES)}")
  if args.seeds < 1:
    raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
  study = STUDIES[args.name]
  data = args.data
  if data is None and args.scale != "tiny":
    if not (DEFAULT_REAL_DATA / "train").is_dir():
      raise ConfigError(
          f"no CIFAR-10 images at {DEFAULT_REAL_DATA}: pass --data "
          "(folder:PATH | tfds:cifar10)")
    data = f"folder:{DEFAULT_REAL_DATA}"
  only = args.members.split(",") if args.members else None
  # The command that trains the study: --report_only and --out only say
  # where a report goes, so they are left out of the one the report names.
  words, skip = [], False
  for word in (sys.argv[1:] if argv is None else argv):
    if skip or word == "--report_only":
      skip = False
      continue
    if word == "--out":
      skip = True
      continue
    if not word.startswith("--out="):
      words.append(word)
  command = "python -m jaxcnn.study " + " ".join(words)
  t0 = time.time()
  if not args.report_only:
    run_study(study, args.scale, args.seeds, args.root, data=data, only=only,
              retry_failed=args.retry_failed)
  path = write_report(study, args.scale, args.seeds, args.root, args.out,
                      only=only, command=command,
                      run_seconds=None if args.report_only
                      else time.time() - t0)
  print(path)
  return 0


if __name__ == "__main__":
  from jaxcnn import cli
  cli.run_main(main, hard_exit=True)
