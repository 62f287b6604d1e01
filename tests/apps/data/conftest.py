"""Fixtures for the data-layer tests: tiny local files, shared data_dir, no network."""

import socket

import pytest

from tests.apps.data import fakes


@pytest.fixture(scope="session")
def text_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("texts") / "corpus"
    files = fakes.write_text_dir(root)
    return root, files


@pytest.fixture(scope="session")
def local_data_dir(tmp_path_factory):
    """A TFDS data_dir shared by the local_text pipeline tests (built once)."""
    return str(tmp_path_factory.mktemp("tfds_local"))


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
