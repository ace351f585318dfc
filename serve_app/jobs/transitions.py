"""The job lifecycle as pure functions on a ``JobRecord``: every store backend runs these inside its
own transaction, so SQLite and PostgreSQL share one definition of what each call means.

::

    queued --claim--> running --succeed--> succeeded
      ^                 |  \\--fail_attempt (not retryable, or attempts used up)--> failed
      |                 |
      +--fail_attempt (retryable, attempts left; next_attempt_at = now + backoff)
      +--release (graceful drain; does not use up an attempt)
      +--lease expired: the next claim takes the job over, recording ``worker_lost``
    queued/running --cancel--> cancelled

Each function changes ``rec`` in place and returns whether it changed anything (the backend writes
the row back only then). ``t`` is the store's clock (the database's, where it has one).
"""

from __future__ import annotations

from datetime import datetime, timezone

from serve_app.jobs.records import ACTIVE, Attempt, AttemptResources, ErrorInfo, Incident, JobRecord, JobStatus


def _iso(ts: float | None) -> str:
    if ts is None:
        return "unknown time"
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds")


def claimable(rec: JobRecord, t: float) -> bool:
    if rec.status == JobStatus.QUEUED:
        return rec.next_attempt_at <= t
    return rec.status == JobStatus.RUNNING and (rec.lease_until is None or rec.lease_until < t)


def owned(rec: JobRecord, owner: str) -> bool:
    return rec.status == JobStatus.RUNNING and rec.owner == owner


def claim(rec: JobRecord, owner: str, lease_s: float, t: float, max_attempts: int | None) -> bool:
    """Take the job if claimable. Taking over an expired lease closes the open attempt with
    ``worker_lost``; if that uses up ``max_attempts`` the job fails instead (a job that keeps
    killing its workers must not loop forever). True only if ``owner`` now runs the job."""
    if not claimable(rec, t):
        return False
    if rec.status == JobStatus.RUNNING:
        err = ErrorInfo(code="worker_lost", retryable=True,
                        message=f"owner {rec.owner} stopped heartbeating; lease expired at {_iso(rec.lease_until)}")
        att = rec.open_attempt
        if att is not None:
            att.ended_at, att.error = t, err
        rec.error = err
        if max_attempts is not None and rec.failed_attempts >= max_attempts:
            rec.status, rec.owner, rec.lease_until, rec.finished_at, rec.updated_at = (
                JobStatus.FAILED, None, None, t, t)
            return False
    rec.attempts.append(Attempt(n=len(rec.attempts) + 1, owner=owner, started_at=t))
    rec.status, rec.owner, rec.lease_until, rec.updated_at = JobStatus.RUNNING, owner, t + float(lease_s), t
    if rec.started_at is None:
        rec.started_at = t
    return True


def heartbeat(rec: JobRecord, owner: str, lease_s: float, t: float, progress: float | None,
              stage: str | None) -> bool:
    if not owned(rec, owner):
        return False
    rec.lease_until = t + float(lease_s)
    if progress is not None:
        rec.progress = min(1.0, max(0.0, float(progress)))
    if stage is not None:
        rec.stage = stage
    rec.updated_at = t
    return True


def add_incident(rec: JobRecord, owner: str, code: str, message: str, t: float) -> bool:
    att = rec.open_attempt
    if not owned(rec, owner) or att is None:
        return False
    att.incidents.append(Incident(code=str(getattr(code, "value", code) or "internal"), message=message, at=t))
    rec.updated_at = t
    return True


def record_resources(rec: JobRecord, owner: str, resources: dict, t: float) -> bool:
    """The open attempt's resource use (``AttemptResources`` fields); only its owner writes it."""
    att = rec.open_attempt
    if not owned(rec, owner) or att is None:
        return False
    att.resources = AttemptResources.model_validate(resources)
    rec.updated_at = t
    return True


def add_timing(rec: JobRecord, stage: str, seconds: float) -> bool:
    rec.timings[stage] = float(rec.timings.get(stage, 0.0)) + float(seconds)
    return True


def succeed(rec: JobRecord, owner: str, result_path: str, t: float) -> bool:
    """Only the current owner; earlier attempts' errors stay in ``attempts``."""
    if not owned(rec, owner):
        return False
    att = rec.open_attempt
    if att is not None:
        att.ended_at = t
    rec.status, rec.progress, rec.stage, rec.result_path, rec.error = JobStatus.SUCCEEDED, 1.0, "done", str(result_path), None
    rec.owner, rec.lease_until, rec.finished_at, rec.updated_at = None, None, t, t
    return True


def fail_attempt(rec: JobRecord, owner: str, error: ErrorInfo, max_attempts: int, backoff_s: float,
                 t: float) -> bool:
    """Retried iff retryable and failed attempts (this one included) < ``max_attempts``, after
    ``backoff_s * 2 ** (failed - 1)``."""
    if not owned(rec, owner):
        return False
    att = rec.open_attempt
    if att is None:  # defensive: a running job always has an open attempt
        att = Attempt(n=len(rec.attempts) + 1, owner=owner, started_at=t)
        rec.attempts.append(att)
    att.ended_at, att.error = t, error
    rec.error, rec.owner, rec.lease_until, rec.updated_at = error, None, None, t
    failed = rec.failed_attempts
    if error.retryable and failed < int(max_attempts):
        rec.status, rec.next_attempt_at = JobStatus.QUEUED, t + float(backoff_s) * 2 ** (failed - 1)
    else:
        rec.status, rec.finished_at = JobStatus.FAILED, t
    return True


def release(rec: JobRecord, owner: str, t: float) -> bool:
    """Give the job back without an error (graceful drain); claimable again at once."""
    if not owned(rec, owner):
        return False
    att = rec.open_attempt
    if att is not None:
        att.ended_at, att.error, att.released = t, None, True
    rec.status, rec.owner, rec.lease_until, rec.next_attempt_at, rec.updated_at = JobStatus.QUEUED, None, None, t, t
    return True


def cancel(rec: JobRecord, t: float) -> bool:
    if rec.status not in ACTIVE:
        return False
    err = ErrorInfo(code="cancelled", message="cancelled by request", retryable=False)
    att = rec.open_attempt
    if att is not None:
        att.ended_at, att.error = t, err
    rec.status, rec.error, rec.owner, rec.lease_until, rec.finished_at, rec.updated_at = (
        JobStatus.CANCELLED, err, None, None, t, t)
    return True


def expire(rec: JobRecord, t: float) -> bool:
    """Retention removed the result: the job stays ``succeeded`` and says its result expired."""
    if rec.status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED) or rec.expired_at is not None:
        return False
    rec.expired_at, rec.result_path, rec.updated_at = t, None, t
    return True
