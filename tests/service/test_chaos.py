"""Chaos suite: one fault injected mid-job; the job still succeeds, with the same output as a
fault-free run, the fault in its attempt history, and no temp files, extra actors or zombies left.

Real Ray cluster, real processes killed with SIGKILL, real HTTP.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import ray
from ray import serve

from tests.service.harness import (
    BOX,
    Client,
    decode_frames,
    deploy,
    make_media,
    pipeline_handle,
    psnr,
    slow_generator,
    ray_processes,
    small_args,
    start_cluster,
    stop_cluster,
    wait_until,
)

POOL = 2


ADMIN_KEY = "ops-admin-key-0123456789abcdef"  # attempt owners are shown to admin keys only


def chaos_args(storage: Path, chaos_dir: Path) -> dict:
    keys = storage.parent / "keys.txt"
    keys.write_text(f"ops:{ADMIN_KEY}\n")
    return small_args(
        storage,
        auth={"keys_file": str(keys), "admin_tenants": ["ops"]},
        chaos_dir=str(chaos_dir),
        job_store="actor",  # the multi-node store: also survives the whole-app restart below
        writer={"pool_size": POOL, "num_cpus": 0.1, "segment_frames": 10},
        jobs={"lease_s": 3, "heartbeat_s": 0.3, "retry_backoff_s": 0.2, "min_stuck_s": 3, "stuck_factor": 6,
              "max_inflight_segments": 2},
        pipeline={"num_cpus": 0.1, "max_ongoing_requests": 2, "graceful_shutdown_timeout_s": 0.5,
                  "health_check_period_s": 1, "health_check_timeout_s": 10},
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    port = start_cluster()
    root = tmp_path_factory.mktemp("chaos")
    storage, chaos_dir, media = root / "storage", root / "faults", root / "media"
    chaos_dir.mkdir()
    # Each generate call takes 0.1 s longer: a 7 s job runs ~2 s instead of ~0.6 s, so a fault
    # injected on seeing its progress lands mid-job, not after it (the output is unchanged).
    slow_generator(chaos_dir, 0.1)
    deploy(chaos_args(storage, chaos_dir))
    client = Client(f"http://127.0.0.1:{port}", ADMIN_KEY)
    client.wait_http("/readyz", 200)
    audio, video = make_media(media, 7.0, seed=7)
    # The fault-free reference run of the job every test interrupts.
    ref = submit(client, audio, video)
    rec = client.wait(ref, timeout=120)
    assert rec["status"] == "succeeded", rec
    reference = decode_frames(client.download_result(rec["id"]))
    yield {"client": client, "storage": storage, "faults": chaos_dir, "audio": audio, "video": video,
           "reference": reference, "port": port}
    stop_cluster()


def submit(client: Client, audio, video) -> str:
    r = client.submit_files(audio, video, box=BOX)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def pids() -> dict:
    return pipeline_handle().actor_pids.remote().result(timeout_s=60)


def assert_recovered(env, job_id: str, fault_code: str, *, incident: bool) -> dict:
    client = env["client"]
    rec = client.wait(job_id, timeout=180)
    assert rec["status"] == "succeeded", rec
    if incident:
        recorded = [i["code"] for a in rec["attempts"] for i in a.get("incidents", [])]
        assert fault_code in recorded, rec["attempts"]
    else:
        errors = [a["error"]["code"] for a in rec["attempts"] if a.get("error")]
        assert fault_code in errors, [a.get("error") for a in rec["attempts"]]
        assert len(rec["attempts"]) >= 2
    got = decode_frames(client.download_result(rec["id"]))
    ref = env["reference"]
    assert len(got) == len(ref)
    worst = min(psnr(a, b) for a, b in zip(got[::7], ref[::7]))
    assert worst >= 40.0, worst
    # Nothing left behind: job work dir, partial results, extra actor processes, zombies.
    wait_until(lambda: not (env["storage"] / "jobs" / job_id).exists(), "job temp files removed")
    assert not list((env["storage"] / "results").glob("*.partial.mp4"))
    wait_until(lambda: len(ray_processes("ray::GeneratorActor")) == 1, "exactly one GeneratorActor")
    wait_until(lambda: len(ray_processes("ray::WriterActor")) == POOL, f"exactly {POOL} WriterActors")
    zombies = [p for p in ray_processes("ray::") if p[1] == "Z"]
    wait_until(lambda: not [p for p in ray_processes("ray::") if p[1] == "Z"], f"no zombies ({zombies})")
    return rec


def run_until_progress(env, fraction: float = 0.25) -> str:
    job_id = submit(env["client"], env["audio"], env["video"])
    env["client"].wait(job_id, predicate=lambda r: r["status"] == "running" and r["progress"] >= fraction)
    return job_id


def test_sigkill_generator_actor(env):
    before = pids()
    job_id = run_until_progress(env)
    os.kill(before["generator"], signal.SIGKILL)
    rec = assert_recovered(env, job_id, "worker_lost", incident=True)
    assert pids()["generator"] != before["generator"]
    assert len(rec["attempts"]) == 1  # Ray restarted the actor and retried the lost calls in place


def test_sigkill_writer_actor(env):
    before = pids()
    job_id = run_until_progress(env)
    os.kill(before["writers"][0], signal.SIGKILL)
    assert_recovered(env, job_id, "worker_lost", incident=True)
    assert pids()["writers"][0] != before["writers"][0]


def test_generator_out_of_memory_once(env):
    (env["faults"] / "generator_oom").write_text("1")
    job_id = submit(env["client"], env["audio"], env["video"])
    rec = assert_recovered(env, job_id, "out_of_memory", incident=False)
    failed = [a for a in rec["attempts"] if a.get("error")]
    assert failed[0]["error"]["retryable"] is True and failed[0]["error"]["message"]


def test_stuck_generator_is_detected_and_retried(env):
    # Placed before the job starts: the 5th generate call hangs, after segments have finished and
    # the runner knows how long one takes (a marker written on seeing progress raced a fast job).
    (env["faults"] / "generator_hang").write_text("600 after 4")
    job_id = submit(env["client"], env["audio"], env["video"])
    rec = assert_recovered(env, job_id, "stage_timeout", incident=False)
    message = next(a for a in rec["attempts"] if a.get("error"))["error"]["message"]
    assert "no segment finished" in message, message
    assert not (env["faults"] / "generator_hang").exists()


def test_non_retryable_input_error_fails_fast(env, tmp_path):
    from tests.media import synthetic_frames, write_video

    faceless = write_video(tmp_path / "landscape.mp4", synthetic_frames(20, 96, 64), 25)
    r = env["client"].submit_files(env["audio"], faceless)  # no face, no box override
    rec = env["client"].wait(r.json()["id"], timeout=60)
    assert rec["status"] == "failed" and len(rec["attempts"]) == 1
    assert rec["error"]["code"] == "no_face" and rec["error"]["retryable"] is False
    assert "landscape.mp4" in rec["error"]["message"] or "video.mp4" in rec["error"]["message"]


def test_kill_pipeline_replica_owning_the_job(env):
    job_id = run_until_progress(env)
    replica = pids()["replica_actor"]
    ray.kill(ray.get_actor(replica, namespace="serve"), no_restart=True)
    rec = assert_recovered(env, job_id, "worker_lost", incident=False)
    assert rec["attempts"][-1]["owner"] != rec["attempts"][0]["owner"]


def test_kill_ingress_replica_that_accepted_the_job(env):
    job_id = run_until_progress(env)
    ingress = [name for name in _serve_actor_names() if "REPLICA" in name and "Ingress" in name]
    assert ingress
    ray.kill(ray.get_actor(ingress[0], namespace="serve"), no_restart=True)
    env["client"].wait_http("/healthz", 200, timeout=90)  # Serve replaced the ingress replica
    # The job's record and its running attempt live in the store and on the pipeline replica, not
    # in the ingress: the attempt carries on untouched and the new ingress serves its status.
    rec = env["client"].wait(job_id, timeout=180)
    assert rec["status"] == "succeeded" and len(rec["attempts"]) == 1, rec
    got = decode_frames(env["client"].download_result(rec["id"]))
    assert len(got) == len(env["reference"])
    assert min(psnr(a, b) for a, b in zip(got[::7], env["reference"][::7])) >= 40.0
    wait_until(lambda: not (env["storage"] / "jobs" / job_id).exists(), "job temp files removed")


def _serve_actor_names() -> list[str]:
    from ray.util import list_named_actors

    return [a["name"] for a in list_named_actors(all_namespaces=True) if a["namespace"] == "serve"]


def test_restart_whole_application_with_jobs_queued_and_running(env, tmp_path):
    client = env["client"]
    long_audio, video = make_media(tmp_path, 15.0, seed=8)  # ~5 s at 0.1 s per generate call
    ref_id = submit(client, long_audio, video)  # fault-free reference of the long job
    long_ref = decode_frames(client.download_result(client.wait(ref_id, timeout=180)["id"]))

    running = submit(client, long_audio, video)
    client.wait(running, predicate=lambda r: r["status"] == "running" and r["progress"] >= 0.2)
    queued = [submit(client, env["audio"], env["video"]) for _ in range(3)]
    serve.delete("lipserve")  # graceful for 0.5 s, then the replicas and their actors are gone
    deploy(chaos_args(env["storage"], env["faults"]))
    client.wait_http("/readyz", 200)
    for job_id, ref in [(running, long_ref)] + [(q, env["reference"]) for q in queued]:
        rec = client.wait(job_id, timeout=240)
        assert rec["status"] == "succeeded", rec
        got = decode_frames(client.download_result(rec["id"]))
        assert len(got) == len(ref)
        assert min(psnr(a, b) for a, b in zip(got[::7], ref[::7])) >= 40.0
    first = client.job(running)["attempts"]
    # The interrupted attempt is on record: released during shutdown, or taken over after its lease.
    assert len(first) >= 2 and (first[0].get("error") or first[0].get("released")), first
    wait_until(lambda: len(ray_processes("ray::GeneratorActor")) == 1, "one GeneratorActor after restart")
    wait_until(lambda: not list((env["storage"] / "jobs").iterdir()), "no job temp files left")
