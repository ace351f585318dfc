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

from serve_app.jobs.outbox import DELIVERED, FAILED, OUTBOX_COLUMNS, PENDING, as_dict
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
    finished_at REAL,
    tenant TEXT NOT NULL DEFAULT 'default',
    expired_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_sched ON jobs (status, priority, created_at);
CREATE TABLE IF NOT EXISTS webhook_outbox (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    url TEXT NOT NULL,
    body BLOB NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_due ON webhook_outbox (status, next_at);
CREATE INDEX IF NOT EXISTS outbox_job ON webhook_outbox (job_id);
CREATE TABLE IF NOT EXISTS request_keys (
    scope TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    job_id TEXT NOT NULL,
    expires_at REAL NOT NULL
);
"""
# Columns added after the first release: an existing file gets them on open.
_ADDED_COLUMNS = {"tenant": "TEXT NOT NULL DEFAULT 'default'", "expired_at": "REAL"}

# A job may be claimed now if it is queued and due, or running under an expired lease.
CLAIMABLE_SQL = ("(status = 'queued' AND next_attempt_at <= :now)"
                 " OR (status = 'running' AND (lease_until IS NULL OR lease_until < :now))")
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM jobs"
_OUTBOX_INSERT = (f"INSERT INTO webhook_outbox ({', '.join(OUTBOX_COLUMNS)})"
                  f" VALUES ({', '.join(':' + c for c in OUTBOX_COLUMNS)})")
_OUTBOX_SELECT = f"SELECT {', '.join(OUTBOX_COLUMNS)} FROM webhook_outbox"


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
            self._retry_busy(lambda: self._add_columns(conn))

    @staticmethod
    def _add_columns(conn: sqlite3.Connection) -> None:
        have = {r[1] for r in conn.execute("PRAGMA table_info(jobs)")}
        for name, decl in _ADDED_COLUMNS.items():
            if name not in have:
                conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {decl}")

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

            def write(rec: JobRecord, outbox_rows: Sequence[dict] = ()) -> None:
                row = to_row(rec)
                cols = [c for c in COLUMNS if c != "id"]
                conn.execute(f"UPDATE jobs SET {', '.join(f'{c} = :{c}' for c in cols)} WHERE id = :id", row)
                for delivery in outbox_rows:
                    conn.execute(_OUTBOX_INSERT, delivery)
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

    def list(self, status: str | None = None, limit: int = 100, offset: int = 0,
             tenant: str | None = None) -> list[JobRecord]:
        """Jobs newest first, optionally only those with ``status`` / of ``tenant``."""
        where, args = _filters(status=status, tenant=tenant)
        rows = self._select(f"{_SELECT} {where} ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
                            (*args, int(limit), int(offset)))
        return [from_row(r) for r in rows]

    def count(self, status: str | Sequence[str] | None = None, tenant: str | None = None) -> int:
        where, args = _filters(status=status, tenant=tenant)
        return int(self._select(f"SELECT COUNT(*) FROM jobs {where}", args)[0][0])

    def count_by_tenant(self, status: str) -> dict[str, int]:
        rows = self._select("SELECT tenant, COUNT(*) FROM jobs WHERE status = ? GROUP BY tenant", (str(status),))
        return {t: int(n) for t, n in rows}

    def claimable_with_tenants(self, now: float | None = None, limit: int = 100) -> list[tuple[str, str]]:
        rows = self._select(f"SELECT id, tenant FROM jobs WHERE {CLAIMABLE_SQL}"
                            " ORDER BY priority DESC, created_at ASC, rowid ASC LIMIT :limit",
                            {"now": self._clock(now), "limit": int(limit)})
        return [(r[0], r[1]) for r in rows]

    def expirable(self, finished_before: float, limit: int = 100) -> list[str]:
        """Terminal jobs that finished before ``finished_before`` and were not expired yet."""
        rows = self._select("SELECT id FROM jobs WHERE status IN ('succeeded', 'failed', 'cancelled')"
                            " AND expired_at IS NULL AND finished_at < ? ORDER BY finished_at LIMIT ?",
                            (float(finished_before), int(limit)))
        return [r[0] for r in rows]

    # -- webhook outbox (serve_app/jobs/outbox.py) ------------------------------------------------
    def outbox_due(self, now: float | None = None, limit: int = 32, lease_s: float = 60.0) -> list[dict]:
        t = self._clock(now)
        with self._lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                rows = conn.execute(f"{_OUTBOX_SELECT} WHERE status = ? AND next_at <= ? ORDER BY next_at LIMIT ?",
                                    (PENDING, t, int(limit))).fetchall()
                conn.executemany("UPDATE webhook_outbox SET next_at = ? WHERE id = ?",
                                 [(t + lease_s, r[0]) for r in rows])  # leased: no other worker sends it
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return [as_dict(r) for r in rows]

    def outbox_delivered(self, delivery_id: str, now: float | None = None) -> bool:
        with self._lock:
            return self.conn.execute(
                "UPDATE webhook_outbox SET status = ?, attempts = attempts + 1, last_error = NULL, updated_at = ?"
                " WHERE id = ? AND status = ?", (DELIVERED, self._clock(now), delivery_id, PENDING)).rowcount > 0

    def outbox_failed(self, delivery_id: str, next_at: float | None, error: str, now: float | None = None) -> bool:
        status = PENDING if next_at is not None else FAILED
        with self._lock:
            return self.conn.execute(
                "UPDATE webhook_outbox SET status = ?, attempts = attempts + 1, last_error = ?, next_at = ?,"
                " updated_at = ? WHERE id = ? AND status = ?",
                (status, str(error)[:2000], next_at if next_at is not None else 0.0, self._clock(now),
                 delivery_id, PENDING)).rowcount > 0

    def deliveries(self, job_id: str) -> list[dict]:
        return [as_dict(r) for r in self._select(f"{_OUTBOX_SELECT} WHERE job_id = ? ORDER BY created_at", (job_id,))]

    # -- request keys (Idempotency-Key, used Duix codes) --------------------------------------------
    def reserve_key(self, scope: str, fingerprint: str, job_id: str, expires_at: float,
                    now: float | None = None) -> tuple[str, str] | None:
        """Insert ``scope`` -> (fingerprint, job id) unless a live entry exists; then return that
        entry's ``(job_id, fingerprint)``. An expired entry is replaced."""
        t = self._clock(now)
        with self._lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT job_id, fingerprint, expires_at FROM request_keys WHERE scope = ?",
                                   (scope,)).fetchone()
                if row is not None and row[2] > t:
                    conn.execute("ROLLBACK")
                    return row[0], row[1]
                conn.execute("INSERT OR REPLACE INTO request_keys (scope, fingerprint, job_id, expires_at)"
                             " VALUES (?, ?, ?, ?)", (scope, fingerprint, job_id, float(expires_at)))
                conn.execute("COMMIT")
                return None
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def release_key(self, scope: str) -> bool:
        with self._lock:
            return self.conn.execute("DELETE FROM request_keys WHERE scope = ?", (scope,)).rowcount > 0

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


def _filters(status: str | Sequence[str] | None = None, tenant: str | None = None) -> tuple[str, list]:
    clauses, args = [], []
    if status is not None:
        statuses = [str(x) for x in ((status,) if isinstance(status, (str, JobStatus)) else status)]
        clauses.append(f"status IN ({', '.join('?' * len(statuses))})" if statuses else "0")
        args += statuses
    if tenant is not None:
        clauses.append("tenant = ?")
        args.append(tenant)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", args
