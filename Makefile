# The README's commands. Everything installs into .venv from constraints.txt (what CI tested).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
FOPT   := $(VENV)/bin/fopt
STAMP  := $(VENV)/.fopt-installed
DEMO_OUT ?= artifacts/demo

.PHONY: install demo test test-slow test-faults test-all bench clean mutate

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,cpu]'
	touch $(STAMP)

install: $(STAMP)

# The main job: the whole pipeline on the embedded synthetic dataset. Shorter training than
# `fopt pipeline`'s defaults (8 epochs, 150 images per class) keeps it near 10 minutes on 2 cores.
DEMO_ARGS ?= --epochs 5 --synth-per-class 120
demo: $(STAMP)
	$(FOPT) pipeline --out $(DEMO_OUT) $(DEMO_ARGS)

# Fast test suite (slow/GPU tests skip themselves).
test: $(STAMP)
	$(PY) -m pytest -q

# Only the tests marked slow (CI runs them after `make test`): every registry model exported at
# 224 px, FLOPs against fvcore/ptflops, DDP failure modes, the slow fault cases.
test-slow: $(STAMP)
	FOPT_SLOW=1 $(PY) -m pytest -q -m slow

# The whole fault suite (kill -9, disk full, concurrent runs), slow cases included (~5 min).
test-faults: $(STAMP)
	FOPT_SLOW=1 $(PY) -m pytest -q tests/faults

# Everything, including tests marked slow.
test-all: $(STAMP)
	FOPT_SLOW=1 $(PY) -m pytest -q

# Speed and estimate-quality benchmarks; JSON and plots under artifacts/bench/.
bench: $(STAMP)
	$(PY) benchmarks/run_all.py --out artifacts/bench

# Mutation testing of the core modules (not part of `make test`); report under artifacts/mutate/.
# MUTATE_ARGS e.g. "--modules timing,receptive --limit 20" (default: 8 mutants per module).
MUTATE_ARGS ?=
mutate: $(STAMP)
	$(PY) benchmarks/mutate.py --out artifacts/mutate $(MUTATE_ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
