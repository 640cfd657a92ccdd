"""requirements.lock (what CI installs) against requirements.txt (the ranges
users may try): every requirement is pinned, inside its range."""
import pathlib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parent.parent


def lines(name):
  for line in (ROOT / name).read_text().splitlines():
    line = line.split("#")[0].strip()
    if line:
      yield line


def test_lock_pins_every_requirement_inside_its_range():
  pins = {}
  for line in lines("requirements.lock"):
    name, sep, version = line.partition("==")
    assert sep and name and version and " " not in line, line
    key = canonicalize_name(name)
    assert key not in pins, f"{name} pinned twice"
    pins[key] = Version(version)
  ranges = [Requirement(line) for line in lines("requirements.txt")]
  assert len(ranges) > 10 and len(pins) >= len(ranges)
  for req in ranges:
    key = canonicalize_name(req.name)
    assert key in pins, f"requirements.lock does not pin {req.name}"
    assert pins[key] in req.specifier, (
        f"requirements.lock pins {req.name}=={pins[key]}, outside "
        f"requirements.txt's {req.specifier}")


def test_pyproject_declares_the_ranges_of_requirements_txt():
  """pyproject.toml (pip install .) and requirements.txt say the same: its
  dependencies are requirements.txt's ranges, less the test tools, which are
  the extra 'test'."""
  import tomllib
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  declared = {canonicalize_name(Requirement(r).name): Requirement(r).specifier
              for r in project["dependencies"]}
  tests = {canonicalize_name(Requirement(r).name): Requirement(r).specifier
           for r in project["optional-dependencies"]["test"]}
  for line in lines("requirements.txt"):
    req = Requirement(line)
    key = canonicalize_name(req.name)
    where = tests if key.startswith("pytest") else declared
    assert key in where, f"pyproject.toml does not declare {req.name}"
    assert where[key] == req.specifier, (req.name, where[key], req.specifier)
  assert len(declared) + len(tests) == len(list(lines("requirements.txt")))


def test_installed_copy_finds_its_experiments(monkeypatch, tmp_path):
  """Outside a checkout (no experiments/ beside the package) the experiment
  files are the package jaxcnn.experiments, where pyproject.toml installs
  them."""
  from jaxcnn import config
  monkeypatch.setattr(config, "REPO_ROOT", tmp_path)
  assert config._experiments_dir() == ROOT / "jaxcnn" / "experiments"
  monkeypatch.setattr(config, "REPO_ROOT", ROOT)
  assert config._experiments_dir() == ROOT / "experiments"
