"""PostgreSQL side of the tenant queries, the webhook outbox and the request keys (migration
0003): the same statements as ``SqliteJobStore``'s, in psycopg's parameter style. Shared logic
(row shapes, what goes into the outbox and when) is in ``serve_app/jobs/outbox.py``."""

from __future__ import annotations

from typing import Sequence

from serve_app.jobs.outbox import DELIVERED, FAILED, OUTBOX_COLUMNS, PENDING, as_dict
from serve_app.jobs.records import JobRecord, JobStatus
from serve_app.jobs.rows import COLUMNS, from_row

_SELECT = f"SELECT {', '.join(COLUMNS)} FROM jobs"
OUTBOX_INSERT = (f"INSERT INTO webhook_outbox ({', '.join(OUTBOX_COLUMNS)})"
                 f" VALUES ({', '.join(f'%({c})s' for c in OUTBOX_COLUMNS)})")
_OUTBOX_SELECT = f"SELECT {', '.join(OUTBOX_COLUMNS)} FROM webhook_outbox"
_CLAIMABLE_T = """
SELECT id, tenant FROM jobs, (SELECT COALESCE(%(now)s::float8, extract(epoch FROM clock_timestamp())::float8) AS t) AS clock
WHERE status IN ('queued', 'running')
  AND ((status = 'queued' AND next_attempt_at <= clock.t)
       OR (status = 'running' AND (lease_until IS NULL OR lease_until < clock.t)))
ORDER BY priority DESC, created_at ASC, seq ASC
LIMIT %(limit)s
"""


def _filters(status, tenant) -> tuple[str, list]:
    clauses, args = [], []
    if status is not None:
        statuses = [str(s) for s in ((status,) if isinstance(status, (str, JobStatus)) else status)]
        clauses.append("status = ANY(%s)")
        args.append(statuses)
    if tenant is not None:
        clauses.append("tenant = %s")
        args.append(tenant)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", args


class PostgresApiTables:
    """Mixed into ``PostgresJobStore`` (uses its ``_query``, ``_retry``, ``_with_conn``, ``_clock``)."""

    def list(self, status: str | None = None, limit: int = 100, offset: int = 0,
             tenant: str | None = None) -> list[JobRecord]:
        where, args = _filters(status, tenant)
        rows = self._query("list jobs", f"{_SELECT} {where} ORDER BY created_at DESC, seq DESC LIMIT %s OFFSET %s",
                           (*args, int(limit), int(offset)))
        return [from_row(r) for r in rows]

    def count(self, status: str | Sequence[str] | None = None, tenant: str | None = None) -> int:
        where, args = _filters(status, tenant)
        return int(self._query("count jobs", f"SELECT COUNT(*) FROM jobs {where}", args)[0][0])

    def count_by_tenant(self, status: str) -> dict[str, int]:
        rows = self._query("count jobs by tenant", "SELECT tenant, COUNT(*) FROM jobs WHERE status = %s GROUP BY tenant",
                           (str(status),))
        return {t: int(n) for t, n in rows}

    def claimable_with_tenants(self, now: float | None = None, limit: int = 100) -> list[tuple[str, str]]:
        rows = self._query("list claimable jobs", _CLAIMABLE_T,
                           {"now": None if now is None else float(now), "limit": int(limit)})
        return [(r[0], r[1]) for r in rows]

    def expirable(self, finished_before: float, limit: int = 100) -> list[str]:
        rows = self._query("list expirable jobs",
                           "SELECT id FROM jobs WHERE status IN ('succeeded', 'failed', 'cancelled')"
                           " AND expired_at IS NULL AND finished_at < %s ORDER BY finished_at LIMIT %s",
                           (float(finished_before), int(limit)))
        return [r[0] for r in rows]

    # -- outbox ------------------------------------------------------------------------------------
    def outbox_due(self, now: float | None = None, limit: int = 32, lease_s: float = 60.0) -> list[dict]:
        t = self._clock(now)

        def take(conn):
            with conn.transaction():
                rows = conn.execute(f"{_OUTBOX_SELECT} WHERE status = %s AND next_at <= %s ORDER BY next_at"
                                    " LIMIT %s FOR UPDATE SKIP LOCKED", (PENDING, t, int(limit))).fetchall()
                for r in rows:  # leased: no other worker sends it meanwhile
                    conn.execute("UPDATE webhook_outbox SET next_at = %s WHERE id = %s", (t + lease_s, r[0]))
                return [as_dict(r) for r in rows]

        return self._retry("take due webhooks", lambda _: self._with_conn(take))

    def _outbox_update(self, what: str, sql: str, args: tuple) -> bool:
        return self._retry(what, lambda _: self._with_conn(lambda c: c.execute(sql, args).rowcount > 0))

    def outbox_delivered(self, delivery_id: str, now: float | None = None) -> bool:
        return self._outbox_update(
            "mark webhook delivered",
            "UPDATE webhook_outbox SET status = %s, attempts = attempts + 1, last_error = NULL, updated_at = %s"
            " WHERE id = %s AND status = %s", (DELIVERED, self._clock(now), delivery_id, PENDING))

    def outbox_failed(self, delivery_id: str, next_at: float | None, error: str, now: float | None = None) -> bool:
        status = PENDING if next_at is not None else FAILED
        return self._outbox_update(
            "mark webhook failed",
            "UPDATE webhook_outbox SET status = %s, attempts = attempts + 1, last_error = %s, next_at = %s,"
            " updated_at = %s WHERE id = %s AND status = %s",
            (status, str(error)[:2000], next_at if next_at is not None else 0.0, self._clock(now), delivery_id,
             PENDING))

    def deliveries(self, job_id: str) -> list[dict]:
        return [as_dict(r) for r in self._query("list webhooks", f"{_OUTBOX_SELECT} WHERE job_id = %s"
                                                " ORDER BY created_at", (job_id,))]

    # -- request keys ----------------------------------------------------------------------------------
    def reserve_key(self, scope: str, fingerprint: str, job_id: str, expires_at: float,
                    now: float | None = None) -> tuple[str, str] | None:
        t = self._clock(now)

        def reserve(conn):
            with conn.transaction():
                conn.execute("DELETE FROM request_keys WHERE scope = %s AND expires_at <= %s", (scope, t))
                row = conn.execute(
                    "INSERT INTO request_keys (scope, fingerprint, job_id, expires_at) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT (scope) DO NOTHING RETURNING scope", (scope, fingerprint, job_id, float(expires_at))
                ).fetchone()
                if row is not None:
                    return None
                other = conn.execute("SELECT job_id, fingerprint FROM request_keys WHERE scope = %s",
                                     (scope,)).fetchone()
                return (other[0], other[1]) if other else None

        return self._retry(f"reserve key {scope}", lambda _: self._with_conn(reserve))

    def release_key(self, scope: str) -> bool:
        return self._outbox_update("release key", "DELETE FROM request_keys WHERE scope = %s", (scope,))
