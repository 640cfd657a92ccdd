"""Evaluate a workdir's checkpoint: `python -m jaxcnn.eval --workdir runs/vgg`.

Restores model and config from the checkpoint alone (not the experiment
file), evaluates raw and EMA weights (or their ensemble: --weights)
data-parallel over the local devices, and prints loss, top-1/top-5
accuracy, per-class accuracy and the confusion matrix. Writes
WORKDIR/eval/confusion_step<N>_<weights>.png, and with --all_steps
WORKDIR/eval/accuracy_vs_step.{png,json}. Nothing is written if
anything fails, and checkpoints are only read.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

from jaxcnn import cli


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m jaxcnn.eval", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True,
                 help="a workdir written by python -m jaxcnn.train")
  which = p.add_mutually_exclusive_group()
  which.add_argument("--step", type=cli.step_arg, default=None,
                     help="checkpoint step to evaluate, or 'best': the one "
                     "of the best validation accuracy, kept in WORKDIR/best "
                     "(the latest for a run without a validation split); "
                     "default: the latest")
  which.add_argument("--all_steps", action="store_true",
                     help="evaluate every kept checkpoint and write an "
                     "accuracy-vs-step curve")
  # evaluation.WEIGHT_CHOICES, written out: --help imports no jax.
  p.add_argument("--weights", choices=("raw", "ema", "both", "ensemble", "all"),
                 default="both",
                 help="which weights to evaluate: raw, ema, both (default), "
                 "ensemble (the mean of the raw and EMA weights' predicted "
                 "probabilities: two forward passes an image, each under "
                 "--tta) or all (the three)")
  p.add_argument("--data", default=None,
                 help="evaluate on another source (tfds:NAME | folder:PATH | "
                 "synthetic) with the same classes; default: the run's own, "
                 "with its train/test limits")
  p.add_argument("--data_dir", default=None, help="TFDS data_dir")
  p.add_argument("--split", choices=("test", "validation", "train"),
                 default="test",
                 help="split to evaluate (validation: the run's held-out "
                 "training images, data.validation_size; train: the images "
                 "trained on, not augmented); default test")
  # augment.TTA_MODES, written out: --help imports no jax.
  p.add_argument("--tta", choices=("none", "mirror", "mirror_translate",
                                   "mirror_translate_mean"),
                 default="none",
                 help="test-time augmentation: mean logits of the image and "
                 "its mirror (mirror), and also of both shifted by one pixel "
                 "either way along both axes, borders reflected "
                 "(mirror_translate: half the weight on the unshifted pair, "
                 "airbench's; mirror_translate_mean: the six views alike, "
                 "hiverge's); default none")
  p.add_argument("--tta_fraction", type=float, default=1.0,
                 help="give --tta to only this fraction of the images, the "
                 "least confident (smallest largest softmax probability "
                 "under the plain pass); the others keep their plain "
                 "logits; in (0, 1], default 1: all")
  p.add_argument("--batch_size", type=int, default=0,
                 help="global eval batch (default: the run's "
                 "train.eval_batch_size)")
  p.add_argument("--num_devices", type=int, default=0,
                 help="local devices to evaluate on (default 0: all)")
  p.add_argument("--json", action="store_true",
                 help="print one JSON object instead of tables")
  p.add_argument("--out_dir", default=None,
                 help="where the PNG/JSON files go (default: WORKDIR/eval)")
  p.add_argument("--no_plots", action="store_true",
                 help="write no files (e.g. for a read-only workdir)")
  return p.parse_args(argv)


def _short(name: str, width: int = 6) -> str:
  return name if len(name) <= width else name[:width]


def format_report(report: dict) -> str:
  from jaxcnn.tables import format_table, percent
  lines = [
      f"workdir {report['workdir']}, step {report['step']}: {report['model']}",
      f"evaluated on {report['data']}, {report['split']} split: "
      f"{report['count']} images, {report['num_devices']} "
      f"{report['platform']} device(s), batch {report['batch_size']}"
      + (f", test-time augmentation {report['tta']}"
         + (f" on the {report['tta_fraction']:.0%} least confident images"
            if report.get("tta_fraction", 1) != 1 else "")
         if report.get("tta", "none") != "none" else ""),
  ]
  if len(report["steps"]) > 1:
    weights = report["weights"]
    headers = ["step"] + [f"{w} top-1" for w in weights] + [
        f"{w} loss" for w in weights]
    rows = [[r["step"]] + [percent(r[w]["accuracy"]) for w in weights]
            + [f"{r[w]['loss']:.4f}" for w in weights] for r in report["steps"]]
    lines += ["", "all kept steps", format_table(headers, rows)]
  results = report["results"]
  rows = [[w, f"{r['loss']:.4f}", percent(r["accuracy"]),
           percent(r["top5_accuracy"]),
           f"{sum(r['confusion'][i][i] for i in range(len(r['confusion'])))}"
           f"/{r['count']}"]
          for w, r in results.items()]
  lines += ["", f"step {report['step']}",
            format_table(["weights", "loss", "top-1", "top-5", "correct"], rows)]
  names = report["class_names"]
  rows = [[name] + [percent(results[w]["per_class_accuracy"][i], 1)
                    for w in results] for i, name in enumerate(names)]
  lines += ["", "per-class top-1 accuracy",
            format_table(["class"] + list(results), rows)]
  for w, r in results.items():
    short = [_short(n) for n in names]
    rows = [[names[i]] + row for i, row in enumerate(r["confusion"])]
    lines += ["", f"confusion matrix, {w} weights (rows: true class, "
              "columns: predicted)", format_table(["true \\ pred"] + short, rows)]
  return "\n".join(lines)


def write_outputs(report: dict, out_dir: pathlib.Path) -> list[str]:
  from jaxcnn import plots
  files = []
  step = report["step"]
  for w, r in report["results"].items():
    files.append(plots.confusion_matrix(
        r["confusion"], report["class_names"],
        out_dir / f"confusion_step{step}_{w}.png",
        title=f"{w} weights, step {step}: {r['accuracy']:.2%} top-1 on "
        f"{report['data']} {report['split']}"))
  if len(report["steps"]) > 1:
    files.append(plots.accuracy_curve(
        report["steps"], out_dir / "accuracy_vs_step.png",
        title=f"{report['model']} on {report['data']} {report['split']}"))
    curve = {
        "workdir": report["workdir"], "data": report["data"],
        "split": report["split"], "count": report["count"],
        "steps": [{"step": r["step"],
                   **{w: {k: r[w][k] for k in
                          ("accuracy", "top5_accuracy", "loss")}
                      for w in report["weights"]}}
                  for r in report["steps"]]}
    path = out_dir / "accuracy_vs_step.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(curve, indent=2) + "\n")
    tmp.replace(path)
    files.append(str(path))
  return files


def main(argv=None) -> int:
  args = parse_args(argv)
  from jaxcnn.models import cpu_kernels
  cpu_kernels.prefer_eigen_convolutions()  # Before XLA starts.
  from jaxcnn.evaluation import eval_workdir
  report = eval_workdir(
      args.workdir, step=args.step, all_steps=args.all_steps,
      weights=args.weights, source=args.data, data_dir=args.data_dir,
      split=args.split, batch_size=args.batch_size,
      num_devices=args.num_devices, tta=args.tta,
      tta_fraction=args.tta_fraction,
      log=lambda text: print(text, file=sys.stderr, flush=True))
  files = []
  if not args.no_plots:
    out_dir = pathlib.Path(args.out_dir or pathlib.Path(args.workdir) / "eval")
    files = write_outputs(report, out_dir)
  cli.print_report(report, files, args.json, format_report)
  return 0


if __name__ == "__main__":
  cli.run_main(main, hard_exit=True)
