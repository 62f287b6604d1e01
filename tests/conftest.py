"""Shared pytest set-up for the whole test tree."""

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# `make test` runs `pytest -n 2 --dist loadgroup`. Every module is one xdist group, so one worker runs all of it
# and its module-scoped fixtures (a trained model, the JAX worker's results, a quick reproduction) are built once,
# as `--dist loadfile` would; the tests of these modules are long, independent and cheap to set up twice, so
# they go one by one to whichever worker is free, which keeps the two workers' loads even.
SPREAD_MODULES = ("test_experiments.py",)


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = os.path.relpath(str(item.path), os.path.dirname(__file__))
        if module not in SPREAD_MODULES:
            item.add_marker(pytest.mark.xdist_group(module))
