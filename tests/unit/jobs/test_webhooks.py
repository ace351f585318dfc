"""Signed webhooks: signature round trip, and delivery against a real local receiver through the
SSRF-safe poster, with an in-memory outbox standing in for the job store's."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, replace

import pytest

from serve_app.api.address_policy import AddressPolicy
from serve_app.api.url_fetch import SafeHttp
from serve_app.jobs.webhooks import (ATTEMPT_HEADER, DELIVERY_HEADER, SIGNATURE_HEADER, Delivery, Outbox,
                                     WebhookSecrets, WebhookWorker, sign, signature, verify)
from tests.unit.local_http import LocalHttpServer, closed_port, response

pytestmark = pytest.mark.anyio
SECRET = b"whsec-0123456789abcdef"
BODY = json.dumps({"id": "job1", "status": "succeeded"}).encode()


# ------------------------------------------------------------------ signatures
def test_sign_and_verify():
    header = sign(SECRET, BODY, timestamp=1_700_000_000)
    t, v1 = header.split(",")
    assert t == "t=1700000000" and v1 == "v1=" + signature(SECRET, BODY, 1_700_000_000)
    assert len(v1) == 3 + 64
    assert verify(SECRET, BODY, header, now=1_700_000_100)
    assert not verify(SECRET, BODY + b" ", header, now=1_700_000_100)  # body changed
    assert not verify(b"another-secret-0000", BODY, header, now=1_700_000_100)
    assert not verify(SECRET, BODY, header, now=1_700_000_000 + 301)  # too old: a replay
    assert not verify(SECRET, BODY, header.replace("t=1700000000", "t=1700000001"), now=1_700_000_000)
    for bad in (None, "", "v1=abc", "t=1700000000", "t=x,v1=" + "0" * 64, "garbage"):
        assert not verify(SECRET, BODY, bad, now=1_700_000_000)


def test_rotation_header_with_two_signatures():
    old = sign(b"old-secret-0000000000", BODY, 1_700_000_000)
    both = old + ",v1=" + signature(SECRET, BODY, 1_700_000_000)
    assert verify(SECRET, BODY, both, now=1_700_000_000)


def test_secrets_from_env():
    s = WebhookSecrets.from_env({"LIPSERVE_WEBHOOK_SECRET": "default-secret-000000",
                                 "LIPSERVE_WEBHOOK_SECRETS": "bob:bob-secret-0000000000"})
    assert s.for_tenant("bob") == b"bob-secret-0000000000" and s.for_tenant("alice") == b"default-secret-000000"
    assert WebhookSecrets.from_env({}).for_tenant("x") is None
    with pytest.raises(ValueError, match="16"):
        WebhookSecrets.from_env({"LIPSERVE_WEBHOOK_SECRET": "short"})


# ------------------------------------------------------------------ delivery
@dataclass
class Row:
    delivery: Delivery
    next_at: float
    state: str = "pending"
    errors: tuple[str, ...] = ()


class MemoryOutbox(Outbox):
    LEASE_S = 30.0

    def __init__(self, *deliveries: Delivery, now: float = 0.0):
        self.rows = {d.id: Row(d, now) for d in deliveries}
        self.polled = threading.Event()

    def due(self, now, limit):
        self.polled.set()
        rows = sorted((r for r in self.rows.values() if r.state == "pending" and r.next_at <= now),
                      key=lambda r: r.next_at)[:limit]
        for r in rows:
            r.next_at = now + self.LEASE_S  # claimed
        return [r.delivery for r in rows]

    def mark_delivered(self, delivery_id):
        self.rows[delivery_id].state = "delivered"

    def mark_failed(self, delivery_id, next_at, error):
        r = self.rows[delivery_id]
        r.delivery = replace(r.delivery, attempts=r.delivery.attempts + 1)
        r.errors += (error,)
        if next_at is None:
            r.state = "failed"
        else:
            r.next_at = next_at


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


def worker(outbox, clock, *, allow_private=True, **kw) -> WebhookWorker:
    http = SafeHttp(AddressPolicy(allow_private=allow_private))
    kw = {"max_attempts": 3, "timeout_s": 2.0, "backoff_s": 5.0, "jitter": 0.0, **kw}
    return WebhookWorker(outbox, http.post, WebhookSecrets(SECRET), clock=clock, **kw)


async def test_failed_first_delivery_is_redelivered_with_a_valid_signature():
    async def receiver(req, writer):
        writer.write(response(500 if len(srv.requests) == 1 else 204))

    async with LocalHttpServer(receiver) as srv:
        clock = Clock(time.time())
        d = Delivery("d1", "job1", "alice", f"{srv.origin}/hooks/lipserve", BODY)
        outbox = MemoryOutbox(d, now=clock.t)
        w = worker(outbox, clock)

        assert await w.run_once() == 1
        row = outbox.rows["d1"]
        assert row.state == "pending" and row.delivery.attempts == 1
        assert row.next_at == pytest.approx(clock.t + 5.0) and "HTTP 500" in row.errors[0]
        assert await w.run_once() == 0  # not due yet

        clock.t += 5.0
        assert await w.run_once() == 1
        assert row.state == "delivered"

    first, second = srv.requests
    for n, req in enumerate((first, second), start=1):
        assert req.method == "POST" and req.path == "/hooks/lipserve" and req.body == BODY
        assert req.headers["content-type"] == "application/json"
        assert req.headers[DELIVERY_HEADER.lower()] == "d1" and req.headers[ATTEMPT_HEADER.lower()] == str(n)
    # The receiver's check of the redelivery: signed afresh, with the redelivery's own timestamp.
    header = second.headers[SIGNATURE_HEADER.lower()]
    assert verify(SECRET, second.body, header, now=clock.t)
    assert header.startswith(f"t={int(clock.t)},")
    assert not verify(b"wrong-secret-00000000", second.body, header, now=clock.t)


async def test_gives_up_after_max_attempts_with_growing_backoff():
    async def always_down(req, writer):
        writer.write(response(503))

    async with LocalHttpServer(always_down) as srv:
        clock = Clock(1000.0)
        outbox = MemoryOutbox(Delivery("d2", "job2", "alice", f"{srv.origin}/h", BODY), now=clock.t)
        w = worker(outbox, clock)
        delays = []
        while outbox.rows["d2"].state == "pending":
            assert await w.run_once() == 1
            row = outbox.rows["d2"]
            if row.state == "pending":
                delays.append(row.next_at - clock.t)
                clock.t = row.next_at
    assert delays == [5.0, 10.0]
    assert outbox.rows["d2"].state == "failed" and len(srv.requests) == 3
    assert "attempt 3/3" in outbox.rows["d2"].errors[-1]


async def test_private_target_is_refused_without_retry():
    async def receiver(req, writer):
        writer.write(response(200))

    async with LocalHttpServer(receiver) as srv:
        outbox = MemoryOutbox(Delivery("d3", "job3", "alice", f"{srv.origin}/h", BODY))
        await worker(outbox, Clock(0.0), allow_private=False).run_once()
    row = outbox.rows["d3"]
    assert row.state == "failed" and "not a public internet address" in row.errors[0]
    assert srv.requests == []


async def test_unreachable_receiver_is_retried():
    outbox = MemoryOutbox(Delivery("d4", "job4", "alice", f"http://127.0.0.1:{closed_port()}/h", BODY))
    await worker(outbox, Clock(0.0)).run_once()
    row = outbox.rows["d4"]
    assert row.state == "pending" and row.delivery.attempts == 1 and "no usable answer" in row.errors[0]


async def test_missing_secret_fails_the_delivery():
    outbox = MemoryOutbox(Delivery("d5", "job5", "alice", "http://127.0.0.1:9/h", BODY))
    w = WebhookWorker(outbox, SafeHttp(AddressPolicy(allow_private=True)).post, WebhookSecrets(), clock=Clock(0.0))
    await w.run_once()
    assert outbox.rows["d5"].state == "failed" and "no webhook secret" in outbox.rows["d5"].errors[0]


async def test_run_loop_delivers_when_woken():
    got = asyncio.Event()

    async def receiver(req, writer):
        writer.write(response(200))
        got.set()

    async with LocalHttpServer(receiver) as srv:
        outbox = MemoryOutbox()
        w = worker(outbox, time.time)
        stop = asyncio.Event()
        loop_task = asyncio.create_task(w.run(stop, poll_s=30.0))
        assert await asyncio.to_thread(outbox.polled.wait, 5)  # the first pass found nothing
        outbox.rows["d6"] = Row(Delivery("d6", "job6", "alice", f"{srv.origin}/h", BODY), 0.0)
        w.wake()
        await asyncio.wait_for(got.wait(), timeout=5)
        stop.set()
        await asyncio.wait_for(loop_task, timeout=5)
    assert outbox.rows["d6"].state == "delivered"
