"""Tests of the job store (serve_app/jobs), run on both backends (SQLite and a real PostgreSQL server:
the ``backend`` / ``store`` fixtures of conftest.py): the same semantics on each."""

from __future__ import annotations

import json
import multiprocessing as mp
import sqlite3

import pytest

from serve_app.jobs.backends import open_store
from serve_app.jobs.records import TERMINAL, JobParams, JobRecord
from serve_app.jobs.sqlite_store import SqliteJobStore
from serve_app.jobs.store import DuplicateJobError


def P(**kw) -> JobParams:
    """Job params with placeholder paths; tests set only what they check."""
    return JobParams(**{"audio_path": "/a.wav", "video_path": "/v.mp4", **kw})

T0 = 1_000_000.0
RETRYABLE = {"code": "internal", "message": "boom", "retryable": True}
FATAL = {"code": "no_face", "message": "clip.mp4: no face found", "retryable": False}


def test_sqlite_file_created_in_wal_mode(tmp_path):
    path = tmp_path / "sub" / "jobs.sqlite3"
    SqliteJobStore(path).close()
    assert path.exists()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    conn.close()


def test_create_get_list_filter(store):
    a = store.create(P(), now=T0)
    b = store.create(P(audio_path="x12"), priority=5, job_id="job-b", now=T0 + 1)
    c = store.create(P(), now=T0 + 2)
    assert len(a.id) == 32 and a.status == "queued" and a.next_attempt_at == T0
    assert b.id == "job-b"
    got = store.get("job-b")
    assert isinstance(got, JobRecord)
    assert got.params.audio_path == "x12" and got.priority == 5 and got.attempts == [] and got.error is None
    assert got.started_at is None and got.finished_at is None and got.created_at == T0 + 1
    assert store.get("nope") is None
    with pytest.raises(DuplicateJobError):
        store.create(P(), job_id="job-b")
    assert issubclass(DuplicateJobError, ValueError)

    assert [r.id for r in store.list()] == [c.id, b.id, a.id]  # newest first
    assert [r.id for r in store.list(limit=1, offset=1)] == [b.id]
    assert store.claim(a.id, "w1", 10, now=T0 + 3) is not None
    assert [r.id for r in store.list(status="running")] == [a.id]
    assert [r.id for r in store.list(status="queued")] == [c.id, b.id]
    assert store.count("queued") == 2 and store.count("running") == 1
    assert store.count(("queued", "running")) == 3 and store.count(TERMINAL) == 0
    store.delete(c.id)
    assert store.get(c.id) is None and store.count("queued") == 1


def test_claimable_priority_order_and_due_time(store):
    low = store.create(P(), priority=0, now=T0)
    high = store.create(P(), priority=10, now=T0 + 1)
    mid1 = store.create(P(), priority=5, now=T0 + 2)
    mid2 = store.create(P(), priority=5, now=T0 + 3)
    assert store.claimable(now=T0 + 10) == [high.id, mid1.id, mid2.id, low.id]
    assert store.claimable(now=T0 + 10, limit=2) == [high.id, mid1.id]
    assert store.claimable(now=T0 + 1.5) == [high.id, low.id]  # the others are not due yet

    assert store.claim(high.id, "w1", lease_s=5, now=T0 + 10) is not None
    assert high.id not in store.claimable(now=T0 + 12)  # live lease
    assert store.claimable(now=T0 + 16)[0] == high.id  # lease expired: claimable again
    assert store.claim(high.id, "w2", lease_s=5, now=T0 + 12) is None  # still owned by w1


def _claim_worker(kind: str, database: str, owner: str, barrier, out) -> None:
    s = open_store(kind, database)
    barrier.wait()
    mine = []
    for _ in range(3):
        for job_id in s.claimable(limit=100):
            if s.claim(job_id, owner, lease_s=3600) is not None:
                mine.append(job_id)
    s.close()
    out.put((owner, mine))


def test_claim_is_atomic_across_processes(backend):
    """4 processes race for 20 jobs (on PostgreSQL through SKIP LOCKED claims): each job is claimed
    exactly once."""
    s = backend.open()
    ids = {s.create(P(audio_path=f"/a{i}.wav")).id for i in range(20)}
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_claim_worker, args=(backend.kind, backend.database, f"w{i}", barrier, out))
             for i in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    claimed = [j for _, mine in results for j in mine]
    assert len(claimed) == len(set(claimed)) == 20 and set(claimed) == ids
    owners = {j: o for o, mine in results for j in mine}
    for job_id in ids:
        rec = s.get(job_id)
        assert rec.status == "running" and len(rec.attempts) == 1
        assert rec.owner == owners[job_id] == rec.attempts[0].owner


def test_lease_expiry_takeover_records_worker_lost(store):
    job = store.create(P(), now=T0)
    first = store.claim(job.id, "w1", lease_s=6, now=T0 + 1)
    assert first.status == "running" and first.owner == "w1" and first.lease_until == T0 + 7
    assert first.started_at == T0 + 1
    assert [a.model_dump() for a in first.attempts] == [
        {"n": 1, "owner": "w1", "started_at": T0 + 1, "ended_at": None, "error": None, "released": False,
         "incidents": [], "resources": None}
    ]
    assert store.heartbeat(job.id, "w1", lease_s=6, progress=0.4, stage="generate", now=T0 + 5)
    assert store.claim(job.id, "w2", lease_s=6, now=T0 + 10) is None  # lease now until T0 + 11
    assert store.add_incident(job.id, "w1", "worker_lost", "generator actor restarted", now=T0 + 6)

    taken = store.claim(job.id, "w2", lease_s=6, now=T0 + 20)
    assert taken is not None and taken.owner == "w2" and taken.lease_until == T0 + 26
    assert taken.started_at == T0 + 1  # first start is kept
    assert taken.progress == pytest.approx(0.4)
    prev, cur = taken.attempts
    assert prev.ended_at == T0 + 20 and prev.error.code == "worker_lost"
    assert prev.error.retryable is True and "owner w1 stopped heartbeating" in prev.error.message
    assert [i.model_dump() for i in prev.incidents] == [{"code": "worker_lost", "message": "generator actor restarted", "at": T0 + 6}]
    assert cur.model_dump() == {"n": 2, "owner": "w2", "started_at": T0 + 20, "ended_at": None, "error": None,
                                "released": False, "incidents": [], "resources": None}
    assert taken.error.code == "worker_lost"

    # The old owner is told to stop; its late writes are refused.
    assert not store.heartbeat(job.id, "w1", lease_s=6, now=T0 + 21)
    assert not store.succeed(job.id, "w1", "/out.mp4", now=T0 + 21)
    assert store.fail_attempt(job.id, "w1", RETRYABLE, 3, 1.0, now=T0 + 21) is None
    assert not store.add_incident(job.id, "w1", "x", "y")
    assert store.succeed(job.id, "w2", "/out.mp4", now=T0 + 22)
    done = store.get(job.id)
    assert done.status == "succeeded" and done.progress == 1.0 and done.stage == "done"
    assert done.result_path == "/out.mp4" and done.finished_at == T0 + 22
    assert done.owner is None and done.lease_until is None and done.error is None
    assert done.attempts[-1].ended_at == T0 + 22 and done.attempts[-1].error is None
    assert store.claim(job.id, "w3", 6, now=T0 + 100) is None  # terminal


def test_takeover_respects_max_attempts(store):
    job = store.create(P(), now=T0)
    for i in range(2):
        assert store.claim(job.id, f"w{i}", lease_s=1, now=T0 + 10 * i) is not None
    assert store.claim(job.id, "w9", lease_s=1, now=T0 + 30, max_attempts=2) is None
    rec = store.get(job.id)
    assert rec.status == "failed" and rec.error.code == "worker_lost" and rec.finished_at == T0 + 30
    assert rec.failed_attempts == 2


def test_heartbeat_false_after_cancel(store):
    job = store.create(P(), now=T0)
    store.claim(job.id, "w1", lease_s=6, now=T0)
    assert store.heartbeat(job.id, "w1", lease_s=6, progress=0.2, now=T0 + 1)
    assert not store.heartbeat(job.id, "w2", lease_s=6, now=T0 + 1)  # not the owner
    assert not store.heartbeat("unknown", "w1", lease_s=6)
    store.cancel(job.id, now=T0 + 2)
    assert store.is_cancelled(job.id)
    assert not store.heartbeat(job.id, "w1", lease_s=6, now=T0 + 3)
    assert not store.succeed(job.id, "w1", "/out.mp4")


def test_fail_attempt_retries_with_backoff_then_fails(store):
    job = store.create(P(), now=T0)
    t = T0
    expected_delays = [2.0, 4.0]  # backoff 2 s, doubled each failed attempt
    for n, delay in enumerate(expected_delays, start=1):
        assert store.claim(job.id, "w", lease_s=6, now=t) is not None
        store.heartbeat(job.id, "w", lease_s=6, progress=0.5, now=t)
        rec = store.fail_attempt(job.id, "w", RETRYABLE, max_attempts=3, backoff_s=2.0, now=t + 1)
        assert rec.status == "queued" and rec.next_attempt_at == t + 1 + delay
        assert rec.owner is None and rec.lease_until is None and rec.progress == 0.5
        assert rec.error.model_dump() == RETRYABLE and rec.attempts[-1].error.model_dump() == RETRYABLE
        assert rec.failed_attempts == n
        assert store.claim(job.id, "w", lease_s=6, now=t + 1 + delay - 0.01) is None  # not due
        assert job.id not in store.claimable(now=t + 1 + delay - 0.01)
        t = t + 1 + delay
    assert store.claim(job.id, "w", lease_s=6, now=t) is not None
    rec = store.fail_attempt(job.id, "w", RETRYABLE, max_attempts=3, backoff_s=2.0, now=t + 1)
    assert rec.status == "failed" and rec.finished_at == t + 1 and len(rec.attempts) == 3
    assert store.claimable(now=t + 1000) == []


def test_fail_attempt_not_retryable_fails_at_once(store):
    job = store.create(P(), now=T0)
    store.claim(job.id, "w", lease_s=6, now=T0)
    rec = store.fail_attempt(job.id, "w", FATAL, max_attempts=3, backoff_s=1.0, now=T0 + 1)
    assert rec.status == "failed" and rec.error.model_dump() == FATAL and len(rec.attempts) == 1
    assert store.fail_attempt(job.id, "w", FATAL, 3, 1.0) is None  # no longer running


def test_release_does_not_consume_attempts(store):
    job = store.create(P(), now=T0)
    for i in range(5):  # far more releases than max_attempts
        assert store.claim(job.id, "w", lease_s=6, now=T0 + i) is not None
        store.heartbeat(job.id, "w", lease_s=6, progress=0.3, stage="generate", now=T0 + i)
        assert store.release(job.id, "w", now=T0 + i + 0.5)
        rec = store.get(job.id)
        assert rec.status == "queued" and rec.next_attempt_at == T0 + i + 0.5 and rec.owner is None
        assert rec.attempts[-1].released is True and rec.attempts[-1].error is None
        assert rec.progress == pytest.approx(0.3)
    assert not store.release(job.id, "w")  # not running
    assert store.claim(job.id, "w", lease_s=6, now=T0 + 10) is not None
    rec = store.fail_attempt(job.id, "w", RETRYABLE, max_attempts=2, backoff_s=1.0, now=T0 + 11)
    assert rec.status == "queued" and rec.failed_attempts == 1 and len(rec.attempts) == 6
    assert rec.next_attempt_at == T0 + 12  # backoff counted from failed attempts only
    assert store.claim(job.id, "w", lease_s=6, now=T0 + 12) is not None
    rec = store.fail_attempt(job.id, "w", RETRYABLE, max_attempts=2, backoff_s=1.0, now=T0 + 13)
    assert rec.status == "failed"


def test_cancel_semantics(store):
    queued = store.create(P(), now=T0)
    running = store.create(P(), now=T0)
    done = store.create(P(), now=T0)
    store.claim(running.id, "w1", lease_s=6, now=T0)
    store.claim(done.id, "w1", lease_s=6, now=T0)
    store.succeed(done.id, "w1", "/r.mp4", now=T0 + 1)

    rec = store.cancel(queued.id, now=T0 + 2)
    assert rec.status == "cancelled" and rec.finished_at == T0 + 2
    assert rec.error.model_dump() == {"code": "cancelled", "message": "cancelled by request", "retryable": False}
    rec = store.cancel(running.id, now=T0 + 3)
    assert rec.status == "cancelled" and rec.owner is None and rec.lease_until is None
    assert rec.attempts[-1].ended_at == T0 + 3 and rec.attempts[-1].error.code == "cancelled"
    again = store.cancel(running.id, now=T0 + 4)
    assert again.status == "cancelled" and again.finished_at == T0 + 3  # unchanged
    rec = store.cancel(done.id, now=T0 + 5)
    assert rec.status == "succeeded" and rec.error is None and rec.finished_at == T0 + 1
    assert store.cancel("unknown") is None
    assert not store.is_cancelled(done.id) and not store.is_cancelled("unknown")
    assert store.claimable(now=T0 + 1000) == []
    assert store.claim(queued.id, "w2", 6, now=T0 + 1000) is None


def test_persistence_across_reopen(backend):
    s = backend.open()
    job = s.create(P(pingpong=True), priority=3, now=T0)
    s.claim(job.id, "w1", lease_s=6, now=T0)
    s.add_timing(job.id, "detect", 1.5)
    s.add_timing(job.id, "detect", 0.5)
    s.add_timing(job.id, "write", 2.0)
    s.add_incident(job.id, "w1", "out_of_memory", "batch halved", now=T0 + 1)
    before = s.get(job.id)
    s.close()
    with pytest.raises(RuntimeError):
        s.get(job.id)

    s2 = backend.open()  # a restarted process
    after = s2.get(job.id)
    assert after == before
    assert after.timings == {"detect": 2.0, "write": 2.0}
    assert after.params == P(pingpong=True)
    # The dead owner's lease expires and the restarted worker takes the job over.
    taken = s2.claim(job.id, "w1-restarted", lease_s=6, now=T0 + 60)
    assert taken.attempts[0].error.code == "worker_lost"


def test_to_api_is_json_and_error_messages_never_empty(store):
    job = store.create(P(), now=T0)
    json.dumps(job.to_api())
    store.claim(job.id, "w", lease_s=6, now=T0)
    store.add_incident(job.id, "w", "internal", "", now=T0)
    rec = store.fail_attempt(
        job.id, "w", {"code": "internal", "message": "", "retryable": False}, 3, 1.0, now=T0 + 1
    )
    api = rec.to_api(admin=True)
    text = json.dumps(api)
    assert json.loads(text) == api
    assert api["status"] == "failed" and api["id"] == job.id
    assert api["error"]["code"] == "internal" and api["error"]["message"].strip()
    assert api["attempts"][0]["error"]["message"].strip()
    assert api["attempts"][0]["incidents"][0]["message"].strip()
    # The record itself is not altered by to_api().
    api["params"]["video_path"] = "changed"
    assert store.get(job.id).params.video_path == "/v.mp4"
    for rec in store.list():
        json.dumps(rec.to_api())
    public = rec.to_api()  # a tenant's view: no server paths, hosts or pids
    assert "result_path" not in public and "owner" not in public and "/v.mp4" not in json.dumps(public)
    assert public["attempts"][0].keys() == {"n", "started_at", "ended_at", "error", "released", "resources"}


def test_wait_for_work_wakes_when_a_job_becomes_queued(store):
    """SQLite: this process's own calls (an in-process event); PostgreSQL: NOTIFY from anyone."""
    assert store.wait_for_work(0) is False  # nothing yet (on PostgreSQL: starts listening)
    job = store.create(P())
    assert store.wait_for_work(10) is True
    assert store.wait_for_work(0.2) is False  # consumed
    store.claim(job.id, "w", lease_s=60)
    store.heartbeat(job.id, "w", lease_s=60, progress=0.5)
    assert store.wait_for_work(0.2) is False  # claims and heartbeats are no work for others
    assert store.release(job.id, "w")
    assert store.wait_for_work(10) is True


def test_resources_are_recorded_on_the_owners_open_attempt(store):
    job = store.create(P(), now=T0)
    store.claim(job.id, "w1", lease_s=6, now=T0 + 1)
    use = {"generator_memory_bytes": 123456789, "generator_memory_kind": "rss",
           "stage_fps": {"generate_write": 41.5}, "frames": 250}
    assert not store.record_resources(job.id, "intruder", use, now=T0 + 2)
    assert store.record_resources(job.id, "w1", use, now=T0 + 2)
    rec = store.get(job.id)
    assert rec.attempts[-1].resources.model_dump() == use
    assert rec.to_api()["resources"] == use
