"""Job store fixtures: ``backend`` runs a test once on SQLite and once on PostgreSQL (a fresh database
per test on the session's ``pg_server``, tests/conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from serve_app.config import LipserveArgs
from serve_app.jobs.backends import open_job_store


@dataclass
class Backend:
    """One database of one backend; ``open()`` is a new store on it (as another process would)."""

    kind: str  # the job_store setting: "local" (SQLite) or "postgres"
    database: str  # a file path or a postgresql:// URL
    opened: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return "sqlite" if self.kind == "local" else self.kind

    def settings(self) -> LipserveArgs:
        return LipserveArgs(job_store=self.kind, database_url=self.database)

    def open(self):
        store = open_job_store(self.settings())  # as the replicas open it
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
