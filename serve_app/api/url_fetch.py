"""SSRF-safe outbound HTTP: downloading URL inputs and POSTing webhooks.

Every hop is parsed strictly and vetted by ``address_policy`` (all resolved addresses must be
public unless the policy allows otherwise), and the connection goes to the vetted address itself:
the request URL carries the IP, while the ``Host`` header and, for https, the TLS SNI name and the
certificate check use the client's host name. There is no second DNS lookup to rebind.

Redirects are followed by hand, at most ``max_redirects``, each hop vetted again. A download has an
overall deadline, a minimum transfer rate (after a grace period) and a byte cap.

Errors are typed and name the client's URL. Until the server has sent response headers, every
failure (refused, reset, timed out, TLS) reads the same, so a client cannot map which internal
ports are open by timing or wording.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping
from urllib.parse import quote, urljoin

import httpx

from actors.errors import InvalidParameterError, MediaTooLargeError, UnreadableFileError
from serve_app.api.address_policy import AddressPolicy, IPAddress, Resolver, Target, parse_target, vet_target

__all__ = ["AddressPolicy", "FetchLimits", "FetchResult", "SafeHttp"]

log = logging.getLogger("lipserve.url_fetch")

_REDIRECTS = {301, 302, 303, 307, 308}
_NO_ANSWER = "no usable answer from the server (the connection failed, was refused or timed out)"


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int
    deadline_s: float = 120.0  # the whole download, redirects included
    connect_timeout_s: float = 10.0
    min_rate_bytes_s: float = 16 * 1024  # average since the body started, checked after the grace
    rate_grace_s: float = 5.0
    max_redirects: int = 3


@dataclass(frozen=True)
class FetchResult:
    path: Path
    size: int
    content_type: str | None
    final_url: str  # after redirects


class SafeHttp:
    """Outbound HTTP under an ``AddressPolicy``. ``resolver`` and ``ssl_context`` are injectable for
    tests (a fake DNS mapping; a test CA)."""

    def __init__(self, policy: AddressPolicy | None = None, *, resolver: Resolver | None = None,
                 ssl_context: ssl.SSLContext | None = None, user_agent: str = "lipserve/1"):
        self.policy = policy or AddressPolicy()
        self.resolver = resolver
        self._ssl = ssl_context
        self.user_agent = user_agent

    # ------------------------------------------------------------------ public API
    async def download(self, url: str, dest: Path, limits: FetchLimits) -> FetchResult:
        """GET ``url`` into ``dest`` (written as ``dest.part`` then renamed). Raises
        ``InvalidParameterError`` (bad or refused URL), ``MediaTooLargeError`` or
        ``UnreadableFileError``, each naming ``url``."""
        dest = Path(dest)
        part = dest.with_name(dest.name + ".part")
        progress = _Progress()
        try:
            result = await asyncio.wait_for(self._download(url, part, limits, progress), timeout=limits.deadline_s)
            os.replace(part, dest)
            return FetchResult(dest, result[0], result[1], result[2])
        except asyncio.TimeoutError as exc:
            if not progress.answered:  # still connecting: same wording as a refused connection
                raise UnreadableFileError(_NO_ANSWER, path=url) from exc
            raise UnreadableFileError(f"download did not finish within {limits.deadline_s:g} s", path=url) from exc
        finally:
            part.unlink(missing_ok=True)

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], *, timeout_s: float = 10.0) -> int:
        """POST ``body`` to ``url`` once (no redirects: a 3xx is returned as it is) and return the
        HTTP status. Raises ``InvalidParameterError`` for a refused URL and ``UnreadableFileError``
        when no answer came within ``timeout_s``."""
        target = parse_target(url)

        async def attempt() -> int:
            ip = await vet_target(target, self.policy, self.resolver)
            async with self._client(min(timeout_s, 10.0)) as client:
                resp = await self._send(client, "POST", target, ip, headers, body, url)
                try:
                    return resp.status_code  # the receiver's body is never read
                finally:
                    await resp.aclose()

        try:
            return await asyncio.wait_for(attempt(), timeout=timeout_s)
        except asyncio.TimeoutError as exc:
            raise UnreadableFileError(_NO_ANSWER, path=url) from exc

    # ------------------------------------------------------------------ internals
    async def _download(self, url: str, part: Path, limits: FetchLimits, progress: "_Progress"):
        current = url
        for hop in range(limits.max_redirects + 1):
            try:
                target = parse_target(current)
                ip = await vet_target(target, self.policy, self.resolver)
            except (InvalidParameterError, UnreadableFileError) as err:
                if hop == 0:
                    raise
                # Name the client's URL; say which hop was refused and why.
                reason = err.message.removeprefix(f"{current}: ")
                raise type(err)(f"redirect to {current} refused: {reason}", path=url) from err
            async with self._client(limits.connect_timeout_s) as client:
                progress.answered = False
                resp = await self._send(client, "GET", target, ip, {"Accept-Encoding": "identity"}, None, url)
                progress.answered = True
                try:
                    if resp.status_code in _REDIRECTS and resp.headers.get("location"):
                        current = urljoin(current, resp.headers["location"])
                        continue
                    if resp.status_code != 200:
                        raise UnreadableFileError(f"download failed: the server answered HTTP {resp.status_code}",
                                                  path=url)
                    size = await self._read_body(resp, part, limits, url)
                    return size, resp.headers.get("content-type"), current
                finally:
                    await resp.aclose()
        raise UnreadableFileError(f"download failed: more than {limits.max_redirects} redirects", path=url)

    async def _read_body(self, resp: httpx.Response, part: Path, limits: FetchLimits, url: str) -> int:
        declared = resp.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limits.max_bytes:
            raise MediaTooLargeError(f"download is {declared} bytes, over the limit of {limits.max_bytes}", path=url)
        started = time.monotonic()
        size = 0
        chunks = resp.aiter_raw().__aiter__()  # no chunk_size: httpx would buffer up to it
        with open(part, "wb") as f:
            while True:
                # Wait no longer than the moment the average rate would drop below the minimum.
                rate_due = started + limits.rate_grace_s + size / max(limits.min_rate_bytes_s, 1e-9)
                wait = max(rate_due - time.monotonic(), 0.0)
                try:
                    chunk = await asyncio.wait_for(chunks.__anext__(), timeout=wait)
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError as exc:
                    raise UnreadableFileError(
                        f"download is slower than the minimum of {limits.min_rate_bytes_s:g} bytes/s", path=url) from exc
                except httpx.HTTPError as exc:
                    log.debug("download body of %s failed: %r", url, exc)
                    raise UnreadableFileError("download broke off before the end of the body", path=url) from exc
                size += len(chunk)
                if size > limits.max_bytes:
                    raise MediaTooLargeError(f"download is larger than the limit of {limits.max_bytes} bytes", path=url)
                f.write(chunk)
        if size == 0:
            raise UnreadableFileError("download is empty", path=url)
        return size

    def _client(self, connect_timeout_s: float) -> httpx.AsyncClient:
        # One client per hop: a pooled TLS connection must never serve a different host name that
        # happens to share the IP. trust_env=False: an HTTP(S)_PROXY variable would connect to the
        # proxy instead of the vetted address.
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        return httpx.AsyncClient(verify=self._ssl, trust_env=False, follow_redirects=False,
                                 timeout=httpx.Timeout(connect_timeout_s, read=None, write=30.0, pool=5.0))

    async def _send(self, client: httpx.AsyncClient, method: str, target: Target, ip: IPAddress,
                    headers: Mapping[str, str], body: bytes | None, client_url: str) -> httpx.Response:
        pinned = httpx.URL(scheme=target.scheme, host=str(ip), port=target.port,
                           raw_path=quote(target.path_and_query, safe="".join(map(chr, range(0x21, 0x7f)))).encode())
        all_headers = {"User-Agent": self.user_agent, **headers, "Host": target.host_header}
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        request = client.build_request(method, pinned, headers=all_headers, content=body, extensions=extensions)
        try:
            return await client.send(request, stream=True)
        except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
            # Logged for the operator; the client sees one wording for every cause.
            log.info("request to %s (%s) failed: %r", target.url, ip, exc)
            raise UnreadableFileError(_NO_ANSWER, path=client_url) from exc


@dataclass
class _Progress:
    answered: bool = False  # the current hop's server has sent response headers
