"""Signed webhook deliveries from a durable outbox.

Signature: ``Lipserve-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>``.
The timestamp is signed with the body, so a receiver that checks it (``verify``'s tolerance) cannot
be fed an old delivery again. Each attempt is signed afresh. Several ``v1=`` values may appear
(during a secret rotation); a receiver accepts if any matches.

Delivery: ``WebhookWorker`` takes due rows from an ``Outbox`` (the job store implements it, so
deliveries survive restarts), POSTs them through an injected ``Poster`` (in production
``SafeHttp.post`` from serve_app/api/url_fetch.py, which applies the same address checks as URL
inputs) and records the outcome: delivered on 2xx; otherwise retried with exponential backoff
until ``max_attempts``. A target refused by the address policy is not retried: it will not become
acceptable by waiting.

No HTTP-server or Serve imports here: the HTTP client comes in through ``Poster``.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import hmac
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Mapping, Protocol

from actors.errors import InvalidParameterError, LipserveError

log = logging.getLogger("lipserve.webhooks")

SIGNATURE_HEADER = "Lipserve-Signature"
DELIVERY_HEADER = "Lipserve-Delivery"  # stable per delivery: receivers de-duplicate on it
ATTEMPT_HEADER = "Lipserve-Attempt"
ENV_SECRET = "LIPSERVE_WEBHOOK_SECRET"
ENV_TENANT_SECRETS = "LIPSERVE_WEBHOOK_SECRETS"  # 'tenant:secret,tenant:secret'


# ------------------------------------------------------------------ signing
def _as_bytes(secret: bytes | str) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def signature(secret: bytes | str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(_as_bytes(secret), f"{int(timestamp)}.".encode() + body, hashlib.sha256)
    return mac.hexdigest()


def sign(secret: bytes | str, body: bytes, timestamp: int | None = None) -> str:
    """The ``Lipserve-Signature`` header value for ``body``."""
    t = int(time.time() if timestamp is None else timestamp)
    return f"t={t},v1={signature(secret, body, t)}"


def verify(secret: bytes | str, body: bytes, header: str | None, *, tolerance_s: float = 300.0,
           now: float | None = None) -> bool:
    """For receivers (and tests): True if ``header`` signs ``body`` with ``secret`` and its
    timestamp is within ``tolerance_s`` of ``now``."""
    if not header:
        return False
    t, candidates = None, []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            t = int(value)
        elif key == "v1" and value:
            candidates.append(value.strip().lower())
    if t is None or not candidates:
        return False
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    expected = signature(secret, body, t)
    ok = False
    for candidate in candidates:  # check all: timing does not tell which one matched
        ok |= hmac.compare_digest(candidate.encode(), expected.encode())
    return ok


@dataclass(frozen=True)
class WebhookSecrets:
    """The default secret and per-tenant overrides."""

    default: bytes | None = None
    per_tenant: Mapping[str, bytes] | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "WebhookSecrets":
        environ = os.environ if environ is None else environ
        per_tenant = {}
        for entry in environ.get(ENV_TENANT_SECRETS, "").split(","):
            tenant, sep, secret = entry.strip().partition(":")
            if entry.strip() and (not sep or not tenant.strip() or len(secret.strip()) < 16):
                raise ValueError(f"{ENV_TENANT_SECRETS}: each entry must be 'tenant:secret' with a secret "
                                 "of at least 16 characters")
            if sep:
                per_tenant[tenant.strip()] = secret.strip().encode()
        default = environ.get(ENV_SECRET, "").strip()
        if default and len(default) < 16:
            raise ValueError(f"{ENV_SECRET} must be at least 16 characters")
        return cls(default.encode() or None, per_tenant)

    def for_tenant(self, tenant: str) -> bytes | None:
        return (self.per_tenant or {}).get(tenant, self.default)


# ------------------------------------------------------------------ outbox and delivery
@dataclass(frozen=True)
class Delivery:
    id: str
    job_id: str
    tenant: str
    url: str
    body: bytes  # the job record as JSON, exactly as sent (the signature covers these bytes)
    attempts: int = 0  # attempts already made


class Outbox(abc.ABC):
    """Durable delivery queue; the job store implements it. Methods are blocking (a database);
    the worker runs them through ``run_blocking``."""

    @abc.abstractmethod
    def due(self, now: float, limit: int) -> list[Delivery]:
        """Pending deliveries whose next attempt is at or before ``now``, oldest first. Must also
        claim them (push their next attempt past a lease) so that another replica's worker does
        not send the same delivery at the same time."""

    @abc.abstractmethod
    def mark_delivered(self, delivery_id: str) -> None:
        ...

    @abc.abstractmethod
    def mark_failed(self, delivery_id: str, next_at: float | None, error: str) -> None:
        """Count one more attempt and record ``error``; ``next_at=None`` means give up."""


class Poster(Protocol):
    def __call__(self, url: str, body: bytes, headers: Mapping[str, str], *, timeout_s: float) -> Awaitable[int]:
        ...


async def _to_thread(fn, *args):
    return await asyncio.to_thread(fn, *args)


class WebhookWorker:
    def __init__(self, outbox: Outbox, poster: Poster, secrets: WebhookSecrets, *, max_attempts: int = 8,
                 timeout_s: float = 10.0, backoff_s: float = 5.0, max_backoff_s: float = 3600.0,
                 jitter: float = 0.1, concurrency: int = 8, batch: int = 32,
                 clock: Callable[[], float] = time.time,
                 run_blocking: Callable[..., Awaitable] = _to_thread):
        self.outbox, self.poster, self.secrets = outbox, poster, secrets
        self.max_attempts, self.timeout_s = max_attempts, timeout_s
        self.backoff_s, self.max_backoff_s, self.jitter = backoff_s, max_backoff_s, jitter
        self.batch, self.clock, self.run_blocking = batch, clock, run_blocking
        self._slots = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        self._rng = random.Random()

    def retry_delay(self, attempts_made: int) -> float:
        """Delay after the ``attempts_made``-th failed attempt: backoff_s, 2x, 4x ... capped."""
        delay = min(self.max_backoff_s, self.backoff_s * (2 ** max(attempts_made - 1, 0)))
        return delay * (1 + self._rng.uniform(0, self.jitter)) if self.jitter else delay

    def wake(self) -> None:
        """A job just ended: look at the outbox now instead of at the next poll."""
        self._wake.set()

    async def run(self, stop: asyncio.Event, poll_s: float = 2.0) -> None:
        while not stop.is_set():
            self._wake.clear()  # before the pass: a wake() during the pass triggers another one
            try:
                await self.run_once()
            except Exception:  # a store hiccup must not end deliveries for good
                log.exception("webhook outbox pass failed")
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
            await asyncio.wait(waits, timeout=poll_s, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()

    async def run_once(self) -> int:
        """Attempt every due delivery once; returns how many were attempted."""
        due = await self.run_blocking(self.outbox.due, self.clock(), self.batch)
        await asyncio.gather(*(self._attempt(d) for d in due))
        return len(due)

    async def _attempt(self, d: Delivery) -> None:
        async with self._slots:
            attempt = d.attempts + 1
            secret = self.secrets.for_tenant(d.tenant)
            if secret is None:
                await self._fail(d, attempt, "no webhook secret is configured for this tenant", permanent=True)
                return
            headers = {"Content-Type": "application/json", DELIVERY_HEADER: d.id, ATTEMPT_HEADER: str(attempt),
                       SIGNATURE_HEADER: sign(secret, d.body, int(self.clock()))}
            try:
                status = await self.poster(d.url, d.body, headers, timeout_s=self.timeout_s)
            except InvalidParameterError as err:  # refused by the address policy or malformed
                await self._fail(d, attempt, err.message, permanent=True)
                return
            except LipserveError as err:  # no answer, timeout
                await self._fail(d, attempt, err.message, permanent=False)
                return
            except Exception as exc:  # keep the worker alive whatever the client does
                await self._fail(d, attempt, f"{type(exc).__name__}: {exc}", permanent=False)
                return
            if 200 <= status < 300:
                await self.run_blocking(self.outbox.mark_delivered, d.id)
                log.info("webhook %s for job %s delivered (attempt %d)", d.id, d.job_id, attempt)
            else:
                await self._fail(d, attempt, f"the receiver answered HTTP {status}", permanent=False)

    async def _fail(self, d: Delivery, attempt: int, error: str, *, permanent: bool) -> None:
        give_up = permanent or attempt >= self.max_attempts
        next_at = None if give_up else self.clock() + self.retry_delay(attempt)
        detail = f"attempt {attempt}/{self.max_attempts}: {error}"
        await self.run_blocking(self.outbox.mark_failed, d.id, next_at, detail)
        log.warning("webhook %s for job %s failed (%s)%s", d.id, d.job_id, detail, "; giving up" if give_up else "")
