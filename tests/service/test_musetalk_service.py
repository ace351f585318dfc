"""One deployment serving ``default`` and ``musetalk`` (reduced random-init weights in the public
layout, written here; nothing downloaded) on a real Ray cluster over real HTTP: the backends route,
jobs routed to their backend's generator actor, and a SIGKILL of the MuseTalk generator actor
mid-job that the job survives."""

from __future__ import annotations

import math
import os
import signal

import pytest

from actors.models.musetalk.random_weights import write_random_models
from tests.service.harness import (
    BOX,
    Client,
    decode_frames,
    deploy,
    make_media,
    pipeline_handle,
    psnr,
    ray_processes,
    small_args,
    start_cluster,
    stop_cluster,
    wait_until,
)


ADMIN_KEY = "ops-admin-key-musetalk-0123456789"  # incidents are shown to admin keys only


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("musetalk_service")
    models = write_random_models(root / "models", reduced=True)
    keys = root / "keys.txt"
    keys.write_text(f"ops:{ADMIN_KEY}\n")
    port = start_cluster()
    args = small_args(
        root / "storage",
        auth={"keys_file": str(keys), "admin_tenants": ["ops"]},
        generators=[{"backend": "default", "num_cpus": 0.1},
                    {"backend": "musetalk", "checkpoint": str(models), "batch_size": 8, "num_cpus": 0.1}],
        writer={"pool_size": 2, "num_cpus": 0.1, "segment_frames": 10},
        jobs={"lease_s": 4, "heartbeat_s": 0.3, "retry_backoff_s": 0.2, "min_stuck_s": 20,
              "max_inflight_segments": 2},
        pipeline={"num_cpus": 0.1, "max_ongoing_requests": 2, "graceful_shutdown_timeout_s": 1,
                  "health_check_period_s": 1, "health_check_timeout_s": 10},
    )
    args.pop("generator")  # the several-backends form instead of the single one
    deploy(args)
    client = Client(f"http://127.0.0.1:{port}", ADMIN_KEY)
    client.wait_http("/readyz", 200, timeout=180)
    audio, video = make_media(root / "media", 6.0, seed=5)
    yield {"client": client, "storage": root / "storage", "audio": audio, "video": video, "state": {}}
    stop_cluster()


def submit(client: Client, audio, video, **fields) -> str:
    r = client.submit_files(audio, video, box=BOX, **fields)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def pids() -> dict:
    return pipeline_handle().actor_pids.remote().result(timeout_s=60)


def test_backends_route_lists_what_is_served(env):
    r = env["client"].http.get("/v1/backends")
    assert r.status_code == 200
    assert r.json() == {"backends": ["default", "musetalk"], "default": "default"}
    bad = env["client"].submit_files(env["audio"], env["video"], box=BOX, backend="wav2lip")
    assert bad.status_code == 422
    err = bad.json()["error"]
    assert err["code"] == "invalid_parameter" and "wav2lip" in err["message"] and "musetalk" in err["message"]
    assert "/v1/backends" in env["client"].http.get("/openapi.json").json()["paths"]


def test_jobs_are_routed_to_their_backend(env):
    client = env["client"]
    muse = submit(client, env["audio"], env["video"], backend="musetalk")
    plain = submit(client, env["audio"], env["video"])  # no backend: the default
    recs = {name: client.wait(job, timeout=240) for name, job in (("musetalk", muse), ("default", plain))}
    for name, rec in recs.items():
        assert rec["status"] == "succeeded", rec
        assert rec["params"]["backend"] == name
    assert "latents" in recs["musetalk"]["timings"]  # the reference latents stage ran (cached per avatar)
    frames = {name: decode_frames(client.download_result(rec["id"])) for name, rec in recs.items()}
    assert len(frames["musetalk"]) == len(frames["default"]) == math.ceil(6.0 * 25)
    # Different generators and geometries: the mouth regions differ, the frame tops do not.
    mouth = (slice(70, 105), slice(55, 105))
    diff = [abs(a[mouth].astype(int) - b[mouth]).mean() for a, b in zip(frames["musetalk"][::15], frames["default"][::15])]
    assert max(diff) > 3
    assert min(psnr(a[:15], b[:15]) for a, b in zip(frames["musetalk"][::15], frames["default"][::15])) > 35
    avatars = env["storage"] / "avatars"
    assert list(avatars.glob("*/latents-*.npy")), list(avatars.iterdir())
    env["state"]["reference"] = frames["musetalk"]


def test_sigkill_musetalk_generator_mid_job(env):
    client = env["client"]
    reference = env["state"].get("reference")
    assert reference is not None, "needs the fault-free run of test_jobs_are_routed_to_their_backend"
    before = pids()
    assert set(before["generators"]) == {"default", "musetalk"}
    job_id = submit(client, env["audio"], env["video"], backend="musetalk")
    client.wait(job_id, predicate=lambda r: r["status"] == "running" and r["progress"] >= 0.25, timeout=120)
    os.kill(before["generators"]["musetalk"], signal.SIGKILL)
    at_kill = client.job(job_id)
    assert at_kill["status"] == "running", f"the job ended before the kill: {at_kill}"
    rec = client.wait(job_id, timeout=240)
    assert rec["status"] == "succeeded", rec
    recorded = [i for a in rec["attempts"] for i in a.get("incidents", [])]
    assert any(i["code"] == "worker_lost" and "GeneratorActor[musetalk]" in i["message"] for i in recorded), recorded
    assert len(rec["attempts"]) == 1  # Ray restarted the actor and retried the lost calls in place
    after = pids()
    assert after["generators"]["musetalk"] != before["generators"]["musetalk"]
    assert after["generators"]["default"] == before["generators"]["default"]  # the other pool untouched
    got = decode_frames(client.download_result(job_id))
    assert len(got) == len(reference)
    assert min(psnr(a, b) for a, b in zip(got[::7], reference[::7])) >= 40.0
    # (generous deadlines: on a loaded 2-core box the dead process is reaped late)
    wait_until(lambda: not (env["storage"] / "jobs" / job_id).exists(), "job temp files removed", timeout=90)
    wait_until(lambda: len(ray_processes("ray::GeneratorActor")) == 2,
               f"one GeneratorActor per backend (now {ray_processes('ray::GeneratorActor')})", timeout=90)
    wait_until(lambda: not [p for p in ray_processes("ray::") if p[1] == "Z"], "no zombies", timeout=90)
