"""jaxcnn.study_runner: a member's step count comes from state.run_steps on
its resolved config, not from a setup built for it."""
import pathlib

from jaxcnn import state as state_lib
from jaxcnn import studies, study_runner, trainer
from jaxcnn.data import load_from_config


def test_run_study_counts_steps_without_building_a_setup(tmp_path,
                                                         monkeypatch):
  s = studies.Study(
      "toy", question="q", paper="p", base="test",
      members=lambda scale: [
          studies.Member("a", ("train.num_epochs=0", "train.num_steps=5")),
          studies.Member("b", ("train.num_epochs=3", "train.num_steps=0",
                               "data.synthetic_train_size=250"))])

  resolved = []

  def resolve_only(study, scale, runs, datasets):
    # The check's result without its builds: the resolved configs.
    resolved.extend(state_lib.resolve_with_data(
        c, load_from_config(c.data, c.seed)) for _, _, c in runs)
    return list(resolved)

  def no_build(*args, **kwargs):
    raise AssertionError("the runner built a setup")

  seen = {}

  def status(workdir, total_steps):
    seen[workdir.name] = total_steps
    return "done"

  monkeypatch.setattr(study_runner, "check_runs", resolve_only)
  monkeypatch.setattr(state_lib, "build_from_config", no_build)
  monkeypatch.setattr(trainer, "build", no_build)
  monkeypatch.setattr(study_runner, "member_status", status)
  out = study_runner.run_study(s, "tiny", 1, tmp_path / "runs", say=print)
  assert set(out.values()) == {"done"}
  b = resolved[1]  # Three epochs of whole batches: 250 // 32 = 7 each.
  assert b.data.train_size and b.data.train_size % b.train.batch_size
  assert seen == {"a_seed0": 5,
                  "b_seed0": 3 * (b.data.train_size // b.train.batch_size)}


def test_a_sweep_trains_every_rate_once_then_the_best_with_more_seeds(
    tmp_path, monkeypatch):
  # Study.sweep: each GROUP@LR member trains seed 0; the member of each
  # group with the fewest epochs to 60% training error on seed 0 trains the
  # other seeds. The training is faked: each run logs the epoch its
  # (rate, seed) reaches 60% error at; seed 1 of every rate is made faster
  # than any seed 0, so a choice that looked at it would change.
  import json
  from jaxcnn import study_metrics, study_report
  epochs_to_60 = {("g@0.1", 0): 2.0, ("g@0.2", 0): 1.0, ("g@0.4", 0): None,
                  ("h@0.1", 0): 3.0, ("h@0.2", 0): 4.0, ("h@0.4", 0): 5.0}
  trained = []

  def fake_train(config, workdir, data=None):
    name, seed = workdir.rsplit("_seed", 1)
    name, seed = name.split("/")[-1], int(seed)
    trained.append((name, seed))
    hit = epochs_to_60.get((name, seed), 0.5)
    pathlib.Path(workdir).mkdir(parents=True)
    records = [{"kind": "train", "step": 10 * e, "epoch": e, "loss": 1.0,
                "accuracy": 0.5 if hit is not None and e >= hit else 0.1,
                "sec_per_batch": 0.1, "time": e} for e in (0.5, 1, 2, 3, 4, 5, 6)]
    records.append({"kind": "eval", "step": 60, "epoch": 6,
                    "test_accuracy_raw": 0.5, "test_accuracy_ema": 0.5})
    pathlib.Path(workdir, "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records))
    return {}

  s = studies.Study(
      "toy_sweep", question="q", paper="p", base="test",
      members=lambda scale: [studies.Member(f"{g}@{lr}",
                                            (f"optim.groups.*.lr={lr}",
                                             "train.num_epochs=6"))
                             for g in "gh" for lr in (0.1, 0.2, 0.4)],
      sweep={"tiny": "epochs_to_60"}, extras=("best_lr",))
  monkeypatch.setattr(trainer, "train_and_evaluate", fake_train)
  # Done once trained (the fake writes no checkpoint).
  monkeypatch.setattr(study_runner, "member_status", lambda workdir, total: (
      "done" if (workdir / "metrics.jsonl").exists() else "new"))
  root = tmp_path / "runs"
  study_runner.run_study(s, "tiny", 3, root, say=print)
  assert trained == [(f"{g}@{lr}", 0) for g in "gh" for lr in (0.1, 0.2, 0.4)] \
      + [("g@0.2", 1), ("g@0.2", 2), ("h@0.1", 1), ("h@0.1", 2)]
  entries = study_metrics.collect(s, "tiny", 3, root)
  best = study_metrics.best_of_groups(entries, "epochs_to_60")
  assert {g: e["name"] for g, e in best.items()} == {"g": "g@0.2",
                                                      "h": "h@0.1"}
  # Run again: everything is done, nothing trains.
  trained.clear()
  study_runner.run_study(s, "tiny", 3, root, say=print)
  assert trained == []
  # The report's table: the rates with seed 0's epochs, the chosen one's
  # mean over its 3 seeds (1.0, 0.5, 0.5), h's as a multiple of g's.
  table = study_report._best_lr_table(entries, 0.6, "epochs_to_60")
  rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
          for line in table.splitlines()[2:]}
  assert rows["g"][1] == "0.2" and rows["g"][3] == "3"
  assert rows["g"][2].startswith("0.1: 2.00; 0.2: 1.00; 0.4: never in 6")
  assert rows["g"][4] == "0.67 ± 0.29"
  assert rows["h"][1] == "0.1" and rows["h"][6] == f"{(4 / 3) / (2 / 3):.2f}"
