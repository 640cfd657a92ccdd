"""jaxcnn.study_runner: a member's step count comes from state.run_steps on
its resolved config, not from a setup built for it."""
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
