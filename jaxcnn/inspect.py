"""Compare a checkpoint's raw and EMA weights:
`python -m jaxcnn.inspect --workdir runs/vgg`.

One row per tensor: shape, parameter count, L2 norm of raw and EMA, their L2
distance, relative difference (distance / raw norm), cosine similarity, and
the fraction of near-zero weights (|w| < --near_zero) of each; BatchNorm
running statistics against their EMA where the model has BatchNorm; then a
one-line summary. --plot writes WORKDIR/inspect/relative_difference_step<N>.png
(one bar per tensor, in the model's layer order) and raw-vs-EMA histograms
(--layer NAME [NAME ...]: one panel per tensor; default: the weight matrix
that differs most); --eval adds the test accuracy of each weight set.

The numbers come from jaxcnn.inspection (compare_weights,
summarize_comparison, inspect_workdir), importable for notebooks.
"""
from __future__ import annotations

import argparse
import pathlib

from jaxcnn import cli


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m jaxcnn.inspect", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True,
                 help="a workdir written by python -m jaxcnn.train")
  p.add_argument("--step", type=cli.step_arg, default=None,
                 help="checkpoint step, or 'best' (the best validation "
                 "accuracy's, WORKDIR/best; the latest without a validation "
                 "split); default: the latest")
  p.add_argument("--json", action="store_true",
                 help="print one JSON object instead of tables")
  p.add_argument("--plot", action="store_true",
                 help="write PNGs of the relative difference per tensor and "
                 "of raw-vs-EMA weight histograms (see --layer)")
  p.add_argument("--layer", nargs="+", action="extend", default=None,
                 metavar="NAME",
                 help="tensors for the histograms, e.g. conv1/kernel "
                 "conv2/kernel: one panel each in one PNG (default: the "
                 "weight matrix whose EMA differs most)")
  p.add_argument("--eval", action="store_true",
                 help="also evaluate raw and EMA weights on the test split")
  p.add_argument("--near_zero", type=float, default=1e-3,
                 help="|w| below this counts as near zero (default 1e-3)")
  p.add_argument("--data", default=None,
                 help="with --eval: another data source (default: the run's)")
  p.add_argument("--data_dir", default=None, help="TFDS data_dir")
  p.add_argument("--split", choices=("test", "validation", "train"),
                 default="test", help="with --eval: the split to evaluate")
  p.add_argument("--batch_size", type=int, default=0,
                 help="with --eval: global eval batch (default: the run's)")
  p.add_argument("--num_devices", type=int, default=0,
                 help="with --eval: local devices to use (default 0: all)")
  p.add_argument("--out_dir", default=None,
                 help="where --plot writes (default: WORKDIR/inspect)")
  return p.parse_args(argv)


def _g(x: float) -> str:
  return f"{x:.4g}"


def format_report(report: dict) -> str:
  from jaxcnn.tables import format_table, percent
  lines = [f"workdir {report['workdir']}, step {report['step']}: "
           f"{report['model']}; near zero: |w| < {report['near_zero']:g}"]
  headers = ["tensor", "shape", "count", "raw L2", "EMA L2", "L2 dist",
             "rel diff", "cosine", "~0 raw", "~0 EMA"]
  for kind, title in (("param", "parameters"),
                      ("batch_stats", "BatchNorm running statistics "
                       "(raw vs EMA)")):
    rows = [[r["name"], "x".join(str(d) for d in r["shape"]) or "scalar",
             f"{r['count']:,}", _g(r["raw_norm"]), _g(r["ema_norm"]),
             _g(r["distance"]), percent(r["relative_difference"]),
             f"{r['cosine']:.6f}", percent(r["near_zero_raw"], 1),
             percent(r["near_zero_ema"], 1)]
            for r in report["rows"] if r["kind"] == kind]
    if rows:
      lines += ["", title, format_table(headers, rows, "ll" + "r" * 8)]
  if "eval" in report:
    ev = report["eval"]
    rows = [[w, f"{ev[w]['loss']:.4f}", percent(ev[w]["accuracy"]),
             percent(ev[w]["top5_accuracy"]), ev[w]["count"]]
            for w in ("raw", "ema")]
    lines += ["", f"accuracy on {ev['data']} ({ev['split']})",
              format_table(["weights", "loss", "top-1", "top-5", "images"],
                           rows)]
  lines += ["", "summary: " + report["summary"]["line"]]
  return "\n".join(lines)


def write_plots(report: dict, out_dir: pathlib.Path) -> list[str]:
  from jaxcnn import plots
  step = report["step"]
  files = [plots.relative_difference(
      report["rows"], out_dir / f"relative_difference_step{step}.png",
      title=f"EMA vs raw weights, step {step}")]
  hists = report.get("histograms")
  if hists:
    # One tensor keeps its name in the file's; several share one grid.
    name = (f"histogram_step{step}_{hists[0]['name'].replace('/', '_')}.png"
            if len(hists) == 1 else f"histograms_step{step}.png")
    what = hists[0]["name"] if len(hists) == 1 else f"{len(hists)} tensors"
    files.append(plots.weight_histograms(
        hists, out_dir / name, title=f"{what}, step {step}: raw vs EMA"))
  return files


def main(argv=None) -> int:
  args = parse_args(argv)
  from jaxcnn.models import cpu_kernels
  cpu_kernels.prefer_eigen_convolutions()  # Before XLA starts.
  from jaxcnn.inspection import inspect_workdir
  report = inspect_workdir(
      args.workdir, step=args.step, near_zero=args.near_zero,
      with_eval=args.eval, histogram=args.plot, histogram_layer=args.layer,
      source=args.data, data_dir=args.data_dir, split=args.split,
      batch_size=args.batch_size, num_devices=args.num_devices)
  files = []
  if args.plot:
    out_dir = pathlib.Path(args.out_dir or pathlib.Path(args.workdir) / "inspect")
    files = write_plots(report, out_dir)
  cli.print_report(report, files, args.json, format_report)
  return 0


if __name__ == "__main__":
  cli.run_main(main, hard_exit=True)
