"""Chaos on the PostgreSQL job store, on a real Ray cluster over real HTTP.

- PostgreSQL restarts while three jobs render: they carry on and succeed once each, with the same
  frames as a fault-free run.
- A pipeline replica is killed while it holds a claim: the job is taken over once its lease lapsed.
- Two deployed applications (blue and green: two Serve apps, two route prefixes, one database and
  one storage volume, as during a KubeRay blue/green upgrade) take 20 jobs: each runs exactly once.
"""

from __future__ import annotations

import numpy as np
import pytest
import ray
from ray import serve

from serve_app.jobs.postgres_store import PostgresJobStore
from tests.service.harness import (
    BOX,
    Client,
    decode_frames,
    deploy,
    make_media,
    pipeline_handle,
    slow_generator,
    small_args,
    ADMIN_KEY,
    admin_auth,
    start_cluster,
    stop_cluster,
    wait_until,
)

LEASE_S = 5.0  # longer than a fast PostgreSQL restart, so the restart costs no lease
CLIP_S = 12.0  # with the slow generator below, mid-render when the fault hits


def pg_args(storage, url: str) -> dict:
    chaos = storage.parent / "faults"
    # Each generate call takes 0.05 s longer: a job lasts ~3 s, not ~1 s, so a fault injected on
    # seeing its progress lands mid-render (the output is unchanged).
    slow_generator(chaos, 0.05)
    return small_args(
        storage, job_store="postgres", database_url=url, auth=admin_auth(storage), chaos_dir=str(chaos),
        writer={"pool_size": 2, "num_cpus": 0.1, "segment_frames": 10},
        jobs={"lease_s": LEASE_S, "heartbeat_s": 0.5, "retry_backoff_s": 0.2, "max_inflight_segments": 2},
        pipeline={"num_cpus": 0.1, "max_ongoing_requests": 4, "graceful_shutdown_timeout_s": 0.5,
                  "health_check_period_s": 1, "health_check_timeout_s": 10},
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory, pg_server):
    url = pg_server.create_database()
    port = start_cluster()
    root = tmp_path_factory.mktemp("pg_chaos")
    storage = root / "storage"
    deploy(pg_args(storage, url), name="blue", prefix="/blue")
    blue = Client(f"http://127.0.0.1:{port}/blue", key=ADMIN_KEY)
    blue.wait_http("/readyz", 200)
    audio, video = make_media(root / "media", CLIP_S, seed=3)
    ref = submit(blue, audio, video)
    rec = blue.wait(ref, timeout=120)
    assert rec["status"] == "succeeded", rec
    db = PostgresJobStore(url, max_size=2)  # the test's own view of the records
    yield {"port": port, "url": url, "storage": storage, "blue": blue, "audio": audio, "video": video,
           "reference": decode_frames(rec["result_path"]), "db": db, "pg": pg_server}
    db.close()
    stop_cluster()
    pg_server.drop_database(url)


def submit(client: Client, audio, video) -> str:
    r = client.submit_files(audio, video, box=BOX)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def assert_same_frames(got_path, reference) -> None:
    got = decode_frames(got_path)
    assert len(got) == len(reference)
    assert all(np.array_equal(a, b) for a, b in zip(got, reference)), "output differs from the fault-free run"


def test_postgres_restart_during_three_running_jobs(env):
    blue = env["blue"]
    jobs = [submit(blue, env["audio"], env["video"]) for _ in range(3)]
    for job_id in jobs:
        blue.wait(job_id, predicate=lambda r: r["status"] == "running" and r["progress"] >= 0.1, timeout=60)
    before = env["db"]._clock(None)  # the database's clock
    env["pg"].restart()  # every connection of every replica dies; the LISTEN connection too
    for job_id in jobs:
        rec = blue.wait(job_id, timeout=120)
        assert rec["status"] == "succeeded", rec
        assert rec["finished_at"] > before, "the job was done before the restart"
        assert len(rec["attempts"]) == 1 and rec["attempts"][0]["error"] is None, rec["attempts"]
        assert_same_frames(rec["result_path"], env["reference"])
    # Heartbeats resumed after the outage: no lease lapsed, nobody else ran the jobs.
    assert len({blue.job(j)["attempts"][0]["owner"] for j in jobs}) == 1


def test_replica_killed_while_holding_a_claim_is_taken_over_after_its_lease(env):
    blue = env["blue"]
    replica = ray.get_actor(pipeline_handle("blue").actor_pids.remote().result(timeout_s=60)["replica_actor"],
                            namespace="serve")
    job_id = submit(blue, env["audio"], env["video"])
    blue.wait(job_id, predicate=lambda r: r["status"] == "running" and r["progress"] >= 0.2, timeout=60)
    ray.kill(replica, no_restart=True)
    held = env["db"].get(job_id)  # after the kill: the lease as its owner last extended it
    assert held.status == "running", held.status
    rec = blue.wait(job_id, timeout=120)
    assert rec["status"] == "succeeded", rec
    first, second = rec["attempts"]
    assert first["owner"] == held.owner and first["error"]["code"] == "worker_lost"
    assert second["owner"] != first["owner"] and second["error"] is None
    # The claim was held to its end: the successor started only after the lease (DB clock) lapsed.
    assert second["started_at"] >= held.lease_until
    assert_same_frames(rec["result_path"], env["reference"])


def test_blue_and_green_on_one_database_run_each_job_exactly_once(env, tmp_path):
    blue = env["blue"]
    deploy(pg_args(env["storage"], env["url"]), name="green", prefix="/green")
    green = Client(f"http://127.0.0.1:{env['port']}/green", key=ADMIN_KEY)
    green.wait_http("/readyz", 200)
    owners = {app: pipeline_handle(app).ready.remote().result(timeout_s=60)["owner"] for app in ("blue", "green")}
    audio, video = make_media(tmp_path, 1.0, seed=5)
    jobs = [submit(client, audio, video) for _ in range(10) for client in (blue, green)]
    recs = [blue.wait(j, timeout=240) for j in jobs]  # either app serves any job's status
    assert all(r["status"] == "succeeded" for r in recs), [r["status"] for r in recs]
    assert all(len(r["attempts"]) == 1 and r["attempts"][0]["error"] is None for r in recs), (
        [r["attempts"] for r in recs])
    ran_by = [r["attempts"][0]["owner"] for r in recs]
    assert set(ran_by) <= set(owners.values())
    # Both applications claimed work from the shared queue (NOTIFY wakes both dispatchers).
    assert set(ran_by) == set(owners.values()), {a: ran_by.count(o) for a, o in owners.items()}
    assert env["db"].count("running") == 0 and env["db"].count("queued") == 0
    serve.delete("green")
    wait_until(lambda: blue.job(jobs[0])["status"] == "succeeded", "blue still serves after green is gone")
