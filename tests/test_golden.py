"""Golden runs: short fixed trainings whose final numbers and state were
recorded once and must stay the same on every CPU kind these machines have.

A change to what the program computes (a new default, another random
stream, a reordered sum) fails here. If such a change is intended, record
the new values and say why in the commit:

    XLA_FLAGS=--xla_force_host_platform_device_count=4 \\
        python -m tests.test_golden      # rewrites tests/golden/*.json

The state is compared through a summary of every array (tests/golden/):
its shape and dtype exactly, and its sum, Euclidean norm and product with a
fixed +-1 vector within a tolerance. Bit for bit would be too strict: XLA's
CPU code differs in the last bits between CPU kinds (AVX2 against AVX-512,
where it picks other kernels and other summation orders), and those bits
grow over a run. The tolerance (STATE_RTOL, relative to each array's norm)
holds across kinds and still catches a real change:
test_golden_catches_a_real_change trains the tiny run with a learning rate
0.1% off and checks that the comparison fails. Bitwise checks stay where both sides are
computed on one machine (a resumed run against an uninterrupted one).

The values are those of XLA's CPU backend at the jax version recorded below
(other versions or backends may round differently: the test is skipped
there, with a message saying why).
"""
from __future__ import annotations

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from jaxcnn import checkpoint, config as config_lib, trainer

# The golden runs and the old workdirs of tests/test_legacy.py (which resume
# to the golden ends) compile the same programs: under `make test`'s
# `--dist loadgroup` they run on one worker, one after the other, so the
# second compiles nothing (the shared XLA cache of conftest.py).
pytestmark = pytest.mark.xdist_group("golden")

JAX_VERSION = "0.10.2"
GOLDEN_DIR = pathlib.Path(__file__).resolve().parent / "golden"

RUNS = {
    # The tiny model: momentum, warmup + cosine, dropout, EMA, 4 devices, two
    # steps per dispatch (the scanned step), an evaluation every epoch.
    "tiny": ("test", ["train.num_epochs=2", "train.steps_per_dispatch=2"]),
    # The speed recipe at toy size: whitening init from data, Nesterov in
    # per-1024 units, bias lr, freezing, lookahead, label smoothing,
    # alternating flips, reflect crops, the final TTA evaluation.
    "speednet": ("speedrun_airbench94", [
        "model.width=0.125", "data.source=synthetic",
        "data.synthetic_train_size=512", "data.synthetic_test_size=64",
        "train.batch_size=64", "train.num_epochs=0", "train.num_steps=12",
        "train.eval_batch_size=64", "train.log_every_steps=4",
        "train.checkpoint_every_steps=6", "train.progress_bar=false",
        "model.speednet.whiten_images=256", "optim.lookahead_start_epochs=0",
        "optim.groups.whiten_bias.frozen_from_epochs=1"]),
}

# Every array of the state within STATE_RTOL * its norm (sum, norm and
# projection alike); losses within LOSS_RTOL. Measured on a 2-core AVX-512
# machine (2026-12-01), the tiny run's largest drift over all its arrays,
# relative to the array's norm: 1.2e-6 with XLA limited to AVX2 code
# (--xla_cpu_max_isa=AVX2), 1.1e-3 limited to SSE4.2 (no FMA; no machine
# here is that old), 3.9e-2 with the learning rate 0.1% higher (0.05005):
# the tolerance sits between the CPU kinds and a real change.
STATE_RTOL = 1e-3
LOSS_RTOL = 1e-5


def _projection_signs(path: str, size: int) -> np.ndarray:
  """A fixed +-1 vector for one array: seeded by its path, so the same on
  every machine and independent of the other arrays."""
  seed = [ord(c) for c in path]
  return np.random.default_rng(seed).choice(
      np.array([-1.0, 1.0]), size=size)


def summarize(tree) -> dict:
  """{path: [shape, dtype, sum, norm, projection]} for every array of a
  pytree, in float64."""
  out = {}
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    path = jax.tree_util.keystr(key_path)
    a = np.asarray(leaf)
    x = a.astype(np.float64).ravel()
    out[path] = [list(a.shape), str(a.dtype), float(x.sum()),
                 float(np.linalg.norm(x)),
                 float(x @ _projection_signs(path, x.size))]
  return out


def _state(workdir) -> dict:
  return checkpoint.restore_latest_good(
      workdir, lambda c: trainer.create_train_state(trainer.build(c)).to_dict()
  ).state


def summary_tree(state: dict) -> dict:
  """The parts of a state the golden runs record: step, parameters,
  statistics, lookahead, and the EMA of the parameters under the key
  'ema_params'. The optimizer's own state (momentum traces, counters) is
  left out: its structure follows the chain's (optax.partition over the
  parameter groups), not the mathematics."""
  from jaxcnn import optim
  out = {k: v for k, v in state.items() if k not in ("opt_state", "rng")}
  out["rng"] = state["rng"]
  out["ema_params"] = optim.ema_params(state["opt_state"])
  return out


def state_summary(workdir) -> dict:
  """`summarize` of the latest checkpoint's state (`summary_tree`)."""
  return summarize(summary_tree(_state(workdir)))


def compare_states(got: dict, want: dict, rtol: float = STATE_RTOL
                   ) -> list[str]:
  """The differences between two `summarize` results, one line each: an
  array missing on either side, another shape or dtype, or a sum, norm or
  projection further apart than rtol * the array's norm (plus a floor for
  arrays that are all zeros)."""
  problems = [f"{p}: missing" for p in want if p not in got]
  problems += [f"{p}: not in the golden state" for p in got if p not in want]
  for path in want:
    if path not in got:
      continue
    g, w = got[path], want[path]
    if g[:2] != w[:2]:
      problems.append(f"{path}: shape/dtype {g[:2]} != {w[:2]}")
      continue
    scale = max(abs(w[3]), 1e-12)
    for name, a, b in zip(("sum", "norm", "projection"), g[2:], w[2:]):
      if abs(a - b) > rtol * scale:
        problems.append(f"{path}: {name} {a!r} != {b!r} (tolerance "
                        f"{rtol * scale:.3g})")
  return problems


def fingerprint(name: str, workdir, extra=()) -> dict:
  exp, overrides = RUNS[name]
  config = config_lib.apply_overrides(config_lib.load_experiment(exp),
                                      list(overrides) + list(extra))
  result = trainer.train_and_evaluate(config, str(workdir))
  out = {"step": int(result["step"])}
  for weights in ("raw", "ema"):
    for key in ("loss", "accuracy"):
      out[f"{weights}_{key}"] = float(result[weights][key])
  if "tta" in result:
    out["tta_raw_accuracy"] = float(result["tta"]["raw"]["accuracy"])
  out["state"] = state_summary(workdir)
  return out


def compare(got: dict, want: dict) -> list[str]:
  """Every difference between two fingerprints beyond the tolerances.
  Accuracies are fractions of the test images: they may differ by one image
  (`one_image`: a logit within the last bits of the boundary), no more."""
  problems = compare_states(got["state"], want["state"])
  if got["step"] != want["step"]:
    problems.append(f"step {got['step']} != {want['step']}")
  for key, value in want.items():
    if key.endswith("_loss"):
      close = abs(got[key] - value) <= LOSS_RTOL * abs(value)
    elif key.endswith("_accuracy"):
      close = abs(got[key] - value) <= want["one_image"] * (1 + 1e-6)
    else:
      continue
    if not close:
      problems.append(f"{key} {got[key]!r} != {value!r}")
  return problems


def golden(name: str) -> dict:
  return json.loads((GOLDEN_DIR / f"{name}.json").read_text())


def _skip_elsewhere():
  if jax.__version__ != JAX_VERSION or jax.default_backend() != "cpu":
    pytest.skip(f"golden values recorded on jax {JAX_VERSION} CPU; this is "
                f"jax {jax.__version__} {jax.default_backend()}")


@pytest.mark.parametrize("name", sorted(RUNS))
def test_golden_run(name, tmp_path):
  _skip_elsewhere()
  want = golden(name)
  assert compare(fingerprint(name, tmp_path / name), want) == []
  if name != "speednet":
    return
  # The toy speed recipe also resumes bit for bit (both sides computed
  # here): lookahead, alternating flips and the whitening bias frozen after
  # epoch 1 (step 8) are functions of the step and the saved state, so
  # going back to its checkpoint at step 6 and training on ends where the
  # uninterrupted run ended.
  workdir = tmp_path / name
  assert checkpoint.saved_steps(workdir) == [6, 12]
  full = _state(workdir)
  # Lookahead ran: the last step writes the slow copy into the live weights.
  assert len(jax.tree.leaves(full["lookahead"])) > 0
  for a, b in zip(jax.tree.leaves(full["params"]),
                  jax.tree.leaves(full["lookahead"]["params"])):
    np.testing.assert_array_equal(a, b)
  shutil.rmtree(checkpoint.checkpoint_dir(workdir) / "12")
  exp, overrides = RUNS[name]
  trainer.train_and_evaluate(config_lib.apply_overrides(
      config_lib.load_experiment(exp), overrides), str(workdir))
  resumed = _state(workdir)
  assert int(resumed["step"]) == 12
  assert jax.tree.structure(full) == jax.tree.structure(resumed)
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)


def test_golden_catches_a_real_change(tmp_path):
  """The tolerance is tight enough: the tiny run with its learning rate
  changed by 0.1% fails the comparison, on its state (the losses and
  accuracies of so short a run might not move)."""
  _skip_elsewhere()
  want = golden("tiny")
  got = fingerprint("tiny", tmp_path / "tiny",
                    extra=["optim.groups.*.lr=0.05005"])
  problems = compare_states(got["state"], want["state"])
  assert problems, "a 0.1% learning-rate change went unnoticed"


def test_compare_states_formula():
  """compare_states against hand-made summaries: within rtol * norm passes,
  beyond fails, a shape change and a missing array are named."""
  x = np.arange(6, dtype=np.float32).reshape(2, 3)
  base = summarize({"w": x})
  norm = base["['w']"][3]
  near = summarize({"w": x + np.float32(0.5 * STATE_RTOL * norm / 6)})
  far = summarize({"w": x + np.float32(3 * STATE_RTOL * norm / 6)})
  assert compare_states(near, base) == []
  assert any("sum" in p for p in compare_states(far, base))
  assert "shape/dtype" in compare_states(summarize({"w": x.T}), base)[0]
  assert compare_states({}, base) == ["['w']: missing"]


def record() -> None:
  """Writes tests/golden/<run>.json from runs on this machine."""
  import tempfile
  GOLDEN_DIR.mkdir(exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    for name in sorted(RUNS):
      out = fingerprint(name, f"{tmp}/{name}")
      test_size = dict(config_lib.apply_overrides(
          config_lib.load_experiment(RUNS[name][0]), RUNS[name][1]
      ).flat_items())["data.synthetic_test_size"]
      out["one_image"] = 1.0 / test_size
      (GOLDEN_DIR / f"{name}.json").write_text(
          json.dumps(out, indent=1, sort_keys=True) + "\n")
      print(name, {k: v for k, v in out.items() if k != "state"})


if __name__ == "__main__":
  from jaxcnn.models import cpu_kernels
  cpu_kernels.prefer_eigen_convolutions()
  record()
