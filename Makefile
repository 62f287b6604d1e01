# `make install` builds .venv at the repository root; `make test` installs and runs the suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-fast bench-attention clean

install: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,bench]"
	touch $(STAMP)

test: install
	$(PY) -m pytest -n 2 --dist loadfile tests

test-fast: install
	$(PY) -m pytest -n 2 --dist loadfile -m "not slow" tests

bench-attention: install
	$(PY) -m benchmarks.attention

clean:
	rm -rf $(VENV) build *.egg-info
