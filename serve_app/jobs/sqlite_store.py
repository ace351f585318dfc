"""SQLite backend of the job store: the embedded default for one machine.

Each process opens its own store on the same file, so:

* the database runs in WAL mode (readers never block the one writer) with a ~10 s busy timeout;
* every read-modify-write runs inside ``BEGIN IMMEDIATE`` (the write lock is taken up front), so a
  claim is atomic across processes: of several workers claiming the same job, exactly one wins;
* one connection per instance, ``check_same_thread=False``, guarded by a ``threading.Lock`` because
  callers use it from worker threads;
* transactions are short: one row read, one row written.

SQLite locking is only safe between processes of one machine: on a cluster use ``job_store: actor``
(one owner process) or ``postgres``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Sequence

from serve_app.jobs.records import JobRecord, JobStatus
from serve_app.jobs.rows import COLUMNS, from_row, to_row
from serve_app.jobs.store import DuplicateJobError, TransactionalJobStore

BUSY_TIMEOUT_S = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    params TEXT,
    meta TEXT,
    progress REAL NOT NULL DEFAULT 0,
    stage TEXT,
    timings TEXT NOT NULL DEFAULT '{}',
    attempts TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    result_path TEXT,
    owner TEXT,
    lease_until REAL,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_sched ON jobs (status, priority, created_at);
"""

# A job may be claimed now if it is queued and due, or running under an expired lease.
CLAIMABLE_SQL = ("(status = 'queued' AND next_attempt_at <= :now)"
                 " OR (status = 'running' AND (lease_until IS NULL OR lease_until < :now))")
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM jobs"


class SqliteJobStore(TransactionalJobStore):
    """Thread-safe; safe to share one file among the processes of one machine."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        if self.path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None)
        with self._lock:
            conn = self._conn
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self._retry_busy(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
            conn.execute("PRAGMA synchronous = NORMAL")
            self._retry_busy(lambda: conn.executescript(_SCHEMA))

    # -- plumbing -----------------------------------------------------------------------------
    @staticmethod
    def _retry_busy(fn: Callable[[], Any], deadline_s: float = BUSY_TIMEOUT_S) -> Any:
        # Switching to WAL / creating the schema while another process does the same may report
        # "database is locked" without waiting on the busy handler; retry briefly.
        end = time.monotonic() + deadline_s
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                transient = "locked" in str(exc) or "busy" in str(exc)
                if not transient or time.monotonic() > end:
                    raise
                time.sleep(0.05)

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"JobStore({self.path!r}) is closed")
        return self._conn

    def _select(self, sql: str, params: Any = ()) -> list[tuple]:
        with self._lock:
            return self.conn.execute(sql, params).fetchall()

    def _clock(self, now: float | None) -> float:
        return time.time() if now is None else float(now)

    @contextmanager
    def _transaction(self, job_id: str, now: float | None, skip_locked: bool = False):
        # skip_locked is moot here: BEGIN IMMEDIATE serialises all writers of the file.
        with self._lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            wrote: list[bool] = []

            def write(rec: JobRecord) -> None:
                row = to_row(rec)
                cols = [c for c in COLUMNS if c != "id"]
                conn.execute(f"UPDATE jobs SET {', '.join(f'{c} = :{c}' for c in cols)} WHERE id = :id", row)
                wrote.append(True)

            try:
                row = conn.execute(f"{_SELECT} WHERE id = ?", (job_id,)).fetchone()
                yield (from_row(row) if row else None), self._clock(now), write
                conn.execute("COMMIT" if wrote else "ROLLBACK")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _insert(self, rec: JobRecord) -> None:
        with self._lock:
            try:
                self.conn.execute(
                    f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join(':' + c for c in COLUMNS)})",
                    to_row(rec))
            except sqlite3.IntegrityError as exc:
                raise DuplicateJobError(f"job {rec.id} already exists") from exc

    # -- queries ------------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord | None:
        rows = self._select(f"{_SELECT} WHERE id = ?", (job_id,))
        return from_row(rows[0]) if rows else None

    def list(self, status: str | None = None, limit: int = 100, offset: int = 0) -> list[JobRecord]:
        """Jobs newest first, optionally only those with ``status``."""
        where, args = ("WHERE status = ?", [str(status)]) if status else ("", [])
        rows = self._select(f"{_SELECT} {where} ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
                            (*args, int(limit), int(offset)))
        return [from_row(r) for r in rows]

    def count(self, status: str | Sequence[str] | None = None) -> int:
        if status is None:
            return int(self._select("SELECT COUNT(*) FROM jobs")[0][0])
        statuses = tuple(str(s) for s in ((status,) if isinstance(status, (str, JobStatus)) else status))
        if not statuses:
            return 0
        marks = ", ".join("?" * len(statuses))
        return int(self._select(f"SELECT COUNT(*) FROM jobs WHERE status IN ({marks})", statuses)[0][0])

    def claimable(self, now: float | None = None, limit: int = 100) -> list[str]:
        """Ids a worker may claim now, in scheduling order (priority desc, then oldest first)."""
        rows = self._select(f"SELECT id FROM jobs WHERE {CLAIMABLE_SQL}"
                            " ORDER BY priority DESC, created_at ASC, rowid ASC LIMIT :limit",
                            {"now": self._clock(now), "limit": int(limit)})
        return [r[0] for r in rows]

    def delete(self, job_id: str) -> bool:
        with self._lock:
            return self.conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount > 0

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
