"""The PostgreSQL job store survives the database going away: restarts between calls, a call made
while the server is down (it waits and completes), and a bounded wait when it stays down. These
tests stop their own server (module-scoped), never the session's shared one."""

from __future__ import annotations

import threading
import time

import pytest

from serve_app.jobs.postgres_store import PostgresJobStore
from serve_app.jobs.records import JobParams
from serve_app.jobs.store import JobStoreUnavailableError
from tests.pg_server import PostgresServer

P = JobParams(audio_path="/a.wav", video_path="/v.mp4")


@pytest.fixture(scope="module")
def pg():
    # A server of this module's own, not the session's: these tests stop and restart it.
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def url(pg):
    if not (pg.data / "postmaster.pid").exists():  # a failed test left it down
        pg.start()
    u = pg.create_database()
    yield u
    pg.drop_database(u)


def test_restarts_between_calls_are_invisible_to_callers(pg, url):
    retries: list[BaseException] = []
    store = PostgresJobStore(url, max_size=4, on_retry=retries.append)
    try:
        assert store.wait_for_work(0) is False  # listening
        jobs = [store.create(P) for _ in range(3)]
        for j in jobs:
            assert store.claim(j.id, "w1", lease_s=60) is not None
        for round_ in range(2):
            pg.restart()  # every pooled connection and the LISTEN connection die here
            for j in jobs:
                assert store.heartbeat(j.id, "w1", lease_s=60, progress=0.3 * (round_ + 1))
        # The LISTEN connection is re-established and reports that it may have missed events.
        assert store.wait_for_work(5) is True
        assert store.succeed(jobs[0].id, "w1", "/r0.mp4")
        assert store.fail_attempt(jobs[1].id, "w1", {"code": "internal", "message": "x", "retryable": True},
                                  max_attempts=3, backoff_s=0) is not None
        assert store.release(jobs[2].id, "w1")
        assert store.wait_for_work(10) is True  # NOTIFY works again after the restart
        recs = [store.get(j.id) for j in jobs]
        assert [r.status for r in recs] == ["succeeded", "queued", "queued"]
        assert all(len(r.attempts) == 1 for r in recs)  # nothing was claimed or run twice
        assert recs[0].progress == 1.0 and recs[1].progress == pytest.approx(0.6)
        assert sorted(store.claimable()) == sorted([jobs[1].id, jobs[2].id])
    finally:
        store.close()


def test_a_call_made_while_the_server_is_down_completes_when_it_is_back(pg, url):
    retrying = threading.Event()
    store = PostgresJobStore(url, pool_wait_s=1.0, on_retry=lambda exc: retrying.set())
    try:
        job = store.create(P)
        assert store.claim(job.id, "w1", lease_s=60) is not None
        pg.stop()
        result: list = []
        caller = threading.Thread(target=lambda: result.append(
            store.heartbeat(job.id, "w1", lease_s=60, progress=0.5, stage="generate")))
        caller.start()
        assert retrying.wait(30), "the store did not notice the outage"
        assert caller.is_alive() and result == []  # still waiting for the database, not failed
        pg.start()
        caller.join(timeout=60)
        assert result == [True]
        rec = store.get(job.id)
        assert rec.progress == 0.5 and rec.stage == "generate" and rec.owner == "w1"
    finally:
        store.close()


def test_an_outage_longer_than_retry_s_raises_a_typed_error_without_the_password(pg, url):
    secret_url = url.replace("postgres@", "postgres:s3cret-pw@")  # trust auth: the password is unused
    store = PostgresJobStore(secret_url, retry_s=1.0)
    try:
        job = store.create(P)
        pg.stop()
        t0 = time.monotonic()
        with pytest.raises(JobStoreUnavailableError) as info:
            store.get(job.id)
        assert time.monotonic() - t0 < 10
        msg = str(info.value)
        assert "s3cret-pw" not in msg and f"127.0.0.1:{pg.port}" in msg and "get job" in msg
        assert info.value.retryable is True
        assert store.wait_for_work(0.2) is False  # never raises for an outage
    finally:
        pg.start()
        store.close()
