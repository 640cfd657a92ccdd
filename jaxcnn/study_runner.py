"""Running a study: every (member, seed) is an ordinary training run in its
own workdir, ROOT/study_NAME/<member>_seed<k>; finished runs are skipped and
unfinished ones resume from their checkpoints."""
from __future__ import annotations

import json
import pathlib
import sys
import time
from typing import Any, Sequence

from jaxcnn.config import Config, ConfigError
from jaxcnn.studies import Member, Study, member_configs

# Per workdir: whether the run failed (and why) and its summed wall time.
STATUS_FILE = "study_status.json"


def workdir_of(root, study: Study, member: Member, seed: int) -> pathlib.Path:
  return pathlib.Path(root) / f"study_{study.name}" / f"{member.name}_seed{seed}"


def member_status(workdir, total_steps: int) -> str:
  """'done' | 'failed' | 'partial' | 'new'."""
  from jaxcnn import checkpoint, reporting
  workdir = pathlib.Path(workdir)
  if read_status(workdir).get("failed"):
    return "failed"
  steps = checkpoint.saved_steps(workdir)
  # The end: the last step, or the step a train.stop_at_train_error run
  # reached its target at (its 'target' record).
  ends = {total_steps} | {r["step"] for r in
                          reporting.read_metrics(workdir, "target")}
  if steps and steps[-1] in ends and any(
      r["step"] == steps[-1] for r in reporting.read_metrics(workdir, "eval")):
    return "done"
  return "partial" if steps else "new"


def run_study(study: Study, scale: str, seeds: int, root, *,
              data: str | None = None, only: Sequence[str] | None = None,
              retry_failed: bool = False, say=None) -> dict:
  """Trains every unfinished (member, seed). Returns {workdir: status}.

  `data` replaces the base experiment's data source (see `member_configs`).
  At a scale where the study is a sweep (`Study.sweep`), seeds above 0 are
  trained only for the best member of each group.
  """
  say = say or (lambda text: print(text, file=sys.stderr, flush=True))
  datasets: dict[str, Any] = {}  # Members on the same data load it once.
  on = study.sweep.get(scale)
  if on is None or seeds == 1:
    return _run(study, scale, member_configs(study, scale, seeds, data, only),
                root, datasets, retry_failed, say)
  # A sweep: every member with seed 0, then the best of each group (chosen
  # on seed 0) with the other seeds.
  out = _run(study, scale, member_configs(study, scale, 1, data, only), root,
             datasets, retry_failed, say)
  from jaxcnn.study_metrics import best_of_groups, collect
  best = best_of_groups(collect(study, scale, 1, root, only), on)
  chosen = [e["name"] for e in best.values() if e is not None]
  say(f"sweep of {study.name}: best on {on}: "
      + (", ".join(chosen) or "none (no member finished)"))
  if chosen:
    out.update(_run(study, scale,
                    member_configs(study, scale, seeds, data, chosen), root,
                    datasets, retry_failed, say))
  return out


def _run(study: Study, scale: str, runs: list, root, datasets: dict,
         retry_failed: bool, say) -> dict:
  from jaxcnn import state as state_lib
  from jaxcnn import trainer
  resolved = check_runs(study, scale, runs, datasets)
  out = {}
  for i, ((member, seed, config), full) in enumerate(zip(runs, resolved), 1):
    workdir = workdir_of(root, study, member, seed)
    key = _data_key(config)
    # The run's own setup is built by train_and_evaluate, once; the step
    # count needs none.
    status = member_status(workdir, state_lib.run_steps(full).total_steps)
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
    _write_status(workdir, wall_seconds=read_status(workdir).get(
        "wall_seconds", 0.0) + time.time() - t0)
    out[str(workdir)] = status
  return out


def check_runs(study: Study, scale: str,
               runs: Sequence[tuple[Member, int, Config]],
               datasets: dict[str, Any]) -> list:
  """Builds every run of the study before the first one trains (its data,
  config checks, model, optimizer and schedule, and the shapes of its
  initial state through jax.eval_shape: nothing is computed), so a member
  that cannot run stops the study at once instead of hours into it.
  Returns the runs' resolved configs (the data's fields filled in: what
  state.run_steps counts the steps of); the Setups built to check them are
  let go. `datasets` caches the data by
  `_data_key`; the runs load it from there.

  A data problem (no data, a bad folder) propagates as it is: it is not a
  member's fault. A member that does not build is a ConfigError naming it.
  """
  import jax
  from jaxcnn import state as state_lib
  from jaxcnn import trainer
  from jaxcnn.data import load_from_config
  from jaxcnn.data import channel_stats
  resolved, traced, stats = [], set(), {}
  for member, seed, config in runs:
    key = _data_key(config)
    if key not in datasets:
      datasets[key] = load_from_config(config.data, config.seed)
    where = f"study {study.name} at scale {scale}, member {member.name}"
    try:
      if not config.data.channel_mean:
        # The statistics the build would compute, once per data set.
        if key not in stats:
          mean, std = channel_stats(datasets[key].train_images)
          stats[key] = (tuple(round(float(v), 6) for v in mean),
                        tuple(round(float(v), 6) for v in std))
        config = config.copy()
        config.data.channel_mean, config.data.channel_std = stats[key]
      setup = trainer.build(config, datasets[key])
      # Seeds change no shape: each distinct model and optimizer is traced
      # once: the optimizer's state on the model's parameter shapes (the
      # parameters themselves need no second trace).
      shape_key = json.dumps([setup.config.model.to_dict(),
                              setup.config.optim.to_dict(),
                              list(setup.image_shape), setup.total_steps],
                             sort_keys=True, default=str)
      if shape_key not in traced:
        jax.eval_shape(setup.tx.init,
                       state_lib.param_shapes(setup.model, setup.config))
        traced.add(shape_key)
    except Exception as e:  # Whatever stops a build stops this member.
      text = str(e).strip().splitlines()[0] if str(e).strip() else ""
      raise ConfigError(
          f"{where} cannot run, so nothing was trained: "
          f"{type(e).__name__}: {text}"
          + (" (run the others with --members)" if len(runs) > 1 else "")
      ) from e
    resolved.append(setup.config)
  return resolved


def _data_key(config: Config) -> str:
  d = config.data
  return json.dumps([d.source, d.data_dir, d.train_limit, d.test_limit,
                     d.validation_size,
                     d.synthetic_train_size, d.synthetic_test_size,
                     config.seed if d.source == "synthetic" else 0])


def read_status(workdir) -> dict:
  path = pathlib.Path(workdir) / STATUS_FILE
  return json.loads(path.read_text()) if path.exists() else {}


def _write_status(workdir: pathlib.Path, **fields) -> None:
  status = read_status(workdir)
  status.update(fields)
  (workdir / STATUS_FILE).write_text(json.dumps(status, indent=1))
