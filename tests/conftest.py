"""Test setup: 4 fake CPU devices and XLA's Eigen convolutions (as every
entry point asks for them), set before XLA starts.

Compiled programs go to a persistent XLA cache for the session (a
temporary folder shared by the xdist workers, removed at the end; set
JAX_COMPILATION_CACHE_DIR to keep one between runs). Many tests compile the
same tiny model's step, and the subprocess tests (SIGKILL/resume, two
processes) start the same run several times: each compiles once. The cache
hands back the executable XLA built for the same program, so no result
changes.

XLA's CPU backend compiles at LLVM optimization level 0 in the tests
(`--xla_backend_optimization_level=0`, subprocesses included): the suite's
programs are tiny, so compiling them is most of its time: on the 2-core
Zen 4 machine (2026-12-03) level 0 took the suite from 516 s to 366 s, and
with RUN_FIRST below five runs took 247-422 s (the machine's speed drifts
that much; three of them from fresh clones: 383, 392 and 422 s). The HLO
passes (fusion, layouts) are the same; only the machine code of fused
loops is less optimized, so a test compares two paths compiled the same way
and cross-machine numbers keep their tolerances. JAXCNN_TEST_FULL_OPT=1 (or
an optimization level of your own in XLA_FLAGS) tests the default level."""
import os
import pathlib
import shutil
import tempfile

_flags = (os.environ.get("XLA_FLAGS", "") +
          " --xla_force_host_platform_device_count=4")
if ("xla_backend_optimization_level" not in _flags
    and os.environ.get("JAXCNN_TEST_FULL_OPT", "") in ("", "0")):
  _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One cache for the whole run: pytest-xdist's workers (children of the
# pytest process that started them) share their parent's, so a program one
# worker compiled is not compiled again by the other; only that process
# removes it.
_XDIST_WORKER = "PYTEST_XDIST_WORKER" in os.environ
_SESSION_CACHE = None
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
  _owner = os.getppid() if _XDIST_WORKER else os.getpid()
  _SESSION_CACHE = os.path.join(tempfile.gettempdir(),
                                f"jaxcnn-tests-xla-cache-{_owner}")
  os.makedirs(_SESSION_CACHE, exist_ok=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _SESSION_CACHE
# Every program, however quick to compile (subprocesses inherit these).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import pytest  # noqa: E402

from jaxcnn.models import cpu_kernels  # noqa: E402

cpu_kernels.prefer_eigen_convolutions()

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
REAL_DATA = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg"


@pytest.fixture
def count_calls(monkeypatch):
  """count_calls(module, name, ...) wraps each function to count its calls;
  returns the {name: calls} dict the wrappers fill."""
  calls = {}

  def count(module, *names):
    for name in names:
      real = getattr(module, name)
      calls[name] = 0

      def wrapper(*args, _name=name, _real=real, **kwargs):
        calls[_name] += 1
        return _real(*args, **kwargs)
      monkeypatch.setattr(module, name, wrapper)
    return calls
  return count


def checkpoint_state(workdir, step=None) -> dict:
  """The state of a workdir's latest good checkpoint (or of `step`) as
  numpy arrays, restored through the real path (the tests' files import it:
  `from conftest import checkpoint_state`)."""
  import jax
  import numpy as np

  from jaxcnn import checkpoint, restore
  restored = checkpoint.restore_latest_good(workdir, restore.build_target,
                                            step=step)
  return jax.tree.map(np.asarray, restored.state)


@pytest.fixture
def real_data_dir():
  if not (REAL_DATA / "train").is_dir():
    pytest.skip(f"real CIFAR-10 images not found at {REAL_DATA}")
  return REAL_DATA


# Files whose tests are the longest (15-35 s each, subprocesses and whole
# runs; the golden group is one unit of work): run first, so that the two
# xdist workers do not wait on one of them at the end.
RUN_FIRST = ("test_multiprocess.py", "test_golden.py", "test_legacy.py",
             "test_reliability.py", "test_small_crop.py", "test_checkpoint.py")


def pytest_collection_modifyitems(config, items):
  """The longest files first (RUN_FIRST, whole files, so a module's fixtures
  are set up once), the rest in their order. Tests marked `slow` run only
  when asked for: `pytest -m slow`."""
  rank = {name: i for i, name in enumerate(RUN_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(RUN_FIRST)))
  if "slow" in (config.getoption("markexpr") or ""):
    return
  skip = pytest.mark.skip(reason="slow: run with -m slow")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)


def pytest_sessionfinish(session, exitstatus):
  if _SESSION_CACHE is not None and not _XDIST_WORKER:
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)
