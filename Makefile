# Two entry points, each working from a fresh clone on its own:
#   make train   -> python -m jaxcnn.train --exp vgg   (ARGS="..." adds flags)
#   make test    -> the test suite on 4 fake CPU devices
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXP ?= vgg
ARGS ?=

.PHONY: train test

# Both entry points install requirements.lock, the exact versions the suite
# was checked with (requirements.txt holds the ranges it was cut from); either
# file changing reinstalls.
$(VENV)/.installed: requirements.lock requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	touch $@

train: $(VENV)/.installed
	$(PY) -m jaxcnn.train --exp $(EXP) $(ARGS)

# Two pytest workers (pytest-xdist), one per core of the 2-core CI machine
# (3 workers and --dist worksteal were each slower there: 492 s and 449 s
# against 385 s; 3 workers again on 2026-12-03, with tests/conftest.py's
# level-0 compiles: 445 s against 378 s); loadgroup keeps the tests marked
# xdist_group("golden") on one worker, where the later ones reuse the
# earlier ones' compiled programs. ARGS="-n 0 ..." runs in one process.
test: $(VENV)/.installed
	XLA_FLAGS=--xla_force_host_platform_device_count=4 $(PY) -m pytest -q -n 2 --dist loadgroup $(ARGS)
