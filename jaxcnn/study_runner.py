"""Running a study: every (member, seed) is an ordinary training run in its
own workdir, ROOT/study_NAME/<member>_seed<k>; finished runs are skipped and
unfinished ones resume from their checkpoints."""
from __future__ import annotations

import json
import pathlib
import sys
import time
from typing import Any, Sequence

from jaxcnn.config import Config
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
  if steps and steps[-1] == total_steps and any(
      r["step"] == total_steps for r in reporting.read_metrics(workdir, "eval")):
    return "done"
  return "partial" if steps else "new"


def run_study(study: Study, scale: str, seeds: int, root, *,
              data: str | None = None, only: Sequence[str] | None = None,
              retry_failed: bool = False, say=None) -> dict:
  """Trains every unfinished (member, seed). Returns {workdir: status}.

  `data` replaces the base experiment's data source (see `member_configs`).
  """
  from jaxcnn import trainer
  from jaxcnn.data import load_from_config
  say = say or (lambda text: print(text, file=sys.stderr, flush=True))
  runs = member_configs(study, scale, seeds, data, only)
  datasets: dict[str, Any] = {}  # Members on the same data load it once.
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
    _write_status(workdir, wall_seconds=read_status(workdir).get(
        "wall_seconds", 0.0) + time.time() - t0)
    out[str(workdir)] = status
  return out


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
