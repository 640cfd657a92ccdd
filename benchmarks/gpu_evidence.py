"""Helpers of benchmarks/gpu_evidence.sh (the GPU evidence run): its small
data sets, the reference scripts' train.pt/test.pt, and the key lines of its
summary, read back from the logs and workdirs. numpy and the standard
library only, except `pt` (torch) and `curve` (matplotlib, optional).

    python -m benchmarks.gpu_evidence dry-data ARCHIVE DST [--train_per_class N]
        the first N images of each class (M of the test split) of a
        jpeg_pack archive as a small image folder; ARCHIVE 'synthetic' (or
        missing) writes learnable coloured JPEGs instead
    python -m benchmarks.gpu_evidence pt TOOLS DATA DST
        DST/{train,test}.pt from DATA/{train,test} with TOOLS/airbench_cpu.py's
        ensure_pt (the format and fixed shuffle the reference scripts read),
        then loaded back as the upstream CifarLoader does and checked
    python -m benchmarks.gpu_evidence refs LOG [--json OUT]
        each finished run of an upstream script (airbench94_muon.py,
        cifar10_speedrun.py) in its printed table, and their mean +- std
    python -m benchmarks.gpu_evidence refs-selftest UPSTREAM.py
        prints a table with the upstream file's own print functions (read
        from its source, no torch needed) and checks that `refs` parses it
    python -m benchmarks.gpu_evidence train WORKDIR [--curve PREFIX]
        a training workdir's final evaluation, timing and images/s; with
        --curve, PREFIX.tsv (and PREFIX.png) of accuracy against epoch
    python -m benchmarks.gpu_evidence seeds WORKDIR
        a --seeds workdir: each seed's numbers and their mean +- std
"""
from __future__ import annotations

import argparse
import ast
import io
import json
import math
import pathlib
import re
import statistics
import sys
from typing import Iterable


# --- data ---------------------------------------------------------------------

def dry_data(archive: str, dst: pathlib.Path, train_per_class: int,
             test_per_class: int) -> None:
  """A small image folder for the dry run, from the packed images if any."""
  import numpy as np
  limits = {"train": train_per_class, "test": test_per_class}
  path = pathlib.Path(archive)
  if archive != "synthetic" and path.is_file():
    z = np.load(path)
    names, offsets, data = z["names"], z["offsets"], z["data"]
    taken: dict[tuple[str, str], int] = {}
    for i, name in enumerate(names):
      name = str(name)
      split, cls = name.split("/")[:2]
      if taken.get((split, cls), 0) >= limits[split]:
        continue
      taken[split, cls] = taken.get((split, cls), 0) + 1
      out = dst / name
      out.parent.mkdir(parents=True, exist_ok=True)
      out.write_bytes(data[offsets[i]:offsets[i + 1]].tobytes())
    print(f"dry data: {sum(taken.values())} images of {path} -> {dst}")
    return
  from PIL import Image
  rng = np.random.default_rng(0)
  classes = [f"class{k}" for k in range(10)]
  for split, n in limits.items():
    for k, cls in enumerate(classes):
      (dst / split / cls).mkdir(parents=True, exist_ok=True)
      base = np.array([25 * k, 255 - 25 * k, (80 * k) % 256], np.float64)
      for i in range(n):
        img = np.clip(base + rng.normal(0, 40, (32, 32, 3)), 0, 255)
        Image.fromarray(img.astype(np.uint8)).save(
            dst / split / cls / f"{i:04d}.jpg", quality=75)
  print(f"dry data: synthetic JPEGs ({archive} not found) -> {dst}")


def write_pt(tools: pathlib.Path, data: pathlib.Path, dst: pathlib.Path) -> None:
  """train.pt / test.pt as the references read them, then checked."""
  import torch
  sys.path.insert(0, str(tools))
  from airbench_cpu import ensure_pt  # pylint: disable=import-outside-toplevel
  for split in ("train", "test"):
    path = ensure_pt(str(data / split), str(dst), f"{split}.pt")
    # As upstream's CifarLoader (cifar10_speedrun.py loads weights_only).
    d = torch.load(path, map_location="cpu", weights_only=True)
    images, labels, classes = d["images"], d["labels"], d["classes"]
    assert images.dtype == torch.uint8 and images.ndim == 4, images.dtype
    assert tuple(images.shape[1:]) == (32, 32, 3), images.shape
    assert labels.dtype == torch.int64 and len(labels) == len(images)
    assert len(classes) == 10 and int(labels.max()) == 9, classes
    x = (images[:8].float() / 255).permute(0, 3, 1, 2)
    assert x.shape[1:] == (3, 32, 32)
    print(f"{path}: {tuple(images.shape)} uint8, labels "
          f"{torch.bincount(labels).tolist()}, classes {classes}")


# --- the reference scripts' tables ----------------------------------------------

# A table row at the end of a line: six cells between seven bars.
ROW = re.compile(r"\|([^|]*)\|([^|]*)\|([^|]*)\|([^|]*)\|([^|]*)\|([^|]*)\|\s*$")


def parse_refs(text: str) -> list[dict]:
  """Each finished run of an upstream log: its 'eval' row.

  Both scripts print rows `|  run  |  epoch  |  train_acc  |  val_acc  |
  tta_val_acc  |  time_seconds  |`; the run's number only on its first row
  (airbench94_muon: one row per epoch, then 'eval'; cifar10_speedrun: the
  'eval' row alone). 'warmup' (the compile run on dummy labels) is left out.
  A row may follow other text on its line: cifar10_speedrun.py prints its
  running mean ("Mean accuracy after k runs: ... | Mean time: ...") with
  end='\r', so the next run's row continues that line.
  """
  runs, current = [], None
  for line in text.splitlines():
    m = ROW.search(line)
    if not m:
      continue
    cols = [c.strip() for c in m.groups()]
    if cols[1] == "epoch":
      continue
    if cols[0]:
      current = cols[0]
    if cols[1] != "eval" or current == "warmup":
      continue
    def num(s):
      return float(s) if s else None
    runs.append({"run": current, "train_acc": num(cols[2]),
                 "val_acc": num(cols[3]), "tta_val_acc": num(cols[4]),
                 "time_seconds": num(cols[5])})
  return runs


def mean_std(values: Iterable) -> tuple[float, float, int] | None:
  values = [v for v in values if v is not None]
  if not values:
    return None
  return (statistics.fmean(values),
          statistics.stdev(values) if len(values) > 1 else 0.0, len(values))


def fmt(ms, scale=1.0, digits=2, unit="") -> str:
  if ms is None:
    return "n/a"
  mean, std, n = ms
  return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}{unit} (n={n})"


def refs_report(log: pathlib.Path, json_out: str | None) -> int:
  text = log.read_text(errors="replace") if log.exists() else ""
  runs = parse_refs(text)
  acc = mean_std(r["tta_val_acc"] for r in runs)
  secs = mean_std(r["time_seconds"] for r in runs)
  no_tta = mean_std(r["val_acc"] for r in runs)
  print(f"{log.stem}: {len(runs)} finished runs; TTA accuracy "
        f"{fmt(acc, 100, 2, '%')}; without TTA {fmt(no_tta, 100, 2, '%')}; "
        f"seconds (its own timer, TTA included) {fmt(secs, 1, 3, ' s')}")
  for r in runs:
    print(f"  run {r['run']}: TTA {r['tta_val_acc']}, val {r['val_acc']}, "
          f"{r['time_seconds']} s")
  if json_out:
    pathlib.Path(json_out).write_text(json.dumps(
        {"log": str(log), "runs": runs, "tta_val_acc": acc,
         "val_acc": no_tta, "time_seconds": secs}, indent=1))
  if len(runs) < 3:
    print(f"  fewer than 3 runs finished (see {log.name})")
  return 0


def refs_selftest(upstream: pathlib.Path) -> int:
  """Prints fake three-run tables with the upstream file's own print code
  (both scripts' layouts) and checks that parse_refs reads them back."""
  tree = ast.parse(upstream.read_text())
  wanted = {"print_columns", "print_training_details", "logging_columns_list"}
  nodes = [n for n in tree.body
           if (isinstance(n, ast.FunctionDef) and n.name in wanted)
           or (isinstance(n, ast.Assign) and any(
               getattr(t, "id", None) in wanted for t in n.targets))]
  found = {getattr(n, "name", None) or n.targets[0].id for n in nodes}
  assert found == wanted, f"{upstream}: found {found} of {wanted}"
  ns: dict = {}
  exec(compile(ast.Module(nodes, []), str(upstream), "exec"), ns)  # noqa: S102
  # Both scripts' layouts: airbench94_muon.py's (a row per epoch, the run's
  # number on the first, then 'eval') and cifar10_speedrun.py's (the 'eval'
  # row alone, with the run's number, then its running mean ending in '\r').
  for per_epoch in (True, False):
    out = io.StringIO()
    real, sys.stdout = sys.stdout, out
    try:
      ns["print_columns"](ns["logging_columns_list"], is_head=True)
      for run, acc in (("warmup", 0.1), (1, 0.9401), (2, 0.9399), (3, 0.94)):
        for epoch in ((0, 1) if per_epoch else ()):
          ns["print_training_details"](
              {"run": run if epoch == 0 else None, "epoch": epoch,
               "train_acc": 0.5, "val_acc": 0.9}, is_final_entry=False)
        ns["print_training_details"](
            {"run": None if per_epoch else run, "epoch": "eval",
             "tta_val_acc": acc, "time_seconds": 2.5, "train_acc": 0.95,
             "val_acc": 0.93}, is_final_entry=True)
        if run != "warmup" and not per_epoch:
          print(f"Mean accuracy after {run} runs: {acc:.6f} | Mean time: "
                "2.500000s", end="\r", flush=True)
    finally:
      sys.stdout = real
    runs = parse_refs(out.getvalue())
    assert [r["run"] for r in runs] == ["1", "2", "3"], (runs, out.getvalue())
    assert runs[0]["tta_val_acc"] == 0.9401 and runs[0]["time_seconds"] == 2.5
  print(f"{upstream.name}: its table parses ({len(runs)} runs, warmup left out)")
  return 0


# --- jaxcnn workdirs ------------------------------------------------------------

def read_metrics(workdir: pathlib.Path) -> list[dict]:
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  out = []
  for line in path.read_text().splitlines():
    try:
      out.append(json.loads(line))
    except ValueError:
      pass  # a line cut short by a kill
  return out


def run_numbers(workdir: pathlib.Path) -> dict:
  """The last evaluation (and TTA evaluation) and the whole run's timing."""
  records = read_metrics(workdir)
  evals = [r for r in records if r.get("kind") == "eval"]
  tta = [r for r in records if r.get("kind") == "eval_tta"]
  timing = [r for r in records if r.get("kind") == "timing"]
  config = {}
  if (workdir / "config.json").exists():
    config = json.loads((workdir / "config.json").read_text())
  train = config.get("train", {})
  out = {"workdir": str(workdir), "batch": train.get("batch_size"),
         "last_train_step": max((r["step"] for r in records
                                 if r.get("kind") == "train"), default=None)}
  if evals:
    e = evals[-1]
    out.update(step=e["step"], epoch=e.get("epoch"),
               raw=e.get("test_accuracy_raw"), ema=e.get("test_accuracy_ema"))
  if tta:
    out.update(tta_raw=tta[-1].get("test_accuracy_raw"),
               tta_ema=tta[-1].get("test_accuracy_ema"),
               tta_seconds=tta[-1].get("seconds"))
  if timing:
    t = timing[-1]
    out.update(train_seconds=t.get("train_seconds"),
               compile_seconds=t.get("compile_seconds"),
               timed_from_step=t.get("from_step"), timed_to_step=t["step"])
    steps = t["step"] - (t.get("from_step") or 0)
    if out["batch"] and t.get("train_seconds"):
      out["images_per_second"] = steps * out["batch"] / t["train_seconds"]
  return out


def pct(x) -> str:
  return "n/a" if x is None else f"{100 * x:.2f}%"


def train_report(workdir: pathlib.Path, curve: str | None) -> int:
  n = run_numbers(workdir)
  if "step" not in n:
    print(f"{workdir}: no evaluation (last train step {n['last_train_step']})")
    return 0
  line = (f"{workdir.name}: step {n['step']} (epoch {n.get('epoch')}), "
          f"test raw {pct(n.get('raw'))}, EMA {pct(n.get('ema'))}")
  if "tta_raw" in n:
    line += f"; TTA raw {pct(n['tta_raw'])}, EMA {pct(n['tta_ema'])}"
  if n.get("train_seconds") is not None:
    line += (f"; training {n['train_seconds']:.1f} s (steps "
             f"{n['timed_from_step']}-{n['timed_to_step']}), compile "
             f"{n['compile_seconds']:.1f} s")
    if n.get("images_per_second"):
      line += f", {n['images_per_second']:,.0f} img/s"
  else:
    line += "; no timing record (stopped before its end, or resumed)"
  print(line)
  if curve:
    evals = [r for r in read_metrics(workdir) if r.get("kind") == "eval"]
    rows = ["epoch\tstep\ttest_accuracy_raw\ttest_accuracy_ema"] + [
        f"{r.get('epoch')}\t{r['step']}\t{r.get('test_accuracy_raw')}\t"
        f"{r.get('test_accuracy_ema')}" for r in evals]
    pathlib.Path(curve + ".tsv").write_text("\n".join(rows) + "\n")
    try:
      import matplotlib
      matplotlib.use("Agg")
      import matplotlib.pyplot as plt
      fig, ax = plt.subplots(figsize=(7, 4.5))
      x = [r.get("epoch") or r["step"] for r in evals]
      for key, style in (("test_accuracy_raw", "o-"), ("test_accuracy_ema", "s-")):
        ax.plot(x, [100 * (r.get(key) or math.nan) for r in evals], style,
                markersize=3, label=key.rsplit("_", 1)[1])
      ax.set_xlabel("epoch")
      ax.set_ylabel("test top-1 accuracy (%)")
      ax.set_title(str(workdir.name))
      ax.grid(alpha=0.3)
      ax.legend()
      fig.savefig(curve + ".png", dpi=100, bbox_inches="tight")
    except Exception as e:  # pylint: disable=broad-except
      print(f"  (no curve plot: {e})")
    print(f"  accuracy-vs-epoch curve: {len(evals)} points in "
          f"{pathlib.Path(curve).name}.tsv")
  return 0


def seeds_report(workdir: pathlib.Path) -> int:
  dirs = sorted((d for d in workdir.glob("seed*") if d.is_dir()),
                key=lambda d: int(d.name[4:]) if d.name[4:].isdigit() else 0)
  rows = [run_numbers(d) for d in dirs]
  done = [r for r in rows if "step" in r]
  print(f"{workdir.name}: {len(done)} of {len(rows)} seed workdirs evaluated"
        f"{' (seeds.json written)' if (workdir / 'seeds.json').exists() else ''}")
  for r in done:
    print(f"  {pathlib.Path(r['workdir']).name}: raw {pct(r.get('raw'))}, EMA "
          f"{pct(r.get('ema'))}, TTA raw {pct(r.get('tta_raw'))}, EMA "
          f"{pct(r.get('tta_ema'))}; train {r.get('train_seconds') or float('nan'):.2f} s, "
          f"compile {r.get('compile_seconds') or float('nan'):.1f} s, "
          f"TTA {r.get('tta_seconds') or float('nan'):.2f} s")
  for key, title, scale, unit, digits in (
      ("tta_raw", "TTA raw", 100, "%", 2), ("tta_ema", "TTA EMA", 100, "%", 2),
      ("raw", "raw", 100, "%", 2), ("ema", "EMA", 100, "%", 2),
      ("train_seconds", "train", 1, " s", 2),
      ("compile_seconds", "compile", 1, " s", 1)):
    print(f"  {title}: {fmt(mean_std(r.get(key) for r in done), scale, digits, unit)}")
  return 0


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_evidence",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True)
  d = sub.add_parser("dry-data")
  d.add_argument("archive")
  d.add_argument("dst", type=pathlib.Path)
  d.add_argument("--train_per_class", type=int, default=50)
  d.add_argument("--test_per_class", type=int, default=20)
  t = sub.add_parser("pt")
  t.add_argument("tools", type=pathlib.Path)
  t.add_argument("data", type=pathlib.Path)
  t.add_argument("dst", type=pathlib.Path)
  r = sub.add_parser("refs")
  r.add_argument("log", type=pathlib.Path)
  r.add_argument("--json", default=None)
  s = sub.add_parser("refs-selftest")
  s.add_argument("upstream", type=pathlib.Path)
  w = sub.add_parser("train")
  w.add_argument("workdir", type=pathlib.Path)
  w.add_argument("--curve", default=None)
  e = sub.add_parser("seeds")
  e.add_argument("workdir", type=pathlib.Path)
  a = p.parse_args(argv)
  if a.command == "dry-data":
    dry_data(a.archive, a.dst, a.train_per_class, a.test_per_class)
    return 0
  if a.command == "pt":
    write_pt(a.tools, a.data, a.dst)
    return 0
  if a.command == "refs":
    return refs_report(a.log, a.json)
  if a.command == "refs-selftest":
    return refs_selftest(a.upstream)
  if a.command == "train":
    return train_report(a.workdir, a.curve)
  return seeds_report(a.workdir)


if __name__ == "__main__":
  sys.exit(main())
