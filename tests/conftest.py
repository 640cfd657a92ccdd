"""Test setup: 4 fake CPU devices and XLA's Eigen convolutions (as every
entry point asks for them), set before XLA starts."""
import os
import pathlib

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

from jaxcnn.models import cpu_kernels  # noqa: E402

cpu_kernels.prefer_eigen_convolutions()

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
REAL_DATA = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg"


@pytest.fixture
def real_data_dir():
  if not (REAL_DATA / "train").is_dir():
    pytest.skip(f"real CIFAR-10 images not found at {REAL_DATA}")
  return REAL_DATA


def pytest_collection_modifyitems(config, items):
  """Tests marked `slow` run only when asked for: `pytest -m slow`."""
  if "slow" in (config.getoption("markexpr") or ""):
    return
  skip = pytest.mark.skip(reason="slow: run with -m slow")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)
