"""PostgreSQL backend of the job store: job state for a cluster, off the Ray head node.

Same semantics as the SQLite backend (every lifecycle step is ``TransactionalJobStore``'s); what
differs is how the database is used:

* **Locks.** Each mutation is one transaction that locks the job's row ``FOR UPDATE``. A claim uses
  ``FOR UPDATE SKIP LOCKED``: a row another replica is claiming right now is "not claimable now"
  rather than something to queue behind. Other mutations (heartbeat, cancel, ...) wait for the lock.
* **Clock.** ``t`` is the database's ``clock_timestamp()``, read after the row lock is held, so
  leases and backoff never depend on a replica's clock; ``now`` (tests) overrides it.
* **Schema.** Versioned migrations run at start under an advisory lock (``pg_migrations``).
* **Wake-ups.** A trigger (migration 0002) sends ``NOTIFY lipserve_jobs`` when a job becomes queued;
  ``wait_for_work`` LISTENs on a connection of its own.
* **Resilience.** A call that meets ``psycopg.OperationalError`` (connection lost, server restarting,
  failover, pool exhausted) is retried with exponential backoff for up to ``retry_s`` seconds, then
  raises ``JobStoreUnavailableError``. A transaction is retried whole, so a retry re-reads the row.
  The one ambiguous case is a COMMIT whose answer is lost: a retried claim then finds the job
  running under its own lease and reports "not claimed" (the lease lapses and the job is taken over;
  it never runs twice); a retried create recognises its own row.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Sequence

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from serve_app.jobs.postgres_api_tables import OUTBOX_INSERT, PostgresApiTables
from serve_app.jobs.pg_migrations import MIGRATIONS_DIR, migrate
from serve_app.jobs.records import JobRecord
from serve_app.jobs.rows import COLUMNS, from_row, to_row
from serve_app.jobs.store import DuplicateJobError, JobStoreUnavailableError, TransactionalJobStore

log = logging.getLogger("lipserve.jobs.postgres")

NOTIFY_CHANNEL = "lipserve_jobs"
POOL_WAIT_S = 5.0  # how long one try waits for a pooled connection before it counts as failed
CONNECT_TIMEOUT_S = 5
_BACKOFF_FIRST_S, _BACKOFF_MAX_S = 0.05, 1.0

_SELECT = f"SELECT {', '.join(COLUMNS)} FROM jobs"
_DB_TIME = "SELECT extract(epoch FROM clock_timestamp())::float8"
_UPDATE = "UPDATE jobs SET {} WHERE id = %(id)s".format(
    ", ".join(f"{c} = %({c})s" for c in COLUMNS if c != "id"))
_INSERT = "INSERT INTO jobs ({}) VALUES ({})".format(", ".join(COLUMNS), ", ".join(f"%({c})s" for c in COLUMNS))
# Claimable now: queued and due, or running under an expired lease (as in transitions.claimable).
_CLAIMABLE = """
SELECT id FROM jobs, (SELECT COALESCE(%(now)s::float8, extract(epoch FROM clock_timestamp())::float8) AS t) AS clock
WHERE status IN ('queued', 'running')
  AND ((status = 'queued' AND next_attempt_at <= clock.t)
       OR (status = 'running' AND (lease_until IS NULL OR lease_until < clock.t)))
ORDER BY priority DESC, created_at ASC, seq ASC
LIMIT %(limit)s
"""


def redact(url: str) -> str:
    """``host:port/dbname`` of a connection string, for messages: never the password."""
    try:
        d = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparsable database url>"
    return f"{d.get('host', 'localhost')}:{d.get('port', 5432)}/{d.get('dbname', d.get('user', ''))}"


class PostgresJobStore(PostgresApiTables, TransactionalJobStore):
    """Thread-safe; any number of processes and clusters may share one database."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 8, retry_s: float = 30.0,
                 pool_wait_s: float = POOL_WAIT_S, migrations_dir: Path = MIGRATIONS_DIR,
                 on_retry: Callable[[BaseException], None] | None = None):
        self.url = url
        self.where = redact(url)
        self.retry_s = float(retry_s)
        self.pool_wait_s = min(float(pool_wait_s), self.retry_s)
        self._on_retry = on_retry
        self._closed = threading.Event()
        self._listen_lock = threading.Lock()
        self._listener: psycopg.Connection | None = None
        self._listener_lost = False
        self._pool = ConnectionPool(
            url, min_size=min_size, max_size=max_size, open=False, name="lipserve-jobs",
            # A pooled connection that died with a server restart is noticed and replaced here,
            # before a call uses it.
            check=ConnectionPool.check_connection,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S, "application_name": "lipserve"})
        # Not waiting for the pool: a database that is still starting is retried like any outage.
        self._pool.open(wait=False)
        try:
            self.migrated = self._retry("migrate", lambda _: self._with_conn(lambda c: migrate(c, migrations_dir)))
        except BaseException:
            self.close()
            raise

    # -- plumbing -----------------------------------------------------------------------------
    def _retry(self, what: str, fn: Callable[[int], Any]) -> Any:
        """``fn(attempt)`` until it returns without ``OperationalError`` or ``retry_s`` passed."""
        deadline = time.monotonic() + self.retry_s
        delay, attempt = _BACKOFF_FIRST_S, 0
        while True:
            if self._closed.is_set():
                raise RuntimeError(f"PostgresJobStore({self.where}) is closed")
            try:
                return fn(attempt)
            except psycopg.OperationalError as exc:
                left = deadline - time.monotonic()
                if self._closed.is_set():
                    raise RuntimeError(f"PostgresJobStore({self.where}) is closed") from exc
                if left <= 0:
                    raise JobStoreUnavailableError(
                        f"job database {self.where} unreachable for {self.retry_s:g} s ({what}): "
                        f"{type(exc).__name__}: {str(exc).strip() or 'connection failed'}") from exc
                log.warning("job database %s: %s failed (%s: %s); retrying in %.2f s", self.where, what,
                            type(exc).__name__, str(exc).strip(), delay)
                if self._on_retry is not None:
                    self._on_retry(exc)
                self._closed.wait(min(delay, left))  # backoff pacing; close() cuts it short
                delay, attempt = min(delay * 2, _BACKOFF_MAX_S), attempt + 1

    def _with_conn(self, fn: Callable[[psycopg.Connection], Any]) -> Any:
        with self._pool.connection(timeout=self.pool_wait_s) as conn:
            return fn(conn)

    def _query(self, what: str, sql: str, params: Any = None) -> list[tuple]:
        return self._retry(what, lambda _: self._with_conn(lambda c: c.execute(sql, params).fetchall()))

    def _clock(self, now: float | None) -> float:
        if now is not None:
            return float(now)
        return float(self._query("read the clock", _DB_TIME)[0][0])

    def _mutate(self, job_id: str, fn, now: float | None = None, skip_locked: bool = False):
        # The whole transaction is the unit of retry: each try re-reads (and re-locks) the row.
        return self._retry(f"update job {job_id}",
                           lambda _: TransactionalJobStore._mutate(self, job_id, fn, now, skip_locked))

    @contextmanager
    def _transaction(self, job_id: str, now: float | None, skip_locked: bool = False):
        lock = "FOR UPDATE SKIP LOCKED" if skip_locked else "FOR UPDATE"
        with self._pool.connection(timeout=self.pool_wait_s) as conn, conn.transaction():
            row = conn.execute(f"{_SELECT} WHERE id = %s {lock}", (job_id,)).fetchone()
            if now is not None:
                t = float(now)
            else:  # read after the lock is held: a wait for the lock does not age t
                t = float(conn.execute(_DB_TIME).fetchone()[0]) if row else 0.0

            def write(rec: JobRecord, outbox_rows: Sequence[dict] = ()) -> None:
                conn.execute(_UPDATE, to_row(rec))
                for delivery in outbox_rows:  # in the same transaction as the terminal state
                    conn.execute(OUTBOX_INSERT, delivery)

            # Leaving the block commits (a read-only transaction just releases the lock); an
            # exception from the caller's body rolls back.
            yield (from_row(row) if row else None), t, write

    def _insert(self, rec: JobRecord) -> None:
        row = to_row(rec)

        def insert(attempt: int, conn: psycopg.Connection) -> None:
            try:
                conn.execute(_INSERT, row)
            except psycopg.errors.UniqueViolation as exc:
                if attempt > 0:  # an earlier try may have committed before its answer was lost
                    mine = conn.execute(f"{_SELECT} WHERE id = %s", (rec.id,)).fetchone()
                    if mine is not None and from_row(mine) == rec:
                        return
                raise DuplicateJobError(f"job {rec.id} already exists") from exc

        self._retry(f"create job {rec.id}", lambda attempt: self._with_conn(lambda c: insert(attempt, c)))

    # -- queries ------------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord | None:
        rows = self._query(f"get job {job_id}", f"{_SELECT} WHERE id = %s", (job_id,))
        return from_row(rows[0]) if rows else None

    def claimable(self, now: float | None = None, limit: int = 100) -> list[str]:
        """Ids a worker may claim now (by the database clock), priority desc, then oldest first."""
        rows = self._query("list claimable jobs", _CLAIMABLE,
                           {"now": None if now is None else float(now), "limit": int(limit)})
        return [r[0] for r in rows]

    def delete(self, job_id: str) -> bool:
        return self._retry(f"delete job {job_id}", lambda _: self._with_conn(
            lambda c: c.execute("DELETE FROM jobs WHERE id = %s", (job_id,)).rowcount > 0))

    # -- wake-ups -------------------------------------------------------------------------------
    def wait_for_work(self, timeout: float) -> bool:
        """Block until a job became queued anywhere on this database (NOTIFY), or ``timeout``.
        True also right after the listening connection was re-established, since events may have
        been missed while it was down. Never raises for a database outage: it then just waits."""
        end = time.monotonic() + max(0.0, float(timeout))
        if not self._listen_lock.acquire(timeout=max(0.0, float(timeout))):
            return False
        try:
            conn = self._listening()
            if conn is None:  # database unreachable: behave as a poll timeout
                self._closed.wait(max(0.0, end - time.monotonic()))
                return False
            if self._listener_lost:
                self._listener_lost = False
                return True
            try:
                woken = any(True for _ in conn.notifies(timeout=max(0.0, end - time.monotonic()), stop_after=1))
            except psycopg.OperationalError as exc:
                log.warning("job database %s: LISTEN connection lost (%s); reconnecting", self.where, exc)
                self._drop_listener(lost=True)
                return True
            if self._closed.is_set():
                self._drop_listener()
            return woken
        finally:
            self._listen_lock.release()

    def _listening(self) -> psycopg.Connection | None:
        if self._listener is not None and not self._listener.closed:
            return self._listener
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                   application_name="lipserve-listen")
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        except psycopg.OperationalError as exc:
            log.warning("job database %s: cannot LISTEN (%s)", self.where, exc)
            return None
        self._listener = conn
        return conn

    def _drop_listener(self, lost: bool = False) -> None:
        if self._listener is not None:
            self._listener.close()
        self._listener, self._listener_lost = None, self._listener_lost or lost

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        # A wait_for_work in progress closes the listener itself when it returns.
        if self._listen_lock.acquire(timeout=1.0):
            try:
                self._drop_listener()
            finally:
                self._listen_lock.release()
        self._pool.close()
