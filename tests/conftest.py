"""Session fixtures shared by the unit and the service tests."""

from __future__ import annotations

import pytest

from tests.pg_server import PostgresServer


@pytest.fixture(scope="session")
def pg_server():
    """A running PostgreSQL server (Debian's package; see tests/pg_server.py), one per session; tests
    create a database of their own on it. Not skipped when PostgreSQL is missing: the error says
    how to install it."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
