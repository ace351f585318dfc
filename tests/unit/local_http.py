"""A tiny HTTP/1.1 server on 127.0.0.1 for outbound-HTTP tests.

Hand-written on asyncio streams (not uvicorn) because the tests need misbehaving servers: slow
drips, stalls, endless bodies, redirects, TLS with a test CA. Real sockets, real HTTP.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass, field
from typing import Awaitable, Callable


@dataclass
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Handler = Callable[[SeenRequest, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class LocalHttpServer:
    handler: Handler
    ssl_context: ssl.SSLContext | None = None
    requests: list[SeenRequest] = field(default_factory=list)
    port: int = 0

    async def __aenter__(self) -> "LocalHttpServer":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        for task in list(getattr(self, "_tasks", ())):
            task.cancel()
        await asyncio.gather(*getattr(self, "_tasks", ()), return_exceptions=True)

    @property
    def origin(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks = getattr(self, "_tasks", set())
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            req = SeenRequest(method, path, headers, body)
            self.requests.append(req)
            await self.handler(req, writer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError, ssl.SSLError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()


def response(status: int, body: bytes = b"", headers: dict[str, str] | None = None, *,
             content_length: bool = True) -> bytes:
    reason = {200: "OK", 204: "No Content", 302: "Found", 404: "Not Found", 500: "Internal Server Error"}.get(status, "X")
    hdrs = {"Connection": "close", **(headers or {})}
    if content_length:
        hdrs["Content-Length"] = str(len(body))
    text = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    return text.encode("latin-1") + body


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
