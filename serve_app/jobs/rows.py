"""The job row as SQL columns, shared by the SQL backends: JSON text for the nested fields."""

from __future__ import annotations

import json
from typing import Any

from serve_app.jobs.records import JobRecord

COLUMNS = ("id", "status", "priority", "params", "meta", "progress", "stage", "timings", "attempts", "error",
           "result_path", "owner", "lease_until", "next_attempt_at", "created_at", "updated_at", "started_at",
           "finished_at", "tenant", "expired_at")
JSON_COLUMNS = frozenset({"params", "meta", "timings", "attempts", "error"})


def to_row(rec: JobRecord) -> dict[str, Any]:
    d = rec.model_dump(mode="json")
    return {c: (json.dumps(d[c]) if c in JSON_COLUMNS and d[c] is not None else d[c]) for c in COLUMNS}


def from_row(row: Any) -> JobRecord:
    d = dict(zip(COLUMNS, row))
    for c in JSON_COLUMNS:
        if isinstance(d[c], str):
            d[c] = json.loads(d[c])
    if d["meta"] is None:
        d["meta"] = {}
    return JobRecord.model_validate(d)
