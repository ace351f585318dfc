"""Shared fixtures."""

from __future__ import annotations

import pytest

from tests.service.harness import start_cluster, stop_cluster


@pytest.fixture(scope="module")
def cluster():
    """A real local Ray cluster + Serve HTTP proxy, one per test module that asks; yields the port."""
    port = start_cluster()
    yield port
    stop_cluster()
