"""Fixtures of the service tests: every test here runs against a real Ray cluster."""

from __future__ import annotations

import pytest

from tests.service.harness import start_cluster, stop_cluster


@pytest.fixture(scope="module")
def cluster():
    """A real local Ray cluster + Serve HTTP proxy, one per test module that asks; yields the port."""
    port = start_cluster()
    yield port
    stop_cluster()


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/service/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.service)
