"""Two real processes on 127.0.0.1 (gloo collectives, two fake CPU devices
each) against one process with four devices: the same global batches, so the
same parameters and the same evaluation."""
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from jaxcnn import checkpoint, config as config_lib, trainer

from conftest import checkpoint_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The final TTA on the least confident half: chosen over the images of both
# processes.
RUN = ["train.eval_every_epochs=1", "train.checkpoint_every_steps=16",
       "optim.schedule=exponential", "train.final_tta=mirror",
       "train.final_tta_fraction=0.5"]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_two_processes(workdir, *overrides):
  port = free_port()
  env = dict(os.environ,
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  procs = []
  for pid in range(2):
    args = [sys.executable, "-m", "jaxcnn.train", "--exp", "test",
            "--workdir", str(workdir), "--coordinator", f"127.0.0.1:{port}",
            "--num_processes", "2", "--process_id", str(pid)]
    for o in overrides:
      args += ["--set", o]
    procs.append(subprocess.Popen(args, cwd=REPO, env=env, text=True,
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE))
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err
  return [err for _, err in outs]


def assert_close(a, b):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a),
                          jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5,
                               err_msg=jax.tree_util.keystr(path))


def test_two_processes_equal_one_process(tmp_path):
  # The reference: one process, four devices, 16 steps. The two processes
  # (two devices each) train the same 16 steps through jax.distributed, save
  # one checkpoint (process 0 writes) and evaluate every test image once
  # across the processes. (Resuming is the same code path as on one process,
  # tested bit for bit in tests/test_train.py, test_reliability.py and
  # test_golden.py.)
  one = tmp_path / "one"
  reference = trainer.train_and_evaluate(
      config_lib.apply_overrides(config_lib.load_experiment("test"),
                                 RUN + ["train.num_steps=16"]), str(one))

  two = tmp_path / "two"
  errs = run_two_processes(two, *RUN, "train.num_steps=16")
  # Process 0 reports; process 1 stays quiet.
  assert "final: step 16" in errs[0] and "final:" not in errs[1]
  assert "4 cpu device(s)" in errs[0]
  assert checkpoint.saved_steps(two)[-1] == 16
  assert_close(checkpoint_state(two), checkpoint_state(one))
  final = [l for l in errs[0].splitlines() if l.startswith("final:")][0]
  assert "on 200 images" in final
  assert f"raw {reference['raw']['accuracy']:.2%}" in final
  tta = [l for l in errs[0].splitlines() if "with TTA (mirror on the 50%" in l]
  assert len(tta) == 1, errs[0]
  assert (f"raw {reference['tta']['raw']['accuracy']:.2%}, EMA "
          f"{reference['tta']['ema']['accuracy']:.2%}") in tta[0]
