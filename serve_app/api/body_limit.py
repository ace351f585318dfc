"""Per-route request body limits, enforced while the body is read.

A pure ASGI middleware, so it sees every body chunk before any framework buffers it: a declared
``Content-Length`` over the limit is refused before the app runs, and a body without one (chunked)
is counted as it arrives and refused the moment it passes the limit. The rest is never read: the
413 goes out with ``Connection: close`` and the server drops the connection.

The app may swallow the exception that ``receive`` raises (FastAPI turns body errors into a 400);
that does not matter, because once the limit is passed this middleware replaces whatever the app
answers with the 413 envelope.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, MutableMapping

from actors.errors import MediaTooLargeError
from serve_app.api.errors import envelope_bytes

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

KIB = 1024


def route_path(scope: Scope) -> str:
    """The path as the app's routes see it: without the mount prefix (``root_path``) that Serve
    puts in front when the application has a ``route_prefix`` (``/limited/v1/jobs`` -> ``/v1/jobs``)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root):] or "/"
    return path


class BodyTooLargeError(MediaTooLargeError):
    """Raised from ``receive`` once the body passes its route's limit."""


@dataclass(frozen=True)
class BodyLimits:
    """``routes`` maps a path pattern to a byte limit: ``"/easy/*"`` is a prefix (``/easy/`` and
    everything under it), anything else is an exact path. The longest matching pattern wins;
    unmatched paths get ``default``."""

    default: int = 16 * KIB
    routes: dict[str, int] = field(default_factory=dict)

    def limit_for(self, path: str) -> int:
        best, best_len = self.default, -1
        for pattern, limit in self.routes.items():
            if pattern.endswith("*"):
                prefix = pattern[:-1]
                hit = path.startswith(prefix) or path == prefix.rstrip("/")
                length = len(prefix)
            else:
                hit = path.rstrip("/") == pattern.rstrip("/")
                length = len(pattern) + 1  # an exact match beats a prefix of the same length
            if hit and length > best_len:
                best, best_len = limit, length
        return best

    @classmethod
    def for_lipserve(cls, upload_bytes: int, *, duix_bytes: int = 64 * KIB, json_bytes: int = 256 * KIB,
                     default: int = 16 * KIB) -> "BodyLimits":
        """The service's routes: a job or avatar upload may carry two media files plus fields; the
        Duix API takes small JSON only."""
        multipart = 2 * upload_bytes + 64 * KIB
        return cls(default=default, routes={"/v1/jobs": multipart, "/v1/avatars": upload_bytes + 64 * KIB,
                                            "/easy/*": duix_bytes, "/v1/*": json_bytes})


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limits: BodyLimits):
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.limit_for(route_path(scope))
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _send_413(send, limit, declared)
            return

        state = _State()

        async def limited_receive() -> Message:
            if state.exceeded:
                raise BodyTooLargeError(_message(limit), path="request body")
            message = await receive()
            if message["type"] == "http.request":
                state.received += len(message.get("body", b""))
                if state.received > limit:
                    state.exceeded = True
                    raise BodyTooLargeError(_message(limit), path="request body")
            return message

        async def guarded_send(message: Message) -> None:
            if state.exceeded and not state.app_started:
                return  # the app's answer to a refused body is replaced by the 413 below
            if message["type"] == "http.response.start":
                state.app_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLargeError:
            if not state.exceeded:
                raise
        except Exception:
            if not state.exceeded or state.app_started:
                raise
        if state.exceeded and not state.app_started:
            await _send_413(send, limit, None)


@dataclass
class _State:
    received: int = 0
    exceeded: bool = False
    app_started: bool = False


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server rejects a malformed Content-Length itself
    return None


def _message(limit: int) -> str:
    return f"request body is larger than the limit of {limit} bytes for this route"


async def _send_413(send: Send, limit: int, declared: int | None) -> None:
    text = _message(limit) if declared is None else f"request body of {declared} bytes is over the limit of {limit} bytes for this route"
    body = envelope_bytes(MediaTooLargeError(text, path="request body"))
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
