"""The one exception-handler module: every error becomes ``{"error": {code, message, retryable}}``
with the HTTP status of its code. Framework errors (unknown route, wrong method, a body or query
that fails validation) are mapped too, so no answer of the native API has another shape. The Duix
API keeps its own envelope (``serve_app/api/duix``), which its routes build themselves.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from actors.errors import (
    ErrorCode,
    InputError,
    InvalidParameterError,
    LipserveError,
    MethodNotAllowedError,
    NotFoundError,
    as_lipserve_error,
)
from serve_app.api.schemas import ErrorResponse

log = logging.getLogger("lipserve.api")

STATUS_FOR_CODE: dict[ErrorCode, int] = {
    ErrorCode.MEDIA_TOO_LARGE: 413,
    ErrorCode.MEDIA_TOO_LONG: 413,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.CONFLICT: 409,
    ErrorCode.RESULT_NOT_READY: 409,
    ErrorCode.RESULT_EXPIRED: 410,
    ErrorCode.QUEUE_FULL: 429,
    ErrorCode.NOT_READY: 503,
    ErrorCode.INSUFFICIENT_STORAGE: 507,
    ErrorCode.MODEL_LOAD_FAILED: 500,
}

_DESCRIPTIONS = {401: "Missing or wrong API key", 403: "Not allowed for this key", 404: "No such job or avatar",
                 405: "Method not allowed", 409: "Conflict (e.g. the result is not ready yet)",
                 410: "The result has expired", 413: "Upload or media over the limits",
                 422: "Invalid input: the message names the file or field and the reason",
                 429: "Queue full: retry after Retry-After seconds", 500: "Internal error",
                 503: "Not ready", 507: "Server storage below its watermark"}


def status_for(err: LipserveError) -> int:
    if err.code in STATUS_FOR_CODE:
        return STATUS_FOR_CODE[err.code]
    return 422 if isinstance(err, InputError) else 500


def headers_for(err: LipserveError) -> dict[str, str]:
    """``Retry-After`` where the error says when to come back; the auth challenge on 401."""
    headers: dict[str, str] = {}
    retry_after = getattr(err, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(int(retry_after))
    if err.code == ErrorCode.UNAUTHORIZED:
        headers["WWW-Authenticate"] = 'Bearer realm="lipserve"'
    return headers


def envelope(err: LipserveError) -> dict:
    return {"error": err.to_dict()}


def envelope_bytes(err: LipserveError) -> bytes:
    """The envelope as bytes, for the pure-ASGI middlewares that answer before the app runs."""
    return json.dumps(envelope(err), separators=(",", ":"), ensure_ascii=False).encode()


def error_response(err: LipserveError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(envelope(err), status_code=status_for(err), headers={**headers_for(err), **(headers or {})})


def responses(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI ``responses=`` for a route: each listed status answers an ``ErrorResponse``. 422 is
    always listed: it replaces FastAPI's own validation schema, which is not what the API answers."""
    return {s: {"model": ErrorResponse, "description": _DESCRIPTIONS.get(s, "Error")}
            for s in sorted({*statuses, 422, 500})}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "request"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return "invalid request: " + ("; ".join(parts) or "does not match the schema")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LipserveError)
    async def _typed(request: Request, exc: LipserveError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return error_response(InvalidParameterError(_validation_message(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            err: LipserveError = NotFoundError(f"no route {request.method} {request.url.path}")
        elif exc.status_code == 405:
            err = MethodNotAllowedError(f"{request.method} is not allowed on {request.url.path}")
        else:
            err = InvalidParameterError(str(exc.detail or f"HTTP {exc.status_code}"))
            return JSONResponse({"error": err.to_dict()}, status_code=exc.status_code)
        return error_response(err, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(as_lipserve_error(exc, stage="api"))
