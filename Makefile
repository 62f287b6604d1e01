# `make install` builds .venv at the repository root; `make test` installs and runs the suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

TORCH_VENV := .venv-torch
TORCH_STAMP := $(TORCH_VENV)/.installed

.PHONY: install test test-fast demo reproduce bench bench-setup bench-attention bench-routing bench-families \
	bench-quality bench-maps bench-report device-wheels clean

install: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,bench]"
	touch $(STAMP)

demo: install
	$(PY) -m apps.demo

# The three papers' claims in miniature, 2 seeds per arm, each claim at its own steps (1 h 52 min on 2 CPU
# cores, measured; resumable, --claims= selects some).
reproduce: install
	$(PY) -m benchmarks.reproduce

test: install
	$(PY) -m pytest -n 2 --dist loadfile --durations=30 tests

test-fast: install
	$(PY) -m pytest -n 2 --dist loadfile -m "not slow" tests

# The wheels benchmarks/device_check.sh installs on the GPU machine (Python 3.12, JAX, no network): Keras, gin and
# their dependencies beyond what JAX brings (numpy and ml_dtypes come with it).
DEVICE_WHEELS := keras==3.15.1 gin-config==0.5.0 absl-py==2.5.1 h5py==3.14.0 namex==0.1.0 optree==0.20.0 \
	packaging==26.4 rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2 Pygments==2.21.0 typing_extensions==4.16.0
device-wheels: install
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
		--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --dest benchmarks/device_wheels $(DEVICE_WHEELS)

# The PyTorch peer (lucidrains' routing-transformer) lives in its own environment.
# The CPU build of torch comes from the PyTorch index (or a local wheel mirror pip is configured with).
bench-setup: install $(TORCH_STAMP)

$(TORCH_STAMP):
	test -x $(TORCH_VENV)/bin/python || $(PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TORCH_VENV)/bin/python -m pip install --quiet --extra-index-url https://download.pytorch.org/whl/cpu "torch==2.13.0+cpu" "routing-transformer==1.6.1" numpy
	touch $(TORCH_STAMP)

# Every benchmark, then benchmarks/results/REPORT.md, its plots and the README's summary (hours on 2 CPU cores).
bench: bench-setup
	$(PY) -m benchmarks.attention
	$(PY) -m benchmarks.attention --jit
	$(PY) -m benchmarks.families
	$(PY) -m benchmarks.quality
	$(PY) -m benchmarks.decoding
	$(PY) -m benchmarks.attention_maps
	$(PY) -m benchmarks.report

# Rewrites the report, its plots and the README's summary from the results already measured.
bench-report: install
	$(PY) -m benchmarks.report

# Each family and dense attention trained for the same wall-clock budget at 4k context, against xz -9.
bench-quality: install
	$(PY) -m benchmarks.quality

bench-routing: bench-setup
	$(PY) -m benchmarks.routing

# A whole training step of each family against Keras MultiHeadAttention and the PyTorch peer, jit on and off.
bench-families: bench-setup
	$(PY) -m benchmarks.families

bench-attention: install
	$(PY) -m benchmarks.attention

# Pictures of every attention variant and of a tiny trained routing layer's clusters (about a minute).
bench-maps: install
	$(PY) -m benchmarks.attention_maps

clean:
	rm -rf $(VENV) $(TORCH_VENV) build *.egg-info
