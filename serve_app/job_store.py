"""Durable job store of lipserve: one SQLite file shared by every process on the node.

Ingress replicas create, list and cancel jobs; pipeline replicas claim them, heartbeat while they
work and finish them. Each process opens its own :class:`JobStore` on the same file, so:

* the database runs in WAL mode (readers never block the one writer) with a ~10 s busy timeout;
* every read-modify-write runs inside ``BEGIN IMMEDIATE`` (the write lock is taken up front), so a
  claim is atomic across processes: of several workers claiming the same job, exactly one wins;
* one connection per instance, ``check_same_thread=False``, guarded by a ``threading.Lock`` because
  callers use it from ``asyncio.to_thread`` workers;
* transactions are short: one row read, one row written.

Job lifecycle::

    queued --claim--> running --succeed--> succeeded
      ^                 |  \\--fail_attempt (not retryable, or attempts used up)--> failed
      |                 |
      +--fail_attempt (retryable, attempts left; next_attempt_at = now + backoff)
      +--release (graceful drain; does not use up an attempt)
      +--lease expired: the next claim takes the job over, recording ``worker_lost``
    queued/running --cancel--> cancelled

Attempt accounting: ``max_attempts`` limits the number of *failed* attempts, i.e. attempts closed
with an ``error`` (including ``worker_lost`` recorded on a lease takeover). Attempts given back with
:meth:`JobStore.release` are marked ``released: True``, carry ``error: None`` and are not counted.

Times are ``time.time()`` floats; every time-dependent method takes ``now`` for tests.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"

STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
ACTIVE = (QUEUED, RUNNING)

BUSY_TIMEOUT_S = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    params TEXT NOT NULL DEFAULT '{}',
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

_COLUMNS = (
    "id",
    "status",
    "priority",
    "params",
    "progress",
    "stage",
    "timings",
    "attempts",
    "error",
    "result_path",
    "owner",
    "lease_until",
    "next_attempt_at",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
)
_JSON_COLUMNS = {"params": {}, "timings": {}, "attempts": [], "error": None}

# A job may be claimed now if it is queued and due, or running under an expired lease.
_CLAIMABLE_SQL = (
    "(status = 'queued' AND next_attempt_at <= :now)"
    " OR (status = 'running' AND (lease_until IS NULL OR lease_until < :now))"
)


class DuplicateJobError(ValueError):
    """A job with this id already exists."""


def _now(now: float | None) -> float:
    return time.time() if now is None else float(now)


def _iso(ts: float | None) -> str:
    if ts is None:
        return "unknown time"
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds")


def normalize_error(error: Any) -> dict[str, Any] | None:
    """``{code, message, retryable}`` from a dict or a ``LipserveError``; the message is never empty."""
    if error is None:
        return None
    if not isinstance(error, dict) and hasattr(error, "to_dict"):
        error = error.to_dict()
    if not isinstance(error, dict):
        error = {"code": "internal", "message": str(error), "retryable": True}
    code = getattr(error.get("code"), "value", error.get("code")) or "internal"
    code = str(code)
    message = str(error.get("message") or "").strip()
    if not message:
        message = f"{code} without further detail"
    out = dict(error)
    out.update(code=code, message=message, retryable=bool(error.get("retryable", False)))
    return out


def _failed_count(attempts: Iterable[dict[str, Any]]) -> int:
    return sum(1 for a in attempts if a.get("error") is not None)


def _open_attempt(attempts: list[dict[str, Any]]) -> dict[str, Any] | None:
    if attempts and attempts[-1].get("ended_at") is None:
        return attempts[-1]
    return None


@dataclass(frozen=True)
class JobRecord:
    id: str
    status: str
    priority: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    progress: float = 0.0
    stage: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    result_path: str | None = None
    owner: str | None = None
    lease_until: float | None = None
    next_attempt_at: float = 0.0
    created_at: float = 0.0
    updated_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def failed_attempts(self) -> int:
        """Attempts closed with an error: what ``max_attempts`` limits (released ones don't count)."""
        return _failed_count(self.attempts)

    def to_api(self) -> dict[str, Any]:
        """A JSON-able dict for the HTTP API (deep copy; error messages never empty)."""
        d = json.loads(json.dumps(asdict(self), default=str))
        d["error"] = normalize_error(d["error"])
        for att in d["attempts"]:
            att["error"] = normalize_error(att.get("error"))
            for inc in att.get("incidents") or []:
                inc["message"] = str(inc.get("message") or "").strip() or f"{inc.get('code') or 'incident'} without further detail"
        d["failed_attempts"] = _failed_count(d["attempts"])
        return d


def _row_to_dict(row: sqlite3.Row | tuple) -> dict[str, Any]:
    d = dict(zip(_COLUMNS, row))
    for col, default in _JSON_COLUMNS.items():
        raw = d[col]
        d[col] = json.loads(raw) if raw is not None else (default.copy() if default is not None else None)
    return d


def _dict_to_record(d: dict[str, Any]) -> JobRecord:
    return JobRecord(**d)


class JobStore:
    """See the module docstring. Thread-safe; safe to share one file among processes."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        if self.path != ":memory:":
            parent = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(parent, exist_ok=True)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None
        )
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

    def _mutate(
        self, job_id: str, fn: Callable[[dict[str, Any]], bool]
    ) -> tuple[bool, JobRecord | None]:
        """Run ``fn`` on the job's row inside ``BEGIN IMMEDIATE``; write it back if ``fn`` says so.

        Returns ``(changed, record)``; ``record`` is None for an unknown job.
        """
        with self._lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id = ?", (job_id,)
                ).fetchone()
                if row is None:
                    conn.execute("ROLLBACK")
                    return False, None
                d = _row_to_dict(row)
                changed = bool(fn(d))
                if changed:
                    self._write(conn, d)
                    conn.execute("COMMIT")
                else:
                    conn.execute("ROLLBACK")
                return changed, _dict_to_record(d)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @staticmethod
    def _write(conn: sqlite3.Connection, d: dict[str, Any]) -> None:
        values = dict(d)
        for col in _JSON_COLUMNS:
            values[col] = None if d[col] is None else json.dumps(d[col])
        cols = [c for c in _COLUMNS if c != "id"]
        conn.execute(
            f"UPDATE jobs SET {', '.join(f'{c} = :{c}' for c in cols)} WHERE id = :id", values
        )

    # -- creation and queries -----------------------------------------------------------------

    def create(
        self,
        params: dict[str, Any],
        priority: int = 0,
        job_id: str | None = None,
        now: float | None = None,
    ) -> JobRecord:
        t = _now(now)
        rec = JobRecord(
            id=job_id or uuid.uuid4().hex,
            status=QUEUED,
            priority=int(priority),
            params=json.loads(json.dumps(params or {})),
            next_attempt_at=t,
            created_at=t,
            updated_at=t,
        )
        d = asdict(rec)
        for col in _JSON_COLUMNS:
            d[col] = None if d[col] is None else json.dumps(d[col])
        with self._lock:
            try:
                self.conn.execute(
                    f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join(':' + c for c in _COLUMNS)})",
                    d,
                )
            except sqlite3.IntegrityError as exc:
                raise DuplicateJobError(f"job {rec.id} already exists") from exc
        return rec

    def get(self, job_id: str) -> JobRecord | None:
        rows = self._select(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id = ?", (job_id,))
        return _dict_to_record(_row_to_dict(rows[0])) if rows else None

    def list(self, status: str | None = None, limit: int = 100, offset: int = 0) -> list[JobRecord]:
        """Jobs newest first, optionally only those with ``status``."""
        where, args = ("WHERE status = ?", [status]) if status else ("", [])
        rows = self._select(
            f"SELECT {', '.join(_COLUMNS)} FROM jobs {where}"
            " ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
            (*args, int(limit), int(offset)),
        )
        return [_dict_to_record(_row_to_dict(r)) for r in rows]

    def count(self, status: str | tuple[str, ...] | list[str] | None = None) -> int:
        if status is None:
            rows = self._select("SELECT COUNT(*) FROM jobs")
        else:
            statuses = (status,) if isinstance(status, str) else tuple(status)
            if not statuses:
                return 0
            marks = ", ".join("?" * len(statuses))
            rows = self._select(f"SELECT COUNT(*) FROM jobs WHERE status IN ({marks})", statuses)
        return int(rows[0][0])

    def claimable(self, now: float | None = None, limit: int = 100) -> list[str]:
        """Ids a worker may claim now, in scheduling order (priority desc, then oldest first)."""
        rows = self._select(
            f"SELECT id FROM jobs WHERE {_CLAIMABLE_SQL}"
            " ORDER BY priority DESC, created_at ASC, rowid ASC LIMIT :limit",
            {"now": _now(now), "limit": int(limit)},
        )
        return [r[0] for r in rows]

    def is_cancelled(self, job_id: str) -> bool:
        rows = self._select("SELECT status FROM jobs WHERE id = ?", (job_id,))
        return bool(rows) and rows[0][0] == CANCELLED

    # -- worker side --------------------------------------------------------------------------

    def claim(
        self,
        job_id: str,
        owner: str,
        lease_s: float,
        now: float | None = None,
        max_attempts: int | None = None,
    ) -> JobRecord | None:
        """Atomically take the job if it is claimable; None if it is not (owned, terminal, not due).

        Taking over a running job whose lease expired closes its open attempt with ``worker_lost``.
        If ``max_attempts`` is given and that takeover uses up the last attempt, the job is marked
        failed instead (a job that keeps killing its workers must not loop forever) and None is
        returned.
        """
        t = _now(now)
        outcome: dict[str, bool] = {"claimed": False}

        def fn(d: dict[str, Any]) -> bool:
            attempts: list[dict[str, Any]] = d["attempts"]
            if d["status"] == QUEUED:
                if d["next_attempt_at"] > t:
                    return False
            elif d["status"] == RUNNING:
                if d["lease_until"] is not None and d["lease_until"] >= t:
                    return False
                err = normalize_error(
                    {
                        "code": "worker_lost",
                        "message": (
                            f"owner {d['owner']} stopped heartbeating; lease expired at "
                            f"{_iso(d['lease_until'])}"
                        ),
                        "retryable": True,
                    }
                )
                att = _open_attempt(attempts)
                if att is not None:
                    att["ended_at"] = t
                    att["error"] = err
                d["error"] = err
                if max_attempts is not None and _failed_count(attempts) >= max_attempts:
                    d.update(status=FAILED, owner=None, lease_until=None, finished_at=t, updated_at=t)
                    return True
            else:
                return False
            attempts.append(
                {
                    "n": len(attempts) + 1,
                    "owner": owner,
                    "started_at": t,
                    "ended_at": None,
                    "error": None,
                    "incidents": [],
                }
            )
            d.update(status=RUNNING, owner=owner, lease_until=t + float(lease_s), updated_at=t)
            if d["started_at"] is None:
                d["started_at"] = t
            outcome["claimed"] = True
            return True

        _, rec = self._mutate(job_id, fn)
        return rec if outcome["claimed"] else None

    @staticmethod
    def _owned(d: dict[str, Any], owner: str) -> bool:
        return d["status"] == RUNNING and d["owner"] == owner

    def heartbeat(
        self,
        job_id: str,
        owner: str,
        lease_s: float,
        progress: float | None = None,
        stage: str | None = None,
        now: float | None = None,
    ) -> bool:
        """Extend the lease (and record progress); False means stop: cancelled or taken over."""
        t = _now(now)

        def fn(d: dict[str, Any]) -> bool:
            if not self._owned(d, owner):
                return False
            d["lease_until"] = t + float(lease_s)
            if progress is not None:
                d["progress"] = min(1.0, max(0.0, float(progress)))
            if stage is not None:
                d["stage"] = stage
            d["updated_at"] = t
            return True

        changed, _ = self._mutate(job_id, fn)
        return changed

    def add_incident(
        self, job_id: str, owner: str, code: str, message: str, now: float | None = None
    ) -> bool:
        """Record a fault recovered inside the current attempt (e.g. an actor restart)."""
        t = _now(now)
        code = str(getattr(code, "value", code) or "internal")
        message = str(message or "").strip() or f"{code} without further detail"

        def fn(d: dict[str, Any]) -> bool:
            att = _open_attempt(d["attempts"])
            if not self._owned(d, owner) or att is None:
                return False
            att.setdefault("incidents", []).append({"code": code, "message": message, "at": t})
            d["updated_at"] = t
            return True

        changed, _ = self._mutate(job_id, fn)
        return changed

    def add_timing(self, job_id: str, stage: str, seconds: float) -> bool:
        """Add ``seconds`` to the job's accumulated time in ``stage``."""

        def fn(d: dict[str, Any]) -> bool:
            d["timings"][stage] = float(d["timings"].get(stage, 0.0)) + float(seconds)
            return True

        changed, _ = self._mutate(job_id, fn)
        return changed

    def succeed(self, job_id: str, owner: str, result_path: str, now: float | None = None) -> bool:
        """Mark the job succeeded (only by its current owner). Clears ``error`` from earlier attempts
        (they stay recorded in ``attempts``)."""
        t = _now(now)

        def fn(d: dict[str, Any]) -> bool:
            if not self._owned(d, owner):
                return False
            att = _open_attempt(d["attempts"])
            if att is not None:
                att["ended_at"] = t
            d.update(
                status=SUCCEEDED,
                progress=1.0,
                stage="done",
                result_path=str(result_path),
                error=None,
                owner=None,
                lease_until=None,
                finished_at=t,
                updated_at=t,
            )
            return True

        changed, _ = self._mutate(job_id, fn)
        return changed

    def fail_attempt(
        self,
        job_id: str,
        owner: str,
        error: dict[str, Any],
        max_attempts: int,
        backoff_s: float,
        now: float | None = None,
    ) -> JobRecord | None:
        """Close the current attempt with ``error``; requeue with backoff or fail for good.

        Retried iff ``error['retryable']`` and the failed attempts (this one included; released
        attempts excluded) are fewer than ``max_attempts``; the delay is
        ``backoff_s * 2 ** (failed_attempts - 1)``. None if the caller does not own the job.
        """
        t = _now(now)
        err = normalize_error(error)

        def fn(d: dict[str, Any]) -> bool:
            if not self._owned(d, owner):
                return False
            attempts = d["attempts"]
            att = _open_attempt(attempts)
            if att is None:  # defensive: a running job always has an open attempt
                att = {"n": len(attempts) + 1, "owner": owner, "started_at": t, "incidents": []}
                attempts.append(att)
            att["ended_at"] = t
            att["error"] = err
            d.update(error=err, owner=None, lease_until=None, updated_at=t)
            failed = _failed_count(attempts)
            if err["retryable"] and failed < int(max_attempts):
                d["status"] = QUEUED
                d["next_attempt_at"] = t + float(backoff_s) * 2 ** (failed - 1)
            else:
                d["status"] = FAILED
                d["finished_at"] = t
            return True

        changed, rec = self._mutate(job_id, fn)
        return rec if changed else None

    def release(self, job_id: str, owner: str, now: float | None = None) -> bool:
        """Give the job back without an error (graceful drain); it is claimable again at once.

        The attempt is closed with ``error: None, released: True`` and does not count against
        ``max_attempts``. Progress is kept.
        """
        t = _now(now)

        def fn(d: dict[str, Any]) -> bool:
            if not self._owned(d, owner):
                return False
            att = _open_attempt(d["attempts"])
            if att is not None:
                att["ended_at"] = t
                att["error"] = None
                att["released"] = True
            d.update(status=QUEUED, owner=None, lease_until=None, next_attempt_at=t, updated_at=t)
            return True

        changed, _ = self._mutate(job_id, fn)
        return changed

    # -- client side --------------------------------------------------------------------------

    def cancel(self, job_id: str, now: float | None = None) -> JobRecord | None:
        """Cancel a queued or running job; a terminal job is returned unchanged; None if unknown.

        A running owner learns of it on its next heartbeat (which returns False).
        """
        t = _now(now)
        err = {"code": "cancelled", "message": "cancelled by request", "retryable": False}

        def fn(d: dict[str, Any]) -> bool:
            if d["status"] not in ACTIVE:
                return False
            att = _open_attempt(d["attempts"])
            if att is not None:
                att["ended_at"] = t
                att["error"] = dict(err)
            d.update(
                status=CANCELLED,
                error=dict(err),
                owner=None,
                lease_until=None,
                finished_at=t,
                updated_at=t,
            )
            return True

        _, rec = self._mutate(job_id, fn)
        return rec

    def delete(self, job_id: str) -> bool:
        with self._lock:
            cur = self.conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            return cur.rowcount > 0

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> "JobStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
