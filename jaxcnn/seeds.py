"""One recipe over several seeds: `python -m jaxcnn.train --exp X --seeds N`.

Seed k of S..S+N-1 (S: the config's `seed`, 0 unless --set says otherwise)
trains in WORKDIR/seed<k>, one after another, each an ordinary run (run the
command again: finished seeds are read back, unfinished ones resume). Then
each seed's final test accuracy (raw and EMA weights; with train.final_tta
also under it, and with train.final_tta_ensemble their ensemble's), its
training seconds (compile apart, as the trainer times them) and its TTA
seconds (raw and EMA together; the ensemble's apart) are printed beside
their mean ± std, and written to WORKDIR/seeds.json. Every number is read
back from the seed's own metrics.jsonl, so the table of a rerun is the
table of the runs.
"""
from __future__ import annotations

import json
import pathlib
import sys
from typing import Sequence

from jaxcnn import reporting
from jaxcnn.config import Config, ConfigError

SEEDS_FILE = "seeds.json"
# (key, column title, percent?)
COLUMNS = (
    ("test_accuracy_raw", "raw %", True),
    ("test_accuracy_ema", "EMA %", True),
    ("tta_accuracy_raw", "TTA raw %", True),
    ("tta_accuracy_ema", "TTA EMA %", True),
    # With train.final_tta_ensemble only (no column otherwise).
    ("tta_accuracy_ensemble", "TTA ens. %", True),
    ("train_seconds", "train s", False),
    ("compile_seconds", "compile s", False),
    ("tta_seconds", "TTA s", False),
    ("tta_seconds_ensemble", "TTA ens. s", False),
)


def seed_workdir(workdir, seed: int) -> pathlib.Path:
  return pathlib.Path(workdir) / f"seed{seed}"


def seed_row(workdir, seed: int) -> dict:
  """One seed's numbers from its metrics.jsonl: the last evaluation, the
  last TTA evaluation, and the trainer's timing when one process trained
  it all (a resumed run's timing covers only its last part: then the
  training seconds are the logged sec_per_batch summed, compile left out,
  and `resumed` is true)."""
  records = reporting.read_metrics(workdir)
  evals = [r for r in records if r["kind"] == "eval"]
  if not evals:
    raise ConfigError(f"{workdir} has no evaluation: its run did not finish")
  last = evals[-1]
  tta = [r for r in records if r["kind"] == "eval_tta"]
  timing = [r for r in records if r["kind"] == "timing"]
  row = {"seed": seed, "workdir": str(workdir), "step": last["step"],
         "test_accuracy_raw": last["test_accuracy_raw"],
         "test_accuracy_ema": last["test_accuracy_ema"],
         "tta_accuracy_raw": tta[-1]["test_accuracy_raw"] if tta else None,
         "tta_accuracy_ema": tta[-1]["test_accuracy_ema"] if tta else None,
         "tta_accuracy_ensemble":
             tta[-1].get("test_accuracy_ensemble") if tta else None,
         "tta_seconds": tta[-1].get("seconds") if tta else None,
         "tta_seconds_ensemble":
             tta[-1].get("seconds_ensemble") if tta else None,
         "resumed": False}
  whole = [t for t in timing if t.get("from_step") == 0]
  if whole:
    row["train_seconds"] = whole[-1]["train_seconds"]
    row["compile_seconds"] = whole[-1]["compile_seconds"]
  else:
    from jaxcnn.study_metrics import train_seconds
    train = [r for r in records if r["kind"] == "train"]
    row["train_seconds"] = train_seconds(train)[-1] if train else None
    row["compile_seconds"] = None
    row["resumed"] = True
  return row


def summarize(rows: Sequence[dict]) -> dict:
  """{key: {'mean', 'std', 'n'}} over the rows that have the key (sample
  std; 0 for one value)."""
  from jaxcnn.study_metrics import mean_std
  out = {}
  for key, _, _ in COLUMNS:
    mean, std, n = mean_std([r.get(key) for r in rows])
    if n:
      out[key] = {"mean": mean, "std": std, "n": n}
  return out


def table(rows: Sequence[dict], summary: dict) -> str:
  """The per-seed rows and a mean ± std row, as the CLIs print tables."""
  from jaxcnn.tables import format_table
  columns = [c for c in COLUMNS if c[0] in summary]

  def cell(value, percent):
    if value is None:
      return "-"
    return f"{100 * value:.2f}" if percent else f"{value:.1f}"

  body = [[str(r["seed"]) + (" (resumed)" if r["resumed"] else "")]
          + [cell(r.get(k), pct) for k, _, pct in columns] for r in rows]
  scale = lambda pct: 100 if pct else 1
  body.append([f"mean ± std (n={len(rows)})"] + [
      f"{summary[k]['mean'] * scale(pct):.2f} ± "
      f"{summary[k]['std'] * scale(pct):.2f}" for k, _, pct in columns])
  return format_table(["seed"] + [title for _, title, _ in columns], body)


def run_seeds(config: Config, workdir, count: int, *, say=None) -> dict:
  """Trains seeds config.seed .. config.seed + count - 1 (see the module
  docstring); returns {'rows', 'summary'} as written to seeds.json."""
  from jaxcnn import state as state_lib, study_runner, trainer
  from jaxcnn.data import load_from_config
  say = say or (lambda text: print(text, file=sys.stderr, flush=True))
  if count < 1:
    raise ConfigError(f"--seeds must be >= 1, got {count}")
  workdir = pathlib.Path(workdir)
  rows, data = [], None
  for seed in range(config.seed, config.seed + count):
    run = config.copy()
    run.seed = seed
    where = seed_workdir(workdir, seed)
    # Real data is the same for every seed (its validation split too);
    # synthetic data is drawn from the seed.
    if data is None or run.data.source == "synthetic":
      data = load_from_config(run.data, run.seed)
    total = state_lib.run_steps(state_lib.resolve_with_data(run, data)
                                ).total_steps
    if study_runner.member_status(where, total) == "done":
      say(f"seed {seed}: done in {where}, read back")
    else:
      say(f"seed {seed}: training in {where}")
      trainer.train_and_evaluate(run, str(where), data=data)
    rows.append(seed_row(where, seed))
  summary = summarize(rows)
  out = {"seeds": [r["seed"] for r in rows], "rows": rows, "summary": summary}
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / SEEDS_FILE).write_text(json.dumps(out, indent=1))
  print(table(rows, summary))
  return out
