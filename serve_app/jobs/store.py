"""The ``JobStore`` protocol and the base that every backend shares.

Who calls it: the API layer (``JobIntake`` creates jobs; routes get, list and cancel them), the
dispatcher (``claimable``) and the pipeline replicas (``claim``, ``heartbeat``, ``add_incident``,
``add_timing``, ``succeed``, ``fail_attempt``, ``release``). All methods are blocking; async callers
run them in a thread pool of their own.

``TransactionalJobStore`` implements every state change once, over the pure functions of
``transitions``; a backend supplies the row I/O (``_insert``, ``_transaction``) and its clock.
Every time-dependent method takes ``now`` for tests.

Wake-ups: ``wait_for_work(timeout)`` blocks until a job may have become claimable (created,
released, or requeued for a retry) or ``timeout`` passes, and says which. PostgreSQL delivers these
events across processes (``LISTEN/NOTIFY``); the default here only sees this process's own calls
(an in-process ``threading.Event``), so with SQLite it is in effect a poll timeout for work created
elsewhere. A wake-up is a hint: the caller still asks ``claimable()``.

Besides the jobs, a store keeps two small tables (``serve_app/jobs/outbox.py`` has the shared
logic): the webhook **outbox** (a row is added in the same transaction that makes a job with a
``callback_url`` terminal, so a delivery is never lost to a crash between the two) and
**request keys** (``Idempotency-Key``s and used Duix codes: scope -> request fingerprint, job id,
expiry).
"""

from __future__ import annotations

import abc
import threading
from contextlib import AbstractContextManager
from typing import Any, Callable, Protocol, Sequence

from serve_app.jobs import outbox, transitions
from serve_app.jobs.records import DEFAULT_TENANT, ErrorInfo, JobParams, JobRecord, JobStatus


class DuplicateJobError(ValueError):
    """A job with this id already exists."""


class JobStoreUnavailableError(RuntimeError):
    """The store's database could not be reached within the store's retry deadline (retryable)."""

    retryable = True


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
    def is_cancelled(self, job_id: str) -> bool: ...
    def claim(self, job_id: str, owner: str, lease_s: float, now: float | None = None,
              max_attempts: int | None = None) -> JobRecord | None: ...
    def heartbeat(self, job_id: str, owner: str, lease_s: float, progress: float | None = None,
                  stage: str | None = None, now: float | None = None) -> bool: ...
    def add_incident(self, job_id: str, owner: str, code: str, message: str, now: float | None = None) -> bool: ...
    def add_timing(self, job_id: str, stage: str, seconds: float) -> bool: ...
    def record_resources(self, job_id: str, owner: str, resources: dict, now: float | None = None) -> bool: ...
    def succeed(self, job_id: str, owner: str, result_path: str, now: float | None = None) -> bool: ...
    def fail_attempt(self, job_id: str, owner: str, error: Any, max_attempts: int, backoff_s: float,
                     now: float | None = None) -> JobRecord | None: ...
    def release(self, job_id: str, owner: str, now: float | None = None) -> bool: ...
    def cancel(self, job_id: str, now: float | None = None) -> JobRecord | None: ...
    def delete(self, job_id: str) -> bool: ...
    def wait_for_work(self, timeout: float) -> bool: ...
    def close(self) -> None: ...


# The methods a remote client (the store actor) may call.
STORE_METHODS = frozenset({
    "create", "get", "list", "count", "claimable", "is_cancelled", "claim", "heartbeat", "add_incident",
    "add_timing", "record_resources", "succeed", "fail_attempt", "release", "cancel", "delete",
    "count_by_tenant", "claimable_with_tenants", "expire", "expirable",
    "outbox_due", "outbox_delivered", "outbox_failed", "deliveries", "reserve_key", "release_key",
})

Mutation = Callable[[JobRecord, float], bool]
_EVENT_INIT = threading.Lock()


class TransactionalJobStore(abc.ABC):
    """Every lifecycle method, once; see the module docstring."""

    # -- backend hooks ----------------------------------------------------------------------
    @abc.abstractmethod
    def _transaction(self, job_id: str, now: float | None, skip_locked: bool = False
                     ) -> AbstractContextManager[tuple[JobRecord | None, float, Callable[[JobRecord], None]]]:
        """Lock the job's row; yields ``(record or None, t, write)``; ``write(rec)`` stores it.
        ``write(rec, outbox_rows)`` also inserts those webhook outbox rows (``outbox.delivery_row``)
        in the same transaction; it is only called so when there are rows.
        ``skip_locked`` (claims): a row another transaction holds yields None at once instead of
        waiting; a backend that serialises all writers anyway may ignore it."""

    @abc.abstractmethod
    def _insert(self, rec: JobRecord) -> None:
        """Insert a new row; raise ``DuplicateJobError`` if the id exists."""

    @abc.abstractmethod
    def _clock(self, now: float | None) -> float:
        """``now`` if given, else the store's time."""

    # -- shared -----------------------------------------------------------------------------
    def _mutate(self, job_id: str, fn: Mutation, now: float | None = None,
                skip_locked: bool = False) -> tuple[bool, JobRecord | None]:
        with self._transaction(job_id, now, skip_locked) as (rec, t, write):
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
        self._work_arrived()
        return rec

    def claim(self, job_id: str, owner: str, lease_s: float, now: float | None = None,
              max_attempts: int | None = None) -> JobRecord | None:
        claimed: list[bool] = []

        def fn(rec: JobRecord, t: float) -> bool:
            before = rec.status, rec.finished_at
            claimed.append(transitions.claim(rec, owner, lease_s, t, max_attempts))
            return claimed[-1] or (rec.status, rec.finished_at) != before

        # A backend may run ``fn`` again when it retries a transaction that did not commit (lost
        # connection): the last run is the one that counts. A row locked by another claimer is
        # skipped: someone else is taking the job right now.
        _, rec = self._mutate(job_id, fn, now, skip_locked=True)
        return rec if claimed and claimed[-1] and rec is not None else None

    def heartbeat(self, job_id: str, owner: str, lease_s: float, progress: float | None = None,
                  stage: str | None = None, now: float | None = None) -> bool:
        """Extend the lease (and record progress); False means stop: cancelled or taken over."""
        return self._mutate(job_id, lambda r, t: transitions.heartbeat(r, owner, lease_s, t, progress, stage), now)[0]

    def add_incident(self, job_id: str, owner: str, code: str, message: str, now: float | None = None) -> bool:
        return self._mutate(job_id, lambda r, t: transitions.add_incident(r, owner, code, message, t), now)[0]

    def add_timing(self, job_id: str, stage: str, seconds: float) -> bool:
        return self._mutate(job_id, lambda r, t: transitions.add_timing(r, stage, seconds))[0]

    def record_resources(self, job_id: str, owner: str, resources: dict, now: float | None = None) -> bool:
        return self._mutate(job_id, lambda r, t: transitions.record_resources(r, owner, resources, t), now)[0]

    def succeed(self, job_id: str, owner: str, result_path: str, now: float | None = None) -> bool:
        return self._mutate(job_id, lambda r, t: transitions.succeed(r, owner, result_path, t), now)[0]

    def fail_attempt(self, job_id: str, owner: str, error: Any, max_attempts: int, backoff_s: float,
                     now: float | None = None) -> JobRecord | None:
        err = ErrorInfo.of(error)
        changed, rec = self._mutate(
            job_id, lambda r, t: transitions.fail_attempt(r, owner, err, max_attempts, backoff_s, t), now)
        if changed and rec is not None and rec.status == JobStatus.QUEUED:
            self._work_arrived()
        return rec if changed else None

    def release(self, job_id: str, owner: str, now: float | None = None) -> bool:
        released = self._mutate(job_id, lambda r, t: transitions.release(r, owner, t), now)[0]
        if released:
            self._work_arrived()
        return released

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

    # -- wake-ups (see the module docstring) ---------------------------------------------------
    @property
    def _work_event(self) -> threading.Event:
        # Created on first use: backends do not call a base __init__.
        ev = self.__dict__.get("_work_event_obj")
        if ev is None:
            with _EVENT_INIT:
                ev = self.__dict__.setdefault("_work_event_obj", threading.Event())
        return ev

    def _work_arrived(self) -> None:
        self._work_event.set()

    def wait_for_work(self, timeout: float) -> bool:
        """True if work arrived (in this process) before ``timeout`` seconds passed."""
        ev = self._work_event
        woken = ev.wait(max(0.0, float(timeout)))
        # Cleared before the caller's next claimable() pass, so an event after this point is
        # either seen by that pass or wakes the next wait: none is lost.
        ev.clear()
        return woken

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
