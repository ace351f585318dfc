"""``Idempotency-Key`` on ``POST /v1/jobs``: a client may retry a submit whose reply it lost.

The key is scoped to the tenant and kept ``jobs.idempotency_ttl_s`` (24 h). The request's
fingerprint is a SHA-256 over what decides the job: the options and the *content* of every input
(an upload's bytes, a URL or path as written). Same key + same fingerprint: the first job is
returned and nothing new is created. Same key + another fingerprint: 409 ``conflict``. A key whose
first request is still being taken in (no job yet) is a 409 too, retryable.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from actors.errors import ConflictError, InvalidParameterError
from actors.media.digest import file_digest
from serve_app.jobs.outbox import key_scope

HEADER = "idempotency-key"
MAX_KEY_LENGTH = 255


def parse_key(raw: str | None) -> str | None:
    if raw is None:
        return None
    key = raw.strip()
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidParameterError(f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable characters",
                                    path="Idempotency-Key")
    return key


def fingerprint(options: dict[str, Any], files: dict[str, str]) -> str:
    """``files``: field -> server path of an acquired upload (hashed by content)."""
    parts = {"options": options, "files": {k: file_digest(v) for k, v in sorted(files.items())}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class Idempotency:
    def __init__(self, store, ttl_s: float):
        self.store = store  # AsyncJobStore
        self.ttl_s = ttl_s

    async def reserve(self, tenant: str, key: str, fp: str, job_id: str) -> str | None:
        """None: the key is ours now, create ``job_id``. Else the id of the job the key names."""
        scope = key_scope(tenant, "idem", key)
        existing = await self.store.reserve_key(scope, fp, job_id, time.time() + self.ttl_s)
        if existing is None:
            return None
        other_job, other_fp = existing
        if other_fp != fp:
            raise ConflictError(f"Idempotency-Key {key!r} was already used with a different request",
                                path="Idempotency-Key")
        return other_job

    async def release(self, tenant: str, key: str) -> None:
        await self.store.release_key(key_scope(tenant, "idem", key))
