"""What only the PostgreSQL job store has: row locks (SKIP LOCKED claims), the database clock,
LISTEN/NOTIFY wake-ups and the dispatcher woken by them. (Migrations and restarts: their own files;
the shared semantics: test_job_store.py.)"""

from __future__ import annotations

import asyncio
import threading
import time

import psycopg
import pytest

from serve_app.jobs.dispatcher import JobDispatcher
from serve_app.jobs.postgres_store import PostgresJobStore
from serve_app.jobs.records import JobParams

P = JobParams(audio_path="/a.wav", video_path="/v.mp4")
RETRYABLE = {"code": "internal", "message": "boom", "retryable": True}
FATAL = {"code": "no_face", "message": "clip.mp4: no face found", "retryable": False}


@pytest.fixture
def db(pg_server):
    url = pg_server.create_database()
    stores: list[PostgresJobStore] = []

    def open_store(**kw) -> PostgresJobStore:
        stores.append(PostgresJobStore(url, **kw))
        return stores[-1]

    yield url, open_store
    for s in stores:
        s.close()
    pg_server.drop_database(url)


def db_now(url: str) -> float:
    with psycopg.connect(url) as conn:
        return float(conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()[0])


def wait_until(cond, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)  # poll interval


def backends_waiting_on_a_lock(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                            " AND wait_event_type = 'Lock'").fetchone()[0]


def test_leases_and_backoff_use_the_database_clock(db, monkeypatch):
    url, open_store = db
    store = open_store()
    # This process's clock is a day off: nothing the store writes may depend on it.
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 86400)

    before = db_now(url)
    job = store.create(P)
    assert before <= job.created_at <= db_now(url) and job.next_attempt_at == job.created_at
    assert job.id in store.claimable()
    rec = store.claim(job.id, "w1", lease_s=30)
    now = db_now(url)
    assert now + 28 < rec.lease_until <= now + 30 and rec.attempts[0].started_at <= now
    assert store.heartbeat(job.id, "w1", lease_s=60)
    assert db_now(url) + 58 < store.get(job.id).lease_until <= db_now(url) + 60

    rec = store.fail_attempt(job.id, "w1", RETRYABLE, max_attempts=3, backoff_s=30)
    now = db_now(url)
    assert rec.status == "queued" and now + 28 < rec.next_attempt_at <= now + 30
    assert store.claimable() == []  # not due by the database clock...
    assert store.claimable(now=rec.next_attempt_at) == [job.id]  # ...but at its due time
    assert store.claim(job.id, "w2", lease_s=30) is None


def test_claim_skips_a_row_locked_by_another_claimer_but_other_calls_wait(db):
    url, open_store = db
    store = open_store()
    job = store.create(P)
    with psycopg.connect(url) as other:  # another replica, mid-claim: holds the row lock
        other.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (job.id,))
        t0 = time.monotonic()
        assert store.claim(job.id, "w1", lease_s=30) is None  # skipped at once, not queued behind
        assert time.monotonic() - t0 < 2.0
        assert store.get(job.id).status == "queued"  # plain reads are not blocked

        result: list = []
        canceller = threading.Thread(target=lambda: result.append(store.cancel(job.id)))
        canceller.start()
        wait_until(lambda: backends_waiting_on_a_lock(url) == 1, what="cancel to wait on the row lock")
        assert canceller.is_alive() and result == []
        other.commit()  # the other transaction ends: the cancel goes through
        canceller.join(timeout=10)
    assert result[0].status == "cancelled"
    assert store.claim(job.id, "w1", lease_s=30) is None


def test_wait_for_work_is_woken_by_another_store(db):
    url, open_store = db
    api, worker = open_store(), open_store()  # e.g. an ingress replica and another cluster's replica
    assert worker.wait_for_work(0) is False  # nothing yet; starts listening
    job = api.create(P)
    t0 = time.monotonic()
    assert worker.wait_for_work(10) is True and time.monotonic() - t0 < 5
    assert worker.claim(job.id, "w1", lease_s=30) is not None
    assert worker.heartbeat(job.id, "w1", lease_s=30, progress=0.5)
    assert worker.wait_for_work(0.3) is False  # heartbeats and claims do not wake anyone
    assert worker.release(job.id, "w1")
    assert worker.wait_for_work(10) is True  # released: claimable again
    worker.claim(job.id, "w1", lease_s=30)
    worker.fail_attempt(job.id, "w1", RETRYABLE, max_attempts=3, backoff_s=0)
    assert worker.wait_for_work(10) is True  # requeued for a retry
    worker.claim(job.id, "w1", lease_s=30)
    worker.fail_attempt(job.id, "w1", FATAL, max_attempts=3, backoff_s=0)
    assert worker.wait_for_work(0.3) is False  # failed for good: no work
    assert worker.get(job.id).status == "failed"


def test_dispatcher_wakes_on_notify_without_waiting_for_its_poll(db, pg_server):
    url, open_store = db
    api, replica = open_store(), open_store()
    ran: dict[str, float] = {}
    passes: list[float] = []

    def claimable() -> list[str]:
        ids = replica.claimable()
        passes.append(time.monotonic())  # a dispatch pass has ended
        return ids

    async def run(job_id: str) -> None:
        if replica.claim(job_id, "replica-1", lease_s=30) is not None:
            ran[job_id] = time.monotonic()
            replica.succeed(job_id, "replica-1", f"/results/{job_id}.mp4")

    def listening() -> bool:
        with psycopg.connect(url) as conn:
            return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                " AND application_name = 'lipserve-listen' AND query LIKE 'LISTEN%'").fetchone()[0] == 1

    async def scenario() -> float:
        # A poll of 60 s: only the NOTIFY can make this dispatch happen within the test.
        dispatcher = JobDispatcher(claimable, run, limit=2, poll_s=60,
                                   wake=lambda: asyncio.to_thread(replica.wait_for_work, 1.0))
        dispatcher.ensure_started()
        await asyncio.to_thread(wait_until, listening, 10.0, "the dispatcher to LISTEN")
        await asyncio.to_thread(wait_until, lambda: len(passes) >= 1, 10.0, "the first dispatch pass")
        job = await asyncio.to_thread(api.create, P)  # after the pass: only a wake-up can dispatch it
        t0 = time.monotonic()
        while job.id not in ran:
            assert time.monotonic() - t0 < 10, "job not dispatched on NOTIFY"
            await asyncio.sleep(0.02)
        return ran[job.id] - t0

    latency = asyncio.run(scenario())
    assert latency < 5.0
    assert api.count("succeeded") == 1
