# The two commands a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is pinned to the CPU build that lies on this machine kind's disk (see README).
TORCH := torch==2.13.0
WHEELS := $(wildcard /opt/wheels)
PIP_FLAGS := $(if $(WHEELS),--find-links /opt/wheels,)

.PHONY: setup test test-fast demo bench bench-all docs clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(PIP_FLAGS) $(TORCH)
	$(PY) -m pip install --quiet $(PIP_FLAGS) -e '.[test,lmeval,parquet,docs,compressed-tensors,ray]'
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q -n 2 --dist loadgroup

test-fast: setup
	$(PY) -m pytest -q -m "not integration"

demo: setup
	$(VENV)/bin/prunelab demo

# The documentation site, strict: a broken link or a page missing from the nav fails it.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# Every ratio prunelab tracks, one line each (bench/run_all.py): the fast set; BENCH=slow or
# `make bench-all` runs every bench at full size. BENCH_ARGS passes e.g. --calibration FILE.
bench: setup
	$(PY) bench/run_all.py $(if $(filter slow,$(BENCH)),--slow,) $(BENCH_ARGS)

bench-all: setup
	$(PY) bench/run_all.py --slow $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache site
