"""The webhook outbox and request keys, as every store backend shares them.

A backend keeps two small tables and implements a handful of short SQL statements over them
(``SqliteJobStore``; a PostgreSQL backend the same): everything else lives here once.

* ``webhook_outbox``: one row per delivery (``OUTBOX_COLUMNS``). A row is added by the store in the
  same transaction that makes a job with a ``callback_url`` terminal (``rows_on_terminal``), so a
  crash can never lose it; ``WebhookWorker`` (serve_app/jobs/webhooks.py) takes due rows through
  ``StoreOutbox``, which leases them (``next_at`` pushed past the lease) so two workers never send
  the same row at once, and records the outcome. State per row: ``pending`` -> ``delivered`` |
  ``failed`` (gave up).
* ``request_keys``: ``scope`` (tenant + Idempotency-Key, or a used Duix code) -> fingerprint of the
  request, job id, expiry. ``reserve_key`` inserts a key or returns the live one.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from serve_app.jobs.records import JobRecord
from serve_app.jobs.webhooks import Delivery, Outbox

OUTBOX_COLUMNS = ("id", "job_id", "tenant", "url", "body", "status", "attempts", "next_at", "last_error",
                  "created_at", "updated_at")
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


def delivery_row(rec: JobRecord, t: float) -> dict[str, Any]:
    """The outbox row for a job that just became terminal: its body is the job as its tenant sees it
    (``GET /v1/jobs/{id}``, without the delivery state), signed per attempt by the worker."""
    body = json.dumps(rec.to_api(admin=False), separators=(",", ":"), sort_keys=True).encode()
    return {"id": uuid.uuid4().hex, "job_id": rec.id, "tenant": rec.tenant, "url": rec.callback_url,
            "body": body, "status": PENDING, "attempts": 0, "next_at": t, "last_error": None,
            "created_at": t, "updated_at": t}


def rows_on_terminal(rec: JobRecord, was_terminal: bool, t: float) -> list[dict[str, Any]]:
    if was_terminal or not rec.terminal or not rec.callback_url:
        return []
    return [delivery_row(rec, t)]


def as_dict(row: Any) -> dict[str, Any]:
    d = dict(zip(OUTBOX_COLUMNS, row)) if not isinstance(row, dict) else dict(row)
    if isinstance(d.get("body"), memoryview):
        d["body"] = bytes(d["body"])
    return d


def delivery_view(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What ``GET /v1/jobs/{id}`` shows of the job's webhook (the latest delivery)."""
    if not rows:
        return None
    last = max(rows, key=lambda r: r["created_at"])
    return {"status": last["status"], "attempts": int(last["attempts"]), "last_error": last["last_error"],
            "next_attempt_at": last["next_at"] if last["status"] == PENDING else None}


def key_scope(tenant: str, kind: str, key: str) -> str:
    return f"{kind}:{tenant}:{key}"


class StoreOutbox(Outbox):
    """``WebhookWorker``'s outbox over any job store (local, actor, PostgreSQL)."""

    def __init__(self, store, lease_s: float = 60.0):
        self.store = store
        self.lease_s = lease_s

    def due(self, now: float, limit: int) -> list[Delivery]:
        rows = self.store.outbox_due(now=now, limit=limit, lease_s=self.lease_s)
        return [Delivery(id=r["id"], job_id=r["job_id"], tenant=r["tenant"], url=r["url"], body=bytes(r["body"]),
                         attempts=int(r["attempts"])) for r in map(as_dict, rows)]

    def mark_delivered(self, delivery_id: str) -> None:
        self.store.outbox_delivered(delivery_id)

    def mark_failed(self, delivery_id: str, next_at: float | None, error: str) -> None:
        self.store.outbox_failed(delivery_id, next_at, error)
