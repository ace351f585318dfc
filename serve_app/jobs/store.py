"""The ``JobStore`` protocol and the base that every backend shares.

Who calls it: the API layer (``JobIntake`` creates jobs; routes get, list and cancel them), the
dispatcher (``claimable``) and the pipeline replicas (``claim``, ``heartbeat``, ``add_incident``,
``add_timing``, ``succeed``, ``fail_attempt``, ``release``). All methods are blocking; async callers
run them in a thread pool of their own.

``TransactionalJobStore`` implements every state change once, over the pure functions of
``transitions``; a backend supplies the row I/O (``_create_row``, ``_select``, ``_transaction``)
and its clock. Every time-dependent method takes ``now`` for tests.

Besides the jobs, a store keeps two small tables (``serve_app/jobs/outbox.py`` has the shared
logic): the webhook **outbox** (a row is added in the same transaction that makes a job with a
``callback_url`` terminal, so a delivery is never lost to a crash between the two) and
**request keys** (``Idempotency-Key``s and used Duix codes: scope -> request fingerprint, job id,
expiry).
"""

from __future__ import annotations

import abc
from contextlib import AbstractContextManager
from typing import Any, Callable, Protocol, Sequence

from serve_app.jobs import outbox, transitions
from serve_app.jobs.records import DEFAULT_TENANT, ErrorInfo, JobParams, JobRecord, JobStatus


class DuplicateJobError(ValueError):
    """A job with this id already exists."""


class JobStore(Protocol):
    def create(self, params: JobParams, priority: int = 0, job_id: str | None = None,
               meta: dict | None = None, now: float | None = None, tenant: str = DEFAULT_TENANT) -> JobRecord: ...
    def get(self, job_id: str) -> JobRecord | None: ...
    def list(self, status: str | None = None, limit: int = 100, offset: int = 0,
             tenant: str | None = None) -> list[JobRecord]: ...
    def count(self, status: str | Sequence[str] | None = None, tenant: str | None = None) -> int: ...
    def count_by_tenant(self, status: str) -> dict[str, int]: ...
    def claimable(self, now: float | None = None, limit: int = 100) -> list[str]: ...
    def claimable_with_tenants(self, now: float | None = None, limit: int = 100) -> list[tuple[str, str]]: ...
    def expire(self, job_id: str, now: float | None = None) -> JobRecord | None: ...
    def expirable(self, finished_before: float, limit: int = 100) -> list[str]: ...
    # webhook outbox (rows: see outbox.delivery_row)
    def outbox_due(self, now: float | None = None, limit: int = 32, lease_s: float = 60.0) -> list[dict]: ...
    def outbox_delivered(self, delivery_id: str, now: float | None = None) -> bool: ...
    def outbox_failed(self, delivery_id: str, next_at: float | None, error: str, now: float | None = None) -> bool: ...
    def deliveries(self, job_id: str) -> list[dict]: ...
    # request keys (Idempotency-Key, used Duix codes)
    def reserve_key(self, scope: str, fingerprint: str, job_id: str, expires_at: float,
                    now: float | None = None) -> tuple[str, str] | None: ...
    def release_key(self, scope: str) -> bool: ...
    def expire(self, job_id: str, now: float | None = None) -> JobRecord | None:
        """Mark the job's result as removed by retention (the caller deletes the files)."""
        return self._mutate(job_id, lambda r, t: transitions.expire(r, t), now)[1]

    def is_cancelled(self, job_id: str) -> bool: ...
    def claim(self, job_id: str, owner: str, lease_s: float, now: float | None = None,
              max_attempts: int | None = None) -> JobRecord | None: ...
    def heartbeat(self, job_id: str, owner: str, lease_s: float, progress: float | None = None,
                  stage: str | None = None, now: float | None = None) -> bool: ...
    def add_incident(self, job_id: str, owner: str, code: str, message: str, now: float | None = None) -> bool: ...
    def add_timing(self, job_id: str, stage: str, seconds: float) -> bool: ...
    def succeed(self, job_id: str, owner: str, result_path: str, now: float | None = None) -> bool: ...
    def fail_attempt(self, job_id: str, owner: str, error: Any, max_attempts: int, backoff_s: float,
                     now: float | None = None) -> JobRecord | None: ...
    def release(self, job_id: str, owner: str, now: float | None = None) -> bool: ...
    def cancel(self, job_id: str, now: float | None = None) -> JobRecord | None: ...
    def delete(self, job_id: str) -> bool: ...
    def close(self) -> None: ...


# The methods a remote client (the store actor) may call.
STORE_METHODS = frozenset({
    "create", "get", "list", "count", "claimable", "is_cancelled", "claim", "heartbeat", "add_incident",
    "add_timing", "succeed", "fail_attempt", "release", "cancel", "delete",
    "count_by_tenant", "claimable_with_tenants", "expire", "expirable",
    "outbox_due", "outbox_delivered", "outbox_failed", "deliveries", "reserve_key", "release_key",
})

Mutation = Callable[[JobRecord, float], bool]


class TransactionalJobStore(abc.ABC):
    """Every lifecycle method, once; see the module docstring."""

    # -- backend hooks ----------------------------------------------------------------------
    @abc.abstractmethod
    def _transaction(self, job_id: str, now: float | None) -> AbstractContextManager[tuple[JobRecord | None, float, Callable[[JobRecord], None]]]:
        """Lock the job's row; yields ``(record or None, t, write)``; ``write(rec)`` stores it.
        ``write(rec, outbox_rows)`` also inserts those webhook outbox rows (``outbox.delivery_row``)
        in the same transaction; it is only called so when there are rows."""

    @abc.abstractmethod
    def _insert(self, rec: JobRecord) -> None:
        """Insert a new row; raise ``DuplicateJobError`` if the id exists."""

    @abc.abstractmethod
    def _clock(self, now: float | None) -> float:
        """``now`` if given, else the store's time."""

    # -- shared -----------------------------------------------------------------------------
    def _mutate(self, job_id: str, fn: Mutation, now: float | None = None) -> tuple[bool, JobRecord | None]:
        with self._transaction(job_id, now) as (rec, t, write):
            if rec is None:
                return False, None
            was_terminal = rec.terminal
            changed = bool(fn(rec, t))
            if changed:
                rows = outbox.rows_on_terminal(rec, was_terminal, t)
                write(rec, rows) if rows else write(rec)
            return changed, rec

    def create(self, params: JobParams, priority: int = 0, job_id: str | None = None,
               meta: dict | None = None, now: float | None = None, tenant: str = DEFAULT_TENANT) -> JobRecord:
        import uuid

        t = self._clock(now)
        rec = JobRecord(id=job_id or uuid.uuid4().hex, status=JobStatus.QUEUED, priority=int(priority), tenant=tenant,
                        params=JobParams.model_validate(params), meta=dict(meta or {}),
                        next_attempt_at=t, created_at=t, updated_at=t)
        self._insert(rec)
        return rec

    def claim(self, job_id: str, owner: str, lease_s: float, now: float | None = None,
              max_attempts: int | None = None) -> JobRecord | None:
        claimed: list[bool] = []

        def fn(rec: JobRecord, t: float) -> bool:
            before = rec.status, rec.finished_at
            claimed.append(transitions.claim(rec, owner, lease_s, t, max_attempts))
            return claimed[0] or (rec.status, rec.finished_at) != before

        _, rec = self._mutate(job_id, fn, now)
        return rec if claimed and claimed[0] else None

    def heartbeat(self, job_id: str, owner: str, lease_s: float, progress: float | None = None,
                  stage: str | None = None, now: float | None = None) -> bool:
        """Extend the lease (and record progress); False means stop: cancelled or taken over."""
        return self._mutate(job_id, lambda r, t: transitions.heartbeat(r, owner, lease_s, t, progress, stage), now)[0]

    def add_incident(self, job_id: str, owner: str, code: str, message: str, now: float | None = None) -> bool:
        return self._mutate(job_id, lambda r, t: transitions.add_incident(r, owner, code, message, t), now)[0]

    def add_timing(self, job_id: str, stage: str, seconds: float) -> bool:
        return self._mutate(job_id, lambda r, t: transitions.add_timing(r, stage, seconds))[0]

    def succeed(self, job_id: str, owner: str, result_path: str, now: float | None = None) -> bool:
        return self._mutate(job_id, lambda r, t: transitions.succeed(r, owner, result_path, t), now)[0]

    def fail_attempt(self, job_id: str, owner: str, error: Any, max_attempts: int, backoff_s: float,
                     now: float | None = None) -> JobRecord | None:
        err = ErrorInfo.of(error)
        changed, rec = self._mutate(
            job_id, lambda r, t: transitions.fail_attempt(r, owner, err, max_attempts, backoff_s, t), now)
        return rec if changed else None

    def release(self, job_id: str, owner: str, now: float | None = None) -> bool:
        return self._mutate(job_id, lambda r, t: transitions.release(r, owner, t), now)[0]

    def cancel(self, job_id: str, now: float | None = None) -> JobRecord | None:
        """Cancel a queued or running job; a terminal job is returned unchanged; None if unknown.
        A running owner learns of it on its next heartbeat (which returns False)."""
        return self._mutate(job_id, lambda r, t: transitions.cancel(r, t), now)[1]

    def expire(self, job_id: str, now: float | None = None) -> JobRecord | None:
        """Mark the job's result as removed by retention (the caller deletes the files)."""
        return self._mutate(job_id, lambda r, t: transitions.expire(r, t), now)[1]

    def is_cancelled(self, job_id: str) -> bool:
        rec = self.get(job_id)
        return rec is not None and rec.status == JobStatus.CANCELLED

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
