"""Test-time augmentation of every test image against TTA of only the least
confident ones (train.final_tta_fraction, hiverge's selective TTA), on one
trained workdir: accuracy (raw and EMA) and seconds of each, side by side,
in one process, taking turns.

    python -m benchmarks.tta_fraction --workdir runs/speedrun
    python -m benchmarks.tta_fraction --workdir W --fractions 1,0.5,0.25 \\
        --tta mirror_translate --repeats 3 --data folder:PATH

Each (fraction, weights) pass is compiled and run once untimed, then timed
`--repeats` times in turn with the others; the seconds are the median pass
over the whole test split (the plain pass included, as the trainer's final
TTA evaluation counts it).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def parse_args(argv=None):
  p = argparse.ArgumentParser(prog="python -m benchmarks.tta_fraction",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="a trained run's workdir")
  p.add_argument("--fractions", default="1,0.25",
                 help="comma-separated fractions in (0, 1] (default 1,0.25)")
  p.add_argument("--tta", default="mirror_translate",
                 choices=("mirror", "mirror_translate",
                          "mirror_translate_mean"),
                 help="the augmentation (default mirror_translate)")
  p.add_argument("--repeats", type=int, default=2,
                 help="timed passes of each (default 2)")
  p.add_argument("--data", default=None,
                 help="evaluate on another source (as jaxcnn.eval --data)")
  p.add_argument("--batch_size", type=int, default=0,
                 help="eval batch (default: the run's train.eval_batch_size)")
  p.add_argument("--json", action="store_true", help="print one JSON object")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  from jaxcnn.models import cpu_kernels
  cpu_kernels.prefer_eigen_convolutions()  # Before XLA starts.
  import jax
  from jaxcnn import parallel
  from jaxcnn.config import ConfigError
  from jaxcnn.eval_step import check_tta_fraction, summarize_eval
  from jaxcnn.evaluation import load_eval_data, make_evaluator, split_arrays
  from jaxcnn.restore import open_reader
  from jaxcnn.state import variables_of

  fractions = [check_tta_fraction(f.strip(), "--fractions")
               for f in args.fractions.split(",") if f.strip()]
  if not fractions:
    raise ConfigError("--fractions is empty")
  if args.repeats < 1:
    raise ConfigError(f"--repeats must be >= 1, got {args.repeats}")
  reader, step = open_reader(args.workdir, None)
  with reader:
    config, state, step = reader.restore(reader.steps[-1])
  dataset, _ = load_eval_data(config, args.data, None)
  images, labels = split_arrays(dataset, "test")
  evaluator = make_evaluator(config, images, labels,
                             batch_size=args.batch_size, tta=args.tta)
  local = parallel.local_part(evaluator.devices)
  weights = {w: parallel.replicate(variables_of(state, w), local)
             for w in ("raw", "ema")}
  cases = [(f, w) for f in fractions for w in weights]
  accuracy, seconds = {}, {c: [] for c in cases}
  for f, w in cases:  # Compile and warm up; the figures are the same later.
    accuracy[(f, w)] = summarize_eval(evaluator.totals(
        weights[w], args.tta, tta_fraction=f))["accuracy"]
  for _ in range(args.repeats):
    for f, w in cases:
      t0 = time.perf_counter()
      evaluator.totals(weights[w], args.tta, tta_fraction=f)
      seconds[(f, w)].append(time.perf_counter() - t0)
  rows = [{"fraction": f, "weights": w, "accuracy": accuracy[(f, w)],
           "seconds": statistics.median(seconds[(f, w)]),
           "all_seconds": seconds[(f, w)]} for f, w in cases]
  if args.json:
    print(json.dumps({"workdir": args.workdir, "step": step, "tta": args.tta,
                      "count": evaluator.count,
                      "device": str(jax.devices()[0].device_kind),
                      "rows": rows}, indent=1))
    return 0
  print(f"{args.workdir} step {step}, {evaluator.count} test images, TTA "
        f"{args.tta}, {len(evaluator.devices)} {evaluator.devices[0].platform} "
        f"device(s), median of {args.repeats}")
  full = {r["weights"]: r["seconds"] for r in rows if r["fraction"] == 1.0}
  for r in rows:
    ratio = (f"  {r['seconds'] / full[r['weights']]:.2f}x of all"
             if r["weights"] in full and r["fraction"] != 1.0 else "")
    print(f"  fraction {r['fraction']:<5g} {r['weights']:<3}  accuracy "
          f"{r['accuracy']:.2%}  {r['seconds']:.2f} s{ratio}")
  return 0


if __name__ == "__main__":
  from jaxcnn import cli
  cli.run_main(main, hard_exit=True)
