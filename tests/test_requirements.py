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
