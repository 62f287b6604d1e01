"""Shared pytest set-up for the whole test tree."""

import os

import pytest

import common  # noqa: F401  (TensorFlow's CPU kernels, as users get them: before anything imports TensorFlow)
from tests import custom_gradients

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(autouse=True)
def release_custom_gradients():
    """Each test's traced graphs are freed after it (`tests.custom_gradients`). Module- and session-scoped
    fixtures are set up before this one, so the graphs they trace stay differentiable for every test."""
    with custom_gradients.released():
        yield
