"""A study's numbers: each member's metrics read back from its workdir
(metrics.jsonl, study_status.json), then aggregated over seeds."""
from __future__ import annotations

import math
import pathlib
from typing import Sequence

from jaxcnn.studies import THRESHOLDS, Study, member_configs
from jaxcnn.study_runner import read_status, workdir_of


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
  status = read_status(workdir)
  out = {"workdir": str(workdir), "failed": status.get("failed"),
         "wall_seconds": status.get("wall_seconds"),
         "train": train, "eval": evals, "stats": stats}
  final_eval = evals[-1] if evals else {}
  out["final_step"] = final_eval.get("step")
  out["final_epoch"] = final_eval.get("epoch")
  out["test_accuracy_raw"] = final_eval.get("test_accuracy_raw")
  out["test_accuracy_ema"] = final_eval.get("test_accuracy_ema")
  # None without a validation split (data.validation_size=0).
  out["validation_accuracy_raw"] = final_eval.get("validation_accuracy_raw")
  out["validation_accuracy_ema"] = final_eval.get("validation_accuracy_ema")
  # With train.final_tta: the final accuracies under test-time augmentation.
  tta = [r for r in records if r["kind"] == "eval_tta"]
  out["test_accuracy_tta_raw"] = tta[-1]["test_accuracy_raw"] if tta else None
  out["test_accuracy_tta_ema"] = tta[-1]["test_accuracy_ema"] if tta else None
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
      summary = member_summary(workdir, study.thresholds)
      summary["seed"] = seed
      entry["seeds"].append(summary)
  return [e for e in by_member.values() if e["seeds"]]


# --- Aggregating over seeds -----------------------------------------------------


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


def paired_differences(entries: list[dict], key: str, *, ratio: bool = False
                       ) -> dict[str, tuple[float | None, float | None, int]]:
  """Each member against the first one (a study's base member), seed by
  seed: {name: (mean, standard error, n)} of `key`'s difference (its ratio
  with `ratio`) over the n seeds both ran with a value. The standard error
  is the sample std of the n differences over sqrt(n), None for n < 2; the
  mean is None for n = 0. Pairing by seed takes out what two runs of one
  seed share (the initial weights where the model is the same, the data
  order), which an unpaired mean ± std leaves in."""
  base = {s["seed"]: s.get(key) for s in entries[0]["seeds"]}
  out = {}
  for e in entries[1:]:
    values = []
    for s in e["seeds"]:
      b = base.get(s["seed"])
      if s.get(key) is None or b is None or (ratio and b == 0):
        continue
      values.append(s[key] / b if ratio else s[key] - b)
    mean, std, n = mean_std(values)
    out[e["name"]] = (mean, std / math.sqrt(n) if n > 1 else None, n)
  return out


def t_quantile(n: int, level: float = 0.95) -> float:
  """The two-sided Student-t multiplier of a `level` interval for the mean
  of n values (n - 1 degrees of freedom): 12.71, 4.30, 3.18 at n = 2, 3, 4."""
  from scipy import stats
  if n < 2:
    raise ValueError(f"an interval needs at least 2 values, got {n}")
  return float(stats.t.ppf(0.5 + level / 2, n - 1))


def layers_of(summaries: list[dict], prefix: str) -> list[str]:
  seen = []
  for s in summaries:
    for key in s["final_stats"]:
      if key.startswith(prefix + "/"):
        layer = key.split("/", 1)[1]
        if layer not in seen:
          seen.append(layer)
  from jaxcnn.stats import layer_order
  return sorted(seen, key=layer_order)


def mean_curve(seeds: list[dict], kind: str, key: str, x: str):
  """Mean over seeds of `key` against `x`, on the steps every seed logged."""
  series = [{r["step"]: (r[x], r[key]) for r in s[kind] if key in r}
            for s in seeds]
  steps = sorted(set.intersection(*(set(d) for d in series))) if series else []
  xs = [sum(d[st][0] for d in series) / len(series) for st in steps]
  ys = [sum(d[st][1] for d in series) / len(series) for st in steps]
  return xs, ys


def epoch_of_stats(entry_seed: dict) -> dict:
  """stats records carry no epoch: take it from the train record of the same
  step."""
  epochs = {r["step"]: r["epoch"] for r in entry_seed["train"]}
  for r in entry_seed["stats"]:
    r.setdefault("epoch", epochs.get(r["step"], float("nan")))
  return entry_seed


# --- Choosing the best rate of a sweep ------------------------------------------


def seed0_of(entry: dict) -> dict | None:
  """The summary of an entry's seed 0 (the seed a sweep chooses on)."""
  return next((s for s in entry["seeds"]
               if s["workdir"].endswith("_seed0")), None)


def best_of_groups(entries: list[dict], on: str = "validation"
                   ) -> dict[str, dict | None]:
  """Members named GROUP@LR: {group: the best member}, None for a group
  with nothing to choose on. `on`: 'validation' (the highest mean final raw
  validation accuracy over seeds; the test split plays no part: choosing on
  it would make the test accuracy reported for the choice optimistic) or
  'epochs_to_<T>' (the fewest epochs to T% training error of seed 0, the
  sweep's seed, so that the seeds trained after the choice cannot change
  it; a member that never got there ranks after those that did, by its
  final training loss). Members without '@' are not a sweep: left out."""
  groups: dict[str, list] = {}
  for e in entries:
    if "@" in e["name"]:
      groups.setdefault(e["name"].split("@")[0], []).append(e)
  out = {}
  for group, members in groups.items():
    scored = []
    if on == "validation":
      for e in members:
        mean = mean_std([s.get("validation_accuracy_raw")
                         for s in e["seeds"]])[0]
        if mean is not None:
          scored.append((-mean, e))
    elif on.startswith("epochs_to_"):
      for e in members:
        first = seed0_of(e)
        if first is None or first["failed"] or first["final_train_loss"] is None:
          continue
        epochs = first.get(on)
        scored.append(((math.inf if epochs is None else epochs,
                        first["final_train_loss"]), e))
    else:
      raise ValueError(f"unknown sweep choice {on!r}")
    out[group] = min(scored, key=lambda item: item[0])[1] if scored else None
  return out
