"""Studies: sets of ordinary training runs, compared in one report.

    python -m jaxcnn.study NAME [--scale tiny|small|full] [--seeds N]
        [--data SOURCE] [--members a,b] [--root runs] [--out DIR]
        [--report_only] [--retry_failed] [--list]

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
on a 2-core CPU), 'full' (all of CIFAR-10, tens of epochs: a GPU). The data
is the base experiment's, as in training (tfds:cifar10), unless --data says
otherwise (e.g. --data folder:PATH).

Where things are: one file per study in jaxcnn/studies/ (its docstring says
how to add one), the runs in jaxcnn/study_runner.py, the numbers in
jaxcnn/study_metrics.py, the report in jaxcnn/study_report.py.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
import time

from jaxcnn import cli
from jaxcnn.studies import SCALES


def _epilog() -> str:
  """The studies and the question each answers (read from jaxcnn/studies/
  when --help asks)."""
  from jaxcnn import studies
  lines = ["studies (jaxcnn/studies/<name>.py):"]
  for study in studies.all_studies().values():
    lines += textwrap.wrap(study.question, 79,
                           initial_indent=f"  {study.name}: ",
                           subsequent_indent="      ")
  return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m jaxcnn.study", description=__doc__, epilog=_epilog(),
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("name", nargs="?", help="the study (listed below; --list "
                 "lists them too)")
  p.add_argument("--scale", default="small", choices=SCALES,
                 help="how big each run is (default: small): tiny = the tiny "
                 "model on synthetic data, seconds a member (tests); small = "
                 "5000 CIFAR-10 training images for a few epochs, minutes a "
                 "member on a CPU; full = all of CIFAR-10 for tens of epochs "
                 "(a GPU)")
  p.add_argument("--seeds", type=int, default=1,
                 help="train every member with seeds 0..N-1 (default: 1); "
                 "the report gives mean ± std over them")
  p.add_argument("--data", default=None,
                 help="data source for small/full: tfds:cifar10 | "
                 "folder:PATH | synthetic (default: the base experiment's, "
                 "as in training: tfds:cifar10); tiny is synthetic")
  p.add_argument("--members", default=None,
                 help="comma-separated subset of the members to run")
  p.add_argument("--root", default="runs",
                 help="where the member workdirs go (default: runs): "
                 "ROOT/study_NAME/<member>_seed<k>, one training workdir "
                 "each; run again, finished ones are skipped and unfinished "
                 "ones resume")
  p.add_argument("--out", default=None,
                 help="where report.md and plots go (default ROOT/study_NAME)")
  p.add_argument("--report_only", action="store_true",
                 help="write the report from the runs there are; train nothing")
  p.add_argument("--retry_failed", action="store_true",
                 help="train again members that failed (e.g. diverged)")
  p.add_argument("--list", action="store_true", help="list the studies")
  return p.parse_args(argv)


def _training_command(argv) -> str:
  """The command that trains the study: --report_only and --out only say
  where a report goes, so they are left out of the one the report names."""
  words, skip = [], False
  for word in argv:
    if skip or word == "--report_only":
      skip = False
      continue
    if word == "--out":
      skip = True
      continue
    if not word.startswith("--out="):
      words.append(word)
  return "python -m jaxcnn.study " + " ".join(words)


def main(argv=None) -> int:
  from jaxcnn.models import cpu_kernels
  cpu_kernels.prefer_eigen_convolutions()  # Before XLA starts.
  from jaxcnn import studies, study_report, study_runner
  from jaxcnn.config import ConfigError
  args = parse_args(argv)
  if args.list or not args.name:
    for s in studies.all_studies().values():
      print(f"{s.name}: {s.question}")
    return 0
  study = studies.load(args.name)
  if args.seeds < 1:
    raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
  only = args.members.split(",") if args.members else None
  command = _training_command(sys.argv[1:] if argv is None else argv)
  t0 = time.time()
  if not args.report_only:
    study_runner.run_study(study, args.scale, args.seeds, args.root,
                           data=args.data, only=only,
                           retry_failed=args.retry_failed)
  path = study_report.write_report(
      study, args.scale, args.seeds, args.root, args.out, only=only,
      command=command,
      run_seconds=None if args.report_only else time.time() - t0)
  print(path)
  return 0


if __name__ == "__main__":
  cli.run_main(main, hard_exit=True)
