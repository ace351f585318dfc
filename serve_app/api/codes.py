"""DRAFT: the API-level error codes and the error envelope.

The codes below are meant to join ``actors.errors.ErrorCode`` (the closed taxonomy) when the lead
merges; until then ``ApiCode`` carries them with the same ``str``-enum shape, so ``to_dict()`` and
clients see exactly what they will see afterwards. Each error knows its HTTP status and, where it
applies, the ``Retry-After`` / ``WWW-Authenticate`` headers.

Envelope (every non-2xx body of the API): ``{"error": {"code", "message", "retryable"}}``.
"""

from __future__ import annotations

import json
from enum import Enum

from actors.errors import ErrorCode, LipserveError


class ApiCode(str, Enum):
    UNAUTHORIZED = "unauthorized"  # 401: no key, or a key that is not configured
    FORBIDDEN = "forbidden"  # 403: a valid key without the right (e.g. an admin-only route)
    NOT_FOUND = "not_found"  # 404: also what another tenant's job looks like
    CONFLICT = "conflict"  # 409: Idempotency-Key reused with a different request
    RESULT_EXPIRED = "result_expired"  # 410: the result was removed by retention
    QUEUE_FULL = "queue_full"  # 429 + Retry-After: global or per-tenant queue/concurrency bound
    NOT_READY = "not_ready"  # 503 + Retry-After: starting up / draining
    INSUFFICIENT_STORAGE = "insufficient_storage"  # 507: free disk below retention.min_free_bytes


# HTTP status of every code, the existing ErrorCode members included (input errors default to 422).
HTTP_STATUS: dict[str, int] = {
    ApiCode.UNAUTHORIZED.value: 401,
    ApiCode.FORBIDDEN.value: 403,
    ApiCode.NOT_FOUND.value: 404,
    ApiCode.CONFLICT.value: 409,
    ApiCode.RESULT_EXPIRED.value: 410,
    ApiCode.QUEUE_FULL.value: 429,
    ApiCode.NOT_READY.value: 503,
    ApiCode.INSUFFICIENT_STORAGE.value: 507,
    ErrorCode.MEDIA_TOO_LARGE.value: 413,
    ErrorCode.MEDIA_TOO_LONG.value: 413,
    ErrorCode.INVALID_PARAMETER.value: 422,
}


class ApiError(LipserveError):
    """A request-level refusal (not a job failure). ``headers`` go on the HTTP response."""

    code = ApiCode.NOT_FOUND  # type: ignore[assignment]  # becomes ErrorCode after the merge
    status: int = 404
    retryable = False

    def __init__(self, message: str, *, retry_after_s: int | None = None, path: str | None = None):
        super().__init__(message, path=path)
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(int(self.retry_after_s))} if self.retry_after_s is not None else {}


class UnauthorizedError(ApiError):
    code, status = ApiCode.UNAUTHORIZED, 401

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="lipserve"'}


class ForbiddenError(ApiError):
    code, status = ApiCode.FORBIDDEN, 403


class NotFoundError(ApiError):
    code, status = ApiCode.NOT_FOUND, 404


class ConflictError(ApiError):
    code, status = ApiCode.CONFLICT, 409


class ResultExpiredError(ApiError):
    code, status = ApiCode.RESULT_EXPIRED, 410


class QueueFullError(ApiError):
    code, status, retryable = ApiCode.QUEUE_FULL, 429, True


class NotReadyError(ApiError):
    code, status, retryable = ApiCode.NOT_READY, 503, True


class InsufficientStorageError(ApiError):
    code, status, retryable = ApiCode.INSUFFICIENT_STORAGE, 507, True


def envelope(code: str | Enum, message: str, retryable: bool = False) -> dict:
    code = code.value if isinstance(code, Enum) else code
    message = (message or "").strip() or f"request refused ({code})"  # never an empty message
    return {"error": {"code": code, "message": message, "retryable": bool(retryable)}}


def envelope_bytes(code: str | Enum, message: str, retryable: bool = False) -> bytes:
    return json.dumps(envelope(code, message, retryable), separators=(",", ":")).encode()


def status_of(err: LipserveError) -> int:
    if isinstance(err, ApiError):
        return err.status
    return HTTP_STATUS.get(err.code.value, 422 if not err.retryable else 500)


def headers_of(err: LipserveError) -> dict[str, str]:
    return dict(err.headers) if isinstance(err, ApiError) else {}
