"""Schema migrations of the PostgreSQL job store: versioned, applied once under an advisory lock even
when many replicas start at once, atomic when one fails."""

from __future__ import annotations

import multiprocessing as mp
import threading
from pathlib import Path

import psycopg
import pytest

from serve_app.jobs.pg_migrations import MigrationError, load_migrations, migrate, schema_version
from serve_app.jobs.postgres_store import PostgresJobStore
from serve_app.jobs.records import JobParams

# Deliberately NOT idempotent: a second application would add a second row.
COUNTING = "CREATE TABLE IF NOT EXISTS applied_log (n SERIAL PRIMARY KEY);\nINSERT INTO applied_log DEFAULT VALUES;\n"


@pytest.fixture
def url(pg_server):
    u = pg_server.create_database()
    yield u
    pg_server.drop_database(u)


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql)
    return directory


def rows(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def test_store_constructors_racing_on_a_fresh_database_migrate_once(url):
    n = 8
    barrier, stores, errors = threading.Barrier(n), [], []

    def start() -> None:
        try:
            barrier.wait()
            stores.append(PostgresJobStore(url))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert errors == [] and len(stores) == n
        applied = sorted((s.migrated for s in stores), key=len)
        expected = [m.version for m in load_migrations()]
        assert applied[-1] == expected and all(a == [] for a in applied[:-1])  # one did it all
        assert [r[0] for r in rows(url, "SELECT version FROM schema_version ORDER BY version")] == expected
        job = stores[0].create(JobParams(audio_path="/a", video_path="/v"))
        assert stores[-1].get(job.id) == job
    finally:
        for s in stores:
            s.close()


def _migrate_in_process(url: str, directory: str, barrier, out) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        barrier.wait()
        out.put(migrate(conn, Path(directory)))


def test_a_non_idempotent_migration_runs_once_across_processes(url, tmp_path):
    d = write(tmp_path / "m", {"0001_log.sql": COUNTING})
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_migrate_in_process, args=(url, str(d), barrier, out)) for _ in range(4)]
    for p in procs:
        p.start()
    results = sorted((out.get(timeout=60) for _ in procs), key=len)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert results == [[], [], [], [1]]
    assert rows(url, "SELECT count(*) FROM applied_log") == [(1,)]


def test_new_versions_apply_in_order_and_a_failing_one_rolls_back(url, tmp_path):
    d = write(tmp_path / "m", {"0001_log.sql": COUNTING})
    with psycopg.connect(url, autocommit=True) as conn:
        assert schema_version(conn) == 0
        assert migrate(conn, d) == [1] and migrate(conn, d) == []
        write(d, {"0002_more.sql": "ALTER TABLE applied_log ADD COLUMN IF NOT EXISTS note TEXT;",
                  "0003_broken.sql": "CREATE TABLE half_done (x INT);\nSELECT no_such_function();"})
        with pytest.raises(MigrationError, match="0003_broken.sql"):
            migrate(conn, d)
        # 0002 and 0003 ran in the same transaction as the failure: neither is recorded or visible.
        assert schema_version(conn) == 1
        assert conn.execute("SELECT to_regclass('half_done')").fetchone() == (None,)
        (d / "0003_broken.sql").write_text("CREATE TABLE IF NOT EXISTS half_done (x INT);")
        assert migrate(conn, d) == [2, 3] and schema_version(conn) == 3
    assert rows(url, "SELECT count(*) FROM applied_log") == [(1,)]


def test_badly_named_or_duplicate_migration_files_are_refused(tmp_path):
    with pytest.raises(MigrationError, match="not named NNNN_name.sql"):
        load_migrations(write(tmp_path / "a", {"1_x.sql": "SELECT 1;"}))
    with pytest.raises(MigrationError, match="two migrations with version 1"):
        load_migrations(write(tmp_path / "b", {"0001_x.sql": "SELECT 1;", "0001_y.sql": "SELECT 1;"}))
    shipped = load_migrations()
    assert [m.version for m in shipped] == list(range(1, len(shipped) + 1))
