"""Job store fixtures: one real PostgreSQL server per test session, and ``backend``, which runs a test
once on SQLite and once on PostgreSQL (a fresh database per test)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from serve_app.jobs.backends import open_job_store
from tests.pg_server import PostgresServer


@pytest.fixture(scope="session")
def pg_server():
    """A running PostgreSQL server (Debian's package; see tests/pg_server.py). Not skipped when
    PostgreSQL is missing: the error says how to install it."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@dataclass
class Backend:
    """One database of one backend; ``open()`` is a new store on it (as another process would)."""

    kind: str  # the job_store setting: "local" (SQLite) or "postgres"
    database: str  # a file path or a postgresql:// URL
    opened: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return "sqlite" if self.kind == "local" else self.kind

    def open(self):
        store = open_job_store(self.kind, self.database)
        self.opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self.opened:
            store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path):
    if request.param == "sqlite":
        b = Backend("local", str(tmp_path / "sub" / "jobs.sqlite3"))
        yield b
        b.close_all()
    else:
        pg = request.getfixturevalue("pg_server")
        b = Backend("postgres", pg.create_database())
        yield b
        b.close_all()
        pg.drop_database(b.database)


@pytest.fixture
def store(backend):
    return backend.open()
