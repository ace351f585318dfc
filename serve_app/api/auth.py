"""API keys and tenants.

Keys come from ``LIPSERVE_API_KEYS`` (``tenant:key,tenant:key``) and/or the file named by
``auth.keys_file`` (one ``tenant:key`` per line, ``#`` comments). Only SHA-256 digests of the keys
are kept in memory, and a presented key is compared with every configured digest using
``hmac.compare_digest`` without stopping at a match, so neither the comparison nor the position
of the key in the list shows in the timing.

When no key is configured, auth is off and every request is the ``ANONYMOUS`` tenant (a trusted
network only; documented in docs/SECURITY.md). When any key is configured, the protected prefixes
(``/v1/``, and ``/easy/`` unless ``duix.auth: none``) require ``Authorization: Bearer <key>``;
``/healthz``, ``/readyz`` and ``/metrics`` stay open for probes.

Paths matching ``query_token_paths`` (the app passes the live HLS routes' pattern,
``serve_app/api/routes/hls.py:QUERY_TOKEN_PATHS``) also take the key as ``?access_token=<key>``:
the browser's own HLS player fetches the playlist and segments itself and cannot add a header.
Only there, and only when no ``Authorization`` header is sent; off unless the caller names them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping
from urllib.parse import parse_qs

from actors.errors import ForbiddenError, UnauthorizedError
from serve_app.api.body_limit import route_path
from serve_app.api.errors import envelope_bytes, headers_for, status_for

ENV_KEYS = "LIPSERVE_API_KEYS"
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
MIN_KEY_LENGTH = 16  # short keys can be guessed; refuse them at startup
_TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Tenant:
    name: str
    is_admin: bool = False


# Every request when auth is off. Not an admin: records still hide server details.
ANONYMOUS = Tenant("default", is_admin=False)


def parse_key_entries(text: str, *, source: str, separator: str = "\n") -> list[tuple[str, str]]:
    """``tenant:key`` entries split by ``separator``; blank entries and ``#`` comments skipped.
    A bad entry is a ``ValueError`` naming ``source`` and the entry's number, never the key."""
    entries = []
    for number, raw in enumerate(text.split(separator), start=1):
        line = raw.split("#", 1)[0].strip() if separator == "\n" else raw.strip()
        if not line:
            continue
        tenant, sep, key = line.partition(":")
        tenant, key = tenant.strip(), key.strip()
        where = f"{source} entry {number}"
        if not sep or not tenant or not key:
            raise ValueError(f"{where}: expected 'tenant:key'")
        if not _TENANT_NAME.match(tenant):
            raise ValueError(f"{where}: tenant name must be 1-64 of letters, digits, '_', '.', '-'")
        if len(key) < MIN_KEY_LENGTH or any(c.isspace() for c in key):
            raise ValueError(f"{where}: the key for tenant {tenant!r} must be at least {MIN_KEY_LENGTH} "
                             "characters without spaces")
        entries.append((tenant, key))
    return entries


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class ApiKeyRing:
    """The configured keys (as digests) and the tenants they stand for."""

    def __init__(self, entries: Iterable[tuple[str, str]] = (), admin_tenants: Iterable[str] = ()):
        admins = set(admin_tenants)
        self._digests: list[tuple[bytes, Tenant]] = []
        for tenant, key in entries:
            digest = _digest(key)
            for known, owner in self._digests:
                if hmac.compare_digest(known, digest) and owner.name != tenant:
                    raise ValueError(f"one API key is configured for two tenants ({owner.name!r} and {tenant!r})")
            self._digests.append((digest, Tenant(tenant, is_admin=tenant in admins)))
        unknown = admins - self.tenant_names
        if unknown and self._digests:
            raise ValueError(f"auth.admin_tenants names tenants without a key: {', '.join(sorted(unknown))}")

    @classmethod
    def load(cls, *, keys_file: str | None = None, admin_tenants: Iterable[str] = (),
             environ: Mapping[str, str] | None = None) -> "ApiKeyRing":
        environ = os.environ if environ is None else environ
        entries = parse_key_entries(environ.get(ENV_KEYS, ""), source=ENV_KEYS, separator=",")
        if keys_file:
            try:
                with open(keys_file, encoding="utf-8") as f:
                    text = f.read()
            except OSError as exc:
                raise ValueError(f"auth.keys_file {keys_file} cannot be read: {exc.strerror}") from exc
            entries += parse_key_entries(text, source=f"auth.keys_file {keys_file}")
        return cls(entries, admin_tenants)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    @property
    def tenant_names(self) -> set[str]:
        return {t.name for _, t in self._digests}

    def authenticate(self, authorization: str | None) -> Tenant:
        """The tenant of an ``Authorization`` header value; ``UnauthorizedError`` otherwise."""
        if not self.enabled:
            return ANONYMOUS
        if not authorization:
            raise UnauthorizedError("this route needs an API key: send 'Authorization: Bearer <key>'")
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise UnauthorizedError("the Authorization header must be 'Bearer <key>'")
        digest = _digest(key.strip())
        found: Tenant | None = None
        for known, tenant in self._digests:  # no early exit: the time does not depend on the match
            if hmac.compare_digest(known, digest):
                found = tenant
        if found is None:
            raise UnauthorizedError("the API key is not valid")
        return found

    def __repr__(self) -> str:  # never show digests either
        return f"ApiKeyRing(tenants={sorted(self.tenant_names)})"


def require_admin(tenant: Tenant) -> Tenant:
    if not tenant.is_admin:
        raise ForbiddenError(f"tenant {tenant.name!r} is not an admin")
    return tenant


class ApiKeyMiddleware:
    """Pure ASGI: authenticates protected paths and puts the ``Tenant`` at
    ``scope["state"]["tenant"]`` (``request.state.tenant`` in handlers; see ``tenant_of``)."""

    def __init__(self, app, keyring: ApiKeyRing, *, protected_prefixes: tuple[str, ...] = ("/v1/",),
                 open_paths: frozenset[str] = OPEN_PATHS, query_token_paths: re.Pattern | None = None):
        self.app = app
        self.keyring = keyring
        self.protected_prefixes = protected_prefixes
        self.open_paths = open_paths
        self.query_token_paths = query_token_paths

    def _protected(self, path: str) -> bool:
        if path in self.open_paths:
            return False
        return any(path.startswith(p) or path == p.rstrip("/") for p in self.protected_prefixes)

    def _query_token(self, scope: dict[str, Any]) -> str | None:
        """``Bearer <access_token>`` for the paths that may carry the key in the query string."""
        # The route's own path (without a Serve route_prefix), as ``_protected`` sees it.
        if self.query_token_paths is None or not self.query_token_paths.match(route_path(scope)):
            return None
        tokens = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("access_token")
        return f"Bearer {tokens[0]}" if tokens else None

    async def __call__(self, scope: dict[str, Any], receive, send) -> None:
        if scope["type"] in ("http", "websocket"):
            state = scope.setdefault("state", {})
            tenant = ANONYMOUS
            if self._protected(route_path(scope)):
                header = None
                for name, value in scope.get("headers", ()):
                    if name == b"authorization":
                        header = value.decode("latin-1")
                if header is None:
                    header = self._query_token(scope)
                try:
                    tenant = self.keyring.authenticate(header)
                except UnauthorizedError as err:
                    if scope["type"] == "http":
                        await _send_error(send, err)
                    else:
                        await send({"type": "websocket.close", "code": 1008})
                    return
            state["tenant"] = tenant
        await self.app(scope, receive, send)


def tenant_of(request) -> Tenant:
    """The tenant the middleware resolved for a starlette ``Request`` (``ANONYMOUS`` if none)."""
    return getattr(request.state, "tenant", ANONYMOUS)


async def _send_error(send, err: UnauthorizedError) -> None:
    body = envelope_bytes(err)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in headers_for(err).items()]
    await send({"type": "http.response.start", "status": status_for(err), "headers": headers})
    await send({"type": "http.response.body", "body": body})
