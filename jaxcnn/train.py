"""Train an experiment: `python -m jaxcnn.train --exp vgg`.

Running the same command again on the same workdir resumes from its latest
checkpoint. `--exp runs/vgg/config.json` trains a saved run's config again
(in runs/vgg_rerun unless --workdir says otherwise), --set on top.
"""
from __future__ import annotations

import argparse
import pathlib
import textwrap

from jaxcnn import cli


def _epilog() -> str:
  """The experiments and models there are and where the --set keys are
  documented: read from experiments/, the model registry and
  jaxcnn/defaults.py when --help asks."""
  from jaxcnn.config import experiment_summaries
  summaries = experiment_summaries()
  width = max((len(n) for n in summaries), default=0)
  lines = textwrap.wrap(
      "experiments (experiments/<name>.py; --exp also takes a path to a .py "
      "file defining get_config(), or a WORKDIR/config.json a run saved):", 79)
  for name, doc in summaries.items():
    lines += textwrap.wrap(doc, 79, initial_indent=f"  {name:<{width}}  ",
                           subsequent_indent=" " * (width + 4)) or [f"  {name}"]
  from jaxcnn import models
  lines += ["", "models (--set model.name=NAME; each one's own fields, "
            "model.NAME.*, are in", "jaxcnn/models/NAME.py):"]
  width = max(len(n) for n in models.REGISTRY)
  for name, spec in models.REGISTRY.items():
    lines += textwrap.wrap(spec.summary, 79,
                           initial_indent=f"  {name:<{width}}  ",
                           subsequent_indent=" " * (width + 4))
  lines += [
      "",
      "--set KEY=VALUE: every key is a field of the config, documented with "
      "its default",
      "in jaxcnn/defaults.py; --print_config prints an experiment's resolved "
      "config with",
      "every key and value, e.g. python -m jaxcnn.train --exp vgg "
      "--print_config",
      "",
      "The optimizer is a tuple of parameter groups (optim.groups; first match "
      "wins),",
      "each with its optimizer, lr, weight decay, schedule and freezing: set a "
      "group's",
      "field by index or name, or every group's with *, e.g.",
      "  --set optim.groups.head.lr=0.5  --set optim.groups.1.weight_decay=0",
      "  --set 'optim.groups.*.optimizer=adam' (a new optimizer brings its own "
      "options;",
      "  those both have keep their values)"]
  return "\n".join(lines)


def default_workdir(exp: str) -> str:
  """runs/<exp> for an experiment; for a saved config.json, runs/<its
  workdir's name>_rerun: the saved run's own workdir would resume it."""
  path = pathlib.Path(exp)
  if path.suffix == ".json":
    name = (path.resolve().parent.name if path.stem == "config"
            else path.stem) or "config"
    return str(pathlib.Path("runs") / f"{name}_rerun")
  return str(pathlib.Path("runs") / path.stem)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m jaxcnn.train", description=__doc__, epilog=_epilog(),
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--exp", required=True,
                 help="experiment name in experiments/ (listed below), a path "
                 "to a .py file defining get_config(), or a config.json saved "
                 "in a workdir (trains that config again)")
  p.add_argument("--workdir", default=None,
                 help="where checkpoints, metrics.jsonl and TensorBoard files "
                 "go (default: runs/<exp>; for a config.json, "
                 "runs/<its workdir's name>_rerun)")
  p.add_argument("--data", default=None,
                 help="data source, overrides data.source: tfds:cifar10 | "
                 "folder:PATH | synthetic")
  p.add_argument("--data_dir", default=None,
                 help="TFDS data_dir (overrides data.data_dir)")
  p.add_argument("--set", dest="overrides", action="append", default=[],
                 metavar="KEY=VALUE",
                 help="override a config field, e.g. --set train.num_epochs=2 "
                 "or --set optim.groups.head.lr=0.5 (repeatable; the keys: "
                 "jaxcnn/defaults.py, --print_config)")
  p.add_argument("--print_config", action="store_true",
                 help="print the resolved config and exit")
  p.add_argument("--seeds", type=int, default=None, metavar="N",
                 help="train N seeds, S..S+N-1 (S: the config's seed, 0 "
                 "unless --set seed=S), one after another in WORKDIR/seed<k> "
                 "(default WORKDIR: runs/<exp>_seeds), each resumable; then "
                 "print each seed's final test accuracy (raw, EMA, and with "
                 "train.final_tta), training, compile and TTA seconds, and "
                 "their mean ± std (also in WORKDIR/seeds.json)")
  multi = p.add_argument_group(
      "multi-process training (one process per host; see README). Defaults "
      "come from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID, "
      "or a SLURM job step")
  multi.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                     help="address of process 0's coordinator service")
  multi.add_argument("--num_processes", type=int, default=None,
                     help="number of processes in the run")
  multi.add_argument("--process_id", type=int, default=None,
                     help="this process's index, 0 .. num_processes-1")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  from jaxcnn.models import cpu_kernels
  cpu_kernels.prefer_eigen_convolutions()  # Before XLA starts.
  from jaxcnn import config as config_lib

  config = config_lib.load_experiment(args.exp)
  overrides = list(args.overrides)
  if args.data is not None:
    overrides.append(f"data.source={args.data}")
  if args.data_dir is not None:
    overrides.append(f"data.data_dir={args.data_dir}")
  config = config_lib.apply_overrides(config, overrides)
  from jaxcnn import models
  # `--set model.vgg.depth=11` on another model would change nothing.
  models.check_overridden_sections(
      config.model, [o.split("=", 1)[0].strip() for o in overrides])
  if args.print_config:
    print(config.to_json())
    return 0
  workdir = args.workdir or default_workdir(args.exp)
  if args.seeds is not None and not args.workdir:
    workdir += "_seeds"
  for folder in (pathlib.Path(workdir), *pathlib.Path(workdir).parents):
    if folder.exists() and not folder.is_dir():
      raise config_lib.ConfigError(
          f"--workdir {workdir}: {folder} is a file, not a folder")
  from jaxcnn import distributed
  try:
    distributed.maybe_initialize(args.coordinator, args.num_processes,
                                 args.process_id)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from None
  if args.seeds is not None:
    from jaxcnn import seeds
    seeds.run_seeds(config, workdir, args.seeds)
    return 0
  from jaxcnn.trainer import train_and_evaluate
  train_and_evaluate(config, workdir)
  return 0


if __name__ == "__main__":
  cli.run_main(main, hard_exit=True)
